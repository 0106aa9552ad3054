/* SPDX-License-Identifier: MIT */
/*
 * stream.h - write and read ftengine streams (docs/stream-format.md) over
 * a channel.
 *
 * Writer: stream_writer_init, stream_write_header, then records
 * (stream_write_domain first, pages / vCPUs / devices in any order), then
 * stream_write_end.  The writer frames records (padding, checksum) but
 * does not police their order or contents: that is the reader's job, and
 * tests rely on being able to write bad streams.  Options: compression
 * (enum stream_compress) and a page cache (lib/pagecache.h) for XOR
 * deltas against the pages sent before.
 *
 * Reader: stream_reader_init, stream_read_header, then stream_next until
 * it returns REC_END.  stream_next checks the framing of every record
 * (length caps before allocating, padding, checksum, type, order, exact
 * sizes, the DOMAIN record in full); the contents of the other records are
 * checked by the function that decodes them (stream_decode_pages2 here,
 * which needs the receiver's current copy of each frame for XOR pages,
 * or stream_decode_pages without it; stream_decode_vcpu /
 * stream_decode_device in stream_state.h), which a caller must use before
 * acting on a record.
 *
 * Errors: every call returns 0 or -errno (see docs/stream-format.md,
 * ERRORS).  A reader failure is sticky, logged once with log_err and kept
 * as a message naming the record, e.g.
 *   record #7 (PAGE_BATCH) at offset 123456: page 3 pfn 0x40000 beyond
 *   guest RAM (65536 pages)
 * Channel failures are sticky in the channel, so a failed writer stays
 * failed too.
 *
 * Neither writer nor reader owns its channel.  A writer or reader is used
 * by one thread at a time.
 */
#ifndef STREAM_H
#define STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "channel.h"
#include "stream_wire.h"

struct XXH64_state_s;

struct pagecache;

/*
 * Page compression of a writer.  Whatever the setting, all-zero pages go
 * as ZERO and, with a page cache attached (stream_writer_set_cache), a
 * page whose previous version is cached goes as XOR when the delta is at
 * most 3/4 of a page.
 *
 * STREAM_COMP_AUTO compresses only while it pays on the link:
 * LZ4 is used for the next pages iff, over the last window of pages it
 * was tried on,
 *
 *     lz4_time + bytes_out / link_rate  <  bytes_in / link_rate
 *
 * (bytes_in: 4096 per page tried; bytes_out: the LZ4 block, or 4096 when
 * the page did not compress to 3/4; lz4_time: measured around each LZ4
 * call, at most 100 us per call so that a preemption does not count;
 * link_rate: stream_writer_set_link_rate).  That is, LZ4 must save more
 * link time than it costs in CPU time, the two being serial in the
 * writer.  The first 64 candidate pages are a probe; while the rule says
 * yes it is applied again every 256 pages LZ4 was tried on, the sums
 * halved each time (so the past weighs half); when it says no, the next
 * 65536 candidate pages (256 MiB) go without LZ4, then 64 pages are tried
 * again (a probe costs about 1% of the send time at 0.4 GB/s of LZ4 and
 * 2.5 GB/s of link).  With no link rate set (0), AUTO never compresses.
 * Candidates are the non-zero pages not sent as XOR with a delta of at
 * most 1/4 page.
 */
enum stream_compress {
	STREAM_COMP_NONE, /* pages go raw or zero (or XOR) */
	STREAM_COMP_LZ4,  /* LZ4 per page when it saves at least a quarter */
	STREAM_COMP_AUTO, /* LZ4 as above, but only while it pays (above) */
};

struct stream_stats {
	uint64_t records;   /* records written / read, skipped ones too */
	uint64_t skipped;   /* reader: unknown optional records skipped */
	uint64_t pages_raw; /* pages by encoding (reader: as decoded) */
	uint64_t pages_zero;
	uint64_t pages_lz4;
	uint64_t bytes;	    /* stream bytes, header included */
	uint64_t pages_xor; /* by encoding, continued */
	uint64_t lz4_bytes; /* data bytes of LZ4 pages */
	uint64_t xor_bytes; /* data bytes of XOR pages */
	uint64_t saved;	    /* page bytes not sent: 4096 - len, every page */
	uint64_t lz4_tries; /* writer: pages given to LZ4 */
	uint64_t lz4_ns;    /* writer, STREAM_COMP_AUTO: time in LZ4 calls */
};

/* Fields are private except `stats` and `lz4_on` (read-only). */
struct stream_writer {
	struct stream_stats stats;
	bool lz4_on; /* LZ4: always; AUTO: the last verdict of the rule */

