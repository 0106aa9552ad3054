// SPDX-License-Identifier: MIT
/*
 * fuzz_stream.c - arbitrary bytes through the stream reader, the way a
 * restorer reads: header, then stream_next with every record decoded
 * (pages, vCPUs, devices) until END or an error.
 *
 * Input: one mode byte, then the stream.  Mode bit 0 set: before reading,
 * recompute the header checksum and the trailer of every record the
 * framing reaches, so that mutations get past the checksums and exercise
 * what lies behind them; clear: the bytes go in as they are.
 *
 * Pages are decoded with stream_decode_pages2; the base callback knows
 * which frames the stream delivered (a small hash set) and hands out
 * their last contents (frames 0..15) or a fixed page (others), so XOR
 * pages are decoded too.
 *
 * Mode bit 1 set instead checks the writer against the reader: the bytes
 * after the mode byte become guest pages (up to 8, the last one padded
 * with zeros), which are written as a stream (bit 2: with LZ4) and read
 * back; the reader must accept it and return every page unchanged.
 * With bit 3 also set, the pages go through a page cache in three rounds
 * with edits in between (see xor_round_trip), so that XOR pages are
 * written; the receiver must end with the sender's pages, and with the
 * cache's copy of every cached frame.
 *
 * Two builds:
 *   bench/fuzz.mk (clang, -DFT_LIBFUZZER): libFuzzer drives
 *     LLVMFuzzerTestOneInput; run it with bench/fuzz.sh.
 *   the top Makefile (build/bench/fuzz_stream, build-san/...): a main
 *     that runs each file named on the command line through the same
 *     code, to replay a crash under gcc and its sanitizers.
 *
 * Beyond the sanitizers, it aborts if the reader breaks its contract: an
 * error without a message or a message without an error, or a page
 * outside guest RAM handed to the callback.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "channel.h"
#include "log.h"
#include "pagecache.h"
#include "stream.h"
#include "stream_state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The reader logs every rejection: only the replay main wants to see it. */
static bool quiet = true;

/* Recompute every checksum the framing of s[0..n) reaches. */
static void fix_checksums(uint8_t *s, size_t n)
{
	size_t off = sizeof(struct ft_stream_hdr);
	uint64_t sum;

	if (n < off)
		return;
	sum = XXH64(s, offsetof(struct ft_stream_hdr, checksum), 0);
	memcpy(s + offsetof(struct ft_stream_hdr, checksum), &sum, 8);
	while (n - off >= sizeof(struct ft_rec_hdr)) {
		struct ft_rec_hdr h;
		uint64_t body;

		memcpy(&h, s + off, sizeof(h));
		body = sizeof(h) + h.length + (8 - h.length % 8) % 8;
		if (body + 8 > n - off)
			return;
		sum = XXH64(s + off, body, 0);
		memcpy(s + off + body, &sum, 8);
		off += body + 8;
	}
}

/* Frames delivered so far (pfn + 1; 0: free), and the contents of the
 * first few: enough for any input under 64 KiB. */
#define SEEN_SLOTS 8192
#define KEPT_PAGES 16

struct pages {
	const struct stream_reader *r;
	unsigned sum;
	uint64_t seen[SEEN_SLOTS];
	unsigned used[SEEN_SLOTS], nr_used; /* slots of seen[] to clear */
	uint8_t kept[KEPT_PAGES][FT_PAGE_SIZE];
};

static bool seen(struct pages *p, uint64_t pfn, bool add)
{
	unsigned h = (unsigned)((pfn * 0x9e3779b97f4a7c15ULL) >> 51);

	for (unsigned i = 0; i < SEEN_SLOTS; i++, h = (h + 1) % SEEN_SLOTS) {
		if (p->seen[h] == pfn + 1)
			return true;
		if (!p->seen[h]) {
			if (add) {
				p->seen[h] = pfn + 1;
				p->used[p->nr_used++] = h;
			}
			return add;
		}
	}
	return add; /* full: cannot happen under 64 KiB */
}

