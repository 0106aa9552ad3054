// SPDX-License-Identifier: MIT
/*
 * test_stream.c - stream writer and reader: round trips of every record
 * and page encoding, and the exact error (code and message naming the
 * record) for each malformed stream the reader must reject.
 *
 * With FT_STREAM_DUMP_DIR set, the streams built here are also written to
 * that directory for tests/e2e/test_ftstream_check.sh: good-NAME.ftst
 * (valid) and bad-NAME.ftst with bad-NAME.expect, the C reader's message,
 * which the independent verifier must print too.
 */
#include <errno.h>
#include <lz4.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <cmocka.h>

#include "channel.h"
#include "log.h"
#include "pagecache.h"
#include "stream.h"
#include "stream_state.h"

#define MEM_PAGES 64
#define PG FT_PAGE_SIZE

/* ---- byte buffers and dumps ---- */

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void dump_file(const char *name, const char *ext, const void *d,
		      size_t n)
{
	const char *dir = getenv("FT_STREAM_DUMP_DIR");
	char path[512];
	FILE *f;

	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/%s.%s", dir, name, ext);
	f = fopen(path, "wb");
	assert_non_null(f);
	if (n)
		assert_int_equal(fwrite(d, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

/* ---- deterministic page contents ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void fill_random(void *p, size_t n)
{
	unsigned char *c = p;

	for (size_t i = 0; i < n; i++)
		c[i] = (unsigned char)rnd();
}

/* ---- raw stream crafting (independent of the writer) ---- */

static void raw_header_ex(struct buf *b, uint64_t magic, uint16_t major,
			  uint16_t minor, uint32_t shift, uint32_t flags,
			  uint32_t res0)
{
	struct ft_stream_hdr h = {
		.magic = magic,
		.version_major = major,
		.version_minor = minor,
		.page_shift = shift,
		.flags = flags,
		.reserved0 = res0,
	};

	h.checksum = XXH64(&h, 32, 0);
	buf_put(b, &h, sizeof(h));
}

static void raw_header(struct buf *b)
{
	raw_header_ex(b, FT_STREAM_MAGIC, 1, 0, 12, 0, 0);
}

/* A version 1.1 header: XOR pages allowed. */
static void raw_header11(struct buf *b)
{
	raw_header_ex(b, FT_STREAM_MAGIC, 1, 1, 12, 0, 0);
}

/* Append a record padded with `padbyte`, checksum correct; return its
 * offset. */
static size_t raw_rec_pad(struct buf *b, uint32_t type, const void *body,
			  uint32_t len, unsigned char padbyte)
{
	struct ft_rec_hdr h = {.type = type, .length = len};
	size_t off = b->len, pad = (8 - len % 8) % 8;
	unsigned char padding[8];
	uint64_t sum;

	memset(padding, padbyte, sizeof(padding));
	buf_put(b, &h, sizeof(h));
	buf_put(b, body, len);
	buf_put(b, padding, pad);
	sum = XXH64(b->p + off, b->len - off, 0);
	buf_put(b, &sum, sizeof(sum));
	return off;
}

static size_t raw_rec(struct buf *b, uint32_t type, const void *body,
		      uint32_t len)
{
	return raw_rec_pad(b, type, body, len, 0);
}

static void raw_domain(struct buf *b, uint64_t mem_size, uint32_t nr_vcpus)
{
	struct ft_rec_domain d = {
		.mem_size = mem_size, .nr_vcpus = nr_vcpus, .page_size = PG};

	raw_rec(b, REC_DOMAIN, &d, sizeof(d));
}

/* Header and a DOMAIN of MEM_PAGES pages and one vCPU. */
static void raw_start(struct buf *b)
{
	raw_header(b);
	raw_domain(b, MEM_PAGES * PG, 1);
}

static void raw_vcpu(struct buf *b, uint32_t id)
{
	struct ft_rec_vcpu_x86 v = {
		.vcpu_id = id, .rip = 0x100000, .rflags = 2};

	raw_rec(b, REC_VCPU_X86, &v, sizeof(v));
}

/* vCPU 0 and END: the valid end of a one-vCPU stream. */
static void raw_finish(struct buf *b)
{
	raw_vcpu(b, 0);
	raw_rec(b, REC_END, NULL, 0);
}

struct pdesc {
	uint64_t pfn;
	uint16_t enc, reserved;
	uint32_t len;
	const void *data; /* len bytes */
};

/* A PAGE_BATCH with `count` in its header (normally n) and descs d[n]. */
static void raw_batch_ex(struct buf *b, uint32_t count, uint32_t reserved,
			 const struct pdesc *d, unsigned n)
{
	struct ft_rec_page_batch bh = {.count = count, .reserved = reserved};
	struct buf body = {0};

	buf_put(&body, &bh, sizeof(bh));
	for (unsigned i = 0; i < n; i++) {
		struct ft_page_desc w = {.pfn = d[i].pfn,
					 .enc = d[i].enc,
					 .reserved = d[i].reserved,
					 .len = d[i].len};

		buf_put(&body, &w, sizeof(w));
	}
	for (unsigned i = 0; i < n; i++)
		buf_put(&body, d[i].data, d[i].len);
	raw_rec(b, REC_PAGE_BATCH, body.p, (uint32_t)body.len);
	buf_free(&body);
}

static void raw_batch(struct buf *b, const struct pdesc *d, unsigned n)
{
	raw_batch_ex(b, n, 0, d, n);
}

/* ---- reading a whole stream, the way a restorer does ---- */

#define SINK_DISK (256u << 10)

struct sink {
	unsigned char mem[MEM_PAGES][PG];
	bool got[MEM_PAGES]; /* mem[pfn] was received */
	struct hv_vcpu_state vcpu[2];
	unsigned vcpus;
	unsigned char dev[256];
	struct hv_dev_rec devrec;
	unsigned devices;
	char note[64];
	unsigned char disk[SINK_DISK]; /* disk 0 of the sink's VM */
	unsigned disk_writes;
	struct stream_stats stats;
	char msg[256];
};

static int store_page(void *ctx, uint64_t pfn, const void *page)
{
	struct sink *s = ctx;

	if (pfn >= MEM_PAGES)
		return -ERANGE; /* the reader let a bad pfn through */
	memcpy(s->mem[pfn], page, PG);
	s->got[pfn] = true;
	return 0;
}

static const void *sink_base(void *ctx, uint64_t pfn)
{
	struct sink *s = ctx;

	return pfn < MEM_PAGES && s->got[pfn] ? s->mem[pfn] : NULL;
}

static int handle(struct stream_reader *r, const struct stream_rec *rec,
		  struct sink *s)
{
	struct hv_vcpu_state *vs;
	struct hv_dev_rec dev;
	uint32_t id;
	int err;

	switch (rec->type) {
	case REC_PAGE_BATCH:
		return stream_decode_pages2(r, rec, store_page, s, sink_base);
	case REC_VCPU_X86:
		vs = malloc(sizeof(*vs));
		assert_non_null(vs);
		err = stream_decode_vcpu(r, rec, &id, vs);
		if (!err && id < 2)
			s->vcpu[id] = *vs;
		s->vcpus += !err;
		free(vs);
		return err;
	case REC_DEVICE:
		err = stream_decode_device(r, rec, &dev);
		if (err)
			return err;
		s->devrec = dev;
		if (dev.len <= sizeof(s->dev))
			memcpy(s->dev, dev.data, dev.len);
		s->devices++;
		return 0;
	case REC_NOTE:
		snprintf(s->note, sizeof(s->note), "%.*s", (int)rec->len,
			 (const char *)rec->body);
		return 0;
	case REC_DISK_WRITE: {
		struct stream_disk_write dw;

		/* the sink's VM has disk 0 only */
		uint32_t idx;

		memcpy(&idx, rec->body, sizeof(idx));
		err = stream_decode_disk(r, rec, idx ? 0 : SINK_DISK, &dw);
		if (err)
			return err;
		if (dw.data)
			memcpy(s->disk + dw.offset, dw.data, dw.len);
		else
			memset(s->disk + dw.offset, 0, dw.len);
		s->disk_writes++;
		return 0;
	}
	case REC_END:
		return stream_expect_eof(r);
	}
	return 0;
}

/* Read data[0..len) to the end; the reader's message goes to s->msg. */
static int read_stream(const void *data, size_t len, struct sink *s)
{
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *c;
	int err;

	assert_int_equal(chan_open_mem(&c, data, len, len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	err = stream_read_header(&r, NULL);
	while (!err) {
		err = stream_next(&r, &rec);
		if (!err)
			err = handle(&r, &rec, s);
		if (!err && rec.type == REC_END)
			break;
	}
	snprintf(s->msg, sizeof(s->msg), "%s", stream_reader_error(&r));
	s->stats = r.stats;
	stream_reader_fini(&r);
	chan_close(c);
	if (err)
		assert_true(!strncmp(s->msg, "header: ", 8) ||
			    !strncmp(s->msg, "record #", 8) ||
			    !strncmp(s->msg, "after END", 9));
	else
		assert_string_equal(s->msg, "");
	return err;
}

static struct sink *sink_new(void)
{
	struct sink *s = calloc(1, sizeof(*s));

	assert_non_null(s);
	return s;
}

/*
 * The stream in `b` must be rejected with `err` and exactly the message
 * `msg`.  Dumped as bad-NAME for the e2e test.
 */
static void expect_reject(const char *name, const struct buf *b, int err,
			  const char *msg)
{
	struct sink *s = sink_new();
	char dname[128];
	int rc;

	snprintf(dname, sizeof(dname), "bad-%s", name);
	dump_file(dname, "ftst", b->p, b->len);
	dump_file(dname, "expect", msg, strlen(msg));
	rc = read_stream(b->p, b->len, s);
	if (rc != err || strcmp(s->msg, msg))
		fail_msg("%s: got %d \"%s\"\n    expected %d \"%s\"", name, rc,
			 s->msg, err, msg);
	free(s);
}

/* ---- writer helpers ---- */

static void writer_open(struct stream_writer *w, struct chan **c,
			enum stream_compress comp)
{
	assert_int_equal(chan_open_mem(c, NULL, 0, 64u << 20), 0);
	assert_int_equal(stream_writer_init(w, *c, FT_STREAM_F_LIVE, comp), 0);
	assert_int_equal(stream_write_header(w), 0);
}

/* Copy what the writer produced into b and close both. */
static void writer_close(struct stream_writer *w, struct chan *c, struct buf *b)
{
	size_t n;
	const void *d = chan_mem_data(c, &n);

	assert_int_equal(c->bytes_out, w->stats.bytes);
	buf_put(b, d, n);
	stream_writer_fini(w);
	assert_int_equal(chan_close(c), 0);
}

static void vcpu_state(struct hv_vcpu_state *st, unsigned seed,
		       uint32_t xsave_len)
{
	struct hv_seg *segs[] = {&st->cs, &st->ds, &st->es, &st->fs,
				 &st->gs, &st->ss, &st->tr, &st->ldt};

	memset(st, 0, sizeof(*st));
	for (int i = 0; i < 16; i++)
		st->gpr[i] = seed * 1000 + (unsigned)i;
	st->rip = 0x100000 + seed;
	st->rflags = 0x202;
	for (unsigned i = 0; i < 8; i++)
		*segs[i] = (struct hv_seg){.base = 0x1000 * i,
					   .limit = 0xfffff,
					   .selector = (uint16_t)(8 * i),
					   .type = (uint8_t)(i + 3),
					   .present = 1,
					   .dpl = (uint8_t)(i % 4),
					   .db = i & 1,
					   .s = 1,
					   .l = !(i & 1),
					   .g = 1,
					   .avl = i == 2,
					   .unusable = i == 7};
	st->gdt = (struct hv_dtable){.base = 0x5000, .limit = 0x7f};
	st->idt = (struct hv_dtable){.base = 0x6000, .limit = 0xfff};
	st->cr0 = 0x80050033;
	st->cr2 = seed;
	st->cr3 = 0x2000;
	st->cr4 = 0x6a0;
	st->cr8 = 1;
	st->efer = 0xd01;
	st->apic_base = 0xfee00900;
	st->xcr0 = 7;
	st->star = 1;
	st->lstar = 2;
	st->cstar = 3;
	st->sfmask = 4;
	st->kernel_gs_base = 5;
	st->tsc_aux = seed;
	st->xsave_len = xsave_len;
	fill_random(st->xsave, xsave_len);
}

static void assert_seg_equal(const struct hv_seg *a, const struct hv_seg *b)
{
	assert_int_equal(a->base, b->base);
	assert_int_equal(a->limit, b->limit);
	assert_int_equal(a->selector, b->selector);
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->present, b->present);
	assert_int_equal(a->dpl, b->dpl);
	assert_int_equal(a->db, b->db);
	assert_int_equal(a->s, b->s);
	assert_int_equal(a->l, b->l);
	assert_int_equal(a->g, b->g);
	assert_int_equal(a->avl, b->avl);
	assert_int_equal(a->unusable, b->unusable);
}

static void assert_vcpu_equal(const struct hv_vcpu_state *a,
			      const struct hv_vcpu_state *b)
{
	assert_memory_equal(a->gpr, b->gpr, sizeof(a->gpr));
	assert_int_equal(a->rip, b->rip);
	assert_int_equal(a->rflags, b->rflags);
	assert_seg_equal(&a->cs, &b->cs);
	assert_seg_equal(&a->ds, &b->ds);
	assert_seg_equal(&a->es, &b->es);
	assert_seg_equal(&a->fs, &b->fs);
	assert_seg_equal(&a->gs, &b->gs);
	assert_seg_equal(&a->ss, &b->ss);
	assert_seg_equal(&a->tr, &b->tr);
	assert_seg_equal(&a->ldt, &b->ldt);
	assert_int_equal(a->gdt.base, b->gdt.base);
	assert_int_equal(a->gdt.limit, b->gdt.limit);
	assert_int_equal(a->idt.base, b->idt.base);
	assert_int_equal(a->idt.limit, b->idt.limit);
	assert_int_equal(a->cr0, b->cr0);
	assert_int_equal(a->cr2, b->cr2);
	assert_int_equal(a->cr3, b->cr3);
	assert_int_equal(a->cr4, b->cr4);
	assert_int_equal(a->cr8, b->cr8);
	assert_int_equal(a->efer, b->efer);
	assert_int_equal(a->apic_base, b->apic_base);
	assert_int_equal(a->xcr0, b->xcr0);
	assert_int_equal(a->star, b->star);
	assert_int_equal(a->lstar, b->lstar);
	assert_int_equal(a->cstar, b->cstar);
	assert_int_equal(a->sfmask, b->sfmask);
	assert_int_equal(a->kernel_gs_base, b->kernel_gs_base);
	assert_int_equal(a->tsc_aux, b->tsc_aux);
	assert_int_equal(a->xsave_len, b->xsave_len);
	assert_memory_equal(a->xsave, b->xsave, a->xsave_len);
}

/* ---- the full stream used by round-trip and corruption tests ---- */

struct full {
	struct buf stream;
	unsigned char (*mem)[PG]; /* MEM_PAGES pages, as sent */
	struct hv_vcpu_state vcpu[2];
	unsigned char blob[100];
	struct stream_stats wstats;
};

/*
 * header, DOMAIN (MEM_PAGES pages, 2 vCPUs), NOTE, every page of guest
 * RAM (random, zero, compressible and 3/4-random pages), an unknown
 * optional record, vCPU 1, a DEVICE, vCPU 0, an empty DEVICE, END.
 */
static void build_full(struct full *f, enum stream_compress comp)
{
	static const char note[] = "test_stream";
	unsigned char opt[13] = "optional!!!!";
	struct hv_dev_rec dev = {.type = HV_DEV_NET,
				 .instance = 0,
				 .version = 3,
				 .len = sizeof(f->blob),
				 .data = f->blob};
	struct hv_dev_rec empty = {.type = HV_DEV_CLOCK, .version = 1};
	uint64_t pfns[MEM_PAGES];
	void *pages[MEM_PAGES];
	struct stream_writer w;
	struct chan *c;

	memset(f, 0, sizeof(*f));
	f->mem = calloc(MEM_PAGES, PG);
	assert_non_null(f->mem);
	for (unsigned i = 0; i < MEM_PAGES; i++) {
		pfns[i] = MEM_PAGES - 1 - i; /* any order */
		pages[i] = f->mem[pfns[i]];
		switch (i % 4) {
		case 0:
			fill_random(pages[i], PG);
			break;
		case 1: /* zero */
			break;
		case 2:
			memset(pages[i], (int)i, PG);
			((unsigned char *)pages[i])[PG - 1] = 1;
			break;
		case 3:
			fill_random(pages[i], PG * 3 / 4 + 64);
			break;
		}
	}
	vcpu_state(&f->vcpu[0], 0, 576);
	vcpu_state(&f->vcpu[1], 1, 0);
	fill_random(f->blob, sizeof(f->blob));

	writer_open(&w, &c, comp);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 2), 0);
	assert_int_equal(
		stream_write_record(&w, REC_NOTE, note, sizeof(note) - 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES / 2), 0);
	assert_int_equal(stream_write_record(&w, 0x80001234u, opt, sizeof(opt)),
			 0);
	assert_int_equal(stream_write_pages(&w, pfns + MEM_PAGES / 2,
					    pages + MEM_PAGES / 2,
					    MEM_PAGES / 2),
			 0);
	assert_int_equal(stream_write_vcpu(&w, 1, &f->vcpu[1]), 0);
	assert_int_equal(stream_write_device(&w, &dev), 0);
	assert_int_equal(stream_write_vcpu(&w, 0, &f->vcpu[0]), 0);
	assert_int_equal(stream_write_device(&w, &empty), 0);
	assert_int_equal(stream_write_end(&w), 0);
	f->wstats = w.stats;
	writer_close(&w, c, &f->stream);
}

static void free_full(struct full *f)
{
	buf_free(&f->stream);
	free(f->mem);
}

static void check_full(struct full *f, const char *dump_name)
{
	struct sink *s = sink_new();

	dump_file(dump_name, "ftst", f->stream.p, f->stream.len);
	assert_int_equal(read_stream(f->stream.p, f->stream.len, s), 0);
	assert_memory_equal(s->mem, f->mem, sizeof(s->mem));
	assert_int_equal(s->vcpus, 2);
	assert_vcpu_equal(&s->vcpu[0], &f->vcpu[0]);
	assert_vcpu_equal(&s->vcpu[1], &f->vcpu[1]);
	assert_int_equal(s->devices, 2);
	assert_int_equal(s->devrec.type, HV_DEV_CLOCK); /* the last one */
	assert_int_equal(s->devrec.len, 0);
	assert_string_equal(s->note, "test_stream");
	assert_int_equal(s->stats.skipped, 1);
	assert_int_equal(s->stats.records, f->wstats.records);
	assert_int_equal(s->stats.bytes, f->stream.len);
	assert_int_equal(s->stats.pages_raw, f->wstats.pages_raw);
	assert_int_equal(s->stats.pages_zero, f->wstats.pages_zero);
	assert_int_equal(s->stats.pages_lz4, f->wstats.pages_lz4);
	free(s);
}

static void test_roundtrip_none(void **state)
{
	struct full f;

	build_full(&f, STREAM_COMP_NONE);
	assert_int_equal(f.wstats.pages_zero, MEM_PAGES / 4);
	assert_int_equal(f.wstats.pages_raw, MEM_PAGES * 3 / 4);
	assert_int_equal(f.wstats.pages_lz4, 0);
	check_full(&f, "good-full-none");
	free_full(&f);
}

static void test_roundtrip_lz4(void **state)
{
	struct full f;

	build_full(&f, STREAM_COMP_LZ4);
	/* Random and 3/4-random pages stay raw, patterns go LZ4. */
	assert_int_equal(f.wstats.pages_zero, MEM_PAGES / 4);
	assert_int_equal(f.wstats.pages_raw, MEM_PAGES / 2);
	assert_int_equal(f.wstats.pages_lz4, MEM_PAGES / 4);
	check_full(&f, "good-full-lz4");
	free_full(&f);
}

/* A device blob at its limit, and a page batch of the maximum size. */
static void test_roundtrip_limits(void **state)
{
	struct hv_dev_rec dev = {.type = HV_DEV_BLOCK,
				 .len = FT_DEVICE_BLOB_MAX};
	struct hv_vcpu_state *vs = malloc(sizeof(*vs));
	unsigned char *big = calloc(1, FT_DEVICE_BLOB_MAX);
	unsigned char *ram = malloc((size_t)FT_PAGE_BATCH_MAX * PG);
	uint64_t pfns[FT_PAGE_BATCH_MAX];
	void *pages[FT_PAGE_BATCH_MAX];
	struct stream_reader r;
	struct stream_writer w;
	struct stream_rec rec;
	struct buf b = {0};
	struct chan *c;

	assert_non_null(vs);
	assert_non_null(big);
	assert_non_null(ram);
	fill_random(ram, (size_t)FT_PAGE_BATCH_MAX * PG);
	for (unsigned i = 0; i < FT_PAGE_BATCH_MAX; i++) {
		pfns[i] = i;
		pages[i] = ram + (size_t)i * PG;
	}
	vcpu_state(vs, 0, FT_XSAVE_MAX);
	dev.data = big;
	writer_open(&w, &c, STREAM_COMP_NONE);
	assert_int_equal(stream_write_domain(&w, FT_MEM_SIZE_MAX, 64), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, FT_PAGE_BATCH_MAX),
			 0);
	assert_int_equal(stream_write_device(&w, &dev), 0);
	for (uint32_t i = 0; i < 64; i++)
		assert_int_equal(stream_write_vcpu(&w, i, vs), 0);
	assert_int_equal(stream_write_end(&w), 0);
	writer_close(&w, c, &b);

	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	do
		assert_int_equal(stream_next(&r, &rec), 0);
	while (rec.type != REC_END);
	assert_int_equal(stream_expect_eof(&r), 0);
	assert_int_equal(r.domain.mem_size, FT_MEM_SIZE_MAX);
	stream_reader_fini(&r);
	chan_close(c);
	buf_free(&b);

	/* The largest batch the format allows (the writer's are smaller). */
	{
		struct pdesc *d = calloc(FT_PAGE_BATCH_MAX, sizeof(*d));
		struct sink *s = sink_new();

		assert_non_null(d);
		for (unsigned i = 0; i < FT_PAGE_BATCH_MAX; i++)
			d[i] = (struct pdesc){i % MEM_PAGES, FT_PAGE_RAW, 0, PG,
					      pages[i]};
		raw_start(&b);
		raw_batch(&b, d, FT_PAGE_BATCH_MAX);
		raw_finish(&b);
		assert_int_equal(b.len, 80 + 16 + FT_REC_BODY_MAX + 528 + 16);
		assert_int_equal(read_stream(b.p, b.len, s), 0);
		assert_memory_equal(s->mem[0],
				    pages[FT_PAGE_BATCH_MAX - MEM_PAGES], PG);
		buf_free(&b);
		free(s);
		free(d);
	}
	free(ram);
	free(big);
	free(vs);
}

/* The stream of docs/stream-format.md, EXAMPLE. */
static void build_example(struct buf *b)
{
	static unsigned char page1[PG];
	static const unsigned char zero[PG];
	uint64_t pfns[2] = {0, 1};
	void *pages[2] = {(void *)zero, page1};
	struct hv_vcpu_state *vs = calloc(1, sizeof(*vs));
	struct stream_writer w;
	struct chan *c;

	assert_non_null(vs);
	memset(page1, 0xab, sizeof(page1));
	vs->rip = 0x100000;
	vs->rflags = 0x2;
	assert_int_equal(chan_open_mem(&c, NULL, 0, 1 << 20), 0);
	assert_int_equal(stream_writer_init(&w, c, 0, STREAM_COMP_LZ4), 0);
	assert_int_equal(stream_write_header(&w), 0);
	assert_int_equal(stream_write_domain(&w, 16 * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(stream_write_vcpu(&w, 0, vs), 0);
	assert_int_equal(stream_write_record(&w, REC_NOTE, "hi", 2), 0);
	assert_int_equal(stream_write_end(&w), 0);
	assert_int_equal(w.stats.pages_zero, 1);
	assert_int_equal(w.stats.pages_lz4, 1);
	writer_close(&w, c, b);
	free(vs);
}

static void test_example(void **state)
{
	struct sink *s = sink_new();
	struct buf b = {0};

	build_example(&b);
	dump_file("good-example", "ftst", b.p, b.len);
	assert_int_equal(read_stream(b.p, b.len, s), 0);
	assert_int_equal(s->mem[1][0], 0xab);
	assert_int_equal(s->mem[1][PG - 1], 0xab);
	assert_string_equal(s->note, "hi");
	buf_free(&b);
	free(s);
}

/* DISK_WRITE: data and zeroed ranges land where they say; every
 * malformed one is rejected with a message naming it. */
static void test_disk_write(void **state)
{
	static unsigned char data[8192];
	struct stream_writer w;
	struct chan *c;
	struct sink *s = sink_new();
	struct buf b = {0};
	struct ft_rec_disk_write h;
	unsigned char body[sizeof(h) + 512];

	for (unsigned i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7 + 1);
	writer_open(&w, &c, STREAM_COMP_NONE);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_disk(&w, 0, 4096, 8192, data, 0), 0);
	assert_int_equal(stream_write_disk(&w, 0, 8192, 512, NULL, 0), 0);
	assert_int_equal(stream_write_disk(&w, 0, SINK_DISK - 512, 512, data,
					   7),
			 0);
	/* the writer refuses what no reader takes */
	assert_int_equal(stream_write_disk(&w, 0, 100, 512, data, 0), -EINVAL);
	assert_int_equal(stream_write_disk(&w, 0, 0, 0, data, 0), -EINVAL);
	assert_int_equal(stream_write_disk(&w, 0, 0, 2u << 20, data, 0),
			 -EINVAL);
	assert_int_equal(stream_write_disk(&w, FT_MAX_DISKS, 0, 512, data, 0),
			 -EINVAL);
	assert_int_equal(stream_write_vcpu(&w, 0, &(struct hv_vcpu_state){
						       .rip = 0x100000,
						       .rflags = 2}),
			 0);
	assert_int_equal(stream_write_end(&w), 0);
	writer_close(&w, c, &b);
	dump_file("good-disk", "ftst", b.p, b.len);
	assert_int_equal(read_stream(b.p, b.len, s), 0);
	assert_int_equal(s->disk_writes, 3);
	assert_memory_equal(s->disk + 4096, data, 4096);
	assert_memory_equal(s->disk + 8192, (unsigned char[512]){0}, 512);
	assert_memory_equal(s->disk + 8704, data + 4608, 8192 - 4608);
	assert_memory_equal(s->disk + SINK_DISK - 512, data, 512);
	buf_free(&b);

	/* malformed records, one at a time */
	struct {
		const char *name;
		struct ft_rec_disk_write h;
		uint32_t data_len;
		const char *msg;
	} bad[] = {
		{"disk-flags", {.flags = 4, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: unknown flags 0x4"},
		{"disk-reserved", {.reserved = 1, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: reserved field not zero "
		 "(0x1)"},
		{"disk-misaligned", {.offset = 100, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: disk 0: range 100+512 is "
		 "not whole sectors of 512 bytes (at most 1048576)"},
		{"disk-empty", {.len = 0}, 0,
		 "record #1 (DISK_WRITE) at offset 80: disk 0: range 0+0 is not "
		 "whole sectors of 512 bytes (at most 1048576)"},
		{"disk-short", {.len = 1024}, 512,
		 "record #1 (DISK_WRITE) at offset 80: length 544, expected 1056 "
		 "for 1024 data bytes"},
		{"disk-zero-data", {.flags = FT_DISK_F_ZERO, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: length 544, expected 32 "
		 "for 512 zeroed bytes"},
		{"disk-beyond", {.offset = SINK_DISK, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: disk 0: range 262144+512 "
		 "beyond its 262144 bytes"},
		{"disk-no-such", {.disk = 1, .len = 512}, 512,
		 "record #1 (DISK_WRITE) at offset 80: disk 1: this VM has no "
		 "such disk"},
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct buf e = {0};

		h = bad[i].h;
		memcpy(body, &h, sizeof(h));
		memset(body + sizeof(h), 0x5a, 512);
		raw_start(&e);
		raw_rec(&e, REC_DISK_WRITE, body, sizeof(h) + bad[i].data_len);
		raw_finish(&e);
		if (h.disk || h.offset >= SINK_DISK) {
			/* Only the receiver knows its disks: not a case for
			 * the stand-alone verifier (no dump). */
			struct sink *t = sink_new();

			assert_int_equal(read_stream(e.p, e.len, t), -EINVAL);
			assert_string_equal(t->msg, bad[i].msg);
			free(t);
		} else {
			expect_reject(bad[i].name, &e, -EINVAL, bad[i].msg);
		}
		buf_free(&e);
	}
	free(s);
}

/* ---- corruption of a valid stream ---- */

/* Cut a small valid stream at every offset: always -EPIPE. */
static void test_truncated_everywhere(void **state)
{
	struct sink *s = sink_new();
	struct buf b = {0};

	build_example(&b);
	for (size_t n = 0; n < b.len; n++) {
		int rc = read_stream(b.p, n, s);

		if (rc != -EPIPE)
			fail_msg("cut at %zu: %d \"%s\"", n, rc, s->msg);
	}
	buf_free(&b);
	free(s);
}

/* Flip every byte of a valid stream in turn: always rejected. */
static void test_flip_every_byte(void **state)
{
	struct sink *s = sink_new();
	struct buf b = {0};

	build_example(&b);
	for (size_t i = 0; i < b.len; i++) {
		int rc;

		b.p[i] ^= 0x20;
		rc = read_stream(b.p, b.len, s);
		b.p[i] ^= 0x20;
		if (rc >= 0)
			fail_msg("flip at %zu accepted", i);
	}
	buf_free(&b);
	free(s);
}

/* A flipped body (or trailer) byte in each record is a checksum error
 * naming that record. */
static void test_flip_each_record(void **state)
{
	struct stream_reader r;
	struct stream_rec rec;
	struct sink *s = sink_new();
	uint64_t offs[32], lens[32];
	uint32_t types[32];
	unsigned n = 0;
	struct full f;
	struct chan *c;
	char want[160];

	build_full(&f, STREAM_COMP_LZ4);
	/* Where is each record?  (The reader itself says.) */
	assert_int_equal(
		chan_open_mem(&c, f.stream.p, f.stream.len, f.stream.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	do {
		assert_int_equal(stream_next(&r, &rec), 0);
		offs[n] = rec.offset;
		lens[n] = rec.len;
		types[n++] = rec.type;
	} while (rec.type != REC_END);
	stream_reader_fini(&r);
	chan_close(c);
	assert_int_equal(n, 9); /* the skipped record is not returned */

	for (unsigned i = 0; i < n; i++) {
		uint64_t at = offs[i] + 8 + lens[i] / 2;
		uint64_t idx = i < 3 ? i : i + 1; /* after the skipped one */

		if (!lens[i])
			at = offs[i] + 8; /* END: its trailer */
		f.stream.p[at] ^= 1;
		assert_int_equal(read_stream(f.stream.p, f.stream.len, s),
				 -EBADMSG);
		f.stream.p[at] ^= 1;
		snprintf(want, sizeof(want),
			 "record #%llu (%s) at offset %llu: checksum mismatch",
			 (unsigned long long)idx, stream_rec_name(types[i]),
			 (unsigned long long)offs[i]);
		if (strncmp(s->msg, want, strlen(want)))
			fail_msg("\"%s\" does not start with \"%s\"", s->msg,
				 want);
	}
	free_full(&f);
	free(s);
}

/* ---- malformed headers ---- */

static void test_bad_header(void **state)
{
	static const char elf[40] = "\177ELF\2\1\1";
	struct buf b = {0};

	expect_reject("empty", &b, -EPIPE,
		      "header: stream ends after 0 of 40 header bytes");
	buf_put(&b, elf, sizeof(elf));
	expect_reject("magic", &b, -EINVAL,
		      "header: not an ftengine stream (magic 7f 45 4c 46 ..., "
		      "expected \"FTSTx64\\n\")");
	buf_free(&b);

	raw_header_ex(&b, 0x0a34366d54535446ULL, 1, 0, 12, 0, 0); /* FTSTm64 */
	expect_reject("arch", &b, -ENOEXEC,
		      "header: stream for another architecture (\"m64\"; this "
		      "reader handles \"x64\")");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 2, 0, 12, 0, 0);
	expect_reject("major", &b, -EPROTONOSUPPORT,
		      "header: version 2.0 not supported (this reader reads "
		      "1.0 to 1.2)");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 1, 3, 12, 0, 0);
	expect_reject("minor", &b, -EPROTONOSUPPORT,
		      "header: version 1.3 not supported (this reader reads "
		      "1.0 to 1.2)");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 1, 0, 13, 0, 0);
	expect_reject("page-shift", &b, -EINVAL,
		      "header: page shift 13 not supported (only 12)");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 1, 0, 12, 0x6, 0);
	expect_reject("flags", &b, -EINVAL, "header: unknown flags 0x4");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 1, 0, 12, 0, 7);
	expect_reject("hdr-reserved", &b, -EINVAL,
		      "header: reserved fields not zero (0x7, 0x0)");
	buf_free(&b);

	raw_header(&b);
	b.p[24] = 1; /* reserved1, checksum now wrong */
	expect_reject("hdr-checksum", &b, -EBADMSG,
		      "header: checksum mismatch (stored 0x688de37bc6f42491, "
		      "computed 0x6c49f9a900cdad13)");
	buf_free(&b);

	raw_header(&b);
	b.len = 39;
	expect_reject("hdr-short", &b, -EPIPE,
		      "header: stream ends after 39 of 40 header bytes");
	buf_free(&b);
}

/* ---- framing and order ---- */

static void test_bad_framing(void **state)
{
	static const unsigned char five[5] = "hello";
	struct ft_rec_hdr h = {.type = REC_PAGE_BATCH,
			       .length = FT_REC_BODY_MAX + 1};
	struct buf b = {0};
	unsigned char junk[8] = {0};

	raw_start(&b);
	raw_rec(&b, REC_NOTE, five, 5);
	expect_reject("no-end", &b, -EPIPE,
		      "record #2 at offset 104: stream ends without END");
	buf_put(&b, junk, 3);
	expect_reject("cut-rec-hdr", &b, -EPIPE,
		      "record #2 at offset 104: stream ends inside the record "
		      "header (3 of 8 bytes)");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, REC_NOTE, five, 5);
	b.len -= 9;
	expect_reject("cut-rec", &b, -EPIPE,
		      "record #1 (NOTE) at offset 80: stream ends inside the "
		      "record (7 of 16 bytes after the record header)");
	buf_free(&b);

	raw_start(&b);
	raw_rec_pad(&b, REC_NOTE, five, 5, 0x01);
	raw_finish(&b);
	expect_reject("padding", &b, -EINVAL,
		      "record #1 (NOTE) at offset 80: padding byte 0 is 0x01, "
		      "not zero");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, REC_NOTE, five, 5);
	b.p[b.len - 1] ^= 0x80;
	raw_finish(&b);
	expect_reject(
		"checksum", &b, -EBADMSG,
		"record #1 (NOTE) at offset 80: checksum mismatch "
		"(stored 0xba5874f3a5b67728, computed 0x3a5874f3a5b67728)");
	buf_free(&b);

	/* Over the cap: rejected from the record header alone. */
	raw_start(&b);
	buf_put(&b, &h, sizeof(h));
	expect_reject("oversize-batch", &b, -E2BIG,
		      "record #1 (PAGE_BATCH) at offset 80: length 4210697 "
		      "exceeds the limit 4210696");
	buf_free(&b);

	raw_start(&b);
	h = (struct ft_rec_hdr){.type = 0x80000042u, .length = 0xffffffffu};
	buf_put(&b, &h, sizeof(h));
	expect_reject("oversize-optional", &b, -E2BIG,
		      "record #1 (type 0x80000042) at offset 80: length "
		      "4294967295 exceeds the limit 4210696");
	buf_free(&b);

	{
		unsigned char note[FT_NOTE_MAX + 1] = {0};

		raw_start(&b);
		raw_rec(&b, REC_NOTE, note, sizeof(note));
		expect_reject("oversize-note", &b, -E2BIG,
			      "record #1 (NOTE) at offset 80: length 4097 "
			      "exceeds the limit 4096");
		buf_free(&b);
	}

	raw_start(&b);
	raw_rec(&b, REC_END, junk, 8);
	expect_reject(
		"end-body", &b, -E2BIG,
		"record #1 (END) at offset 80: length 8 exceeds the limit "
		"0");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, 0x42, junk, 8);
	raw_finish(&b);
	expect_reject("unknown-mandatory", &b, -EOPNOTSUPP,
		      "record #1 (type 0x00000042) at offset 80: unknown "
		      "mandatory record");
	buf_free(&b);

	/* Checkpoint records: their exact sizes, allocated types. */
	raw_start(&b);
	raw_rec(&b, REC_CKPT_BEGIN, NULL, 0);
	raw_finish(&b);
	expect_reject("ckpt-begin-empty", &b, -EINVAL,
		      "record #1 (CKPT_BEGIN) at offset 80: length 0 below "
		      "the minimum 16");
	buf_free(&b);
	raw_start(&b);
	raw_rec(&b, 0x80000006u, junk, 8);
	raw_finish(&b);
	expect_reject("ckpt-end-optional", &b, -EINVAL,
		      "record #1 (type 0x80000006) at offset 80: type "
		      "0x80000006: CKPT_END is allocated as 0x00000006");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, 0x08, five, 5);
	raw_finish(&b);
	expect_reject("note-mandatory", &b, -EINVAL,
		      "record #1 (type 0x00000008) at offset 80: type "
		      "0x00000008: NOTE is allocated as 0x80000008");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86 | REC_F_OPTIONAL, junk, 8);
	raw_finish(&b);
	expect_reject("vcpu-optional", &b, -EINVAL,
		      "record #1 (type 0x80000003) at offset 80: type "
		      "0x80000003: VCPU_X86 is allocated as 0x00000003");
	buf_free(&b);
}

