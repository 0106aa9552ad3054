/* SPDX-License-Identifier: MIT */
/*
 * hv.h - the operations the engine uses on a domain (a VM).
 *
 * The engine (migrate/, checkpoint/, ...) sees a domain only through one
 * struct hv_ops and an opaque struct hv_domain.  It never names a backend:
 * backends (hv/kvm, hv/xen) export a `const struct hv_ops` and the program
 * that picks one (ftvm) passes it down.
 *
 * Conventions: actions return 0 or -errno and log the reason at the failure
 * site; predicates return bool.  Unless stated otherwise an operation may
 * be called from any one thread at a time (the engine serialises calls on
 * a domain), never concurrently on the same domain.
 */
#ifndef HV_H
#define HV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HV_PAGE_SHIFT 12
#define HV_PAGE_SIZE  (1UL << HV_PAGE_SHIFT)

struct hv_domain; /* backend-private */

/* The shape of a domain: enough to create an empty one like it. */
struct hv_dom_info {
	uint64_t mem_size;  /* bytes of guest RAM from GPA 0, page multiple */
	uint32_t nr_vcpus;
	uint32_t page_size; /* HV_PAGE_SIZE */
};

/* Architectural x86-64 vCPU state, backend-neutral. */
struct hv_seg {
	uint64_t base;
	uint32_t limit;
	uint16_t selector;
	uint8_t type, present, dpl, db, s, l, g, avl, unusable;
};

struct hv_dtable {
	uint64_t base;
	uint16_t limit;
};

#define HV_XSAVE_MAX 4096
struct hv_vcpu_state {
	uint64_t gpr[16]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (SDM order) */
	uint64_t rip, rflags;
	struct hv_seg cs, ds, es, fs, gs, ss, tr, ldt;
	struct hv_dtable gdt, idt;
	uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
	uint64_t xcr0;
	/* MSRs the backends preserve (0 if unsupported). */
	uint64_t star, lstar, cstar, sfmask, kernel_gs_base, tsc_aux;
	uint32_t xsave_len; /* bytes valid in xsave[] */
	uint8_t xsave[HV_XSAVE_MAX];
};

enum { HV_GPR_RAX, HV_GPR_RCX, HV_GPR_RDX, HV_GPR_RBX, HV_GPR_RSP,
       HV_GPR_RBP, HV_GPR_RSI, HV_GPR_RDI };

/* One device's saved state: an opaque, versioned blob owned by the
 * backend's device model.  `data` stays valid only during the callback
 * (save) or the call (load). */
struct hv_dev_rec {
	uint32_t type;     /* HV_DEV_* */
	uint32_t instance;
	uint32_t version;  /* of the blob's layout, per device type */
	uint32_t len;
	const void *data;
};

enum hv_dev_type {
	HV_DEV_CLOCK   = 1,
	HV_DEV_CONSOLE = 2,
	HV_DEV_NET     = 3,
	HV_DEV_BLOCK   = 4,
};

#define HV_DEV_BLOB_MAX (1U << 20) /* no device blob is larger */

typedef int (*hv_dev_cb)(void *ctx, const struct hv_dev_rec *rec);

enum hv_run_state {
	HV_STATE_PAUSED,  /* created or paused; vCPUs not in guest mode       */
	HV_STATE_RUNNING,
	HV_STATE_EXITED,  /* the guest asked to stop; status holds its code   */
	HV_STATE_CRASHED, /* CPU exception, triple fault or VMM internal error */
};

struct hv_status {
	enum hv_run_state state;
	int64_t exit_status;  /* HV_STATE_EXITED */
	char reason[512];     /* CRASHED: what happened, with the registers    */
	uint64_t exits;       /* VM exits since creation (statistics)          */
	uint64_t hypercalls;
};

/* Output hooks (see hv_ops.net_tx_hook / disk_write_hook). */
typedef int (*hv_net_tx_fn)(void *ctx, unsigned nic, const void *frame,
			    size_t len);
typedef int (*hv_disk_wr_fn)(void *ctx, unsigned disk, uint64_t off,
			     const void *data, size_t len);

struct hv_ops {
	const char *name;

	/* Fill `info` with the domain's shape. */
	int (*info)(struct hv_domain *d, struct hv_dom_info *info);

	/* Create an empty, paused domain shaped like `info` (RAM zero, vCPUs
	 * in reset state, devices from the backend config `cfg`, which the
	 * caller got from the backend).  On success *out owns everything. */
	int (*create)(const struct hv_dom_info *info, const void *cfg,
		      struct hv_domain **out);

	/* Stop the domain for good and free it.  Called once. */
	void (*destroy)(struct hv_domain *d);

	/* Pause: returns once every vCPU is out of guest mode and will not
	 * re-enter until unpause.  Nested: n pauses need n unpauses. */
	int (*pause)(struct hv_domain *d);
	int (*unpause)(struct hv_domain *d);

	/* Turn dirty-page logging on or off.  Turning it on marks nothing
	 * dirty; the caller sends everything once itself. */
	int (*dirty_log)(struct hv_domain *d, bool on);

	/* Fetch and clear the dirty set since the previous call (or since
	 * logging began): OR it into `bitmap`, one bit per page frame,
	 * `nr_pfns` bits (the caller sizes it from info.mem_size). */
	int (*dirty_fetch)(struct hv_domain *d, uint64_t *bitmap,
			   uint64_t nr_pfns);