static int page_cb(void *ctx, uint64_t pfn, const void *page)
{
	struct pages *p = ctx;

	if (pfn >= p->r->domain.mem_size / FT_PAGE_SIZE)
		abort();
	p->sum += ((const uint8_t *)page)[pfn % FT_PAGE_SIZE]; /* touch it */
	if (pfn < KEPT_PAGES)
		memcpy(p->kept[pfn], page, FT_PAGE_SIZE);
	seen(p, pfn, true);
	return 0;
}

static const void *base_cb(void *ctx, uint64_t pfn)
{
	static const uint8_t other[FT_PAGE_SIZE] = {1, 2, 3};
	struct pages *p = ctx;

	if (pfn >= p->r->domain.mem_size / FT_PAGE_SIZE)
		abort();
	if (!seen(p, pfn, false))
		return NULL;
	return pfn < KEPT_PAGES ? p->kept[pfn] : other;
}

#define RT_PAGES 8

struct round_trip {
	uint8_t pages[RT_PAGES][FT_PAGE_SIZE];
	unsigned seen;
	uint8_t got[RT_PAGES][FT_PAGE_SIZE]; /* xor_round_trip's receiver */
	bool have[RT_PAGES];
};

static int rt_page_cb(void *ctx, uint64_t pfn, const void *page)
{
	struct round_trip *rt = ctx;

	if (pfn != rt->seen || memcmp(page, rt->pages[pfn], FT_PAGE_SIZE))
		abort();
	rt->seen++;
	return 0;
}

/* Write d[0..n) as guest pages, read them back; abort on any mismatch. */
static void round_trip(const uint8_t *d, size_t n, bool lz4)
{
	static const struct hv_vcpu_state vcpu;
	static struct round_trip rt;
	unsigned np = n ? (unsigned)((n + FT_PAGE_SIZE - 1) / FT_PAGE_SIZE) : 1;
	uint64_t pfns[RT_PAGES];
	void *ptrs[RT_PAGES];
	struct stream_writer w;
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *wc, *rc;
	const void *out;
	size_t len;
	int err;

	if (np > RT_PAGES)
		np = RT_PAGES;
	memset(&rt, 0, sizeof(rt));
	memcpy(rt.pages, d, n < sizeof(rt.pages) ? n : sizeof(rt.pages));
	for (unsigned i = 0; i < np; i++) {
		pfns[i] = i;
		ptrs[i] = rt.pages[i];
	}
	if (chan_open_mem(&wc, NULL, 0, 1 << 20) ||
	    stream_writer_init(&w, wc, 0,
			       lz4 ? STREAM_COMP_LZ4 : STREAM_COMP_NONE) ||
	    stream_write_header(&w) ||
	    stream_write_domain(&w, np * FT_PAGE_SIZE, 1) ||
	    stream_write_pages(&w, pfns, ptrs, np) ||
	    stream_write_vcpu(&w, 0, &vcpu) || stream_write_end(&w))
		abort();
	stream_writer_fini(&w);
	out = chan_mem_data(wc, &len);
	if (chan_open_mem(&rc, out, len, len) || stream_reader_init(&r, rc))
		abort();
	chan_close(wc);
	err = stream_read_header(&r, NULL);
	while (!err) {
		err = stream_next(&r, &rec);
		if (!err && rec.type == REC_PAGE_BATCH)
			err = stream_decode_pages(&r, &rec, rt_page_cb, &rt);
		if (!err && rec.type == REC_END)
			break;
	}
	if (err || rt.seen != np || stream_expect_eof(&r))
		abort();
	stream_reader_fini(&r);
	chan_close(rc);
}

static int xrt_page_cb(void *ctx, uint64_t pfn, const void *page)
{
	struct round_trip *rt = ctx;

	if (pfn >= RT_PAGES)
		abort();
	memcpy(rt->got[pfn], page, FT_PAGE_SIZE);
	rt->have[pfn] = true;
	return 0;
}

