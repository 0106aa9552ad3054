// SPDX-License-Identifier: MIT
/*
 * kvm_hc.c - hypercalls (docs/guest-abi.md).
 *
 * Every guest-supplied address and length is checked for range and
 * overflow before it is used; a bad call is answered with an error code,
 * never with a crash of the VMM.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

uint64_t kvm_host_ns(int clock_id)
{
	struct timespec ts;

	clock_gettime(clock_id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t kvm_clock_mono(struct hv_domain *d)
{
	return (uint64_t)((int64_t)kvm_host_ns(CLOCK_MONOTONIC) -
			  d->clock.offset_ns);
}

void *kvm_guest_ptr(struct hv_domain *d, uint64_t gpa, uint64_t len)
{
	if (gpa < FT_GPA_STACK_LO || gpa > d->mem_size ||
	    len > d->mem_size - gpa)
		return NULL;
	return d->mem + gpa;
}

static int64_t hc_console(struct hv_domain *d, struct ft_hc_console *a)
{
	const uint8_t *buf;
	uint64_t off = 0;
	ssize_t n;

	buf = kvm_guest_ptr(d, a->buf, a->len);
	if (!buf)
		return -FT_EFAULT;
	if (a->len > FT_CONSOLE_MAX)
		return -FT_E2BIG;
	if (d->cfg.console_fd < 0 || !a->len)
		return (int64_t)a->len;
	/* All or nothing: a partial write is reported as an I/O error. */
	while (off < a->len) {
		n = write(d->cfg.console_fd, buf + off, a->len - off);
		if (n <= 0)
			return -FT_EIO;
		off += (uint64_t)n;
	}
	return (int64_t)a->len;
}

static int64_t hc_clock_wall(struct hv_domain *d, struct ft_hc_clock *a)
{
	uint64_t now = kvm_host_ns(CLOCK_REALTIME);

	if (now < d->clock.last_wall)
		now = d->clock.last_wall;
	d->clock.last_wall = now;
	a->ns = now;
	return 0;
}

/* Sleep until the deadline or until woken (device input, an unpause
 * after a device save, the domain's end).  An early return with ready == 0
 * is allowed by the ABI: that is the result a checkpoint taken while we
 * sleep records (kvm_vcpu_block_begin).  *stop: the vCPU must stop. */
static int64_t hc_poll(struct hv_domain *d, struct ft_hc_poll *a, bool *stop)
{
	uint64_t now = kvm_clock_mono(d);
	struct pollfd pfd[2] = { { .fd = d->wake_fd, .events = POLLIN },
				 { .fd = kvm_net_fd(d), .events = POLLIN } };
	nfds_t nfds = pfd[1].fd >= 0 ? 2 : 1;
	struct timespec ts;
	uint64_t left, junk;
	int n;

	a->ready = atomic_exchange(&d->net.moved, false) ? FT_POLL_MOVED : 0;
	if (kvm_net_pending(d))
		a->ready |= FT_POLL_NET;
	if (a->ready)
		return 0;
	left = a->deadline_ns > now ? a->deadline_ns - now : 0;
	if (left > 3600ULL * 1000000000ULL)
		left = 3600ULL * 1000000000ULL;
	ts.tv_sec = (time_t)(left / 1000000000ULL);
	ts.tv_nsec = (long)(left % 1000000000ULL);
	if (left) {
		a->ret = 0;
		kvm_dirty_mark(d, (uint64_t)((uint8_t *)a - d->mem),
			       sizeof(*a));
		if (!kvm_vcpu_block_begin(d)) {
			*stop = true;
			return 0;
		}
		n = ppoll(pfd, nfds, &ts, NULL);
		kvm_vcpu_block_end(d);
	} else {
		n = ppoll(pfd, nfds, &ts, NULL);
	}
	if (n <= 0)
		return 0;
	if ((pfd[0].revents & POLLIN) &&
	    read(d->wake_fd, &junk, sizeof(junk)) < 0 && errno != EAGAIN)
		return -FT_EIO;
	if (nfds == 2 && (pfd[1].revents & POLLIN))
		a->ready |= FT_POLL_NET;
	if (atomic_exchange(&d->net.moved, false))
		a->ready |= FT_POLL_MOVED;
	return 0;
}

