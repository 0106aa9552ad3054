/* SPDX-License-Identifier: MIT */
/*
 * stream_wire.h - the ftengine stream format on the wire.
 *
 * Nothing but wire structures and constants live here; the normative text
 * is docs/stream-format.md.  All integers are little-endian.  Every struct
 * has its size pinned by a static assertion: changing one is a format
 * change (new record type or new major version), never an edit.
 *
 *   stream  := header record* END
 *   record  := ft_rec_hdr body[length] pad[(8 - length % 8) % 8] xxh64
 *
 * The trailing xxh64 (seed 0) covers the record header, the body and the
 * padding.  Padding bytes must be zero.
 */
#ifndef STREAM_WIRE_H
#define STREAM_WIRE_H

#include <stdint.h>

/* "FTSTx64\n": ftengine stream, x86-64 guest. */
#define FT_STREAM_MAGIC 0x0a34367854535446ULL
#define FT_STREAM_VERSION_MAJOR 1
#define FT_STREAM_VERSION_MINOR 2
/* The first minor version with FT_PAGE_XOR pages (a 1.0 stream has none). */
#define FT_STREAM_MINOR_XOR 1
/* The first with CKPT_BEGIN / CKPT_END (checkpoint epochs). */
#define FT_STREAM_MINOR_CKPT 2

/* The only page size of version 1. */
#define FT_PAGE_SHIFT 12
#define FT_PAGE_SIZE  (1u << FT_PAGE_SHIFT)

/* header.flags */
#define FT_STREAM_F_LIVE       0x1u /* sender keeps the VM running (migration) */
#define FT_STREAM_F_CHECKPOINT 0x2u /* checkpoint epochs follow (Remus)          */
#define FT_STREAM_F_KNOWN      (FT_STREAM_F_LIVE | FT_STREAM_F_CHECKPOINT)

struct ft_stream_hdr {
	uint64_t magic;
	uint16_t version_major;
	uint16_t version_minor;
	uint32_t page_shift;    /* FT_PAGE_SHIFT */
	uint32_t flags;         /* FT_STREAM_F_* ; unknown bits rejected     */
	uint32_t reserved0;     /* 0 */
	uint64_t reserved1;     /* 0 */
	uint64_t checksum;      /* xxh64 of the preceding 32 bytes, seed 0   */
};
_Static_assert(sizeof(struct ft_stream_hdr) == 40, "ft_stream_hdr");

struct ft_rec_hdr {
	uint32_t type;   /* REC_* | REC_F_OPTIONAL */
	uint32_t length; /* body bytes, excluding padding and checksum */
};
_Static_assert(sizeof(struct ft_rec_hdr) == 8, "ft_rec_hdr");

/* A reader skips an unknown record with this bit and rejects an unknown
 * record without it. */
#define REC_F_OPTIONAL 0x80000000u

enum ft_rec_type {
	REC_END          = 0x00, /* no body; last record                      */
	REC_DOMAIN       = 0x01, /* struct ft_rec_domain; first after header  */
	REC_PAGE_BATCH   = 0x02, /* ft_rec_page_batch + descs + page data     */
	REC_VCPU_X86     = 0x03, /* ft_rec_vcpu_x86 + xsave bytes             */
	REC_DEVICE       = 0x04, /* ft_rec_device + blob                      */
	REC_CKPT_BEGIN   = 0x05, /* ft_rec_ckpt_begin: an epoch begins (1.2)  */
	REC_CKPT_END     = 0x06, /* ft_rec_ckpt_end: the epoch is complete    */
	REC_DISK_WRITE   = 0x07, /* ft_rec_disk_write [+ data]: disk contents */
};
/* Optional types are macros: ISO C limits enumerators to int. */
#define REC_NOTE (0x08u | REC_F_OPTIONAL) /* free text, UTF-8, <= FT_NOTE_MAX */
/* Live migration barrier: a u64 sequence number.  A receiver that knows
 * it answers once it has applied every record before it; others skip it. */
#define REC_SYNC (0x09u | REC_F_OPTIONAL)
#define FT_NOTE_MAX 4096u

/* Largest body a reader accepts for any record (a full page batch). */
#define FT_PAGE_BATCH_MAX 1024u
#define FT_REC_BODY_MAX                                                     \
	(sizeof(struct ft_rec_page_batch) +                                 \
	 FT_PAGE_BATCH_MAX * (sizeof(struct ft_page_desc) + FT_PAGE_SIZE))

struct ft_rec_domain {
	uint64_t mem_size;  /* bytes, multiple of the page size, > 0 */
	uint32_t nr_vcpus;  /* 1..FT_MAX_VCPUS */
	uint32_t page_size; /* 1 << header.page_shift */
	uint64_t reserved;  /* 0 */
};
_Static_assert(sizeof(struct ft_rec_domain) == 24, "ft_rec_domain");
#define FT_MAX_VCPUS 64
#define FT_MEM_SIZE_MAX (1ULL << 40) /* largest mem_size a reader accepts */

/* Page batch: `count` descriptors, then each page's data in descriptor
 * order, data lengths as given by the descriptors. */
struct ft_rec_page_batch {
	uint32_t count;    /* 1..FT_PAGE_BATCH_MAX */
	uint32_t reserved; /* 0 */
};
_Static_assert(sizeof(struct ft_rec_page_batch) == 8, "ft_rec_page_batch");

