/* SPDX-License-Identifier: MIT */
/*
 * kvm.h - the built-in micro-VMM on /dev/kvm: what a program that picks
 * this backend (ftvm) needs beyond struct hv_ops.
 *
 * A domain is one process-local VM with one vCPU thread.  It runs a static
 * ELF guest at CPL3 in 64-bit mode; see docs/guest-abi.md.
 */
#ifndef KVM_H
#define KVM_H

#include "hv.h"

extern const struct hv_ops kvm_hv_ops;

#define KVM_MEM_MIN (16ULL << 20)
#define KVM_MEM_MAX (64ULL << 30)
#define KVM_MEM_ALIGN (2ULL << 20)

#define KVM_IFNAMSIZ 16

/* The NIC: a TAP device whose host side is an ordinary interface. */
struct kvm_net_cfg {
	bool present;
	char tap[KVM_IFNAMSIZ];    /* host interface name */
	uint8_t mac[6];            /* the guest's MAC */
	uint32_t ip, netmask, gw;  /* the guest's IPv4 config, network order */
	char bridge[KVM_IFNAMSIZ]; /* enslave the TAP to this bridge, or "" */
	uint32_t host_ip;          /* address for the TAP's host side, or 0 */
	uint8_t host_prefix;
};

/* Backend configuration passed as hv_ops.create's `cfg`. */
struct kvm_cfg {
	int console_fd;            /* guest console output goes here (not owned) */
	struct kvm_net_cfg net;
	const char *disk;          /* raw image file for the block device, or NULL */
	uint64_t disk_size;        /* bytes: create the image this size if it is
				    * missing, refuse it if it has another size;
				    * 0: the image's own size */
};

/* Parse a NIC spec "tap=NAME,mac=52:54:00:12:34:56,ip=10.0.0.2/24[,gw=A]
 * [,bridge=BR][,host-ip=10.0.0.1/24]" into `net` (present = true).  tap and
 * mac are required.  On error returns -EINVAL with the offending item in
 * the logged message. */
int kvm_net_parse(const char *spec, struct kvm_net_cfg *net);

/* Send a gratuitous ARP and a RARP for the guest's MAC/IP on its TAP, so
 * switches and peers learn where it now lives (after restore or
 * migration).  No-op without a NIC. */
int kvm_net_announce(struct hv_domain *d);

/*
 * Dirty-page logging mechanisms (hv/kvm/kvm_dirty.c describes them;
 * docs/performance.md measures them).  All honour the same hv_ops
 * dirty_log / dirty_fetch contract.
 */
enum kvm_dirty_mech {
	KVM_DIRTY_AUTO,        /* the ring if the host has it, else bitmap  */
	KVM_DIRTY_BITMAP,      /* classic KVM_GET_DIRTY_LOG                 */
	KVM_DIRTY_MANUAL,      /* MANUAL_DIRTY_LOG_PROTECT2: GET + CLEAR    */
	KVM_DIRTY_MANUAL_INIT, /* the same with KVM_DIRTY_LOG_INITIALLY_SET */
	KVM_DIRTY_RING,        /* KVM_CAP_DIRTY_LOG_RING(_ACQ_REL)          */
};

/* Creation-time options; a zeroed struct means the defaults. */
struct kvm_create_opts {
	enum kvm_dirty_mech dirty;
	uint32_t ring_entries; /* KVM_DIRTY_RING/AUTO: power of two; 0: the
				* default (65536, or the host's maximum) */
};

/* As kvm_hv_ops.create, with `opts` (NULL: defaults, which is what
 * kvm_hv_ops.create uses).  A mechanism asked for by name that the host
 * lacks fails with -EOPNOTSUPP; AUTO falls back instead. */
int kvm_create_opts(const struct hv_dom_info *info, const struct kvm_cfg *cfg,
		    const struct kvm_create_opts *opts, struct hv_domain **out);

struct kvm_dirty_info {
	enum kvm_dirty_mech mech;  /* the one in use, never AUTO */
	uint32_t ring_entries;     /* KVM_DIRTY_RING only */
	uint64_t ring_full_exits;  /* KVM_EXIT_DIRTY_RING_FULL so far */
	uint64_t ring_full_ns;     /* vCPU thread time spent on them */
};

/* The dirty-logging mechanism of `d` and its counters.  Any thread. */
void kvm_dirty_get_info(struct hv_domain *d, struct kvm_dirty_info *info);

/* "bitmap", "manual", "manual-init", "ring", "auto". */
const char *kvm_dirty_mech_name(enum kvm_dirty_mech m);

/* Load the static ELF `image` into the freshly created domain `d` (paused,
 * never run), build the system area (page tables, GDT, TSS, IDT, boot info
 * with `cmdline`) and put the vCPU at the entry point.  Every ELF field is
 * checked; a bad image fails with -ENOEXEC and a message naming the field,
 * leaving `d` unusable but intact for destroy(). */
int kvm_boot(struct hv_domain *d, const char *image, const char *cmdline);

/* Copy guest RAM [0, mem_size) to `fd` (a raw memory image, offset =
 * guest-physical address).  The domain must be paused. */
int kvm_dump_ram(struct hv_domain *d, int fd);

/* Check that /dev/kvm is usable; on failure log why and return -errno. */
int kvm_probe(void);

#endif /* KVM_H */
