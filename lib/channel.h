/* SPDX-License-Identifier: MIT */
/*
 * channel.h - a byte stream with pluggable backends (after redis's rio).
 *
 * A struct chan moves bytes in order to or from somewhere: a file or file
 * descriptor, a memory buffer, and later TCP and TLS connections.  Each
 * backend supplies a struct chan_ops; callers use only the chan_* calls.
 *
 * Errors are sticky: the first failure is logged at its site, stored in
 * chan->err, and every later operation except chan_close() returns it
 * without touching the backend.  So a writer may issue a run of writes and
 * check once at the end, and a reader that hit the end of the stream can
 * not silently read on.
 *
 * A chan is not thread-safe: one thread at a time.
 */
#ifndef CHANNEL_H
#define CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct chan;

/* Largest iovec count chan_writev() accepts. */
#define CHAN_IOV_MAX 64

struct chan_ops {
	const char *kind; /* "fd", "mem", ... */
	/* Write every byte of iov[0..n) in order, blocking as needed.
	 * Return 0 or -errno (a partial write is an error). */
	int (*writev)(struct chan *c, const struct iovec *iov, int n);
	/* Read until `len` bytes or the end of the stream, blocking as
	 * needed.  Return the bytes read (less than `len` only at the end of
	 * the stream) or -errno. */
	ssize_t (*read)(struct chan *c, void *buf, size_t len);
	/* Push out buffered data; with `sync`, to stable storage where that
	 * means something.  Return 0 or -errno. */
	int (*flush)(struct chan *c, bool sync);
	/* Optional: bound every later blocking read and write to `ms`
	 * milliseconds (0: no bound); a read or write that waits longer
	 * fails with -ETIMEDOUT.  Return 0 or -errno. */
	int (*set_timeout)(struct chan *c, unsigned ms);
	/* Optional: 1 once a read would find data, 0 if none came within
	 * `ms` milliseconds (0: do not wait), or -errno. */
	int (*readable)(struct chan *c, int ms);
	/* Optional: from any thread, make every blocked and later read and
	 * write on `c` fail at once (sockets: shutdown(2)); the channel
	 * still has to be closed by its owner. */
	void (*shutdown)(struct chan *c);
	/* Release the backend's resources and free `c`.  Called once.
	 * Return 0 or -errno (e.g. a failed close(2) of a written file). */
	int (*close)(struct chan *c);
};

/*
 * Fields are read-only for callers; backends embed struct chan at the
 * start of their own state.
 */
struct chan {
	const struct chan_ops *ops;
	char *name;	    /* for messages: "file /path", "fd 3", "mem" */
	int err;	    /* sticky: 0 or the first -errno */
	uint64_t bytes_in;  /* bytes read so far */
	uint64_t bytes_out; /* bytes written so far */
};

/*
 * Open the file `path` as a channel.  `flags` is O_RDONLY, or
 * O_WRONLY | O_CREAT | O_TRUNC (new files get mode 0600: they hold guest
 * memory).  On success *out owns the file descriptor.
 * Return 0 or -errno (logged).
 */
int chan_open_file(struct chan **out, const char *path, int flags);

/*
 * Wrap the blocking file descriptor `fd` (file, pipe or socket).  With
 * `own`, chan_close() closes fd, also when this call fails; else the
 * caller keeps it.  A program that writes to a pipe or socket ignores
 * SIGPIPE, so that a vanished reader is an -EPIPE error, not a signal.
 * Return 0 or -errno.
 */
int chan_from_fd(struct chan **out, int fd, bool own);

/*
 * A channel over memory, for tests and fuzzing: its buffer starts as a
 * copy of data[0..len) (data may be NULL when len is 0); writes append,
 * up to `max` bytes in all (-ENOSPC beyond); reads consume from the
 * front, and the end of the written bytes is the end of the stream.
 * Return 0, -EINVAL (len > max) or -ENOMEM.
 */
int chan_open_mem(struct chan **out, const void *data, size_t len, size_t max);

/*
 * Everything ever put into the memory channel `c` (the initial data and
 * every write, consumed or not); *len receives its size.  Valid until the
 * next write or chan_close().  NULL (and *len 0) if `c` is not a memory
 * channel.
 */
const void *chan_mem_data(const struct chan *c, size_t *len);

/* Write buf[0..len) in full.  Return 0 or -errno. */
int chan_write(struct chan *c, const void *buf, size_t len);

/*
 * Write iov[0..n) in full, in order, with as few system calls as the
 * backend allows.  n <= CHAN_IOV_MAX.  Return 0 or -errno.
 */
int chan_writev(struct chan *c, const struct iovec *iov, int n);

/*
 * Read exactly `len` bytes into buf.  If the stream ends first, set the
 * sticky error -EPIPE, log how many bytes were missing and return -EPIPE;
 * what was read is in buf.  Return 0 or -errno.
 */
int chan_read(struct chan *c, void *buf, size_t len);

/*
 * Read up to `len` bytes: fewer only at the end of the stream, which is
 * not an error here.  Return the count read or -errno.
 */
ssize_t chan_read_upto(struct chan *c, void *buf, size_t len);

/*
 * Push out buffered data; with `sync`, also make it durable (fsync for a
 * regular file; a no-op for pipes, sockets and memory).
 * Return 0 or -errno.
 */
int chan_flush(struct chan *c, bool sync);

/*
 * Bound every later blocking read and write on `c` to `ms` milliseconds
 * of waiting (0: wait without limit, the default).  A read or write that
 * waits longer fails with the sticky error -ETIMEDOUT: a dead peer or a
 * cut link is then an error in bounded time instead of a hang (TCP alone
 * would retransmit for many minutes).  The bound is per system call, so a
 * slowly progressing transfer never times out.  Sockets (plain and TLS)
 * honour it; files and memory never block, and accept it as a no-op.
 * Return 0 or -errno.
 */
int chan_set_timeout(struct chan *c, unsigned ms);

/*
 * Would a read find data?  Wait up to `ms` milliseconds (0: just look).
 * For a writer that must notice an early answer from its peer (an error
 * report) while it is still sending, or wait for an answer without making
 * the silence an error.  Returns 1, 0 (nothing yet), or -errno; 0 for
 * channels that cannot tell (files, memory).  For TLS, 1 may mean part of
 * a record: the read that follows waits for the rest.
 */
int chan_readable(struct chan *c, int ms);

/* For socket backends: poll(2) `fd` for input up to `ms`: 1, 0 or
 * -errno. */
int chan_fd_readable(int fd, int ms);

/* For socket backends: set SO_RCVTIMEO and SO_SNDTIMEO on `fd` to `ms`
 * (0: none).  0 for a non-socket, else -errno. */
int chan_sock_timeout(int fd, unsigned ms);

/*
 * Close and free `c` (NULL is a no-op).  Return the sticky error if one
 * was set, else the backend's close result.  `c` is freed either way.
 */
int chan_close(struct chan *c);

/* The one call that may come from another thread than the channel's
 * user: make its blocked and later reads and writes fail promptly (a
 * socket is shut down both ways).  A no-op for backends that cannot. */
void chan_shutdown(struct chan *c);

#endif /* CHANNEL_H */
