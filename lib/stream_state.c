// SPDX-License-Identifier: MIT
/*
 * stream_state.c - VCPU_X86 and DEVICE records <-> hv structs.
 *
 * The host is little-endian (stream.c asserts it), so wire structs are
 * filled and read field by field in host order.
 */
#include "stream_state.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "log.h"

_Static_assert(FT_XSAVE_MAX == HV_XSAVE_MAX, "XSAVE area limits differ");
_Static_assert(FT_DEVICE_BLOB_MAX == HV_DEV_BLOB_MAX, "blob limits differ");

/* Where each segment register lives in the wire and the hv structs. */
#define SEG(x)                                                                 \
	{                                                                      \
#x, offsetof(struct ft_rec_vcpu_x86, x),                       \
			offsetof(struct hv_vcpu_state, x)                      \
	}
static const struct seg_map {
	const char *name;
	size_t wire, hv;
} segs[] = {SEG(cs), SEG(ds), SEG(es), SEG(fs),
	    SEG(gs), SEG(ss), SEG(tr), SEG(ldt)};
#define NR_SEGS (sizeof(segs) / sizeof(segs[0]))

/* True if every attribute of `s` is in range and its reserved byte 0. */
static bool wire_seg_ok(const struct ft_wire_seg *s)
{
	return s->type <= 0xf && s->dpl <= 3 && s->present <= 1 && s->db <= 1 &&
	       s->s <= 1 && s->l <= 1 && s->g <= 1 && s->avl <= 1 &&
	       s->unusable <= 1 && !s->reserved;
}

int stream_write_vcpu(struct stream_writer *w, uint32_t id,
		      const struct hv_vcpu_state *st)
{
	struct ft_rec_vcpu_x86 v = {
		.vcpu_id = id,
		.xsave_len = st->xsave_len,
		.rip = st->rip,
		.rflags = st->rflags,
		.gdt_base = st->gdt.base,
		.idt_base = st->idt.base,
		.gdt_limit = st->gdt.limit,
		.idt_limit = st->idt.limit,
		.cr0 = st->cr0,
		.cr2 = st->cr2,
		.cr3 = st->cr3,
		.cr4 = st->cr4,
		.cr8 = st->cr8,
		.efer = st->efer,
		.apic_base = st->apic_base,
		.xcr0 = st->xcr0,
		.star = st->star,
		.lstar = st->lstar,
		.cstar = st->cstar,
		.sfmask = st->sfmask,
		.kernel_gs_base = st->kernel_gs_base,
		.tsc_aux = st->tsc_aux,
	};
	struct iovec iov[2];

	if (id >= FT_MAX_VCPUS || st->xsave_len > FT_XSAVE_MAX) {
		log_err("stream writer: vCPU %u with %u bytes of XSAVE area "
			"(limits: id < %u, %u bytes)",
			id, st->xsave_len, FT_MAX_VCPUS, FT_XSAVE_MAX);
		return -EINVAL;
	}
	memcpy(v.gpr, st->gpr, sizeof(v.gpr));
	for (size_t i = 0; i < NR_SEGS; i++) {
		const struct hv_seg *h =
			(const void *)((const char *)st + segs[i].hv);
		struct ft_wire_seg *ws = (void *)((char *)&v + segs[i].wire);

		*ws = (struct ft_wire_seg){
			.base = h->base,
			.limit = h->limit,
			.selector = h->selector,
			.type = h->type,
			.present = h->present,
			.dpl = h->dpl,
			.db = h->db,
			.s = h->s,
			.l = h->l,
			.g = h->g,
			.avl = h->avl,
			.unusable = h->unusable,
		};
		if (!wire_seg_ok(ws)) {
			log_err("stream writer: vCPU %u segment %s has "
				"attributes out of range (type %u dpl %u)",
				id, segs[i].name, h->type, h->dpl);
			return -EINVAL;
		}
	}
	iov[0] = (struct iovec){.iov_base = &v, .iov_len = sizeof(v)};
	iov[1] = (struct iovec){.iov_base = (void *)st->xsave,
				.iov_len = st->xsave_len};
	return stream_write_recordv(w, REC_VCPU_X86, iov, 2);
}