static void test_bad_order(void **state)
{
	struct buf b = {0};

	raw_header(&b);
	raw_rec(&b, REC_END, NULL, 0);
	expect_reject("no-domain", &b, -EINVAL,
		      "record #0 (END) at offset 40: DOMAIN missing: the first "
		      "record must be DOMAIN");
	buf_free(&b);

	raw_header(&b);
	raw_rec(&b, REC_NOTE, "x", 1);
	raw_domain(&b, MEM_PAGES * PG, 1);
	raw_finish(&b);
	expect_reject(
		"note-first", &b, -EINVAL,
		"record #0 (NOTE) at offset 40: DOMAIN missing: the first "
		"record must be DOMAIN");
	buf_free(&b);

	raw_header(&b);
	raw_rec(&b, 0x80000042u, "x", 1);
	raw_domain(&b, MEM_PAGES * PG, 1);
	raw_finish(&b);
	expect_reject("optional-first", &b, -EINVAL,
		      "record #0 (type 0x80000042) at offset 40: DOMAIN "
		      "missing: the first record must be DOMAIN");
	buf_free(&b);

	raw_start(&b);
	raw_domain(&b, MEM_PAGES * PG, 1);
	raw_finish(&b);
	expect_reject("dup-domain", &b, -EINVAL,
		      "record #1 (DOMAIN) at offset 80: duplicate DOMAIN "
		      "(first was record #0)");
	buf_free(&b);

	raw_start(&b);
	raw_finish(&b);
	raw_rec(&b, REC_NOTE, "late", 4);
	expect_reject("after-end", &b, -EINVAL,
		      "record #3 (NOTE) at offset 624: record after END");
	buf_free(&b);

	raw_start(&b);
	raw_finish(&b);
	buf_put(&b, "\0\0\0", 3);
	expect_reject("stray-bytes", &b, -EINVAL,
		      "after END at offset 624: 3 stray bytes");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, REC_END, NULL, 0);
	expect_reject("end-no-vcpu", &b, -EINVAL,
		      "record #1 (END) at offset 80: vCPU 0 of 1 never sent");
	buf_free(&b);
}

