// SPDX-License-Identifier: MIT
/*
 * xen_dom.c - attach/detach, shape, pause/unpause and run state of an
 * existing Xen domain; the operation table.
 *
 * Pausing: Xen keeps its own count of toolstack pauses per domain
 * (xc_domain_pause / xc_domain_unpause, shared with `xl pause`).  We take
 * exactly one of those while our own count is above zero, so nesting is
 * ours and an `xl pause` by an administrator is never undone by us.
 * xc_domain_pause returns once every vCPU is descheduled, which is what
 * hv_ops.pause promises.
 *
 * Run state: Xen tells a toolstack about shutdowns through xenstore's
 * @releaseDomain watch.  We keep it simpler and poll the domain's flags
 * every XEN_STATUS_POLL_MS in a watcher thread, and signal the event fd
 * when the domain shuts down, crashes or disappears.  status() polls too,
 * so it is never older than the call.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <xentoollog.h>

#include "log.h"
#include "xen_priv.h"

_Static_assert(HV_PAGE_SIZE == XEN_PAGE_SIZE, "page sizes differ");
_Static_assert(HV_DEV_XEN_HVM_CONTEXT > HV_DEV_BLOCK,
	       "backend device type inside hv.h's range");

/* Highest maximum memory we accept: 52-bit guest-physical addresses. */
#define XEN_MAX_PAGES (1ULL << (52 - 12))

/* libxenctrl and libxenforeignmemory report through this logger. */
static void xen_log_vmessage(struct xentoollog_logger *logger,
			     xentoollog_level level, int errnoval,
			     const char *context, const char *format,
			     va_list al) __attribute__((format(printf, 5, 0)));

static void xen_log_vmessage(struct xentoollog_logger *logger,
			     xentoollog_level level, int errnoval,
			     const char *context, const char *format,
			     va_list al)
{
	enum log_level lvl;
	char msg[512];

	if (level >= XTL_ERROR)
		lvl = LOG_ERR;
	else if (level == XTL_WARN)
		lvl = LOG_WARN;
	else if (level >= XTL_INFO)
		lvl = LOG_INFO;
	else
		lvl = LOG_DEBUG;
	if (lvl > log_get_level())
		return;
	vsnprintf(msg, sizeof(msg), format, al);
	if (errnoval >= 0)
		log_msg(lvl, "xen: %s: %s: %s", context ? context : "libxen",
			msg, strerror(errnoval));
	else
		log_msg(lvl, "xen: %s: %s", context ? context : "libxen", msg);
}

static void xen_log_destroy(struct xentoollog_logger *logger)
{
	/* Static: nothing to free. */
}

struct xentoollog_logger xen_logger = {
	.vmessage = xen_log_vmessage,
	.progress = NULL,
	.destroy = xen_log_destroy,
};

/* Fill *di for `domid`; -ESRCH if there is no such domain.  A failed
 * query is logged if `loud`. */
static int getinfo(xc_interface *xch, uint32_t domid, xc_domaininfo_t *di,
		   bool loud)
{
	int n = xc_domain_getinfolist(xch, domid, 1, di);

	if (n < 0) {
		int err = -errno;

		if (loud)
			log_err("xen: dom%u: XEN_DOMCTL_getdomaininfolist: %s",
				domid, strerror(errno));
		return err ? err : -EIO;
	}
	/* The list starts at the first domain >= domid. */
	if (n == 0 || di->domain != domid)
		return -ESRCH;
	return 0;
}

static const char *shutdown_name(unsigned code)
{
	switch (code) {
	case SHUTDOWN_poweroff:
		return "poweroff";
	case SHUTDOWN_reboot:
		return "reboot";
	case SHUTDOWN_suspend:
		return "suspend (a toolstack is saving or migrating it)";
	case SHUTDOWN_crash:
		return "crash";
	case SHUTDOWN_watchdog:
		return "watchdog";
	case SHUTDOWN_soft_reset:
		return "soft reset";
	default:
		return "unknown reason";
	}
}

/*
 * Read the domain's flags and update d's run state.  A shutdown, a dying
 * domain or a vanished one is terminal and sticky; the event fd is
 * written on the transition into it.  Returns 0 or the -errno of a failed
 * query (state unchanged; logged if `loud`).  Any thread.
 */
