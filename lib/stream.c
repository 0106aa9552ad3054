// SPDX-License-Identifier: MIT
/*
 * stream.c - the stream writer and reader (docs/stream-format.md).
 *
 * Wire structs are copied to and from the byte stream with memcpy: the
 * host is little-endian (asserted below) and the structs have no padding
 * (their sizes are pinned in stream_wire.h).
 */
#include "stream.h"

#include <emmintrin.h>
#include <errno.h>
#include <lz4.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "log.h"
#include "pagecache.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the stream code assumes a little-endian host");

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Bytes of padding after a body of `len` bytes. */
static size_t pad8(size_t len)
{
	return (8 - len % 8) % 8;
}

static const unsigned char zero_page[FT_PAGE_SIZE] __attribute__((aligned(64)));

/*
 * Record types by number (type without REC_F_OPTIONAL), with the body
 * bounds the reader enforces before it allocates.
 */
static const struct rec_info {
	uint32_t type; /* as allocated, optional bit included */
	const char *name;
	uint32_t min, max;
	bool reserved;
} rec_table[] = {
	{REC_END, "END", 0, 0, false},
	{REC_DOMAIN, "DOMAIN", sizeof(struct ft_rec_domain),
	 sizeof(struct ft_rec_domain), false},
	{REC_PAGE_BATCH, "PAGE_BATCH",
	 sizeof(struct ft_rec_page_batch) + sizeof(struct ft_page_desc),
	 FT_REC_BODY_MAX, false},
	{REC_VCPU_X86, "VCPU_X86", sizeof(struct ft_rec_vcpu_x86),
	 sizeof(struct ft_rec_vcpu_x86) + FT_XSAVE_MAX, false},
	{REC_DEVICE, "DEVICE", sizeof(struct ft_rec_device),
	 sizeof(struct ft_rec_device) + FT_DEVICE_BLOB_MAX, false},
	{REC_CKPT_BEGIN, "CKPT_BEGIN", sizeof(struct ft_rec_ckpt_begin),
	 sizeof(struct ft_rec_ckpt_begin), false},
	{REC_CKPT_END, "CKPT_END", sizeof(struct ft_rec_ckpt_end),
	 sizeof(struct ft_rec_ckpt_end), false},
	{REC_DISK_WRITE, "DISK_WRITE", sizeof(struct ft_rec_disk_write),
	 sizeof(struct ft_rec_disk_write) + FT_DISK_WRITE_MAX, false},
	{REC_NOTE, "NOTE", 0, FT_NOTE_MAX, false},
	{REC_SYNC, "SYNC", 8, 8, false},
};

/* The table entry for type's number, or NULL if the number is unknown. */
static const struct rec_info *rec_lookup(uint32_t type)
{
	uint32_t num = type & ~REC_F_OPTIONAL;

	return num < ARRAY_SIZE(rec_table) ? &rec_table[num] : NULL;
}

const char *stream_rec_name(uint32_t type)
{
	const struct rec_info *ri = rec_lookup(type);

	return ri && ri->type == type ? ri->name : "UNKNOWN";
}

/* ---- writer ---- */

/*
 * Pages per PAGE_BATCH the writer emits.  A 1 MiB batch stays in the L2
 * cache between the copy, the checksum pass and the write(2) (and on the
 * reader's side between read(2), checksum and decode); full 4 MiB batches
 * measured 25-30% slower (bench/bench_stream.c).
 */
#define WRITE_BATCH 256
/* Keep an LZ4 page only if it is at most this long. */
#define LZ4_KEEP_MAX (FT_PAGE_SIZE * 3 / 4)
/* Keep an XOR page only if it is at most this long; up to XOR_ALONE_MAX,
 * do not even try LZ4 against it. */
#define XOR_KEEP_MAX (FT_PAGE_SIZE * 3 / 4)
#define XOR_ALONE_MAX (FT_PAGE_SIZE / 4)
/* Frames the cache takes: those a reader can accept. */
#define CACHE_PFN_LIMIT (FT_MEM_SIZE_MAX / FT_PAGE_SIZE)
/* STREAM_COMP_AUTO (stream.h): LZ4 tries per decision while compressing,
 * tries per probe, candidate pages between probes. */
#define AUTO_WINDOW 256
#define AUTO_PROBE 64
#define AUTO_REST 65536
/* One LZ4 call counts as at most this long: LZ4 takes 2-20 us for a
 * page, anything longer is the thread being preempted. */
#define AUTO_TRY_NS_MAX 100000
/* Largest framed PAGE_BATCH record the writer builds. */
#define BATCH_BUF_SIZE                                                         \
	(sizeof(struct ft_rec_hdr) + sizeof(struct ft_rec_page_batch) +        \
	 WRITE_BATCH * (sizeof(struct ft_page_desc) + FT_PAGE_SIZE) + 7 + 8)
#define RECORDV_IOV_MAX 16
_Static_assert(RECORDV_IOV_MAX + 2 <= CHAN_IOV_MAX, "iovec budget");

int stream_writer_init(struct stream_writer *w, struct chan *c, uint32_t flags,
		       enum stream_compress comp)
{
	memset(w, 0, sizeof(*w));
	if (flags & ~FT_STREAM_F_KNOWN) {
		log_err("stream writer: unknown header flags %#x", flags);
		return -EINVAL;
	}
	if (comp != STREAM_COMP_NONE && comp != STREAM_COMP_LZ4 &&
	    comp != STREAM_COMP_AUTO) {
		log_err("stream writer: unknown compression %d", (int)comp);
		return -EINVAL;
	}
	w->chan = c;
	w->flags = flags;
	w->comp = comp;
	w->lz4_on = comp == STREAM_COMP_LZ4;
	w->xs = XXH64_createState();
	w->batch = malloc(BATCH_BUF_SIZE);
	w->page = malloc(FT_PAGE_SIZE);
	w->scratch = malloc(FT_PAGE_SIZE);
	if (comp != STREAM_COMP_NONE)
		w->lz4 = malloc((size_t)LZ4_sizeofState());
	if (!w->xs || !w->batch || !w->page || !w->scratch ||
	    (comp != STREAM_COMP_NONE && !w->lz4)) {
		stream_writer_fini(w);
		log_err("stream writer: out of memory");
		return -ENOMEM;
	}
	return 0;
}

void stream_writer_fini(struct stream_writer *w)
{
	XXH64_freeState(w->xs);
	free(w->lz4);
	free(w->batch);
	free(w->page);
	free(w->scratch);
	memset(w, 0, sizeof(*w));
}

void stream_writer_set_cache(struct stream_writer *w, struct pagecache *pc)
{
	w->cache = pc;
	if (pc)
		pagecache_clear(pc);
}

void stream_writer_set_link_rate(struct stream_writer *w, uint64_t bytes_per_s)
{
	w->link_rate = bytes_per_s;
}

int stream_write_header(struct stream_writer *w)
{
	struct ft_stream_hdr h = {
		.magic = FT_STREAM_MAGIC,
		.version_major = FT_STREAM_VERSION_MAJOR,
		.version_minor = FT_STREAM_VERSION_MINOR,
		.page_shift = FT_PAGE_SHIFT,
		.flags = w->flags,
	};
	int err;

	if (w->state != SW_NEW) {
		log_err("stream writer: header written twice");
		return -EINVAL;
	}
	h.checksum = XXH64(&h, offsetof(struct ft_stream_hdr, checksum), 0);
	err = chan_write(w->chan, &h, sizeof(h));
	if (err)
		return err;
	w->state = SW_OPEN;
	w->stats.bytes += sizeof(h);
	return 0;
}

/* Refuse a record the writer's state does not allow. */
static int check_open(const struct stream_writer *w, uint32_t type)
{
	if (w->state == SW_OPEN)
		return 0;
	log_err("stream writer: %s record %s", stream_rec_name(type),
		w->state == SW_NEW ? "before the header" : "after END");
	return -EINVAL;
}

