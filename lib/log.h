/* SPDX-License-Identifier: MIT */
/*
 * log.h - logging for every ftengine program and library.
 *
 * Library code logs at the failure site with the offending values and
 * returns an error; it never exits.  Messages go to stderr (or the file set
 * with log_set_file) as "prog: level: message".  Thread-safe: one fprintf
 * per message.
 */
#ifndef LOG_H
#define LOG_H

#include <stdbool.h>
#include <stdio.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Set the program name shown in front of every line (default "ft"). */
void log_set_prog(const char *prog);
/* Messages above `level` are dropped (default LOG_INFO). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Send messages to `f` instead of stderr (NULL restores stderr). */
void log_set_file(FILE *f);

/* The calling thread's last error message (without the prefix), or "":
 * for a caller that reports a library failure to a user. */
const char *log_last_err(void);
/* Drop the calling thread's messages (log_last_err still records its
 * errors): for a thread that retries quietly and reports by itself. */
void log_set_quiet(bool on);

void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif /* LOG_H */
