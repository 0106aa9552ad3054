// SPDX-License-Identifier: MIT
/*
 * dirtier - dirties guest memory in a pattern a host can verify, in the
 * manner of QEMU's migration-test guest.
 *
 *   dirtier [--wss MiB] [--rate MiB/s] [--fill zero|random]
 *           [--report SECONDS] [--sweeps N]
 *
 * --wss     working set taken from the heap (default 64 MiB)
 * --rate    dirty rate; 0, the default, runs as fast as it can
 * --fill    bytes 16..4095 of every page: zero (default), or random data
 *           written once at start (incompressible pages for benchmarks)
 * --report  seconds between report lines (default 1; 0: none)
 * --sweeps  stop after N complete sweeps with status 0 (default 0: never)
 *
 * Pattern.  Page p of the working set (4 KiB, p from 0) holds in word 0 a
 * counter and in word 1 the identity p ^ DIRTIER_ID.  With --fill random,
 * words 2..511 are successive ft_rng_next() values after ft_rng_seed(p).
 * Counters start at 0.  The guest sweeps the pages in order, again and
 * again; sweep s (from 1) checks that page p's counter is s - 1 and its
 * identity intact, then writes s.  So at any instant, pages [0, k) hold
 * c + 1 and pages [k, N) hold c for one boundary k: a single 8-byte store
 * per page means no page is ever half-written.  tools/dirtier-check.py
 * verifies a RAM dump against this; keep the two in step.
 *
 * Console lines (exact formats, for tests):
 *   dirtier: ready wss=<MiB> rate=<MiB/s> fill=<zero|random> report=<s>
 *     base=0x<hex> pages=<N>                         (all on one line)
 *   dirtier: sweep <s> pages <N> rate <R.r> MiB/s verified ok
 *   dirtier: done sweeps <n> pages <N> verified ok
 *   dirtier: VERIFY FAIL page <p> expected <c> got <x>
 *   dirtier: VERIFY FAIL page <p> identity expected 0x<i> got 0x<x>
 * "sweep <s>" is the sweep in progress, "rate" the dirty rate measured
 * over the last report interval.  A verification failure exits with 2,
 * a usage error with 1.
 */
#include "ft.h"

#define DIRTIER_ID 0x5eed5eed5eed5eedULL
#define PAGE_WORDS (FT_PAGE_SIZE / 8)
#define MIB_PAGES 256ULL       /* 4 KiB pages per MiB */
#define CHUNK_MIN 64ULL	       /* pages between clock reads, at least */
#define CHUNK_MAX (1ULL << 20) /* ... and at most */
#define MSEC 1000000ULL
#define MAX_LAG (50 * MSEC) /* lag behind the schedule forgiven */

struct opts {
	uint64_t wss;	 /* MiB */
	uint64_t rate;	 /* MiB/s, 0: unthrottled */
	uint64_t report; /* seconds between report lines, 0: none */
	uint64_t sweeps; /* stop after this many, 0: never */
	bool random;	 /* --fill random */
};

struct dirtier {
	uint64_t *base;	 /* page 0 of the working set */
	uint64_t pages;	 /* pages in the working set */
	uint64_t sweep;	 /* sweep in progress, from 1 */
	uint64_t cursor; /* next page to dirty */
};

static __attribute__((noreturn)) void usage(const char *why)
{
	printf("dirtier: %s\n", why);
	printf("dirtier: usage: dirtier [--wss MiB] [--rate MiB/s] "
	       "[--fill zero|random] [--report SECONDS] [--sweeps N]\n");
	ft_exit(1);
}

static __attribute__((noreturn)) void verify_fail(uint64_t p, const char *what,
						  uint64_t want, uint64_t got)
{
	if (*what)
		printf("dirtier: VERIFY FAIL page %lu %s expected 0x%lx"
		       " got 0x%lx\n",
		       p, what, want, got);
	else
		printf("dirtier: VERIFY FAIL page %lu expected %lu got %lu\n",
		       p, want, got);
	ft_exit(2);
}

/* Check and advance the next `n` pages of the endless sweep. */
static void dirty(struct dirtier *d, uint64_t n)
{
	while (n--) {
		uint64_t *pg = d->base + d->cursor * PAGE_WORDS;

		if (pg[0] != d->sweep - 1)
			verify_fail(d->cursor, "", d->sweep - 1, pg[0]);
		if (pg[1] != (d->cursor ^ DIRTIER_ID))
			verify_fail(d->cursor, "identity",
				    d->cursor ^ DIRTIER_ID, pg[1]);
		pg[0] = d->sweep;
		if (++d->cursor == d->pages) {
			d->cursor = 0;
			d->sweep++;
		}
	}
}

static void fill(struct dirtier *d, bool random)
{
	for (uint64_t p = 0; p < d->pages; p++) {
		uint64_t *pg = d->base + p * PAGE_WORDS;
		struct ft_rng r;

		pg[1] = p ^ DIRTIER_ID;
		if (!random)
			continue;
		ft_rng_seed(&r, p);
		for (uint64_t w = 2; w < PAGE_WORDS; w++)
			pg[w] = ft_rng_next(&r);
	}
}

