/* SPDX-License-Identifier: MIT */
/*
 * kernels.h - compute kernels run both on the host (bench_vmm) and inside
 * the bench guest (guest/benchguest), compiled from this one source, so
 * that their time ratio measures the VM, not the code.
 *
 * Freestanding: depends on <stddef.h> and <stdint.h> only (the guest has no
 * libc).  Both builds use gcc -O2 for the x86-64 baseline without AVX
 * (the guest cannot use it, see docs/guest-abi.md), and the kernels are
 * noinline so that each is one comparable function in both programs.
 *
 * Every kernel returns a value that depends on all of its work; bench_vmm
 * checks that guest and host results agree (same work done).
 */
#ifndef BENCH_KERNELS_H
#define BENCH_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The parameters of one compute run; the guest gets them on its command
 * line, in this order (see kern_params_default). */
struct kern_params {
	uint64_t hash_kib;    /* cache-resident buffer for kern_hash */
	uint64_t hash_reps;   /* passes over it */
	uint64_t stream_mib;  /* buffer for kern_touch and kern_stream */
	uint64_t stream_reps; /* read-modify-write passes over it */
	uint64_t chase_mib;   /* buffer for kern_chase, one node per 64 B */
	uint64_t chase_steps; /* dependent loads */
};

/* Sizes for about one second per kernel on a 2020s x86 core; the stream
 * and chase buffers (256 MiB each) are far beyond any cache. */
static inline struct kern_params kern_params_default(void)
{
	return (struct kern_params){ .hash_kib = 64,
				     .hash_reps = 20000,
				     .stream_mib = 256,
				     .stream_reps = 10,
				     .chase_mib = 256,
				     .chase_steps = 4000000 };
}

/* xorshift64: the kernels' deterministic data. */
static inline uint64_t kern_rng(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* Fill buf[0..words) with pseudo-random data from `seed` (not timed). */
static __attribute__((noinline, unused)) void
kern_fill(uint64_t *buf, size_t words, uint64_t seed)
{
	uint64_t s = seed | 1;

	for (size_t i = 0; i < words; i++)
		buf[i] = kern_rng(&s);
}

/*
 * Integer-bound: a multiply-xorshift hash chained over a cache-resident
 * buffer, `reps` times.  One dependent chain, so it measures the core's
 * integer latency, with no memory traffic to speak of.
 */
static __attribute__((noinline, unused)) uint64_t
kern_hash(const uint64_t *buf, size_t words, uint64_t reps)
{
	uint64_t h = 0x84222325cbf29ce4ULL;

	for (uint64_t r = 0; r < reps; r++) {
		for (size_t i = 0; i < words; i++) {
			h ^= buf[i] + r;
			h *= 0x9e3779b97f4a7c15ULL;
			h ^= h >> 29;
		}
	}
	return h;
}

/*
 * First touch: write one word per 4 KiB page of a buffer never touched
 * before.  Measures the cost of populating memory: in the host, a page
 * fault per page (or per 2 MiB huge page); in the guest, additionally the
 * hypervisor's shadow/EPT fault.  Returns the number of pages touched.
 */
static __attribute__((noinline, unused)) uint64_t
kern_touch(uint64_t *buf, size_t words)
{
	uint64_t n = 0;

	for (size_t i = 0; i < words; i += 512, n++)
		*(volatile uint64_t *)&buf[i] = i;
	return n;
}

/*
 * Memory-bandwidth-bound: `reps` read-modify-write passes over a large
 * buffer (sequential, prefetch-friendly).  Returns a sum over the data.
 */
static __attribute__((noinline, unused)) uint64_t
kern_stream(uint64_t *buf, size_t words, uint64_t reps)
{
	uint64_t sum = 0;

	for (uint64_t r = 0; r < reps; r++) {
		for (size_t i = 0; i < words; i++) {
			uint64_t v = buf[i];

			v ^= (v >> 7) + r;
			buf[i] = v;
			sum += v;
		}
	}
	return sum;
}

#define KERN_NODE_WORDS 8 /* one chase node per 64-byte cache line */

/*
 * Build a single random cycle through the `nodes` nodes of buf (Sattolo's
 * algorithm), node i's first word holding the index of its successor.
 * Not timed: it is the chase's setup.
 */
static __attribute__((noinline, unused)) void
kern_chase_build(uint64_t *buf, uint64_t nodes, uint64_t seed)
{
	uint64_t s = seed | 1;

	for (uint64_t i = 0; i < nodes; i++)
		buf[i * KERN_NODE_WORDS] = i;
	for (uint64_t i = nodes - 1; i > 0; i--) {
		uint64_t j = kern_rng(&s) % i;
		uint64_t t = buf[i * KERN_NODE_WORDS];

		buf[i * KERN_NODE_WORDS] = buf[j * KERN_NODE_WORDS];
		buf[j * KERN_NODE_WORDS] = t;
	}
}

/*
 * Memory-latency-bound: `steps` dependent loads along the random cycle,
 * each a cache miss and, over a large buffer, a TLB miss: this is where
 * two-dimensional (nested or shadow) paging shows.  Returns the node
 * reached.
 */
static __attribute__((noinline, unused)) uint64_t
kern_chase(const uint64_t *buf, uint64_t steps)
{
	uint64_t i = 0;

	while (steps--)
		i = buf[i * KERN_NODE_WORDS];
	return i;
}

#endif /* BENCH_KERNELS_H */
