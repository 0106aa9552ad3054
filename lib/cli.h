/* SPDX-License-Identifier: MIT */
/*
 * cli.h - small pieces every ftengine program needs the same way: sizes
 * on the command line and the JSON-lines control socket's listener.
 */
#ifndef CLI_H
#define CLI_H

#include <stdint.h>

/*
 * Parse a byte count: digits with an optional K, M or G suffix (powers of
 * 1024), optionally followed by "iB" or "B": "256M", "1GiB", "65536".
 * Return 0 with *out set, or -EINVAL (no digits, a sign, junk, overflow).
 */
int cli_parse_size(const char *s, uint64_t *out);

/*
 * Listen on the UNIX stream socket `path` (close-on-exec, non-blocking,
 * mode 0600).  A live socket there (another `owner` process answers) is
 * refused with -EADDRINUSE; a stale socket file is replaced.  Return the
 * listening descriptor or -errno (logged).
 */
int cli_listen_unix(const char *path, const char *owner, int backlog);

#endif /* CLI_H */