	struct chan *chan;
	uint32_t flags;
	enum stream_compress comp;
	enum { SW_NEW, SW_OPEN, SW_ENDED } state;
	struct XXH64_state_s *xs; /* record checksum, streamed */
	void *lz4;		  /* LZ4 compression state */
	unsigned char *batch;	  /* one PAGE_BATCH record, framed */
	unsigned char *page;	  /* snapshot of a page for LZ4, no cache */
	unsigned char *scratch;	  /* LZ4 output competing with XOR */
	struct pagecache *cache;  /* the caller's, or NULL */
	uint64_t link_rate;	  /* bytes/s, for STREAM_COMP_AUTO */
	struct stream_ckpt_count {
		uint32_t pages, disk_writes, vcpus, devices;
	} ep;		  /* records of the open epoch */
	bool ep_open;	  /* between CKPT_BEGIN and CKPT_END */
	uint64_t ep_epoch;
	struct {
		uint32_t tries;	  /* LZ4 tries in the window or probe */
		uint32_t rest;	  /* candidate pages left without LZ4 */
		uint64_t in, out; /* bytes in and out of the window's tries */
		uint64_t ns;	  /* time in the window's tries */
	} autoc;
};

/*
 * Prepare `w` to write a stream with header flags `flags` (FT_STREAM_F_*)
 * to `c`, which stays the caller's and must outlive `w`.
 * Return 0, -EINVAL (unknown flag or compression) or -ENOMEM.
 * On success the caller calls stream_writer_fini once.
 */
int stream_writer_init(struct stream_writer *w, struct chan *c, uint32_t flags,
		       enum stream_compress comp);

/* Free what `w` holds.  Writes nothing: an unfinished stream stays so. */
void stream_writer_fini(struct stream_writer *w);

/*
 * Let `w` send pages as XOR deltas against their previous versions kept
 * in `pc` (NULL: detach); may be called at any time.  `pc` is cleared
 * here, then holds what this stream sent: each page written through `w`
 * is copied once into it, and that copy is what gets encoded (so a page
 * that changes meanwhile cannot make the receiver's version and the
 * cache differ); a ZERO page drops its entry; a failed batch clears it
 * (the stream is dead anyway).  `pc` stays the caller's, must outlive
 * `w` or be detached, and serves one writer at a time.
 */
void stream_writer_set_cache(struct stream_writer *w, struct pagecache *pc);

/*
 * Tell `w` the link's rate in bytes per second (0: unknown), for
 * STREAM_COMP_AUTO; may be called at any time, e.g. whenever the sender
 * measures it anew.  Other settings ignore it.
 */
void stream_writer_set_link_rate(struct stream_writer *w, uint64_t bytes_per_s);

/* Write the stream header.  Called once, before any record. */
int stream_write_header(struct stream_writer *w);

/*
 * Write one record of `type` with body[0..len), adding padding and the
 * checksum; the body is not copied.  Return -E2BIG if len exceeds
 * FT_REC_BODY_MAX, -EINVAL before the header or after END.
 */
int stream_write_record(struct stream_writer *w, uint32_t type,
			const void *body, uint32_t len);

/* As stream_write_record, the body gathered from iov[0..n), n <= 16. */
int stream_write_recordv(struct stream_writer *w, uint32_t type,
			 const struct iovec *iov, int n);

/* Write the DOMAIN record.  Return -EINVAL for a shape no reader takes. */
int stream_write_domain(struct stream_writer *w, uint64_t mem_size,
			uint32_t nr_vcpus);

/*
 * Write the pages pages[i] (FT_PAGE_SIZE bytes each) as frames pfns[i],
 * i < n, in PAGE_BATCH records of up to FT_PAGE_BATCH_MAX pages: all-zero
 * pages as ZERO, pages with a cached previous version as XOR if the delta
 * is small enough, others as LZ4 if enabled and worth it, else RAW (see
 * enum stream_compress).  Each batch is built in the writer's buffer and
 * goes out in one channel write.  The pages may change meanwhile (live
 * migration): each is read once, into the batch or a snapshot that is
 * encoded, and what is sent is self-consistent, though a page modified
 * during the call may arrive torn; the caller resends pages dirtied
 * meanwhile.  Return 0 or -errno; on error some batches may have been
 * written.
 */
int stream_write_pages(struct stream_writer *w, const uint64_t *pfns,
		       void *const *pages, unsigned n);

/* True if the FT_PAGE_SIZE bytes at `page` are all zero.  Fast enough
 * for every page of a save or migration round. */
bool stream_page_is_zero(const void *page);

/*
 * Checkpoint epochs (FT_STREAM_F_CHECKPOINT writers): CKPT_BEGIN opens
 * epoch `epoch`; CKPT_END closes it with the counts of the pages, disk
 * writes, vCPUs and devices written meanwhile, which the writer keeps.
 * -EINVAL for a writer without the flag, a BEGIN inside an epoch or an
 * END outside one.
 */
int stream_write_ckpt_begin(struct stream_writer *w, uint64_t epoch);
int stream_write_ckpt_end(struct stream_writer *w);

/* Write END and flush the channel (without fsync). */
int stream_write_end(struct stream_writer *w);

struct stream_rec {
	uint32_t type;
	uint32_t len;	  /* body bytes */
	const void *body; /* reader-owned, valid until the next stream_next */
	uint64_t index;	  /* record number, from 0 */
	uint64_t offset;  /* stream offset of the record header */
};

