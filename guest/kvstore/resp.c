// SPDX-License-Identifier: MIT
/*
 * resp.c - RESP2 request parsing and reply writing (resp.h).
 *
 * The parser follows Redis 7.0's processMultibulkBuffer and
 * processInlineBuffer (networking.c) and sdssplitargs (sds.c), with the
 * same error texts, and is stricter in three ways: a header line's CR
 * must be followed by LF, a bulk string by CRLF, and a request may not
 * announce more than RESP_REQ_MAX bytes or RESP_ARGS_MAX arguments.
 */
#include "resp.h"

/* ---- Buffers ---------------------------------------------------------- */

#define BUF_MIN 512

bool kv_buf_reserve(struct kv_buf *b, size_t more)
{
	size_t want, cap;
	uint8_t *p;

	if (b->oom)
		return false;
	if (more <= b->cap - b->len)
		return true;
	want = b->len + more;
	if (want < b->len || want > KVMEM_MAX)
		goto oom;
	if (want < 2 * b->cap)
		want = 2 * b->cap;
	if (want < BUF_MIN)
		want = BUF_MIN;
	if (want > KVMEM_MAX)
		want = KVMEM_MAX;
	cap = kvmem_block_size(want);
	p = kvmem_alloc(b->mem, cap);
	if (!p)
		goto oom;
	if (b->len)
		memcpy(p, b->p, b->len);
	kvmem_free(b->mem, b->p, b->cap);
	b->p = p;
	b->cap = cap;
	return true;
oom:
	b->oom = true;
	return false;
}

