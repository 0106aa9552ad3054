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
 *   benchguest netsend DSTMAC DSTIP PORT LEN
 *                           send numbered UDP frames of LEN bytes (60..
 *                           1514) to DSTIP:PORT via DSTMAC on request
 *                           through bench/mailbox.h: `count` frames with
 *                           sequence numbers from `first`, in batches of
 *                           64, waiting out FT_EAGAIN (netbuf tests)
 *
 * Output lines (exact formats, parsed by the bench programs):
 *   benchguest: hcall n=<N> ns=<total>           (also null, nullin)
 *   benchguest: kernel <name> ns=<ns> result=0x<hex>
 *   benchguest: ready fill=<kind> pages=<N> ns=<ns>
 *   benchguest: dirty mailbox=0x<gpa> base=0x<gpa> pages=<N>
 *   benchguest: vmmwrite page=0x<gpa>
 *   benchguest: netsend mailbox=0x<gpa>
 * netsend's payload after the UDP header: NETSEND_MAGIC then the sequence
 * number, both little-endian u64.
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

/* ---- netsend ---------------------------------------------------------- */

#define NETSEND_MAGIC 0x71657362656e7466ULL /* "ftnbseq" */
#define NETSEND_HDR (14 + 20 + 8)

static uint8_t ns_frames[FT_NET_BATCH_MAX][FT_NET_FRAME_MAX];
static struct ft_net_frame ns_desc[FT_NET_BATCH_MAX];

static int parse_mac(const char *s, uint8_t mac[6])
{
	for (int i = 0; i < 6; i++) {
		char *end;
		unsigned long v = strtoul(s, &end, 16);

		if (end == s || v > 0xff || *end != (i == 5 ? '\0' : ':'))
			return -1;
		mac[i] = (uint8_t)v;
		s = end + 1;
	}
	return 0;
}

static int parse_ip(const char *s, uint8_t ip[4])
{
	for (int i = 0; i < 4; i++) {
		char *end;
		unsigned long v = strtoul(s, &end, 10);

		if (end == s || v > 0xff || *end != (i == 3 ? '\0' : '.'))
			return -1;
		ip[i] = (uint8_t)v;
		s = end + 1;
	}
	return 0;
}

static uint16_t ip_csum(const uint8_t *h)
{
	uint32_t sum = 0;

	for (int i = 0; i < 20; i += 2)
		sum += (uint32_t)(h[i] << 8 | h[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static __attribute__((noreturn)) void run_netsend(char **argv)
{
	struct bench_mailbox *mb = ft_alloc_aligned(FT_PAGE_SIZE, FT_PAGE_SIZE);
	struct ft_hc_net_info ni = {0};
	uint8_t dmac[6], dip[4];
	uint64_t port = arg_u64(argv[2]), len = arg_u64(argv[3]), seen = 0;
	uint64_t waits = 0;

	FT_ASSERT(mb);
	if (parse_mac(argv[0], dmac) || parse_ip(argv[1], dip) || !port ||
	    port > 65535 || len < 60 || len > FT_NET_FRAME_MAX)
		usage("netsend DSTMAC DSTIP PORT LEN(60..1514)");
	if (ft_hypercall(FT_HC_NET_INFO, (uintptr_t)&ni) || ni.ret)
		usage("netsend needs a NIC");
	for (int i = 0; i < FT_NET_BATCH_MAX; i++) {
		uint8_t *f = ns_frames[i], *ip = f + 14, *udp = ip + 20;
		uint16_t ipl = (uint16_t)(len - 14);
		uint16_t udpl = (uint16_t)(len - 34);

		memcpy(f, dmac, 6);
		memcpy(f + 6, ni.mac, 6);
		f[12] = 0x08, f[13] = 0x00;
		ip[0] = 0x45, ip[2] = (uint8_t)(ipl >> 8), ip[3] = (uint8_t)ipl;
		ip[6] = 0x40, ip[8] = 64, ip[9] = 17; /* DF, TTL, UDP */
		memcpy(ip + 12, &ni.ipv4_addr, 4);
		memcpy(ip + 16, dip, 4);
		udp[0] = 0x9c, udp[1] = 0x40; /* source port 40000 */
		udp[2] = (uint8_t)(port >> 8), udp[3] = (uint8_t)port;
		udp[4] = (uint8_t)(udpl >> 8), udp[5] = (uint8_t)udpl;
		ns_desc[i] = (struct ft_net_frame){.buf = (uintptr_t)f,
						   .len = (uint32_t)len};
	}
	printf("benchguest: netsend mailbox=%p\n", (void *)mb);
	ft_flush();
	__atomic_store_n(&mb->magic, BENCH_MB_MAGIC, __ATOMIC_RELEASE);
	for (;;) {
		uint64_t seq, next, left, t0;

		while ((seq = __atomic_load_n(&mb->seq, __ATOMIC_ACQUIRE)) ==
		       seen) {
			if (__atomic_load_n(&mb->quit, __ATOMIC_ACQUIRE))
				ft_exit(0);
			__asm__ volatile("pause");
		}
		seen = seq;
		next = mb->first;
		left = mb->count;
		t0 = ft_clock_mono();
		while (left) {
			uint32_t n = left < FT_NET_BATCH_MAX ? (uint32_t)left
							     : FT_NET_BATCH_MAX;
			int err;

			for (uint32_t i = 0; i < n; i++) {
				uint8_t *f = ns_frames[i], *ip = f + 14;
				uint64_t v[2] = {NETSEND_MAGIC, next + i};
				uint16_t c;

				ip[4] = (uint8_t)((next + i) >> 8);
				ip[5] = (uint8_t)(next + i);
				ip[10] = ip[11] = 0;
				c = ip_csum(ip);
				ip[10] = (uint8_t)(c >> 8), ip[11] = (uint8_t)c;
				memcpy(f + NETSEND_HDR, v, sizeof(v));
			}
			err = ft_net_send(ns_desc, n, &waits);
			if (err)
				ft_panic("netsend: send failed: %d", err);
			next += n;
			left -= n;
		}
		mb->ns = ft_clock_mono() - t0;
		mb->aux = waits;
		__atomic_store_n(&mb->done, seq, __ATOMIC_RELEASE);
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
	if (!strcmp(mode, "netsend")) {
		if (argc != 6)
			usage("netsend DSTMAC DSTIP PORT LEN");
		run_netsend(argv + 2);
	}
	usage("unknown mode");
}
