// SPDX-License-Identifier: MIT
/*
 * benchguest - the guest half of the benchmarks in bench/ (see
 * docs/performance.md).  One mode per run:
 *
 *   benchguest hcall N      N clock hypercalls (FT_HC_CLOCK_MONO)
 *   benchguest null N       N `outb` to an unclaimed port (0x80): the bare
 *                           exit round trip, no hypercall decoding
 *   benchguest nullin N     N `inb` from an unclaimed port (reads 0xff)
 *   benchguest compute HASH_KIB HASH_REPS STREAM_MIB STREAM_REPS
 *                      CHASE_MIB CHASE_STEPS
 *                           the kernels of bench/kernels.h, timed
 *   benchguest fill random|zero MIB
 *                           write MIB MiB of the heap (0: all of it) with
 *                           random data or zeros, then idle in poll forever
 *   benchguest dirty MIB    dirty pages of a MIB MiB arena (0: the whole
 *                           heap) on request through bench/mailbox.h
 *   benchguest vmmwrite     clock hypercalls with their block in a page
 *                           the guest never writes (a dirty-log test)
 *
 * Output lines (exact formats, parsed by the bench programs):
 *   benchguest: hcall n=<N> ns=<total>           (also null, nullin)
 *   benchguest: kernel <name> ns=<ns> result=0x<hex>
 *   benchguest: ready fill=<kind> pages=<N> ns=<ns>
 *   benchguest: dirty mailbox=0x<gpa> base=0x<gpa> pages=<N>
 *   benchguest: vmmwrite page=0x<gpa>
 * Times are guest monotonic nanoseconds (the host's CLOCK_MONOTONIC).
 * A usage error exits with 1.
 */
#include "ft.h"

#include "../../bench/kernels.h"
#include "../../bench/mailbox.h"

#define NULL_PORT 0x80 /* outside the ABI's 0x500..0x50f: nothing there */
#define MIB (1UL << 20)

static __attribute__((noreturn)) void usage(const char *why)
{
	printf("benchguest: %s\n", why);
	printf("benchguest: usage: benchguest hcall|null|nullin N | compute "
	       "HASH_KIB HASH_REPS STREAM_MIB STREAM_REPS CHASE_MIB "
	       "CHASE_STEPS | fill random|zero MIB | dirty MIB\n");
	ft_exit(1);
}

static uint64_t arg_u64(const char *s)
{
	uint64_t v;

	if (!s || ft_parse_u64(s, &v))
		usage(s ? "bad number" : "missing number");
	return v;
}

static void *alloc_or_die(uint64_t bytes)
{
	void *p = ft_alloc_aligned(bytes, 2 * MIB);

	if (!p) {
		printf("benchguest: %lu MiB do not fit the heap (%lu MiB "
		       "free)\n",
		       bytes / MIB, ft_heap_free() / MIB);
		ft_exit(1);
	}
	return p;
}

/* ---- exits ------------------------------------------------------------ */

static int run_calls(const char *mode, uint64_t n)
{
	uint64_t t0, t1, i;
	uint8_t v = 0xff;

	t0 = ft_clock_mono();
	if (!strcmp(mode, "hcall")) {
		for (i = 0; i < n; i++)
			ft_clock_mono();
	} else if (!strcmp(mode, "null")) {
		for (i = 0; i < n; i++)
			__asm__ volatile("outb %%al, %%dx"
					 :
					 : "a"((uint8_t)i),
					   "d"((uint16_t)NULL_PORT)
					 : "memory");
	} else {
		for (i = 0; i < n; i++) {
			uint8_t in;

			__asm__ volatile("inb %%dx, %%al"
					 : "=a"(in)
					 : "d"((uint16_t)NULL_PORT)
					 : "memory");
			v &= in;
		}
	}
	t1 = ft_clock_mono();
	if (v != 0xff) {
		printf("benchguest: port 0x%x read 0x%x, not 0xff\n", NULL_PORT,
		       v);
		return 1;
	}
	printf("benchguest: %s n=%lu ns=%lu\n", mode, n, t1 - t0);
	return 0;
}

/* ---- compute ---------------------------------------------------------- */

static void report(const char *name, uint64_t t0, uint64_t result)
{
	uint64_t t1 = ft_clock_mono();

	printf("benchguest: kernel %s ns=%lu result=0x%lx\n", name, t1 - t0,
	       result);
}

static int run_compute(char **argv)
{
	struct kern_params p = {
		.hash_kib = arg_u64(argv[0]),
		.hash_reps = arg_u64(argv[1]),
		.stream_mib = arg_u64(argv[2]),
		.stream_reps = arg_u64(argv[3]),
		.chase_mib = arg_u64(argv[4]),
		.chase_steps = arg_u64(argv[5]),
	};
	uint64_t *hbuf, *sbuf, *cbuf, t0, r;
	uint64_t hw = p.hash_kib * 1024 / 8, sw = p.stream_mib * MIB / 8;
	uint64_t nodes = p.chase_mib * MIB / 64;

	if (!hw || !sw || !nodes || p.hash_kib > 1024 * 1024 ||
	    p.stream_mib > 64 * 1024 || p.chase_mib > 64 * 1024)
		usage("compute sizes out of range");
	hbuf = alloc_or_die(hw * 8);
	sbuf = alloc_or_die(sw * 8);
	cbuf = alloc_or_die(nodes * 64);

	kern_fill(hbuf, hw, 1);
	t0 = ft_clock_mono();
	r = kern_hash(hbuf, hw, p.hash_reps);
	report("hash", t0, r);

	t0 = ft_clock_mono();
	r = kern_touch(sbuf, sw);
	report("touch", t0, r);
	kern_fill(sbuf, sw, 2);
	t0 = ft_clock_mono();
	r = kern_stream(sbuf, sw, p.stream_reps);
	report("stream", t0, r);

	kern_chase_build(cbuf, nodes, 3);
	kern_chase(cbuf, nodes); /* warm: every node once */
	t0 = ft_clock_mono();
	r = kern_chase(cbuf, p.chase_steps);
	report("chase", t0, r);
	return 0;
}

