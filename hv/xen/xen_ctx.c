// SPDX-License-Identifier: MIT
/*
 * xen_ctx.c - vCPU and device state of a Xen HVM domain, through Xen's
 * HVM context (XEN_DOMCTL_gethvmcontext / _sethvmcontext): a series of
 * {hvm_save_descriptor, body} records, HEADER first and END last, as
 * xg_sr_save_x86_hvm.c sends it whole in its HVM_CONTEXT record.
 *
 * Save: the whole context is fetched once per pause (cached until the
 * domain is unpaused or loaded), so every vCPU record and the device
 * record of one checkpoint come from the same instant.  vcpu_save reads
 * the vCPU's CPU record (struct hvm_hw_cpu), its CPU_XSAVE record, and
 * the APIC base and TPR from its LAPIC and LAPIC_REGS records.  The whole
 * context is walked rather than fetched per record with
 * xc_domain_hvm_getcontext_partial because CPU_XSAVE is variable-length
 * and the partial call does not say how much it wrote.
 *
 * Load: Xen loads only whole contexts (HEADER..END), and marks offline
 * every vCPU without a CPU record in it.  So vcpu_load takes the current
 * context, replaces that vCPU's records and loads it all back; Remus and
 * COLO reload whole contexts into a live domain every checkpoint, so this
 * is a path Xen supports.
 *
 * Carried between struct hv_vcpu_state and Xen, field by field:
 *   gpr[], rip, rflags, cr0, cr2, cr3, cr4, efer, segment registers
 *   (selector, base, limit, attributes), GDTR, IDTR, STAR, LSTAR, CSTAR,
 *   SFMASK, KERNEL_GS_BASE, TSC_AUX       <- struct hvm_hw_cpu
 *   xcr0, xsave[] (standard XSAVE format) <- CPU_XSAVE record; without
 *                                            one, the 512-byte FXSAVE
 *                                            image of hvm_hw_cpu
 *   apic_base                             <- LAPIC record
 *   cr8                                   <- TPR bits 7:4 (LAPIC_REGS)
 * NOT carried (kept from the target vCPU on load, or Xen's reset values
 * when the target vCPU was offline; all of them travel in the device
 * record HV_DEV_XEN_HVM_CONTEXT):
 *   DR0-DR3, DR6, DR7; SYSENTER_CS/ESP/EIP; the guest TSC; a pending
 *   event and its error code; XCR0_ACCUM; the other LAPIC registers and
 *   timer; MTRRs and PAT; TSC_ADJUST, MCE, viridian and CPU_MSR records
 *   (SPEC_CTRL, XSS, ...); whether the vCPU is online.
 * Segment attributes: Xen keeps the SVM-style 12-bit form and has no
 * "unusable" bit; a segment is unusable exactly when it is not present.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "xen_priv.h"

#define DESC_SIZE ((uint32_t)sizeof(struct hvm_save_descriptor))
#define CODE_HEADER ((uint16_t)HVM_SAVE_CODE(HEADER))
#define CODE_CPU ((uint16_t)HVM_SAVE_CODE(CPU))
#define CODE_LAPIC ((uint16_t)HVM_SAVE_CODE(LAPIC))
#define CODE_LREGS ((uint16_t)HVM_SAVE_CODE(LAPIC_REGS))
#define CODE_XSAVE ((uint16_t)CPU_XSAVE_CODE)
#define FXSAVE_LEN 512u
#define XSAVE_MIN_LEN (FXSAVE_LEN + 64u) /* legacy area + XSAVE header */
#define XSAVE_HDR_LEN ((uint32_t)offsetof(struct hvm_hw_cpu_xsave, save_area))
#define APIC_TPR 0x80 /* offset in the LAPIC register page */
/* Xen's CPU context cannot be larger than this, whatever it says. */
#define CTX_FETCH_MAX (64u << 20)

_Static_assert(sizeof(struct hvm_save_descriptor) == 8, "descriptor size");
_Static_assert(sizeof(((struct hvm_hw_cpu *)0)->fpu_regs) == FXSAVE_LEN,
	       "FXSAVE image size");
_Static_assert(XSAVE_HDR_LEN == 24, "CPU_XSAVE record header");
_Static_assert(sizeof(struct hvm_hw_lapic_regs) > APIC_TPR + 4, "TPR");

/* CR0 bits Xen accepts on restore, and the EFER bits we check. */
#define CR0_PE (1ULL << 0)
#define CR0_ET (1ULL << 4)
#define CR0_PG (1ULL << 31)
#define CR0_KNOWN 0xe005003fULL /* PE MP EM TS ET NE WP AM NW CD PG */
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

/* One record of a checked context. */
struct hvm_rec {
	uint16_t type, instance;
	uint32_t len;
	const uint8_t *body;
};

