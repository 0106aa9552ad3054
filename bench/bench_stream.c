// SPDX-License-Identifier: MIT
/*
 * bench_stream.c - stream write and read throughput over guest-sized
 * memory.
 *
 *   build/bench/bench_stream [MiB [DIR]]     (default: 1024 MiB, /dev/shm)
 *
 * For each kind of guest memory (random, zero, text-like) and compression
 * setting, saves the whole "guest" as a stream to DIR/bench_stream.ftst
 * and to /dev/null, then reads the file back, decoding every page into a
 * second buffer, and checks it matches.  Prints GiB of guest memory per
 * second.  Use a tmpfs DIR to measure the code, not the disk.
 *
 * Then, over up to 256 MiB in memory channels: xor-delta encoding
 * (pages sent twice with 1, 16, 256 or 2048 bytes of each changed in
 * between) against raw and LZ4, encode and decode GiB/s and ratio; and
 * STREAM_COMP_AUTO against none and LZ4 on links of 0.125 to 10 GB/s.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "log.h"
#include "pagecache.h"
#include "stream.h"
#include "stream_state.h"

#define PG FT_PAGE_SIZE

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

enum fill { FILL_RANDOM, FILL_ZERO, FILL_TEXT };
static const char *const fill_names[] = {"random", "zero", "text"};

static void fill(unsigned char *mem, size_t size, enum fill how)
{
	static const char words[] = "the quick brown fox jumps over the lazy "
				    "dog; GET /index.html HTTP/1.1 200 OK ";
	uint64_t x = 0x9e3779b97f4a7c15ULL, *q = (uint64_t *)mem;

	switch (how) {
	case FILL_RANDOM:
		for (size_t i = 0; i < size / 8; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			q[i] = x;
		}
		break;
	case FILL_ZERO:
		memset(mem, 0, size);
		break;
	case FILL_TEXT: /* words at pseudo-random offsets: LZ4 ~2-3x */
		for (size_t i = 0; i < size; i += 16) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			memcpy(mem + i, words + x % (sizeof(words) - 17), 16);
		}
		break;
	}
}

struct restore {
	unsigned char *mem;
	uint64_t nr_pfns;
};

static int restore_page(void *ctx, uint64_t pfn, const void *page)
{
	struct restore *rs = ctx;

	memcpy(rs->mem + pfn * PG, page, PG);
	return 0;
}

/* Save `mem` to `path`; return seconds, or -1. */
static double save(const char *path, uint64_t nr_pfns, uint64_t *pfns,
		   void **pages, enum stream_compress comp,
		   struct stream_stats *st)
{
	static const struct hv_vcpu_state vcpu; /* reset state will do */
	struct stream_writer w;
	struct chan *c;
	double t;
	int err, cerr;

	if (chan_open_file(&c, path, O_WRONLY | O_CREAT | O_TRUNC))
		return -1;
	if (stream_writer_init(&w, c, 0, comp)) {
		chan_close(c);
		return -1;
	}
	t = now();
	err = stream_write_header(&w);
	if (!err)
		err = stream_write_domain(&w, nr_pfns * PG, 1);
	if (!err)
		err = stream_write_pages(&w, pfns, pages, (unsigned)nr_pfns);
	if (!err)
		err = stream_write_vcpu(&w, 0, &vcpu);
	if (!err)
		err = stream_write_end(&w);
	t = now() - t;
	*st = w.stats;
	stream_writer_fini(&w);
	cerr = chan_close(c);
	return err || cerr ? -1 : t;
}

/* Read `path` back into rs; return seconds, or -1. */
static double load(const char *path, struct restore *rs)
{
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *c;
	double t;
	int err;

	if (chan_open_file(&c, path, O_RDONLY))
		return -1;
	if (stream_reader_init(&r, c)) {
		chan_close(c);
		return -1;
	}
	t = now();
	err = stream_read_header(&r, NULL);
	while (!err) {
		err = stream_next(&r, &rec);
		if (err || rec.type == REC_END)
			break;
		if (rec.type == REC_PAGE_BATCH)
			err = stream_decode_pages(&r, &rec, restore_page, rs);
	}
	t = now() - t;
	stream_reader_fini(&r);
	chan_close(c);
	return err ? -1 : t;
}

/* ---- xor-delta and STREAM_COMP_AUTO ---- */

/* Largest working set of the xor and auto sections. */
#define XOR_MIB_MAX 256

static int base_fail;

static const void *bench_base(void *ctx, uint64_t pfn)
{
	struct restore *rs = ctx;

	if (pfn >= rs->nr_pfns) {
		base_fail = 1;
		return NULL;
	}
	return rs->mem + pfn * PG;
}

