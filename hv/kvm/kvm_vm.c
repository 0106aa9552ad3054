// SPDX-License-Identifier: MIT
/*
 * kvm_vm.c - domain lifecycle, the vCPU thread, pause/unpause, dirty
 * logging, frame mapping and device state for the built-in micro-VMM.
 *
 * Pausing: pause() raises pause_count, wakes a blocking poll hypercall and
 * kicks the vCPU thread with SIGUSR1, whose handler sets immediate_exit so
 * that KVM_RUN returns at once (even if the signal lands just before
 * KVM_RUN is entered).  The vCPU thread then completes any pending port
 * I/O with one more immediate-exit KVM_RUN, so the saved state is always
 * consistent (rip after the `out`), and parks until unpause() (spinning
 * for the first millisecond: park_wait).  Hypercalls (and so the output
 * hooks they call) run only between KVM_RUN and the park check, so while
 * paused no hook call is in progress.
 *
 * A vCPU thread asleep in a poll hypercall (nothing ready, waiting for
 * input or a deadline) counts as parked: before it sleeps it writes the
 * poll's "nothing ready" result, which the ABI allows at any time, and
 * completes the port I/O (kvm_vcpu_block_begin), so the guest's state is
 * final and a pause returns at once, without waking it.  Waking it cost
 * the pause a thread wake-up: on a busy host that is where the
 * checkpoint pauses of milliseconds came from (bench_ckpt --kvstore).  If
 * it wakes while paused it waits for the unpause before it touches guest
 * memory again; then it may rewrite the result (the guest has not run).
 * A protected disk write or flush parks the same way during its host I/O
 * (kvm_blk.c, io_park).
 *
 * Dirty logging lives in kvm_dirty.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

#define KICK_SIGNAL SIGUSR1
#define PAUSE_SPIN_NS 200000ULL /* kvm_pause: spin this long, then sleep */
#define PARK_SPIN_NS 1000000ULL /* park_wait: the same, for the unpause */

static __thread struct kvm_run *this_run;

static void kick_handler(int sig)
{
	(void)sig;
	if (this_run)
		this_run->immediate_exit = 1;
}

void kvm_set_state(struct hv_domain *d, enum hv_run_state st, int64_t status,
		   const char *fmt, ...)
{
	uint64_t one = 1;
	va_list ap;

	pthread_mutex_lock(&d->lock);
	d->state = st;
	d->exit_status = status;
	va_start(ap, fmt);
	vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
	va_end(ap);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	if (write(d->event_fd, &one, sizeof(one)) < 0)
		log_warn("event notification lost: %s", strerror(errno));
}

int kvm_probe(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int v;

	if (fd < 0) {
		log_err("/dev/kvm: %s", strerror(errno));
		return -errno;
	}
	v = ioctl(fd, KVM_GET_API_VERSION, 0);
	close(fd);
	if (v != KVM_API_VERSION) {
		log_err("/dev/kvm: API version %d, need %d", v,
			KVM_API_VERSION);
		return -ENOTSUP;
	}
	return 0;
}

/* Returns false when the vCPU must stop for good. */
static bool handle_exit(struct hv_domain *d)
{
	struct kvm_run *run = d->run;

	atomic_fetch_add(&d->exits, 1);
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		d->io_pending = true;
		return kvm_hc_io(d);
	case KVM_EXIT_HLT:
		kvm_cpu_crash_report(d, "guest crashed");
		return false;
	case KVM_EXIT_SHUTDOWN:
		kvm_cpu_crash_report(d, "guest crashed: triple fault");
		return false;
	case KVM_EXIT_MMIO:
		kvm_cpu_crash_report(d, "guest crashed: access outside RAM");
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		kvm_cpu_crash_report(d, "vCPU entry failed");
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		kvm_cpu_crash_report(d, "KVM internal error");
		return false;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_DIRTY_RING_FULL:
		return kvm_dirty_ring_full(d);
	default: {
		char what[64];

		snprintf(what, sizeof(what), "unexpected KVM exit %u",
			 run->exit_reason);
		kvm_cpu_crash_report(d, what);
		return false;
	}
	}
}

/* Finish a pending port I/O without running guest code. */
static int complete_io(struct hv_domain *d)
{
	if (!d->io_pending)
		return 0;
	d->run->immediate_exit = 1;
	if (ioctl(d->vcpu_fd, KVM_RUN, 0) < 0 && errno != EINTR) {
		log_err("completing port I/O: %s", strerror(errno));
		return -errno;
	}
	d->io_pending = false;
	return 0;
}