static bool per_vcpu_type(uint16_t type)
{
	switch (type) {
	case HVM_SAVE_CODE(CPU):
	case HVM_SAVE_CODE(LAPIC):
	case HVM_SAVE_CODE(LAPIC_REGS):
	case HVM_SAVE_CODE(MTRR):
	case CPU_XSAVE_CODE:
	case HVM_SAVE_CODE(VIRIDIAN_VCPU):
	case HVM_SAVE_CODE(VMCE_VCPU):
	case HVM_SAVE_CODE(TSC_ADJUST):
	case CPU_MSR_CODE:
		return true;
	default:
		return false;
	}
}

/*
 * Check the framing of a context of `len` bytes: a HEADER record with
 * Xen's magic and version first, every descriptor and body inside the
 * buffer, known record types, per-vCPU records for vCPUs < nr_vcpus, and
 * an END record exactly at the end.  The bodies are Xen's to check.
 * Returns 0 or `fail` (logged, naming `what` and the offset).
 */
static int ctx_check(uint32_t domid, const char *what, const uint8_t *buf,
		     uint32_t len, uint32_t nr_vcpus, int fail)
{
	struct hvm_save_descriptor desc;
	struct hvm_save_header hdr;
	uint32_t pos;

	if (len < 2 * DESC_SIZE + sizeof(hdr)) {
		log_err("xen: dom%u: %s: %u bytes, too short for a HEADER and "
			"an END record",
			domid, what, len);
		return fail;
	}
	memcpy(&desc, buf, DESC_SIZE);
	if (desc.typecode != CODE_HEADER || desc.length != sizeof(hdr)) {
		log_err("xen: dom%u: %s: starts with a record of type %u and "
			"%u bytes, not a HEADER of %zu",
			domid, what, desc.typecode, desc.length, sizeof(hdr));
		return fail;
	}
	memcpy(&hdr, buf + DESC_SIZE, sizeof(hdr));
	if (hdr.magic != HVM_FILE_MAGIC || hdr.version != HVM_FILE_VERSION) {
		log_err("xen: dom%u: %s: HVM header magic 0x%x version %u; "
			"expected 0x%x version %u",
			domid, what, hdr.magic, hdr.version, HVM_FILE_MAGIC,
			HVM_FILE_VERSION);
		return fail;
	}
	for (pos = DESC_SIZE + sizeof(hdr);; pos += DESC_SIZE + desc.length) {
		if (len - pos < DESC_SIZE) {
			log_err("xen: dom%u: %s: no END record (%u bytes left "
				"at offset %u)",
				domid, what, len - pos, pos);
			return fail;
		}
		memcpy(&desc, buf + pos, DESC_SIZE);
		if (desc.typecode == 0) {
			if (desc.length || desc.instance ||
			    pos + DESC_SIZE != len) {
				log_err("xen: dom%u: %s: END record at offset "
					"%u has length %u, instance %u and %u "
					"bytes after it; expected 0, 0, 0",
					domid, what, pos, desc.length,
					desc.instance, len - pos - DESC_SIZE);
				return fail;
			}
			return 0;
		}
		if (desc.typecode > HVM_SAVE_CODE_MAX ||
		    desc.typecode == CODE_HEADER) {
			log_err("xen: dom%u: %s: record of type %u at offset "
				"%u: %s",
				domid, what, desc.typecode, pos,
				desc.typecode == CODE_HEADER
					? "a second HEADER"
					: "unknown to these Xen headers");
			return fail;
		}
		if (desc.length > len - pos - DESC_SIZE) {
			log_err("xen: dom%u: %s: record of type %u instance %u "
				"at offset %u claims %u bytes; %u are left",
				domid, what, desc.typecode, desc.instance, pos,
				desc.length, len - pos - DESC_SIZE);
			return fail;
		}
		if (per_vcpu_type(desc.typecode) && desc.instance >= nr_vcpus) {
			log_err("xen: dom%u: %s: record of type %u for vCPU %u "
				"at offset %u; the domain has %u vCPUs",
				domid, what, desc.typecode, desc.instance, pos,
				nr_vcpus);
			return fail;
		}
	}
}

/* Step through a context ctx_check() accepted; false at END. */
static bool ctx_next(const uint8_t *buf, uint32_t *pos, struct hvm_rec *r)
{
	struct hvm_save_descriptor desc;

	memcpy(&desc, buf + *pos, DESC_SIZE);
	*r = (struct hvm_rec){.type = desc.typecode,
			      .instance = desc.instance,
			      .len = desc.length,
			      .body = buf + *pos + DESC_SIZE};
	if (!desc.typecode)
		return false;
	*pos += DESC_SIZE + desc.length;
	return true;
}

