// SPDX-License-Identifier: MIT
/*
 * channel.c - the generic chan_* layer (sticky errors, counters) and the
 * file-descriptor and memory backends.
 */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "log.h"

static size_t iov_total(const struct iovec *iov, int n)
{
	size_t total = 0;

	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	return total;
}

/* ---- file descriptor backend ---- */

struct chan_fd {
	struct chan c; /* first */
	int fd;
	bool own;
	bool regular; /* a regular file: fsync means something */
};

static int fd_writev(struct chan *c, const struct iovec *iov, int n)
{
	struct chan_fd *f = (struct chan_fd *)c;
	struct iovec v[CHAN_IOV_MAX];
	size_t left = iov_total(iov, n);
	int i = 0;

	memcpy(v, iov, (size_t)n * sizeof(*v));
	while (left) {
		ssize_t w = writev(f->fd, v + i, n - i);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int err = w < 0 ? -errno : -EIO;

			if (err == -EAGAIN || err == -EWOULDBLOCK)
				err = -ETIMEDOUT; /* chan_set_timeout */
			log_err("%s: write of %zu bytes failed: %s", c->name,
				left, strerror(-err));
			return err;
		}
		left -= (size_t)w;
		/* Step over what was written; a partial iovec keeps its tail.
		 */
		while (i < n && (size_t)w >= v[i].iov_len)
			w -= (ssize_t)v[i++].iov_len;
		if (i < n) {
			v[i].iov_base = (char *)v[i].iov_base + w;
			v[i].iov_len -= (size_t)w;
		}
	}
	return 0;
}

