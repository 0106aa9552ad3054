/* SPDX-License-Identifier: MIT */
/*
 * kvplat.h - what the kvstore's portable modules (kvhash, kvmem, store,
 * kvlog, resp, kv) take from their platform: fixed-width integers, bool,
 * size_t, the memory functions and a few Linux errno values.
 *
 * Hosted (unit tests, fuzzing: __STDC_HOSTED__ is 1) they come from the C
 * library; freestanding (the guest) from the guest runtime's ft.h, with
 * the errno values the runtime lacks defined here to Linux's numbers, so
 * both builds return the same codes.  Nothing in these modules makes a
 * hypercall, allocates from a global heap or prints.
 */
#ifndef KVPLAT_H
#define KVPLAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if __STDC_HOSTED__
#include <errno.h>
#include <string.h>
#else
#include "ft.h"

/* Linux's values, as gnet_plat.h (also in a guest) defines them too. */
#ifndef EIO
#define EIO 5
#endif
#ifndef E2BIG
#define E2BIG 7
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef ENOSPC
#define ENOSPC 28
#endif
#ifndef EBADMSG
#define EBADMSG 74
#endif
#ifndef EUCLEAN
#define EUCLEAN 117
#endif
#endif

/* Inline expansion for small constant sizes even when freestanding. */
#define kv_memcpy __builtin_memcpy
#define kv_memset __builtin_memset
#define kv_memcmp __builtin_memcmp

#define KV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* memchr, which the guest runtime lacks. */
static inline const uint8_t *kv_memchr(const void *s, uint8_t c, size_t n)
{
#if __STDC_HOSTED__
	return memchr(s, c, n);
#else
	const uint8_t *p = s, *end = p + n;

	for (; p < end; p++)
		if (*p == c)
			return p;
	return NULL;
#endif
}

static inline uint16_t kv_get16(const void *p)
{
	uint16_t v;

	kv_memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint32_t kv_get32(const void *p)
{
	uint32_t v;

	kv_memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint64_t kv_get64(const void *p)
{
	uint64_t v;

	kv_memcpy(&v, p, sizeof(v));
	return v;
}

static inline void kv_put16(void *p, uint16_t v)
{
	kv_memcpy(p, &v, sizeof(v));
}

static inline void kv_put32(void *p, uint32_t v)
{
	kv_memcpy(p, &v, sizeof(v));
}

static inline void kv_put64(void *p, uint64_t v)
{
	kv_memcpy(p, &v, sizeof(v));
}

#endif /* KVPLAT_H */