/* ---- fill ------------------------------------------------------------- */

static __attribute__((noreturn)) void run_fill(const char *kind, uint64_t mib)
{
	uint64_t bytes = mib ? mib * MIB : ft_heap_free() & ~(FT_PAGE_SIZE - 1);
	uint64_t *buf, t0, t1;
	bool random = !strcmp(kind, "random");

	if (!random && strcmp(kind, "zero"))
		usage("fill random|zero");
	buf = ft_alloc_aligned(bytes, FT_PAGE_SIZE);
	if (!buf)
		usage("fill size does not fit the heap");
	t0 = ft_clock_mono();
	if (random)
		kern_fill(buf, bytes / 8, 4);
	else
		memset(buf, 0, bytes); /* touched: real, allocated zero pages */
	t1 = ft_clock_mono();
	printf("benchguest: ready fill=%s pages=%lu ns=%lu\n", kind,
	       bytes / FT_PAGE_SIZE, t1 - t0);
	ft_flush();
	for (;;)
		ft_poll(UINT64_MAX);
}

/* ---- dirty ------------------------------------------------------------ */

static __attribute__((noreturn)) void run_dirty(uint64_t mib)
{
	struct bench_mailbox *mb = ft_alloc_aligned(FT_PAGE_SIZE, FT_PAGE_SIZE);
	uint64_t bytes, pages, *arena, seen = 0;

	FT_ASSERT(mb);
	bytes = mib ? mib * MIB : ft_heap_free() & ~(FT_PAGE_SIZE - 1);
	arena = ft_alloc_aligned(bytes, FT_PAGE_SIZE);
	if (!arena || !bytes)
		usage("dirty arena does not fit the heap");
	pages = bytes / FT_PAGE_SIZE;
	printf("benchguest: dirty mailbox=%p base=%p pages=%lu\n", (void *)mb,
	       (void *)arena, pages);
	ft_flush();
	__atomic_store_n(&mb->magic, BENCH_MB_MAGIC, __ATOMIC_RELEASE);
	for (;;) {
		uint64_t seq, first, count, t0, t1, p;

		while ((seq = __atomic_load_n(&mb->seq, __ATOMIC_ACQUIRE)) ==
		       seen) {
			if (__atomic_load_n(&mb->quit, __ATOMIC_ACQUIRE))
				ft_exit(0);
			__asm__ volatile("pause");
		}
		seen = seq;
		first = mb->first;
		count = mb->count;
		p = first % pages;
		t0 = ft_clock_mono();
		while (count--) {
			arena[p * (FT_PAGE_SIZE / 8)] = seq;
			if (++p == pages)
				p = 0;
		}
		t1 = ft_clock_mono();
		mb->ns = t1 - t0;
		__atomic_store_n(&mb->done, seq, __ATOMIC_RELEASE);
	}
}

/* ---- vmmwrite ---------------------------------------------------------- */

/*
 * A page only the VMM writes: clock hypercalls whose argument block lies in
 * a page this guest never stores to.  tests/unit/test_kvm.c checks that
 * dirty logging reports the page anyway (KVM does not see VMM writes).
 */
static __attribute__((noreturn)) void run_vmmwrite(void)
{
	void *page = ft_alloc_aligned(FT_PAGE_SIZE, FT_PAGE_SIZE);

	FT_ASSERT(page);
	printf("benchguest: vmmwrite page=%p\n", page);
	ft_flush();
	for (;;) {
		ft_hypercall(FT_HC_CLOCK_MONO, (uint64_t)(uintptr_t)page);
		ft_sleep_ns(1000000);
	}
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";

	if (!strcmp(mode, "hcall") || !strcmp(mode, "null") ||
	    !strcmp(mode, "nullin")) {
		if (argc != 3)
			usage("wrong number of arguments");
		return run_calls(mode, arg_u64(argv[2]));
	}
	if (!strcmp(mode, "compute")) {
		if (argc != 8)
			usage("compute takes six numbers");
		return run_compute(argv + 2);
	}
	if (!strcmp(mode, "fill")) {
		if (argc != 4)
			usage("wrong number of arguments");
		run_fill(argv[2], arg_u64(argv[3]));
	}
	if (!strcmp(mode, "dirty")) {
		if (argc != 3)
			usage("wrong number of arguments");
		run_dirty(arg_u64(argv[2]));
	}
	if (!strcmp(mode, "vmmwrite"))
		run_vmmwrite();
	usage("unknown mode");
}