/* Change each page of mem[0..size): k bytes at pseudo-random offsets, or
 * (run) k bytes from a pseudo-random offset on. */
static void change(unsigned char *mem, size_t size, unsigned k, bool run)
{
	uint64_t x = 0x2545f4914f6cdd1dULL;

	for (size_t p = 0; p < size; p += PG) {
		for (unsigned i = 0; i < (run ? 1 : k); i++) {
			unsigned char v;

			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			v = (unsigned char)(x >> 32) | 1; /* never 0 */
			if (!run)
				mem[p + x % PG] ^= v;
			for (unsigned j = 0; run && j < k; j++)
				mem[p + x % (PG - k + 1) + j] ^= v;
		}
	}
}

struct xor_result {
	double enc_s, dec_s; /* seconds for the second round */
	uint64_t bytes;	     /* stream bytes of the second round */
	struct stream_stats st;
	struct pagecache_stats cs;
};

/*
 * Write `prev` (nr pages) then `mem` as frames 0..nr-1 to `c` through a
 * writer with compression `comp` and page cache `pc` (or none); time the
 * second round into *res.
 */
static int xor_write(struct chan *c, const unsigned char *prev,
		     unsigned char *mem, uint64_t nr, uint64_t *pfns,
		     void **pages, enum stream_compress comp,
		     struct pagecache *pc, struct xor_result *res)
{
	static const struct hv_vcpu_state vcpu;
	struct stream_writer w;
	uint64_t bytes1;
	double t;
	int err;

	for (uint64_t i = 0; i < nr; i++)
		pages[i] = (void *)(prev + i * PG);
	if (stream_writer_init(&w, c, 0, comp))
		return -1;
	stream_writer_set_cache(&w, pc);
	err = stream_write_header(&w);
	if (!err)
		err = stream_write_domain(&w, nr * PG, 1);
	if (!err)
		err = stream_write_pages(&w, pfns, pages, (unsigned)nr);
	bytes1 = w.stats.bytes;
	if (pc)
		pc->stats = (struct pagecache_stats){0};
	w.stats = (struct stream_stats){.bytes = bytes1};
	for (uint64_t i = 0; i < nr; i++)
		pages[i] = mem + i * PG;
	t = now();
	if (!err)
		err = stream_write_pages(&w, pfns, pages, (unsigned)nr);
	res->enc_s = now() - t;
	res->bytes = w.stats.bytes - bytes1;
	res->st = w.stats;
	if (pc)
		res->cs = pc->stats;
	if (!err)
		err = stream_write_vcpu(&w, 0, &vcpu);
	if (!err)
		err = stream_write_end(&w);
	stream_writer_fini(&w);
	return err ? -1 : 0;
}

/*
 * Send `prev` then `mem` as above, once to /dev/null to time the
 * encoding of the second round, once to memory to time its decoding into
 * rs (which the first round fills).
 */
static int xor_round(const unsigned char *prev, unsigned char *mem, uint64_t nr,
		     uint64_t *pfns, void **pages, enum stream_compress comp,
		     struct pagecache *pc, struct restore *rs,
		     struct xor_result *res)
{
	struct xor_result unused;
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *c, *rc;
	const void *data;
	uint64_t n = 0;
	size_t len;
	int err;

	if (chan_open_file(&c, "/dev/null", O_WRONLY | O_CREAT | O_TRUNC))
		return -1;
	err = xor_write(c, prev, mem, nr, pfns, pages, comp, pc, res);
	if (chan_close(c) || err)
		return -1;
	if (chan_open_mem(&c, NULL, 0, (size_t)nr * (PG + 64) * 2 + 4096))
		return -1;
	if (xor_write(c, prev, mem, nr, pfns, pages, comp, pc, &unused)) {
		chan_close(c);
		return -1;
	}
	data = chan_mem_data(c, &len);
	if (chan_open_mem(&rc, data, len, len) || stream_reader_init(&r, rc)) {
		chan_close(c);
		return -1;
	}
	res->dec_s = 0;
	err = stream_read_header(&r, NULL);
	while (!err) {
		double t0 = now();

		err = stream_next(&r, &rec);
		if (err || rec.type == REC_END)
			break;
		if (rec.type == REC_PAGE_BATCH) {
			err = stream_decode_pages2(&r, &rec, restore_page, rs,
						   bench_base);
			n += 256;   /* the writer's batches */
			if (n > nr) /* a batch of the second round */
				res->dec_s += now() - t0;
		}
	}
	stream_reader_fini(&r);
	chan_close(rc);
	chan_close(c);
	return err || base_fail ? -1 : 0;
}

