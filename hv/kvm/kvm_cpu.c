// SPDX-License-Identifier: MIT
/*
 * kvm_cpu.c - the vCPU: CPUID, register state save/load, crash reports.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm_priv.h"
#include "log.h"

#define MSR_STAR           0xc0000081
#define MSR_LSTAR          0xc0000082
#define MSR_CSTAR          0xc0000083
#define MSR_SFMASK         0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_TSC_AUX        0xc0000103

static const uint32_t saved_msrs[] = { MSR_STAR,   MSR_LSTAR,
				       MSR_CSTAR,  MSR_SFMASK,
				       MSR_KERNEL_GS_BASE, MSR_TSC_AUX };
#define NR_MSRS (sizeof(saved_msrs) / sizeof(saved_msrs[0]))

struct msr_buf {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[NR_MSRS];
};

int kvm_cpu_init(struct hv_domain *d)
{
	struct {
		struct kvm_cpuid2 c;
		struct kvm_cpuid_entry2 e[256];
	} cpuid = { .c.nent = 256 };

	if (ioctl(d->kvm_fd, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) {
		log_err("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
		return -errno;
	}
	if (ioctl(d->vcpu_fd, KVM_SET_CPUID2, &cpuid) < 0) {
		log_err("KVM_SET_CPUID2: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

static void seg_out(struct hv_seg *o, const struct kvm_segment *s)
{
	*o = (struct hv_seg){ .base = s->base, .limit = s->limit,
			      .selector = s->selector, .type = s->type,
			      .present = s->present, .dpl = s->dpl,
			      .db = s->db, .s = s->s, .l = s->l, .g = s->g,
			      .avl = s->avl, .unusable = s->unusable };
}

static void seg_in(struct kvm_segment *o, const struct hv_seg *s)
{
	*o = (struct kvm_segment){ .base = s->base, .limit = s->limit,
				   .selector = s->selector, .type = s->type,
				   .present = s->present, .dpl = s->dpl,
				   .db = s->db, .s = s->s, .l = s->l, .g = s->g,
				   .avl = s->avl, .unusable = s->unusable };
}

static void regs_out(struct hv_vcpu_state *st, const struct kvm_regs *r)
{
	const uint64_t g[16] = { r->rax, r->rcx, r->rdx, r->rbx,
				 r->rsp, r->rbp, r->rsi, r->rdi,
				 r->r8,  r->r9,  r->r10, r->r11,
				 r->r12, r->r13, r->r14, r->r15 };

	memcpy(st->gpr, g, sizeof(g));
	st->rip = r->rip;
	st->rflags = r->rflags;
}

static void regs_in(struct kvm_regs *r, const struct hv_vcpu_state *st)
{
	const uint64_t *g = st->gpr;

	*r = (struct kvm_regs){ .rax = g[0],  .rcx = g[1],  .rdx = g[2],
				.rbx = g[3],  .rsp = g[4],  .rbp = g[5],
				.rsi = g[6],  .rdi = g[7],  .r8 = g[8],
				.r9 = g[9],   .r10 = g[10], .r11 = g[11],
				.r12 = g[12], .r13 = g[13], .r14 = g[14],
				.r15 = g[15], .rip = st->rip,
				.rflags = st->rflags };
}

int kvm_cpu_save(struct hv_domain *d, struct hv_vcpu_state *st)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	struct kvm_xsave xs;
	struct kvm_xcrs xcrs;
	struct msr_buf m = { .hdr.nmsrs = NR_MSRS };
	unsigned i;

	memset(st, 0, sizeof(*st));
	if (ioctl(d->vcpu_fd, KVM_GET_REGS, &r) < 0 ||
	    ioctl(d->vcpu_fd, KVM_GET_SREGS, &s) < 0 ||
	    ioctl(d->vcpu_fd, KVM_GET_XSAVE, &xs) < 0 ||
	    ioctl(d->vcpu_fd, KVM_GET_XCRS, &xcrs) < 0) {
		log_err("vcpu save: %s", strerror(errno));
		return -errno;
	}
	regs_out(st, &r);
	seg_out(&st->cs, &s.cs);
	seg_out(&st->ds, &s.ds);
	seg_out(&st->es, &s.es);
	seg_out(&st->fs, &s.fs);
	seg_out(&st->gs, &s.gs);
	seg_out(&st->ss, &s.ss);
	seg_out(&st->tr, &s.tr);
	seg_out(&st->ldt, &s.ldt);
	st->gdt = (struct hv_dtable){ s.gdt.base, s.gdt.limit };
	st->idt = (struct hv_dtable){ s.idt.base, s.idt.limit };
	st->cr0 = s.cr0;
	st->cr2 = s.cr2;
	st->cr3 = s.cr3;
	st->cr4 = s.cr4;
	st->cr8 = s.cr8;
	st->efer = s.efer;
	st->apic_base = s.apic_base;
	for (i = 0; i < xcrs.nr_xcrs; i++)
		if (xcrs.xcrs[i].xcr == 0)
			st->xcr0 = xcrs.xcrs[i].value;
	_Static_assert(sizeof(xs.region) <= HV_XSAVE_MAX, "xsave size");
	memcpy(st->xsave, xs.region, sizeof(xs.region));
	st->xsave_len = sizeof(xs.region);

	for (i = 0; i < NR_MSRS; i++)
		m.e[i].index = saved_msrs[i];
	/* KVM returns how many it read; MSRs this host lacks stay 0. */
	if (ioctl(d->vcpu_fd, KVM_GET_MSRS, &m) >= 0) {
		st->star = m.e[0].data;
		st->lstar = m.e[1].data;
		st->cstar = m.e[2].data;
		st->sfmask = m.e[3].data;
		st->kernel_gs_base = m.e[4].data;
		st->tsc_aux = m.e[5].data;
	}
	return 0;
}