int stream_write_recordv(struct stream_writer *w, uint32_t type,
			 const struct iovec *iov, int n)
{
	struct iovec v[RECORDV_IOV_MAX + 2];
	struct ft_rec_hdr h = {.type = type};
	unsigned char tail[16] = {0}; /* padding, then checksum */
	size_t len = 0, pad;
	uint64_t sum;
	int err;

	err = check_open(w, type);
	if (err)
		return err;
	if (n < 0 || n > RECORDV_IOV_MAX) {
		log_err("stream writer: %s record from %d iovecs (max %d)",
			stream_rec_name(type), n, RECORDV_IOV_MAX);
		return -EINVAL;
	}
	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	if (len > FT_REC_BODY_MAX) {
		log_err("stream writer: %s record of %zu bytes exceeds the "
			"limit %zu",
			stream_rec_name(type), len, (size_t)FT_REC_BODY_MAX);
		return -E2BIG;
	}
	h.length = (uint32_t)len;
	pad = pad8(len);

	XXH64_reset(w->xs, 0);
	XXH64_update(w->xs, &h, sizeof(h));
	for (int i = 0; i < n; i++)
		XXH64_update(w->xs, iov[i].iov_base, iov[i].iov_len);
	XXH64_update(w->xs, tail, pad);
	sum = XXH64_digest(w->xs);
	memcpy(tail + pad, &sum, sizeof(sum));

	v[0] = (struct iovec){.iov_base = &h, .iov_len = sizeof(h)};
	memcpy(v + 1, iov, (size_t)n * sizeof(*iov));
	v[n + 1] = (struct iovec){.iov_base = tail, .iov_len = pad + 8};
	err = chan_writev(w->chan, v, n + 2);
	if (err)
		return err;
	w->stats.records++;
	w->stats.bytes += sizeof(h) + len + pad + 8;
	if (type == REC_END)
		w->state = SW_ENDED;
	else if (type == REC_DISK_WRITE)
		w->ep.disk_writes++;
	else if (type == REC_VCPU_X86)
		w->ep.vcpus++;
	else if (type == REC_DEVICE)
		w->ep.devices++;
	return 0;
}

int stream_write_record(struct stream_writer *w, uint32_t type,
			const void *body, uint32_t len)
{
	struct iovec iov = {.iov_base = (void *)body, .iov_len = len};

	return stream_write_recordv(w, type, &iov, 1);
}

int stream_write_domain(struct stream_writer *w, uint64_t mem_size,
			uint32_t nr_vcpus)
{
	struct ft_rec_domain d = {
		.mem_size = mem_size,
		.nr_vcpus = nr_vcpus,
		.page_size = FT_PAGE_SIZE,
	};

	if (!mem_size || mem_size % FT_PAGE_SIZE ||
	    mem_size > FT_MEM_SIZE_MAX || !nr_vcpus ||
	    nr_vcpus > FT_MAX_VCPUS) {
		log_err("stream writer: domain of %llu bytes and %u vCPUs is "
			"not representable (page multiple up to %llu bytes, "
			"1..%u vCPUs)",
			(unsigned long long)mem_size, nr_vcpus, FT_MEM_SIZE_MAX,
			FT_MAX_VCPUS);
		return -EINVAL;
	}
	return stream_write_record(w, REC_DOMAIN, &d, sizeof(d));
}

/*
 * Most non-zero pages differ in their first bytes; a zero page is scanned
 * with glibc's vectorised memcmp against itself shifted by 8 bytes (equal,
 * and the first 8 bytes zero, means every byte is zero).
 */