/* ---- DOMAIN ---- */

static void test_bad_domain(void **state)
{
	static const struct {
		const char *name;
		struct ft_rec_domain d;
		int err;
		const char *msg;
	} cases[] = {
		{"mem-zero",
		 {0, 1, PG, 0},
		 -EINVAL,
		 "mem_size 0 is not a positive multiple of the page size "
		 "4096"},
		{"mem-unaligned",
		 {4097, 1, PG, 0},
		 -EINVAL,
		 "mem_size 4097 is not a positive multiple of the page size "
		 "4096"},
		{"mem-huge",
		 {1ULL << 41, 1, PG, 0},
		 -E2BIG,
		 "mem_size 2199023255552 exceeds the limit 1099511627776"},
		{"vcpus-zero",
		 {PG, 0, PG, 0},
		 -EINVAL,
		 "nr_vcpus 0 outside 1..64"},
		{"vcpus-65",
		 {PG, 65, PG, 0},
		 -EINVAL,
		 "nr_vcpus 65 outside 1..64"},
		{"page-size",
		 {2 * PG, 1, 2 * PG, 0},
		 -EINVAL,
		 "page_size 8192 does not match the header's page shift 12"},
		{"dom-reserved",
		 {PG, 1, PG, 5},
		 -EINVAL,
		 "reserved field not zero (0x5)"},
	};
	struct buf b = {0};
	char msg[256], name[64];

	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		raw_header(&b);
		raw_rec(&b, REC_DOMAIN, &cases[i].d, sizeof(cases[i].d));
		raw_finish(&b);
		snprintf(msg, sizeof(msg),
			 "record #0 (DOMAIN) at offset 40: %s", cases[i].msg);
		snprintf(name, sizeof(name), "domain-%s", cases[i].name);
		expect_reject(name, &b, cases[i].err, msg);
		buf_free(&b);
	}

	raw_header(&b);
	raw_rec(&b, REC_DOMAIN, &cases[0].d, 16);
	expect_reject("domain-short", &b, -EINVAL,
		      "record #0 (DOMAIN) at offset 40: length 16 below the "
		      "minimum 24");
	buf_free(&b);

	{
		unsigned char big[25] = {0};

		raw_header(&b);
		raw_rec(&b, REC_DOMAIN, big, sizeof(big));
		expect_reject("domain-long", &b, -E2BIG,
			      "record #0 (DOMAIN) at offset 40: length 25 "
			      "exceeds the limit 24");
		buf_free(&b);
	}
}

