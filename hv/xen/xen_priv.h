/* SPDX-License-Identifier: MIT */
/*
 * xen_priv.h - what the files of hv/xen share: the domain handle and the
 * functions one file provides to another.  Needs the Xen headers.
 */
#ifndef XEN_PRIV_H
#define XEN_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <xenctrl.h>
#include <xenforeignmemory.h>

/* Xen public headers: only after xenctrl.h, which sets them up. */
#include <xen/hvm/hvm_info_table.h> /* HVM_MAX_VCPUS */
#include <xen/hvm/save.h>

#include "xen_hv.h"

#define XEN_PAGE_SIZE 4096u

/* One live map() batch: `n` frames mapped contiguously at `base`. */
struct xen_map {
	struct xen_map *next;
	void *base;
	unsigned n;
};

struct hv_domain {
	/* Set at attach, read-only afterwards. */
	uint32_t domid;
	xc_interface *xch;
	xenforeignmemory_handle *fmem;
	uint64_t mem_size; /* max_pages * XEN_PAGE_SIZE */
	uint64_t nr_pfns;  /* mem_size / XEN_PAGE_SIZE */
	uint32_t nr_vcpus; /* max_vcpu_id + 1 */

	/* Engine-serialised (hv.h: one call at a time per domain). */
	unsigned pause_count; /* ours; we hold one Xen pause while > 0 */
	bool dirty_on;
	xc_hypercall_buffer_t dirty_hbuf; /* log-dirty bitmap, Xen-visible */
	int dirty_hbuf_pages;
	uint8_t *ctx; /* cached HVM context, valid while we pause it */
	uint32_t ctx_len;
	bool ctx_valid;

	/* Live map() batches, under map_lock. */
	pthread_mutex_t map_lock;
	struct xen_map *maps;

	/* Run state, under lock; shared with the watcher thread. */
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC; wakes the watcher to quit */
	enum hv_run_state state;
	int64_t exit_status;
	char reason[512];
	bool terminal; /* EXITED or CRASHED: sticky, the watcher stops */
	bool quit;
	bool watcher_started;
	pthread_t watcher;
	int event_fd;
};

/* xen_dom.c */
extern struct xentoollog_logger xen_logger; /* libxen* messages -> log.h */

/* xen_mem.c */
int xen_dirty_set(struct hv_domain *d, bool on);
int xen_dirty_fetch(struct hv_domain *d, uint64_t *bitmap, uint64_t nr_pfns);
int xen_map(struct hv_domain *d, const uint64_t *pfns, unsigned n, void **ptrs);
void xen_unmap(struct hv_domain *d, void **ptrs, unsigned n);
/* Detach-time cleanup: unmap leftover batches, turn dirty logging off. */
void xen_mem_fini(struct hv_domain *d);

/* xen_ctx.c */
int xen_vcpu_save(struct hv_domain *d, unsigned id, struct hv_vcpu_state *st);
int xen_vcpu_load(struct hv_domain *d, unsigned id,
		  const struct hv_vcpu_state *st);
int xen_dev_save(struct hv_domain *d, hv_dev_cb cb, void *ctx);
int xen_dev_load(struct hv_domain *d, const struct hv_dev_rec *rec);
/* Forget the cached HVM context (the domain may change from now on). */
void xen_ctx_invalidate(struct hv_domain *d);

#endif /* XEN_PRIV_H */
