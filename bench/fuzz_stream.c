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
 * Mode bit 1 set instead checks the writer against the reader: the bytes
 * after the mode byte become guest pages (up to 8, the last one padded
 * with zeros), which are written as a stream (bit 2: with LZ4) and read
 * back; the reader must accept it and return every page unchanged.
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

struct pages {
	const struct stream_reader *r;
	unsigned sum;
};

static int page_cb(void *ctx, uint64_t pfn, const void *page)
{
	struct pages *p = ctx;

	if (pfn >= p->r->domain.mem_size / FT_PAGE_SIZE)
		abort();
	p->sum += ((const uint8_t *)page)[pfn % FT_PAGE_SIZE]; /* touch it */
	return 0;
}

#define RT_PAGES 8

struct round_trip {
	uint8_t pages[RT_PAGES][FT_PAGE_SIZE];
	unsigned seen;
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct hv_vcpu_state vcpu;
	static FILE *devnull;
	struct stream_reader r;
	struct stream_rec rec;
	struct pages pages = {&r, 0};
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
	if (data[0] & 2) {
		round_trip(data + 1, size - 1, data[0] & 4);
		return 0;
	}
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
			err = stream_decode_pages(&r, &rec, page_cb, &pages);
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