int stream_decode_vcpu(struct stream_reader *r, const struct stream_rec *rec,
		       uint32_t *id, struct hv_vcpu_state *st)
{
	struct ft_rec_vcpu_x86 v;

	if (r->err)
		return r->err;
	if (rec->type != REC_VCPU_X86 || rec->len < sizeof(v))
		return stream_rec_fail(r, rec, -EINVAL,
				       "not a VCPU_X86 record");
	memcpy(&v, rec->body, sizeof(v));
	if (v.xsave_len > HV_XSAVE_MAX || rec->len != sizeof(v) + v.xsave_len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "length %u does not match xsave_len %u",
				       rec->len, v.xsave_len);
	if (v.reserved0 || v.reserved[0] || v.reserved[1] || v.reserved[2] ||
	    v.reserved[3])
		return stream_rec_fail(r, rec, -EINVAL,
				       "vCPU %u: reserved field not zero",
				       v.vcpu_id);
	for (size_t i = 0; i < NR_SEGS; i++) {
		const struct ft_wire_seg *s =
			(const void *)((const char *)&v + segs[i].wire);

		if (!wire_seg_ok(s))
			return stream_rec_fail(
				r, rec, -EINVAL,
				"vCPU %u segment %s: attribute out of range or "
				"reserved byte set (type %u present %u dpl %u "
				"db %u s %u l %u g %u avl %u unusable %u "
				"reserved %u)",
				v.vcpu_id, segs[i].name, s->type, s->present,
				s->dpl, s->db, s->s, s->l, s->g, s->avl,
				s->unusable, s->reserved);
	}

	memset(st, 0, sizeof(*st));
	memcpy(st->gpr, v.gpr, sizeof(st->gpr));
	st->rip = v.rip;
	st->rflags = v.rflags;
	for (size_t i = 0; i < NR_SEGS; i++) {
		const struct ft_wire_seg *ws =
			(const void *)((const char *)&v + segs[i].wire);
		struct hv_seg *h = (void *)((char *)st + segs[i].hv);

		*h = (struct hv_seg){
			.base = ws->base,
			.limit = ws->limit,
			.selector = ws->selector,
			.type = ws->type,
			.present = ws->present,
			.dpl = ws->dpl,
			.db = ws->db,
			.s = ws->s,
			.l = ws->l,
			.g = ws->g,
			.avl = ws->avl,
			.unusable = ws->unusable,
		};
	}
	st->gdt = (struct hv_dtable){.base = v.gdt_base, .limit = v.gdt_limit};
	st->idt = (struct hv_dtable){.base = v.idt_base, .limit = v.idt_limit};
	st->cr0 = v.cr0;
	st->cr2 = v.cr2;
	st->cr3 = v.cr3;
	st->cr4 = v.cr4;
	st->cr8 = v.cr8;
	st->efer = v.efer;
	st->apic_base = v.apic_base;
	st->xcr0 = v.xcr0;
	st->star = v.star;
	st->lstar = v.lstar;
	st->cstar = v.cstar;
	st->sfmask = v.sfmask;
	st->kernel_gs_base = v.kernel_gs_base;
	st->tsc_aux = v.tsc_aux;
	st->xsave_len = v.xsave_len;
	memcpy(st->xsave, (const unsigned char *)rec->body + sizeof(v),
	       v.xsave_len);
	*id = v.vcpu_id;
	return 0;
}

int stream_write_device(struct stream_writer *w, const struct hv_dev_rec *dev)
{
	struct ft_rec_device d = {
		.dev_type = dev->type,
		.instance = dev->instance,
		.version = dev->version,
		.len = dev->len,
	};
	struct iovec iov[2] = {
		{.iov_base = &d, .iov_len = sizeof(d)},
		{.iov_base = (void *)dev->data, .iov_len = dev->len},
	};

	if (dev->len > FT_DEVICE_BLOB_MAX) {
		log_err("stream writer: device type %u instance %u: blob of "
			"%u bytes exceeds the limit %u",
			dev->type, dev->instance, dev->len, FT_DEVICE_BLOB_MAX);
		return -E2BIG;
	}
	return stream_write_recordv(w, REC_DEVICE, iov, 2);
}

int stream_decode_device(struct stream_reader *r, const struct stream_rec *rec,
			 struct hv_dev_rec *dev)
{
	struct ft_rec_device d;

