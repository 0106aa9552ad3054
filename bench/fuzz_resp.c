// SPDX-License-Identifier: MIT
/*
 * fuzz_resp.c - fuzz the kvstore guest's RESP parser, command executor,
 * store and write-ahead log (guest/kvstore), on the host.
 *
 * Input: byte 0 is the mode, the rest is what a client sends.  Each input
 * runs twice on fresh stores over a 257 KiB memory disk (small enough for
 * "log full" and compaction to happen): once fed whole, once cut into
 * reads of 1..256 bytes (sizes from an LCG seeded with the mode byte),
 * executing with an output high-water mark of 1 + mode % 64 bytes and
 * committing after every read.  Checked:
 *   - both runs give the same replies, byte for byte (unless FTSTATS
 *     ran, whose commit and memory counters depend on the cutting);
 *   - the allocator's invariants (kvmem_check) hold after each run;
 *   - the log, replayed into a third store, gives exactly the live store.
 * A failed check aborts, which libFuzzer reports as a crash.
 *
 *   bench/fuzz.mk (clang, -DFT_LIBFUZZER): libFuzzer drives
 *     LLVMFuzzerTestOneInput; run it with bench/fuzz.sh SECONDS resp.
 *   the Makefile's bench rule: a program that replays the files given as
 *     arguments (for crash files, with ASan under make SAN=1).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest/kvstore/kv.h"

#define SECTORS (2 + 2 * 256)
#define ARENA (4u << 20)
#define NBUCKETS 256
#define LOGBUF KVLOG_BUF_MIN

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct inst {
	struct kvmem mem;
	struct kvlog log;
	struct kv kv;
	struct kvlog_report rep;
	struct kv_client cl;
	uint8_t *arena, *logbuf, *disk;
	void *buckets;
	uint64_t disk_hi; /* sectors below this may have been written */
	uint8_t *out;	  /* every reply so far */
	size_t out_len, out_cap;
};

static struct inst whole, cut, replay;

static void check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_resp: check failed: %s\n", what);
		abort();
	}
}

static int md_read(void *ctx, uint64_t sector, void *buf, uint32_t count)
{
	struct inst *in = ctx;

	check(count && sector + count <= SECTORS, "read in range");
	memcpy(buf, in->disk + sector * 512, (size_t)count * 512);
	return 0;
}

static int md_write(void *ctx, uint64_t sector, const void *buf, uint32_t count,
		    bool flush)
{
	struct inst *in = ctx;

	check(count && sector + count <= SECTORS, "write in range");
	memcpy(in->disk + sector * 512, buf, (size_t)count * 512);
	if (sector + count > in->disk_hi)
		in->disk_hi = sector + count;
	return 0;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);

	check(p != NULL, "malloc");
	return p;
}

/* Open a store on the instance's disk (blank it first if `fresh`). */
static void inst_open(struct inst *in, uint8_t *disk, bool fresh)
{
	struct kvlog_dev dev = {
		.read = md_read,
		.write = md_write,
		.ctx = in,
		.sectors = SECTORS,
		.max_io = 64,
	};

	if (!in->arena) {
		in->arena = xmalloc(ARENA);
		in->logbuf = xmalloc(LOGBUF);
		in->buckets = xmalloc(NBUCKETS * sizeof(void *));
	}
	in->disk = disk;
	if (fresh) {
		memset(disk, 0, in->disk_hi * 512);
		in->disk_hi = 0;
	}
	memset(in->buckets, 0, NBUCKETS * sizeof(void *));
	check(!kvmem_init(&in->mem, in->arena, ARENA), "kvmem_init");
	check(!kv_init(&in->kv, &in->mem, in->buckets, NBUCKETS, 7, &in->log),
	      "kv_init");
	check(!kvlog_open(&in->log, &dev, in->logbuf, LOGBUF, false, kv_apply,
			  &in->kv, &in->rep),
	      "kvlog_open");
	kv_client_init(&in->cl, &in->mem);
	in->out_len = 0;
}

/* Execute what is buffered, collecting the replies. */
static void drain(struct inst *in, size_t out_high)
{
	size_t n;

	do {
		n = kv_run(&in->kv, &in->cl, out_high);
		if (in->out_len + in->cl.out.len > in->out_cap) {
			in->out_cap = 2 * (in->out_len + in->cl.out.len);
			in->out = realloc(in->out, in->out_cap);
			check(in->out != NULL, "realloc");
		}
		if (in->cl.out.len)
			memcpy(in->out + in->out_len, in->cl.out.p,
			       in->cl.out.len);
		in->out_len += in->cl.out.len;
		kv_buf_consume(&in->cl.out, in->cl.out.len);
	} while (n && !in->cl.closing);
	check(!in->cl.in.oom && !in->cl.out.oom, "buffers fit");
}

static void feed(struct inst *in, const uint8_t *p, size_t n, size_t out_high)
{
	kv_buf_add(&in->cl.in, p, n);
	drain(in, out_high);
	check(!kv_commit(&in->kv), "commit");
}

static int same_in_replay(void *ctx, const struct kv_entry *e)
{
	struct kv_entry *r = kv_store_get(ctx, e->data, e->klen);

	check(r && r->vlen == e->vlen &&
		      !memcmp(r->data + r->klen, e->data + e->klen, e->vlen),
	      "replayed value equals live value");
	return 0;
}

/* FTSTATS ran if its reply is there (a lookalike only skips a check). */
static bool ran_ftstats(const struct inst *in)
{
	static const char mark[] = "$12\r\nacked_writes\r\n";

	return in->out_len &&
	       memmem(in->out, in->out_len, mark, sizeof(mark) - 1) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *disk_a, *disk_b;
	uint32_t lcg;
	size_t pos, n, high;

	if (size < 1)
		return 0;
	if (!disk_a) {
		disk_a = calloc(SECTORS, 512);
		disk_b = calloc(SECTORS, 512);
		check(disk_a && disk_b, "calloc");
		whole.disk_hi = cut.disk_hi = SECTORS;
	}
	lcg = data[0];
	high = 1 + data[0] % 64;
	data++;
	size--;

	inst_open(&whole, disk_a, true);
	feed(&whole, data, size, SIZE_MAX);
	check(!kvmem_check(&whole.mem), "kvmem_check (whole)");

	inst_open(&cut, disk_b, true);
	for (pos = 0; pos < size; pos += n) {
		lcg = lcg * 1103515245u + 12345u;
		n = 1 + (lcg >> 16) % 256;
		if (n > size - pos)
			n = size - pos;
		feed(&cut, data + pos, n, high);
	}
	drain(&cut, high);
	check(!kvmem_check(&cut.mem), "kvmem_check (cut)");
	if (!ran_ftstats(&whole) && !ran_ftstats(&cut))
		check(whole.out_len == cut.out_len &&
			      (!whole.out_len ||
			       !memcmp(whole.out, cut.out, whole.out_len)),
		      "the same replies whole and cut");

	/* What the log holds is what the store holds. */
	replay.disk_hi = 0;
	inst_open(&replay, disk_a, false);
	check(!replay.rep.truncated, "a clean log replays cleanly");
	check(replay.kv.store.count == whole.kv.store.count,
	      "replayed key count");
	kv_store_foreach(&whole.kv.store, same_in_replay, &replay.kv.store);
	return 0;
}

#ifndef FT_LIBFUZZER
/* Replay: run each file through the target. */
#include "fuzz_replay.h"

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (fuzz_replay_file(argv[i]))
			return 2;
		printf("  %zu bytes of replies\n", whole.out_len);
	}
	return 0;
}
#endif
