// SPDX-License-Identifier: MIT
/*
 * pagecache.c - the bounded cache of last-sent page versions (pagecache.h).
 *
 * Slot `set * PAGECACHE_WAYS + way` holds a frame of set `pfn % nr_sets`.
 * The modulo (not a mask) lets any budget be used in full, and keeps a
 * contiguous range of frames no larger than the cache free of conflicts;
 * two ways absorb the rest (strides, a few hot frames that collide).
 */
#include "pagecache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "stream_wire.h"

_Static_assert(PAGECACHE_WAYS == 2, "the LRU bit assumes two ways");

int pagecache_init(struct pagecache *pc, size_t bytes)
{
	size_t nr_sets = bytes / FT_PAGE_SIZE / PAGECACHE_WAYS;
	size_t nr_slots = nr_sets * PAGECACHE_WAYS;
	void *mem = NULL;

	memset(pc, 0, sizeof(*pc));
	if (!nr_sets) {
		log_err("page cache: %zu bytes hold fewer than %d pages", bytes,
			PAGECACHE_WAYS);
		return -EINVAL;
	}
	pc->tag = calloc(nr_slots, sizeof(*pc->tag));
	pc->page = calloc(nr_slots, sizeof(*pc->page));
	pc->lru = calloc(nr_sets, sizeof(*pc->lru));
	if (!pc->tag || !pc->page || !pc->lru ||
	    posix_memalign(&mem, FT_PAGE_SIZE, (nr_slots + 1) * FT_PAGE_SIZE)) {
		pagecache_fini(pc);
		log_err("page cache: cannot allocate %zu pages", nr_slots + 1);
		return -ENOMEM;
	}
	pc->mem = mem;
	for (size_t i = 0; i < nr_slots; i++)
		pc->page[i] = pc->mem + i * FT_PAGE_SIZE;
	pc->spare = pc->mem + nr_slots * FT_PAGE_SIZE;
	pc->nr_sets = nr_sets;
	pc->nr_slots = nr_slots;
	return 0;
}

void pagecache_fini(struct pagecache *pc)
{
	free(pc->tag);
	free(pc->page);
	free(pc->lru);
	free(pc->mem);
	memset(pc, 0, sizeof(*pc));
}

void pagecache_clear(struct pagecache *pc)
{
	memset(pc->tag, 0, pc->nr_slots * sizeof(*pc->tag));
	memset(pc->lru, 0, pc->nr_sets * sizeof(*pc->lru));
}

/* The slot holding `pfn`, or -1. */
static long find(const struct pagecache *pc, uint64_t pfn, size_t *set)
{
	size_t s = (size_t)(pfn % pc->nr_sets), slot = s * PAGECACHE_WAYS;

	*set = s;
	if (pc->tag[slot] == pfn + 1)
		return (long)slot;
	if (pc->tag[slot + 1] == pfn + 1)
		return (long)slot + 1;
	return -1;
}

void *pagecache_get(struct pagecache *pc, uint64_t pfn, const void **prev)
{
	size_t set;
	long slot = find(pc, pfn, &set);
	unsigned char *buf;

	if (slot >= 0) {
		/* Hit: the spare takes the new version, the old one
		 * becomes the spare. */
		pc->stats.hits++;
		buf = pc->spare;
		pc->spare = pc->page[slot];
		pc->page[slot] = buf;
		*prev = pc->spare;
	} else {
		pc->stats.misses++;
		slot = (long)(set * PAGECACHE_WAYS + pc->lru[set]);
		if (pc->tag[slot])
			pc->stats.evictions++;
		pc->tag[slot] = pfn + 1;
		*prev = NULL;
	}
	pc->lru[set] = (uint8_t)((size_t)slot % PAGECACHE_WAYS ^ 1);
	return pc->page[slot];
}

const void *pagecache_peek(const struct pagecache *pc, uint64_t pfn)
{
	size_t set;
	long slot = find(pc, pfn, &set);

	return slot >= 0 ? pc->page[slot] : NULL;
}

void pagecache_drop(struct pagecache *pc, uint64_t pfn)
{
	size_t set;
	long slot = find(pc, pfn, &set);

	if (slot < 0)
		return;
	pc->tag[slot] = 0;
	pc->lru[set] = (uint8_t)((size_t)slot % PAGECACHE_WAYS);
	pc->stats.drops++;
}