/* ---- PAGE_BATCH ---- */

static void test_bad_pages(void **state)
{
	static unsigned char page[PG], half[PG / 2], big[2 * PG];
	static unsigned char lz4_half[PG], lz4_big[PG];
	static const unsigned char garbage[16] = {0xff, 0xff, 0xff, 0xff};
	/* Hand-made blocks, each decoding to 4096 bytes: 'a', a match of
	 * 4090 (token 0x1f, extension 255 * 15 + 246), then 5 literals;
	 * with offset 0, or offset 2 (before the start of the output). */
#define LZ4_A_4090(off)                                                        \
	0x1f, 'a', off, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,   \
		255, 255, 255, 255, 255, 246, 0x50, 'b', 'b', 'b', 'b', 'b'
	static const unsigned char lz4_ok[] = {LZ4_A_4090(1)};
	static const unsigned char lz4_off0[] = {LZ4_A_4090(0)};
	static const unsigned char lz4_far[] = {LZ4_A_4090(2)};
	/* A match of 4091, then only 4 literals. */
	static const unsigned char lz4_last4[] = {
		0x1f, 'a', 1,	 0,   255, 255, 255, 255, 255,
		255,  255, 255,	 255, 255, 255, 255, 255, 255,
		255,  247, 0x40, 'b', 'b', 'b', 'b'};
	/* 'a' + match of 4083, then 'c' + match of 4 starting 11 bytes
	 * before the end, then 7 literals. */
	static const unsigned char lz4_late[] = {
		0x1f, 'a', 1,	 0,   255, 255, 255, 255, 255, 255,  255,
		255,  255, 255,	 255, 255, 255, 255, 255, 239, 0x10, 'c',
		1,    0,   0x70, 'd', 'd', 'd', 'd', 'd', 'd', 'd'};
	int n_half, n_big;
	struct buf b = {0};

	memset(page, 0x5a, sizeof(page));
	memset(half, 0xab, sizeof(half));
	memset(big, 0xab, sizeof(big));
	n_half = LZ4_compress_default((const char *)half, (char *)lz4_half,
				      sizeof(half), sizeof(lz4_half));
	n_big = LZ4_compress_default((const char *)big, (char *)lz4_big,
				     sizeof(big), sizeof(lz4_big));
	assert_true(n_half > 0 && n_big > 0);

	const struct {
		const char *name;
		struct pdesc d;
		int err;
		const char *msg; /* %u: the descriptor's len */
	} cases[] = {
		{"pfn",
		 {MEM_PAGES, FT_PAGE_RAW, 0, PG, page},
		 -EINVAL,
		 "page 0 pfn 0x40 beyond guest RAM (64 pages)"},
		{"raw-len",
		 {1, FT_PAGE_RAW, 0, PG - 1, page},
		 -EINVAL,
		 "page 0 pfn 0x1: RAW length 4095, not 4096"},
		{"zero-len",
		 {1, FT_PAGE_ZERO, 0, 1, page},
		 -EINVAL,
		 "page 0 pfn 0x1: ZERO length 1, not 0"},
		{"lz4-len0",
		 {1, FT_PAGE_LZ4, 0, 0, page},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 length 0 outside 1..4095"},
		{"lz4-len4096",
		 {1, FT_PAGE_LZ4, 0, PG, page},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 length 4096 outside 1..4095"},
		{"xor-in-1.0",
		 {1, FT_PAGE_XOR, 0, 8, page},
		 -EOPNOTSUPP,
		 "page 0 pfn 0x1: XOR encoding is reserved in a 1.0 stream"},
		{"enc",
		 {1, 4, 0, 8, page},
		 -EINVAL,
		 "page 0 pfn 0x1: unknown encoding 4"},
		{"desc-reserved",
		 {1, FT_PAGE_RAW, 9, PG, page},
		 -EINVAL,
		 "page 0 pfn 0x1: reserved field not zero (0x9)"},
		{"lz4-short",
		 {1, FT_PAGE_LZ4, 0, (uint32_t)n_half, lz4_half},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) decodes to 2048 "
		 "bytes, not 4096"},
		{"lz4-long",
		 {1, FT_PAGE_LZ4, 0, (uint32_t)n_big, lz4_big},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) decodes to 8192 "
		 "bytes, not 4096"},
		{"lz4-garbage",
		 {1, FT_PAGE_LZ4, 0, sizeof(garbage), garbage},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) is corrupt"},
		{"lz4-offset0",
		 {1, FT_PAGE_LZ4, 0, sizeof(lz4_off0), lz4_off0},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) is corrupt"},
		{"lz4-offset-far",
		 {1, FT_PAGE_LZ4, 0, sizeof(lz4_far), lz4_far},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) is corrupt"},
		{"lz4-ends-matching",
		 {1, FT_PAGE_LZ4, 0, 20, lz4_ok},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) is corrupt"},
		{"lz4-last4",
		 {1, FT_PAGE_LZ4, 0, sizeof(lz4_last4), lz4_last4},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) breaks the "
		 "end-of-block rules"},
		{"lz4-late-match",
		 {1, FT_PAGE_LZ4, 0, sizeof(lz4_late), lz4_late},
		 -EINVAL,
		 "page 0 pfn 0x1: LZ4 data (%u bytes) breaks the "
		 "end-of-block rules"},
	};
	char msg[256], name[64], detail[128];

	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(detail, sizeof(detail), cases[i].msg, cases[i].d.len);
		raw_start(&b);
		raw_batch(&b, &cases[i].d, 1);
		raw_finish(&b);
		snprintf(msg, sizeof(msg),
			 "record #1 (PAGE_BATCH) at offset 80: %s", detail);
		snprintf(name, sizeof(name), "pages-%s", cases[i].name);
		expect_reject(name, &b, cases[i].err, msg);
		buf_free(&b);
	}

	/* The hand-made block itself is fine. */
	{
		struct pdesc ok = {7, FT_PAGE_LZ4, 0, sizeof(lz4_ok), lz4_ok};
		struct sink *s = sink_new();

		raw_start(&b);
		raw_batch(&b, &ok, 1);
		raw_finish(&b);
		dump_file("good-lz4-handmade", "ftst", b.p, b.len);
		assert_int_equal(read_stream(b.p, b.len, s), 0);
		assert_int_equal(s->mem[7][0], 'a');
		assert_int_equal(s->mem[7][PG - 6], 'a');
		assert_int_equal(s->mem[7][PG - 5], 'b');
		buf_free(&b);
		free(s);
	}

	/* Batch header and lengths. */
	struct pdesc two[2] = {{0, FT_PAGE_ZERO, 0, 0, NULL},
			       {1, FT_PAGE_RAW, 0, PG, page}};

	raw_start(&b);
	raw_batch_ex(&b, 0, 0, two, 2);
	raw_finish(&b);
	expect_reject("pages-count0", &b, -EINVAL,
		      "record #1 (PAGE_BATCH) at offset 80: page count 0 "
		      "outside 1..1024");
	buf_free(&b);

	raw_start(&b);
	raw_batch_ex(&b, 1025, 0, two, 2);
	raw_finish(&b);
	expect_reject("pages-count1025", &b, -EINVAL,
		      "record #1 (PAGE_BATCH) at offset 80: page count 1025 "
		      "outside 1..1024");
	buf_free(&b);

	raw_start(&b);
	raw_batch_ex(&b, 1, 3, two, 2);
	raw_finish(&b);
	expect_reject("pages-reserved", &b, -EINVAL,
		      "record #1 (PAGE_BATCH) at offset 80: reserved field not "
		      "zero (0x3)");
	buf_free(&b);

	raw_start(&b);
	raw_batch_ex(&b, 300, 0, two, 2);
	raw_finish(&b);
	expect_reject("pages-descs", &b, -EINVAL,
		      "record #1 (PAGE_BATCH) at offset 80: 300 descriptors do "
		      "not fit in 4136 bytes");
	buf_free(&b);

	/* Two descriptors declared, but a batch count of 1: the second
	 * descriptor's 16 bytes count as page data. */
	raw_start(&b);
	raw_batch_ex(&b, 1, 0, two, 2);
	raw_finish(&b);
	expect_reject("pages-total", &b, -EINVAL,
		      "record #1 (PAGE_BATCH) at offset 80: descriptors give 0 "
		      "data bytes, the record holds 4112");
	buf_free(&b);

	/* A bad descriptor after good ones: no page was applied. */
	{
		struct pdesc d[3] = {{2, FT_PAGE_RAW, 0, PG, page},
				     {3, FT_PAGE_ZERO, 0, 0, NULL},
				     {99, FT_PAGE_ZERO, 0, 0, NULL}};
		struct sink *s = sink_new();

		raw_start(&b);
		raw_batch(&b, d, 3);
		raw_finish(&b);
		assert_int_equal(read_stream(b.p, b.len, s), -EINVAL);
		assert_string_equal(s->msg,
				    "record #1 (PAGE_BATCH) at offset 80: page "
				    "2 pfn 0x63 beyond guest RAM (64 pages)");
		assert_int_equal(s->mem[2][0], 0);
		buf_free(&b);
		free(s);
	}
}

/* ---- VCPU_X86 and DEVICE ---- */

