// SPDX-License-Identifier: MIT
/*
 * kvhash.c - XXH64, following the reference description in xxHash's
 * doc/xxhash_spec.md (version 0.1.1): four lanes of 8-byte stripes over
 * 32-byte blocks, then the 8-, 4- and 1-byte tails and the avalanche.
 */
#include "kvhash.h"

#define P1 0x9e3779b185ebca87ULL
#define P2 0xc2b2ae3d27d4eb4fULL
#define P3 0x165667b19e3779f9ULL
#define P4 0x85ebca77c2b2ae63ULL
#define P5 0x27d4eb2f165667c5ULL

static inline uint64_t rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t round64(uint64_t acc, uint64_t lane)
{
	acc += lane * P2;
	acc = rotl(acc, 31);
	return acc * P1;
}

static inline uint64_t merge(uint64_t acc, uint64_t v)
{
	acc ^= round64(0, v);
	return acc * P1 + P4;
}

uint64_t kv_xxh64(const void *p, size_t len, uint64_t seed)
{
	const uint8_t *b = p, *end = b + len;
	uint64_t h;

	if (len >= 32) {
		uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed,
			 v4 = seed - P1;

		do {
			v1 = round64(v1, kv_get64(b));
			v2 = round64(v2, kv_get64(b + 8));
			v3 = round64(v3, kv_get64(b + 16));
			v4 = round64(v4, kv_get64(b + 24));
			b += 32;
		} while (end - b >= 32);
		h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
		h = merge(h, v1);
		h = merge(h, v2);
		h = merge(h, v3);
		h = merge(h, v4);
	} else {
		h = seed + P5;
	}
	h += len;
	for (; end - b >= 8; b += 8)
		h = rotl(h ^ round64(0, kv_get64(b)), 27) * P1 + P4;
	if (end - b >= 4) {
		h = rotl(h ^ (kv_get32(b) * P1), 23) * P2 + P3;
		b += 4;
	}
	for (; b < end; b++)
		h = rotl(h ^ (*b * P5), 11) * P1;
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}
