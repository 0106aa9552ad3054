// SPDX-License-Identifier: MIT
/*
 * string.c - the libc string and memory functions gcc and guests rely on.
 *
 * gcc may emit calls to memcpy, memmove, memset and memcmp on its own, so
 * these must be fast.  The bulk copies use the string instructions, which
 * every CPU with ERMS/FSRM runs at cache-line speed.  This file is built
 * with -fno-tree-loop-distribute-patterns so gcc cannot turn a loop here
 * back into a call to the function it implements.
 */
#include "ft.h"

int errno;

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep movsb"
			 : "+D"(d), "+S"(src), "+c"(n)
			 :
			 : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = (unsigned char *)dst + n;
	const unsigned char *s = (const unsigned char *)src + n;

	/* A forward copy is correct unless dst overlaps src from above. */
	if ((uintptr_t)dst - (uintptr_t)src >= n)
		return memcpy(dst, src, n);
	/* Backwards, 8 bytes at a time from the end, then the head. */
	while (n >= 8) {
		uint64_t w;

		d -= 8;
		s -= 8;
		__builtin_memcpy(&w, s, 8);
		__builtin_memcpy(d, &w, 8);
		n -= 8;
	}
	while (n--)
		*--d = *--s;
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *p = a, *q = b;

	/* Skip equal 8-byte words, then find the differing byte. */
	while (n >= 8) {
		uint64_t x, y;

		__builtin_memcpy(&x, p, 8);
		__builtin_memcpy(&y, q, 8);
		if (x != y)
			break;
		p += 8;
		q += 8;
		n -= 8;
	}
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}

size_t strlen(const char *s)
{
	const char *p = s;

	while (*p)
		p++;
	return p - s;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (!*a)
			break;
	}
	return 0;
}

char *strchr(const char *s, int c)
{
	for (;; s++) {
		if (*s == (char)c)
			return (char *)s;
		if (!*s)
			return NULL;
	}
}

static int digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'Z')
		return c - 'A' + 10;
	return 36;
}

unsigned long long strtoull(const char *s, char **end, int base)
{
	const char *p = s;
	unsigned long long v = 0;
	bool any = false, overflow = false;

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '+')
		p++;
	if ((base == 0 || base == 16) && p[0] == '0' &&
	    (p[1] == 'x' || p[1] == 'X') && digit_value(p[2]) < 16) {
		p += 2;
		base = 16;
	} else if (base == 0) {
		base = p[0] == '0' ? 8 : 10;
	}
	if (base < 2 || base > 36) {
		errno = EINVAL;
		p = s;
		goto out;
	}
	for (;; p++) {
		int d = digit_value(*p);

		if (d >= base)
			break;
		any = true;
		if (v > (UINT64_MAX - d) / base)
			overflow = true;
		else
			v = v * base + d;
	}
	if (!any)
		p = s;
	if (overflow) {
		errno = ERANGE;
		v = UINT64_MAX;
	}
out:
	if (end)
		*end = (char *)p;
	return v;
}

unsigned long strtoul(const char *s, char **end, int base)
{
	return strtoull(s, end, base);
}

int ft_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	uint64_t v;

	if (!(*s >= '0' && *s <= '9'))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end,
		     (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10);
	if (errno)
		return -errno;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}