/* Find record (type, instance) in d's cached context. */
static bool ctx_find(const struct hv_domain *d, uint16_t type,
		     uint16_t instance, struct hvm_rec *out)
{
	struct hvm_rec r;
	uint32_t pos = 0;

	while (ctx_next(d->ctx, &pos, &r)) {
		if (r.type == type && r.instance == instance) {
			*out = r;
			return true;
		}
	}
	return false;
}

void xen_ctx_invalidate(struct hv_domain *d)
{
	free(d->ctx);
	d->ctx = NULL;
	d->ctx_len = 0;
	d->ctx_valid = false;
}

/* Make d->ctx the domain's current HVM context.  The domain must be
 * paused by us: the copy is reused until it is unpaused or loaded. */
static int ctx_get(struct hv_domain *d, const char *op)
{
	uint8_t *buf;
	int size, len, err;

	if (!d->pause_count) {
		log_err("xen: dom%u: %s needs the domain paused through "
			"hv_ops.pause",
			d->domid, op);
		return -EBUSY;
	}
	if (d->ctx_valid)
		return 0;
	size = xc_domain_hvm_getcontext(d->xch, d->domid, NULL, 0);
	if (size < 0) {
		err = errno ? -errno : -EIO;
		log_err("xen: dom%u: HVM context size: %s", d->domid,
			strerror(-err));
		return err;
	}
	if (size == 0 || (unsigned)size > CTX_FETCH_MAX) {
		log_err("xen: dom%u: Xen sizes the HVM context at %d bytes "
			"(limit %u)",
			d->domid, size, CTX_FETCH_MAX);
		return -EPROTO;
	}
	buf = malloc((size_t)size);
	if (!buf)
		return -ENOMEM;
	len = xc_domain_hvm_getcontext(d->xch, d->domid, buf, (uint32_t)size);
	if (len < 0) {
		err = errno ? -errno : -EIO;
		log_err("xen: dom%u: XEN_DOMCTL_gethvmcontext: %s", d->domid,
			strerror(-err));
		free(buf);
		return err;
	}
	if (len > size) {
		log_err("xen: dom%u: Xen wrote %d bytes of HVM context into "
			"%d",
			d->domid, len, size);
		free(buf);
		return -EPROTO;
	}
	err = ctx_check(d->domid, "HVM context from Xen", buf, (uint32_t)len,
			d->nr_vcpus, -EPROTO);
	if (err) {
		free(buf);
		return err;
	}
	xen_ctx_invalidate(d);
	d->ctx = buf;
	d->ctx_len = (uint32_t)len;
	d->ctx_valid = true;
	return 0;
}

/* Load `len` bytes of context into the domain; the cache is dropped
 * whatever happens. */
static int ctx_load(struct hv_domain *d, const char *op, uint8_t *buf,
		    uint32_t len)
{
	int err = 0;

	if (xc_domain_hvm_setcontext(d->xch, d->domid, buf, len) < 0) {
		err = errno ? -errno : -EIO;
		log_err("xen: dom%u: %s: Xen rejected the HVM context of %u "
			"bytes: %s (Xen's reason is in `xl dmesg`)",
			d->domid, op, len, strerror(-err));
	}
	xen_ctx_invalidate(d);
	return err;
}

static void seg_out(struct hv_seg *o, uint32_t sel, uint32_t limit,
		    uint64_t base, uint32_t ar)
{
	*o = (struct hv_seg){.base = base,
			     .limit = limit,
			     .selector = (uint16_t)sel,
			     .type = ar & 0xf,
			     .s = (ar >> 4) & 1,
			     .dpl = (ar >> 5) & 3,
			     .present = (ar >> 7) & 1,
			     .avl = (ar >> 8) & 1,
			     .l = (ar >> 9) & 1,
			     .db = (ar >> 10) & 1,
			     .g = (ar >> 11) & 1};
	o->unusable = !o->present;
}

static uint32_t seg_ar(const struct hv_seg *s)
{
	uint32_t present = s->present && !s->unusable;

	return (uint32_t)s->type | (uint32_t)s->s << 4 | (uint32_t)s->dpl << 5 |
	       present << 7 | (uint32_t)s->avl << 8 | (uint32_t)s->l << 9 |
	       (uint32_t)s->db << 10 | (uint32_t)s->g << 11;
}