static const void *xrt_base_cb(void *ctx, uint64_t pfn)
{
	struct round_trip *rt = ctx;

	if (pfn >= RT_PAGES)
		abort();
	return rt->have[pfn] ? rt->got[pfn] : NULL;
}

/*
 * Apply edits e[0..n) (3 bytes each) to the first np pages of rt:
 * t, lo, hi: page t % np; t 0xff: zero it; t & 0x80: set (hi % 32) * 16
 * bytes from offset lo * 16 to lo; else xor byte (lo | hi << 8) % 4096
 * with t | 1.
 */
static void edit(struct round_trip *rt, unsigned np, const uint8_t *e, size_t n)
{
	for (size_t i = 0; i + 3 <= n; i += 3) {
		uint8_t t = e[i], lo = e[i + 1], hi = e[i + 2];
		uint8_t *pg = rt->pages[t % np];

		if (t == 0xff) {
			memset(pg, 0, FT_PAGE_SIZE);
		} else if (t & 0x80) {
			unsigned at = lo * 16u, len = (hi % 32u) * 16u;

			memset(pg + at, lo,
			       at + len > FT_PAGE_SIZE ? FT_PAGE_SIZE - at
						       : len);
		} else {
			pg[(lo | hi << 8) % FT_PAGE_SIZE] ^= t | 1;
		}
	}
}

/*
 * d[0]: bits 0-2 pages - 1, bit 3 a cache of 2 pages (else 16), bit 4
 * STREAM_COMP_LZ4, bit 5 STREAM_COMP_AUTO (slow link); d[1]: edit
 * bytes E; then E bytes of edits, then the pages' initial contents.
 * Round 1 sends every page, round 2 (after the first half of the edits)
 * every page and page 0 again, round 3 (after the rest) every page in
 * reverse.  Abort if the receiver ends with anything but the sender's
 * pages, or a cached frame differs from the receiver's copy.
 */