static const uint32_t hc_size[FT_HC_NR] = {
	[FT_HC_CONSOLE_WRITE] = sizeof(struct ft_hc_console),
	[FT_HC_CLOCK_MONO] = sizeof(struct ft_hc_clock),
	[FT_HC_CLOCK_WALL] = sizeof(struct ft_hc_clock),
	[FT_HC_POLL] = sizeof(struct ft_hc_poll),
	[FT_HC_EXIT] = sizeof(struct ft_hc_exit),
	[FT_HC_NET_INFO] = sizeof(struct ft_hc_net_info),
	[FT_HC_NET_SEND] = sizeof(struct ft_hc_net_batch),
	[FT_HC_NET_RECV] = sizeof(struct ft_hc_net_batch),
	[FT_HC_BLOCK_INFO] = sizeof(struct ft_hc_block_info),
	[FT_HC_BLOCK_READ] = sizeof(struct ft_hc_block_io),
	[FT_HC_BLOCK_WRITE] = sizeof(struct ft_hc_block_io),
	[FT_HC_BLOCK_FLUSH] = sizeof(struct ft_hc_block_flush),
};

/* Report an error in the guest's %rax (the block itself is unusable). */
static bool fail_rax(struct hv_domain *d, int code)
{
	if (kvm_cpu_set_rax(d, (uint64_t)(int64_t)-code) < 0) {
		kvm_set_state(d, HV_STATE_CRASHED, 0,
			      "cannot return a hypercall error: %s",
			      strerror(errno));
		return false;
	}
	return true;
}

bool kvm_hc_io(struct hv_domain *d)
{
	struct kvm_run *run = d->run;
	unsigned nr = run->io.port - FT_HC_PORT_BASE;
	uint32_t gpa;
	int64_t *ret;
	void *blk;

	if (run->io.port < FT_HC_PORT_BASE || nr >= FT_HC_NR) {
		/* Not ours: reads see all-ones, writes vanish, as on a PC. */
		if (run->io.direction == KVM_EXIT_IO_IN)
			memset((uint8_t *)run + run->io.data_offset, 0xff,
			       (size_t)run->io.size * run->io.count);
		return true;
	}
	atomic_fetch_add(&d->hypercalls, 1);
	if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 ||
	    run->io.count != 1) {
		if (run->io.direction == KVM_EXIT_IO_IN) {
			memset((uint8_t *)run + run->io.data_offset, 0xff,
			       (size_t)run->io.size * run->io.count);
			return true;
		}
		return fail_rax(d, FT_EINVAL);
	}
	memcpy(&gpa, (uint8_t *)run + run->io.data_offset, sizeof(gpa));
	if (!hc_size[nr])
		return fail_rax(d, FT_ENOSYS);
	if (gpa & 7)
		return fail_rax(d, FT_EINVAL);
	blk = kvm_guest_ptr(d, gpa, hc_size[nr]);
	if (!blk || (uint64_t)gpa + hc_size[nr] > FT_GPA_ARG_LIMIT)
		return fail_rax(d, FT_EFAULT);
	/* Every block ends with its int64_t ret. */
	ret = (int64_t *)((uint8_t *)blk + hc_size[nr] - sizeof(int64_t));

	switch (nr) {
	case FT_HC_CONSOLE_WRITE:
		*ret = hc_console(d, blk);
		break;
	case FT_HC_CLOCK_MONO:
		((struct ft_hc_clock *)blk)->ns = kvm_clock_mono(d);
		*ret = 0;
		break;
	case FT_HC_CLOCK_WALL:
		*ret = hc_clock_wall(d, blk);
		break;
	case FT_HC_POLL: {
		bool stop = false;

		*ret = hc_poll(d, blk, &stop);
		if (stop)
			return false;
		break;
	}
	case FT_HC_NET_INFO:
		*ret = kvm_net_info(d, blk);
		break;
	case FT_HC_NET_SEND:
		*ret = kvm_net_send(d, blk);
		break;
	case FT_HC_NET_RECV:
		*ret = kvm_net_recv(d, blk);
		break;
	case FT_HC_BLOCK_INFO:
		*ret = kvm_blk_info(d, blk);
		break;
	case FT_HC_BLOCK_READ:
		*ret = kvm_blk_io(d, blk, false);
		break;
	case FT_HC_BLOCK_WRITE:
		*ret = kvm_blk_io(d, blk, true);
		break;
	case FT_HC_BLOCK_FLUSH:
		*ret = kvm_blk_flush(d, blk);
		break;
	case FT_HC_EXIT:
		kvm_set_state(d, HV_STATE_EXITED,
			      ((struct ft_hc_exit *)blk)->status,
			      "guest exited with status %lld",
			      (long long)((struct ft_hc_exit *)blk)->status);
		return false;
	}
	/* The results we wrote into the block are invisible to KVM's log. */
	kvm_dirty_mark(d, gpa, hc_size[nr]);
	return true;
}