	if (r->err)
		return r->err;
	if (rec->type != REC_DEVICE || rec->len < sizeof(d))
		return stream_rec_fail(r, rec, -EINVAL, "not a DEVICE record");
	memcpy(&d, rec->body, sizeof(d));
	if (rec->len != sizeof(d) + (uint64_t)d.len)
		return stream_rec_fail(r, rec, -EINVAL,
				       "length %u is not %zu + blob length %u",
				       rec->len, sizeof(d), d.len);
	*dev = (struct hv_dev_rec){
		.type = d.dev_type,
		.instance = d.instance,
		.version = d.version,
		.len = d.len,
		.data = (const unsigned char *)rec->body + sizeof(d),
	};
	return 0;
}

int stream_write_disk(struct stream_writer *w, uint32_t disk, uint64_t offset,
		      uint32_t len, const void *data, uint64_t epoch)
{
	struct ft_rec_disk_write h = { .disk = htole32(disk),
				       .flags = htole32(data ? 0
							     : FT_DISK_F_ZERO),
				       .offset = htole64(offset),
				       .len = htole32(len),
				       .epoch = htole64(epoch) };
	struct iovec iov[2] = { { &h, sizeof(h) },
				{ (void *)data, data ? len : 0 } };

	if (disk >= FT_MAX_DISKS || !len || len > FT_DISK_WRITE_MAX ||
	    len % FT_DISK_SECTOR || offset % FT_DISK_SECTOR)
		return -EINVAL;
	return stream_write_recordv(w, REC_DISK_WRITE, iov, data ? 2 : 1);
}

int stream_decode_disk(struct stream_reader *r, const struct stream_rec *rec,
		       uint64_t disk_size, struct stream_disk_write *dw)
{
	struct ft_rec_disk_write h;
	uint32_t flags;
	uint64_t want;

	if (r->err)
		return r->err;
	if (rec->type != REC_DISK_WRITE || rec->len < sizeof(h))
		return stream_rec_fail(r, rec, -EINVAL,
				       "not a DISK_WRITE record");
	memcpy(&h, rec->body, sizeof(h));
	dw->disk = le32toh(h.disk);
	flags = le32toh(h.flags);
	dw->offset = le64toh(h.offset);
	dw->len = le32toh(h.len);
	dw->epoch = le64toh(h.epoch);
	if (flags & ~FT_DISK_F_ZERO)
		return stream_rec_fail(r, rec, -EINVAL, "unknown flags 0x%x",
				       flags);
	if (h.reserved)
		return stream_rec_fail(r, rec, -EINVAL,
				       "reserved field not zero (0x%x)",
				       le32toh(h.reserved));
	if (!dw->len || dw->len > FT_DISK_WRITE_MAX ||
	    dw->len % FT_DISK_SECTOR || dw->offset % FT_DISK_SECTOR)
		return stream_rec_fail(r, rec, -EINVAL,
				       "disk %u: range %llu+%u is not whole "
				       "sectors of %u bytes (at most %u)",
				       dw->disk,
				       (unsigned long long)dw->offset, dw->len,
				       FT_DISK_SECTOR, FT_DISK_WRITE_MAX);
	want = sizeof(h) + ((flags & FT_DISK_F_ZERO) ? 0 : dw->len);
	if (rec->len != want)
		return stream_rec_fail(r, rec, -EINVAL,
				       "length %u, expected %llu for %u %s",
				       rec->len, (unsigned long long)want,
				       dw->len,
				       (flags & FT_DISK_F_ZERO) ? "zeroed bytes"
								: "data bytes");
	if (!disk_size)
		return stream_rec_fail(r, rec, -EINVAL,
				       "disk %u: this VM has no such disk",
				       dw->disk);
	if (dw->offset > disk_size || dw->len > disk_size - dw->offset)
		return stream_rec_fail(r, rec, -EINVAL,
				       "disk %u: range %llu+%u beyond its %llu "
				       "bytes",
				       dw->disk,
				       (unsigned long long)dw->offset, dw->len,
				       (unsigned long long)disk_size);
	dw->data = (flags & FT_DISK_F_ZERO)
			   ? NULL
			   : (const unsigned char *)rec->body + sizeof(h);
	return 0;
}
