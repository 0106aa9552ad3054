// SPDX-License-Identifier: MIT
#include "log.h"

#include <stdarg.h>
#include <string.h>

static const char *log_prog = "ft";
static enum log_level log_level = LOG_INFO;
static FILE *log_file;
static __thread char last_err[512];
static __thread bool quiet;

const char *log_last_err(void)
{
	return last_err;
}

void log_set_prog(const char *prog)
{
	const char *slash = strrchr(prog, '/');

	log_prog = slash ? slash + 1 : prog;
}

void log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_set_file(FILE *f)
{
	log_file = f;
}

void log_set_quiet(bool on)
{
	quiet = on;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info",
					     "debug" };
	char buf[1024];
	va_list ap;
	int n;

	if (level == LOG_ERR) {
		va_start(ap, fmt);
		vsnprintf(last_err, sizeof(last_err), fmt, ap);
		va_end(ap);
	}
	if (level > log_level || quiet)
		return;
	n = snprintf(buf, sizeof(buf), "%s: %s: ", log_prog, names[level]);
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	fprintf(log_file ? log_file : stderr, "%s\n", buf);
}