#define SEG_OUT(st, c, hv, x)                                                  \
	seg_out(&(st)->hv, (c)->x##_sel, (c)->x##_limit, (c)->x##_base,        \
		(c)->x##_arbytes)
#define SEG_IN(c, st, hv, x)                                                   \
	do {                                                                   \
		(c)->x##_sel = (st)->hv.selector;                              \
		(c)->x##_limit = (st)->hv.limit;                               \
		(c)->x##_base = (st)->hv.base;                                 \
		(c)->x##_arbytes = seg_ar(&(st)->hv);                          \
	} while (0)

static void cpu_to_state(struct hv_vcpu_state *st, const struct hvm_hw_cpu *c)
{
	const uint64_t g[16] = {c->rax, c->rcx, c->rdx, c->rbx, c->rsp, c->rbp,
				c->rsi, c->rdi, c->r8,	c->r9,	c->r10, c->r11,
				c->r12, c->r13, c->r14, c->r15};

	memcpy(st->gpr, g, sizeof(g));
	st->rip = c->rip;
	st->rflags = c->rflags;
	SEG_OUT(st, c, cs, cs);
	SEG_OUT(st, c, ds, ds);
	SEG_OUT(st, c, es, es);
	SEG_OUT(st, c, fs, fs);
	SEG_OUT(st, c, gs, gs);
	SEG_OUT(st, c, ss, ss);
	SEG_OUT(st, c, tr, tr);
	SEG_OUT(st, c, ldt, ldtr);
	st->gdt = (struct hv_dtable){c->gdtr_base, (uint16_t)c->gdtr_limit};
	st->idt = (struct hv_dtable){c->idtr_base, (uint16_t)c->idtr_limit};
	st->cr0 = c->cr0;
	st->cr2 = c->cr2;
	st->cr3 = c->cr3;
	st->cr4 = c->cr4;
	st->efer = c->msr_efer;
	st->star = c->msr_star;
	st->lstar = c->msr_lstar;
	st->cstar = c->msr_cstar;
	st->sfmask = c->msr_syscall_mask;
	st->kernel_gs_base = c->shadow_gs;
	st->tsc_aux = c->msr_tsc_aux;
}

static void state_to_cpu(struct hvm_hw_cpu *c, const struct hv_vcpu_state *st)
{
	const uint64_t *g = st->gpr;

	c->rax = g[0];
	c->rcx = g[1];
	c->rdx = g[2];
	c->rbx = g[3];
	c->rsp = g[4];
	c->rbp = g[5];
	c->rsi = g[6];
	c->rdi = g[7];
	c->r8 = g[8];
	c->r9 = g[9];
	c->r10 = g[10];
	c->r11 = g[11];
	c->r12 = g[12];
	c->r13 = g[13];
	c->r14 = g[14];
	c->r15 = g[15];
	c->rip = st->rip;
	c->rflags = st->rflags;
	SEG_IN(c, st, cs, cs);
	SEG_IN(c, st, ds, ds);
	SEG_IN(c, st, es, es);
	SEG_IN(c, st, fs, fs);
	SEG_IN(c, st, gs, gs);
	SEG_IN(c, st, ss, ss);
	SEG_IN(c, st, tr, tr);
	SEG_IN(c, st, ldt, ldtr);
	c->gdtr_base = st->gdt.base;
	c->gdtr_limit = st->gdt.limit;
	c->idtr_base = st->idt.base;
	c->idtr_limit = st->idt.limit;
	c->cr0 = st->cr0;
	c->cr2 = st->cr2;
	c->cr3 = st->cr3;
	c->cr4 = st->cr4;
	c->msr_efer = st->efer;
	c->msr_star = st->star;
	c->msr_lstar = st->lstar;
	c->msr_cstar = st->cstar;
	c->msr_syscall_mask = st->sfmask;
	c->shadow_gs = st->kernel_gs_base;
	c->msr_tsc_aux = st->tsc_aux;
	memcpy(c->fpu_regs, st->xsave, FXSAVE_LEN);
	c->flags |= XEN_X86_FPU_INITIALISED;
}

/* The FXSAVE image of a vCPU that never used its FPU: FNINIT state. */
static void fxsave_reset(uint8_t *img)
{
	const uint16_t fcw = 0x37f;
	const uint32_t mxcsr = 0x1f80;

	memset(img, 0, FXSAVE_LEN);
	memcpy(img, &fcw, sizeof(fcw));
	memcpy(img + 24, &mxcsr, sizeof(mxcsr));
}

/*
 * hv_ops.vcpu_save: see the top of this file for what is carried.
 * -ENODATA for an offline vCPU, -EOPNOTSUPP for an XSAVE area larger
 * than HV_XSAVE_MAX, -EPROTO if Xen's records have unexpected sizes.
 */
int xen_vcpu_save(struct hv_domain *d, unsigned id, struct hv_vcpu_state *st)
{
	struct hvm_hw_cpu cpu;
	struct hvm_hw_lapic lapic;
	struct hvm_rec r;
	uint32_t tpr;
	int err;

	if (id >= d->nr_vcpus) {
		log_err("xen: dom%u: vcpu save: vCPU %u does not exist (%u "
			"vCPUs)",
			d->domid, id, d->nr_vcpus);
		return -EINVAL;
	}
	err = ctx_get(d, "vcpu save");
	if (err)
		return err;
	if (!ctx_find(d, CODE_CPU, (uint16_t)id, &r)) {
		log_err("xen: dom%u: vcpu save: vCPU %u is offline: Xen keeps "
			"no CPU record for it and struct hv_vcpu_state cannot "
			"express one (the HVM context device record does)",
			d->domid, id);
		return -ENODATA;
	}
	if (r.len != sizeof(cpu)) {
		log_err("xen: dom%u: vcpu save: vCPU %u's CPU record has %u "
			"bytes; these headers expect %zu",
			d->domid, id, r.len, sizeof(cpu));
		return -EPROTO;
	}
	memcpy(&cpu, r.body, sizeof(cpu));
	if (cpu.gdtr_limit > 0xffff || cpu.idtr_limit > 0xffff) {
		log_err("xen: dom%u: vcpu save: vCPU %u: GDTR limit 0x%x, IDTR "
			"limit 0x%x do not fit 16 bits",
			d->domid, id, cpu.gdtr_limit, cpu.idtr_limit);
		return -EPROTO;
	}
	memset(st, 0, sizeof(*st));
	cpu_to_state(st, &cpu);

	if (ctx_find(d, CODE_XSAVE, (uint16_t)id, &r)) {
		struct hvm_hw_cpu_xsave xh;

		if (r.len < XSAVE_HDR_LEN + XSAVE_MIN_LEN) {
			log_err("xen: dom%u: vcpu save: vCPU %u's CPU_XSAVE "
				"record has %u bytes, less than %u",
				d->domid, id, r.len,
				XSAVE_HDR_LEN + XSAVE_MIN_LEN);
			return -EPROTO;
		}
		if (r.len - XSAVE_HDR_LEN > HV_XSAVE_MAX) {
			log_err("xen: dom%u: vcpu save: vCPU %u's XSAVE area "
				"is %u bytes; struct hv_vcpu_state holds %u",
				d->domid, id, r.len - XSAVE_HDR_LEN,
				HV_XSAVE_MAX);
			return -EOPNOTSUPP;
		}
		memcpy(&xh, r.body, XSAVE_HDR_LEN);
		st->xcr0 = xh.xcr0;
		st->xsave_len = r.len - XSAVE_HDR_LEN;
		memcpy(st->xsave, r.body + XSAVE_HDR_LEN, st->xsave_len);
	} else {
		/* No XSAVE on this host: the FXSAVE image is all there is. */
		if (cpu.flags & XEN_X86_FPU_INITIALISED)
			memcpy(st->xsave, cpu.fpu_regs, FXSAVE_LEN);
		else
			fxsave_reset(st->xsave);
		st->xsave_len = FXSAVE_LEN;
	}

	if (ctx_find(d, CODE_LAPIC, (uint16_t)id, &r) &&
	    r.len == sizeof(lapic)) {
		memcpy(&lapic, r.body, sizeof(lapic));
		st->apic_base = lapic.apic_base_msr;
	}
	if (ctx_find(d, CODE_LREGS, (uint16_t)id, &r) &&
	    r.len == sizeof(struct hvm_hw_lapic_regs)) {
		memcpy(&tpr, r.body + APIC_TPR, sizeof(tpr));
		st->cr8 = (tpr >> 4) & 0xf;
	}
	return 0;
}

/* The checks Xen's CPU record load makes that we can make without the
 * domain's CPUID policy, so that a bad state fails before Xen sees it. */
static int check_state(const struct hv_domain *d, unsigned id,
		       const struct hv_vcpu_state *st)
{
	const struct {
		const char *name;
		const struct hv_seg *s;
	} segs[] = {{"cs", &st->cs}, {"ds", &st->ds},  {"es", &st->es},
		    {"fs", &st->fs}, {"gs", &st->gs},  {"ss", &st->ss},
		    {"tr", &st->tr}, {"ldt", &st->ldt}};
	const char *bad = NULL;
	size_t i;

	for (i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		const struct hv_seg *s = segs[i].s;

		if (s->type > 0xf || s->dpl > 3 || s->present > 1 || s->s > 1 ||
		    s->l > 1 || s->db > 1 || s->g > 1 || s->avl > 1 ||
		    s->unusable > 1) {
			log_err("xen: dom%u: vcpu load: vCPU %u segment %s: "
				"attribute out of range (type %u dpl %u)",
				d->domid, id, segs[i].name, s->type, s->dpl);
			return -EINVAL;
		}
	}
	if (st->cr0 & ~CR0_KNOWN)
		bad = "CR0 has reserved bits set";
	else if (!(st->cr0 & CR0_ET))
		bad = "CR0.ET is clear (Xen requires it)";
	else if ((st->cr0 & (CR0_PE | CR0_PG)) == CR0_PG)
		bad = "CR0.PG without CR0.PE";
	else if ((st->efer & EFER_LMA) &&
		 (!(st->efer & EFER_LME) || !(st->cr0 & CR0_PG)))
		bad = "EFER.LMA without EFER.LME and CR0.PG";
	else if (st->tsc_aux >> 32)
		bad = "TSC_AUX does not fit 32 bits";
	else if (st->cr8 > 0xf)
		bad = "CR8 above 15";
	if (bad) {
		log_err("xen: dom%u: vcpu load: vCPU %u: %s (cr0 0x%llx efer "
			"0x%llx tsc_aux 0x%llx cr8 0x%llx)",
			d->domid, id, bad, (unsigned long long)st->cr0,
			(unsigned long long)st->efer,
			(unsigned long long)st->tsc_aux,
			(unsigned long long)st->cr8);
		return -EINVAL;
	}
	if (st->xsave_len != FXSAVE_LEN &&
	    (st->xsave_len < XSAVE_MIN_LEN || st->xsave_len > HV_XSAVE_MAX)) {
		log_err("xen: dom%u: vcpu load: vCPU %u: XSAVE area of %u "
			"bytes: need %u (FXSAVE image) or %u..%u (XSAVE "
			"format)",
			d->domid, id, st->xsave_len, FXSAVE_LEN, XSAVE_MIN_LEN,
			HV_XSAVE_MAX);
		return -EINVAL;
	}
	if (st->xsave_len >= XSAVE_MIN_LEN) {
		uint64_t xcomp_bv;

		memcpy(&xcomp_bv, st->xsave + FXSAVE_LEN + 8, 8);
		if (xcomp_bv) {
			log_err("xen: dom%u: vcpu load: vCPU %u: compacted "
				"XSAVE area (XCOMP_BV 0x%llx); Xen loads the "
				"standard format only",
				d->domid, id, (unsigned long long)xcomp_bv);
			return -EINVAL;
		}
		if (!(st->xcr0 & 1)) {
			log_err("xen: dom%u: vcpu load: vCPU %u: XCR0 0x%llx "
				"lacks x87 (bit 0)",
				d->domid, id, (unsigned long long)st->xcr0);
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Build the CPU_XSAVE body for vCPU `id` from st (xsave_len >= 576) in
 * *out (malloc'd, *out_len bytes).  Xen wants exactly the area size of
 * the record's XCR0_ACCUM, which only Xen knows; so take the size and
 * XCR0_ACCUM of a record Xen produced whose XCR0_ACCUM covers every
 * component the state uses (XCR0 | XSTATE_BV): this vCPU's own, else any
 * vCPU's.  Bytes beyond that size belong to components outside XCR0_ACCUM
 * and so outside XSTATE_BV, i.e. in their init state: dropping them loses
 * nothing.  A shorter area is zero-filled.
 */
static int build_xsave(const struct hv_domain *d, unsigned id,
		       const struct hv_vcpu_state *st, uint8_t **out,
		       uint32_t *out_len)
{
	struct hvm_hw_cpu_xsave xh, th;
	struct hvm_rec r, tmpl = {0};
	uint64_t xstate_bv, need;
	uint32_t pos = 0, area;
	uint8_t *buf;

	memcpy(&xstate_bv, st->xsave + FXSAVE_LEN, 8);
	need = st->xcr0 | xstate_bv;
	if (ctx_find(d, CODE_XSAVE, (uint16_t)id, &r) &&
	    r.len >= XSAVE_HDR_LEN + XSAVE_MIN_LEN) {
		memcpy(&th, r.body, XSAVE_HDR_LEN);
		if ((th.xcr0_accum & need) == need)
			tmpl = r;
	}
	while (!tmpl.body && ctx_next(d->ctx, &pos, &r)) {
		if (r.type != CODE_XSAVE ||
		    r.len < XSAVE_HDR_LEN + XSAVE_MIN_LEN)
			continue;
		memcpy(&th, r.body, XSAVE_HDR_LEN);
		if ((th.xcr0_accum & need) == need)
			tmpl = r;
	}
	if (!tmpl.body) {
		log_err("xen: dom%u: vcpu load: vCPU %u uses XSAVE components "
			"0x%llx that no vCPU of this domain has enabled yet, "
			"so "
			"the area size Xen expects for them is unknown here; "
			"the HVM context device record carries them",
			d->domid, id, (unsigned long long)need);
		return -EOPNOTSUPP;
	}
	memcpy(&th, tmpl.body, XSAVE_HDR_LEN);
	area = tmpl.len - XSAVE_HDR_LEN;
	buf = calloc(1, tmpl.len);
	if (!buf)
		return -ENOMEM;
	xh = (struct hvm_hw_cpu_xsave){.xfeature_mask = th.xfeature_mask,
				       .xcr0 = st->xcr0,
				       .xcr0_accum = th.xcr0_accum};
	memcpy(buf, &xh, XSAVE_HDR_LEN);
	memcpy(buf + XSAVE_HDR_LEN, st->xsave,
	       st->xsave_len < area ? st->xsave_len : area);
	*out = buf;
	*out_len = tmpl.len;
	return 0;
}

static uint32_t emit(uint8_t *out, uint32_t o, uint16_t type, uint16_t instance,
		     const void *body, uint32_t len)
{
	struct hvm_save_descriptor desc = {
		.typecode = type, .instance = instance, .length = len};

	memcpy(out + o, &desc, DESC_SIZE);
	if (len)
		memcpy(out + o + DESC_SIZE, body, len);
	return o + DESC_SIZE + len;
}

/*
 * hv_ops.vcpu_load: the current context with vCPU `id`'s CPU record
 * replaced (kept fields: see the top of this file), its CPU_XSAVE record
 * replaced (XSAVE-format state) or dropped (a 512-byte FXSAVE image: XCR0
 * and extended state stay as they are), its APIC base (if st->apic_base
 * is not 0) and TPR patched; then loaded whole.  An offline vCPU gets a
 * new CPU record with Xen's reset debug registers and the TSC of an
 * online vCPU, and comes online.
 */
int xen_vcpu_load(struct hv_domain *d, unsigned id,
		  const struct hv_vcpu_state *st)
{
	struct hvm_hw_cpu cpu, ref;
	struct hvm_hw_lapic lapic;
	struct hvm_hw_lapic_regs lregs;
	struct hvm_rec r;
	bool have_cpu = false, have_ref = false, put_lapic = false;
	bool put_lregs = false, cpu_done = false, xs_done;
	uint8_t *xs = NULL, *out = NULL;
	uint32_t xs_len = 0, pos = 0, o = 0, tpr;
	size_t out_max;
	int err;

	if (id >= d->nr_vcpus) {
		log_err("xen: dom%u: vcpu load: vCPU %u does not exist (%u "
			"vCPUs)",
			d->domid, id, d->nr_vcpus);
		return -EINVAL;
	}
	err = check_state(d, id, st);
	if (err)
		return err;
	err = ctx_get(d, "vcpu load");
	if (err)
		return err;

	while (ctx_next(d->ctx, &pos, &r)) {
		if (r.type != CODE_CPU)
			continue;
		if (r.len != sizeof(cpu)) {
			log_err("xen: dom%u: vcpu load: vCPU %u's CPU record "
				"has %u bytes; these headers expect %zu",
				d->domid, r.instance, r.len, sizeof(cpu));
			return -EPROTO;
		}
		if (r.instance == id) {
			memcpy(&cpu, r.body, sizeof(cpu));
			have_cpu = true;
		} else if (!have_ref) {
			memcpy(&ref, r.body, sizeof(ref));
			have_ref = true;
		}
	}
	if (!have_cpu) {
		memset(&cpu, 0, sizeof(cpu));
		cpu.dr6 = 0xffff0ff0;
		cpu.dr7 = 0x400;
		cpu.tsc = have_ref ? ref.tsc : 0;
		log_info("xen: dom%u: vcpu load: vCPU %u was offline; it comes "
			 "online with this state",
			 d->domid, id);
	}
	state_to_cpu(&cpu, st);

	xs_done = st->xsave_len == FXSAVE_LEN; /* drop CPU_XSAVE */
	if (!xs_done) {
		err = build_xsave(d, id, st, &xs, &xs_len);
		if (err)
			return err;
	}
	if (ctx_find(d, CODE_LAPIC, (uint16_t)id, &r) &&
	    r.len == sizeof(lapic)) {
		memcpy(&lapic, r.body, sizeof(lapic));
		if (st->apic_base) {
			lapic.apic_base_msr = st->apic_base;
			put_lapic = true;
		}
	} else if (st->apic_base) {
		log_err("xen: dom%u: vcpu load: vCPU %u has no emulated local "
			"APIC record to take APIC base 0x%llx",
			d->domid, id, (unsigned long long)st->apic_base);
		err = -EOPNOTSUPP;
		goto out_free;
	}
	if (ctx_find(d, CODE_LREGS, (uint16_t)id, &r) &&
	    r.len == sizeof(lregs)) {
		memcpy(&lregs, r.body, sizeof(lregs));
		tpr = (uint32_t)st->cr8 << 4;
		memcpy(lregs.data + APIC_TPR, &tpr, sizeof(tpr));
		put_lregs = true;
	} else if (st->cr8) {
		log_err("xen: dom%u: vcpu load: vCPU %u has no emulated local "
			"APIC registers to take CR8 %llu",
			d->domid, id, (unsigned long long)st->cr8);
		err = -EOPNOTSUPP;
		goto out_free;
	}

	out_max = (size_t)d->ctx_len + 2 * DESC_SIZE + sizeof(cpu) + xs_len;
	out = malloc(out_max);
	if (!out) {
		err = -ENOMEM;
		goto out_free;
	}
	pos = 0;
	while (ctx_next(d->ctx, &pos, &r)) {
		bool mine = r.instance == id;

		/* CPU before CPU_XSAVE: Xen's CPU load resets the FPU. */
		if (mine && !cpu_done &&
		    (r.type == CODE_CPU || r.type == CODE_XSAVE)) {
			o = emit(out, o, CODE_CPU, (uint16_t)id, &cpu,
				 sizeof(cpu));
			cpu_done = true;
		}
		if (mine && r.type == CODE_CPU)
			continue;
		if (mine && r.type == CODE_XSAVE) {
			if (!xs_done)
				o = emit(out, o, CODE_XSAVE, (uint16_t)id, xs,
					 xs_len);
			xs_done = true;
			continue;
		}
		if (mine && r.type == CODE_LAPIC && put_lapic)
			o = emit(out, o, r.type, r.instance, &lapic,
				 sizeof(lapic));
		else if (mine && r.type == CODE_LREGS && put_lregs)
			o = emit(out, o, r.type, r.instance, &lregs,
				 sizeof(lregs));
		else
			o = emit(out, o, r.type, r.instance, r.body, r.len);
	}
	if (!cpu_done)
		o = emit(out, o, CODE_CPU, (uint16_t)id, &cpu, sizeof(cpu));
	if (!xs_done)
		o = emit(out, o, CODE_XSAVE, (uint16_t)id, xs, xs_len);
	o = emit(out, o, 0, 0, NULL, 0);
	err = ctx_load(d, "vcpu load", out, o);
out_free:
	free(out);
	free(xs);
	return err;
}

/* hv_ops.dev_save: the whole HVM context as one record; see xen_hv.h. */
int xen_dev_save(struct hv_domain *d, hv_dev_cb cb, void *ctx)
{
	struct hv_dev_rec rec;
	int err;

	err = ctx_get(d, "device save");
	if (err)
		return err;
	if (d->ctx_len > HV_DEV_BLOB_MAX) {
		log_err("xen: dom%u: device save: the HVM context is %u bytes, "
			"more than a device record holds (HV_DEV_BLOB_MAX, %u)",
			d->domid, d->ctx_len, HV_DEV_BLOB_MAX);
		return -E2BIG;
	}
	rec = (struct hv_dev_rec){.type = HV_DEV_XEN_HVM_CONTEXT,
				  .instance = 0,
				  .version = XEN_HVM_CONTEXT_VERSION,
				  .len = d->ctx_len,
				  .data = d->ctx};
	return cb(ctx, &rec);
}

/* hv_ops.dev_load: check the record and its framing, then load it whole
 * (every vCPU without a CPU record in it goes offline: Xen's rule). */
int xen_dev_load(struct hv_domain *d, const struct hv_dev_rec *rec)
{
	uint8_t *buf;
	int err;

	if (rec->type != HV_DEV_XEN_HVM_CONTEXT || rec->instance != 0) {
		log_err("xen: dom%u: device load: no device of type %u "
			"instance %u on the Xen backend (it has type %u "
			"instance 0: the HVM context)",
			d->domid, rec->type, rec->instance,
			HV_DEV_XEN_HVM_CONTEXT);
		return -EINVAL;
	}
	if (rec->version != XEN_HVM_CONTEXT_VERSION ||
	    rec->len > HV_DEV_BLOB_MAX) {
		log_err("xen: dom%u: device load: HVM context version %u, %u "
			"bytes; expected version %u, at most %u bytes",
			d->domid, rec->version, rec->len,
			XEN_HVM_CONTEXT_VERSION, HV_DEV_BLOB_MAX);
		return -EINVAL;
	}
	if (!d->pause_count) {
		log_err("xen: dom%u: device load needs the domain paused "
			"through hv_ops.pause",
			d->domid);
		return -EBUSY;
	}
	err = ctx_check(d->domid, "HVM context device record", rec->data,
			rec->len, d->nr_vcpus, -EINVAL);
	if (err)
		return err;
	/* Xen's call takes a non-const buffer. */
	buf = malloc(rec->len);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, rec->data, rec->len);
	err = ctx_load(d, "device load", buf, rec->len);
	free(buf);
	return err;
}