static int poll_state(struct hv_domain *d, bool loud)
{
	xc_domaininfo_t di;
	bool signal = false, done;
	int err;

	pthread_mutex_lock(&d->lock);
	done = d->terminal;
	pthread_mutex_unlock(&d->lock);
	if (done)
		return 0; /* final: nothing left to ask Xen */
	err = getinfo(d->xch, d->domid, &di, loud);
	pthread_mutex_lock(&d->lock);
	if (d->terminal) {
		err = 0; /* the other thread got there first */
		goto out;
	}
	if (err && err != -ESRCH)
		goto out;
	if (err == -ESRCH) {
		d->state = HV_STATE_CRASHED;
		snprintf(d->reason, sizeof(d->reason),
			 "dom%u no longer exists (destroyed by the toolstack "
			 "or an administrator)",
			 d->domid);
		d->terminal = signal = true;
		err = 0;
	} else if (di.flags & XEN_DOMINF_shutdown) {
		unsigned code = (di.flags >> XEN_DOMINF_shutdownshift) &
				XEN_DOMINF_shutdownmask;

		d->state = code == SHUTDOWN_crash || code == SHUTDOWN_watchdog
				   ? HV_STATE_CRASHED
				   : HV_STATE_EXITED;
		d->exit_status = code;
		snprintf(d->reason, sizeof(d->reason),
			 "dom%u shut down: %s (SHUTDOWN code %u)", d->domid,
			 shutdown_name(code), code);
		d->terminal = signal = true;
	} else if (di.flags & XEN_DOMINF_dying) {
		d->state = HV_STATE_CRASHED;
		snprintf(d->reason, sizeof(d->reason),
			 "dom%u is being destroyed (dying) without a guest "
			 "shutdown",
			 d->domid);
		d->terminal = signal = true;
	} else {
		d->state = di.flags & XEN_DOMINF_paused ? HV_STATE_PAUSED
							: HV_STATE_RUNNING;
	}
out:
	pthread_mutex_unlock(&d->lock);
	if (signal) {
		log_warn("xen: %s", d->reason);
		if (write(d->event_fd, &(uint64_t){1}, 8) < 0)
			log_warn("xen: dom%u: event notification lost: %s",
				 d->domid, strerror(errno));
	}
	return err;
}

