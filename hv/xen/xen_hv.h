/* SPDX-License-Identifier: MIT */
/*
 * xen_hv.h - the Xen backend: struct hv_ops on an existing Xen HVM (or PVH)
 * domain, from dom0, through libxenctrl and libxenforeignmemory.
 *
 * This header depends on nothing from Xen, so a program can include it
 * without the Xen development headers; only the .c files of hv/xen need
 * them.
 *
 * Xen domains are built by the toolstack (xl / libxl), not by us.  So in
 * this backend:
 *
 *  - create() ATTACHES to the running or paused domain whose id is in
 *    struct xen_cfg.  It checks that the domain's shape (see info()) equals
 *    the `info` the caller passes, or fails with -EINVAL naming both.  It
 *    does not zero guest RAM nor reset vCPUs: the domain keeps whatever the
 *    toolstack or the guest put there (see README for what that means for
 *    a restore target).  As hv_ops.create promises a paused domain, attach
 *    pauses it once (pause count 1); unpause() lets it run.
 *
 *  - destroy() DETACHES.  It never kills the domain and never changes
 *    whether it runs: if this handle holds it paused, it stays paused (the
 *    pause lives in Xen, not in this process; `xl unpause` or `xl destroy`
 *    ends it).  That is what the source of a finished migration needs: its
 *    copy must not run again.  If dirty logging is on, destroy() turns it
 *    off; frames still mapped are unmapped.
 *
 * What each operation maps to is described at its definition in
 * hv/xen/xen_dom.c, xen_mem.c and xen_ctx.c; README lists what is verified
 * and what is not carried.
 */
#ifndef XEN_HV_H
#define XEN_HV_H

#include <stdint.h>

#include "hv.h"

/*
 * The backend.  Its operations keep the hv.h contract with these
 * differences, each one also logged when it matters:
 *
 *  info      the shape at attach time: mem_size = the domain's maximum
 *            memory (max_pages * 4096), nr_vcpus = highest vCPU id + 1.
 *            Xen HVM guest-physical memory is NOT dense from 0: the VGA
 *            hole (frames 0xa0-0xbf of a guest with a device model), the
 *            unpopulated tail up to the maximum, the MMIO hole below 4 GiB
 *            and RAM relocated above 4 GiB.  map() fails on frames with no
 *            RAM behind them (see map).
 *  map       frames are mapped in one foreign mapping per call; every frame
 *            Xen refuses is logged, nothing stays mapped, and the call fails
 *            with the negated errno Xen gave for the first refused frame
 *            (-EINVAL for a frame >= mem_size / 4096, checked first).
 *  unmap     must get exactly the (ptrs, n) one map() returned; anything
 *            else is logged and nothing is unmapped.
 *  vcpu_save / vcpu_load / dev_save / dev_load
 *            need the domain paused through this handle (else -EBUSY).
 *            vcpu_save of an offline vCPU fails with -ENODATA: Xen keeps no
 *            CPU record for it and struct hv_vcpu_state cannot say
 *            "offline".  vcpu_load of an offline vCPU brings it online.
 *            Loads go through Xen's HVM context load, which applies
 *            records in order (Xen 4.19 added a checking pass for some
 *            record types only), so a record Xen rejects may leave the
 *            records before it applied and vCPUs offline.  Our own checks
 *            run first and change nothing.
 *  status    exit_status is Xen's SHUTDOWN_* code; exits and hypercalls
 *            are 0 (Xen does not count them for us).
 *  event_fd  an eventfd signalled by a watcher thread that polls the
 *            domain every 100 ms (XEN_STATUS_POLL_MS) and writes when the
 *            domain shuts down, crashes or disappears.
 */
extern const struct hv_ops xen_hv_ops;

/* Backend configuration passed as hv_ops.create's `cfg` (required). */
struct xen_cfg {
	uint32_t domid; /* the domain to attach to: 1 .. 0x7fef */
};

/*
 * The one device record this backend saves and loads: the domain's whole
 * HVM context as XEN_DOMCTL_gethvmcontext returns it (Xen's own format:
 * hvm_save_descriptor + body records, HEADER first, END last; it holds
 * every vCPU's CPU, XSAVE, LAPIC, MTRR and MSR records and the platform
 * devices Xen emulates: PIC, IOAPIC, PIT, RTC, HPET, PM timer, IRQ
 * routing, viridian).  Not in hv.h's enum hv_dev_type: hv.h belongs to
 * the engine; numbers from 16 up are backend-specific.
 *
 * dev_save emits it as {type HV_DEV_XEN_HVM_CONTEXT, instance 0, version
 * XEN_HVM_CONTEXT_VERSION}; a context larger than HV_DEV_BLOB_MAX (many
 * vCPUs with large XSAVE areas) fails with -E2BIG and a message.  dev_load
 * checks the framing (header magic and version, every descriptor inside
 * the blob, per-vCPU instances < nr_vcpus, END last) before Xen sees it.
 */
#define HV_DEV_XEN_HVM_CONTEXT 16u
#define XEN_HVM_CONTEXT_VERSION 1u /* blob = Xen HVM_FILE_VERSION 1 data */

/* How often the watcher thread polls the domain's state. */
#define XEN_STATUS_POLL_MS 100

#endif /* XEN_HV_H */