static void test_bad_vcpu(void **state)
{
	struct ft_rec_vcpu_x86 v = {0};
	unsigned char body[sizeof(v) + 8] = {0};
	struct buf b = {0};

	raw_start(&b);
	raw_vcpu(&b, 1);
	raw_finish(&b);
	expect_reject("vcpu-id", &b, -EINVAL,
		      "record #1 (VCPU_X86) at offset 80: vcpu_id 1 beyond the "
		      "domain's 1 vCPUs");
	buf_free(&b);

	raw_start(&b);
	raw_vcpu(&b, 0);
	raw_finish(&b);
	expect_reject("vcpu-twice", &b, -EINVAL,
		      "record #2 (VCPU_X86) at offset 608: vCPU 0 sent twice");
	buf_free(&b);

	raw_header(&b);
	raw_domain(&b, MEM_PAGES * PG, 2);
	raw_finish(&b);
	expect_reject("vcpu-missing", &b, -EINVAL,
		      "record #2 (END) at offset 608: vCPU 1 of 2 never sent");
	buf_free(&b);

	v.xsave_len = 5000;
	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, &v, sizeof(v));
	raw_finish(&b);
	expect_reject("vcpu-xsave-len", &b, -E2BIG,
		      "record #1 (VCPU_X86) at offset 80: xsave_len 5000 "
		      "exceeds the limit 4096");
	buf_free(&b);

	v.xsave_len = 16;
	memcpy(body, &v, sizeof(v));
	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, body, sizeof(body));
	raw_finish(&b);
	expect_reject(
		"vcpu-length", &b, -EINVAL,
		"record #1 (VCPU_X86) at offset 80: length 520 is not 512 "
		"+ xsave_len 16");
	buf_free(&b);

	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, body, sizeof(v) - 1);
	raw_finish(&b);
	expect_reject("vcpu-short", &b, -EINVAL,
		      "record #1 (VCPU_X86) at offset 80: length 511 below the "
		      "minimum 512");
	buf_free(&b);

	v = (struct ft_rec_vcpu_x86){.reserved[3] = 1};
	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, &v, sizeof(v));
	raw_finish(&b);
	expect_reject(
		"vcpu-reserved", &b, -EINVAL,
		"record #1 (VCPU_X86) at offset 80: vCPU 0: reserved field "
		"not zero");
	buf_free(&b);

	v = (struct ft_rec_vcpu_x86){.ss.dpl = 4};
	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, &v, sizeof(v));
	raw_finish(&b);
	expect_reject("vcpu-seg", &b, -EINVAL,
		      "record #1 (VCPU_X86) at offset 80: vCPU 0 segment ss: "
		      "attribute out of range or reserved byte set (type 0 "
		      "present 0 dpl 4 db 0 s 0 l 0 g 0 avl 0 unusable 0 "
		      "reserved 0)");
	buf_free(&b);

	v = (struct ft_rec_vcpu_x86){.ldt.reserved = 1};
	raw_start(&b);
	raw_rec(&b, REC_VCPU_X86, &v, sizeof(v));
	raw_finish(&b);
	expect_reject("vcpu-seg-reserved", &b, -EINVAL,
		      "record #1 (VCPU_X86) at offset 80: vCPU 0 segment ldt: "
		      "attribute out of range or reserved byte set (type 0 "
		      "present 0 dpl 0 db 0 s 0 l 0 g 0 avl 0 unusable 0 "
		      "reserved 1)");
	buf_free(&b);
}

static void test_bad_device(void **state)
{
	struct ft_rec_device d = {.dev_type = HV_DEV_NET,
				  .len = FT_DEVICE_BLOB_MAX + 1};
	unsigned char body[sizeof(d) + 8] = {0};
	struct buf b = {0};

	raw_start(&b);
	raw_rec(&b, REC_DEVICE, &d, sizeof(d));
	raw_finish(&b);
	expect_reject("device-blob-len", &b, -E2BIG,
		      "record #1 (DEVICE) at offset 80: blob length 1048577 "
		      "exceeds the limit 1048576");
	buf_free(&b);

	d.len = 9;
	memcpy(body, &d, sizeof(d));
	raw_start(&b);
	raw_rec(&b, REC_DEVICE, body, sizeof(body));
	raw_finish(&b);
	expect_reject("device-length", &b, -EINVAL,
		      "record #1 (DEVICE) at offset 80: length 24 is not 16 + "
		      "blob length 9");
	buf_free(&b);
}

/* ---- XOR pages ---- */

/* Flip k bytes of page p at pseudo-random offsets. */
static void scribble(unsigned char *p, unsigned k)
{
	for (unsigned i = 0; i < k; i++)
		p[rnd() % PG] ^= (unsigned char)(1 + rnd() % 255);
}

/* A writer to memory with page cache pc attached, header written. */
static void xwriter_open(struct stream_writer *w, struct chan **c,
			 enum stream_compress comp, struct pagecache *pc)
{
	assert_int_equal(chan_open_mem(c, NULL, 0, 64u << 20), 0);
	assert_int_equal(stream_writer_init(w, *c, FT_STREAM_F_LIVE, comp), 0);
	stream_writer_set_cache(w, pc);
	assert_int_equal(stream_write_header(w), 0);
}

/* vCPU 0 and END, then as writer_close; *st gets the writer's stats. */
static void xwriter_close(struct stream_writer *w, struct chan *c,
			  struct buf *b, struct stream_stats *st)
{
	static const struct hv_vcpu_state vs;

	assert_int_equal(stream_write_vcpu(w, 0, &vs), 0);
	assert_int_equal(stream_write_end(w), 0);
	*st = w->stats;
	writer_close(w, c, b);
}

struct desc_list {
	struct ft_page_desc d[512];
	unsigned n;
};

/* Every page descriptor of the (valid) stream in b, in order. */
static void collect_descs(const struct buf *b, struct desc_list *l)
{
	struct stream_reader r;
	struct stream_rec rec;
	struct chan *c;

	l->n = 0;
	assert_int_equal(chan_open_mem(&c, b->p, b->len, b->len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	do {
		struct ft_rec_page_batch bh;

		assert_int_equal(stream_next(&r, &rec), 0);
		if (rec.type != REC_PAGE_BATCH)
			continue;
		memcpy(&bh, rec.body, sizeof(bh));
		for (uint32_t i = 0; i < bh.count; i++) {
			assert_true(l->n < 512);
			memcpy(&l->d[l->n++],
			       (const unsigned char *)rec.body + sizeof(bh) +
				       i * sizeof(struct ft_page_desc),
			       sizeof(struct ft_page_desc));
		}
	} while (rec.type != REC_END);
	stream_reader_fini(&r);
	chan_close(c);
}

static void assert_desc(const struct desc_list *l, unsigned i, uint64_t pfn,
			uint16_t enc, uint32_t len)
{
	if (l->d[i].pfn != pfn || l->d[i].enc != enc || l->d[i].len != len)
		fail_msg("page %u: pfn %llu enc %u len %u, expected pfn %llu "
			 "enc %u len %u",
			 i, (unsigned long long)l->d[i].pfn, l->d[i].enc,
			 l->d[i].len, (unsigned long long)pfn, enc, len);
}

/*
 * Read b back; the guest RAM must be exp and the reader's page counts the
 * writer's.  With a name, dump the stream as NAME.ftst and the guest RAM
 * read as NAME.image, for the verifier to rebuild the same.
 */
static void check_xor_stream(const char *name, const struct buf *b,
			     const void *exp, const struct stream_stats *ws)
{
	struct sink *s = sink_new();

	assert_int_equal(read_stream(b->p, b->len, s), 0);
	if (name) {
		dump_file(name, "ftst", b->p, b->len);
		dump_file(name, "image", s->mem, sizeof(s->mem));
	}
	for (unsigned i = 0; i < MEM_PAGES; i++)
		if (memcmp(s->mem[i], (const unsigned char *)exp + i * PG, PG))
			fail_msg("page %u differs", i);
	assert_int_equal(s->stats.pages_raw, ws->pages_raw);
	assert_int_equal(s->stats.pages_zero, ws->pages_zero);
	assert_int_equal(s->stats.pages_lz4, ws->pages_lz4);
	assert_int_equal(s->stats.pages_xor, ws->pages_xor);
	assert_int_equal(s->stats.lz4_bytes, ws->lz4_bytes);
	assert_int_equal(s->stats.xor_bytes, ws->xor_bytes);
	assert_int_equal(s->stats.saved, ws->saved);
	assert_int_equal(s->stats.bytes, b->len);
	free(s);
}

/*
 * Three rounds through a cache that holds every page: the first sends
 * raw and zero pages, the second pages changed in many ways, the third
 * the same frame twice in one call.  Every page's encoding is what the
 * rules say, and the receiver ends with the sender's memory.
 */
static void test_xor_roundtrip(void **state)
{
	unsigned char(*mem)[PG] = calloc(MEM_PAGES, PG);
	unsigned char *twice = malloc(PG);
	uint64_t pfns[MEM_PAGES];
	void *pages[MEM_PAGES];
	struct stream_stats st;
	struct stream_writer w;
	struct desc_list *l = malloc(sizeof(*l));
	struct pagecache pc;
	struct buf b = {0};
	struct chan *c;
	unsigned i;

	assert_true(mem && twice && l);
	assert_int_equal(pagecache_init(&pc, MEM_PAGES * PG), 0);
	for (i = 0; i < MEM_PAGES; i++) {
		pfns[i] = i;
		pages[i] = mem[i];
		if (i % 4 != 1)
			fill_random(mem[i], PG);
	}
	xwriter_open(&w, &c, STREAM_COMP_NONE, &pc);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES), 0);
	assert_int_equal(w.stats.pages_xor, 0);
	assert_int_equal(pc.stats.misses, MEM_PAGES * 3 / 4);

	mem[0][100] ^= 1;		  /* 1 byte: skip 100, n 1: 3 bytes */
	mem[2][1000] ^= 1;		  /* skip 1000 takes 2 bytes: 4 */
	scribble(mem[3], 16);		  /* XOR */
	scribble(mem[4], 256);		  /* XOR */
	fill_random(mem[6] + 1024, 2048); /* 2 + 2 + 2048 */
	fill_random(mem[7], PG);	  /* RAW */
	/* 8: unchanged, XOR of length 0 */
	mem[9][5] = 1;		   /* was ZERO, not cached: RAW */
	memset(mem[10], 0, PG);	   /* ZERO, dropped from the cache */
	mem[11][PG - 1] ^= 0x80;   /* skip 4095, n 1: 4 */
	mem[12][0] ^= 0x80;	   /* skip 0, n 1: 3 */
	mem[14][200] ^= 1;	   /* two changes 2 bytes apart: one run */
	mem[14][203] ^= 1;	   /* skip 200, n 4: 7 */
	for (i = 0; i < 3069; i++) /* 1 + 2 + 3069: 3/4 page, XOR */
		mem[16][i] ^= 0xff;
	for (i = 0; i < 3070; i++) /* 1 + 2 + 3070: RAW */
		mem[18][i] ^= 0xff;
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES), 0);

	/* pfn 0 twice: the second is a delta against the first. */
	memcpy(twice, mem[0], PG);
	twice[7] ^= 0x42;
	mem[0][3000] ^= 0x42;
	mem[10][1] = 1;
	{
		uint64_t p3[3] = {0, 10, 0};
		void *v3[3] = {mem[0], mem[10], twice};

		assert_int_equal(stream_write_pages(&w, p3, v3, 3), 0);
		memcpy(mem[0], twice, PG);
	}
	xwriter_close(&w, c, &b, &st);
	check_xor_stream("good-xor-roundtrip", &b, mem, &st);

	collect_descs(&b, l);
	assert_int_equal(l->n, 2 * MEM_PAGES + 3);
	for (i = 0; i < MEM_PAGES; i++)
		assert_desc(l, i, i, i % 4 == 1 ? FT_PAGE_ZERO : FT_PAGE_RAW,
			    i % 4 == 1 ? 0 : PG);
	assert_desc(l, 64 + 0, 0, FT_PAGE_XOR, 3);
	assert_desc(l, 64 + 1, 1, FT_PAGE_ZERO, 0);
	assert_desc(l, 64 + 2, 2, FT_PAGE_XOR, 4);
	assert_int_equal(l->d[64 + 3].enc, FT_PAGE_XOR);
	assert_true(l->d[64 + 3].len <= 16 * 4);
	assert_int_equal(l->d[64 + 4].enc, FT_PAGE_XOR);
	assert_true(l->d[64 + 4].len <= 256 * 4);
	assert_desc(l, 64 + 6, 6, FT_PAGE_XOR, 2 + 2 + 2048);
	assert_desc(l, 64 + 7, 7, FT_PAGE_RAW, PG);
	assert_desc(l, 64 + 8, 8, FT_PAGE_XOR, 0);
	assert_desc(l, 64 + 9, 9, FT_PAGE_RAW, PG);
	assert_desc(l, 64 + 10, 10, FT_PAGE_ZERO, 0);
	assert_desc(l, 64 + 11, 11, FT_PAGE_XOR, 4);
	assert_desc(l, 64 + 12, 12, FT_PAGE_XOR, 3);
	assert_desc(l, 64 + 14, 14, FT_PAGE_XOR, 7);
	assert_desc(l, 64 + 15, 15, FT_PAGE_XOR, 0);
	assert_desc(l, 64 + 16, 16, FT_PAGE_XOR, PG * 3 / 4);
	assert_desc(l, 64 + 18, 18, FT_PAGE_RAW, PG);
	assert_desc(l, 128 + 0, 0, FT_PAGE_XOR, 2 + 1 + 1); /* 3000 */
	assert_desc(l, 128 + 1, 10, FT_PAGE_RAW, PG);
	/* 7 and 3000 (undone): 3 + 4 bytes */
	assert_desc(l, 128 + 2, 0, FT_PAGE_XOR, 3 + 4);
	assert_int_equal(st.pages_xor, MEM_PAGES * 3 / 4 - 3 + 2);
	assert_int_equal(pc.stats.drops, 1);
	assert_int_equal(pc.stats.evictions, 0);
	/* What the cache holds is what the receiver holds. */
	for (i = 0; i < MEM_PAGES; i++) {
		const void *cp = pagecache_peek(&pc, i);

		assert_true(!cp == (i % 4 == 1 && i != 9));
		if (cp)
			assert_memory_equal(cp, mem[i], PG);
	}

	pagecache_fini(&pc);
	buf_free(&b);
	free(l);
	free(twice);
	free(mem);
}

/* With LZ4 too: small deltas go XOR without trying LZ4, large ones the
 * smaller of XOR and LZ4, pages without a previous version LZ4 or RAW. */