static void *watcher_thread(void *arg)
{
	struct hv_domain *d = arg;
	struct timespec t;
	bool failing = false;

	pthread_mutex_lock(&d->lock);
	while (!d->quit) {
		if (!d->terminal) {
			pthread_mutex_unlock(&d->lock);
			/* Log the first failure of a run, not every 100 ms. */
			failing = poll_state(d, !failing) != 0;
			pthread_mutex_lock(&d->lock);
			if (d->quit)
				break;
		}
		if (d->terminal) {
			/* Nothing can change any more: sleep until quit. */
			pthread_cond_wait(&d->cond, &d->lock);
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		t.tv_nsec += XEN_STATUS_POLL_MS * 1000000L;
		if (t.tv_nsec >= 1000000000L) {
			t.tv_sec += t.tv_nsec / 1000000000L;
			t.tv_nsec %= 1000000000L;
		}
		pthread_cond_timedwait(&d->cond, &d->lock, &t);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/*
 * Detach (hv_ops.destroy): stop the watcher, unmap, turn dirty logging
 * off, close the handles.  The domain is neither killed nor unpaused; see
 * xen_hv.h.  Also used on a half-built handle by xen_create's error path,
 * after that has dropped its own pause.
 */
static void xen_destroy(struct hv_domain *d)
{
	if (d->watcher_started) {
		pthread_mutex_lock(&d->lock);
		d->quit = true;
		pthread_cond_broadcast(&d->cond);
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->watcher, NULL);
	}
	if (d->fmem && d->xch)
		xen_mem_fini(d);
	xen_ctx_invalidate(d);
	if (d->pause_count)
		log_warn("xen: dom%u detached while paused by us (%u pauses): "
			 "it stays paused; `xl unpause %u` resumes it, `xl "
			 "destroy %u` ends it",
			 d->domid, d->pause_count, d->domid, d->domid);
	if (d->fmem && xenforeignmemory_close(d->fmem) < 0)
		log_warn("xen: dom%u: closing libxenforeignmemory: %s",
			 d->domid, strerror(errno));
	if (d->xch && xc_interface_close(d->xch) < 0)
		log_warn("xen: dom%u: closing libxenctrl: %s", d->domid,
			 strerror(errno));
	if (d->event_fd >= 0)
		close(d->event_fd);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	pthread_mutex_destroy(&d->map_lock);
	free(d);
}

/* Check that `domid` can be attached to; fill d's shape from `di`. */
static int check_domain(struct hv_domain *d, const xc_domaininfo_t *di)
{
	if (!(di->flags & XEN_DOMINF_hvm_guest)) {
		log_err("xen: dom%u is a PV guest: this backend handles HVM "
			"and PVH guests (PV needs the page-table "
			"normalisation of Xen's xg_sr_save_x86_pv.c, which is "
			"not implemented)",
			d->domid);
		return -EOPNOTSUPP;
	}
	if (di->flags & (XEN_DOMINF_dying | XEN_DOMINF_shutdown)) {
		log_err("xen: dom%u is %s; attach needs a live domain",
			d->domid,
			di->flags & XEN_DOMINF_dying ? "dying" : "shut down");
		return -ESRCH;
	}
	if (di->max_vcpu_id == XEN_INVALID_MAX_VCPU_ID ||
	    di->max_vcpu_id >= HVM_MAX_VCPUS) {
		log_err("xen: dom%u: highest vCPU id %u: need 0..%u", d->domid,
			di->max_vcpu_id, HVM_MAX_VCPUS - 1);
		return -EOPNOTSUPP;
	}
	if (!di->max_pages || di->max_pages > XEN_MAX_PAGES) {
		log_err("xen: dom%u: maximum memory of %llu pages: need "
			"1..%llu",
			d->domid, (unsigned long long)di->max_pages,
			XEN_MAX_PAGES);
		return -EOPNOTSUPP;
	}
	d->nr_pfns = di->max_pages;
	d->mem_size = di->max_pages * XEN_PAGE_SIZE;
	d->nr_vcpus = di->max_vcpu_id + 1;
	return 0;
}

/* Log, once at attach, how much of the guest-physical space lies beyond
 * what info() reports (and so beyond map() and the dirty bitmap). */
static void report_layout(struct hv_domain *d)
{
	xen_pfn_t max_gpfn = 0;

	if (xc_domain_maximum_gpfn(d->xch, d->domid, &max_gpfn) < 0) {
		log_warn("xen: dom%u: XENMEM_maximum_gpfn: %s", d->domid,
			 strerror(errno));
		return;
	}
	if ((uint64_t)max_gpfn >= d->nr_pfns)
		log_warn("xen: dom%u: guest frames exist up to 0x%llx, beyond "
			 "the %llu frames of its maximum memory; frames from "
			 "0x%llx up (RAM above 4 GiB, video RAM, Xen's special "
			 "pages) are outside map() and dirty logging",
			 d->domid, (unsigned long long)max_gpfn,
			 (unsigned long long)d->nr_pfns,
			 (unsigned long long)d->nr_pfns);
}

/*
 * Attach (hv_ops.create): see xen_hv.h.  `cfg` is a struct xen_cfg.  On
 * success the domain is paused once by us and *out owns the handles and
 * the watcher thread.  On failure nothing is left behind and the domain's
 * run state is as it was.
 */
static int xen_create(const struct hv_dom_info *info, const void *cfg,
		      struct hv_domain **out)
{
	const struct xen_cfg *xc = cfg;
	pthread_condattr_t ca;
	xc_domaininfo_t di;
	struct hv_domain *d;
	int err;

	if (!xc) {
		log_err("xen: create needs a struct xen_cfg naming the domain");
		return -EINVAL;
	}
	if (xc->domid == 0 || xc->domid >= DOMID_FIRST_RESERVED) {
		log_err("xen: domain id %u: need 1..%u (dom0 runs this program "
			"and cannot be attached to)",
			xc->domid, DOMID_FIRST_RESERVED - 1);
		return -EINVAL;
	}
	if (info->page_size != XEN_PAGE_SIZE) {
		log_err("xen: page size %u: Xen x86 guests use %u",
			info->page_size, XEN_PAGE_SIZE);
		return -EINVAL;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->domid = xc->domid;
	d->event_fd = -1;
	d->state = HV_STATE_PAUSED;
	d->dirty_hbuf = (xc_hypercall_buffer_t){.hbuf = NULL,
						.param_shadow = NULL,
						.dir = 0,
						.sz = 0,
						.ubuf = (void *)-1};
	err = -pthread_condattr_init(&ca);
	if (err)
		goto out_free;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	err = -pthread_cond_init(&d->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (err)
		goto out_free;
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->map_lock, NULL);

	d->xch = xc_interface_open(&xen_logger, &xen_logger, 0);
	if (!d->xch) {
		err = errno ? -errno : -EIO;
		log_err("xen: cannot open libxenctrl (/dev/xen/privcmd): %s; "
			"this backend runs in a Xen dom0, as root",
			strerror(-err));
		goto out_destroy;
	}
	err = getinfo(d->xch, d->domid, &di, true);
	if (err == -ESRCH)
		log_err("xen: dom%u does not exist", d->domid);
	if (!err)
		err = check_domain(d, &di);
	if (err)
		goto out_destroy;
	if (info->mem_size != d->mem_size || info->nr_vcpus != d->nr_vcpus) {
		log_err("xen: dom%u has %llu bytes of maximum memory and %u "
			"vCPUs; the caller expects %llu bytes and %u vCPUs "
			"(create it with that shape: xl's maxmem and maxvcpus)",
			d->domid, (unsigned long long)d->mem_size, d->nr_vcpus,
			(unsigned long long)info->mem_size, info->nr_vcpus);
		err = -EINVAL;
		goto out_destroy;
	}
	d->fmem = xenforeignmemory_open(&xen_logger, 0);
	if (!d->fmem) {
		err = errno ? -errno : -EIO;
		log_err("xen: cannot open libxenforeignmemory: %s",
			strerror(-err));
		goto out_destroy;
	}
	d->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->event_fd < 0) {
		err = -errno;
		log_err("xen: eventfd: %s", strerror(errno));
		goto out_destroy;
	}
	if (xc_domain_pause(d->xch, d->domid) < 0) {
		err = errno ? -errno : -EIO;
		log_err("xen: dom%u: pause: %s", d->domid, strerror(-err));
		goto out_destroy;
	}
	d->pause_count = 1;
	err = -pthread_create(&d->watcher, NULL, watcher_thread, d);
	if (err) {
		log_err("xen: dom%u: watcher thread: %s", d->domid,
			strerror(-err));
		goto out_unpause;
	}
	d->watcher_started = true;
	report_layout(d);
	log_info("xen: attached to dom%u: %llu MiB maximum memory, %u vCPUs",
		 d->domid, (unsigned long long)(d->mem_size >> 20),
		 d->nr_vcpus);
	*out = d;
	return 0;

out_unpause:
	if (xc_domain_unpause(d->xch, d->domid) < 0)
		log_err("xen: dom%u: unpause after failed attach: %s; it "
			"stays paused",
			d->domid, strerror(errno));
	else
		d->pause_count = 0;
out_destroy:
	xen_destroy(d);
	return err;
out_free:
	free(d);
	return err;
}

static int xen_info(struct hv_domain *d, struct hv_dom_info *info)
{
	*info = (struct hv_dom_info){.mem_size = d->mem_size,
				     .nr_vcpus = d->nr_vcpus,
				     .page_size = XEN_PAGE_SIZE};
	return 0;
}

/* The first pause takes one Xen toolstack pause; later ones only count. */
static int xen_pause(struct hv_domain *d)
{
	if (d->pause_count == 0 && xc_domain_pause(d->xch, d->domid) < 0) {
		int err = errno ? -errno : -EIO;

		log_err("xen: dom%u: pause: %s", d->domid, strerror(-err));
		return err;
	}
	d->pause_count++;
	return 0;
}

/* The last unpause gives Xen's pause back; the domain runs if nobody
 * else (`xl pause`) holds one. */
static int xen_unpause(struct hv_domain *d)
{
	if (!d->pause_count) {
		log_err("xen: dom%u: unpause without pause", d->domid);
		return -EINVAL;
	}
	if (d->pause_count == 1) {
		xen_ctx_invalidate(d);
		if (xc_domain_unpause(d->xch, d->domid) < 0) {
			int err = errno ? -errno : -EIO;

			log_err("xen: dom%u: unpause: %s", d->domid,
				strerror(-err));
			return err;
		}
	}
	d->pause_count--;
	return 0;
}

static int xen_status(struct hv_domain *d, struct hv_status *st)
{
	int err = poll_state(d, true);

	pthread_mutex_lock(&d->lock);
	st->state = d->state;
	st->exit_status = d->exit_status;
	memcpy(st->reason, d->reason, sizeof(st->reason));
	pthread_mutex_unlock(&d->lock);
	st->exits = 0;
	st->hypercalls = 0;
	return err;
}

static int xen_event_fd(struct hv_domain *d)
{
	return d->event_fd;
}

const struct hv_ops xen_hv_ops = {
	.name = "xen",
	.info = xen_info,
	.create = xen_create,
	.destroy = xen_destroy,
	.pause = xen_pause,
	.unpause = xen_unpause,
	.dirty_log = xen_dirty_set,
	.dirty_fetch = xen_dirty_fetch,
	.map = xen_map,
	.unmap = xen_unmap,
	.vcpu_save = xen_vcpu_save,
	.vcpu_load = xen_vcpu_load,
	.dev_save = xen_dev_save,
	.status = xen_status,
	.event_fd = xen_event_fd,
	.dev_load = xen_dev_load,
};