int kvm_cpu_load(struct hv_domain *d, const struct hv_vcpu_state *st)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	struct kvm_xsave xs;
	struct kvm_xcrs xcrs = { .nr_xcrs = 1 };
	struct msr_buf m = { .hdr.nmsrs = NR_MSRS };
	const uint64_t vals[NR_MSRS] = { st->star,   st->lstar,
					 st->cstar,  st->sfmask,
					 st->kernel_gs_base, st->tsc_aux };
	unsigned i;
	int n;

	if (st->xsave_len != sizeof(xs.region)) {
		log_err("vcpu load: xsave area is %u bytes, this host uses %zu",
			st->xsave_len, sizeof(xs.region));
		return -EINVAL;
	}
	if (ioctl(d->vcpu_fd, KVM_GET_SREGS, &s) < 0) {
		log_err("KVM_GET_SREGS: %s", strerror(errno));
		return -errno;
	}
	regs_in(&r, st);
	seg_in(&s.cs, &st->cs);
	seg_in(&s.ds, &st->ds);
	seg_in(&s.es, &st->es);
	seg_in(&s.fs, &st->fs);
	seg_in(&s.gs, &st->gs);
	seg_in(&s.ss, &st->ss);
	seg_in(&s.tr, &st->tr);
	seg_in(&s.ldt, &st->ldt);
	s.gdt.base = st->gdt.base;
	s.gdt.limit = st->gdt.limit;
	s.idt.base = st->idt.base;
	s.idt.limit = st->idt.limit;
	s.cr0 = st->cr0;
	s.cr2 = st->cr2;
	s.cr3 = st->cr3;
	s.cr4 = st->cr4;
	s.cr8 = st->cr8;
	s.efer = st->efer;
	s.apic_base = st->apic_base;
	memcpy(xs.region, st->xsave, sizeof(xs.region));
	xcrs.xcrs[0].xcr = 0;
	xcrs.xcrs[0].value = st->xcr0 ? st->xcr0 : 1;
	if (ioctl(d->vcpu_fd, KVM_SET_SREGS, &s) < 0 ||
	    ioctl(d->vcpu_fd, KVM_SET_REGS, &r) < 0 ||
	    ioctl(d->vcpu_fd, KVM_SET_XCRS, &xcrs) < 0 ||
	    ioctl(d->vcpu_fd, KVM_SET_XSAVE, &xs) < 0) {
		log_err("vcpu load: %s (state rejected by KVM)",
			strerror(errno));
		return -errno ? -errno : -EINVAL;
	}
	for (i = 0, n = 0; i < NR_MSRS; i++) {
		if (!vals[i])
			continue;
		m.e[n].index = saved_msrs[i];
		m.e[n++].data = vals[i];
	}
	m.hdr.nmsrs = (uint32_t)n;
	if (n && ioctl(d->vcpu_fd, KVM_SET_MSRS, &m) != n) {
		log_err("vcpu load: KVM_SET_MSRS accepted fewer than %d MSRs",
			n);
		return -EINVAL;
	}
	return 0;
}

