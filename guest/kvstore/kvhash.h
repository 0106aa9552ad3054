/* SPDX-License-Identifier: MIT */
/*
 * kvhash.h - XXH64 (Yann Collet's xxHash, 64-bit variant), freestanding.
 *
 * The kvstore's log checksums and its hash table use it.  The output is
 * bit-identical to libxxhash's XXH64() (tests/unit/test_kvstore.c checks
 * this), so host tools can verify a log with the library.
 */
#ifndef KVHASH_H
#define KVHASH_H

#include "kvplat.h"

/* XXH64 of `len` bytes at `p` with `seed`; `p` may be unaligned (and NULL
 * when len is 0).  Little-endian hosts only, like everything here. */
uint64_t kv_xxh64(const void *p, size_t len, uint64_t seed);

#endif /* KVHASH_H */