static void test_xor_lz4(void **state)
{
	unsigned char(*mem)[PG] = calloc(8, PG);
	uint64_t pfns[8] = {0, 1, 2, 3, 4, 5, 6, 7};
	void *pages[8];
	struct stream_stats st;
	struct stream_writer w;
	struct desc_list *l = malloc(sizeof(*l));
	unsigned char(*exp)[PG] = calloc(MEM_PAGES, PG);
	struct pagecache pc;
	struct buf b = {0};
	struct chan *c;

	assert_true(mem && l && exp);
	for (unsigned i = 0; i < 8; i++)
		pages[i] = mem[i];
	memset(mem[0], 0x11, PG);
	memset(mem[1], 0x22, PG);
	memset(mem[2], 0x11, PG / 2);
	fill_random(mem[2] + PG / 2, PG / 2);
	memset(mem[3], 0x33, PG);
	fill_random(mem[4], PG);
	assert_int_equal(pagecache_init(&pc, 16 * PG), 0);
	xwriter_open(&w, &c, STREAM_COMP_LZ4, &pc);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 5), 0);
	assert_int_equal(w.stats.pages_lz4, 4);
	assert_int_equal(w.stats.pages_raw, 1);
	assert_int_equal(w.stats.lz4_tries, 5);

	mem[0][10] ^= 1;		      /* small delta: XOR, no LZ4 try */
	memset(mem[1], 0x23, PG);	      /* delta too big: LZ4 */
	fill_random(mem[2] + PG / 2, PG / 2); /* XOR 2052 beats LZ4 */
	memset(mem[3] + 100, 0x44, 1500);     /* XOR 1504 loses to LZ4 */
	scribble(mem[4], 8);		      /* XOR */
	assert_int_equal(stream_write_pages(&w, pfns, pages, 5), 0);
	assert_int_equal(w.stats.lz4_tries, 5 + 3);
	memcpy(exp, mem, 8 * PG);
	xwriter_close(&w, c, &b, &st);
	check_xor_stream("good-xor-lz4", &b, exp, &st);
	collect_descs(&b, l);
	assert_int_equal(l->n, 10);
	assert_desc(l, 5, 0, FT_PAGE_XOR, 3);
	assert_int_equal(l->d[6].enc, FT_PAGE_LZ4);
	assert_desc(l, 7, 2, FT_PAGE_XOR, 2 + 2 + PG / 2);
	assert_int_equal(l->d[8].enc, FT_PAGE_LZ4);
	assert_true(l->d[8].len < 100);
	assert_int_equal(l->d[9].enc, FT_PAGE_XOR);
	pagecache_fini(&pc);
	buf_free(&b);
	free(exp);
	free(l);
	free(mem);
}

/* A cache of two pages: misses go raw, and hits still decode right. */
static void test_xor_small_cache(void **state)
{
	unsigned char(*mem)[PG] = calloc(MEM_PAGES, PG);
	uint64_t pfns[MEM_PAGES];
	void *pages[MEM_PAGES];
	struct stream_stats st;
	struct stream_writer w;
	struct pagecache pc;
	struct buf b = {0};
	struct chan *c;

	assert_non_null(mem);
	assert_int_equal(pagecache_init(&pc, 3 * PG - 1), 0);
	assert_int_equal(pc.nr_slots, 2);
	for (unsigned i = 0; i < MEM_PAGES; i++) {
		fill_random(mem[i], PG);
		pfns[i] = i;
		pages[i] = mem[i];
	}
	xwriter_open(&w, &c, STREAM_COMP_NONE, &pc);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES), 0);
	for (unsigned i = 0; i < MEM_PAGES; i++) {
		mem[i][i] ^= 1;
		pfns[i] = MEM_PAGES - 1 - i; /* the last two sent come first */
		pages[i] = mem[pfns[i]];
	}
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES), 0);
	assert_int_equal(w.stats.pages_xor, 2);
	assert_int_equal(w.stats.pages_raw, 2 * MEM_PAGES - 2);
	assert_int_equal(pc.stats.hits, 2);
	assert_int_equal(pc.stats.misses, 2 * MEM_PAGES - 2);
	assert_int_equal(pc.stats.evictions, 2 * MEM_PAGES - 4);
	xwriter_close(&w, c, &b, &st);
	check_xor_stream("good-xor-small-cache", &b, mem, &st);
	pagecache_fini(&pc);
	buf_free(&b);
	free(mem);
}

#define TORN_PAGES 16

struct torn {
	unsigned char (*mem)[PG];
	int stop;
};

/* Keep writing bytes into the pages, as a guest would during migration. */
static void *torn_writer(void *arg)
{
	struct torn *t = arg;
	uint64_t x = 0x1234567;

	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		__atomic_store_n(&t->mem[x % TORN_PAGES][(x >> 8) % PG],
				 (unsigned char)(x >> 32), __ATOMIC_RELAXED);
	}
	return NULL;
}

/*
 * Pages that change while they are encoded: whatever arrives, the
 * receiver's copy of every frame is exactly the sender's cached copy, so
 * the next delta applies to the right base.
 */
static void test_xor_torn(void **state)
{
	struct torn t = {calloc(TORN_PAGES, PG), 0};
	uint64_t pfns[TORN_PAGES];
	void *pages[TORN_PAGES];
	struct stream_stats st;
	struct stream_writer w;
	struct pagecache pc;
	struct buf b = {0};
	struct sink *s = sink_new();
	struct chan *c;
	pthread_t th;

	assert_non_null(t.mem);
	for (unsigned i = 0; i < TORN_PAGES; i++) {
		pfns[i] = i;
		pages[i] = t.mem[i];
		fill_random(t.mem[i], PG / 2);
	}
	assert_int_equal(pagecache_init(&pc, TORN_PAGES * PG), 0);
	xwriter_open(&w, &c, STREAM_COMP_LZ4, &pc);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(pthread_create(&th, NULL, torn_writer, &t), 0);
	for (unsigned round = 0; round < 200; round++)
		assert_int_equal(
			stream_write_pages(&w, pfns, pages, TORN_PAGES), 0);
	__atomic_store_n(&t.stop, 1, __ATOMIC_RELAXED);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(w.stats.pages_xor > 0);
	xwriter_close(&w, c, &b, &st);
	assert_int_equal(read_stream(b.p, b.len, s), 0);
	dump_file("good-xor-torn", "ftst", b.p, b.len);
	dump_file("good-xor-torn", "image", s->mem, sizeof(s->mem));
	for (unsigned i = 0; i < TORN_PAGES; i++) {
		const void *cp = pagecache_peek(&pc, i);

		assert_non_null(cp);
		assert_memory_equal(cp, s->mem[i], PG);
	}
	pagecache_fini(&pc);
	buf_free(&b);
	free(s);
	free(t.mem);
}

/* A PAGE_BATCH of pages d[0..n) after a RAW page at pfn 1 (record #1),
 * in a 1.1 stream: the batch is record #2 at offset 4216. */
static void raw_xor_stream(struct buf *b, const struct pdesc *d, unsigned n)
{
	static unsigned char page[PG];
	struct pdesc first = {1, FT_PAGE_RAW, 0, PG, page};

	memset(page, 0x5a, sizeof(page));
	raw_header11(b);
	raw_domain(b, MEM_PAGES * PG, 1);
	raw_batch(b, &first, 1);
	assert_int_equal(b->len, 4216);
	raw_batch(b, d, n);
	raw_finish(b);
}

static void test_bad_xor(void **state)
{
	static const unsigned char cut_skip[] = {0x85};
	static const unsigned char cut_no_n[] = {0x05};
	static const unsigned char cut_n[] = {0x05, 0x81};
	static const unsigned char cut_lit[] = {0x05, 0x04, 0xaa, 0xbb};
	static const unsigned char cut_second[] = {0x05, 0x01, 0xaa, 0x00};
	static const unsigned char len3[] = {0x85, 0x80, 0x01, 0x01, 0xaa};
	static const unsigned char nonmin_skip[] = {0x85, 0x00, 0x01, 0xaa};
	static const unsigned char nonmin_n[] = {0x00, 0x81, 0x00, 0xaa};
	static const unsigned char empty[] = {0x05, 0x00};
	static const unsigned char empty2[] = {0x00, 0x01, 0xaa, 0x00, 0x00};
	static const unsigned char skip_past[] = {0x80, 0x20, 0x01, 0xaa};
	static const unsigned char skip_max[] = {0xff, 0x7f, 0x01, 0xaa};
	static unsigned char lit_past[3 + 100] = {0xa0, 0x1f, 100};
	static const unsigned char sum_past[] = {0x00, 0x01, 0xaa, 0xff,
						 0x1f, 0x01, 0xbb};
	static unsigned char whole[3 + 4092] = {0x00, 0xfc, 0x1f};
	static unsigned char page[PG];
	const struct {
		const char *name;
		struct pdesc d;
		int err;
		const char *msg; /* %u: the descriptor's len */
	} cases[] = {
		{"cut-skip",
		 {1, FT_PAGE_XOR, 0, sizeof(cut_skip), cut_skip},
		 -EINVAL,
		 "run at byte 0 is cut short"},
		{"cut-no-n",
		 {1, FT_PAGE_XOR, 0, sizeof(cut_no_n), cut_no_n},
		 -EINVAL,
		 "run at byte 0 is cut short"},
		{"cut-n",
		 {1, FT_PAGE_XOR, 0, sizeof(cut_n), cut_n},
		 -EINVAL,
		 "run at byte 0 is cut short"},
		{"cut-literal",
		 {1, FT_PAGE_XOR, 0, sizeof(cut_lit), cut_lit},
		 -EINVAL,
		 "run at byte 0 is cut short"},
		{"cut-second",
		 {1, FT_PAGE_XOR, 0, sizeof(cut_second), cut_second},
		 -EINVAL,
		 "run at byte 3 is cut short"},
		{"len-3-bytes",
		 {1, FT_PAGE_XOR, 0, sizeof(len3), len3},
		 -EINVAL,
		 "run at byte 0 has a length that is not a minimal 1- or "
		 "2-byte ULEB128"},
		{"len-nonminimal-skip",
		 {1, FT_PAGE_XOR, 0, sizeof(nonmin_skip), nonmin_skip},
		 -EINVAL,
		 "run at byte 0 has a length that is not a minimal 1- or "
		 "2-byte ULEB128"},
		{"len-nonminimal-n",
		 {1, FT_PAGE_XOR, 0, sizeof(nonmin_n), nonmin_n},
		 -EINVAL,
		 "run at byte 0 has a length that is not a minimal 1- or "
		 "2-byte ULEB128"},
		{"empty-run",
		 {1, FT_PAGE_XOR, 0, sizeof(empty), empty},
		 -EINVAL,
		 "run at byte 0 is empty"},
		{"empty-second-run",
		 {1, FT_PAGE_XOR, 0, sizeof(empty2), empty2},
		 -EINVAL,
		 "run at byte 3 is empty"},
		{"skip-past",
		 {1, FT_PAGE_XOR, 0, sizeof(skip_past), skip_past},
		 -EINVAL,
		 "run at byte 0 passes the end of the page (0 + 4096 + 1 > "
		 "4096)"},
		{"skip-max",
		 {1, FT_PAGE_XOR, 0, sizeof(skip_max), skip_max},
		 -EINVAL,
		 "run at byte 0 passes the end of the page (0 + 16383 + 1 > "
		 "4096)"},
		{"literal-past",
		 {1, FT_PAGE_XOR, 0, sizeof(lit_past), lit_past},
		 -EINVAL,
		 "run at byte 0 passes the end of the page (0 + 4000 + 100 > "
		 "4096)"},
		{"second-past",
		 {1, FT_PAGE_XOR, 0, sizeof(sum_past), sum_past},
		 -EINVAL,
		 "run at byte 3 passes the end of the page (1 + 4095 + 1 > "
		 "4096)"},
		{"len4096", {1, FT_PAGE_XOR, 0, PG, page}, -EINVAL, NULL},
		{"never-sent", {2, FT_PAGE_XOR, 0, 0, NULL}, -EINVAL, NULL},
	};
	char msg[256], detail[160], name[64];
	struct buf b = {0};

	memset(page, 0x5a, sizeof(page));
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].msg)
			snprintf(detail, sizeof(detail),
				 "page 0 pfn 0x1: XOR data (%u bytes): %s",
				 cases[i].d.len, cases[i].msg);
		else if (cases[i].d.len)
			snprintf(detail, sizeof(detail),
				 "page 0 pfn 0x1: XOR length 4096 outside "
				 "0..4095");
		else
			snprintf(detail, sizeof(detail),
				 "page 0 pfn 0x2: XOR page for a frame not "
				 "sent before in this stream");
		raw_xor_stream(&b, &cases[i].d, 1);
		snprintf(msg, sizeof(msg),
			 "record #2 (PAGE_BATCH) at offset 4216: %s", detail);
		snprintf(name, sizeof(name), "xor-%s", cases[i].name);
		expect_reject(name, &b, cases[i].err, msg);
		buf_free(&b);
	}

	/* Sent later in the same batch is not sent before. */
	{
		struct pdesc d[2] = {{3, FT_PAGE_XOR, 0, 0, NULL},
				     {3, FT_PAGE_RAW, 0, PG, page}};

		raw_xor_stream(&b, d, 2);
		expect_reject("xor-sent-later", &b, -EINVAL,
			      "record #2 (PAGE_BATCH) at offset 4216: page 0 "
			      "pfn 0x3: XOR page for a frame not sent before "
			      "in this stream");
		buf_free(&b);
	}

	/* A bad delta after good pages: none of the batch is applied. */
	{
		struct pdesc d[3] = {{5, FT_PAGE_RAW, 0, PG, page},
				     {1, FT_PAGE_XOR, 0, 3, sum_past},
				     {1, FT_PAGE_XOR, 0, sizeof(empty), empty}};
		struct sink *s = sink_new();

		raw_xor_stream(&b, d, 3);
		assert_int_equal(read_stream(b.p, b.len, s), -EINVAL);
		assert_string_equal(s->msg,
				    "record #2 (PAGE_BATCH) at offset 4216: "
				    "page 2 pfn 0x1: XOR data (2 bytes): run "
				    "at byte 0 is empty");
		assert_int_equal(s->mem[5][0], 0);
		assert_int_equal(s->mem[1][0], 0x5a);
		buf_free(&b);
		free(s);
	}

	/* Valid edge cases, decoded exactly: a run up to the last byte,
	 * runs without a gap, a run of 4092 bytes (the longest), a frame sent
	 * earlier in the batch, a delta against a ZERO page, no change. */
	{
		static const unsigned char last[] = {0xff, 0x1f, 0x01, 0x0f};
		static const unsigned char adj[] = {0x00, 0x01, 0x01,
						    0x00, 0x01, 0x02};
		struct pdesc d[7] = {
			{1, FT_PAGE_XOR, 0, sizeof(last), last},
			{1, FT_PAGE_XOR, 0, sizeof(adj), adj},
			{3, FT_PAGE_RAW, 0, PG, page},
			{3, FT_PAGE_XOR, 0, sizeof(whole), whole},
			{4, FT_PAGE_ZERO, 0, 0, NULL},
			{4, FT_PAGE_XOR, 0, sizeof(last), last},
			{3, FT_PAGE_XOR, 0, 0, NULL},
		};
		struct sink *s = sink_new();

		memset(whole + 3, 0xff, sizeof(whole) - 3);
		raw_xor_stream(&b, d, 7);
		dump_file("good-xor-edges", "ftst", b.p, b.len);
		assert_int_equal(read_stream(b.p, b.len, s), 0);
		dump_file("good-xor-edges", "image", s->mem, sizeof(s->mem));
		assert_int_equal(s->mem[1][0], 0x5a ^ 1);
		assert_int_equal(s->mem[1][1], 0x5a ^ 2);
		assert_int_equal(s->mem[1][2], 0x5a);
		assert_int_equal(s->mem[1][PG - 1], 0x5a ^ 0xf);
		assert_int_equal(s->mem[3][0], 0x5a ^ 0xff);
		assert_int_equal(s->mem[3][PG - 5], 0x5a ^ 0xff);
		assert_int_equal(s->mem[3][PG - 4], 0x5a);
		assert_int_equal(s->mem[4][0], 0);
		assert_int_equal(s->mem[4][PG - 1], 0xf);
		assert_int_equal(s->stats.pages_xor, 5);
		assert_int_equal(s->stats.xor_bytes, 2 * sizeof(last) +
							     sizeof(adj) +
							     sizeof(whole));
		buf_free(&b);
		free(s);
	}

	/* stream_decode_pages keeps no previous versions: XOR is refused
	 * without failing anything else (not dumped: the verifier, like
	 * stream_decode_pages2, accepts the stream). */
	{
		struct pdesc d = {1, FT_PAGE_XOR, 0, 0, NULL};
		struct stream_reader r;
		struct stream_rec rec;
		struct sink *s = sink_new();
		struct chan *c;

		raw_xor_stream(&b, &d, 1);
		assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
		assert_int_equal(stream_reader_init(&r, c), 0);
		assert_int_equal(stream_read_header(&r, NULL), 0);
		assert_int_equal(stream_next(&r, &rec), 0);
		assert_int_equal(stream_next(&r, &rec), 0);
		assert_int_equal(stream_decode_pages(&r, &rec, store_page, s),
				 0);
		assert_int_equal(stream_next(&r, &rec), 0);
		assert_int_equal(stream_decode_pages(&r, &rec, store_page, s),
				 -EOPNOTSUPP);
		assert_string_equal(stream_reader_error(&r),
				    "record #2 (PAGE_BATCH) at offset 4216: "
				    "page 0 pfn 0x1: XOR page, but the caller "
				    "keeps no previous versions "
				    "(stream_decode_pages)");
		stream_reader_fini(&r);
		chan_close(c);
		buf_free(&b);
		free(s);
	}
}

