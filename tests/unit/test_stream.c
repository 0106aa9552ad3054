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
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <cmocka.h>

#include "channel.h"
#include "log.h"
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

struct sink {
	unsigned char mem[MEM_PAGES][PG];
	struct hv_vcpu_state vcpu[2];
	unsigned vcpus;
	unsigned char dev[256];
	struct hv_dev_rec devrec;
	unsigned devices;
	char note[64];
	struct stream_stats stats;
	char msg[256];
};

static int store_page(void *ctx, uint64_t pfn, const void *page)
{
	struct sink *s = ctx;

	if (pfn >= MEM_PAGES)
		return -ERANGE; /* the reader let a bad pfn through */
	memcpy(s->mem[pfn], page, PG);
	return 0;
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
		return stream_decode_pages(r, rec, store_page, s);
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
		      "1.0 to 1.0)");
	buf_free(&b);

	raw_header_ex(&b, FT_STREAM_MAGIC, 1, 1, 12, 0, 0);
	expect_reject("minor", &b, -EPROTONOSUPPORT,
		      "header: version 1.1 not supported (this reader reads "
		      "1.0 to 1.0)");
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

	static const uint32_t reserved[] = {REC_CKPT_BEGIN, REC_CKPT_END,
					    0x80000006u};
	static const char *const reserved_msg[] = {
		"record #1 (CKPT_BEGIN) at offset 80: reserved record "
		"(CKPT_BEGIN), not supported by a 1.0 reader",
		"record #1 (CKPT_END) at offset 80: reserved record "
		"(CKPT_END), not supported by a 1.0 reader",
		"record #1 (type 0x80000006) at offset 80: reserved record "
		"(CKPT_END), not supported by a 1.0 reader",
	};
	for (unsigned i = 0; i < 3; i++) {
		char name[32];

		raw_start(&b);
		raw_rec(&b, reserved[i], NULL, 0);
		raw_finish(&b);
		snprintf(name, sizeof(name), "reserved-%08x", reserved[i]);
		expect_reject(name, &b, -EOPNOTSUPP, reserved_msg[i]);
		buf_free(&b);
	}

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
		{"xor",
		 {1, FT_PAGE_XOR, 0, 8, page},
		 -EOPNOTSUPP,
		 "page 0 pfn 0x1: XOR encoding is reserved"},
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

/* ---- reader and writer API misuse, sticky errors, logging ---- */

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
		cmocka_unit_test(test_reader_api),
		cmocka_unit_test(test_writer_api),
	};

	return cmocka_run_group_tests(tests, quiet_setup, quiet_teardown);
}