static void xor_round_trip(const uint8_t *d, size_t n)
{
	static const struct hv_vcpu_state vcpu;
	static struct round_trip rt;
	static struct pagecache pc;
	uint64_t pfns[RT_PAGES + 1];
	void *ptrs[RT_PAGES + 1];
	unsigned np, ne;
	struct stream_writer w;
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *wc, *rc;
	const void *out;
	size_t len;
	int err;

	if (n < 2)
		return;
	np = (d[0] & 7) + 1;
	ne = d[1] < n - 2 ? d[1] : (unsigned)(n - 2);
	memset(&rt, 0, sizeof(rt));
	memcpy(rt.pages, d + 2 + ne,
	       n - 2 - ne < sizeof(rt.pages) ? n - 2 - ne : sizeof(rt.pages));
	if (pagecache_init(&pc, (d[0] & 8 ? 2 : 16) * FT_PAGE_SIZE))
		abort();
	if (chan_open_mem(&wc, NULL, 0, 1 << 20) ||
	    stream_writer_init(&w, wc, 0,
			       d[0] & 0x20   ? STREAM_COMP_AUTO
			       : d[0] & 0x10 ? STREAM_COMP_LZ4
					     : STREAM_COMP_NONE))
		abort();
	stream_writer_set_cache(&w, &pc);
	stream_writer_set_link_rate(&w, 1 << 20);
	for (unsigned i = 0; i < np; i++) {
		pfns[i] = i;
		ptrs[i] = rt.pages[i];
	}
	pfns[np] = 0;
	ptrs[np] = rt.pages[0];
	if (stream_write_header(&w) ||
	    stream_write_domain(&w, RT_PAGES * FT_PAGE_SIZE, 1) ||
	    stream_write_pages(&w, pfns, ptrs, np))
		abort();
	edit(&rt, np, d + 2, ne / 6 * 3);
	if (stream_write_pages(&w, pfns, ptrs, np + 1))
		abort();
	edit(&rt, np, d + 2 + ne / 6 * 3, ne - ne / 6 * 3);
	for (unsigned i = 0; i < np; i++) {
		pfns[i] = np - 1 - i;
		ptrs[i] = rt.pages[np - 1 - i];
	}
	if (stream_write_pages(&w, pfns, ptrs, np) ||
	    stream_write_vcpu(&w, 0, &vcpu) || stream_write_end(&w))
		abort();
	stream_writer_fini(&w);
	out = chan_mem_data(wc, &len);
	if (chan_open_mem(&rc, out, len, len) || stream_reader_init(&r, rc))
		abort();
	chan_close(wc);
	err = stream_read_header(&r, NULL);
	while (!err) {
		err = stream_next(&r, &rec);
		if (!err && rec.type == REC_PAGE_BATCH)
			err = stream_decode_pages2(&r, &rec, xrt_page_cb, &rt,
						   xrt_base_cb);
		if (!err && rec.type == REC_END)
			break;
	}
	if (err || stream_expect_eof(&r))
		abort();
	for (unsigned i = 0; i < np; i++) {
		const void *cp = pagecache_peek(&pc, i);

		if (!rt.have[i] ||
		    memcmp(rt.got[i], rt.pages[i], FT_PAGE_SIZE) ||
		    (cp && memcmp(cp, rt.got[i], FT_PAGE_SIZE)))
			abort();
	}
	stream_reader_fini(&r);
	chan_close(rc);
	pagecache_fini(&pc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct hv_vcpu_state vcpu;
	static FILE *devnull;
	static struct pages pages;
	struct stream_reader r;
	struct stream_rec rec;
	struct hv_dev_rec dev;
	struct chan *c;
	uint8_t *s;
	uint32_t id;
	int err;

	if (quiet && !devnull) {
		devnull = fopen("/dev/null", "w");
		log_set_file(devnull);
	}
	if (!size)
		return 0;
	if ((data[0] & 10) == 10) {
		xor_round_trip(data + 1, size - 1);
		return 0;
	}
	if (data[0] & 2) {
		round_trip(data + 1, size - 1, data[0] & 4);
		return 0;
	}
	while (pages.nr_used)
		pages.seen[pages.used[--pages.nr_used]] = 0;
	pages.r = &r;
	s = malloc(size - 1 ? size - 1 : 1);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	if (data[0] & 1)
		fix_checksums(s, size - 1);
	err = chan_open_mem(&c, s, size - 1, size - 1);
	free(s);
	if (err)
		return 0;
	if (stream_reader_init(&r, c)) {
		chan_close(c);
		return 0;
	}
	err = stream_read_header(&r, NULL);
	while (!err) {
		err = stream_next(&r, &rec);
		if (err)
			break;
		switch (rec.type) {
		case REC_PAGE_BATCH:
			err = stream_decode_pages2(&r, &rec, page_cb, &pages,
						   base_cb);
			break;
		case REC_VCPU_X86:
			err = stream_decode_vcpu(&r, &rec, &id, &vcpu);
			break;
		case REC_DEVICE:
			err = stream_decode_device(&r, &rec, &dev);
			if (!err && dev.len)
				pages.sum += ((const uint8_t *)
						      dev.data)[dev.len - 1];
			break;
		}
		if (!err && rec.type == REC_END) {
			err = stream_expect_eof(&r);
			break;
		}
	}
	if (!err != !*stream_reader_error(&r))
		abort();
	stream_reader_fini(&r);
	chan_close(c);
	return 0;
}

#ifndef FT_LIBFUZZER
/* Replay: run each file through the target; the reader's verdict goes to
 * stderr. */
#include "fuzz_replay.h"

int main(int argc, char **argv)
{
	quiet = false;
	for (int i = 1; i < argc; i++)
		if (fuzz_replay_file(argv[i]))
			return 2;
	return 0;
}
#endif
