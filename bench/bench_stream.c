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
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "log.h"
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
	return 0;
}