/* Fields are private except `hdr`, `domain` and `stats` (read-only). */
struct stream_reader {
	struct ft_stream_hdr hdr;    /* valid after stream_read_header */
	struct ft_rec_domain domain; /* valid once DOMAIN was returned */
	struct stream_stats stats;

	struct chan *chan;
	enum { SR_NEW, SR_DOMAIN, SR_BODY, SR_ENDED } state;
	uint64_t domain_index; /* record number of DOMAIN */
	uint64_t vcpus_seen;   /* bit i: vCPU i was sent (in this epoch) */
	bool in_epoch;	       /* checkpoint: inside CKPT_BEGIN..CKPT_END */
	bool any_epoch;	       /* an epoch has begun */
	uint64_t epoch;	       /* the last CKPT_BEGIN's */
	struct stream_ckpt_count ep; /* records of the epoch so far */
	unsigned char *buf;    /* current record, framed */
	size_t buf_size;
	unsigned char *page; /* LZ4 or XOR output */
	int err;	     /* sticky */
	char msg[256];
};

/*
 * Prepare `r` to read a stream from `c`, which stays the caller's and must
 * outlive `r`.  Return 0 or -ENOMEM.  On success the caller calls
 * stream_reader_fini once.
 */
int stream_reader_init(struct stream_reader *r, struct chan *c);

/* Free what `r` holds, record bodies included. */
void stream_reader_fini(struct stream_reader *r);

/*
 * Read and check the stream header (magic, version, checksum, page shift,
 * flags, reserved fields); copy it to *out unless out is NULL.  Called
 * once, first.  Return 0, -EINVAL (not an ftengine stream, bad field),
 * -ENOEXEC (another architecture), -EPROTONOSUPPORT (version),
 * -EBADMSG (checksum) or -EPIPE (truncated).
 */
int stream_read_header(struct stream_reader *r, struct ft_stream_hdr *out);

/*
 * Read the next record into *rec, skipping unknown optional records.
 * In a checkpoint stream it also enforces the epoch structure
 * (stream_wire.h): BEGIN/END pairing and numbering, END's counts, every
 * vCPU once per epoch, VCPU_X86 and DEVICE only inside epochs, each
 * DISK_WRITE's epoch (the open one, or 0 outside epochs).
 * rec->body stays valid until the next call or stream_reader_fini.
 * Returns REC_END last; calling it again then is an error (use
 * stream_expect_eof to check a file ends there).
 * Return 0, -EPIPE (truncated), -EBADMSG (checksum), -E2BIG (length over
 * its cap), -EOPNOTSUPP (reserved or unknown mandatory type), -EINVAL.
 */
int stream_next(struct stream_reader *r, struct stream_rec *rec);

/*
 * After END: check that the channel ends too (for files).  Blocks on a
 * connection until the peer closes it.  Return 0 or -EINVAL.
 */
int stream_expect_eof(struct stream_reader *r);

/* Called once per page; a non-zero return stops the walk and is passed up. */
typedef int (*stream_page_cb)(void *ctx, uint64_t pfn, const void *page);

/*
 * The receiver's current FT_PAGE_SIZE bytes of frame `pfn`: what the
 * page callback last delivered for it in this stream, valid until the
 * page callback is next called.  NULL if no page of this stream has been
 * delivered for that frame yet.  Must not fail otherwise.
 */
typedef const void *(*stream_base_cb)(void *ctx, uint64_t pfn);

/*
 * Check the PAGE_BATCH `rec` (from stream_next on `r`) in full: count,
 * reserved fields, every descriptor (pfn below the domain's page count,
 * encoding, length; for XOR, that the frame was sent before: earlier in
 * this batch, or base(ctx, pfn) is not NULL), the total data length, the
 * structure and size of every LZ4 block and the runs of every XOR delta.
 * Only then decode the pages in order and call cb(ctx, pfn, page) for
 * each, with FT_PAGE_SIZE bytes valid during the call; an XOR page is
 * decoded against base(ctx, pfn), asked right before, so that it sees
 * the pages of this batch delivered so far.  Return 0, -EINVAL,
 * -EOPNOTSUPP (an XOR page in a 1.0 stream, or with `base` NULL) or cb's
 * non-zero result (which does not make `r` fail).
 */
int stream_decode_pages2(struct stream_reader *r, const struct stream_rec *rec,
			 stream_page_cb cb, void *ctx, stream_base_cb base);

/* stream_decode_pages2 without a base: every XOR page is -EOPNOTSUPP. */
int stream_decode_pages(struct stream_reader *r, const struct stream_rec *rec,
			stream_page_cb cb, void *ctx);

/*
 * Make `r` fail with `err` and the message
 * "record #N (TYPE) at offset O: <fmt...>"; log it.  For decoders of
 * record contents (stream_state.c, callers).  Returns err.
 */
int stream_rec_fail(struct stream_reader *r, const struct stream_rec *rec,
		    int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The message of r's sticky error, or "" if there is none. */
const char *stream_reader_error(const struct stream_reader *r);

/* "PAGE_BATCH", ..., "UNKNOWN" for a type this reader does not know. */
const char *stream_rec_name(uint32_t type);

#endif /* STREAM_H */