int kvm_cpu_set_rax(struct hv_domain *d, uint64_t rax)
{
	struct kvm_regs r;

	if (ioctl(d->vcpu_fd, KVM_GET_REGS, &r) < 0)
		return -errno;
	r.rax = rax;
	if (ioctl(d->vcpu_fd, KVM_SET_REGS, &r) < 0)
		return -errno;
	return 0;
}

static const char *const vec_names[32] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint",
	"#OF overflow", "#BR bound range", "#UD invalid opcode",
	"#NM device not available", "#DF double fault", "coprocessor overrun",
	"#TS invalid TSS", "#NP segment not present", "#SS stack fault",
	"#GP general protection", "#PF page fault", "vector 15",
	"#MF x87 error", "#AC alignment check", "#MC machine check",
	"#XM SIMD exception", "#VE virtualization", "#CP control protection",
};

/*
 * Build the crash reason from the registers.  `what` names the exit; if
 * the vCPU stopped in one of our exception stubs (KVM_EXIT_HLT at CPL0 on
 * the exception stack), decode the frame the CPU pushed:
 * [vector, error, rip, cs, rflags, rsp, ss].
 */
void kvm_cpu_crash_report(struct hv_domain *d, const char *what)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	char exc[160] = "";
	uint64_t rip, rsp;

	if (ioctl(d->vcpu_fd, KVM_GET_REGS, &r) < 0 ||
	    ioctl(d->vcpu_fd, KVM_GET_SREGS, &s) < 0) {
		kvm_set_state(d, HV_STATE_CRASHED, 0,
			      "%s (registers unavailable: %s)", what,
			      strerror(errno));
		return;
	}
	rip = r.rip;
	rsp = r.rsp;
	if ((s.cs.selector & 3) == 0 && r.rsp >= SYS_XSTACK_LO &&
	    r.rsp + 7 * 8 <= SYS_XSTACK_TOP) {
		uint64_t f[7], vec;

		memcpy(f, d->mem + r.rsp, sizeof(f)); /* rsp may be unaligned */
		vec = f[0];

		snprintf(exc, sizeof(exc), "%s (vector %llu) error 0x%llx ",
			 vec < 32 && vec_names[vec] ? vec_names[vec]
						    : "exception",
			 (unsigned long long)vec, (unsigned long long)f[1]);
		if (vec == 14)
			snprintf(exc + strlen(exc), sizeof(exc) - strlen(exc),
				 "address 0x%llx ", (unsigned long long)s.cr2);
		rip = f[2];
		rsp = f[5];
		/* Show the faulting context, not the stub's. */
		r.rflags = f[4];
	}
	kvm_set_state(d, HV_STATE_CRASHED, 0,
		      "%s: %sat rip 0x%llx rsp 0x%llx rflags 0x%llx; "
		      "rax 0x%llx rbx 0x%llx rcx 0x%llx rdx 0x%llx "
		      "rsi 0x%llx rdi 0x%llx rbp 0x%llx r8 0x%llx r9 0x%llx "
		      "r10 0x%llx r11 0x%llx r12 0x%llx r13 0x%llx "
		      "r14 0x%llx r15 0x%llx",
		      what, exc, (unsigned long long)rip,
		      (unsigned long long)rsp, (unsigned long long)r.rflags,
		      (unsigned long long)r.rax, (unsigned long long)r.rbx,
		      (unsigned long long)r.rcx, (unsigned long long)r.rdx,
		      (unsigned long long)r.rsi, (unsigned long long)r.rdi,
		      (unsigned long long)r.rbp, (unsigned long long)r.r8,
		      (unsigned long long)r.r9, (unsigned long long)r.r10,
		      (unsigned long long)r.r11, (unsigned long long)r.r12,
		      (unsigned long long)r.r13, (unsigned long long)r.r14,
		      (unsigned long long)r.r15);
}