bool stream_page_is_zero(const void *page)
{
	const unsigned char *p = page;
	uint64_t head;

	memcpy(&head, p, sizeof(head));
	return !head && !memcmp(p, p + 8, FT_PAGE_SIZE - 8);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One ULEB128 length of at most two bytes (v < 2^14) at p; its size. */
static unsigned put_len(unsigned char *p, unsigned v)
{
	if (v < 0x80) {
		p[0] = (unsigned char)v;
		return 1;
	}
	p[0] = (unsigned char)(v | 0x80);
	p[1] = (unsigned char)(v >> 7);
	return 2;
}

/* Changed bytes closer than this join one run: a new run costs 2 bytes. */
#define XOR_GAP 2

struct xor_out {
	const unsigned char *cur, *prev;
	unsigned char *out;
	unsigned len, max; /* bytes written to out, limit */
	unsigned pos;	   /* page offset where the last run ended */
	unsigned rs, re;   /* the open run [rs, re), if re > 0 */
};

/* Bytes of a run that skips `skip` bytes and changes `n`. */
static unsigned run_size(unsigned skip, unsigned n)
{
	return (skip < 0x80 ? 1 : 2) + (n < 0x80 ? 1 : 2) + n;
}

/* Emit the open run; false if it does not fit. */
static bool xor_emit(struct xor_out *x)
{
	unsigned n = x->re - x->rs, i = 0;
	unsigned char *o;

	if (x->len + run_size(x->rs - x->pos, n) > x->max)
		return false;
	o = x->out + x->len;
	o += put_len(o, x->rs - x->pos);
	o += put_len(o, n);
	/* Whole words, the last one past n if the page has room (out has
	 * 8 bytes of slack): most runs are short. */
	for (; i < n && x->rs + i + 8 <= FT_PAGE_SIZE; i += 8) {
		uint64_t a, b;

		memcpy(&a, x->cur + x->rs + i, 8);
		memcpy(&b, x->prev + x->rs + i, 8);
		a ^= b;
		memcpy(o + i, &a, 8);
	}
	for (; i < n; i++)
		o[i] = x->cur[x->rs + i] ^ x->prev[x->rs + i];
	x->len = (unsigned)(o + n - x->out);
	x->pos = x->re;
	return true;
}

/* Add the changed bytes [s, e) (s past the open run); false if the
 * delta outgrows x->max. */
static bool xor_add(struct xor_out *x, unsigned s, unsigned e)
{
	if (x->re && s - x->re <= XOR_GAP) {
		x->re = e;
		return x->len + run_size(x->rs - x->pos, e - x->rs) <= x->max;
	}
	if (x->re && !xor_emit(x))
		return false;
	x->rs = s;
	x->re = e;
	return true;
}

/* Chunks of XOR encoding: one bit per byte of a 64-byte chunk. */
#define XOR_CHUNKS (FT_PAGE_SIZE / 64)

/*
 * Copy the page src into snap and encode snap against prev as XOR runs
 * (stream_wire.h) into out[0..max), reading src once: the bytes compared
 * are the bytes stored, however src changes meanwhile.  Return the
 * delta's length, or -1 if it would exceed max (snap is a full copy
 * either way); out has room for max + 8 bytes (the batch buffer has a
 * page).  snap and prev are 16-byte aligned.
 *
 * Two passes: the copy makes a mask per 64-byte chunk of the bytes that
 * differ, and a lower bound of the delta's size from those masks; only
 * if that fits are the masks' runs of ones turned into runs of the delta
 * (which costs per run).  So a page rewritten in full or in many places
 * costs about a copy.
 */
static int xor_snap(unsigned char *snap, const unsigned char *src,
		    const unsigned char *prev, unsigned char *out, unsigned max)
{
	struct xor_out x = {.cur = snap, .prev = prev, .out = out, .max = max};
	uint64_t masks[XOR_CHUNKS];
	unsigned bound = 0;

	for (unsigned c = 0; c < XOR_CHUNKS; c++) {
		uint64_t m = 0;

		for (unsigned k = 0; k < 4; k++) {
			unsigned o = 64 * c + 16 * k;
			__m128i a = _mm_loadu_si128((const __m128i *)(src + o));
			__m128i b = _mm_load_si128((const __m128i *)(prev + o));
			uint64_t eq = (unsigned)_mm_movemask_epi8(
				_mm_cmpeq_epi8(a, b));

			_mm_store_si128((__m128i *)(snap + o), a);
			m |= (~eq & 0xffff) << (16 * k);
		}
		/* Fill gaps of up to XOR_GAP bytes here, as xor_add would. */
		_Static_assert(XOR_GAP == 2, "the gap filling below");
		m |= ((m << 1) & ((m >> 1) | (m >> 2))) | ((m << 2) & (m >> 1));
		masks[c] = m;
		/* Every run costs its bytes and at least 2 bytes of
		 * lengths; one that xor_add may join to the previous
		 * chunk's last run saves at most those 2. */
		if (m)
			bound += (unsigned)__builtin_popcountll(m) +
				 2 * (unsigned)__builtin_popcountll(m &
								    ~(m << 1)) -
				 (c && (m & 7) ? 2 : 0);
	}
	if (bound > max)
		return -1;
	for (unsigned c = 0; c < XOR_CHUNKS; c++) {
		uint64_t m = masks[c];

		while (m) {
			unsigned s = (unsigned)__builtin_ctzll(m), e;
			uint64_t rest = ~m & (~0ULL << s);

			e = rest ? (unsigned)__builtin_ctzll(rest) : 64;
			if (!xor_add(&x, 64 * c + s, 64 * c + e))
				return -1;
			m = e < 64 ? m & (~0ULL << e) : 0;
		}
	}
	if (x.re && !xor_emit(&x))
		return -1;
	return (int)x.len;
}

/* STREAM_COMP_AUTO: try LZ4 on the next candidate page? */
static bool auto_want(struct stream_writer *w)
{
	if (!w->link_rate)
		return false;
	if (w->autoc.rest) {
		w->autoc.rest--;
		return false;
	}
	return true;
}

/* STREAM_COMP_AUTO: account one try; at the end of a window (or probe),
 * apply the rule of stream.h. */
static void auto_account(struct stream_writer *w, uint64_t out, uint64_t ns)
{
	double link = (double)w->link_rate;

	w->autoc.in += FT_PAGE_SIZE;
	w->autoc.out += out;
	w->autoc.ns += ns < AUTO_TRY_NS_MAX ? ns : AUTO_TRY_NS_MAX;
	if (++w->autoc.tries < (w->lz4_on ? AUTO_WINDOW : AUTO_PROBE))
		return;
	w->lz4_on = (double)w->autoc.ns * 1e-9 + (double)w->autoc.out / link <
		    (double)w->autoc.in / link;
	w->autoc.tries = 0;
	if (w->lz4_on) {
		/* Keep half the weight of the past: one odd window does
		 * not turn LZ4 off. */
		w->autoc.in /= 2;
		w->autoc.out /= 2;
		w->autoc.ns /= 2;
	} else {
		/* Off for a while; the next probe starts afresh. */
		w->autoc.rest = AUTO_REST;
		w->autoc.in = w->autoc.out = w->autoc.ns = 0;
	}
}

/* LZ4 of the page `src` into out[0..max): the block's length, or 0. */
static int try_lz4(struct stream_writer *w, const void *src, unsigned char *out,
		   int max, struct stream_stats *st)
{
	uint64_t t0 = 0;
	int n;

	if (w->comp == STREAM_COMP_AUTO)
		t0 = now_ns();
	n = LZ4_compress_fast_extState(w->lz4, src, (char *)out, FT_PAGE_SIZE,
				       max, 1);
	st->lz4_tries++;
	if (w->comp == STREAM_COMP_AUTO) {
		uint64_t ns = now_ns() - t0;

		st->lz4_ns += ns;
		auto_account(w, n > 0 ? (uint64_t)n : FT_PAGE_SIZE, ns);
	}
	return n > 0 ? n : 0;
}

/*
 * Encode the page `src` of frame `pfn` at p (room for FT_PAGE_SIZE
 * bytes) and fill in d->enc and d->len.
 */
static void encode_page(struct stream_writer *w, uint64_t pfn, const void *src,
			unsigned char *p, struct ft_page_desc *d,
			struct stream_stats *st)
{
	const void *snap = NULL, *prev = NULL;
	int xlen = -1, clen = 0;
	bool lz4;

	if (stream_page_is_zero(src)) {
		d->enc = FT_PAGE_ZERO;
		if (w->cache && pfn < CACHE_PFN_LIMIT)
			pagecache_drop(w->cache, pfn);
		st->pages_zero++;
		goto out;
	}
	/* Read the page once: what is encoded is what is cached. */
	if (w->cache && pfn < CACHE_PFN_LIMIT) {
		void *buf = pagecache_get(w->cache, pfn, &prev);

		if (prev)
			xlen = xor_snap(buf, src, prev, p, XOR_KEEP_MAX);
		else
			memcpy(buf, src, FT_PAGE_SIZE);
		snap = buf;
	}
	if (xlen >= 0 && xlen <= (int)XOR_ALONE_MAX)
		lz4 = false;
	else if (w->comp == STREAM_COMP_AUTO)
		lz4 = auto_want(w);
	else
		lz4 = w->comp == STREAM_COMP_LZ4;
	if (lz4) {
		if (!snap) {
			memcpy(w->page, src, FT_PAGE_SIZE);
			snap = w->page;
		}
		if (xlen < 0)
			clen = try_lz4(w, snap, p, LZ4_KEEP_MAX, st);
		else if ((clen = try_lz4(w, snap, w->scratch, xlen - 1, st)))
			memcpy(p, w->scratch, (size_t)clen);
	}
	if (clen) {
		d->enc = FT_PAGE_LZ4;
		d->len = (uint32_t)clen;
		st->pages_lz4++;
		st->lz4_bytes += d->len;
	} else if (xlen >= 0) {
		d->enc = FT_PAGE_XOR;
		d->len = (uint32_t)xlen;
		st->pages_xor++;
		st->xor_bytes += d->len;
	} else {
		memcpy(p, snap ? snap : src, FT_PAGE_SIZE);
		d->enc = FT_PAGE_RAW;
		d->len = FT_PAGE_SIZE;
		st->pages_raw++;
	}
out:
	st->saved += FT_PAGE_SIZE - d->len;
}

/* Frame and write one PAGE_BATCH of n <= WRITE_BATCH pages. */
static int write_batch(struct stream_writer *w, const uint64_t *pfns,
		       void *const *pages, unsigned n)
{
	unsigned char *rec = w->batch;
	unsigned char *descs = rec + sizeof(struct ft_rec_hdr) +
			       sizeof(struct ft_rec_page_batch);
	unsigned char *data = descs + (size_t)n * sizeof(struct ft_page_desc);
	unsigned char *p = data;
	struct ft_rec_page_batch bh = {.count = n};
	struct ft_rec_hdr h = {.type = REC_PAGE_BATCH};
	struct stream_stats st = w->stats;
	uint64_t sum;
	size_t len, pad;
	int err;

	for (unsigned i = 0; i < n; i++) {
		struct ft_page_desc d = {.pfn = pfns[i]};

		encode_page(w, pfns[i], pages[i], p, &d, &st);
		p += d.len;
		memcpy(descs + (size_t)i * sizeof(d), &d, sizeof(d));
	}
	len = (size_t)(p - rec) - sizeof(h);
	pad = pad8(len);
	memset(p, 0, pad);
	p += pad;
	h.length = (uint32_t)len;
	memcpy(rec, &h, sizeof(h));
	memcpy(rec + sizeof(h), &bh, sizeof(bh));
	sum = XXH64(rec, (size_t)(p - rec), 0);
	memcpy(p, &sum, sizeof(sum));
	p += sizeof(sum);

	err = chan_write(w->chan, rec, (size_t)(p - rec));
	if (err) {
		/* The receiver may not have what the cache says it has. */
		if (w->cache)
			pagecache_clear(w->cache);
		return err;
	}
	st.records++;
	st.bytes += (uint64_t)(p - rec);
	w->stats = st;
	w->ep.pages += n;
	return 0;
}

int stream_write_pages(struct stream_writer *w, const uint64_t *pfns,
		       void *const *pages, unsigned n)
{
	int err = check_open(w, REC_PAGE_BATCH);

	while (!err && n) {
		unsigned k = n < WRITE_BATCH ? n : WRITE_BATCH;

		err = write_batch(w, pfns, pages, k);
		pfns += k;
		pages += k;
		n -= k;
	}
	return err;
}

int stream_write_ckpt_begin(struct stream_writer *w, uint64_t epoch)
{
	struct ft_rec_ckpt_begin b = {.epoch = epoch};
	int err;

	if (!(w->flags & FT_STREAM_F_CHECKPOINT) || w->ep_open) {
		log_err("stream writer: CKPT_BEGIN %s",
			w->ep_open ? "inside an epoch"
				   : "in a stream without FT_STREAM_F_CHECKPOINT");
		return -EINVAL;
	}
	err = stream_write_record(w, REC_CKPT_BEGIN, &b, sizeof(b));
	if (err)
		return err;
	memset(&w->ep, 0, sizeof(w->ep));
	w->ep_open = true;
	w->ep_epoch = epoch;
	return 0;
}

int stream_write_ckpt_end(struct stream_writer *w)
{
	struct ft_rec_ckpt_end e;
	int err;

	if (!w->ep_open) {
		log_err("stream writer: CKPT_END outside an epoch");
		return -EINVAL;
	}
	e = (struct ft_rec_ckpt_end){
		.epoch = w->ep_epoch,
		.pages = w->ep.pages,
		.disk_writes = w->ep.disk_writes,
		.vcpus = w->ep.vcpus,
		.devices = w->ep.devices,
	};
	err = stream_write_record(w, REC_CKPT_END, &e, sizeof(e));
	if (!err)
		w->ep_open = false;
	return err;
}

int stream_write_end(struct stream_writer *w)
{
	int err = stream_write_record(w, REC_END, NULL, 0);

	return err ? err : chan_flush(w->chan, false);
}

/* ---- reader ---- */

/* Initial record buffer; it grows to the largest record seen. */
#define READ_BUF_INIT (64u << 10)

int stream_reader_init(struct stream_reader *r, struct chan *c)
{
	memset(r, 0, sizeof(*r));
	r->chan = c;
	r->buf = malloc(READ_BUF_INIT);
	r->page = malloc(FT_PAGE_SIZE);
	if (!r->buf || !r->page) {
		stream_reader_fini(r);
		log_err("stream reader: out of memory");
		return -ENOMEM;
	}
	r->buf_size = READ_BUF_INIT;
	return 0;
}

void stream_reader_fini(struct stream_reader *r)
{
	free(r->buf);
	free(r->page);
	memset(r, 0, sizeof(*r));
}

const char *stream_reader_error(const struct stream_reader *r)
{
	return r->msg;
}

/* Fail `r` with err and "<where>: <fmt...>"; log it once. */
static int vfail(struct stream_reader *r, int err, const char *where,
		 const char *fmt, va_list ap)
{
	int n = snprintf(r->msg, sizeof(r->msg), "%s: ", where);

	if (n >= 0 && (size_t)n < sizeof(r->msg))
		vsnprintf(r->msg + n, sizeof(r->msg) - (size_t)n, fmt, ap);
	r->err = err;
	log_err("%s", r->msg);
	return err;
}

static __attribute__((format(printf, 4, 5))) int
fail(struct stream_reader *r, int err, const char *where, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfail(r, err, where, fmt, ap);
	va_end(ap);
	return err;
}

/* Room for any "record #N (NAME) at offset O". */
#define WHERE_SIZE 112

/* "record #N (NAME) at offset O" into buf; unknown types in hex. */
static const char *rec_where(char *buf, uint32_t type, uint64_t index,
			     uint64_t offset)
{
	const struct rec_info *ri = rec_lookup(type);

	if (ri && ri->type == type)
		snprintf(buf, WHERE_SIZE, "record #%llu (%s) at offset %llu",
			 (unsigned long long)index, ri->name,
			 (unsigned long long)offset);
	else
		snprintf(buf, WHERE_SIZE,
			 "record #%llu (type 0x%08x) at offset %llu",
			 (unsigned long long)index, type,
			 (unsigned long long)offset);
	return buf;
}

int stream_rec_fail(struct stream_reader *r, const struct stream_rec *rec,
		    int err, const char *fmt, ...)
{
	char where[WHERE_SIZE];
	va_list ap;

	rec_where(where, rec->type, rec->index, rec->offset);
	va_start(ap, fmt);
	vfail(r, err, where, fmt, ap);
	va_end(ap);
	return err;
}

/* Print the three architecture bytes of a magic, escaping non-text. */
static const char *magic_arch(char *buf, size_t size, const unsigned char *m)
{
	size_t n = 0;

	for (int i = 4; i < 7 && n + 5 <= size; i++)
		n += (size_t)snprintf(
			buf + n, size - n,
			m[i] > 0x20 && m[i] < 0x7f ? "%c" : "\\x%02x", m[i]);
	return buf;
}

int stream_read_header(struct stream_reader *r, struct ft_stream_hdr *out)
{
	static const uint64_t magic = FT_STREAM_MAGIC;
	const unsigned char *want = (const unsigned char *)&magic;
	unsigned char raw[sizeof(struct ft_stream_hdr)];
	struct ft_stream_hdr h;
	char arch[16], other[16];
	uint64_t sum;
	ssize_t n;

	if (r->err)
		return r->err;
	if (r->state != SR_NEW)
		return fail(r, -EINVAL, "header", "read twice");
	n = chan_read_upto(r->chan, raw, sizeof(raw));
	if (n < 0)
		return fail(r, (int)n, "header", "read failed: %s",
			    strerror((int)-n));
	/* Bytes 0..3 "FTST" and 7 '\n' name the format, 4..6 the arch. */
	if (memcmp(raw, want, (size_t)n < 4 ? (size_t)n : 4) ||
	    (n >= 8 && raw[7] != want[7]))
		return fail(r, -EINVAL, "header",
			    "not an ftengine stream (magic %02x %02x %02x %02x "
			    "..., expected \"FTSTx64\\n\")",
			    n > 0 ? raw[0] : 0, n > 1 ? raw[1] : 0,
			    n > 2 ? raw[2] : 0, n > 3 ? raw[3] : 0);
	if (n >= 8 && memcmp(raw + 4, want + 4, 3))
		return fail(r, -ENOEXEC, "header",
			    "stream for another architecture (\"%s\"; this "
			    "reader handles \"%s\")",
			    magic_arch(other, sizeof(other), raw),
			    magic_arch(arch, sizeof(arch), want));
	if ((size_t)n < sizeof(raw))
		return fail(r, -EPIPE, "header",
			    "stream ends after %zd of %zu header bytes", n,
			    sizeof(raw));
	memcpy(&h, raw, sizeof(h));
	r->stats.bytes = sizeof(h);
	if (h.version_major != FT_STREAM_VERSION_MAJOR ||
	    h.version_minor > FT_STREAM_VERSION_MINOR)
		return fail(r, -EPROTONOSUPPORT, "header",
			    "version %u.%u not supported (this reader reads "
			    "%u.0 to %u.%u)",
			    h.version_major, h.version_minor,
			    FT_STREAM_VERSION_MAJOR, FT_STREAM_VERSION_MAJOR,
			    FT_STREAM_VERSION_MINOR);
	sum = XXH64(raw, offsetof(struct ft_stream_hdr, checksum), 0);
	if (sum != h.checksum)
		return fail(r, -EBADMSG, "header",
			    "checksum mismatch (stored 0x%016llx, computed "
			    "0x%016llx)",
			    (unsigned long long)h.checksum,
			    (unsigned long long)sum);
	if (h.page_shift != FT_PAGE_SHIFT)
		return fail(r, -EINVAL, "header",
			    "page shift %u not supported (only %u)",
			    h.page_shift, FT_PAGE_SHIFT);
	if (h.flags & ~FT_STREAM_F_KNOWN)
		return fail(r, -EINVAL, "header", "unknown flags 0x%x",
			    h.flags & ~FT_STREAM_F_KNOWN);
	if (h.reserved0 || h.reserved1)
		return fail(r, -EINVAL, "header",
			    "reserved fields not zero (0x%x, 0x%llx)",
			    h.reserved0, (unsigned long long)h.reserved1);
	r->hdr = h;
	r->state = SR_DOMAIN;
	if (out)
		*out = h;
	return 0;
}

/* Make room for a framed record of `size` bytes, keeping its header. */
static int reserve(struct stream_reader *r, size_t size)
{
	unsigned char *buf;

	if (size <= r->buf_size)
		return 0;
	buf = realloc(r->buf, size);
	if (!buf)
		return -ENOMEM;
	r->buf = buf;
	r->buf_size = size;
	return 0;
}

static int check_domain(struct stream_reader *r, const struct stream_rec *rec)
{
	struct ft_rec_domain d;

	memcpy(&d, rec->body, sizeof(d));
	if (d.mem_size > FT_MEM_SIZE_MAX)
		return stream_rec_fail(
			r, rec, -E2BIG, "mem_size %llu exceeds the limit %llu",
			(unsigned long long)d.mem_size, FT_MEM_SIZE_MAX);
	if (!d.mem_size || d.mem_size % FT_PAGE_SIZE)
		return stream_rec_fail(r, rec, -EINVAL,
				       "mem_size %llu is not a positive "
				       "multiple of the page size %u",
				       (unsigned long long)d.mem_size,
				       FT_PAGE_SIZE);
	if (!d.nr_vcpus || d.nr_vcpus > FT_MAX_VCPUS)
		return stream_rec_fail(r, rec, -EINVAL,
				       "nr_vcpus %u outside 1..%u", d.nr_vcpus,
				       FT_MAX_VCPUS);
	if (d.page_size != 1u << r->hdr.page_shift)
		return stream_rec_fail(r, rec, -EINVAL,
				       "page_size %u does not match the "
				       "header's page shift %u",
				       d.page_size, r->hdr.page_shift);
	if (d.reserved)
		return stream_rec_fail(r, rec, -EINVAL,
				       "reserved field not zero (0x%llx)",
				       (unsigned long long)d.reserved);
	r->domain = d;
	r->domain_index = rec->index;
	return 0;
}

static int check_vcpu(struct stream_reader *r, const struct stream_rec *rec)
{
	struct ft_rec_vcpu_x86 v;

	memcpy(&v, rec->body, sizeof(v));
	if (v.xsave_len > FT_XSAVE_MAX)
		return stream_rec_fail(r, rec, -E2BIG,
				       "xsave_len %u exceeds the limit %u",
				       v.xsave_len, FT_XSAVE_MAX);
	if (rec->len != sizeof(v) + v.xsave_len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "length %u is not %zu + xsave_len %u",
				       rec->len, sizeof(v), v.xsave_len);
	if (v.vcpu_id >= r->domain.nr_vcpus)
		return stream_rec_fail(r, rec, -EINVAL,
				       "vcpu_id %u beyond the domain's %u "
				       "vCPUs",
				       v.vcpu_id, r->domain.nr_vcpus);
	if (r->vcpus_seen & (1ULL << v.vcpu_id))
		return stream_rec_fail(r, rec, -EINVAL, "vCPU %u sent twice",
				       v.vcpu_id);
	r->vcpus_seen |= 1ULL << v.vcpu_id;
	return 0;
}

static int check_device(struct stream_reader *r, const struct stream_rec *rec)
{
	struct ft_rec_device d;

	memcpy(&d, rec->body, sizeof(d));
	if (d.len > FT_DEVICE_BLOB_MAX)
		return stream_rec_fail(r, rec, -E2BIG,
				       "blob length %u exceeds the limit %u",
				       d.len, FT_DEVICE_BLOB_MAX);
	if (rec->len != sizeof(d) + d.len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "length %u is not %zu + blob length %u",
				       rec->len, sizeof(d), d.len);
	return 0;
}

static int check_end(struct stream_reader *r, const struct stream_rec *rec)
{
	uint32_t n = r->domain.nr_vcpus;
	uint64_t all = n == 64 ? ~0ULL : (1ULL << n) - 1;
	uint64_t missing = all & ~r->vcpus_seen;

	if (missing)
		return stream_rec_fail(r, rec, -EINVAL,
				       "vCPU %d of %u never sent",
				       __builtin_ctzll(missing), n);
	return 0;
}

/* A checkpoint stream (FT_STREAM_F_CHECKPOINT, 1.2 on). */
static bool ckpt_stream(const struct stream_reader *r)
{
	return r->hdr.flags & FT_STREAM_F_CHECKPOINT;
}

static int check_ckpt_begin(struct stream_reader *r,
			    const struct stream_rec *rec)
{
	struct ft_rec_ckpt_begin b;

	memcpy(&b, rec->body, sizeof(b));
	if (!ckpt_stream(r) || r->hdr.version_minor < FT_STREAM_MINOR_CKPT)
		return stream_rec_fail(r, rec, -EINVAL,
				       "checkpoint record in a stream "
				       "without checkpoints (version %u.%u, "
				       "flags 0x%x)",
				       r->hdr.version_major,
				       r->hdr.version_minor, r->hdr.flags);
	if (b.reserved)
		return stream_rec_fail(r, rec, -EINVAL,
				       "reserved field not zero (0x%llx)",
				       (unsigned long long)b.reserved);
	if (r->in_epoch)
		return stream_rec_fail(r, rec, -EINVAL,
				       "epoch %llu begins inside epoch %llu",
				       (unsigned long long)b.epoch,
				       (unsigned long long)r->epoch);
	if (r->any_epoch && b.epoch != r->epoch + 1)
		return stream_rec_fail(r, rec, -EINVAL,
				       "epoch %llu follows epoch %llu",
				       (unsigned long long)b.epoch,
				       (unsigned long long)r->epoch);
	r->in_epoch = r->any_epoch = true;
	r->epoch = b.epoch;
	r->vcpus_seen = 0;
	memset(&r->ep, 0, sizeof(r->ep));
	return 0;
}

static int check_end(struct stream_reader *r, const struct stream_rec *rec);

static int check_ckpt_end(struct stream_reader *r, const struct stream_rec *rec)
{
	struct ft_rec_ckpt_end e;
	int err;

	memcpy(&e, rec->body, sizeof(e));
	if (!r->in_epoch)
		return stream_rec_fail(r, rec, -EINVAL,
				       "CKPT_END outside an epoch");
	if (e.epoch != r->epoch)
		return stream_rec_fail(r, rec, -EINVAL,
				       "ends epoch %llu inside epoch %llu",
				       (unsigned long long)e.epoch,
				       (unsigned long long)r->epoch);
	if (e.reserved)
		return stream_rec_fail(r, rec, -EINVAL,
				       "reserved field not zero (0x%llx)",
				       (unsigned long long)e.reserved);
	if (e.pages != r->ep.pages || e.disk_writes != r->ep.disk_writes ||
	    e.vcpus != r->ep.vcpus || e.devices != r->ep.devices)
		return stream_rec_fail(
			r, rec, -EINVAL,
			"epoch %llu declares %u pages, %u disk writes, %u "
			"vCPUs, %u devices but carried %u, %u, %u, %u",
			(unsigned long long)e.epoch, e.pages, e.disk_writes,
			e.vcpus, e.devices, r->ep.pages, r->ep.disk_writes,
			r->ep.vcpus, r->ep.devices);
	err = check_end(r, rec); /* every vCPU, once */
	if (!err)
		r->in_epoch = false;
	return err;
}

/* Checkpoint streams: where a record may stand, and what it adds to the
 * epoch's counts. */
static int check_in_epoch(struct stream_reader *r, const struct stream_rec *rec)
{
	switch (rec->type) {
	case REC_PAGE_BATCH: {
		struct ft_rec_page_batch b;

		/* The count is checked against the length when decoded. */
		memcpy(&b, rec->body, sizeof(b));
		if (r->in_epoch)
			r->ep.pages += b.count;
		return 0;
	}
	case REC_DISK_WRITE: {
		struct ft_rec_disk_write d;
		uint64_t want = r->in_epoch ? r->epoch : 0;

		memcpy(&d, rec->body, sizeof(d));
		if (d.epoch != want)
			return stream_rec_fail(
				r, rec, -EINVAL, "epoch %llu, expected %llu",
				(unsigned long long)d.epoch,
				(unsigned long long)want);
		if (r->in_epoch)
			r->ep.disk_writes++;
		return 0;
	}
	case REC_VCPU_X86:
	case REC_DEVICE:
		if (!r->in_epoch)
			return stream_rec_fail(r, rec, -EINVAL,
					       "outside a checkpoint epoch");
		if (rec->type == REC_VCPU_X86)
			r->ep.vcpus++;
		else
			r->ep.devices++;
		return 0;
	case REC_END:
		if (r->in_epoch)
			return stream_rec_fail(r, rec, -EINVAL,
					       "stream ends inside epoch %llu",
					       (unsigned long long)r->epoch);
		return 0;
	default:
		return 0;
	}
}

/*
 * Read one record: framing, checksum and padding, before anything about
 * it is believed beyond the length cap of its type.
 */
static int read_record(struct stream_reader *r, struct stream_rec *rec,
		       const struct rec_info **info)
{
	struct ft_rec_hdr h;
	const struct rec_info *ri;
	uint32_t min = 0, max = FT_REC_BODY_MAX;
	size_t size, pad;
	uint64_t stored, sum;
	char where[WHERE_SIZE];
	ssize_t n;

	rec->index = r->stats.records;
	rec->offset = r->stats.bytes;
	rec->type = 0;
	snprintf(where, sizeof(where), "record #%llu at offset %llu",
		 (unsigned long long)rec->index,
		 (unsigned long long)rec->offset);
	n = chan_read_upto(r->chan, r->buf, sizeof(h));
	if (n < 0)
		return fail(r, (int)n, where, "read failed: %s",
			    strerror((int)-n));
	if (n == 0)
		return fail(r, -EPIPE, where, "stream ends without END");
	if ((size_t)n < sizeof(h))
		return fail(r, -EPIPE, where,
			    "stream ends inside the record header (%zd of %zu "
			    "bytes)",
			    n, sizeof(h));
	memcpy(&h, r->buf, sizeof(h));
	rec->type = h.type;
	rec->len = h.length;
	rec_where(where, h.type, rec->index, rec->offset);

	ri = rec_lookup(h.type);
	if (ri && ri->type == h.type) {
		min = ri->min;
		max = ri->max;
	}
	if (h.length > max)
		return fail(r, -E2BIG, where, "length %u exceeds the limit %u",
			    h.length, max);
	if (h.length < min)
		return fail(r, -EINVAL, where, "length %u below the minimum %u",
			    h.length, min);

	pad = pad8(h.length);
	size = sizeof(h) + h.length + pad + sizeof(sum);
	if (reserve(r, size))
		return fail(r, -ENOMEM, where, "cannot allocate %zu bytes",
			    size);
	n = chan_read_upto(r->chan, r->buf + sizeof(h), size - sizeof(h));
	if (n < 0)
		return fail(r, (int)n, where, "read failed: %s",
			    strerror((int)-n));
	if ((size_t)n < size - sizeof(h))
		return fail(r, -EPIPE, where,
			    "stream ends inside the record (%zd of %zu bytes "
			    "after the record header)",
			    n, size - sizeof(h));
	r->stats.bytes += size;

	memcpy(&stored, r->buf + size - sizeof(sum), sizeof(sum));
	sum = XXH64(r->buf, size - sizeof(sum), 0);
	if (sum != stored)
		return fail(r, -EBADMSG, where,
			    "checksum mismatch (stored 0x%016llx, computed "
			    "0x%016llx)",
			    (unsigned long long)stored,
			    (unsigned long long)sum);
	for (size_t i = 0; i < pad; i++) {
		unsigned char b = r->buf[sizeof(h) + h.length + i];

		if (b)
			return fail(r, -EINVAL, where,
				    "padding byte %zu is 0x%02x, not zero", i,
				    b);
	}
	rec->body = r->buf + sizeof(h);
	r->stats.records++;
	*info = ri;
	return 0;
}

int stream_next(struct stream_reader *r, struct stream_rec *rec)
{
	const struct rec_info *ri;
	int err;

	if (r->err)
		return r->err;
	if (r->state == SR_NEW || r->state == SR_ENDED)
		return fail(r, -EINVAL, "stream_next",
			    r->state == SR_NEW ? "called before the header"
					       : "called after END");
	for (;;) {
		err = read_record(r, rec, &ri);
		if (err)
			return err;
		if (ri && ri->reserved)
			return stream_rec_fail(r, rec, -EOPNOTSUPP,
					       "reserved record (%s), not "
					       "supported by a %u.%u reader",
					       ri->name,
					       FT_STREAM_VERSION_MAJOR,
					       FT_STREAM_VERSION_MINOR);
		if (ri && ri->type != rec->type)
			return stream_rec_fail(r, rec, -EINVAL,
					       "type 0x%08x: %s is allocated "
					       "as 0x%08x",
					       rec->type, ri->name, ri->type);
		if (!ri && !(rec->type & REC_F_OPTIONAL))
			return stream_rec_fail(r, rec, -EOPNOTSUPP,
					       "unknown mandatory record");
		if (r->state == SR_DOMAIN && rec->type != REC_DOMAIN)
			return stream_rec_fail(r, rec, -EINVAL,
					       "DOMAIN missing: the first "
					       "record must be DOMAIN");
		if (ri)
			break;
		r->stats.skipped++; /* unknown optional */
	}

	if (ckpt_stream(r)) {
		err = check_in_epoch(r, rec);
		if (err)
			return err;
	}
	switch (rec->type) {
	case REC_DOMAIN:
		if (r->state != SR_DOMAIN)
			return stream_rec_fail(
				r, rec, -EINVAL,
				"duplicate DOMAIN (first was "
				"record #%llu)",
				(unsigned long long)r->domain_index);
		err = check_domain(r, rec);
		if (!err)
			r->state = SR_BODY;
		return err;
	case REC_VCPU_X86:
		return check_vcpu(r, rec);
	case REC_DEVICE:
		return check_device(r, rec);
	case REC_END:
		/* A checkpoint stream checked its vCPUs per epoch. */
		err = ckpt_stream(r) ? 0 : check_end(r, rec);
		if (!err)
			r->state = SR_ENDED;
		return err;
	case REC_CKPT_BEGIN:
		return check_ckpt_begin(r, rec);
	case REC_CKPT_END:
		return ckpt_stream(r) ? check_ckpt_end(r, rec)
				      : check_ckpt_begin(r, rec); /* refuses */
	default: /* PAGE_BATCH, NOTE: contents checked by their users */
		return 0;
	}
}

int stream_expect_eof(struct stream_reader *r)
{
	struct ft_rec_hdr h;
	char where[WHERE_SIZE];
	ssize_t n;

	if (r->err)
		return r->err;
	if (r->state != SR_ENDED)
		return fail(r, -EINVAL, "stream_expect_eof",
			    "called before END");
	snprintf(where, sizeof(where), "after END at offset %llu",
		 (unsigned long long)r->stats.bytes);
	n = chan_read_upto(r->chan, &h, sizeof(h));
	if (n < 0)
		return fail(r, (int)n, where, "read failed: %s",
			    strerror((int)-n));
	if (n == 0)
		return 0;
	if ((size_t)n < sizeof(h))
		return fail(r, -EINVAL, where, "%zd stray bytes", n);
	rec_where(where, h.type, r->stats.records, r->stats.bytes);
	return fail(r, -EINVAL, where, "record after END");
}

enum lz4_verdict { LZ4_OK, LZ4_CORRUPT, LZ4_SIZE, LZ4_END_RULES };

/*
 * Check the LZ4 block p[0..len) against docs/stream-format.md
 * (PAGE_BATCH, LZ4) without decoding it: well-formed sequences, match
 * offsets within the output so far, a literals-only last sequence ending
 * exactly at len, an output of exactly one page (*total gets its size),
 * and the end-of-block rules.  liblz4's decoder is memory-safe but takes
 * some blocks the format forbids (offset 0, for one), so this comes first.
 */
static enum lz4_verdict lz4_check(const unsigned char *p, uint32_t len,
				  uint64_t *total)
{
	uint64_t out = 0, lit, ml, last_match = 0;
	bool matched = false;
	uint32_t i = 0, off;
	unsigned char b;

	for (;;) {
		if (i >= len)
			return LZ4_CORRUPT; /* ends with a match */
		b = p[i++];
		lit = b >> 4;
		ml = b & 15;
		if (lit == 15)
			do {
				if (i >= len)
					return LZ4_CORRUPT;
				b = p[i++];
				lit += b;
			} while (b == 255);
		if (lit > len - i)
			return LZ4_CORRUPT;
		i += (uint32_t)lit;
		out += lit;
		if (i == len)
			break;
		if (len - i < 2)
			return LZ4_CORRUPT;
		off = p[i] | (uint32_t)p[i + 1] << 8;
		i += 2;
		if (!off || off > out)
			return LZ4_CORRUPT;
		if (ml == 15)
			do {
				if (i >= len)
					return LZ4_CORRUPT;
				b = p[i++];
				ml += b;
			} while (b == 255);
		last_match = out;
		matched = true;
		out += ml + 4;
	}
	*total = out;
	if (out != FT_PAGE_SIZE)
		return LZ4_SIZE;
	/* The last 5 bytes are literals; the last match starts at least
	 * 12 bytes before the end. */
	if (lit < 5 || (matched && last_match + 12 > out))
		return LZ4_END_RULES;
	return LZ4_OK;
}

enum xor_verdict { XOR_OK, XOR_CUT, XOR_LEN, XOR_EMPTY, XOR_PAST };

/*
 * Read the ULEB128 length at p[*i] (of len bytes): one or two bytes,
 * minimally encoded (stream_wire.h).  XOR_CUT if the data ends first.
 */
static enum xor_verdict get_len(const unsigned char *p, uint32_t len,
				uint32_t *i, uint32_t *v)
{
	if (*i >= len)
		return XOR_CUT;
	if (p[*i] < 0x80) {
		*v = p[(*i)++];
		return XOR_OK;
	}
	if (len - *i < 2)
		return XOR_CUT;
	if (p[*i + 1] >= 0x80 || !p[*i + 1])
		return XOR_LEN;
	*v = (p[*i] & 0x7fu) | (uint32_t)p[*i + 1] << 7;
	*i += 2;
	return XOR_OK;
}

/* One XOR run's place, for messages and for xor_apply. */
struct xor_run {
	uint32_t at;	       /* data offset of the run */
	uint32_t pos, skip, n; /* page offset before it, its lengths */
};

/*
 * Check the XOR delta p[0..len) against docs/stream-format.md
 * (PAGE_BATCH, XOR): every run's lengths well-formed and within the
 * data, no empty run, no run past the end of the page.  *run describes
 * the offending run.
 */
static enum xor_verdict xor_check(const unsigned char *p, uint32_t len,
				  struct xor_run *run)
{
	uint32_t i = 0, pos = 0;
	enum xor_verdict v;

	while (i < len) {
		*run = (struct xor_run){.at = i, .pos = pos};
		v = get_len(p, len, &i, &run->skip);
		if (v == XOR_OK)
			v = get_len(p, len, &i, &run->n);
		if (v != XOR_OK)
			return v;
		if (!run->n)
			return XOR_EMPTY;
		if (run->skip + run->n > FT_PAGE_SIZE - pos)
			return XOR_PAST;
		if (run->n > len - i)
			return XOR_CUT;
		i += run->n;
		pos += run->skip + run->n;
	}
	return XOR_OK;
}

/* Decode the XOR delta p[0..len), which xor_check passed, against base
 * into out: a copy of base, then each run xored in. */
static void xor_apply(const unsigned char *p, uint32_t len,
		      const unsigned char *base, unsigned char *out)
{
	uint32_t i = 0, pos = 0, skip, n, k;

	memcpy(out, base, FT_PAGE_SIZE);
	while (i < len) {
		get_len(p, len, &i, &skip);
		get_len(p, len, &i, &n);
		pos += skip;
		for (k = 0; k + 8 <= n; k += 8) {
			uint64_t a, b;

			memcpy(&a, out + pos + k, 8);
			memcpy(&b, p + i + k, 8);
			a ^= b;
			memcpy(out + pos + k, &a, 8);
		}
		for (; k < n; k++)
			out[pos + k] ^= p[i + k];
		pos += n;
		i += n;
	}
}

/* Was frame `pfn` sent before page i of this batch: earlier in the
 * batch, or (base says) in an earlier one? */
static bool sent_before(const unsigned char *descs, uint32_t i, uint64_t pfn,
			stream_base_cb base, void *ctx)
{
	struct ft_page_desc d;

	if (base(ctx, pfn))
		return true;
	while (i--) {
		memcpy(&d, descs + (size_t)i * sizeof(d), sizeof(d));
		if (d.pfn == pfn)
			return true;
	}
	return false;
}

/* Check a PAGE_BATCH's header, every descriptor, every LZ4 block and
 * every XOR delta; *count gets the number of pages. */
static int check_batch(struct stream_reader *r, const struct stream_rec *rec,
		       stream_base_cb base, void *ctx, uint32_t *count)
{
	const unsigned char *body = rec->body;
	uint64_t nr_pfns = r->domain.mem_size >> r->hdr.page_shift;
	const unsigned char *data;
	struct ft_rec_page_batch bh;
	struct ft_page_desc d;
	uint64_t data_len, total = 0;

	if (rec->type != REC_PAGE_BATCH)
		return stream_rec_fail(r, rec, -EINVAL, "not a PAGE_BATCH");
	memcpy(&bh, body, sizeof(bh));
	if (!bh.count || bh.count > FT_PAGE_BATCH_MAX)
		return stream_rec_fail(r, rec, -EINVAL,
				       "page count %u outside 1..%u", bh.count,
				       FT_PAGE_BATCH_MAX);
	if (bh.reserved)
		return stream_rec_fail(r, rec, -EINVAL,
				       "reserved field not zero (0x%x)",
				       bh.reserved);
	if (sizeof(bh) + (uint64_t)bh.count * sizeof(struct ft_page_desc) >
	    rec->len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "%u descriptors do not fit in %u bytes",
				       bh.count, rec->len);
	data_len = rec->len - sizeof(bh) -
		   (uint64_t)bh.count * sizeof(struct ft_page_desc);

	for (uint32_t i = 0; i < bh.count; i++) {
		memcpy(&d, body + sizeof(bh) + i * sizeof(d), sizeof(d));
		if (d.pfn >= nr_pfns)
			return stream_rec_fail(
				r, rec, -EINVAL,
				"page %u pfn 0x%llx beyond guest "
				"RAM (%llu pages)",
				i, (unsigned long long)d.pfn,
				(unsigned long long)nr_pfns);
		if (d.reserved)
			return stream_rec_fail(r, rec, -EINVAL,
					       "page %u pfn 0x%llx: reserved "
					       "field not zero (0x%x)",
					       i, (unsigned long long)d.pfn,
					       d.reserved);
		switch (d.enc) {
		case FT_PAGE_RAW:
			if (d.len == FT_PAGE_SIZE)
				break;
			return stream_rec_fail(r, rec, -EINVAL,
					       "page %u pfn 0x%llx: RAW length "
					       "%u, not %u",
					       i, (unsigned long long)d.pfn,
					       d.len, FT_PAGE_SIZE);
		case FT_PAGE_ZERO:
			if (!d.len)
				break;
			return stream_rec_fail(
				r, rec, -EINVAL,
				"page %u pfn 0x%llx: ZERO length "
				"%u, not 0",
				i, (unsigned long long)d.pfn, d.len);
		case FT_PAGE_LZ4:
			if (d.len && d.len < FT_PAGE_SIZE)
				break;
			return stream_rec_fail(r, rec, -EINVAL,
					       "page %u pfn 0x%llx: LZ4 length "
					       "%u outside 1..%u",
					       i, (unsigned long long)d.pfn,
					       d.len, FT_PAGE_SIZE - 1);
		case FT_PAGE_XOR:
			if (r->hdr.version_minor < FT_STREAM_MINOR_XOR)
				return stream_rec_fail(
					r, rec, -EOPNOTSUPP,
					"page %u pfn 0x%llx: XOR encoding is "
					"reserved in a %u.%u stream",
					i, (unsigned long long)d.pfn,
					r->hdr.version_major,
					r->hdr.version_minor);
			if (d.len >= FT_PAGE_SIZE)
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR length %u "
					"outside 0..%u",
					i, (unsigned long long)d.pfn, d.len,
					FT_PAGE_SIZE - 1);
			if (!base)
				return stream_rec_fail(
					r, rec, -EOPNOTSUPP,
					"page %u pfn 0x%llx: XOR page, but "
					"the caller keeps no previous "
					"versions (stream_decode_pages)",
					i, (unsigned long long)d.pfn);
			if (!sent_before(body + sizeof(bh), i, d.pfn, base,
					 ctx))
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR page for a "
					"frame not sent before in this stream",
					i, (unsigned long long)d.pfn);
			break;
		default:
			return stream_rec_fail(r, rec, -EINVAL,
					       "page %u pfn 0x%llx: unknown "
					       "encoding %u",
					       i, (unsigned long long)d.pfn,
					       d.enc);
		}
		total += d.len;
	}
	if (total != data_len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "descriptors give %llu data bytes, the "
				       "record holds %llu",
				       (unsigned long long)total,
				       (unsigned long long)data_len);

	data = body + sizeof(bh) +
	       (size_t)bh.count * sizeof(struct ft_page_desc);
	for (uint32_t i = 0; i < bh.count; data += d.len, i++) {
		struct xor_run run = {0};
		uint64_t out = 0;

		memcpy(&d, body + sizeof(bh) + i * sizeof(d), sizeof(d));
		if (d.enc == FT_PAGE_XOR) {
			switch (xor_check(data, d.len, &run)) {
			case XOR_OK:
				continue;
			case XOR_CUT:
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR data (%u "
					"bytes): run at byte %u is cut short",
					i, (unsigned long long)d.pfn, d.len,
					run.at);
			case XOR_LEN:
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR data (%u "
					"bytes): run at byte %u has a length "
					"that is not a minimal 1- or 2-byte "
					"ULEB128",
					i, (unsigned long long)d.pfn, d.len,
					run.at);
			case XOR_EMPTY:
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR data (%u "
					"bytes): run at byte %u is empty",
					i, (unsigned long long)d.pfn, d.len,
					run.at);
			case XOR_PAST:
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: XOR data (%u "
					"bytes): run at byte %u passes the end "
					"of the page (%u + %u + %u > %u)",
					i, (unsigned long long)d.pfn, d.len,
					run.at, run.pos, run.skip, run.n,
					FT_PAGE_SIZE);
			}
		}
		if (d.enc != FT_PAGE_LZ4)
			continue;
		switch (lz4_check(data, d.len, &out)) {
		case LZ4_OK:
			continue;
		case LZ4_CORRUPT:
			return stream_rec_fail(
				r, rec, -EINVAL,
				"page %u pfn 0x%llx: LZ4 data (%u "
				"bytes) is corrupt",
				i, (unsigned long long)d.pfn, d.len);
		case LZ4_SIZE:
			return stream_rec_fail(
				r, rec, -EINVAL,
				"page %u pfn 0x%llx: LZ4 data (%u "
				"bytes) decodes to %llu bytes, "
				"not %u",
				i, (unsigned long long)d.pfn, d.len,
				(unsigned long long)out, FT_PAGE_SIZE);
		case LZ4_END_RULES:
			return stream_rec_fail(
				r, rec, -EINVAL,
				"page %u pfn 0x%llx: LZ4 data (%u "
				"bytes) breaks the end-of-block "
				"rules",
				i, (unsigned long long)d.pfn, d.len);
		}
	}
	*count = bh.count;
	return 0;
}

