// SPDX-License-Identifier: MIT
/*
 * test_pagecache.c - the bounded cache of last-sent pages: sizing, hits,
 * misses, LRU replacement within a set, buffer rotation, drop and clear.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"
#include "pagecache.h"
#include "stream_wire.h"

#define PG FT_PAGE_SIZE

/* Cache pfn with every byte `v`; return whether it was a hit. */
static bool put(struct pagecache *pc, uint64_t pfn, int v)
{
	const void *prev;
	void *buf = pagecache_get(pc, pfn, &prev);

	assert_non_null(buf);
	assert_true(buf != prev);
	memset(buf, v, PG);
	return prev != NULL;
}

static void assert_cached(const struct pagecache *pc, uint64_t pfn, int v)
{
	const unsigned char *p = pagecache_peek(pc, pfn);

	assert_non_null(p);
	assert_int_equal(p[0], v);
	assert_int_equal(p[PG - 1], v);
}

static void test_sizes(void **state)
{
	struct pagecache pc;

	assert_int_equal(pagecache_init(&pc, 0), -EINVAL);
	assert_int_equal(pagecache_init(&pc, 2 * PG - 1), -EINVAL);
	assert_int_equal(pagecache_init(&pc, 2 * PG), 0);
	assert_int_equal(pc.nr_slots, 2);
	pagecache_fini(&pc);
	/* Any budget, rounded down to whole sets. */
	assert_int_equal(pagecache_init(&pc, 7 * PG + 100), 0);
	assert_int_equal(pc.nr_slots, 6);
	pagecache_fini(&pc);
	assert_int_equal(pagecache_init(&pc, 64u << 20), 0);
	assert_int_equal(pc.nr_slots, 16384);
	assert_int_equal(
		(uintptr_t)pagecache_get(&pc, 1, &(const void *){0}) % PG, 0);
	pagecache_fini(&pc);
}

/* A contiguous range no larger than the cache fits without conflicts;
 * the versions read back are the ones stored. */
static void test_hits(void **state)
{
	struct pagecache pc;
	const void *prev;
	unsigned char *buf;

	assert_int_equal(pagecache_init(&pc, 64 * PG), 0);
	for (uint64_t pfn = 1000; pfn < 1064; pfn++)
		assert_false(put(&pc, pfn, (int)pfn & 0xff));
	assert_int_equal(pc.stats.misses, 64);
	assert_int_equal(pc.stats.evictions, 0);
	for (uint64_t pfn = 1000; pfn < 1064; pfn++)
		assert_cached(&pc, pfn, (int)pfn & 0xff);
	assert_null(pagecache_peek(&pc, 999));
	assert_null(pagecache_peek(&pc, 1064));

	/* A hit hands out a fresh buffer; the old version stays readable
	 * until the next call. */
	buf = pagecache_get(&pc, 1010, &prev);
	assert_non_null(prev);
	assert_int_equal(((const unsigned char *)prev)[5], 1010 & 0xff);
	memset(buf, 0x77, PG);
	assert_int_equal(((const unsigned char *)prev)[5], 1010 & 0xff);
	assert_cached(&pc, 1010, 0x77);
	assert_int_equal(pc.stats.hits, 1);
	/* ... and the spare rotates through every slot's buffer. */
	for (int i = 0; i < 10; i++)
		assert_true(put(&pc, 1010, i));
	assert_cached(&pc, 1010, 9);
	for (uint64_t pfn = 1000; pfn < 1064; pfn++)
		if (pfn != 1010)
			assert_cached(&pc, pfn, (int)pfn & 0xff);
	pagecache_fini(&pc);
}

/* Two ways per set; a miss replaces the least recently used one. */
static void test_lru(void **state)
{
	struct pagecache pc;

	assert_int_equal(pagecache_init(&pc, 4 * PG), 0); /* 2 sets */
	assert_false(put(&pc, 0, 1));
	assert_false(put(&pc, 2, 2)); /* same set */
	assert_true(put(&pc, 0, 3));  /* 0 is now the most recent */
	assert_false(put(&pc, 4, 4)); /* replaces 2 */
	assert_int_equal(pc.stats.evictions, 1);
	assert_null(pagecache_peek(&pc, 2));
	assert_cached(&pc, 0, 3);
	assert_cached(&pc, 4, 4);
	assert_false(put(&pc, 1, 5)); /* the other set is untouched */
	assert_cached(&pc, 0, 3);
	assert_false(put(&pc, 6, 6)); /* replaces 0 */
	assert_null(pagecache_peek(&pc, 0));
	assert_int_equal(pc.stats.evictions, 2);

	/* A dropped entry's way is the next to be filled. */
	pagecache_drop(&pc, 6);
	pagecache_drop(&pc, 6);
	assert_int_equal(pc.stats.drops, 1);
	assert_null(pagecache_peek(&pc, 6));
	assert_false(put(&pc, 8, 8));
	assert_cached(&pc, 4, 4);
	assert_cached(&pc, 8, 8);
	assert_int_equal(pc.stats.evictions, 2);

	/* Frame numbers far apart, up to the largest. */
	assert_false(put(&pc, UINT64_MAX - 1, 9));
	assert_cached(&pc, UINT64_MAX - 1, 9);

	pagecache_clear(&pc);
	for (uint64_t pfn = 0; pfn < 10; pfn++)
		assert_null(pagecache_peek(&pc, pfn));
	assert_null(pagecache_peek(&pc, UINT64_MAX - 1));
	assert_false(put(&pc, 4, 1));
	assert_int_equal(pc.stats.hits, 1);
	pagecache_fini(&pc);
}

static int quiet_setup(void **state)
{
	*state = fopen("/dev/null", "w");
	log_set_file(*state);
	return *state ? 0 : -1;
}

static int quiet_teardown(void **state)
{
	log_set_file(NULL);
	return fclose(*state);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_hits),
		cmocka_unit_test(test_lru),
	};

	return cmocka_run_group_tests(tests, quiet_setup, quiet_teardown);
}