/* Writer settings around XOR and AUTO. */
static void test_xor_api(void **state)
{
	unsigned char(*mem)[PG] = calloc(MEM_PAGES, PG);
	uint64_t pfns[MEM_PAGES];
	void *pages[MEM_PAGES];
	struct stream_writer w;
	struct pagecache pc;
	struct buf b = {0};
	struct chan *c;

	assert_non_null(mem);
	assert_int_equal(pagecache_init(&pc, PG), -EINVAL);
	assert_int_equal(pagecache_init(&pc, 2 * PG), 0);

	/* The writer writes the current version. */
	writer_open(&w, &c, STREAM_COMP_NONE);
	writer_close(&w, c, &b);
	assert_int_equal(b.p[10], FT_STREAM_VERSION_MINOR);
	buf_free(&b);

	/* A cache attached after some pages starts empty. */
	for (unsigned i = 0; i < MEM_PAGES; i++) {
		pfns[i] = i;
		pages[i] = mem[i];
		memset(mem[i], (int)i + 1, PG);
	}
	writer_open(&w, &c, STREAM_COMP_NONE);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	stream_writer_set_cache(&w, &pc);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(w.stats.pages_raw, 4);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(w.stats.pages_xor, 2);
	stream_writer_set_cache(&w, NULL);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(w.stats.pages_raw, 6);
	writer_close(&w, c, &b);
	buf_free(&b);

	/* AUTO: compressible pages on a slow link are compressed after
	 * the first probe; on a very fast one, only the probe is. */
	for (int fast = 0; fast < 2; fast++) {
		writer_open(&w, &c, STREAM_COMP_AUTO);
		stream_writer_set_link_rate(&w, fast ? 1ULL << 40 : 1ULL << 20);
		assert_false(w.lz4_on);
		assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
		for (int round = 0; round < 4; round++)
			assert_int_equal(
				stream_write_pages(&w, pfns, pages, MEM_PAGES),
				0);
		assert_int_equal(w.lz4_on, !fast);
		assert_int_equal(w.stats.lz4_tries, fast ? 64 : 4 * MEM_PAGES);
		assert_int_equal(w.stats.pages_lz4, w.stats.lz4_tries);
		assert_true(w.stats.lz4_ns > 0);
		writer_close(&w, c, &b);
		buf_free(&b);
	}

	/* AUTO without a link rate, and on pages that do not compress:
	 * no LZ4 (after the probe). */
	writer_open(&w, &c, STREAM_COMP_AUTO);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES), 0);
	assert_int_equal(w.stats.lz4_tries, 0);
	stream_writer_set_link_rate(&w, 1 << 20);
	fill_random(mem, MEM_PAGES * PG);
	for (int round = 0; round < 4; round++)
		assert_int_equal(stream_write_pages(&w, pfns, pages, MEM_PAGES),
				 0);
	assert_false(w.lz4_on);
	assert_int_equal(w.stats.lz4_tries, 64);
	assert_int_equal(w.stats.pages_lz4, 0);
	writer_close(&w, c, &b);
	buf_free(&b);

	/* Pages need no alignment. */
	{
		unsigned char *u = calloc(1, PG + 1),
			      *exp = calloc(MEM_PAGES, PG);
		uint64_t pfn = 3;
		void *up = u + 1;
		struct stream_stats st;

		assert_true(u && exp);
		fill_random(u + 1, PG);
		xwriter_open(&w, &c, STREAM_COMP_NONE, &pc);
		assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
		assert_int_equal(stream_write_pages(&w, &pfn, &up, 1), 0);
		u[1 + 77] ^= 1;
		assert_int_equal(stream_write_pages(&w, &pfn, &up, 1), 0);
		assert_int_equal(w.stats.pages_xor, 1);
		xwriter_close(&w, c, &b, &st);
		memcpy(exp + 3 * PG, u + 1, PG);
		check_xor_stream(NULL, &b, exp, &st);
		buf_free(&b);
		free(exp);
		free(u);
	}

	/* A failed batch clears the cache. */
	assert_int_equal(chan_open_mem(&c, NULL, 0, 200), 0);
	assert_int_equal(stream_writer_init(&w, c, 0, STREAM_COMP_NONE), 0);
	stream_writer_set_cache(&w, &pc);
	assert_int_equal(stream_write_header(&w), 0);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 1), -ENOSPC);
	assert_null(pagecache_peek(&pc, 0));
	stream_writer_fini(&w);
	assert_int_equal(chan_close(c), -ENOSPC);

	pagecache_fini(&pc);
	free(mem);
}

/* ---- reader and writer API misuse, sticky errors, logging ---- */

/* ---- checkpoint epochs (1.2) ---- */

/* A 1.2 checkpoint stream's start: header, DOMAIN (one vCPU). */
static void raw_ckpt_start(struct buf *b)
{
	raw_header_ex(b, FT_STREAM_MAGIC, 1, 2, 12,
		      FT_STREAM_F_LIVE | FT_STREAM_F_CHECKPOINT, 0);
	raw_domain(b, MEM_PAGES * PG, 1);
}

static void raw_begin(struct buf *b, uint64_t epoch)
{
	struct ft_rec_ckpt_begin r = {.epoch = epoch};

	raw_rec(b, REC_CKPT_BEGIN, &r, sizeof(r));
}

static void raw_end(struct buf *b, uint64_t epoch, uint32_t pages,
		    uint32_t disk, uint32_t vcpus, uint32_t devs)
{
	struct ft_rec_ckpt_end r = {.epoch = epoch, .pages = pages,
				    .disk_writes = disk, .vcpus = vcpus,
				    .devices = devs};

	raw_rec(b, REC_CKPT_END, &r, sizeof(r));
}

static void raw_disk(struct buf *b, uint64_t epoch)
{
	unsigned char body[sizeof(struct ft_rec_disk_write) + 512] = {0};
	struct ft_rec_disk_write h = {.len = 512, .epoch = epoch};

	memcpy(body, &h, sizeof(h));
	raw_rec(b, REC_DISK_WRITE, body, sizeof(body));
}

