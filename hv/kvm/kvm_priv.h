/* SPDX-License-Identifier: MIT */
/*
 * kvm_priv.h - internals shared by the hv/kvm source files only.
 */
#ifndef KVM_PRIV_H
#define KVM_PRIV_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ftabi.h"
#include "kvm.h"

/* Guest-physical layout of the VMM's system area (supervisor-only pages);
 * docs/guest-abi.md describes it. */
#define SYS_GDT        0x1000ULL
#define SYS_IDT        0x2000ULL
#define SYS_STUBS      0x3000ULL
#define SYS_PML4       0x4000ULL
#define SYS_PDPT       0x5000ULL
#define SYS_PT0        0x6000ULL /* 4 KiB mappings of the first 2 MiB */
#define SYS_TSS        0xa000ULL /* TSS + I/O bitmap, 3 pages */
#define SYS_XSTACK_TOP 0x10000ULL /* exception stack [0xd000, 0x10000) */
#define SYS_XSTACK_LO  0xd000ULL
#define SYS_PD         0x10000ULL /* one page per GiB of RAM */
#define SYS_PD_END     (SYS_PD + (KVM_MEM_MAX >> 30) * 0x1000ULL)

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x1b
#define SEL_UCODE 0x23
#define SEL_TSS   0x28
#define TSS_IOMAP 104
#define TSS_LIMIT (TSS_IOMAP + 8192) /* last byte: the 0xff terminator */

/* Device state kept by the VMM itself. */
struct kvm_clock {
	int64_t offset_ns;  /* guest monotonic = host CLOCK_MONOTONIC - offset */
	uint64_t last_wall; /* wall clock never goes backwards */
};

/* The NIC (kvm_net.c). */
#define KVM_NET_RXQ 256 /* frames held in the VMM (drained at save) */
struct kvm_net_frame {
	uint32_t len;
	uint8_t data[FT_NET_FRAME_MAX];
};
struct kvm_net {
	int fd;                      /* the TAP, or -1: no NIC */
	struct kvm_net_cfg cfg;
	struct kvm_net_frame *rxq;   /* vCPU thread, or paused */
	uint32_t rxq_head, rxq_len;
	struct kvm_net_stats {
		uint64_t rx_frames, rx_bytes, rx_dropped;
		uint64_t tx_frames, tx_bytes, tx_dropped;
	} stats;                     /* saved as is (little-endian u64s) */
	/* hv_ops net_tx_hook.  A send hypercall holds hook_lock while it
	 * calls the hook, so installing or removing one waits for a call in
	 * progress.  Initialised at domain creation, NIC or not. */
	pthread_mutex_t hook_lock;
	hv_net_tx_fn hook;           /* hook_lock */
	void *hook_ctx;              /* hook_lock */
	/* kvm_net_announce: the next poll reports FT_POLL_MOVED */
	atomic_bool moved;
};

/* The disk (kvm_blk.c). */
struct kvm_blk {
	int fd;                      /* the image, or -1: no disk */
	uint64_t sectors;
	struct kvm_blk_stats {
		uint64_t reads, writes, flushes, bytes_read, bytes_written;
	} stats;                     /* saved as is (little-endian u64s) */
	/* Write log, one bit per HV_DISK_BLOCK, while `logging` (set and
	 * fetched with atomics: the vCPU thread marks, a migration fetches). */
	uint64_t *dirty;
	uint64_t nr_blocks;
	bool logging;
	/* hv_ops disk_write_hook, as kvm_net's hook. */
	pthread_mutex_t hook_lock;
	hv_disk_wr_fn hook;          /* hook_lock */
	void *hook_ctx;              /* hook_lock */
};

struct hv_domain {
	int kvm_fd, vm_fd, vcpu_fd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem;
	uint64_t mem_size;
	struct kvm_cfg cfg;