static ssize_t fd_read(struct chan *c, void *buf, size_t len)
{
	struct chan_fd *f = (struct chan_fd *)c;
	size_t got = 0;

	while (got < len) {
		ssize_t r = read(f->fd, (char *)buf + got, len - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int err = -errno;

			if (err == -EAGAIN || err == -EWOULDBLOCK)
				err = -ETIMEDOUT; /* chan_set_timeout */
			log_err("%s: read failed: %s", c->name,
				strerror(-err));
			return err;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int fd_flush(struct chan *c, bool sync)
{
	struct chan_fd *f = (struct chan_fd *)c;

	if (sync && f->regular && fsync(f->fd) < 0) {
		int err = -errno;

		log_err("%s: fsync failed: %s", c->name, strerror(errno));
		return err;
	}
	return 0;
}

static int fd_close(struct chan *c)
{
	struct chan_fd *f = (struct chan_fd *)c;
	int err = 0;

	if (f->own && close(f->fd) < 0) {
		err = -errno;
		log_err("%s: close failed: %s", c->name, strerror(errno));
	}
	free(f);
	return err;
}

/* SO_RCVTIMEO and SO_SNDTIMEO on a socket; 0 for a non-socket. */
int chan_sock_timeout(int fd, unsigned ms)
{
	struct timeval tv = { .tv_sec = ms / 1000,
			      .tv_usec = (suseconds_t)(ms % 1000) * 1000 };

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return errno == ENOTSOCK ? 0 : -errno;
	return 0;
}

int chan_fd_readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int rc = poll(&p, 1, ms);

	if (rc < 0)
		return errno == EINTR ? 0 : -errno;
	return rc > 0;
}

static int fd_readable(struct chan *c, int ms)
{
	struct chan_fd *f = (struct chan_fd *)c;

	return f->regular ? 0 : chan_fd_readable(f->fd, ms);
}

static int fd_set_timeout(struct chan *c, unsigned ms)
{
	struct chan_fd *f = (struct chan_fd *)c;

	return f->regular ? 0 : chan_sock_timeout(f->fd, ms);
}

static void fd_shutdown(struct chan *c)
{
	shutdown(((struct chan_fd *)c)->fd, SHUT_RDWR); /* ENOTSOCK: fine */
}

static const struct chan_ops fd_ops = {
	.shutdown = fd_shutdown,
	.kind = "fd",
	.writev = fd_writev,
	.read = fd_read,
	.flush = fd_flush,
	.set_timeout = fd_set_timeout,
	.readable = fd_readable,
	.close = fd_close,
};

/* Build an fd channel named `name` (taken over, even on failure). */
static int fd_chan_new(struct chan **out, int fd, bool own, char *name)
{
	struct chan_fd *f;
	struct stat st;

	if (!name)
		return -ENOMEM;
	if (fstat(fd, &st) < 0) {
		int err = -errno;

		log_err("%s: fstat failed: %s", name, strerror(errno));
		free(name);
		return err;
	}
	f = calloc(1, sizeof(*f));
	if (!f) {
		free(name);
		return -ENOMEM;
	}
	f->c.ops = &fd_ops;
	f->c.name = name;
	f->fd = fd;
	f->own = own;
	f->regular = S_ISREG(st.st_mode);
	*out = &f->c;
	return 0;
}

int chan_open_file(struct chan **out, const char *path, int flags)
{
	char *name;
	int fd, err;

	if (flags != O_RDONLY && flags != (O_WRONLY | O_CREAT | O_TRUNC)) {
		log_err("chan_open_file %s: unsupported flags %#x", path,
			flags);
		return -EINVAL;
	}
	fd = open(path, flags | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		log_err("cannot open %s for %s: %s", path,
			flags == O_RDONLY ? "reading" : "writing",
			strerror(errno));
		return err;
	}
	if (asprintf(&name, "file %s", path) < 0)
		name = NULL;
	err = fd_chan_new(out, fd, true, name);
	if (err)
		close(fd);
	return err;
}

int chan_from_fd(struct chan **out, int fd, bool own)
{
	char *name;
	int err;

	if (asprintf(&name, "fd %d", fd) < 0)
		name = NULL;
	err = fd_chan_new(out, fd, own, name);
	if (err && own)
		close(fd);
	return err;
}

/* ---- memory backend ---- */

struct chan_mem {
	struct chan c; /* first */
	unsigned char *buf;
	size_t len; /* bytes in buf */
	size_t cap; /* bytes allocated */
	size_t max; /* len never exceeds this */
	size_t pos; /* next byte to read */
};

static int mem_reserve(struct chan_mem *m, size_t need)
{
	size_t cap = m->cap ? m->cap : 4096;
	unsigned char *buf;

	if (need <= m->cap)
		return 0;
	while (cap < need)
		cap = cap > m->max / 2 ? m->max : cap * 2;
	buf = realloc(m->buf, cap);
	if (!buf) {
		log_err("%s: cannot grow buffer to %zu bytes", m->c.name, cap);
		return -ENOMEM;
	}
	m->buf = buf;
	m->cap = cap;
	return 0;
}

static int mem_writev(struct chan *c, const struct iovec *iov, int n)
{
	struct chan_mem *m = (struct chan_mem *)c;
	size_t total = iov_total(iov, n);
	int err;

	if (total > m->max - m->len) {
		log_err("%s: write of %zu bytes exceeds the %zu-byte limit "
			"(%zu used)",
			c->name, total, m->max, m->len);
		return -ENOSPC;
	}
	err = mem_reserve(m, m->len + total);
	if (err)
		return err;
	for (int i = 0; i < n; i++) {
		if (!iov[i].iov_len)
			continue;
		memcpy(m->buf + m->len, iov[i].iov_base, iov[i].iov_len);
		m->len += iov[i].iov_len;
	}
	return 0;
}

static ssize_t mem_read(struct chan *c, void *buf, size_t len)
{
	struct chan_mem *m = (struct chan_mem *)c;
	size_t n = m->len - m->pos < len ? m->len - m->pos : len;

	if (n)
		memcpy(buf, m->buf + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

static int mem_close(struct chan *c)
{
	struct chan_mem *m = (struct chan_mem *)c;

	free(m->buf);
	free(m);
	return 0;
}

static const struct chan_ops mem_ops = {
	.kind = "mem",
	.writev = mem_writev,
	.read = mem_read,
	.close = mem_close,
};

int chan_open_mem(struct chan **out, const void *data, size_t len, size_t max)
{
	struct chan_mem *m;

	if (len > max) {
		log_err("chan_open_mem: %zu initial bytes exceed the limit %zu",
			len, max);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->c.ops = &mem_ops;
	m->c.name = strdup("mem");
	m->max = max;
	if (!m->c.name || mem_reserve(m, len)) {
		free(m->c.name);
		free(m->buf);
		free(m);
		return -ENOMEM;
	}
	if (len)
		memcpy(m->buf, data, len);
	m->len = len;
	*out = &m->c;
	return 0;
}

const void *chan_mem_data(const struct chan *c, size_t *len)
{
	const struct chan_mem *m = (const struct chan_mem *)c;

	if (c->ops != &mem_ops) {
		*len = 0;
		return NULL;
	}
	*len = m->len;
	return m->buf;
}

/* ---- generic layer ---- */

int chan_writev(struct chan *c, const struct iovec *iov, int n)
{
	int err;

	if (c->err)
		return c->err;
	if (n < 0 || n > CHAN_IOV_MAX) {
		log_err("%s: chan_writev with %d iovecs (max %d)", c->name, n,
			CHAN_IOV_MAX);
		return -EINVAL;
	}
	err = c->ops->writev(c, iov, n);
	if (err) {
		c->err = err;
		return err;
	}
	c->bytes_out += iov_total(iov, n);
	return 0;
}

int chan_write(struct chan *c, const void *buf, size_t len)
{
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

	return chan_writev(c, &iov, 1);
}

ssize_t chan_read_upto(struct chan *c, void *buf, size_t len)
{
	ssize_t r;

	if (c->err)
		return c->err;
	r = c->ops->read(c, buf, len);
	if (r < 0) {
		c->err = (int)r;
		return r;
	}
	c->bytes_in += (uint64_t)r;
	return r;
}

int chan_read(struct chan *c, void *buf, size_t len)
{
	ssize_t r = chan_read_upto(c, buf, len);

	if (r < 0)
		return (int)r;
	if ((size_t)r < len) {
		log_err("%s: stream ends at offset %llu: needed %zu more "
			"bytes, "
			"got %zd",
			c->name, (unsigned long long)c->bytes_in, len, r);
		c->err = -EPIPE;
		return -EPIPE;
	}
	return 0;
}

int chan_readable(struct chan *c, int ms)
{
	if (c->err)
		return c->err;
	return c->ops->readable ? c->ops->readable(c, ms) : 0;
}

int chan_set_timeout(struct chan *c, unsigned ms)
{
	int err;

	if (c->err)
		return c->err;
	if (!c->ops->set_timeout)
		return 0;
	err = c->ops->set_timeout(c, ms);
	if (err)
		log_err("%s: cannot set a %u ms timeout: %s", c->name, ms,
			strerror(-err));
	return err;
}

int chan_flush(struct chan *c, bool sync)
{
	int err;

	if (c->err)
		return c->err;
	if (!c->ops->flush)
		return 0;
	err = c->ops->flush(c, sync);
	if (err)
		c->err = err;
	return err;
}

void chan_shutdown(struct chan *c)
{
	if (c && c->ops->shutdown)
		c->ops->shutdown(c);
}

int chan_close(struct chan *c)
{
	char *name;
	int err, rc;

	if (!c)
		return 0;
	name = c->name;
	err = c->err;
	rc = c->ops->close(c);
	free(name);
	return err ? err : rc;
}