	/* Map `n` guest frames `pfns[]`; ptrs[i] receives a pointer to frame
	 * i's page_size bytes, readable and writable until unmap().  Fails
	 * with -EINVAL naming the first frame out of range (nothing mapped). */
	int (*map)(struct hv_domain *d, const uint64_t *pfns, unsigned n,
		   void **ptrs);
	void (*unmap)(struct hv_domain *d, void **ptrs, unsigned n);

	/* Save / load one vCPU's state.  The domain must be paused. */
	int (*vcpu_save)(struct hv_domain *d, unsigned id,
			 struct hv_vcpu_state *st);
	int (*vcpu_load)(struct hv_domain *d, unsigned id,
			 const struct hv_vcpu_state *st);

	/* Save every device's state through `cb` (the domain paused); the
	 * first non-zero return from cb stops the walk and is returned. */
	int (*dev_save)(struct hv_domain *d, hv_dev_cb cb, void *ctx);

	/* Current run state.  Safe to call from any thread. */
	int (*status)(struct hv_domain *d, struct hv_status *st);

	/* A file descriptor that becomes readable when the run state changes
	 * on its own (guest exit or crash).  The caller reads 8 bytes from it
	 * (eventfd) and then calls status().  Owned by the domain. */
	int (*event_fd)(struct hv_domain *d);

	/* Load one device's state; rejects an unknown type, instance or
	 * version and a malformed blob with -EINVAL, changing nothing. */
	int (*dev_load)(struct hv_domain *d, const struct hv_dev_rec *rec);

	/* Throttle: keep the vCPUs out of guest mode `pct` percent of the
	 * time (0..99; 0 ends it), in slices of HV_THROTTLE_PERIOD_MS, so a
	 * guest that dirties memory faster than a migration link can send
	 * slows down (auto-converge).  Any thread. */
	int (*throttle)(struct hv_domain *d, unsigned pct);

	/*
	 * Disks (optional: NULL when the backend has none).  Disk `idx`
	 * (0..): disk_info gives its size in bytes (-ENOENT: no such disk).
	 * While dirty_log is on, guest writes are logged per HV_DISK_BLOCK;
	 * disk_dirty_fetch fetches and clears that set, ORing it into
	 * `bitmap` (`nr_blocks` bits, size rounded up to whole blocks).
	 * disk_read / disk_write move bytes between the image and a buffer,
	 * `off` and `len` multiples of 512 within the disk; disk_write is
	 * for building a domain (restore, migration) and is not logged.
	 * disk_writeback (optional) starts writing the image's data that
	 * sits in the host's page cache to storage and does not wait for
	 * it: a backup calls it after committing writes, so that the first
	 * flush after a failover finds little left to write.
	 * Any thread; reads may race with guest writes (those are logged).
	 */
	int (*disk_info)(struct hv_domain *d, unsigned idx, uint64_t *size);
	int (*disk_dirty_fetch)(struct hv_domain *d, unsigned idx,
				uint64_t *bitmap, uint64_t nr_blocks);
	int (*disk_read)(struct hv_domain *d, unsigned idx, uint64_t off,
			 void *buf, size_t len);
	int (*disk_write)(struct hv_domain *d, unsigned idx, uint64_t off,
			  const void *buf, size_t len);
	int (*disk_writeback)(struct hv_domain *d, unsigned idx);

	/*
	 * Output hooks (optional: NULL when the backend lacks them), for
	 * checkpointing: a protected guest's output must not leave the
	 * host before the epoch that produced it commits on the backup
	 * (netbuf/, diskrep/).
	 *
	 * net_tx_hook installs fn (NULL: removes it): while installed,
	 * every frame the guest transmits on NIC `nic` goes to fn instead
	 * of the NIC.  fn runs on a vCPU thread and returns 0 (taken: it
	 * copied what it keeps) or -EAGAIN (no room: this frame and the
	 * rest of the guest's batch are not sent and the guest is told to
	 * retry later, guest ABI FT_EAGAIN; nothing is dropped).  When
	 * net_tx_hook returns, the previous hook is not running and will
	 * not be called again.  While the domain is paused no hook call
	 * is in progress, so a pause is an exact boundary between frames.
	 *
	 * net_tx puts one frame on NIC `nic`'s host side (the TAP) now,
	 * bypassing the hook: 0, or -EAGAIN when the host queue is full
	 * (the frame is not sent; the caller keeps it), -errno otherwise.
	 * Any thread.
	 *
	 * disk_write_hook likewise: fn sees every guest write to disk
	 * `disk` (byte offset, data) before it reaches the image, on a
	 * vCPU thread; 0: the write goes on; -EAGAIN: it is not done and
	 * the guest retries later (FT_EAGAIN).  Same pause guarantee.
	 */
	int (*net_tx_hook)(struct hv_domain *d, hv_net_tx_fn fn, void *ctx);
	int (*net_tx)(struct hv_domain *d, unsigned nic, const void *frame,
		      size_t len);
	int (*disk_write_hook)(struct hv_domain *d, hv_disk_wr_fn fn,
			       void *ctx);
};

#define HV_THROTTLE_PERIOD_MS 10
#define HV_DISK_BLOCK (64u * 1024) /* disk dirty-logging granularity */

#endif /* HV_H */
