/* SPDX-License-Identifier: MIT */
/*
 * snapshot.h - save a paused domain to a stream and build a domain from
 * one.  Generic over struct hv_ops: the same code saves a KVM or a Xen
 * domain.  Live migration (pre-copy rounds) builds on the same records.
 */
#ifndef SNAPSHOT_H
#define SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "hv.h"

struct snap_stats {
	uint64_t bytes;      /* written to / read from the channel */
	uint64_t pages;      /* page frames sent (not counting skipped zeros) */
	uint64_t zero_pages; /* all-zero frames, not sent */
	uint64_t records;
};

/* Write the whole state of the paused domain `d` to `c`: header, DOMAIN,
 * every non-zero page, vCPUs, devices, END.  The domain is left as it was
 * (paused); the caller decides whether to resume it.  Returns 0 or -errno
 * with the reason logged; on error the channel's content is garbage. */
int snap_save(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	      struct snap_stats *stats);

/* Read a stream from `c`, validating every record, and create a paused
 * domain from it with `ops->create(info, cfg)`.  With `whole`, the channel
 * must end right after END (a file holds exactly one stream).  On success
 * *out owns the domain; on any error nothing is left behind (the
 * half-built domain is destroyed) and the reason, naming the record, is
 * logged. */
int snap_restore(const struct hv_ops *ops, const void *cfg, struct chan *c,
		 bool whole, struct hv_domain **out);

/* snap_restore that also leaves the reason for a failure in msg[0..len)
 * (the reader's message naming the record, or the error's text), and
 * calls on_sync(ctx, seq) for each SYNC record (NULL: SYNC is skipped like
 * any optional record); a non-zero return fails the restore. */
int snap_restore_msg(const struct hv_ops *ops, const void *cfg,
		     struct chan *c, bool whole, struct hv_domain **out,
		     char *msg, size_t len,
		     int (*on_sync)(void *ctx, uint64_t seq), void *ctx);

/*
 * Building a domain from a stream, shared with checkpoint/'s backup.
 *
 * snap_pages: a stream_page_cb (snap_pages_store: copy the page into the
 * domain's frame, remember it arrived) and a stream_base_cb
 * (snap_pages_base: the domain's copy of a frame this stream delivered,
 * mapped until the next call or snap_pages_release) for
 * stream_decode_pages2.  `received` has one bit per frame, zeroed.
 */
struct snap_pages {
	const struct hv_ops *ops;
	struct hv_domain *d;
	uint64_t *received;
	void *base;
};
int snap_pages_store(void *ctx, uint64_t pfn, const void *page);
const void *snap_pages_base(void *ctx, uint64_t pfn);
void snap_pages_release(struct snap_pages *sp);

struct stream_reader;
struct stream_rec;
struct stream_disk_write;

/* Decode the DISK_WRITE `rec` against the size of the disk of `d` it
 * names (stream_decode_disk). */
int snap_disk_record(const struct hv_ops *ops, struct hv_domain *d,
		     struct stream_reader *r, const struct stream_rec *rec,
		     struct stream_disk_write *dw);

/* Write `len` bytes at `off` of disk `disk`: `data`, or zeros if NULL. */
int snap_disk_write(const struct hv_ops *ops, struct hv_domain *d,
		    uint32_t disk, uint64_t off, uint32_t len, const void *data);

#endif /* SNAPSHOT_H */