/* Final check after --sweeps: every counter must equal the sweep count. */
static void verify_all(const struct dirtier *d, uint64_t want)
{
	for (uint64_t p = 0; p < d->pages; p++) {
		const uint64_t *pg = d->base + p * PAGE_WORDS;

		if (pg[0] != want)
			verify_fail(p, "", want, pg[0]);
		if (pg[1] != (p ^ DIRTIER_ID))
			verify_fail(p, "identity", p ^ DIRTIER_ID, pg[1]);
	}
}

static uint64_t arg_u64(const char *val)
{
	uint64_t v;

	if (!val || ft_parse_u64(val, &v))
		usage(val ? "bad number" : "missing value");
	return v;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i += 2) {
		const char *opt = argv[i], *val = argv[i + 1];

		if (!strcmp(opt, "--wss"))
			o->wss = arg_u64(val);
		else if (!strcmp(opt, "--rate"))
			o->rate = arg_u64(val);
		else if (!strcmp(opt, "--report"))
			o->report = arg_u64(val);
		else if (!strcmp(opt, "--sweeps"))
			o->sweeps = arg_u64(val);
		else if (!strcmp(opt, "--fill") && val &&
			 (!strcmp(val, "zero") || !strcmp(val, "random")))
			o->random = !strcmp(val, "random");
		else
			usage("bad option");
	}
	if (o->rate > UINT64_MAX / MIB_PAGES ||
	    o->report > UINT64_MAX / FT_NSEC_PER_SEC)
		usage("value out of range");
}

/* The next batch: `chunk` pages, cut so that --sweeps ends exactly at the
 * end of the last sweep. */
static uint64_t next_batch(const struct dirtier *d, uint64_t chunk,
			   uint64_t sweeps)
{
	uint64_t whole = sweeps - d->sweep; /* sweeps after the current one */

	if (sweeps && whole <= chunk / d->pages &&
	    chunk > (whole + 1) * d->pages - d->cursor)
		return (whole + 1) * d->pages - d->cursor;
	return chunk;
}

static void report_line(const struct dirtier *d, uint64_t pages, uint64_t ns)
{
	uint64_t tenths = (unsigned __int128)pages * 10 * FT_NSEC_PER_SEC /
			  ((unsigned __int128)ns * MIB_PAGES);

	printf("dirtier: sweep %lu pages %lu rate %lu.%lu MiB/s"
	       " verified ok\n",
	       d->sweep, d->pages, tenths / 10, tenths % 10);
}

int main(int argc, char **argv)
{
	struct opts o = {.wss = 64, .report = 1};
	struct dirtier d = {.sweep = 1};
	uint64_t chunk, t_base, t_last, t_report, done = 0, since_report = 0;

	parse_args(argc, argv, &o);
	if (!o.wss || o.wss > ft_heap_free() / (MIB_PAGES * FT_PAGE_SIZE)) {
		printf("dirtier: wss %lu MiB does not fit the heap"
		       " (%lu MiB free)\n",
		       o.wss, ft_heap_free() >> 20);
		return 1;
	}
	d.pages = o.wss * MIB_PAGES;
	d.base = ft_alloc_aligned(d.pages * FT_PAGE_SIZE, FT_PAGE_SIZE);
	FT_ASSERT(d.base);
	fill(&d, o.random);
	printf("dirtier: ready wss=%lu rate=%lu fill=%s report=%lu"
	       " base=%p pages=%lu\n",
	       o.wss, o.rate, o.random ? "random" : "zero", o.report, d.base,
	       d.pages);

	/*
	 * Rate control: dirty a chunk, read the clock, sleep until the
	 * schedule t_base + done / rate allows the next chunk.  A throttled
	 * chunk lasts at least 1 ms; unthrottled, the chunk adapts so that
	 * the clock is read about once per 1-4 ms.
	 */
	chunk = o.rate ? o.rate * MIB_PAGES / 1000 : CHUNK_MIN;
	if (chunk < CHUNK_MIN)
		chunk = CHUNK_MIN;
	t_base = t_last = t_report = ft_clock_mono();
	for (;;) {
		uint64_t n = next_batch(&d, chunk, o.sweeps), now;

		dirty(&d, n);
		done += n;
		since_report += n;
		if (o.sweeps && d.sweep > o.sweeps)
			break;
		now = ft_clock_mono();
		if (o.report && now - t_report >= o.report * FT_NSEC_PER_SEC) {
			report_line(&d, since_report, now - t_report);
			t_report = now;
			since_report = 0;
		}
		if (o.rate) {
			uint64_t due = t_base + (unsigned __int128)done *
							FT_NSEC_PER_SEC /
							(o.rate * MIB_PAGES);

			if (now > due + MAX_LAG) {
				/* Paused or starved: no catch-up burst. */
				t_base = now;
				done = 0;
			} else {
				/* ft_poll returns early when NIC input is
				 * pending (which the dirtier never reads). */
				while (ft_clock_mono() < due)
					ft_poll(due);
			}
		} else if (now - t_last < MSEC && chunk < CHUNK_MAX) {
			chunk *= 2;
		} else if (now - t_last > 4 * MSEC && chunk > CHUNK_MIN) {
			chunk /= 2;
		}
		t_last = now;
	}
	verify_all(&d, o.sweeps);
	printf("dirtier: done sweeps %lu pages %lu verified ok\n", o.sweeps,
	       d.pages);
	return 0;
}