void kv_buf_add(struct kv_buf *b, const void *data, size_t n)
{
	if (!n || !kv_buf_reserve(b, n))
		return;
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

void kv_buf_consume(struct kv_buf *b, size_t n)
{
	if (!n)
		return;
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

void kv_buf_free(struct kv_buf *b)
{
	kvmem_free(b->mem, b->p, b->cap);
	b->p = NULL;
	b->len = b->cap = 0;
	b->oom = false;
}

/* ---- Numbers ---------------------------------------------------------- */

bool resp_strtoll(const uint8_t *s, size_t n, long long *v)
{
	unsigned long long u;
	bool neg = false;
	size_t i = 0;

	if (n == 0 || n > 20)
		return false;
	if (n == 1 && s[0] == '0') {
		*v = 0;
		return true;
	}
	if (s[0] == '-') {
		neg = true;
		if (++i == n)
			return false;
	}
	if (s[i] < '1' || s[i] > '9')
		return false;
	for (u = 0; i < n; i++) {
		unsigned int d = s[i] - '0';

		if (d > 9 || u > (~0ULL - d) / 10)
			return false;
		u = u * 10 + d;
	}
	if (neg) {
		if (u > (unsigned long long)INT64_MAX + 1)
			return false;
		*v = (long long)(0 - u);
	} else {
		if (u > INT64_MAX)
			return false;
		*v = (long long)u;
	}
	return true;
}

char *resp_fmt_ll(char *end, long long v)
{
	unsigned long long u =
		v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;
	char *p = end;

	do
		*--p = (char)('0' + u % 10);
	while (u /= 10);
	if (v < 0)
		*--p = '-';
	return p;
}

/* ---- Replies ---------------------------------------------------------- */

/* "<c><v>\r\n" */
static void add_num(struct kv_buf *b, char c, long long v)
{
	char tmp[24], *end = tmp + sizeof(tmp), *p;

	*--end = '\n';
	*--end = '\r';
	p = resp_fmt_ll(end, v);
	*--p = c;
	kv_buf_add(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

void resp_simple(struct kv_buf *b, const char *s)
{
	kv_buf_add(b, "+", 1);
	kv_buf_add(b, s, strlen(s));
	kv_buf_add(b, "\r\n", 2);
}

void resp_error_begin(struct kv_buf *b)
{
	kv_buf_add(b, "-", 1);
}

void resp_error_piece(struct kv_buf *b, const void *s, size_t n)
{
	size_t i;

	if (!kv_buf_reserve(b, n))
		return;
	for (i = 0; i < n; i++) {
		uint8_t c = ((const uint8_t *)s)[i];

		b->p[b->len++] = c == '\r' || c == '\n' ? ' ' : c;
	}
}

void resp_error_end(struct kv_buf *b)
{
	kv_buf_add(b, "\r\n", 2);
}

void resp_error(struct kv_buf *b, const char *msg)
{
	resp_error_begin(b);
	resp_error_piece(b, msg, strlen(msg));
	resp_error_end(b);
}

void resp_int(struct kv_buf *b, long long v)
{
	add_num(b, ':', v);
}

void resp_bulk(struct kv_buf *b, const void *s, size_t n)
{
	if (!kv_buf_reserve(b, n + 32))
		return;
	add_num(b, '$', (long long)n);
	kv_buf_add(b, s, n);
	kv_buf_add(b, "\r\n", 2);
}

void resp_null(struct kv_buf *b)
{
	kv_buf_add(b, "$-1\r\n", 5);
}

void resp_array(struct kv_buf *b, size_t n)
{
	add_num(b, '*', (long long)n);
}

/* ---- Inline requests -------------------------------------------------- */

/* C's isspace, which sdssplitargs uses between arguments. */
static bool is_space(uint8_t c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

static int hex_val(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The byte the escape at line[*i] ('\\' in "...") stands for: \xHH, \n,
 * \r, \t, \b, \a, or \<c> for c; *i moves to the escape's last byte. */
static uint8_t escaped(const uint8_t *line, size_t n, size_t *i)
{
	size_t k = *i;

	if (k + 3 < n && line[k + 1] == 'x' && hex_val(line[k + 2]) >= 0 &&
	    hex_val(line[k + 3]) >= 0) {
		*i = k + 3;
		return (uint8_t)(hex_val(line[k + 2]) << 4 |
				 hex_val(line[k + 3]));
	}
	*i = k + 1;
	switch (line[k + 1]) {
	case 'n':
		return '\n';
	case 'r':
		return '\r';
	case 't':
		return '\t';
	case 'b':
		return '\b';
	case 'a':
		return '\a';
	default:
		return line[k + 1];
	}
}

/*
 * Unquote the word that starts at line[*pos], in place: its bytes end at
 * *end, and *pos moves past it.  A word ends at space, tab, CR or LF, or
 * after a closing quote, which must be followed by a blank or the end;
 * "..." takes escapes (see escaped), '...' takes \'.  Returns false for
 * unbalanced quotes.
 */
static bool split_word(uint8_t *line, size_t n, size_t *pos, uint8_t **end)
{
	uint8_t *out = line + *pos, quote = 0;
	size_t i;

	for (i = *pos; i < n; i++) {
		uint8_t c = line[i];

		if (!quote) {
			if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
				break;
			if (c == '"' || c == '\'')
				quote = c;
			else
				*out++ = c;
		} else if (c == '\\' && i + 1 < n &&
			   (quote == '"' || line[i + 1] == '\'')) {
			*out++ =
				quote == '"' ? escaped(line, n, &i) : line[++i];
		} else if (c == quote) {
			if (i + 1 < n && !is_space(line[i + 1]))
				return false;
			*pos = i + 1;
			*end = out;
			return true;
		} else {
			*out++ = c;
		}
	}
	if (quote)
		return false;
	*pos = i;
	*end = out;
	return true;
}

/*
 * Split line[0..n) into arguments as sdssplitargs does (see split_word),
 * unquoting in place; the line ends at a NUL, as the C string Redis makes
 * of it would.  Returns NULL or the error.
 */
static const char *split_inline(uint8_t *line, size_t n, struct resp_req *req)
{
	const uint8_t *nul = kv_memchr(line, 0, n);
	size_t i = 0;
	uint8_t *end;

	if (nul)
		n = (size_t)(nul - line);
	req->argc = 0;
	for (;;) {
		while (i < n && is_space(line[i]))
			i++;
		if (i == n)
			return NULL;
		if (req->argc == RESP_ARGS_MAX)
			return "Protocol error: invalid multibulk length";
		req->argv[req->argc] = line + i;
		if (!split_word(line, n, &i, &end))
			return "Protocol error: unbalanced quotes in request";
		req->argl[req->argc] = (size_t)(end - req->argv[req->argc]);
		req->argc++;
	}
}

static enum resp_status parse_inline(uint8_t *buf, size_t len,
				     struct resp_req *req, size_t *used,
				     const char **err)
{
	size_t scan = len < RESP_INLINE_MAX + 2 ? len : RESP_INLINE_MAX + 2;
	const uint8_t *nl = kv_memchr(buf, '\n', scan);
	size_t n;

	/* Refuse as soon as no LF can end a line short enough (so the
	 * verdict never depends on how the bytes were split). */
	if (!nl) {
		if (len > RESP_INLINE_MAX + 1 ||
		    (len == RESP_INLINE_MAX + 1 &&
		     buf[RESP_INLINE_MAX] != '\r')) {
			*err = "Protocol error: too big inline request";
			return RESP_ERR;
		}
		return RESP_MORE;
	}
	n = (size_t)(nl - buf);
	*used = n + 1;
	if (n && buf[n - 1] == '\r')
		n--;
	if (n > RESP_INLINE_MAX) {
		*err = "Protocol error: too big inline request";
		return RESP_ERR;
	}
	*err = split_inline(buf, n, req);
	return *err ? RESP_ERR : RESP_OK;
}

/* ---- Multibulk requests ----------------------------------------------- */

/*
 * The number on the header line at buf[pos] ("*N\r\n" or "$N\r\n").
 * RESP_OK: *v, and *next is the byte after the LF.
 */
static enum resp_status header_line(const uint8_t *buf, size_t len, size_t pos,
				    long long *v, size_t *next,
				    const char *too_big, const char *invalid,
				    const char **err)
{
	size_t avail = len - pos;
	size_t scan = avail < RESP_INLINE_MAX ? avail : RESP_INLINE_MAX;
	const uint8_t *cr = kv_memchr(buf + pos, '\r', scan);
	size_t end;

	if (!cr) {
		if (avail > RESP_INLINE_MAX) {
			*err = too_big;
			return RESP_ERR;
		}
		return RESP_MORE;
	}
	end = (size_t)(cr - buf);
	if (end + 1 == len)
		return RESP_MORE;
	if (buf[end + 1] != '\n') {
		*err = "Protocol error: expected CRLF";
		return RESP_ERR;
	}
	if (!resp_strtoll(buf + pos + 1, end - pos - 1, v)) {
		*err = invalid;
		return RESP_ERR;
	}
	*next = end + 2;
	return RESP_OK;
}

static enum resp_status parse_multibulk(const uint8_t *buf, size_t len,
					struct resp_req *req, size_t *used,
					const char **err)
{
	enum resp_status st;
	long long count, blen;
	size_t pos;

	st = header_line(buf, len, 0, &count, &pos,
			 "Protocol error: too big mbulk count string",
			 "Protocol error: invalid multibulk length", err);
	if (st != RESP_OK)
		return st;
	if (count > RESP_ARGS_MAX) {
		*err = "Protocol error: invalid multibulk length";
		return RESP_ERR;
	}
	req->argc = 0;
	while (req->argc < count) {
		if (pos == len)
			return RESP_MORE;
		if (buf[pos] != '$') {
			static const char msg[] =
				"Protocol error: expected '$', got ' '";
			uint8_t c = buf[pos];

			/* Redis sends the byte as it is; a NUL would end
			 * our string, so it becomes a blank like CR, LF. */
			memcpy(req->err, msg, sizeof(msg));
			req->err[sizeof(msg) - 3] =
				c && c != '\r' && c != '\n' ? (char)c : ' ';
			*err = req->err;
			return RESP_ERR;
		}
		st = header_line(buf, len, pos, &blen, &pos,
				 "Protocol error: too big bulk count string",
				 "Protocol error: invalid bulk length", err);
		if (st != RESP_OK)
			return st;
		if (blen < 0 || blen > RESP_BULK_MAX) {
			*err = "Protocol error: invalid bulk length";
			return RESP_ERR;
		}
		if (pos + (size_t)blen + 2 > RESP_REQ_MAX) {
			*err = "Protocol error: request too big";
			return RESP_ERR;
		}
		if (len - pos < (size_t)blen + 2)
			return RESP_MORE;
		if (buf[pos + blen] != '\r' || buf[pos + blen + 1] != '\n') {
			*err = "Protocol error: expected CRLF";
			return RESP_ERR;
		}
		req->argv[req->argc] = buf + pos;
		req->argl[req->argc++] = (size_t)blen;
		pos += (size_t)blen + 2;
	}
	*used = pos;
	return RESP_OK;
}

enum resp_status resp_parse(uint8_t *buf, size_t len, struct resp_req *req,
			    size_t *used, const char **err)
{
	*err = NULL;
	if (len == 0)
		return RESP_MORE;
	if (buf[0] == '*')
		return parse_multibulk(buf, len, req, used, err);
	return parse_inline(buf, len, req, used, err);
}
