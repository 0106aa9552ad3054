// SPDX-License-Identifier: MIT
/*
 * test_channel.c - the channel layer: file, fd and memory backends, exact
 * and short reads, gather writes, sticky errors, counters.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel.h"
#include "log.h"

static void test_mem(void **state)
{
	struct iovec iov[3] = {{"ab", 2}, {NULL, 0}, {"cdef", 4}};
	struct chan *c;
	char buf[16];
	const char *d;
	size_t n;

	assert_int_equal(chan_open_mem(&c, "xy", 2, 10), 0);
	assert_int_equal(chan_writev(c, iov, 3), 0);
	assert_int_equal(c->bytes_out, 6);
	d = chan_mem_data(c, &n);
	assert_int_equal(n, 8);
	assert_memory_equal(d, "xyabcdef", 8);

	assert_int_equal(chan_read(c, buf, 3), 0);
	assert_memory_equal(buf, "xya", 3);
	assert_int_equal(chan_read_upto(c, buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "bcdef", 5);
	assert_int_equal(chan_read_upto(c, buf, sizeof(buf)), 0);
	assert_int_equal(c->err, 0); /* the end is not an error here */
	assert_int_equal(c->bytes_in, 8);

	/* Over the limit: -ENOSPC, and it sticks. */
	assert_int_equal(chan_write(c, "123", 3), -ENOSPC);
	assert_int_equal(chan_write(c, "1", 1), -ENOSPC);
	assert_int_equal(chan_read_upto(c, buf, 1), -ENOSPC);
	assert_int_equal(chan_flush(c, true), -ENOSPC);
	assert_int_equal(chan_close(c), -ENOSPC);

	assert_int_equal(chan_open_mem(&c, "abc", 4, 3), -EINVAL);
	assert_int_equal(chan_close(NULL), 0);
}

static void test_short_read(void **state)
{
	struct chan *c;
	char buf[8];

	assert_int_equal(chan_open_mem(&c, "abc", 3, 3), 0);
	assert_int_equal(chan_read(c, buf, 8), -EPIPE);
	assert_memory_equal(buf, "abc", 3);
	assert_int_equal(c->err, -EPIPE);
	assert_int_equal(chan_read(c, buf, 0), -EPIPE);
	assert_int_equal(chan_close(c), -EPIPE);
}

static void test_mem_grows(void **state)
{
	size_t big = 3u << 20, n;
	unsigned char *p = malloc(big);
	const unsigned char *d;
	struct chan *c;

	assert_non_null(p);
	for (size_t i = 0; i < big; i++)
		p[i] = (unsigned char)(i * 7);
	assert_int_equal(chan_open_mem(&c, NULL, 0, big), 0);
	for (size_t off = 0; off < big; off += 100000)
		assert_int_equal(
			chan_write(c, p + off,
				   big - off < 100000 ? big - off : 100000),
			0);
	d = chan_mem_data(c, &n);
	assert_int_equal(n, big);
	assert_memory_equal(d, p, big);
	assert_int_equal(chan_close(c), 0);
	free(p);
}

static void test_file(void **state)
{
	char path[] = "/tmp/test_channel.XXXXXX";
	struct iovec iov[CHAN_IOV_MAX + 1];
	unsigned char *data = malloc(1u << 20), *back = malloc(1u << 20);
	struct chan *c;
	struct stat st;
	size_t n;
	int fd = mkstemp(path);

	assert_true(fd >= 0 && data && back);
	close(fd);
	unlink(path); /* let chan_open_file create it */
	for (size_t i = 0; i < 1u << 20; i++)
		data[i] = (unsigned char)(i ^ (i >> 8));
	/* 64 iovecs of 16 KiB each, one write. */
	for (int i = 0; i <= CHAN_IOV_MAX; i++)
		iov[i] = (struct iovec){data + (size_t)i * 16384, 16384};

	assert_int_equal(chan_open_file(&c, path, O_WRONLY | O_CREAT | O_TRUNC),
			 0);
	assert_int_equal(chan_writev(c, iov, CHAN_IOV_MAX + 1), -EINVAL);
	assert_int_equal(c->err, 0); /* a caller bug does not break c */
	assert_int_equal(chan_writev(c, iov, CHAN_IOV_MAX), 0);
	assert_int_equal(chan_flush(c, true), 0);
	assert_null(chan_mem_data(c, &n));
	assert_int_equal(n, 0);
	assert_int_equal(chan_close(c), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 1u << 20);
	assert_int_equal(st.st_mode & 0777, 0600);

	assert_int_equal(chan_open_file(&c, path, O_RDONLY), 0);
	assert_int_equal(chan_read(c, back, 1u << 20), 0);
	assert_memory_equal(back, data, 1u << 20);
	assert_int_equal(chan_read_upto(c, back, 1), 0);
	assert_int_equal(chan_read(c, back, 1), -EPIPE);
	assert_int_equal(chan_close(c), -EPIPE);

	/* Writing to a read-only file fails, and stays failed. */
	assert_int_equal(chan_open_file(&c, path, O_RDONLY), 0);
	assert_int_equal(chan_write(c, data, 1), -EBADF);
	assert_int_equal(chan_read(c, back, 1), -EBADF);
	assert_int_equal(chan_close(c), -EBADF);

	unlink(path);
	assert_int_equal(chan_open_file(&c, path, O_RDONLY), -ENOENT);
	assert_int_equal(chan_open_file(&c, path, O_RDWR), -EINVAL);
	free(data);
	free(back);
}

static void test_pipe(void **state)
{
	struct chan *w, *r;
	char buf[4];
	int p[2];

	assert_int_equal(pipe(p), 0);
	assert_int_equal(chan_from_fd(&w, p[1], true), 0);
	assert_int_equal(chan_from_fd(&r, p[0], false), 0);
	assert_int_equal(chan_write(w, "ping", 4), 0);
	assert_int_equal(chan_flush(w, true), 0); /* no fsync on a pipe */
	assert_int_equal(chan_close(w), 0);
	assert_int_equal(chan_read(r, buf, 4), 0);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(chan_read_upto(r, buf, 4), 0); /* writer closed */
	assert_int_equal(chan_close(r), 0);
	assert_int_equal(close(p[0]), 0); /* not owned: still open */

	assert_int_equal(chan_from_fd(&r, 1000, true), -EBADF);
}

static int quiet_setup(void **state)
{
	*state = fopen("/dev/null", "w");
	log_set_file(*state);
	return *state ? 0 : -1;
}

static int quiet_teardown(void **state)
{
	log_set_file(NULL);
	return fclose(*state);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mem),
		cmocka_unit_test(test_short_read),
		cmocka_unit_test(test_mem_grows),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_pipe),
	};

	return cmocka_run_group_tests(tests, quiet_setup, quiet_teardown);
}
