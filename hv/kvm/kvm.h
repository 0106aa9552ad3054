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

/* Backend configuration passed as hv_ops.create's `cfg`. */
struct kvm_cfg {
	int console_fd; /* guest console output goes here (not owned) */
};

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
