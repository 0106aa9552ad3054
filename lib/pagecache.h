/* SPDX-License-Identifier: MIT */
/*
 * pagecache.h - a bounded cache of the last version of guest pages sent
 * in a stream, for xor-delta encoding (FT_PAGE_XOR, XBZRLE-style).
 *
 * The cache maps a page frame number to a copy of the FT_PAGE_SIZE bytes
 * last sent for that frame.  It is 2-way set-associative: frame `pfn`
 * may live in either way of set `pfn % nr_sets`, and a miss replaces the
 * least recently used way of its set.  Lookups are O(1); all memory is
 * allocated once by pagecache_init (no allocation per page).
 *
 * Buffers rotate instead of being copied: the cache holds one spare page
 * buffer beyond its slots.  pagecache_get hands out the buffer the caller
 * fills with the new version, and that buffer becomes the frame's entry
 * at once; on a hit the old version stays readable in what is now the
 * spare until the next call.  So a writer encodes the new page against
 * the old one and updates the cache with no copy beyond filling the new
 * buffer.
 *
 * The cache stands for what the receiver holds: an entry must hold
 * exactly the bytes sent for that frame in the current stream.  A user
 * drops an entry for a frame it sends in another way (stream_writer
 * does this for ZERO pages) and clears the cache when the stream ends or
 * fails.  Frame numbers are below UINT64_MAX.  Not thread-safe: one user
 * at a time.
 */
#ifndef PAGECACHE_H
#define PAGECACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGECACHE_WAYS 2

struct pagecache_stats {
	uint64_t hits;	    /* pagecache_get found the frame */
	uint64_t misses;    /* pagecache_get did not */
	uint64_t evictions; /* a miss that replaced another frame's entry */
	uint64_t drops;	    /* entries removed by pagecache_drop */
};

/* Fields are private except `stats` (read-write: a caller may reset it)
 * and `nr_slots` (read-only). */
struct pagecache {
	struct pagecache_stats stats;
	size_t nr_slots; /* pages the cache holds: PAGECACHE_WAYS * nr_sets */

	size_t nr_sets;
	uint64_t *tag;	      /* per slot: pfn + 1, or 0 when empty */
	unsigned char **page; /* per slot: its page buffer */
	unsigned char *spare; /* the buffer no slot uses */
	uint8_t *lru;	      /* per set: the way to replace next */
	unsigned char *mem;   /* nr_slots + 1 page buffers */
};

/*
 * Prepare `pc` to hold as many pages as fit in `bytes` (rounded down to
 * a whole number of sets of PAGECACHE_WAYS pages), plus one spare page
 * and about 17 bytes of metadata per page.  Return 0, -EINVAL if `bytes`
 * holds fewer than PAGECACHE_WAYS pages, or -ENOMEM.  On success the
 * caller calls pagecache_fini once.
 */
int pagecache_init(struct pagecache *pc, size_t bytes);

/* Free what `pc` holds. */
void pagecache_fini(struct pagecache *pc);

/* Forget every entry (the statistics stay). */
void pagecache_clear(struct pagecache *pc);

/*
 * Make `pfn` the most recently used entry of its set and return the page
 * buffer that now holds its entry, for the caller to fill with the
 * version being sent before its next call on `pc`.  On a hit, *prev gets
 * the previous version of the frame (readable until the next call on
 * `pc`); on a miss, *prev gets NULL and the least recently used entry of
 * the set is replaced.  The returned buffer's contents are undefined.
 */
void *pagecache_get(struct pagecache *pc, uint64_t pfn, const void **prev);

/* The entry of `pfn` or NULL, without counting or reordering anything. */
const void *pagecache_peek(const struct pagecache *pc, uint64_t pfn);

/* Remove the entry of `pfn`, if there is one. */
void pagecache_drop(struct pagecache *pc, uint64_t pfn);

#endif /* PAGECACHE_H */