	pthread_t thread;
	bool thread_started;
	int wake_fd;  /* eventfd: interrupts a blocking poll hypercall */
	int event_fd; /* eventfd: tells the owner the run state changed */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned pause_count;        /* lock */
	bool parked;                 /* lock: vCPU thread is outside KVM_RUN */
	bool blocked;                /* lock: parked inside a hypercall that
				      * blocks on the host (kvm_vcpu_block_begin) */
	bool io_pending;             /* vCPU thread only: exit not completed */
	bool quit;                   /* lock */
	enum hv_run_state state;     /* lock */
	int64_t exit_status;         /* lock */
	char reason[512];            /* lock */
	atomic_uint_fast64_t exits, hypercalls;
	atomic_uint throttle_pct;    /* hv_ops throttle; vCPU thread applies */

	struct kvm_clock clock;      /* vCPU thread, or lock holder when paused */
	struct kvm_net net;
	struct kvm_blk blk;
	/* kvm_dirty.c */
	enum kvm_dirty_mech dirty_mech; /* fixed at creation, never AUTO */
	pthread_mutex_t dirty_lock;  /* ring harvests: vCPU thread vs fetch */
	bool dirty_on;               /* set under dirty_lock, read atomically */
	uint64_t *vmm_dirty;         /* atomic: frames the VMM wrote itself */
	bool vmm_dirty_any;          /* atomic: vmm_dirty has a bit set */
	uint64_t *dirty_buf;         /* bitmap, manual: KVM_GET_DIRTY_LOG's */
	struct kvm_dirty_gfn *ring;  /* ring: the vCPU's, mmapped */
	uint32_t ring_entries;
	uint32_t ring_next;          /* dirty_lock: next entry to harvest */
	uint64_t *ring_acc;          /* dirty_lock: harvested on ring-full
				      * exits, not yet fetched */
	uint64_t ring_acc_n;         /* dirty_lock: entries put in ring_acc */
	atomic_uint_fast64_t ring_full_exits, ring_full_ns;
};

