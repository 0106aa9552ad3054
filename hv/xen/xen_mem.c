// SPDX-License-Identifier: MIT
/*
 * xen_mem.c - guest memory of a Xen domain: log-dirty mode and foreign
 * mappings, as Xen's own save code (tools/libs/guest/xg_sr_save.c) does
 * them.
 *
 * Dirty logging: XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY / _OFF through
 * xc_shadow_control, and XEN_DOMCTL_SHADOW_OP_CLEAN through
 * xc_logdirty_control, which copies the log into a hypercall buffer and
 * clears it in one step.  QEMU may already have log-dirty mode on to track
 * video RAM; as xg_sr_save.c does, a refused enable is retried after
 * turning the mode off (QEMU turns its tracking back on by itself).
 *
 * Mapping: one xenforeignmemory_map of the whole batch, so frame i of a
 * call is at base + i * 4096; the batch is remembered so that unmap() can
 * check what it is given and destroy() can clean up.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "xen_priv.h"

_Static_assert(sizeof(unsigned long) == sizeof(uint64_t),
	       "Xen's bitmap words are our 64-bit words");

static int bitmap_pages(uint64_t nr_pfns)
{
	uint64_t bytes = (nr_pfns + 63) / 64 * 8;

	return (int)((bytes + XEN_PAGE_SIZE - 1) / XEN_PAGE_SIZE);
}

static void free_dirty_buffer(struct hv_domain *d)
{
	DECLARE_HYPERCALL_BUFFER_SHADOW(unsigned long, bitmap, &d->dirty_hbuf);

	xc_hypercall_buffer_free_pages(d->xch, bitmap, d->dirty_hbuf_pages);
	d->dirty_hbuf.hbuf = NULL;
	d->dirty_hbuf_pages = 0;
}

static int logdirty_op(struct hv_domain *d, unsigned op, const char *what)
{
	if (xc_shadow_control(d->xch, d->domid, op, NULL, 0) < 0) {
		int err = errno ? -errno : -EIO;

		log_err("xen: dom%u: %s: %s", d->domid, what, strerror(-err));
		return err;
	}
	return 0;
}

/*
 * hv_ops.dirty_log.  On: allocate the bitmap buffer for nr_pfns frames and
 * enter log-dirty mode (Xen starts with an empty log).  Off: leave it and
 * free the buffer.  Turning on what is on, or off what is off, does
 * nothing and succeeds.
 */
int xen_dirty_set(struct hv_domain *d, bool on)
{
	DECLARE_HYPERCALL_BUFFER_SHADOW(unsigned long, bitmap, &d->dirty_hbuf);
	int pages, err;

	if (on == d->dirty_on)
		return 0;
	if (!on) {
		err = logdirty_op(d, XEN_DOMCTL_SHADOW_OP_OFF,
				  "leaving log-dirty mode");
		if (err)
			return err;
		free_dirty_buffer(d);
		d->dirty_on = false;
		return 0;
	}

	pages = bitmap_pages(d->nr_pfns);
	bitmap = xc_hypercall_buffer_alloc_pages(d->xch, bitmap, pages);
	if (!bitmap) {
		log_err("xen: dom%u: dirty bitmap of %d pages: cannot allocate "
			"hypercall memory",
			d->domid, pages);
		return -ENOMEM;
	}
	d->dirty_hbuf_pages = pages;
	if (xc_shadow_control(d->xch, d->domid,
			      XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, NULL,
			      0) < 0) {
		int first = errno;

		log_info("xen: dom%u: log-dirty mode refused (%s), probably "
			 "on for QEMU's video RAM tracking: turning it off and "
			 "on",
			 d->domid, strerror(first));
		err = logdirty_op(d, XEN_DOMCTL_SHADOW_OP_OFF,
				  "leaving log-dirty mode");
		if (!err)
			err = logdirty_op(d,
					  XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
					  "entering log-dirty mode");
		if (err) {
			free_dirty_buffer(d);
			return err;
		}
	}
	d->dirty_on = true;
	return 0;
}

/*
 * hv_ops.dirty_fetch: XEN_DOMCTL_SHADOW_OP_CLEAN of the first nr_pfns
 * frames (at most the domain's maximum memory), ORed into `bitmap`.
 * Dirty frames beyond nr_pfns are cleared in Xen and lost to us.
 */
int xen_dirty_fetch(struct hv_domain *d, uint64_t *bitmap, uint64_t nr_pfns)
{
	xc_shadow_op_stats_t stats;
	const uint64_t *log;
	uint64_t i, words;
	long long got;

	if (!d->dirty_on) {
		log_err("xen: dom%u: dirty fetch with dirty logging off",
			d->domid);
		return -EINVAL;
	}
	if (nr_pfns > d->nr_pfns) {
		log_err("xen: dom%u: dirty fetch of %llu frames; the domain "
			"has %llu",
			d->domid, (unsigned long long)nr_pfns,
			(unsigned long long)d->nr_pfns);
		return -EINVAL;
	}
	if (!nr_pfns)
		return 0;
	got = xc_logdirty_control(d->xch, d->domid, XEN_DOMCTL_SHADOW_OP_CLEAN,
				  &d->dirty_hbuf, nr_pfns, 0, &stats);
	if (got < 0) {
		int err = errno ? -errno : -EIO;

		log_err("xen: dom%u: XEN_DOMCTL_SHADOW_OP_CLEAN: %s", d->domid,
			strerror(-err));
		return err;
	}
	if ((uint64_t)got != nr_pfns) {
		log_err("xen: dom%u: XEN_DOMCTL_SHADOW_OP_CLEAN returned %lld "
			"frames of the %llu asked for; the log is cleared, so "
			"dirty frames were lost",
			d->domid, got, (unsigned long long)nr_pfns);
		return -EIO;
	}
	log = d->dirty_hbuf.hbuf;
	words = nr_pfns / 64;
	for (i = 0; i < words; i++)
		bitmap[i] |= log[i];
	if (nr_pfns % 64)
		bitmap[words] |= log[words] & ((1ULL << (nr_pfns % 64)) - 1);
	return 0;
}