/*
 * Throttling (hv_ops throttle): while throttle_pct is non-zero the vCPU
 * thread kicks itself every HV_THROTTLE_PERIOD_MS with a timer, and after
 * each (100 - pct)% of a period in guest mode it sleeps pct% of one,
 * waking early for a pause or quit.  Per-thread state.
 */
struct throttle {
	timer_t timer;
	bool have_timer;
	unsigned armed;	  /* pct the timer is armed for (0: disarmed) */
	uint64_t next_ns; /* when the next sleep is due */
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void throttle_arm(struct throttle *t, unsigned pct)
{
	struct itimerspec its = { 0 };

	if (!t->have_timer) {
		struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID,
					.sigev_signo = KICK_SIGNAL };

		sev._sigev_un._tid = gettid();
		if (timer_create(CLOCK_MONOTONIC, &sev, &t->timer) < 0) {
			log_warn("throttle timer: %s", strerror(errno));
			t->armed = pct;
			return;
		}
		t->have_timer = true;
	}
	if (pct) {
		its.it_interval.tv_nsec = HV_THROTTLE_PERIOD_MS * 1000000L;
		its.it_value = its.it_interval;
	}
	if (timer_settime(t->timer, 0, &its, NULL) < 0)
		log_warn("throttle timer: %s", strerror(errno));
	t->armed = pct;
	t->next_ns = mono_ns();
}

/* Apply the throttle before entering the guest.  Called unlocked. */
static void throttle_step(struct hv_domain *d, struct throttle *t)
{
	unsigned pct = atomic_load(&d->throttle_pct);
	uint64_t period = HV_THROTTLE_PERIOD_MS * 1000000ULL, now;
	struct timespec dl;

	if (pct != t->armed)
		throttle_arm(t, pct);
	if (!pct)
		return;
	now = mono_ns();
	if (now < t->next_ns)
		return;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_nsec += (long)(period * pct / 100);
	dl.tv_sec += dl.tv_nsec / 1000000000L;
	dl.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&d->lock);
	while (!d->pause_count && !d->quit &&
	       pthread_cond_timedwait(&d->cond, &d->lock, &dl) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&d->lock);
	t->next_ns = mono_ns() + period * (100 - pct) / 100;
}

static int kvm_throttle(struct hv_domain *d, unsigned pct)
{
	if (pct > 99)
		return -EINVAL;
	atomic_store(&d->throttle_pct, pct);
	/* Let the vCPU thread see it now, not at its next exit. */
	pthread_kill(d->thread, KICK_SIGNAL);
	return 0;
}

/* One step of a bounded spin.  Now and then it yields: the thread we
 * wait for may be runnable on this very CPU (two CPUs, other load). */
static void spin_relax(void)
{
	static __thread unsigned n;

	if (++n % 64)
		__builtin_ia32_pause();
	else
		sched_yield();
}

/*
 * Parked, d->lock held: wait for the unpause (or quit).  A checkpoint's
 * pause lasts a few hundred microseconds: spin through that much on this
 * CPU, as KVM's halt-polling does, so that the guest resumes the moment
 * the count drops, with no thread wake-up, and the unpausing thread is
 * not preempted by the thread it would have woken.  Longer pauses sleep.
 */
static void park_wait(struct hv_domain *d)
{
	if (d->pause_count && !d->quit) {
		uint64_t end = mono_ns() + PARK_SPIN_NS;

		pthread_mutex_unlock(&d->lock);
		while (__atomic_load_n(&d->pause_count, __ATOMIC_ACQUIRE) &&
		       !__atomic_load_n(&d->quit, __ATOMIC_ACQUIRE) &&
		       mono_ns() < end)
			spin_relax();
		pthread_mutex_lock(&d->lock);
	}
	while (d->pause_count && !d->quit)
		pthread_cond_wait(&d->cond, &d->lock);
}

bool kvm_vcpu_block_begin(struct hv_domain *d)
{
	if (complete_io(d) < 0) {
		kvm_set_state(d, HV_STATE_CRASHED, 0,
			      "cannot complete port I/O");
		return false;
	}
	pthread_mutex_lock(&d->lock);
	__atomic_store_n(&d->parked, true, __ATOMIC_RELEASE);
	d->blocked = true;
	if (d->pause_count && d->state == HV_STATE_RUNNING)
		d->state = HV_STATE_PAUSED;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return true;
}