static int bench_xor(unsigned char *mem, unsigned char *back, uint64_t mib,
		     uint64_t *pfns, void **pages)
{
	static const struct {
		unsigned k;
		bool run;
	} changes[] = {{1, false},  {16, false},  {256, false}, {2048, false},
		       {256, true}, {2048, true}, {4096, true}};
	static const char *const modes[] = {"raw", "lz4", "xor", "xor+lz4"};
	uint64_t nr = (mib < XOR_MIB_MAX ? mib : XOR_MIB_MAX) << 8;
	size_t size = (size_t)nr * PG;
	double gib = (double)size / (1 << 30);
	unsigned char *prev;
	struct pagecache pc;

	prev = mmap(NULL, size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (prev == MAP_FAILED || pagecache_init(&pc, size))
		return -1;
	fill(prev, size, FILL_TEXT);
	printf("\nxor-delta: %llu MiB of text pages sent twice, the second "
	       "time with N bytes of each page changed\n(scattered, or one "
	       "run); a cache of %llu MiB.  GiB/s of guest memory of the "
	       "second round;\nratio: page bytes / stream bytes.\n",
	       (unsigned long long)(size >> 20),
	       (unsigned long long)(size >> 20));
	printf("%-14s %-8s %9s %7s %9s %9s  %s\n", "changed", "mode", "stream",
	       "ratio", "encode", "decode", "pages raw/lz4/xor");
	printf("%-14s %-8s %9s %7s %9s %9s\n", "bytes/page", "", "MiB", "",
	       "GiB/s", "GiB/s");
	for (unsigned ci = 0; ci < sizeof(changes) / sizeof(changes[0]); ci++) {
		char name[32];

		snprintf(name, sizeof(name), "%u%s", changes[ci].k,
			 changes[ci].run ? " (run)" : "");
		memcpy(mem, prev, size);
		change(mem, size, changes[ci].k, changes[ci].run);
		for (unsigned m = 0; m < 4; m++) {
			struct restore rs = {back, nr};
			struct xor_result res;

			if (xor_round(prev, mem, nr, pfns, pages,
				      m & 1 ? STREAM_COMP_LZ4
					    : STREAM_COMP_NONE,
				      m & 2 ? &pc : NULL, &rs, &res))
				return -1;
			if (memcmp(mem, back, size)) {
				fprintf(stderr, "bench_stream: xor read back "
						"differs\n");
				return -1;
			}
			printf("%-14s %-8s %9.1f %7.1f %9.2f %9.2f  "
			       "%llu/%llu/%llu\n",
			       name, modes[m], (double)res.bytes / (1 << 20),
			       (double)size / (double)res.bytes,
			       gib / res.enc_s, gib / res.dec_s,
			       (unsigned long long)res.st.pages_raw,
			       (unsigned long long)res.st.pages_lz4,
			       (unsigned long long)res.st.pages_xor);
			fflush(stdout);
		}
	}
	pagecache_fini(&pc);
	munmap(prev, size);
	return 0;
}

/*
 * STREAM_COMP_AUTO against NONE and LZ4 on a modelled link: the writer
 * writes to /dev/null, and a send takes its CPU time plus the stream
 * bytes at the link rate (serial, as in the writer).
 */
static int bench_auto(unsigned char *mem, uint64_t mib, uint64_t *pfns,
		      void **pages)
{
	static const double links[] = {0.125e9, 1.25e9, 2.5e9, 10e9};
	static const char *const comps[] = {"none", "lz4", "auto"};
	uint64_t nr = (mib < XOR_MIB_MAX ? mib : XOR_MIB_MAX) << 8;
	size_t size = (size_t)nr * PG;
	double gib = (double)size / (1 << 30);

	printf("\nauto: %llu MiB sent with each setting; GiB/s of guest "
	       "memory when a send costs the writer's\nCPU time plus the "
	       "stream bytes at the link rate (GB/s: 10^9 bytes/s).\n",
	       (unsigned long long)(size >> 20));
	printf("%-7s %6s %-5s %9s %9s %9s  %s\n", "memory", "link", "comp",
	       "stream", "cpu", "send", "lz4 tries/kept");
	printf("%-7s %6s %-5s %9s %9s %9s\n", "", "GB/s", "", "MiB", "GiB/s",
	       "GiB/s");
	for (int f = FILL_RANDOM; f <= FILL_TEXT;
	     f += FILL_TEXT - FILL_RANDOM) {
		fill(mem, size, (enum fill)f);
		for (uint64_t i = 0; i < nr; i++)
			pages[i] = mem + i * PG;
		for (unsigned li = 0; li < 4; li++) {
			for (int comp = 0; comp < 3; comp++) {
				struct stream_writer w;
				struct chan *c;
				double t;
				int err;

				if (chan_open_file(&c, "/dev/null",
						   O_WRONLY | O_CREAT |
							   O_TRUNC) ||
				    stream_writer_init(
					    &w, c, 0,
					    (enum stream_compress)comp))
					return -1;
				stream_writer_set_link_rate(
					&w, (uint64_t)links[li]);
				err = stream_write_header(&w);
				if (!err)
					err = stream_write_domain(&w, size, 1);
				t = now();
				if (!err)
					err = stream_write_pages(
						&w, pfns, pages, (unsigned)nr);
				t = now() - t;
				if (err)
					return -1;
				printf("%-7s %6.3g %-5s %9.0f %9.2f %9.2f  "
				       "%llu/%llu\n",
				       fill_names[f], links[li] / 1e9,
				       comps[comp],
				       (double)w.stats.bytes / (1 << 20),
				       gib / t,
				       gib / (t + (double)w.stats.bytes /
							  links[li]),
				       (unsigned long long)w.stats.lz4_tries,
				       (unsigned long long)w.stats.pages_lz4);
				fflush(stdout);
				stream_writer_fini(&w);
				chan_close(c);
			}
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 1024;
	const char *dir = argc > 2 ? argv[2] : "/dev/shm";
	uint64_t nr_pfns = mib << 8;
	size_t size = (size_t)nr_pfns * PG;
	double gib = (double)size / (1 << 30);
	unsigned char *mem, *back;
	uint64_t *pfns;
	void **pages;
	char path[512];

	log_set_prog(argv[0]);
	if (!mib || mib > (1u << 20)) {
		fprintf(stderr, "usage: %s [MiB (1..1048576) [DIR]]\n",
			argv[0]);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/bench_stream.ftst", dir);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	back = mmap(NULL, size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pfns = malloc(nr_pfns * sizeof(*pfns));
	pages = malloc(nr_pfns * sizeof(*pages));
	if (mem == MAP_FAILED || back == MAP_FAILED || !pfns || !pages) {
		fprintf(stderr, "%s: cannot allocate 2 x %llu MiB\n", argv[0],
			(unsigned long long)mib);
		return 1;
	}
	for (uint64_t i = 0; i < nr_pfns; i++) {
		pfns[i] = i;
		pages[i] = mem + i * PG;
	}
	memset(back, 1, size); /* fault it in */

	printf("%llu MiB guest, stream file %s\n", (unsigned long long)mib,
	       path);
	printf("%-7s %-5s %9s %9s %9s %9s  %s\n", "memory", "comp", "stream",
	       "save", "save", "load", "pages raw/zero/lz4");
	printf("%-7s %-5s %9s %9s %9s %9s\n", "", "", "MiB", "file GiB/s",
	       "null GiB/s", "GiB/s");
	for (int f = FILL_RANDOM; f <= FILL_TEXT; f++) {
		fill(mem, size, (enum fill)f);
		for (int comp = STREAM_COMP_NONE; comp <= STREAM_COMP_LZ4;
		     comp++) {
			struct restore rs = {back, nr_pfns};
			struct stream_stats st;
			double ts, tn, tl;

			tn = save("/dev/null", nr_pfns, pfns, pages,
				  (enum stream_compress)comp, &st);
			ts = save(path, nr_pfns, pfns, pages,
				  (enum stream_compress)comp, &st);
			tl = load(path, &rs);
			if (ts < 0 || tn < 0 || tl < 0) {
				fprintf(stderr, "%s: failed\n", argv[0]);
				return 1;
			}
			if (memcmp(mem, back, size)) {
				fprintf(stderr, "%s: read back differs\n",
					argv[0]);
				return 1;
			}
			memset(back, 1, size);
			printf("%-7s %-5s %9.0f %9.2f %9.2f %9.2f  "
			       "%llu/%llu/%llu\n",
			       fill_names[f], comp ? "lz4" : "none",
			       (double)st.bytes / (1 << 20), gib / ts, gib / tn,
			       gib / tl, (unsigned long long)st.pages_raw,
			       (unsigned long long)st.pages_zero,
			       (unsigned long long)st.pages_lz4);
			fflush(stdout);
		}
	}
	unlink(path);
	if (bench_xor(mem, back, mib, pfns, pages) ||
	    bench_auto(mem, mib, pfns, pages)) {
		fprintf(stderr, "%s: xor or auto section failed\n", argv[0]);
		return 1;
	}
	return 0;
}