/* The errno in a per-frame error slot: Linux privcmd stores -errno. */
static int frame_errno(int e)
{
	return e < 0 ? -e : e;
}

/* Log every frame Xen refused, consecutive frames with the same error as
 * one range.  Returns the errno of the first refused frame (0: none). */
static int report_refused(struct hv_domain *d, const uint64_t *pfns,
			  const int *errs, unsigned n)
{
	unsigned i, j, bad = 0;
	int first = 0;

	for (i = 0; i < n; i = j) {
		int e = frame_errno(errs[i]);

		j = i + 1;
		if (!e)
			continue;
		while (j < n && frame_errno(errs[j]) == e &&
		       pfns[j] == pfns[j - 1] + 1)
			j++;
		if (j - i == 1)
			log_err("xen: dom%u: map: frame 0x%llx: %s", d->domid,
				(unsigned long long)pfns[i], strerror(e));
		else
			log_err("xen: dom%u: map: frames 0x%llx-0x%llx (%u): "
				"%s",
				d->domid, (unsigned long long)pfns[i],
				(unsigned long long)pfns[j - 1], j - i,
				strerror(e));
		if (!first)
			first = e;
		bad += j - i;
	}
	if (bad)
		log_err("xen: dom%u: map: %u of %u frames refused (no RAM "
			"there: a hole, or not populated); nothing mapped",
			d->domid, bad, n);
	return first;
}

/* hv_ops.map: see xen_hv.h. */
int xen_map(struct hv_domain *d, const uint64_t *pfns, unsigned n, void **ptrs)
{
	struct xen_map *m;
	xen_pfn_t *arr;
	unsigned i;
	void *base;
	int *errs, err = 0;

	if (!n)
		return 0;
	for (i = 0; i < n; i++) {
		if (pfns[i] >= d->nr_pfns) {
			log_err("xen: dom%u: map: frame 0x%llx beyond guest "
				"memory (%llu frames)",
				d->domid, (unsigned long long)pfns[i],
				(unsigned long long)d->nr_pfns);
			return -EINVAL;
		}
	}
	m = malloc(sizeof(*m));
	arr = malloc(n * sizeof(*arr));
	errs = malloc(n * sizeof(*errs));
	if (!m || !arr || !errs) {
		err = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < n; i++)
		arr[i] = (xen_pfn_t)pfns[i];
	base = xenforeignmemory_map(d->fmem, d->domid, PROT_READ | PROT_WRITE,
				    n, arr, errs);
	if (!base) {
		err = errno ? -errno : -EIO;
		log_err("xen: dom%u: map of %u frames from 0x%llx: %s",
			d->domid, n, (unsigned long long)pfns[0],
			strerror(-err));
		goto out_free;
	}
	err = -report_refused(d, pfns, errs, n);
	if (err) {
		if (xenforeignmemory_unmap(d->fmem, base, n) < 0)
			log_err("xen: dom%u: unmap: %s", d->domid,
				strerror(errno));
		goto out_free;
	}
	for (i = 0; i < n; i++)
		ptrs[i] = (char *)base + (size_t)i * XEN_PAGE_SIZE;
	m->base = base;
	m->n = n;
	pthread_mutex_lock(&d->map_lock);
	m->next = d->maps;
	d->maps = m;
	pthread_mutex_unlock(&d->map_lock);
	m = NULL;
out_free:
	free(errs);
	free(arr);
	free(m);
	return err;
}

/* hv_ops.unmap: see xen_hv.h. */
void xen_unmap(struct hv_domain *d, void **ptrs, unsigned n)
{
	struct xen_map **pp, *m = NULL;
	unsigned i;

	if (!n)
		return;
	pthread_mutex_lock(&d->map_lock);
	for (pp = &d->maps; *pp; pp = &(*pp)->next) {
		if ((*pp)->base == ptrs[0] && (*pp)->n == n) {
			m = *pp;
			break;
		}
	}
	for (i = 0; m && i < n; i++)
		if (ptrs[i] != (char *)m->base + (size_t)i * XEN_PAGE_SIZE)
			m = NULL;
	if (m)
		*pp = m->next;
	pthread_mutex_unlock(&d->map_lock);
	if (!m) {
		log_err("xen: dom%u: unmap of %u frames at %p: not what one "
			"map() returned; nothing unmapped",
			d->domid, n, ptrs[0]);
		return;
	}
	if (xenforeignmemory_unmap(d->fmem, m->base, m->n) < 0)
		log_err("xen: dom%u: unmap of %u frames: %s", d->domid, m->n,
			strerror(errno));
	free(m);
}

void xen_mem_fini(struct hv_domain *d)
{
	struct xen_map *m, *next;
	unsigned left = 0;

	for (m = d->maps; m; m = next) {
		next = m->next;
		left += m->n;
		xenforeignmemory_unmap(d->fmem, m->base, m->n);
		free(m);
	}
	d->maps = NULL;
	if (left)
		log_warn("xen: dom%u: %u frames were still mapped at detach",
			 d->domid, left);
	if (d->dirty_on && xen_dirty_set(d, false) < 0)
		log_warn("xen: dom%u: log-dirty mode stays on after detach",
			 d->domid);
	if (d->dirty_hbuf.hbuf)
		free_dirty_buffer(d);
}
