/* SPDX-License-Identifier: MIT */
/*
 * kvmem.h - a binary buddy allocator over one caller-given region: the
 * kvstore's memory for keys, values and connection buffers.
 *
 * The guest runtime's malloc never reuses memory, so everything that is
 * allocated and freed over a run (a value overwritten by SET, a buffer
 * that grew for one large request) comes from here.  Blocks are powers
 * of two from KVMEM_MIN to KVMEM_MAX bytes; freed blocks merge with their
 * buddies, so memory freed by one size class serves the others and
 * overwrite churn cannot grow usage past the live data's footprint (at
 * most twice its size, rounded up to powers of two).
 *
 * The caller remembers each allocation's requested size and passes it to
 * kvmem_free: there are no per-block headers.  Single-threaded.
 */
#ifndef KVMEM_H
#define KVMEM_H

#include "kvplat.h"

#define KVMEM_MIN_SHIFT 5  /* 32 bytes: a free block's list links fit */
#define KVMEM_MAX_SHIFT 21 /* 2 MiB: the largest request (a buffer) */
#define KVMEM_MIN ((size_t)1 << KVMEM_MIN_SHIFT)
#define KVMEM_MAX ((size_t)1 << KVMEM_MAX_SHIFT)
#define KVMEM_ORDERS (KVMEM_MAX_SHIFT - KVMEM_MIN_SHIFT + 1)

struct kvmem_block;

struct kvmem {
	/* Read-only for users. */
	size_t size;  /* bytes managed, a multiple of KVMEM_MIN */
	size_t used;  /* bytes in allocated blocks */
	size_t fails; /* requests refused (no block large enough) */
	/* Private. */
	uint8_t *base;	   /* block offsets count from here */
	uint64_t *freemap; /* bit per KVMEM_MIN unit: a free block starts */
	struct kvmem_block *free[KVMEM_ORDERS];
};

/*
 * Manage the `size` bytes at `mem` (any alignment); 1/2048 of them holds
 * the allocator's bitmap.  Returns 0, or -EINVAL if fewer than KVMEM_MIN
 * bytes remain for blocks.  The region belongs to the allocator until the
 * caller stops using `m`; there is no teardown.
 */
int kvmem_init(struct kvmem *m, void *mem, size_t size);

/* The block size a request of `size` bytes occupies (its usable size), or
 * 0 if size > KVMEM_MAX.  A request of 0 bytes takes KVMEM_MIN. */
size_t kvmem_block_size(size_t size);

/* A KVMEM_MIN-aligned block of at least `size` bytes (contents
 * undefined), or NULL if size > KVMEM_MAX or no block is free. */
void *kvmem_alloc(struct kvmem *m, size_t size);

/* Return the block `p` got from kvmem_alloc(m, size) (any size with the
 * same kvmem_block_size).  p may be NULL. */
void kvmem_free(struct kvmem *m, void *p, size_t size);

/*
 * Check the invariants: every free block lies inside the region, aligned
 * to its size, is marked in the bitmap and linked in its order's list;
 * the bitmap marks nothing else; free + used bytes equal the size.
 * Returns 0 or -EINVAL.  O(size / KVMEM_MIN): for tests and fuzzing.
 */
int kvmem_check(const struct kvmem *m);

#endif /* KVMEM_H */