enum ft_page_enc {
	FT_PAGE_RAW   = 0, /* len == page size                         */
	FT_PAGE_ZERO  = 1, /* len == 0: the page is all zero           */
	FT_PAGE_LZ4   = 2, /* len in 1..page size-1: LZ4 block          */
	FT_PAGE_XOR   = 3, /* len in 0..page size-1: xor-delta runs     */
};

/*
 * FT_PAGE_XOR data (from version 1.1): the xor of the page with the
 * frame's previous content in the same stream, as runs
 *
 *   run := skip, n, x[n]
 *
 * `skip` bytes unchanged (xor zero), then `n` bytes to xor into the
 * previous content, x[0..n).  skip and n are ULEB128 numbers of one or
 * two bytes (7 bits per byte, low bits first, bit 7 set on every byte
 * but the last), minimally encoded; n >= 1; the runs may not pass the
 * end of the page.  Bytes after the last run are unchanged.  No data at
 * all (len 0) means the page did not change.
 */
#define FT_XOR_LEN_BYTES_MAX 2 /* bytes of one ULEB128 length */

struct ft_page_desc {
	uint64_t pfn;      /* < domain mem_size / page size            */
	uint16_t enc;      /* ft_page_enc                               */
	uint16_t reserved; /* 0 */
	uint32_t len;      /* encoded bytes that follow for this page  */
};
_Static_assert(sizeof(struct ft_page_desc) == 16, "ft_page_desc");

struct ft_wire_seg {
	uint64_t base;
	uint32_t limit;
	uint16_t selector;
	uint8_t type, present, dpl, db, s, l, g, avl, unusable, reserved;
};
_Static_assert(sizeof(struct ft_wire_seg) == 24, "ft_wire_seg");

struct ft_rec_vcpu_x86 {
	uint32_t vcpu_id;
	uint32_t xsave_len; /* bytes of XSAVE area after this struct */
	uint64_t gpr[16];
	uint64_t rip, rflags;
	struct ft_wire_seg cs, ds, es, fs, gs, ss, tr, ldt;
	uint64_t gdt_base, idt_base;
	uint16_t gdt_limit, idt_limit;
	uint32_t reserved0;
	uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base, xcr0;
	uint64_t star, lstar, cstar, sfmask, kernel_gs_base, tsc_aux;
	uint64_t reserved[4];
};
_Static_assert(sizeof(struct ft_rec_vcpu_x86) == 8 + 128 + 16 + 8 * 24 +
	       16 + 8 + 8 * 8 + 6 * 8 + 32, "ft_rec_vcpu_x86");
#define FT_XSAVE_MAX 4096

struct ft_rec_device {
	uint32_t dev_type; /* HV_DEV_* numbering */
	uint32_t instance;
	uint32_t version;
	uint32_t len;      /* blob bytes following */
};
_Static_assert(sizeof(struct ft_rec_device) == 16, "ft_rec_device");
#define FT_DEVICE_BLOB_MAX (1u << 20)

/* Disk contents: `len` bytes at byte `offset` of disk `disk`, followed by
 * the data unless FT_DISK_F_ZERO (the range reads as zeros). */
struct ft_rec_disk_write {
	uint32_t disk;     /* disk index, 0.. */
	uint32_t flags;    /* FT_DISK_F_* */
	uint64_t offset;   /* bytes, multiple of FT_DISK_SECTOR */
	uint32_t len;      /* bytes, multiple of FT_DISK_SECTOR, 1..FT_DISK_WRITE_MAX */
	uint32_t reserved; /* 0 */
	uint64_t epoch;    /* checkpointing: the epoch of the write; 0 otherwise */
};
_Static_assert(sizeof(struct ft_rec_disk_write) == 32, "ft_rec_disk_write");
#define FT_DISK_F_ZERO 0x1u
#define FT_DISK_SECTOR 512u
#define FT_DISK_WRITE_MAX (1u << 20)
#define FT_MAX_DISKS 16

/*
 * Checkpoint epochs (from version 1.2, only with FT_STREAM_F_CHECKPOINT):
 *
 *   stream := header DOMAIN precopy* (epoch)* END
 *   epoch  := CKPT_BEGIN (PAGE_BATCH | DISK_WRITE | VCPU_X86 | DEVICE)*
 *             CKPT_END
 *
 * The records of an epoch are the changes since the previous epoch (the
 * first: since the pre-copy); a receiver applies an epoch only when its
 * CKPT_END arrives and checks out, all at once, and discards a partial
 * one.  Each epoch carries every vCPU once and its devices; its
 * DISK_WRITE records carry its number.  Epoch numbers rise by one.
 */
struct ft_rec_ckpt_begin {
	uint64_t epoch;
	uint64_t reserved; /* 0 */
};
_Static_assert(sizeof(struct ft_rec_ckpt_begin) == 16, "ft_rec_ckpt_begin");

struct ft_rec_ckpt_end {
	uint64_t epoch;	       /* as in its CKPT_BEGIN */
	uint32_t pages;	       /* page frames in the epoch's PAGE_BATCHes */
	uint32_t disk_writes;  /* DISK_WRITE records */
	uint32_t vcpus;	       /* VCPU_X86 records (the domain's nr_vcpus) */
	uint32_t devices;      /* DEVICE records */
	uint64_t reserved;     /* 0 */
};
_Static_assert(sizeof(struct ft_rec_ckpt_end) == 32, "ft_rec_ckpt_end");

#endif /* STREAM_WIRE_H */