void kvm_vcpu_block_end(struct hv_domain *d)
{
	pthread_mutex_lock(&d->lock);
	d->blocked = false;
	while (d->pause_count && !d->quit)
		pthread_cond_wait(&d->cond, &d->lock);
	__atomic_store_n(&d->parked, false, __ATOMIC_RELEASE);
	if (!d->pause_count && d->state == HV_STATE_PAUSED)
		d->state = HV_STATE_RUNNING;
	pthread_mutex_unlock(&d->lock);
}

static void *vcpu_thread(void *arg)
{
	struct hv_domain *d = arg;
	struct throttle thr = { 0 };
	sigset_t set;

	this_run = d->run;
	sigemptyset(&set);
	sigaddset(&set, KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	for (;;) {
		throttle_step(d, &thr);
		pthread_mutex_lock(&d->lock);
		if (d->pause_count || d->quit) {
			pthread_mutex_unlock(&d->lock);
			if (complete_io(d) < 0) {
				kvm_set_state(d, HV_STATE_CRASHED, 0,
					      "cannot complete port I/O");
				break;
			}
			pthread_mutex_lock(&d->lock);
			__atomic_store_n(&d->parked, true, __ATOMIC_RELEASE);
			if (d->state == HV_STATE_RUNNING)
				d->state = HV_STATE_PAUSED;
			pthread_cond_broadcast(&d->cond);
			park_wait(d);
			__atomic_store_n(&d->parked, false, __ATOMIC_RELEASE);
			if (d->quit) {
				pthread_mutex_unlock(&d->lock);
				break;
			}
		}
		/* Also covers an unpause that came before the first park. */
		d->state = HV_STATE_RUNNING;
		pthread_mutex_unlock(&d->lock);

		d->run->immediate_exit = 0;
		/* A kick that raced with the check above set immediate_exit
		 * already or lands inside KVM_RUN: either way KVM_RUN returns
		 * EINTR and we loop back to the check. */
		if (ioctl(d->vcpu_fd, KVM_RUN, 0) < 0) {
			/* KVM completed any pending I/O before it looked at
			 * immediate_exit or the signal. */
			d->io_pending = false;
			if (errno == EINTR || errno == EAGAIN)
				continue;
			kvm_set_state(d, HV_STATE_CRASHED, 0, "KVM_RUN: %s",
				      strerror(errno));
			break;
		}
		d->io_pending = false;
		if (!handle_exit(d))
			break;
	}
	if (thr.have_timer)
		timer_delete(thr.timer);
	pthread_mutex_lock(&d->lock);
	__atomic_store_n(&d->parked, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

static void kvm_destroy(struct hv_domain *d)
{
	if (d->thread_started) {
		pthread_mutex_lock(&d->lock);
		__atomic_store_n(&d->quit, true, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&d->cond);
		pthread_mutex_unlock(&d->lock);
		pthread_kill(d->thread, KICK_SIGNAL);
		if (d->wake_fd >= 0 &&
		    write(d->wake_fd, &(uint64_t){ 1 }, 8) < 0)
			log_warn("wake: %s", strerror(errno));
		pthread_join(d->thread, NULL);
	}
	if (d->run)
		munmap(d->run, d->run_size);
	if (d->mem)
		munmap(d->mem, d->mem_size);
	if (d->vcpu_fd >= 0)
		close(d->vcpu_fd);
	if (d->vm_fd >= 0)
		close(d->vm_fd);
	if (d->kvm_fd >= 0)
		close(d->kvm_fd);
	if (d->wake_fd >= 0)
		close(d->wake_fd);
	if (d->event_fd >= 0)
		close(d->event_fd);
	kvm_dirty_fini(d);
	kvm_net_fini(d);
	kvm_blk_fini(d);
	pthread_mutex_destroy(&d->dirty_lock);
	pthread_mutex_destroy(&d->net.hook_lock);
	pthread_mutex_destroy(&d->blk.hook_lock);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	free(d);
}

int kvm_create_opts(const struct hv_dom_info *info, const struct kvm_cfg *kc,
		    const struct kvm_create_opts *opts, struct hv_domain **out)
{
	struct kvm_userspace_memory_region slot = { 0 };
	struct sigaction sa = { .sa_handler = kick_handler };
	struct hv_domain *d;
	sigset_t set, old;
	int err, mmap_size;

	if (info->page_size != HV_PAGE_SIZE || info->nr_vcpus != 1) {
		log_err("kvm: unsupported domain shape: page size %u, %u vCPUs "
			"(this VMM runs 4096-byte pages and one vCPU)",
			info->page_size, info->nr_vcpus);
		return -EINVAL;
	}
	if (info->mem_size < KVM_MEM_MIN || info->mem_size > KVM_MEM_MAX ||
	    info->mem_size % KVM_MEM_ALIGN) {
		log_err("kvm: guest RAM of %llu bytes: must be %llu MiB..%llu "
			"GiB in multiples of 2 MiB",
			(unsigned long long)info->mem_size, KVM_MEM_MIN >> 20,
			KVM_MEM_MAX >> 30);
		return -EINVAL;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->kvm_fd = d->vm_fd = d->vcpu_fd = d->wake_fd = d->event_fd = -1;
	d->cfg.console_fd = kc ? kc->console_fd : -1;
	d->net.fd = d->blk.fd = -1;
	d->mem_size = info->mem_size;
	d->pause_count = 1; /* created paused */
	d->state = HV_STATE_PAUSED;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	pthread_mutex_init(&d->dirty_lock, NULL);
	pthread_mutex_init(&d->net.hook_lock, NULL);
	pthread_mutex_init(&d->blk.hook_lock, NULL);
	/* Guest monotonic time starts at 0 now. */
	d->clock.offset_ns = (int64_t)kvm_host_ns(CLOCK_MONOTONIC);

	err = -errno;
	d->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (d->kvm_fd < 0) {
		err = -errno;
		log_err("/dev/kvm: %s", strerror(errno));
		goto fail;
	}
	d->vm_fd = ioctl(d->kvm_fd, KVM_CREATE_VM, 0);
	if (d->vm_fd < 0) {
		err = -errno;
		log_err("KVM_CREATE_VM: %s", strerror(errno));
		goto fail;
	}
	err = kvm_dirty_init_vm(d, opts);
	if (err)
		goto fail;
	d->mem = mmap(NULL, d->mem_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (d->mem == MAP_FAILED) {
		d->mem = NULL;
		err = -errno;
		log_err("guest RAM of %llu MiB: %s",
			(unsigned long long)(d->mem_size >> 20),
			strerror(errno));
		goto fail;
	}
	madvise(d->mem, d->mem_size, MADV_HUGEPAGE);
	slot.memory_size = d->mem_size;
	slot.userspace_addr = (uint64_t)(uintptr_t)d->mem;
	if (ioctl(d->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
		err = -errno;
		log_err("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
		goto fail;
	}
	d->vcpu_fd = ioctl(d->vm_fd, KVM_CREATE_VCPU, 0);
	mmap_size = ioctl(d->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (d->vcpu_fd < 0 || mmap_size < (int)sizeof(struct kvm_run)) {
		err = -errno;
		log_err("KVM_CREATE_VCPU: %s", strerror(errno));
		goto fail;
	}
	d->run_size = (size_t)mmap_size;
	d->run = mmap(NULL, d->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      d->vcpu_fd, 0);
	if (d->run == MAP_FAILED) {
		d->run = NULL;
		err = -errno;
		goto fail;
	}
	err = kvm_dirty_init_vcpu(d);
	if (err)
		goto fail;
	err = kvm_cpu_init(d);
	if (err)
		goto fail;
	if (kc) {
		err = kvm_net_init(d, &kc->net);
		if (!err)
			err = kvm_blk_init(d, kc->disk, kc->disk_size);
		if (err)
			goto fail;
	}
	d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->wake_fd < 0 || d->event_fd < 0) {
		err = -errno;
		goto fail;
	}

	/* The vCPU thread starts with the kick signal blocked and unblocks
	 * it itself once this_run is set. */
	sigaction(KICK_SIGNAL, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	err = -pthread_create(&d->thread, NULL, vcpu_thread, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		goto fail;
	d->thread_started = true;
	*out = d;
	return 0;
fail:
	kvm_destroy(d);
	return err ? err : -EIO;
}

static int kvm_create(const struct hv_dom_info *info, const void *cfg,
		      struct hv_domain **out)
{
	return kvm_create_opts(info, cfg, NULL, out);
}

static int kvm_info(struct hv_domain *d, struct hv_dom_info *info)
{
	*info = (struct hv_dom_info){ .mem_size = d->mem_size,
				      .nr_vcpus = 1,
				      .page_size = HV_PAGE_SIZE };
	return 0;
}

static int kvm_pause(struct hv_domain *d)
{
	pthread_mutex_lock(&d->lock);
	if (__atomic_fetch_add(&d->pause_count, 1, __ATOMIC_RELEASE) == 0) {
		if (d->blocked) {
			/* Asleep in a poll whose result is final: let it
			 * sleep (see the top of this file). */
			if (d->state == HV_STATE_RUNNING)
				d->state = HV_STATE_PAUSED;
		} else {
			pthread_kill(d->thread, KICK_SIGNAL);
			if (write(d->wake_fd, &(uint64_t){ 1 }, 8) < 0)
				log_warn("wake: %s", strerror(errno));
			/* and out of a throttle's sleep (throttle_step) */
			pthread_cond_broadcast(&d->cond);
		}
	}
	/* A kicked vCPU parks within tens of microseconds: wait for that on
	 * this CPU rather than sleep and be woken, which on a busy host can
	 * cost milliseconds of the pause.  Then sleep. */
	if (!d->parked) {
		uint64_t end = mono_ns() + PAUSE_SPIN_NS;

		pthread_mutex_unlock(&d->lock);
		while (!__atomic_load_n(&d->parked, __ATOMIC_ACQUIRE) &&
		       mono_ns() < end)
			spin_relax();
		pthread_mutex_lock(&d->lock);
	}
	while (!d->parked)
		pthread_cond_wait(&d->cond, &d->lock);
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int kvm_unpause(struct hv_domain *d)
{
	bool wake = false;
	int err = 0;

	pthread_mutex_lock(&d->lock);
	if (!d->pause_count) {
		log_err("unpause without pause");
		err = -EINVAL;
	} else if (__atomic_sub_fetch(&d->pause_count, 1, __ATOMIC_RELEASE) ==
		   0) {
		wake = true;
		/* Running from now on, also for status() before the vCPU
		 * thread has woken (on a busy host that takes a while). */
		if (d->state == HV_STATE_PAUSED)
			d->state = HV_STATE_RUNNING;
		/* A device save while paused may have taken frames off the
		 * TAP into the VMM's queue: a sleeping poll would not see
		 * them. */
		if (d->blocked && kvm_net_pending(d) &&
		    write(d->wake_fd, &(uint64_t){ 1 }, 8) < 0)
			log_warn("wake: %s", strerror(errno));
	}
	pthread_mutex_unlock(&d->lock);
	/* After the unlock: the woken vCPU thread need not wait for it. */
	if (wake)
		pthread_cond_broadcast(&d->cond);
	return err;
}

static int kvm_status(struct hv_domain *d, struct hv_status *st)
{
	pthread_mutex_lock(&d->lock);
	st->state = d->state;
	st->exit_status = d->exit_status;
	memcpy(st->reason, d->reason, sizeof(st->reason));
	pthread_mutex_unlock(&d->lock);
	st->exits = atomic_load(&d->exits);
	st->hypercalls = atomic_load(&d->hypercalls);
	return 0;
}

static int kvm_event_fd(struct hv_domain *d)
{
	return d->event_fd;
}

static int kvm_map(struct hv_domain *d, const uint64_t *pfns, unsigned n,
		   void **ptrs)
{
	uint64_t max = d->mem_size / HV_PAGE_SIZE;
	unsigned i;

	for (i = 0; i < n; i++) {
		if (pfns[i] >= max) {
			log_err("map: frame 0x%llx beyond guest RAM (%llu "
				"frames)", (unsigned long long)pfns[i],
				(unsigned long long)max);
			return -EINVAL;
		}
	}
	for (i = 0; i < n; i++)
		ptrs[i] = d->mem + pfns[i] * HV_PAGE_SIZE;
	return 0;
}

static void kvm_unmap(struct hv_domain *d, void **ptrs, unsigned n)
{
	/* Guest RAM is mapped for the domain's lifetime. */
}

static int kvm_vcpu_save(struct hv_domain *d, unsigned id,
			 struct hv_vcpu_state *st)
{
	if (id != 0)
		return -EINVAL;
	return kvm_cpu_save(d, st);
}

static int kvm_vcpu_load(struct hv_domain *d, unsigned id,
			 const struct hv_vcpu_state *st)
{
	if (id != 0) {
		log_err("vcpu load: vCPU %u does not exist", id);
		return -EINVAL;
	}
	return kvm_cpu_load(d, st);
}

/* Clock device blob, version 1: the guest's monotonic time and the host's
 * wall time when it was taken, and the last wall time the guest saw. */
struct clock_blob {
	uint64_t guest_mono_ns;
	uint64_t host_wall_ns;
	uint64_t last_wall_ns;
};

static int kvm_dev_save(struct hv_domain *d, hv_dev_cb cb, void *ctx)
{
	struct clock_blob cl = {
		.guest_mono_ns = kvm_clock_mono(d),
		.host_wall_ns = kvm_host_ns(CLOCK_REALTIME),
		.last_wall_ns = d->clock.last_wall,
	};
	struct hv_dev_rec rec = { .type = HV_DEV_CLOCK, .instance = 0,
				  .version = 1, .len = sizeof(cl),
				  .data = &cl };

	int err = cb(ctx, &rec);

	if (!err)
		err = kvm_net_save(d, cb, ctx);
	if (!err)
		err = kvm_blk_save(d, cb, ctx);
	return err;
}

/*
 * Restoring the clock: guest time resumes at the saved value plus the
 * wall-clock time that passed since the save (never less than the saved
 * value, so it never goes backwards even if the host clocks disagree).
 */
static int kvm_dev_load(struct hv_domain *d, const struct hv_dev_rec *rec)
{
	struct clock_blob cl;
	uint64_t now_wall, elapsed, mono;

	if (rec->instance == 0 && rec->type == HV_DEV_NET)
		return kvm_net_load(d, rec);
	if (rec->instance == 0 && rec->type == HV_DEV_BLOCK)
		return kvm_blk_load(d, rec);
	if (rec->type != HV_DEV_CLOCK || rec->instance != 0) {
		log_err("device load: no device of type %u instance %u on "
			"this VMM", rec->type, rec->instance);
		return -EINVAL;
	}
	if (rec->version != 1 || rec->len != sizeof(cl)) {
		log_err("device load: clock state version %u, %u bytes; "
			"expected version 1, %zu bytes",
			rec->version, rec->len, sizeof(cl));
		return -EINVAL;
	}
	memcpy(&cl, rec->data, sizeof(cl));
	now_wall = kvm_host_ns(CLOCK_REALTIME);
	elapsed = now_wall > cl.host_wall_ns ? now_wall - cl.host_wall_ns : 0;
	mono = cl.guest_mono_ns + elapsed;
	d->clock.offset_ns = (int64_t)kvm_host_ns(CLOCK_MONOTONIC) -
			     (int64_t)mono;
	d->clock.last_wall = cl.last_wall_ns;
	return 0;
}

int kvm_dump_ram(struct hv_domain *d, int fd)
{
	uint64_t off = 0;
	ssize_t n;

	while (off < d->mem_size) {
		size_t chunk = d->mem_size - off > (64 << 20)
				       ? (64 << 20)
				       : (size_t)(d->mem_size - off);

		n = write(fd, d->mem + off, chunk);
		if (n <= 0) {
			log_err("RAM dump: %s", n < 0 ? strerror(errno)
						      : "short write");
			return n < 0 ? -errno : -EIO;
		}
		off += (uint64_t)n;
	}
	return 0;
}

const struct hv_ops kvm_hv_ops = {
	.name = "kvm",
	.info = kvm_info,
	.create = kvm_create,
	.destroy = kvm_destroy,
	.pause = kvm_pause,
	.unpause = kvm_unpause,
	.dirty_log = kvm_dirty_set,
	.dirty_fetch = kvm_dirty_fetch,
	.map = kvm_map,
	.unmap = kvm_unmap,
	.vcpu_save = kvm_vcpu_save,
	.vcpu_load = kvm_vcpu_load,
	.dev_save = kvm_dev_save,
	.status = kvm_status,
	.event_fd = kvm_event_fd,
	.dev_load = kvm_dev_load,
	.throttle = kvm_throttle,
	.disk_info = kvm_disk_info,
	.disk_dirty_fetch = kvm_disk_dirty_fetch,
	.disk_read = kvm_disk_read,
	.disk_write = kvm_disk_write,
	.disk_writeback = kvm_disk_writeback,
	.net_tx_hook = kvm_net_tx_hook,
	.net_tx = kvm_net_tx,
	.disk_write_hook = kvm_disk_write_hook,
};
