/* SPDX-License-Identifier: MIT */
/*
 * resp.h - the Redis serialisation protocol (RESP2), server side: a
 * request parser and reply writers, plus the growable byte buffer both
 * work on.
 *
 * Requests are what Redis accepts: an array of bulk strings
 * ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), or an inline command, a line of
 * blank-separated words with Redis's quoting rules ("GET k\r\n", "\n" or
 * "\r\n" ends it).  The parser is given everything buffered so far and
 * takes at most one request; it never reads past what it was given, so
 * partial requests just ask for more bytes.  Every byte is untrusted; the
 * limits below are checked before anything is waited for.
 */
#ifndef RESP_H
#define RESP_H

#include "kvmem.h"

#define RESP_BULK_MAX (512u << 10)  /* bytes per argument */
#define RESP_ARGS_MAX 1024	    /* arguments per request */
#define RESP_INLINE_MAX (64u << 10) /* an inline request or header line */
/* A whole request: two maximal arguments (SET) and their framing fit. */
#define RESP_REQ_MAX (2 * RESP_BULK_MAX + RESP_INLINE_MAX)

/* ---- Buffers ---------------------------------------------------------- */

/* Bytes p[0..len) in a kvmem block of cap bytes (or none: p NULL, cap 0).
 * After a failed growth `oom` is set and the buffer refuses appends. */
struct kv_buf {
	struct kvmem *mem;
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

/* Make room for `more` bytes after len: true, or false (and oom set) if
 * memory is short or the total would exceed KVMEM_MAX. */
bool kv_buf_reserve(struct kv_buf *b, size_t more);

/* Append n bytes (n may be 0). */
void kv_buf_add(struct kv_buf *b, const void *data, size_t n);

/* Drop the first n (<= len) bytes. */
void kv_buf_consume(struct kv_buf *b, size_t n);

/* Free the block; the buffer is empty (and usable) again, oom cleared. */
void kv_buf_free(struct kv_buf *b);

/* ---- Requests --------------------------------------------------------- */

struct resp_req {
	int argc;			    /* 0: an empty request, skip it */
	const uint8_t *argv[RESP_ARGS_MAX]; /* into the parsed buffer */
	size_t argl[RESP_ARGS_MAX];
	char err[64]; /* room for a formatted error message */
};

enum resp_status {
	RESP_OK,   /* one request parsed */
	RESP_MORE, /* incomplete: call again with more bytes */
	RESP_ERR,  /* protocol error: reply *err, close the connection */
};

/*
 * Parse the request at the start of buf[0..len).  RESP_OK: req holds its
 * arguments (pointing into buf, which an inline request's unquoting may
 * have rewritten) and *used the bytes it took.  RESP_ERR: *err is the
 * message, "Protocol error: ...", as Redis words it (in static storage
 * or req->err).  RESP_MORE: nothing is consumed.
 */
enum resp_status resp_parse(uint8_t *buf, size_t len, struct resp_req *req,
			    size_t *used, const char **err);

/*
 * Redis's string2ll: all of s[0..n) as a signed 64-bit decimal, no
 * blanks, no '+', no leading zeros, "-0" refused.  True and *v, or false.
 */
bool resp_strtoll(const uint8_t *s, size_t n, long long *v);

/* Write v in decimal into the 20 bytes before `end`; returns where the
 * digits (and sign) start. */
char *resp_fmt_ll(char *end, long long v);

/* ---- Replies (appended to a buffer; failures leave it oom) ------------ */

void resp_simple(struct kv_buf *b, const char *s);  /* "+s\r\n" */
void resp_error(struct kv_buf *b, const char *msg); /* "-msg\r\n" */
/* An error reply in pieces: "-", then each piece with CR and LF turned
 * into spaces (as Redis does, so no message breaks the framing), then
 * CRLF from resp_error_end. */
void resp_error_begin(struct kv_buf *b);
void resp_error_piece(struct kv_buf *b, const void *s, size_t n);
void resp_error_end(struct kv_buf *b);
void resp_int(struct kv_buf *b, long long v); /* ":v\r\n" */
void resp_bulk(struct kv_buf *b, const void *s, size_t n);
void resp_null(struct kv_buf *b);	     /* "$-1\r\n" */
void resp_array(struct kv_buf *b, size_t n); /* "*n\r\n" */

#endif /* RESP_H */
