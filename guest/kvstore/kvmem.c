// SPDX-License-Identifier: MIT
/*
 * kvmem.c - the buddy allocator (see kvmem.h).
 *
 * A free block holds its list links and order; a bit per KVMEM_MIN unit
 * says "a free block starts here", so freeing finds a free buddy of the
 * same order in O(1) and merges upwards.  The region need not be a power
 * of two: it is carved into the largest aligned blocks that fit.
 */
#include "kvmem.h"

#define BLOCK_MAGIC 0x6b766d66u /* "fmvk" */

struct kvmem_block {
	struct kvmem_block *next, *prev;
	uint32_t order;
	uint32_t magic;
};

_Static_assert(sizeof(struct kvmem_block) <= KVMEM_MIN,
	       "a free block's header fits in the smallest block");

static inline size_t order_size(unsigned int order)
{
	return KVMEM_MIN << order;
}

static inline bool test_bit(const struct kvmem *m, size_t off)
{
	size_t u = off >> KVMEM_MIN_SHIFT;

	return m->freemap[u / 64] >> (u % 64) & 1;
}

static inline void set_bit(struct kvmem *m, size_t off, bool on)
{
	size_t u = off >> KVMEM_MIN_SHIFT;

	if (on)
		m->freemap[u / 64] |= 1ULL << (u % 64);
	else
		m->freemap[u / 64] &= ~(1ULL << (u % 64));
}

static void push(struct kvmem *m, size_t off, unsigned int order)
{
	struct kvmem_block *b = (struct kvmem_block *)(m->base + off);

	b->order = order;
	b->magic = BLOCK_MAGIC;
	b->prev = NULL;
	b->next = m->free[order];
	if (b->next)
		b->next->prev = b;
	m->free[order] = b;
	set_bit(m, off, true);
}

static void unlink_block(struct kvmem *m, struct kvmem_block *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		m->free[b->order] = b->next;
	if (b->next)
		b->next->prev = b->prev;
	b->magic = 0;
	set_bit(m, (uint8_t *)b - m->base, false);
}

int kvmem_init(struct kvmem *m, void *mem, size_t size)
{
	/* Bitmap words for every unit the region could hold, plus slack
	 * for aligning the bitmap; blocks start after it. */
	size_t map_words = size / (KVMEM_MIN * 64) + 2;
	size_t map_bytes = map_words * 8 + 8;
	uintptr_t start = (uintptr_t)mem, end = start + size, base;
	size_t off;

	kv_memset(m, 0, sizeof(*m));
	if (end < start || size < map_bytes + 2 * KVMEM_MIN)
		return -EINVAL;
	base = (start + map_bytes + KVMEM_MIN - 1) &
	       ~(uintptr_t)(KVMEM_MIN - 1);
	if (base + KVMEM_MIN > end)
		return -EINVAL;
	m->freemap = (uint64_t *)((start + 7) & ~(uintptr_t)7);
	m->base = (uint8_t *)base;
	m->size = (end - base) & ~(size_t)(KVMEM_MIN - 1);
	memset(m->freemap, 0, map_words * 8);
	for (off = 0; off + KVMEM_MIN <= m->size;) {
		unsigned int o = KVMEM_ORDERS - 1;

		while (off % order_size(o) || off + order_size(o) > m->size)
			o--;
		push(m, off, o);
		off += order_size(o);
	}
	return 0;
}

static unsigned int order_of(size_t size)
{
	unsigned int o = 0;

	while (order_size(o) < size)
		o++;
	return o;
}

size_t kvmem_block_size(size_t size)
{
	return size > KVMEM_MAX ? 0 : order_size(order_of(size));
}

void *kvmem_alloc(struct kvmem *m, size_t size)
{
	unsigned int o, j;
	struct kvmem_block *b;
	size_t off;

	if (size > KVMEM_MAX) {
		m->fails++;
		return NULL;
	}
	o = order_of(size);
	for (j = o; j < KVMEM_ORDERS && !m->free[j]; j++)
		;
	if (j == KVMEM_ORDERS) {
		m->fails++;
		return NULL;
	}
	b = m->free[j];
	unlink_block(m, b);
	off = (uint8_t *)b - m->base;
	while (j > o) {
		j--;
		push(m, off + order_size(j), j);
	}
	m->used += order_size(o);
	return b;
}

void kvmem_free(struct kvmem *m, void *p, size_t size)
{
	unsigned int o;
	size_t off;

	if (!p)
		return;
	o = order_of(size);
	off = (uint8_t *)p - m->base;
	m->used -= order_size(o);
	while (o < KVMEM_ORDERS - 1) {
		size_t buddy = off ^ order_size(o);
		struct kvmem_block *b = (struct kvmem_block *)(m->base + buddy);

		if (buddy + order_size(o) > m->size || !test_bit(m, buddy) ||
		    b->order != o)
			break;
		unlink_block(m, b);
		off &= ~order_size(o);
		o++;
	}
	push(m, off, o);
}

int kvmem_check(const struct kvmem *m)
{
	size_t free_bytes = 0, marked = 0, u;
	unsigned int o;

	for (o = 0; o < KVMEM_ORDERS; o++) {
		const struct kvmem_block *b, *prev = NULL;

		for (b = m->free[o]; b; prev = b, b = b->next) {
			size_t off = (const uint8_t *)b - m->base;

			if ((const uint8_t *)b < m->base || off >= m->size ||
			    off % order_size(o) ||
			    off + order_size(o) > m->size ||
			    b->magic != BLOCK_MAGIC || b->order != o ||
			    b->prev != prev || !test_bit(m, off))
				return -EINVAL;
			free_bytes += order_size(o);
			marked++;
		}
	}
	/* Bits past the last unit are never set. */
	for (u = 0; u < ((m->size >> KVMEM_MIN_SHIFT) + 63) / 64; u++)
		marked -= (size_t)__builtin_popcountll(m->freemap[u]);
	if (marked || free_bytes + m->used != m->size)
		return -EINVAL;
	return 0;
}
