// SPDX-License-Identifier: MIT
/*
 * printf.c - vsnprintf, a line-buffered console printf, and ft_panic.
 *
 * One formatter feeds a sink: a caller's buffer for vsnprintf, or the
 * console buffer for printf, which is written with one hypercall per line
 * (or per FT_CONSOLE_MAX bytes) because every hypercall costs an exit.
 */
#include "ft.h"

struct sink {
	char *buf;
	size_t size;  /* capacity of buf, including the NUL if any */
	size_t len;   /* bytes formatted so far (may exceed size) */
	bool console; /* flush to the console at '\n' and when full */
};

static char con_buf[FT_CONSOLE_MAX];
static size_t con_len;
static bool con_midline; /* the last byte printed was not a '\n' */

void ft_flush(void)
{
	if (con_len) {
		ft_console_write(con_buf, con_len);
		con_len = 0;
	}
}

static void put(struct sink *o, char c)
{
	o->len++;
	if (o->console) {
		con_buf[con_len++] = c;
		con_midline = c != '\n';
		if (c == '\n' || con_len == sizeof(con_buf))
			ft_flush();
	} else if (o->len < o->size) {
		o->buf[o->len - 1] = c;
	}
}

static void put_pad(struct sink *o, char c, int n)
{
	while (n-- > 0)
		put(o, c);
}

struct spec {
	int width;
	int prec; /* -1: none */
	bool left;
	bool zero;
};

/* Emit `s` (n bytes) with `prefix` ("-", "0x" or "") inside the field. */
static void put_field(struct sink *o, const struct spec *sp, const char *prefix,
		      const char *s, int n)
{
	int plen = strlen(prefix);
	int pad = sp->width - plen - n;

	if (!sp->left && !sp->zero)
		put_pad(o, ' ', pad);
	while (*prefix)
		put(o, *prefix++);
	if (!sp->left && sp->zero)
		put_pad(o, '0', pad);
	while (n--)
		put(o, *s++);
	if (sp->left)
		put_pad(o, ' ', pad);
}

static int bounded_len(const char *s, int max)
{
	int n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

static void put_uint(struct sink *o, const struct spec *sp, const char *prefix,
		     unsigned long long v, unsigned int base, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	int i = sizeof(tmp);

	do {
		tmp[--i] = digits[v % base];
		v /= base;
	} while (v);
	put_field(o, sp, prefix, tmp + i, sizeof(tmp) - i);
}

static void format(struct sink *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		struct spec sp = {.prec = -1};
		int lng = 0;
		long long sv;
		const char *s;
		char c;

		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		for (;; fmt++) {
			if (fmt[1] == '-')
				sp.left = true;
			else if (fmt[1] == '0')
				sp.zero = true;
			else
				break;
		}
		if (fmt[1] == '*') {
			sp.width = va_arg(ap, int);
			if (sp.width < 0) {
				sp.left = true;
				sp.width = -sp.width;
			}
			fmt++;
		}
		while (fmt[1] >= '0' && fmt[1] <= '9')
			sp.width = sp.width * 10 + (*++fmt - '0');
		if (fmt[1] == '.') {
			fmt++;
			sp.prec = 0;
			while (fmt[1] >= '0' && fmt[1] <= '9')
				sp.prec = sp.prec * 10 + (*++fmt - '0');
		}
		for (; fmt[1] == 'l' || fmt[1] == 'z'; fmt++)
			lng++;
		switch (*++fmt) {
		case 'd':
		case 'i':
			sv = lng ? va_arg(ap, long long) : va_arg(ap, int);
			put_uint(o, &sp, sv < 0 ? "-" : "",
				 sv < 0 ? -(unsigned long long)sv
					: (unsigned long long)sv,
				 10, false);
			break;
		case 'u':
		case 'x':
		case 'X':
			put_uint(o, &sp, "",
				 lng ? va_arg(ap, unsigned long long)
				     : va_arg(ap, unsigned int),
				 *fmt == 'u' ? 10 : 16, *fmt == 'X');
			break;
		case 'p':
			put_uint(o, &sp, "0x", (uintptr_t)va_arg(ap, void *),
				 16, false);
			break;
		case 'c':
			c = (char)va_arg(ap, int);
			sp.zero = false;
			put_field(o, &sp, "", &c, 1);
			break;
		case 's':
			s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			sp.zero = false;
			put_field(o, &sp, "", s,
				  sp.prec < 0 ? (int)strlen(s)
					      : bounded_len(s, sp.prec));
			break;
		case '%':
			put(o, '%');
			break;
		default:
			/* Unknown conversion (or a '%' at the end): show it. */
			put(o, '%');
			if (!*fmt)
				return;
			put(o, *fmt);
		}
	}
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct sink o = {.buf = buf, .size = size};

	format(&o, fmt, ap);
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

int vprintf(const char *fmt, va_list ap)
{
	struct sink o = {.console = true};

	format(&o, fmt, ap);
	return (int)o.len;
}

int printf(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vprintf(fmt, ap);
	va_end(ap);
	return n;
}

void ft_panic(const char *fmt, ...)
{
	va_list ap;

	printf(con_midline ? "\npanic: " : "panic: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	ft_exit(255);
}

void abort(void)
{
	ft_panic("abort called");
}
