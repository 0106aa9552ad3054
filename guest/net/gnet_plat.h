/* SPDX-License-Identifier: MIT */
/*
 * gnet_plat.h - everything the guest network stack takes from its
 * platform: fixed-width integers, bool, size_t, memcpy/memset/memcmp
 * and a handful of Linux errno values.
 *
 * Hosted (unit tests, fuzzing: __STDC_HOSTED__ is 1) they come from the C
 * library; freestanding (guests, -ffreestanding) the memory functions are
 * declared here and provided by the guest runtime (guest/rt/string.c), and
 * the errno values are Linux's, which is what the host's <errno.h> has, so
 * both builds return the same numbers.  (ft.h defines EINVAL too, with
 * the same value.)
 */
#ifndef GNET_PLAT_H
#define GNET_PLAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if __STDC_HOSTED__
#include <errno.h>
#include <string.h>
#else
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#define EIO 5
#define E2BIG 7
#define EAGAIN 11
#define ENOMEM 12
#define EFAULT 14
#ifndef EINVAL
#define EINVAL 22
#endif
#define ENOSPC 28
#define ENOSYS 38
#define EMSGSIZE 90
#define EADDRINUSE 98
#define ENETUNREACH 101
#define ECONNABORTED 103
#define ECONNRESET 104
#define ETIMEDOUT 110
#endif

/*
 * gcc and clang expand __builtin_memcpy & co. inline for small constant
 * sizes even under -ffreestanding (which otherwise turns a 6-byte MAC
 * copy into a call); other sizes still call the functions above.
 */
#if defined(__GNUC__)
#define gnet_memcpy __builtin_memcpy
#define gnet_memset __builtin_memset
#define gnet_memcmp __builtin_memcmp
#define gnet_ctz __builtin_ctz
#else
#define gnet_memcpy memcpy
#define gnet_memset memset
#define gnet_memcmp memcmp
static inline int gnet_ctz(unsigned int x)
{
	int n = 0;

	while (!(x & 1)) {
		x >>= 1;
		n++;
	}
	return n;
}
#endif

#endif /* GNET_PLAT_H */