/* kvm_vm.c */
void kvm_set_state(struct hv_domain *d, enum hv_run_state st, int64_t status,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
uint64_t kvm_host_ns(int clock_id);

/*
 * kvm_vm.c, vCPU thread: around the part of a hypercall that blocks on the
 * host (a poll with nothing ready; a disk write or flush while protected,
 * kvm_blk.c), so that a pause need not wait for it.  Call
 * kvm_vcpu_block_begin once the guest's state is what it may be recorded
 * as if a checkpoint is taken now (the call's result block written and
 * kvm_dirty_mark'ed): it completes the port I/O and counts the vCPU as
 * parked, so a pause returns at once.  In between, touch neither guest
 * memory (reading is fine) nor device state.  kvm_vcpu_block_end waits
 * out a pause that came meanwhile and un-parks; after it the call may
 * rewrite its result (the guest has not run since) and mark it dirty
 * again.  kvm_vcpu_block_begin returns false, not parked, when the port
 * I/O cannot be completed (the crash is reported): the vCPU must stop.
 */
bool kvm_vcpu_block_begin(struct hv_domain *d);
void kvm_vcpu_block_end(struct hv_domain *d);

/* kvm_hc.c: handle one KVM_EXIT_IO; returns false if the vCPU must stop. */
bool kvm_hc_io(struct hv_domain *d);
uint64_t kvm_clock_mono(struct hv_domain *d);
/* Pointer to guest memory [gpa, gpa+len) if all of it lies in the guest's
 * part of RAM [FT_GPA_STACK_LO, mem_size) without overflow, else NULL. */
void *kvm_guest_ptr(struct hv_domain *d, uint64_t gpa, uint64_t len);

/* kvm_net.c: the NIC.  init with !cfg->present sets up "no NIC". */
int kvm_net_init(struct hv_domain *d, const struct kvm_net_cfg *cfg);
void kvm_net_fini(struct hv_domain *d);
int kvm_net_fd(const struct hv_domain *d);
bool kvm_net_pending(const struct hv_domain *d);
int64_t kvm_net_info(struct hv_domain *d, struct ft_hc_net_info *a);
int64_t kvm_net_send(struct hv_domain *d, struct ft_hc_net_batch *a);
int64_t kvm_net_recv(struct hv_domain *d, struct ft_hc_net_batch *a);
int kvm_net_save(struct hv_domain *d, hv_dev_cb cb, void *ctx);
int kvm_net_load(struct hv_domain *d, const struct hv_dev_rec *rec);
/* hv_ops net_tx_hook and net_tx (see hv.h). */
int kvm_net_tx_hook(struct hv_domain *d, hv_net_tx_fn fn, void *ctx);
int kvm_net_tx(struct hv_domain *d, unsigned nic, const void *frame,
	       size_t len);

/* kvm_blk.c: the disk.  init with path NULL sets up "no disk"; see
 * struct kvm_cfg for `size`. */
int kvm_blk_init(struct hv_domain *d, const char *path, uint64_t size);
void kvm_blk_fini(struct hv_domain *d);
int64_t kvm_blk_info(struct hv_domain *d, struct ft_hc_block_info *a);
int64_t kvm_blk_io(struct hv_domain *d, struct ft_hc_block_io *a, bool write);
int64_t kvm_blk_flush(struct hv_domain *d, struct ft_hc_block_flush *a);
int kvm_blk_save(struct hv_domain *d, hv_dev_cb cb, void *ctx);
int kvm_blk_load(struct hv_domain *d, const struct hv_dev_rec *rec);
/* hv_ops disk_* (see hv.h) and the log switch kvm_dirty_set calls. */
void kvm_blk_log(struct hv_domain *d, bool on);
int kvm_disk_info(struct hv_domain *d, unsigned idx, uint64_t *size);
int kvm_disk_dirty_fetch(struct hv_domain *d, unsigned idx, uint64_t *bitmap,
			 uint64_t nr_blocks);
int kvm_disk_read(struct hv_domain *d, unsigned idx, uint64_t off, void *buf,
		  size_t len);
int kvm_disk_writeback(struct hv_domain *d, unsigned idx);
int kvm_disk_write(struct hv_domain *d, unsigned idx, uint64_t off,
		   const void *buf, size_t len);
int kvm_disk_write_hook(struct hv_domain *d, hv_disk_wr_fn fn, void *ctx);

/* kvm_dirty.c */
/* Pick and enable the mechanism; before the vCPU is created. */
int kvm_dirty_init_vm(struct hv_domain *d, const struct kvm_create_opts *o);
/* Map the vCPU's dirty ring (ring only); right after vCPU creation. */
int kvm_dirty_init_vcpu(struct hv_domain *d);
void kvm_dirty_fini(struct hv_domain *d);
/* hv_ops.dirty_log and hv_ops.dirty_fetch. */
int kvm_dirty_set(struct hv_domain *d, bool on);
int kvm_dirty_fetch(struct hv_domain *d, uint64_t *bitmap, uint64_t nr_pfns);
/* Record that the VMM wrote guest memory [gpa, gpa+len) (already range-
 * checked), for the next fetch; no-op while logging is off.  Call after
 * the write.  Any thread. */
void kvm_dirty_mark(struct hv_domain *d, uint64_t gpa, uint64_t len);
/* vCPU thread, on KVM_EXIT_DIRTY_RING_FULL: harvest and reset the ring.
 * Returns false (crash reported) if that fails. */
bool kvm_dirty_ring_full(struct hv_domain *d);

/* kvm_cpu.c */
int kvm_cpu_init(struct hv_domain *d);
int kvm_cpu_save(struct hv_domain *d, struct hv_vcpu_state *st);
int kvm_cpu_load(struct hv_domain *d, const struct hv_vcpu_state *st);
void kvm_cpu_crash_report(struct hv_domain *d, const char *what);
int kvm_cpu_set_rax(struct hv_domain *d, uint64_t rax);

#endif /* KVM_PRIV_H */
