/* SPDX-License-Identifier: MIT */
/*
 * benchvm.h - helpers shared by the bench programs that run the bench
 * guest (guest/benchguest) on the built-in micro-VMM: boot it with its
 * console in a memfd, wait for a console line or for the exit, stop it.
 *
 * Header-only (each bench/NAME.c is its own program).  Errors are logged and
 * returned as -errno; benchmarks exit on them.
 */
#ifndef BENCH_BENCHVM_H
#define BENCH_BENCHVM_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvm/kvm.h"
#include "log.h"

#define BENCH_GUEST_DEFAULT "build/guest/benchguest.elf"
#define BVM_CONSOLE_MAX (64 * 1024)

static inline uint64_t bench_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A running bench guest.  `con` is the memfd holding its console. */
struct bvm {
	struct hv_domain *d;
	int con;
	char out[BVM_CONSOLE_MAX]; /* console text, NUL-terminated */
};

/* Create a `mem`-byte domain with `opts` (NULL: defaults), boot `image`
 * with `cmdline` and let it run.  On success the caller calls bvm_stop. */
static inline int bvm_start(struct bvm *vm, const char *image, uint64_t mem,
			    const char *cmdline,
			    const struct kvm_create_opts *opts)
{
	struct hv_dom_info info = { .mem_size = mem, .nr_vcpus = 1,
				    .page_size = HV_PAGE_SIZE };
	struct kvm_cfg cfg = { 0 };
	int err;

	vm->d = NULL;
	vm->out[0] = '\0';
	vm->con = memfd_create("bench-console", MFD_CLOEXEC);
	if (vm->con < 0) {
		err = -errno;
		log_err("memfd_create: %s", strerror(errno));
		return err;
	}
	cfg.console_fd = vm->con;
	err = kvm_create_opts(&info, &cfg, opts, &vm->d);
	if (!err)
		err = kvm_boot(vm->d, image, cmdline);
	if (!err)
		err = kvm_hv_ops.unpause(vm->d);
	if (err) {
		if (vm->d)
			kvm_hv_ops.destroy(vm->d);
		vm->d = NULL;
		close(vm->con);
		log_err("cannot start %s \"%s\": %s", image, cmdline,
			strerror(-err));
	}
	return err;
}

static inline void bvm_stop(struct bvm *vm)
{
	if (vm->d)
		kvm_hv_ops.destroy(vm->d);
	vm->d = NULL;
	close(vm->con);
}

/* Refresh vm->out from the console memfd. */
static inline void bvm_read_console(struct bvm *vm)
{
	ssize_t n = pread(vm->con, vm->out, sizeof(vm->out) - 1, 0);

	vm->out[n > 0 ? n : 0] = '\0';
}

/*
 * Wait up to `timeout_s` for a console line that starts with `prefix`;
 * return a pointer to it inside vm->out (valid until the next read), or
 * NULL with the reason logged (timeout, guest exited or crashed).
 */
static inline const char *bvm_wait_line(struct bvm *vm, const char *prefix,
					double timeout_s)
{
	uint64_t end = bench_ns() + (uint64_t)(timeout_s * 1e9);
	struct hv_status st;
	size_t plen = strlen(prefix);

	for (;;) {
		const char *p;

		bvm_read_console(vm);
		for (p = vm->out; p && *p;) {
			if (!strncmp(p, prefix, plen))
				return p;
			p = strchr(p, '\n');
			p = p ? p + 1 : NULL;
		}
		kvm_hv_ops.status(vm->d, &st);
		if (st.state == HV_STATE_EXITED ||
		    st.state == HV_STATE_CRASHED) {
			log_err("guest stopped before printing \"%s\": %s; "
				"console:\n%s",
				prefix, st.reason, vm->out);
			return NULL;
		}
		if (bench_ns() > end) {
			log_err("no \"%s\" from the guest in %.0f s; "
				"console:\n%s",
				prefix, timeout_s, vm->out);
			return NULL;
		}
		usleep(1000);
	}
}

/* Wait up to `timeout_s` for the guest to exit with status 0. */
static inline int bvm_wait_exit(struct bvm *vm, double timeout_s)
{
	uint64_t end = bench_ns() + (uint64_t)(timeout_s * 1e9);
	struct hv_status st;

	for (;;) {
		kvm_hv_ops.status(vm->d, &st);
		if (st.state == HV_STATE_EXITED && st.exit_status == 0)
			break;
		if (st.state == HV_STATE_EXITED ||
		    st.state == HV_STATE_CRASHED) {
			bvm_read_console(vm);
			log_err("guest failed: %s; console:\n%s", st.reason,
				vm->out);
			return -EIO;
		}
		if (bench_ns() > end) {
			log_err("guest still running after %.0f s", timeout_s);
			return -ETIMEDOUT;
		}
		usleep(1000);
	}
	bvm_read_console(vm);
	return 0;
}

/* The value of "key=" in `line` (up to the line's end), or -1. */
static inline long long bvm_field(const char *line, const char *key)
{
	size_t klen = strlen(key);
	const char *p = line;

	while ((p = strstr(p, key))) {
		const char *eol = strchr(line, '\n');

		if (eol && p > eol)
			break;
		if ((p == line || p[-1] == ' ') && p[klen] == '=')
			return strtoll(p + klen + 1, NULL, 0);
		p += klen;
	}
	return -1;
}

/* The bench guest image: $BENCH_GUEST or the default path. */
static inline const char *bench_guest(void)
{
	const char *g = getenv("BENCH_GUEST");

	return g && *g ? g : BENCH_GUEST_DEFAULT;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Sort v[0..n), n > 0, and give its median (the lower one for even n),
 * minimum and maximum. */
static inline void bench_stats(double *v, unsigned n, double *med,
			       double *min, double *max)
{
	qsort(v, n, sizeof(*v), bench_cmp_double);
	*med = v[(n - 1) / 2];
	*min = v[0];
	*max = v[n - 1];
}

#endif /* BENCH_BENCHVM_H */