static void test_ckpt(void **state)
{
	static unsigned char page[PG];
	struct hv_vcpu_state *vs = calloc(1, sizeof(*vs));
	unsigned char data[512];
	void *pages[2] = {page, page};
	uint64_t pfns[2] = {3, 7};
	struct stream_writer w;
	struct sink *s = sink_new();
	struct buf b = {0};
	struct chan *c;

	assert_non_null(vs);
	vs->rip = 0x100000;
	vs->rflags = 2;
	memset(page, 0x5a, sizeof(page));
	memset(data, 0xa5, sizeof(data));

	/* A writer without the flag refuses epochs. */
	writer_open(&w, &c, STREAM_COMP_NONE);
	assert_int_equal(stream_write_ckpt_begin(&w, 1), -EINVAL);
	assert_int_equal(stream_write_ckpt_end(&w), -EINVAL);
	stream_writer_fini(&w);
	chan_close(c);

	/* Pre-copy, epochs 5 and 6, END: the writer counts, the reader
	 * agrees. */
	assert_int_equal(chan_open_mem(&c, NULL, 0, 64u << 20), 0);
	assert_int_equal(stream_writer_init(&w, c,
					    FT_STREAM_F_LIVE |
						    FT_STREAM_F_CHECKPOINT,
					    STREAM_COMP_NONE),
			 0);
	assert_int_equal(stream_write_header(&w), 0);
	assert_int_equal(stream_write_domain(&w, MEM_PAGES * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(stream_write_disk(&w, 0, 0, 512, data, 0), 0);
	assert_int_equal(stream_write_ckpt_end(&w), -EINVAL);
	assert_int_equal(stream_write_ckpt_begin(&w, 5), 0);
	assert_int_equal(stream_write_ckpt_begin(&w, 6), -EINVAL);
	assert_int_equal(stream_write_pages(&w, pfns, pages, 2), 0);
	assert_int_equal(stream_write_disk(&w, 0, 512, 512, data, 5), 0);
	assert_int_equal(stream_write_vcpu(&w, 0, vs), 0);
	assert_int_equal(stream_write_ckpt_end(&w), 0);
	assert_int_equal(stream_write_ckpt_begin(&w, 6), 0);
	assert_int_equal(stream_write_vcpu(&w, 0, vs), 0);
	assert_int_equal(stream_write_ckpt_end(&w), 0);
	assert_int_equal(stream_write_end(&w), 0);
	writer_close(&w, c, &b);
	dump_file("good-ckpt", "ftst", b.p, b.len);
	assert_int_equal(read_stream(b.p, b.len, s), 0);
	assert_int_equal(s->vcpus, 2);
	assert_int_equal(s->disk_writes, 2);
	buf_free(&b);

	/* Each rule, broken once.  Offsets: header 40, DOMAIN 40, BEGIN
	 * 32, VCPU_X86 528, DISK_WRITE 560, END-of-epoch 48. */
	raw_header11(&b);
	raw_domain(&b, MEM_PAGES * PG, 1);
	raw_begin(&b, 1);
	raw_finish(&b);
	expect_reject("ckpt-not-ckpt", &b, -EINVAL,
		      "record #1 (CKPT_BEGIN) at offset 80: checkpoint record "
		      "in a stream without checkpoints (version 1.1, flags "
		      "0x0)");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_begin(&b, 2);
	expect_reject("ckpt-nested", &b, -EINVAL,
		      "record #2 (CKPT_BEGIN) at offset 112: epoch 2 begins "
		      "inside epoch 1");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	raw_end(&b, 1, 0, 0, 1, 0);
	raw_begin(&b, 3);
	expect_reject("ckpt-gap", &b, -EINVAL,
		      "record #4 (CKPT_BEGIN) at offset 688: epoch 3 follows "
		      "epoch 1");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_end(&b, 1, 0, 0, 1, 0);
	expect_reject("ckpt-end-outside", &b, -EINVAL,
		      "record #1 (CKPT_END) at offset 80: CKPT_END outside an "
		      "epoch");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	raw_end(&b, 2, 0, 0, 1, 0);
	expect_reject("ckpt-end-other", &b, -EINVAL,
		      "record #3 (CKPT_END) at offset 640: ends epoch 2 "
		      "inside epoch 1");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	raw_end(&b, 1, 1, 0, 1, 0); /* one page too many */
	expect_reject("ckpt-count", &b, -EINVAL,
		      "record #3 (CKPT_END) at offset 640: epoch 1 declares 1 "
		      "pages, 0 disk writes, 1 vCPUs, 0 devices but carried 0, "
		      "0, 1, 0");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_end(&b, 1, 0, 0, 0, 0);
	expect_reject("ckpt-no-vcpu", &b, -EINVAL,
		      "record #2 (CKPT_END) at offset 112: vCPU 0 of 1 never "
		      "sent");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_vcpu(&b, 0);
	expect_reject("ckpt-vcpu-outside", &b, -EINVAL,
		      "record #1 (VCPU_X86) at offset 80: outside a checkpoint "
		      "epoch");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	raw_vcpu(&b, 0);
	expect_reject("ckpt-vcpu-twice", &b, -EINVAL,
		      "record #3 (VCPU_X86) at offset 640: vCPU 0 sent twice");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 4);
	raw_disk(&b, 3);
	expect_reject("ckpt-disk-epoch", &b, -EINVAL,
		      "record #2 (DISK_WRITE) at offset 112: epoch 3, expected "
		      "4");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_disk(&b, 1);
	expect_reject("ckpt-disk-outside", &b, -EINVAL,
		      "record #1 (DISK_WRITE) at offset 80: epoch 1, expected "
		      "0");
	buf_free(&b);

	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	raw_rec(&b, REC_END, NULL, 0);
	expect_reject("ckpt-truncated-epoch", &b, -EINVAL,
		      "record #3 (END) at offset 640: stream ends inside epoch "
		      "1");
	buf_free(&b);

	raw_ckpt_start(&b);
	{
		struct ft_rec_ckpt_begin r = {.epoch = 1, .reserved = 9};

		raw_rec(&b, REC_CKPT_BEGIN, &r, sizeof(r));
	}
	expect_reject("ckpt-reserved", &b, -EINVAL,
		      "record #1 (CKPT_BEGIN) at offset 80: reserved field not "
		      "zero (0x9)");
	buf_free(&b);

	/* A stream cut inside an epoch: the reader says so (the receiver
	 * discards the epoch). */
	raw_ckpt_start(&b);
	raw_begin(&b, 1);
	raw_vcpu(&b, 0);
	expect_reject("ckpt-cut", &b, -EPIPE,
		      "record #3 at offset 640: stream ends without END");
	buf_free(&b);
	free(s);
	free(vs);
}

static void test_reader_api(void **state)
{
	struct stream_reader r;
	struct stream_rec rec;
	struct buf b = {0};
	struct chan *c;
	char *logbuf = NULL;
	size_t logsize = 0;
	FILE *log;

	raw_start(&b);
	raw_finish(&b);
	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_next(&r, &rec), -EINVAL);
	assert_string_equal(stream_reader_error(&r),
			    "stream_next: called before the header");
	stream_reader_fini(&r);
	chan_close(c);

	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	assert_int_equal(stream_read_header(&r, NULL), -EINVAL);
	stream_reader_fini(&r);
	chan_close(c);

	/* A failure is logged once, as stored, and stays. */
	log = open_memstream(&logbuf, &logsize);
	assert_non_null(log);
	log_set_file(log);
	b.p[50] ^= 1;
	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	assert_int_equal(stream_next(&r, &rec), -EBADMSG);
	assert_int_equal(stream_next(&r, &rec), -EBADMSG);
	assert_int_equal(stream_expect_eof(&r), -EBADMSG);
	fflush(log);
	assert_non_null(strstr(logbuf, stream_reader_error(&r)));
	assert_ptr_equal(strstr(logbuf, "record #0 (DOMAIN) at offset 40: "
					"checksum mismatch"),
			 strstr(logbuf, "error: ") + 7);
	assert_null(strchr(logbuf, '\n')
			    ? strchr(strchr(logbuf, '\n') + 1, '\n')
			    : NULL);
	stream_reader_fini(&r);
	chan_close(c);
	log_set_file(*state);
	fclose(log);
	free(logbuf);

	/* After END, stream_next is a caller bug. */
	b.p[50] ^= 1;
	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	do
		assert_int_equal(stream_next(&r, &rec), 0);
	while (rec.type != REC_END);
	assert_int_equal(stream_next(&r, &rec), -EINVAL);
	assert_string_equal(stream_reader_error(&r),
			    "stream_next: called after END");
	stream_reader_fini(&r);
	chan_close(c);
	buf_free(&b);

	assert_string_equal(stream_rec_name(REC_PAGE_BATCH), "PAGE_BATCH");
	assert_string_equal(stream_rec_name(REC_NOTE), "NOTE");
	assert_string_equal(stream_rec_name(0x08), "UNKNOWN");
	assert_string_equal(stream_rec_name(0x12345), "UNKNOWN");
}

static void test_writer_api(void **state)
{
	struct hv_vcpu_state *vs = calloc(1, sizeof(*vs));
	struct hv_dev_rec dev = {.len = FT_DEVICE_BLOB_MAX + 1};
	struct stream_writer w;
	struct chan *c;
	char body[8] = {0};

	assert_non_null(vs);
	assert_int_equal(chan_open_mem(&c, NULL, 0, 1 << 20), 0);
	assert_int_equal(stream_writer_init(&w, c, 0x8, STREAM_COMP_NONE),
			 -EINVAL);
	assert_int_equal(stream_writer_init(&w, c, 0, (enum stream_compress)7),
			 -EINVAL);
	assert_int_equal(stream_writer_init(&w, c, 0, STREAM_COMP_NONE), 0);
	assert_int_equal(stream_write_record(&w, REC_NOTE, body, 1), -EINVAL);
	assert_int_equal(stream_write_header(&w), 0);
	assert_int_equal(stream_write_header(&w), -EINVAL);
	assert_int_equal(
		stream_write_record(&w, REC_NOTE, NULL, FT_REC_BODY_MAX + 1),
		-E2BIG);
	assert_int_equal(stream_write_domain(&w, 0, 1), -EINVAL);
	assert_int_equal(stream_write_domain(&w, PG + 1, 1), -EINVAL);
	assert_int_equal(stream_write_domain(&w, 2 * FT_MEM_SIZE_MAX, 1),
			 -EINVAL);
	assert_int_equal(stream_write_domain(&w, PG, 0), -EINVAL);
	assert_int_equal(stream_write_domain(&w, PG, 65), -EINVAL);
	vs->xsave_len = FT_XSAVE_MAX + 1;
	assert_int_equal(stream_write_vcpu(&w, 0, vs), -EINVAL);
	vs->xsave_len = 0;
	assert_int_equal(stream_write_vcpu(&w, FT_MAX_VCPUS, vs), -EINVAL);
	vs->ss.dpl = 4;
	assert_int_equal(stream_write_vcpu(&w, 0, vs), -EINVAL);
	assert_int_equal(stream_write_device(&w, &dev), -E2BIG);
	assert_int_equal(w.stats.records, 0);
	assert_int_equal(stream_write_end(&w), 0);
	assert_int_equal(stream_write_end(&w), -EINVAL);
	assert_int_equal(stream_write_pages(&w, NULL, NULL, 0), -EINVAL);
	assert_int_equal(w.stats.bytes, 40 + 16);
	stream_writer_fini(&w);
	chan_close(c);

	/* A channel failure stops the writer and stays. */
	assert_int_equal(chan_open_mem(&c, NULL, 0, 100), 0);
	assert_int_equal(stream_writer_init(&w, c, 0, STREAM_COMP_NONE), 0);
	assert_int_equal(stream_write_header(&w), 0);
	assert_int_equal(stream_write_record(&w, REC_NOTE, NULL, 64), -ENOSPC);
	assert_int_equal(stream_write_record(&w, REC_NOTE, NULL, 0), -ENOSPC);
	assert_int_equal(stream_write_end(&w), -ENOSPC);
	assert_int_equal(w.stats.bytes, 40);
	stream_writer_fini(&w);
	assert_int_equal(chan_close(c), -ENOSPC);
	free(vs);
}

struct seq_check {
	const unsigned char *ram; /* pages expected in pfn order */
	uint64_t n;		  /* pages seen */
};

static int count_page(void *ctx, uint64_t pfn, const void *page)
{
	struct seq_check *sc = ctx;

	if (pfn != sc->n || memcmp(page, sc->ram + pfn * PG, PG))
		return -EILSEQ;
	sc->n++;
	return 0;
}

/* More pages than fit in one batch are split; the reader sees them all,
 * in order. */
static void test_many_pages(void **state)
{
	const unsigned n = FT_PAGE_BATCH_MAX * 2 + 5;
	unsigned char *ram = calloc(n, PG);
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	void **pages = calloc(n, sizeof(*pages));
	struct stream_reader r;
	struct stream_writer w;
	struct stream_rec rec;
	struct buf b = {0};
	struct chan *c;
	struct seq_check sc = {ram, 0};
	uint64_t batches = 0;

	assert_true(ram && pfns && pages);
	for (unsigned i = 0; i < n; i++) {
		pfns[i] = i;
		pages[i] = ram + (size_t)i * PG;
		if (i % 3)
			memset(pages[i], (int)i, 100); /* LZ4 */
	}
	writer_open(&w, &c, STREAM_COMP_LZ4);
	assert_int_equal(stream_write_domain(&w, (uint64_t)n * PG, 1), 0);
	assert_int_equal(stream_write_pages(&w, pfns, pages, n), 0);
	assert_int_equal(w.stats.pages_zero + w.stats.pages_lz4, n);
	writer_close(&w, c, &b);

	assert_int_equal(chan_open_mem(&c, b.p, b.len, b.len), 0);
	assert_int_equal(stream_reader_init(&r, c), 0);
	assert_int_equal(stream_read_header(&r, NULL), 0);
	assert_int_equal(stream_next(&r, &rec), 0);
	while (stream_next(&r, &rec) == 0) {
		assert_int_equal(rec.type, REC_PAGE_BATCH);
		assert_int_equal(stream_decode_pages(&r, &rec, count_page, &sc),
				 0);
		batches++;
	}
	assert_int_equal(sc.n, n);
	assert_true(batches >= (n + FT_PAGE_BATCH_MAX - 1) / FT_PAGE_BATCH_MAX);
	assert_non_null(strstr(stream_reader_error(&r), "without END"));
	stream_reader_fini(&r);
	chan_close(c);
	buf_free(&b);
	free(ram);
	free(pfns);
	free(pages);
}

static int quiet_setup(void **state)
{
	/* The negative tests fail on purpose; keep their logs out of the
	 * test output. */
	*state = fopen("/dev/null", "w");
	log_set_file(*state);
	return *state ? 0 : -1;
}

static int quiet_teardown(void **state)
{
	log_set_file(NULL);
	return fclose(*state);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_none),
		cmocka_unit_test(test_roundtrip_lz4),
		cmocka_unit_test(test_roundtrip_limits),
		cmocka_unit_test(test_example),
		cmocka_unit_test(test_disk_write),
		cmocka_unit_test(test_many_pages),
		cmocka_unit_test(test_truncated_everywhere),
		cmocka_unit_test(test_flip_every_byte),
		cmocka_unit_test(test_flip_each_record),
		cmocka_unit_test(test_bad_header),
		cmocka_unit_test(test_bad_framing),
		cmocka_unit_test(test_bad_order),
		cmocka_unit_test(test_bad_domain),
		cmocka_unit_test(test_bad_pages),
		cmocka_unit_test(test_bad_vcpu),
		cmocka_unit_test(test_bad_device),
		cmocka_unit_test(test_xor_roundtrip),
		cmocka_unit_test(test_xor_lz4),
		cmocka_unit_test(test_xor_small_cache),
		cmocka_unit_test(test_xor_torn),
		cmocka_unit_test(test_bad_xor),
		cmocka_unit_test(test_xor_api),
		cmocka_unit_test(test_ckpt),
		cmocka_unit_test(test_reader_api),
		cmocka_unit_test(test_writer_api),
	};

	return cmocka_run_group_tests(tests, quiet_setup, quiet_teardown);
}