int stream_decode_pages2(struct stream_reader *r, const struct stream_rec *rec,
			 stream_page_cb cb, void *ctx, stream_base_cb base)
{
	const unsigned char *body = rec->body, *descs, *p;
	uint32_t count = 0;
	int err;

	if (r->err)
		return r->err;
	err = check_batch(r, rec, base, ctx, &count);
	if (err)
		return err;
	descs = body + sizeof(struct ft_rec_page_batch);
	p = descs + (size_t)count * sizeof(struct ft_page_desc);
	for (uint32_t i = 0; i < count; i++) {
		const void *page = p, *prev;
		struct ft_page_desc d;
		int n;

		memcpy(&d, descs + i * sizeof(d), sizeof(d));
		if (d.enc == FT_PAGE_ZERO) {
			page = zero_page;
			r->stats.pages_zero++;
		} else if (d.enc == FT_PAGE_LZ4) {
			/* lz4_check passed it: liblz4 disagreeing would
			 * be a bug in one of the two. */
			n = LZ4_decompress_safe((const char *)p,
						(char *)r->page, (int)d.len,
						FT_PAGE_SIZE);
			if (n != FT_PAGE_SIZE)
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: LZ4 data (%u "
					"bytes) rejected by liblz4 (%d)",
					i, (unsigned long long)d.pfn, d.len, n);
			page = r->page;
			r->stats.pages_lz4++;
			r->stats.lz4_bytes += d.len;
		} else if (d.enc == FT_PAGE_XOR) {
			/* check_batch made sure there is a base: this
			 * frame was sent before, in this batch or another. */
			prev = base(ctx, d.pfn);
			if (!prev)
				return stream_rec_fail(
					r, rec, -EINVAL,
					"page %u pfn 0x%llx: the receiver lost "
					"the frame's previous version",
					i, (unsigned long long)d.pfn);
			xor_apply(p, d.len, prev, r->page);
			page = r->page;
			r->stats.pages_xor++;
			r->stats.xor_bytes += d.len;
		} else {
			r->stats.pages_raw++;
		}
		r->stats.saved += FT_PAGE_SIZE - d.len;
		p += d.len;
		err = cb(ctx, d.pfn, page);
		if (err)
			return err;
	}
	return 0;
}

int stream_decode_pages(struct stream_reader *r, const struct stream_rec *rec,
			stream_page_cb cb, void *ctx)
{
	return stream_decode_pages2(r, rec, cb, ctx, NULL);
}
