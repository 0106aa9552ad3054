// SPDX-License-Identifier: MIT
/*
 * test_kvstore.c - the kvstore guest's portable modules, built for the
 * host: XXH64 against libxxhash, the buddy allocator, the store, the RESP
 * parser and every command's replies byte for byte (whole, pipelined and
 * split at every byte), protocol errors, and the write-ahead log over a
 * memory disk: round trips, corrupt and torn tails, crashes in the middle
 * of a group commit, stale leftovers, log full, compaction, superblock
 * damage and device errors.
 *
 * FT_KVSTORE_DUMP_DIR=DIR also writes every request fed to DIR (the seeds
 * bench/fuzz.sh gives bench/fuzz_resp).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#include "guest/kvstore/kv.h"
#include "guest/kvstore/kvhash.h"

#define MIB (1u << 20)

/* ---- A memory disk ---------------------------------------------------- */

struct memdisk {
	uint8_t *data;
	uint64_t sectors;
	uint32_t max_io;
	uint64_t writes, flushes;
	long long budget;     /* sectors writes may still store; < 0: all */
	uint64_t drop_sector; /* a sector writes skip (0: none; never sb) */
	int fail;	      /* returned by every write when set */
};

static int md_read(void *ctx, uint64_t sector, void *buf, uint32_t count)
{
	struct memdisk *d = ctx;

	assert_true(count >= 1 && count <= d->max_io);
	assert_true(sector + count <= d->sectors);
	memcpy(buf, d->data + sector * 512, (size_t)count * 512);
	return 0;
}

static int md_write(void *ctx, uint64_t sector, const void *buf, uint32_t count,
		    bool flush)
{
	struct memdisk *d = ctx;
	uint32_t i;

	assert_true(count >= 1 && count <= d->max_io);
	assert_true(sector + count <= d->sectors);
	if (d->fail)
		return d->fail;
	for (i = 0; i < count; i++) {
		if (d->budget == 0)
			break;
		if (d->budget > 0)
			d->budget--;
		if (d->drop_sector && sector + i == d->drop_sector)
			continue;
		memcpy(d->data + (sector + i) * 512,
		       (const uint8_t *)buf + (size_t)i * 512, 512);
	}
	d->writes++;
	d->flushes += flush;
	return 0;
}

static void md_init(struct memdisk *d, uint64_t sectors, uint32_t max_io)
{
	*d = (struct memdisk){
		.sectors = sectors, .max_io = max_io, .budget = -1};
	d->data = calloc(sectors, 512);
	assert_non_null(d->data);
}

/* ---- A kvstore over it ------------------------------------------------ */

#define ARENA (64 * MIB)
#define NBUCKETS 4096
#define LOGBUF (4 * MIB)

struct env {
	struct memdisk disk;
	struct kvmem mem;
	struct kvlog log;
	struct kv kv;
	struct kvlog_report rep;
	struct kv_client cl;
	void *arena, *buckets, *logbuf;
	int open_err;
	size_t arena_size;
};

/* (Re)open the kvstore on e->disk; the result is in e->open_err. */
static void env_open_sized(struct env *e, bool format, size_t arena)
{
	struct kvlog_dev dev = {
		.read = md_read,
		.write = md_write,
		.ctx = &e->disk,
		.sectors = e->disk.sectors,
		.max_io = e->disk.max_io,
	};

	e->arena_size = arena;
	e->arena = malloc(arena);
	e->buckets = calloc(NBUCKETS, sizeof(void *));
	e->logbuf = malloc(LOGBUF);
	assert_non_null(e->arena);
	assert_non_null(e->buckets);
	assert_non_null(e->logbuf);
	assert_int_equal(kvmem_init(&e->mem, e->arena, arena), 0);
	assert_int_equal(
		kv_init(&e->kv, &e->mem, e->buckets, NBUCKETS, 42, &e->log), 0);
	e->open_err = kvlog_open(&e->log, &dev, e->logbuf, LOGBUF, format,
				 kv_apply, &e->kv, &e->rep);
	kv_client_init(&e->cl, &e->mem);
}

static void env_open(struct env *e)
{
	env_open_sized(e, false, ARENA);
	assert_int_equal(e->open_err, 0);
}

/* Forget everything but the disk, as a crash does. */
static void env_crash(struct env *e)
{
	free(e->arena);
	free(e->buckets);
	free(e->logbuf);
	e->arena = e->buckets = e->logbuf = NULL;
}

static void env_new(struct env *e, uint64_t sectors, uint32_t max_io)
{
	memset(e, 0, sizeof(*e));
	md_init(&e->disk, sectors, max_io);
	env_open(e);
	assert_true(e->rep.formatted);
}

static void env_free(struct env *e)
{
	env_crash(e);
	free(e->disk.data);
}

/* With FT_KVSTORE_DUMP_DIR set, every request fed (under 64 KiB) is
 * also written there, one file each: seeds for bench/fuzz_resp. */
static void dump(const void *in, size_t n)
{
	static unsigned int seq;
	const char *dir = getenv("FT_KVSTORE_DUMP_DIR");
	char path[4096];
	FILE *f;

	if (!dir || !n || n >= 65536)
		return;
	snprintf(path, sizeof(path), "%s/req-%04u", dir, seq++);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(in, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

/* Feed n bytes, run, commit; return the replies (valid until the next
 * call) and their length in *outlen. */
static const char *feed(struct env *e, const void *in, size_t n, size_t *outlen)
{
	static char *out;

	dump(in, n);

	kv_buf_add(&e->cl.in, in, n);
	assert_false(e->cl.in.oom);
	kv_run(&e->kv, &e->cl, SIZE_MAX);
	assert_int_equal(kv_commit(&e->kv), 0);
	free(out);
	out = malloc(e->cl.out.len + 1);
	if (e->cl.out.len)
		memcpy(out, e->cl.out.p, e->cl.out.len);
	out[e->cl.out.len] = 0;
	*outlen = e->cl.out.len;
	kv_buf_consume(&e->cl.out, e->cl.out.len);
	return out;
}

/* The request's replies must be exactly `want` (a C string). */
#define expect(e, req, want) expect_n(e, req, strlen(req), want, strlen(want))

static void expect_n(struct env *e, const void *req, size_t reqlen,
		     const char *want, size_t wantlen)
{
	size_t n;
	const char *got = feed(e, req, reqlen, &n);

	if (n != wantlen || memcmp(got, want, n)) {
		print_error("request: %.*s\nwant: %.*s\ngot:  %.*s\n",
			    (int)(reqlen > 300 ? 300 : reqlen),
			    (const char *)req,
			    (int)(wantlen > 300 ? 300 : wantlen), want,
			    (int)(n > 300 ? 300 : n), got);
		fail();
	}
}

/* "SET key value" as RESP, into a static buffer. */
static const char *set_req(const char *key, const char *val, size_t *len)
{
	static char buf[4 * MIB];
	size_t kl = strlen(key), vl = strlen(val);

	*len = (size_t)snprintf(
		buf, sizeof(buf),
		"*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", kl, key, vl,
		val);
	return buf;
}

static void set_ok(struct env *e, const char *key, const char *val)
{
	size_t n;
	const char *req = set_req(key, val, &n);

	expect_n(e, req, n, "+OK\r\n", 5);
}

/* GET key must answer val (NULL: nil). */
static void get_is(struct env *e, const char *key, const char *val)
{
	size_t n = val ? strlen(val) + 32 : 8;
	char req[256], *want = malloc(n);

	assert_true(strlen(key) < 200);
	snprintf(req, sizeof(req), "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
		 strlen(key), key);
	if (val)
		snprintf(want, n, "$%zu\r\n%s\r\n", strlen(val), val);
	else
		snprintf(want, n, "$-1\r\n");
	expect(e, req, want);
	free(want);
}

static char *fill(size_t n, char c)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = 0;
	return s;
}

/* ---- XXH64, allocator, store ------------------------------------------ */

static void test_xxh64(void **state)
{
	uint8_t buf[1000];
	size_t n;

	for (n = 0; n < sizeof(buf); n++)
		buf[n] = (uint8_t)(n * 131 + 7);
	for (n = 0; n <= sizeof(buf); n += n < 80 ? 1 : 37) {
		assert_true(kv_xxh64(buf, n, 0) == XXH64(buf, n, 0));
		assert_true(kv_xxh64(buf + 1, n - (n > 0), 12345) ==
			    XXH64(buf + 1, n - (n > 0), 12345));
	}
	assert_true(kv_xxh64(NULL, 0, 0) == 0xef46db3751d8e999ULL);
}

static void test_kvmem(void **state)
{
	size_t size = 8 * MIB + 12345;
	uint8_t *region = malloc(size);
	struct kvmem m;
	void *p[4096];
	size_t sz[4096], i, total, fails;
	unsigned int seed = 1;

	assert_int_equal(kvmem_init(&m, region, 50), -EINVAL);
	assert_int_equal(kvmem_init(&m, region + 3, size - 3), 0);
	assert_int_equal(kvmem_check(&m), 0);
	total = m.size;
	assert_true(total > 8 * MIB - 64 * 1024);
	assert_int_equal(kvmem_block_size(0), KVMEM_MIN);
	assert_int_equal(kvmem_block_size(33), 64);
	assert_int_equal(kvmem_block_size(KVMEM_MAX), KVMEM_MAX);
	assert_int_equal(kvmem_block_size(KVMEM_MAX + 1), 0);
	assert_null(kvmem_alloc(&m, KVMEM_MAX + 1));

	/* Random churn over every size class, checking as we go. */
	memset(p, 0, sizeof(p));
	for (int round = 0; round < 40000; round++) {
		i = (size_t)rand_r(&seed) % 4096;
		if (p[i]) {
			assert_int_equal(((uint8_t *)p[i])[0], (uint8_t)i);
			kvmem_free(&m, p[i], sz[i]);
			p[i] = NULL;
		} else {
			sz[i] = (size_t)rand_r(&seed) %
				(rand_r(&seed) % 8 ? 300 : 70000);
			p[i] = kvmem_alloc(&m, sz[i]);
			if (p[i]) {
				assert_int_equal((uintptr_t)p[i] % KVMEM_MIN,
						 0);
				memset(p[i], (uint8_t)i, sz[i] ? sz[i] : 1);
			}
		}
		if (round % 4000 == 0)
			assert_int_equal(kvmem_check(&m), 0);
	}
	for (i = 0; i < 4096; i++)
		kvmem_free(&m, p[i], sz[i]);
	assert_int_equal(kvmem_check(&m), 0);
	assert_int_equal(m.used, 0);

	/* Everything merged back: the largest blocks are all available. */
	for (i = 0; i < total / KVMEM_MAX; i++)
		assert_non_null(p[i] = kvmem_alloc(&m, KVMEM_MAX));
	for (i = 0; i < total / KVMEM_MAX; i++)
		kvmem_free(&m, p[i], KVMEM_MAX);
	/* Exhaustion is a NULL, counted; every 1 KiB block was used. */
	fails = m.fails;
	for (i = 0; kvmem_alloc(&m, 1000); i++)
		;
	assert_int_equal(i, total / 1024);
	assert_int_equal(m.used, i * 1024);
	assert_int_equal(m.fails, fails + 1);
	assert_int_equal(kvmem_check(&m), 0);
	free(region);
}

static void test_store(void **state)
{
	uint8_t *region = malloc(4 * MIB);
	void *buckets = calloc(16, sizeof(void *));
	struct kv_store s;
	struct kvmem m;
	struct kv_entry *e;
	char key[32];
	int i;

	assert_int_equal(kvmem_init(&m, region, 4 * MIB), 0);
	assert_int_equal(kv_store_init(&s, &m, buckets, 12, 1), -EINVAL);
	assert_int_equal(kv_store_init(&s, &m, buckets, 16, 1), 0);
	assert_null(kv_store_get(&s, "a", 1));
	/* Overwrite churn does not grow memory. */
	for (i = 0; i < 20000; i++) {
		snprintf(key, sizeof(key), "k%d", i % 100);
		e = kv_store_prepare(&s, key, strlen(key), 100);
		assert_non_null(e);
		memset(kv_entry_val(e), 'v', 100);
		kv_store_put(&s, e);
		if (i == 99)
			assert_int_equal(m.used, 100 * 128);
	}
	assert_int_equal(s.count, 100);
	assert_int_equal(m.used, 100 * 128);
	assert_int_equal(s.bytes, 100 * 100 + 10 * 2 + 90 * 3);
	/* An empty key and an empty value are fine. */
	e = kv_store_prepare(&s, "", 0, 0);
	kv_store_put(&s, e);
	assert_non_null(kv_store_get(&s, "", 0));
	assert_true(kv_store_del(&s, "", 0));
	assert_false(kv_store_del(&s, "", 0));
	e = kv_store_prepare(&s, "x", 1, 5);
	kv_store_discard(&s, e);
	assert_null(kv_store_get(&s, "x", 1));
	kv_store_clear(&s);
	assert_int_equal(s.count, 0);
	assert_int_equal(s.bytes, 0);
	assert_int_equal(m.used, 0);
	assert_int_equal(kvmem_check(&m), 0);
	free(buckets);
	free(region);
}

static void test_strtoll(void **state)
{
	static const struct {
		const char *s;
		bool ok;
		long long v;
	} t[] = {
		{"0", true, 0},
		{"1", true, 1},
		{"-1", true, -1},
		{"9223372036854775807", true, INT64_MAX},
		{"-9223372036854775808", true, INT64_MIN},
		{"9223372036854775808", false, 0},
		{"-9223372036854775809", false, 0},
		{"18446744073709551616", false, 0},
		{"99999999999999999999", false, 0},
		{"", false, 0},
		{"-", false, 0},
		{"-0", false, 0},
		{"01", false, 0},
		{"+1", false, 0},
		{" 1", false, 0},
		{"1 ", false, 0},
		{"1a", false, 0},
		{"000000000000000000001", false, 0},
	};
	long long v;

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		v = 12345;
		assert_int_equal(resp_strtoll((const uint8_t *)t[i].s,
					      strlen(t[i].s), &v),
				 t[i].ok);
		if (t[i].ok)
			assert_true(v == t[i].v);
	}
}

/* ---- Commands --------------------------------------------------------- */

static void test_commands(void **state)
{
	struct env e;
	char *long_arg = fill(200, 'x'), req[1024], want[1024];

	env_new(&e, 4096, 2048);
	expect(&e, "PING\r\n", "+PONG\r\n");
	expect(&e, "*1\r\n$4\r\nping\r\n", "+PONG\r\n");
	expect(&e, "PING hello\r\n", "$5\r\nhello\r\n");
	expect(&e, "PING a b\r\n",
	       "-ERR wrong number of arguments for 'ping' command\r\n");
	expect(&e, "ECHO\r\n",
	       "-ERR wrong number of arguments for 'echo' command\r\n");
	expect(&e, "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", "$0\r\n\r\n");
	expect(&e, "echo \"a\\r\\nb\"\r\n", "$4\r\na\r\nb\r\n");
	expect(&e, "echo \"\\x41\\x4g\\\"\\q\\\\\"\r\n", "$7\r\nAx4g\"q\\\r\n");
	expect(&e, "echo 'a\\'b\\n\"'\r\n", "$6\r\na'b\\n\"\r\n");
	expect(&e, "echo \"\" \r\n", "$0\r\n\r\n");
	expect(&e, "echo '' ''\r\n",
	       "-ERR wrong number of arguments for 'echo' command\r\n");
	expect(&e, "echo a\"b c\"\r\n", "$4\r\nab c\r\n");
	expect(&e, "echo\t\"\"\v\r\n", "$0\r\n\r\n");

	expect(&e, "GET k\r\n", "$-1\r\n");
	expect(&e, "GET\r\n",
	       "-ERR wrong number of arguments for 'get' command\r\n");
	expect(&e, "GET a b\r\n",
	       "-ERR wrong number of arguments for 'get' command\r\n");
	expect(&e, "SET k\r\n",
	       "-ERR wrong number of arguments for 'set' command\r\n");
	expect(&e, "SET k v\r\n", "+OK\r\n");
	expect(&e, "GET k\r\n", "$1\r\nv\r\n");
	expect(&e, "SET k v2 NX\r\n", "$-1\r\n");
	expect(&e, "SET k v2 xx\r\n", "+OK\r\n");
	expect(&e, "SET k v3 GET\r\n", "$2\r\nv2\r\n");
	expect(&e, "SET k v4 NX GET\r\n", "$2\r\nv3\r\n");
	expect(&e, "GET k\r\n", "$2\r\nv3\r\n");
	expect(&e, "SET n v XX\r\n", "$-1\r\n");
	expect(&e, "SET n v XX GET\r\n", "$-1\r\n");
	expect(&e, "SET n v NX GET\r\n", "$-1\r\n");
	expect(&e, "GET n\r\n", "$1\r\nv\r\n");
	expect(&e, "SET k v NX XX\r\n", "-ERR syntax error\r\n");
	expect(&e, "SET k v XX NX\r\n", "-ERR syntax error\r\n");
	expect(&e, "SET k v EX 10\r\n", "-ERR syntax error\r\n");
	expect(&e, "SET k v PX\r\n", "-ERR syntax error\r\n");
	expect(&e, "SET k v NXX\r\n", "-ERR syntax error\r\n");
	expect(&e, "SET k v4 KEEPTTL nx nx\r\n", "$-1\r\n");
	expect(&e, "SET k v4 KEEPTTL\r\n", "+OK\r\n");
	expect(&e, "GET k\r\n", "$2\r\nv4\r\n");

	expect(&e, "DEL\r\n",
	       "-ERR wrong number of arguments for 'del' command\r\n");
	expect(&e, "DEL nope\r\n", ":0\r\n");
	expect(&e, "EXISTS k k n nope\r\n", ":3\r\n");
	expect(&e, "DEL k nope k n\r\n", ":2\r\n");
	expect(&e, "EXISTS k n\r\n", ":0\r\n");
	expect(&e, "EXISTS\r\n",
	       "-ERR wrong number of arguments for 'exists' command\r\n");

	expect(&e, "INCR c\r\n", ":1\r\n");
	expect(&e, "incr c\r\n", ":2\r\n");
	expect(&e, "GET c\r\n", "$1\r\n2\r\n");
	expect(&e, "INCR\r\n",
	       "-ERR wrong number of arguments for 'incr' command\r\n");
	expect(&e, "INCR c d\r\n",
	       "-ERR wrong number of arguments for 'incr' command\r\n");
	expect(&e, "SET s abc\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s \" 1\"\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s -0\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s 01\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s \"\"\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s 99999999999999999999\r\nINCR s\r\n",
	       "+OK\r\n-ERR value is not an integer or out of range\r\n");
	expect(&e, "SET s 9223372036854775807\r\nINCR s\r\n",
	       "+OK\r\n-ERR increment or decrement would overflow\r\n");
	expect(&e, "GET s\r\n", "$19\r\n9223372036854775807\r\n");
	expect(&e, "SET s 9223372036854775806\r\nINCR s\r\n",
	       "+OK\r\n:9223372036854775807\r\n");
	expect(&e, "SET s -9223372036854775808\r\nINCR s\r\nGET s\r\n",
	       "+OK\r\n:-9223372036854775807\r\n$20\r\n-"
	       "9223372036854775807\r\n");
	expect(&e, "SET s -1\r\nINCR s\r\nINCR s\r\n", "+OK\r\n:0\r\n:1\r\n");

	expect(&e, "DBSIZE\r\n", ":2\r\n");
	expect(&e, "DBSIZE x\r\n",
	       "-ERR wrong number of arguments for 'dbsize' command\r\n");
	expect(&e, "FLUSHALL x\r\n", "-ERR syntax error\r\n");
	expect(&e, "FLUSHALL SYNC x\r\n", "-ERR syntax error\r\n");
	expect(&e, "FLUSHALL\r\nDBSIZE\r\n", "+OK\r\n:0\r\n");
	expect(&e, "SET a 1\r\nFLUSHALL async\r\nDBSIZE\r\n",
	       "+OK\r\n+OK\r\n:0\r\n");
	expect(&e, "FLUSHALL sync\r\n", "+OK\r\n");

	expect(&e, "COMMAND\r\n", "*0\r\n");
	expect(&e, "*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n", "*0\r\n");
	expect(&e, "COMMAND DOCS get set\r\n", "*0\r\n");
	expect(&e, "COMMAND COUNT\r\n", ":13\r\n");
	expect(&e, "COMMAND COUNT x\r\n",
	       "-ERR wrong number of arguments for 'command|count' "
	       "command\r\n");
	expect(&e, "command foo\r\n",
	       "-ERR unknown subcommand 'foo'. Try COMMAND HELP.\r\n");
	expect(&e, "CONFIG\r\n",
	       "-ERR wrong number of arguments for 'config' command\r\n");
	expect(&e, "CONFIG GET\r\n",
	       "-ERR wrong number of arguments for 'config|get' command\r\n");
	expect(&e, "CONFIG SET save x\r\n",
	       "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n");
	expect(&e, "CONFIG GET save\r\n", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
	expect(&e, "CONFIG GET nothing\r\n", "*0\r\n");
	expect(&e, "config get SAVE appendonly save\r\n",
	       "*4\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
	       "$4\r\nsave\r\n$0\r\n\r\n");

	expect(&e, "FOO\r\n",
	       "-ERR unknown command 'FOO', with args beginning with: \r\n");
	expect(&e, "foo a \"b c\" ''\r\n",
	       "-ERR unknown command 'foo', with args beginning with: 'a' "
	       "'b c' '' \r\n");
	expect(&e, "\"x\\r\\ny\" \"a\\x00b\" c\r\n",
	       "-ERR unknown command 'x  y', with args beginning with: 'a' "
	       "'c' \r\n");
	/* Arguments are listed up to 128 bytes, each cut to what is left. */
	snprintf(req, sizeof(req), "nope %s a\r\n", long_arg);
	snprintf(want, sizeof(want),
		 "-ERR unknown command 'nope', with args beginning with: "
		 "'%.128s' \r\n",
		 long_arg);
	expect(&e, req, want);
	snprintf(req, sizeof(req), "nope ab %s a\r\n", long_arg);
	snprintf(want, sizeof(want),
		 "-ERR unknown command 'nope', with args beginning with: "
		 "'ab' '%.123s' \r\n",
		 long_arg);
	expect(&e, req, want);
	snprintf(req, sizeof(req), "%s\r\n", long_arg);
	snprintf(want, sizeof(want),
		 "-ERR unknown command '%.128s', with args beginning with: "
		 "\r\n",
		 long_arg);
	expect(&e, req, want);

	/* Empty requests are skipped, as Redis does. */
	expect(&e, "\r\n\n   \r\n*0\r\n*-1\r\nPING\r\n", "+PONG\r\n");

	/* QUIT answers, then nothing more runs. */
	expect(&e, "QUIT\r\nPING\r\n", "+OK\r\n");
	assert_true(e.cl.closing);
	expect(&e, "PING\r\n", "");
	free(long_arg);
	env_free(&e);
}

/* FTSTATS's reply: the first nine values given, then mem_used and
 * mem_total as they are (the client's buffers are allocated first), then
 * net_moves (set by the embedding program; 0 here). */
static void expect_stats(struct env *e, const uint64_t v[9])
{
	static const char *const names[12] = {
		"acked_writes", "keys",		"log_entries",
		"log_bytes",	"log_capacity", "replayed_entries",
		"commits",	"compactions",	"epoch",
		"mem_used",	"mem_total",	"net_moves",
	};
	uint64_t val[12];
	char want[2048];
	size_t n = 0;

	expect(e, "PING\r\n", "+PONG\r\n");
	memcpy(val, v, 9 * sizeof(v[0]));
	val[9] = e->mem.used;
	val[10] = e->mem.size;
	val[11] = e->kv.net_moves;
	n += (size_t)snprintf(want + n, sizeof(want) - n, "*24\r\n");
	for (int i = 0; i < 12; i++)
		n += (size_t)snprintf(
			want + n, sizeof(want) - n, "$%zu\r\n%s\r\n:%llu\r\n",
			strlen(names[i]), names[i], (unsigned long long)val[i]);
	expect(e, "FTSTATS\r\n", want);
}

static void test_ftstats(void **state)
{
	struct env e;
	const uint64_t cap = (4096 - 2) / 2 * 512;
	const char *out;
	size_t n;

	env_new(&e, 4096, 2048);
	expect(&e, "FTSTATS x\r\n",
	       "-ERR wrong number of arguments for 'ftstats' command\r\n");
	expect_stats(&e, (uint64_t[]){0, 0, 0, 0, cap, 0, 0, 0, 1});
	e.kv.net_moves = 3;
	expect_stats(&e, (uint64_t[]){0, 0, 0, 0, cap, 0, 0, 0, 1});
	e.kv.net_moves = 0;
	/* Each of these writes logs 56 bytes: a 32-byte header, a payload
	 * of 9 or 10 bytes padded to 16, an 8-byte checksum. */
	expect(&e, "SET k v\r\nDEL k\r\nDEL k\r\nINCR i\r\nSET k v NX\r\n",
	       "+OK\r\n:1\r\n:0\r\n:1\r\n+OK\r\n");
	/* The writes of FTSTATS's own batch count as acknowledged: its
	 * reply goes out after their commit. */
	out = feed(&e, "SET k v\r\nFTSTATS\r\n", 18, &n);
	assert_non_null(strstr(out, "$12\r\nacked_writes\r\n:5\r\n"));
	assert_non_null(strstr(out, "$9\r\nlog_bytes\r\n:280\r\n"));
	assert_non_null(strstr(out, "$7\r\ncommits\r\n:1\r\n"));
	assert_int_equal(e.kv.acked, 5);
	expect_stats(&e, (uint64_t[]){5, 2, 5, 280, cap, 0, 2, 0, 1});
	/* Replayed after a restart, in a new epoch. */
	env_crash(&e);
	env_open(&e);
	assert_int_equal(e.rep.entries, 5);
	assert_int_equal(e.rep.epoch, 2);
	assert_false(e.rep.truncated);
	expect_stats(&e, (uint64_t[]){0, 2, 5, 280, cap, 5, 0, 0, 2});
	get_is(&e, "k", "v");
	get_is(&e, "i", "1");
	env_free(&e);
}

/* ---- Pipelining and split input --------------------------------------- */

static const char script[] =
	"FLUSHALL\r\n"
	"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nval\r\n\r\n"
	"GET key\r\n"
	"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
	"SET \"sp ace\" 'it\\'s'\r\n"
	"\r\n"
	"*0\r\n"
	"INCR ctr\r\nINCR ctr\nINCR ctr\r\n"
	"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n"
	"EXISTS key \"sp ace\" ctr x\r\n"
	"DEL key\r\n"
	"*4\r\n$3\r\nset\r\n$1\r\nb\r\n$10\r\n0123456789\r\n$3\r\nGET\r\n"
	"PING\r\nECHO \"\\x41\\x42\"\r\n"
	"nosuch 1 2\r\n"
	"DBSIZE\r\n";

/* The replies of `script` (built by running it whole once). */
static char *whole_out;
static size_t whole_len;

static void test_pipeline(void **state)
{
	struct env e;
	const char *out;
	size_t n, len = sizeof(script) - 1;

	env_new(&e, 4096, 2048);
	out = feed(&e, script, len, &n);
	/* Spot checks; the split test compares against this. */
	assert_non_null(strstr(out, "+OK\r\n+OK\r\n$5\r\nval\r\n\r\n"
				    "$5\r\nval\r\n\r\n+OK\r\n:1\r\n"));
	assert_non_null(strstr(out, ":1\r\n:2\r\n:3\r\n:4\r\n:3\r\n:1\r\n"));
	assert_non_null(strstr(out, "$2\r\nAB\r\n"));
	assert_non_null(strstr(out, "-ERR unknown command 'nosuch', with "
				    "args beginning with: '1' '2' \r\n"));
	assert_non_null(strstr(out, "$-1\r\n+PONG\r\n$2\r\nAB\r\n"));
	assert_true(n > 4 && !strcmp(out + n - 4, ":3\r\n"));
	whole_out = malloc(n + 1);
	memcpy(whole_out, out, n);
	whole_len = n;
	expect(&e, "GET \"sp ace\"\r\n", "$4\r\nit's\r\n");
	env_free(&e);
}

/* Feeding the script in two pieces, cut at every byte, and byte by byte,
 * gives the same replies as feeding it whole. */
static void test_split(void **state)
{
	struct env e;
	size_t len = sizeof(script) - 1, cut, n1, n2;
	const char *out;
	char *acc = malloc(whole_len + 1);

	assert_non_null(whole_out);
	env_new(&e, 8192, 2048);
	for (cut = 0; cut <= len; cut++) {
		out = feed(&e, script, cut, &n1);
		memcpy(acc, out, n1);
		out = feed(&e, script + cut, len - cut, &n2);
		assert_int_equal(n1 + n2, whole_len);
		memcpy(acc + n1, out, n2);
		assert_memory_equal(acc, whole_out, whole_len);
	}
	n2 = 0;
	for (cut = 0; cut < len; cut++) {
		out = feed(&e, script + cut, 1, &n1);
		assert_true(n2 + n1 <= whole_len);
		memcpy(acc + n2, out, n1);
		n2 += n1;
	}
	assert_int_equal(n2, whole_len);
	assert_memory_equal(acc, whole_out, whole_len);
	free(acc);
	env_free(&e);
}

/* ---- Protocol errors -------------------------------------------------- */

/* The request must get `want` (everything before the error included),
 * and the connection must be marked closing, executing nothing more. */
static void expect_proto(struct env *e, const char *req, size_t n,
			 const char *err)
{
	char want[256];

	snprintf(want, sizeof(want), "+PONG\r\n-ERR Protocol error: %s\r\n",
		 err);
	kv_client_free(&e->cl);
	kv_client_init(&e->cl, &e->mem);
	kv_buf_add(&e->cl.in, "PING\r\n", 6);
	expect_n(e, req, n, want, strlen(want));
	assert_true(e->cl.closing);
	expect(e, "PING\r\n", "");
}

#define PROTO(req, err) expect_proto(&e, req, sizeof(req) - 1, err)

static void test_protocol_errors(void **state)
{
	struct env e;
	size_t big = RESP_INLINE_MAX + 2, n;
	char *buf = malloc(2 * MIB);

	env_new(&e, 8192, 2048);
	PROTO("*x\r\n", "invalid multibulk length");
	PROTO("*1025\r\n", "invalid multibulk length");
	PROTO("*+1\r\n", "invalid multibulk length");
	PROTO("*01\r\n", "invalid multibulk length");
	PROTO("*99999999999999999999\r\n", "invalid multibulk length");
	PROTO("*1\r\n$-1\r\n", "invalid bulk length");
	PROTO("*1\r\n$-5\r\n", "invalid bulk length");
	PROTO("*1\r\n$abc\r\n", "invalid bulk length");
	PROTO("*1\r\n$\r\n", "invalid bulk length");
	PROTO("*1\r\n$+4\r\nPING\r\n", "invalid bulk length");
	PROTO("*1\r\n$04\r\nPING\r\n", "invalid bulk length");
	PROTO("*1\r\n$524289\r\n", "invalid bulk length");
	PROTO("*1\r\n$99999999999\r\n", "invalid bulk length");
	PROTO("*1\r\n$4\r\nPINGXX", "expected CRLF");
	PROTO("*1\r\n$4\r\nPING\n\n", "expected CRLF");
	PROTO("*1\r\n$4\r\nPING\rX", "expected CRLF");
	PROTO("*1\rX", "expected CRLF");
	PROTO("*1\r\n$4\rX", "expected CRLF");
	PROTO("*1\r\n*1\r\n$4\r\nPING\r\n", "expected '$', got '*'");
	PROTO("*2\r\n$4\r\nECHO\r\n:1\r\n", "expected '$', got ':'");
	PROTO("*1\r\n\r\n", "expected '$', got ' '");
	PROTO("SET \"a b\r\n", "unbalanced quotes in request");
	PROTO("SET \"a\"b\r\n", "unbalanced quotes in request");
	PROTO("SET 'a\r\n", "unbalanced quotes in request");
	PROTO("SET 'a'b c\r\n", "unbalanced quotes in request");
	PROTO("SET a '\r\n", "unbalanced quotes in request");
	PROTO("SET a \"\\\"\r\n", "unbalanced quotes in request");
	PROTO("SET a 'it\\'\r\n", "unbalanced quotes in request");

	/* Lines too long for a header or an inline request. */
	memset(buf, '1', 2 * MIB);
	buf[0] = '*';
	expect_proto(&e, buf, big, "too big mbulk count string");
	memcpy(buf, "*1\r\n$", 5);
	expect_proto(&e, buf, big + 5, "too big bulk count string");
	memset(buf, 'a', big);
	expect_proto(&e, buf, big, "too big inline request");
	buf[RESP_INLINE_MAX + 1] = '\n';
	expect_proto(&e, buf, big, "too big inline request");
	/* ... but a line of the maximum length is fine. */
	memcpy(buf, "ECHO ", 5);
	memcpy(buf + RESP_INLINE_MAX, "\r\n", 2);
	kv_client_free(&e.cl);
	kv_client_init(&e.cl, &e.mem);
	assert_true(strncmp(feed(&e, buf, big, &n), "$65531\r\n", 8) == 0);
	assert_int_equal(n, 65531 + 10);
	/* More arguments than RESP_ARGS_MAX on one inline line. */
	for (n = 0; n < 2 * 1025; n += 2)
		memcpy(buf + n, "a ", 2);
	memcpy(buf + n, "\r\n", 2);
	expect_proto(&e, buf, n + 2, "invalid multibulk length");

	/* A request announcing more than RESP_REQ_MAX is refused as soon as
	 * its header says so, before the data arrives. */
	n = (size_t)sprintf(buf, "*3\r\n$524288\r\n");
	memset(buf + n, 'a', 524288);
	n += 524288;
	n += (size_t)sprintf(buf + n, "\r\n$524288\r\n");
	memset(buf + n, 'b', 524288);
	n += 524288;
	n += (size_t)sprintf(buf + n, "\r\n$524288\r\n");
	expect_proto(&e, buf, n, "request too big");

	/* The largest SET fits (key and value of RESP_BULK_MAX bytes). */
	kv_client_free(&e.cl);
	kv_client_init(&e.cl, &e.mem);
	n = (size_t)sprintf(buf, "*3\r\n$3\r\nSET\r\n$524288\r\n");
	memset(buf + n, 'k', 524288);
	n += 524288;
	n += (size_t)sprintf(buf + n, "\r\n$524288\r\n");
	memset(buf + n, 'v', 524288);
	n += 524288;
	n += (size_t)sprintf(buf + n, "\r\n");
	expect_n(&e, buf, n, "+OK\r\n", 5);
	expect(&e, "DBSIZE\r\n", ":1\r\n");
	free(buf);
	env_free(&e);
}

/* Replies stop at the high-water mark and resume once taken. */
static void test_backpressure(void **state)
{
	struct env e;
	char *val = fill(100000, 'v');
	size_t n, total = 0;
	int i;

	env_new(&e, 4096, 2048);
	set_ok(&e, "big", val);
	for (i = 0; i < 20; i++)
		kv_buf_add(&e.cl.in, "GET big\r\n", 9);
	assert_int_equal(kv_run(&e.kv, &e.cl, 256 * 1024), 3);
	assert_true(e.cl.out.len >= 256 * 1024);
	for (i = 3; i < 20;) {
		total += e.cl.out.len;
		kv_buf_consume(&e.cl.out, e.cl.out.len);
		n = kv_run(&e.kv, &e.cl, 256 * 1024);
		assert_true(n >= 1);
		i += (int)n;
	}
	total += e.cl.out.len;
	assert_int_equal(total, 20 * (100000 + 11));
	assert_int_equal(e.cl.in.len, 0);
	free(val);
	env_free(&e);
}

/* ---- The log ---------------------------------------------------------- */

static void test_log_roundtrip(void **state)
{
	struct env e;
	char *big = fill(300000, 'B');
	const char *req;
	size_t n;
	int i;

	/* max_io 8: commits take several writes, only the last flushes. */
	env_new(&e, 65536, 8);
	assert_int_equal(e.rep.entries, 0);
	set_ok(&e, "a", "1");
	expect(&e, "SET b 2\r\nSET c 3\r\nDEL a\r\nINCR n\r\nINCR n\r\n",
	       "+OK\r\n+OK\r\n:1\r\n:1\r\n:2\r\n");
	/* Writes that change nothing log nothing. */
	expect(&e, "DEL zz\r\nSET b x NX\r\nSET q x XX\r\nINCR b\r\n",
	       ":0\r\n$-1\r\n$-1\r\n:3\r\n");
	e.disk.writes = e.disk.flushes = 0;
	for (i = 0; i < 15; i++) {
		if (i == 14)
			big[0] = 'C';
		req = set_req(i == 14 ? "big2" : "big", big, &n);
		kv_buf_add(&e.cl.in, req, n);
		assert_int_equal(kv_run(&e.kv, &e.cl, SIZE_MAX), 1);
	}
	/* 15 entries of 300056 bytes overflow the 4 MiB buffer once: that
	 * part is written early, without flush; one flush at the end. */
	assert_int_equal(e.disk.flushes, 0);
	assert_true(e.disk.writes > 0);
	assert_int_equal(kv_commit(&e.kv), 0);
	assert_int_equal(e.disk.flushes, 1);
	assert_true(e.disk.writes <= (15 * 300056 + 511) / 512 / 8 + 2);
	kv_buf_consume(&e.cl.out, e.cl.out.len);

	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.formatted);
	assert_false(e.rep.truncated);
	assert_int_equal(e.rep.entries, 7 + 15);
	expect(&e, "DBSIZE\r\n", ":5\r\n");
	get_is(&e, "a", NULL);
	get_is(&e, "b", "3");
	get_is(&e, "c", "3");
	get_is(&e, "n", "2");
	get_is(&e, "big2", big);
	big[0] = 'B';
	get_is(&e, "big", big);

	/* FLUSHALL starts a new, empty log. */
	expect(&e, "SET x 1\r\nFLUSHALL\r\nSET y 2\r\n",
	       "+OK\r\n+OK\r\n+OK\r\n");
	env_crash(&e);
	env_open(&e);
	assert_int_equal(e.rep.entries, 1);
	assert_false(e.rep.truncated);
	expect(&e, "DBSIZE\r\nGET y\r\n", ":1\r\n$1\r\n2\r\n");
	/* A FLUSHALL whose superblock never landed did not happen. */
	expect(&e, "SET z 3\r\n", "+OK\r\n");
	e.disk.budget = 0;
	expect(&e, "FLUSHALL\r\nSET w 4\r\n", "+OK\r\n+OK\r\n");
	env_crash(&e);
	e.disk.budget = -1;
	env_open(&e);
	expect(&e, "DBSIZE\r\nGET z\r\n", ":2\r\n$1\r\n3\r\n");
	free(big);
	env_free(&e);
}

/* Log-relative byte offsets of each entry's end, recorded per command. */
static uint64_t log_bytes(struct env *e)
{
	struct kvlog_stats st;

	kvlog_stats(&e->log, &st);
	return st.bytes;
}

static void tail_setup(struct env *e, uint64_t *ends, int nkeys)
{
	char key[16], val[400];
	size_t n;
	const char *req;

	env_new(e, 4096, 2048);
	for (int i = 0; i < nkeys; i++) {
		snprintf(key, sizeof(key), "key%d", i);
		memset(val, 'a' + i % 26, 99 + i * 7);
		val[99 + i * 7] = 0;
		req = set_req(key, val, &n);
		expect_n(e, req, n, "+OK\r\n", 5);
		ends[i] = log_bytes(e);
	}
	env_crash(e);
}

static void check_keys(struct env *e, int kept, int nkeys)
{
	char key[16], val[400];

	for (int i = 0; i < nkeys; i++) {
		snprintf(key, sizeof(key), "key%d", i);
		memset(val, 'a' + i % 26, 99 + i * 7);
		val[99 + i * 7] = 0;
		get_is(e, key, i < kept ? val : NULL);
	}
}

/* Damage the region's byte `off` (log-relative). */
static uint8_t *at(struct env *e, uint64_t off)
{
	return e->disk.data + 2 * 512 + off;
}

static void test_log_corrupt_tail(void **state)
{
	struct env e;
	uint64_t ends[12];
	int kind;

	for (kind = 0; kind < 6; kind++) {
		uint64_t last = ends[10];
		const char *why[] = {"bad checksum", "bad checksum",
				     "bad magic",    "bad length",
				     "bad checksum", "bad checksum"};

		tail_setup(&e, ends, 12);
		last = ends[10];
		switch (kind) {
		case 0: /* a flipped byte in the last entry's value */
			*at(&e, ends[11] - 20) ^= 0x40;
			break;
		case 1: /* a flipped byte in its header (the sequence) */
			*at(&e, last + 16) ^= 1;
			break;
		case 2: /* its magic */
			*at(&e, last) = 'X';
			break;
		case 3: /* its length runs past the region */
			memset(at(&e, last + 8), 0xff, 4);
			break;
		case 4: /* cut in the middle: the rest never written */
			memset(at(&e, last + 40), 0, ends[11] - last - 40);
			break;
		case 5: /* a torn write: garbage after half of it */
			memset(at(&e, last + 100), 0x5a, 4096);
			break;
		}
		env_open(&e);
		assert_true(e.rep.truncated);
		assert_string_equal(e.rep.why, why[kind]);
		assert_int_equal(e.rep.entries, 11);
		assert_int_equal(e.rep.end, last);
		check_keys(&e, 11, 12);
		/* The cut-off tail was zeroed: the next open is clean. */
		env_crash(&e);
		env_open(&e);
		assert_false(e.rep.truncated);
		assert_int_equal(e.rep.entries, 11);
		/* New entries continue right at the cut. */
		set_ok(&e, "new", "entry");
		env_crash(&e);
		env_open(&e);
		assert_false(e.rep.truncated);
		assert_int_equal(e.rep.entries, 12);
		check_keys(&e, 11, 12);
		get_is(&e, "new", "entry");
		env_free(&e);
	}

	/* Garbage after an intact log: the last entry is kept. */
	tail_setup(&e, ends, 12);
	memset(at(&e, ends[11]), 0xa5, 1000);
	env_open(&e);
	assert_true(e.rep.truncated);
	assert_string_equal(e.rep.why, "bad magic");
	assert_int_equal(e.rep.entries, 12);
	check_keys(&e, 12, 12);
	env_free(&e);

	/* A corrupt first entry leaves an empty store. */
	tail_setup(&e, ends, 3);
	*at(&e, 40) ^= 1;
	env_open(&e);
	assert_true(e.rep.truncated);
	assert_int_equal(e.rep.entries, 0);
	expect(&e, "DBSIZE\r\n", ":0\r\n");
	env_free(&e);
}

/*
 * A crash during a group commit: of the commit's sectors, only the first
 * k (any k), or all but one, reached the disk.  Replay keeps exactly the
 * entries that lie wholly in sectors that were written before the first
 * one that was not.
 */
static void crash_commit(struct env *e, int k, bool hole, int *kept_out)
{
	uint64_t ends[40], start, first;
	char key[16], val[1500];
	size_t n;
	int i, kept;

	env_new(e, 4096, 4);
	set_ok(e, "base", "x");
	start = log_bytes(e);
	first = start / 512; /* the commit's first (rewritten) sector */
	for (i = 0; i < 40; i++) {
		const char *req;

		snprintf(key, sizeof(key), "k%d", i);
		memset(val, 'A' + i % 26, 50 + (i * 97) % 1200);
		val[50 + (i * 97) % 1200] = 0;
		req = set_req(key, val, &n);
		kv_buf_add(&e->cl.in, req, n);
		kv_run(&e->kv, &e->cl, SIZE_MAX);
		ends[i] = log_bytes(e);
	}
	if (hole)
		e->disk.drop_sector = 2 + first + k;
	else
		e->disk.budget = k;
	assert_int_equal(kv_commit(&e->kv), 0);
	env_crash(e);
	e->disk.budget = -1;
	e->disk.drop_sector = 0;
	env_open(e);
	for (kept = 0; kept < 40 && ends[kept] <= (first + k) * 512; kept++)
		;
	assert_int_equal(e->rep.entries, 1 + kept);
	get_is(e, "base", "x");
	for (i = 0; i < 40; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		memset(val, 'A' + i % 26, 50 + (i * 97) % 1200);
		val[50 + (i * 97) % 1200] = 0;
		get_is(e, key, i < kept ? val : NULL);
	}
	*kept_out = kept;
}

static void test_log_crash_mid_commit(void **state)
{
	struct env e;
	int k, kept, last = -1, nsec;

	/* Sectors of the commit: ~26 KB of entries. */
	for (k = 0, nsec = 1000; k <= nsec; k++) {
		crash_commit(&e, k, false, &kept);
		assert_true(kept >= last);
		last = kept;
		if (kept == 40)
			nsec = k; /* all of them landed: done */
		env_free(&e);
	}
	assert_int_equal(last, 40);
	for (k = 0; k < nsec; k++) {
		crash_commit(&e, k, true, &kept);
		env_free(&e);
	}
}

/*
 * A crash leaves intact entries after a torn one; the next boot cuts the
 * log at the torn entry and writes an entry of the same size there.  The
 * old entries that follow carry the right sequence numbers but an older
 * epoch, and must never be replayed.
 */
static void test_log_stale_after_cut(void **state)
{
	struct env e;
	static uint8_t saved[4096 * 512];
	uint64_t ends[10], keep;
	char key[16], *val = fill(1200, 'x');
	size_t n;
	int i;

	env_new(&e, 4096, 2048);
	set_ok(&e, "base", "x");
	for (i = 0; i < 10; i++) {
		const char *req;

		snprintf(key, sizeof(key), "x%d", i);
		req = set_req(key, val, &n);
		kv_buf_add(&e.cl.in, req, n);
		kv_run(&e.kv, &e.cl, SIZE_MAX);
		ends[i] = log_bytes(&e);
	}
	/* Lose one sector inside x2 (which spans more than two). */
	e.disk.drop_sector = 2 + ends[1] / 512 + 1;
	assert_true(ends[1] / 512 + 1 < (ends[2] - 1) / 512);
	assert_int_equal(kv_commit(&e.kv), 0);
	env_crash(&e);
	e.disk.drop_sector = 0;
	memcpy(saved, e.disk.data, sizeof(saved));
	env_open(&e);
	assert_true(e.rep.truncated);
	assert_int_equal(e.rep.entries, 3);
	/* Suppose the zeroing after the cut was lost (a crash before its
	 * flush, with the superblock already out): x3.. are back. */
	keep = 2 * 512 + ends[1] / 512 * 512 + 512;
	memcpy(e.disk.data + keep, saved + keep, sizeof(saved) - keep);
	get_is(&e, "x1", val);
	get_is(&e, "x2", NULL);
	/* y2 lands exactly where x2 was; x3 follows it on disk. */
	set_ok(&e, "y2", val);
	assert_int_equal(log_bytes(&e), ends[2]);
	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.truncated);
	assert_int_equal(e.rep.entries, 4);
	get_is(&e, "y2", val);
	for (i = 2; i < 10; i++) {
		snprintf(key, sizeof(key), "x%d", i);
		get_is(&e, key, NULL);
	}
	free(val);
	env_free(&e);
}

static void test_log_full_and_compaction(void **state)
{
	struct env e;
	char key[16], *val = fill(1000, 'v'), *huge = fill(40000, 'h');
	const char *req;
	struct kvlog_stats st;
	size_t n;
	int i, acked = 0;

	/* Two regions of 64 sectors (32 KiB): ~30 entries of 1 KB each. */
	env_new(&e, 2 + 2 * 64, 2048);
	for (i = 0; i < 200; i++) {
		val[0] = (char)('a' + i % 26);
		set_ok(&e, "same", val);
	}
	kvlog_stats(&e.log, &st);
	assert_true(st.compactions >= 5);
	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.truncated);
	get_is(&e, "same", val);

	/* Distinct keys: once the live data fills half a region, the log
	 * is full; the refused write is not applied. */
	for (i = 0;; i++) {
		const char *out;

		snprintf(key, sizeof(key), "k%d", i);
		req = set_req(key, val, &n);
		out = feed(&e, req, n, &n);
		if (strcmp(out, "+OK\r\n")) {
			assert_string_equal(out, "-ERR log full\r\n");
			break;
		}
		acked++;
	}
	/* Full means: no room, and the live keys' snapshot would take more
	 * than half a region (each key's entry is 1056 bytes). */
	assert_true(acked >= 15 && acked <= 31);
	get_is(&e, key, NULL);
	snprintf(key, sizeof(key), ":%d\r\n", acked + 1);
	expect(&e, "DBSIZE\r\n", key);
	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.truncated);
	for (i = 0; i < acked; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		get_is(&e, key, val);
	}
	snprintf(key, sizeof(key), "k%d", acked);
	get_is(&e, key, NULL);
	/* FLUSHALL empties the log. */
	expect(&e, "FLUSHALL\r\n", "+OK\r\n");
	set_ok(&e, "after", "flush");
	/* An entry larger than a region never fits. */
	req = set_req("huge", huge, &n);
	expect_n(&e, req, n, "-ERR log full\r\n", 15);
	env_crash(&e);
	env_open(&e);
	expect(&e, "DBSIZE\r\nGET after\r\n", ":1\r\n$5\r\nflush\r\n");
	free(huge);
	free(val);
	env_free(&e);
}

/* Snapshot emitters for kvlog_compact: n entries "snapN" = 300 bytes,
 * then 0 or (fail) -ENOSPC. */
struct snap {
	int n;
	bool fail;
};

static int emit_snap(void *ctx, struct kvlog *log)
{
	struct snap *sn = ctx;
	uint8_t *p;
	char key[16];
	int i, r;

	for (i = 0; i < sn->n; i++) {
		snprintf(key, sizeof(key), "snap%02d", i);
		r = kvlog_reserve(log, KVLOG_SET, 8 + 6 + 300, &p);
		if (r)
			return r;
		kv_put32(p, 6);
		kv_put32(p + 4, 300);
		memcpy(p + 8, key, 6);
		memset(p + 14, 's', 300);
		kvlog_seal(log);
	}
	return sn->fail ? -ENOSPC : 0;
}

/*
 * A compaction that fails leaves the old log active and working; a later
 * one writes the same region, and the failed snapshot's entries beyond
 * its end (same sizes, so at entry boundaries, with the very sequence
 * numbers that follow) are never replayed.
 */
static void test_log_compaction_failure(void **state)
{
	struct env e;
	struct snap sn = {.n = 20, .fail = true};
	uint64_t epoch;

	env_new(&e, 2 + 2 * 64, 2048);
	set_ok(&e, "a", "1");
	epoch = e.log.sb.epoch;
	assert_int_equal(kvlog_compact(&e.log, emit_snap, &sn), -ENOSPC);
	assert_int_equal(e.log.sb.region, 0);
	assert_int_equal(e.log.sb.epoch, epoch + 1);
	set_ok(&e, "b", "2");
	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.truncated);
	expect(&e, "DBSIZE\r\nGET b\r\n", ":2\r\n$1\r\n2\r\n");
	/* Now the same with no write between: sequence numbers line up. */
	assert_int_equal(kvlog_compact(&e.log, emit_snap, &sn), -ENOSPC);
	sn = (struct snap){.n = 5, .fail = false};
	assert_int_equal(kvlog_compact(&e.log, emit_snap, &sn), 0);
	assert_int_equal(e.log.sb.region, 1);
	assert_int_equal(e.log.compactions, 1);
	env_crash(&e);
	env_open(&e);
	assert_false(e.rep.truncated);
	assert_int_equal(e.rep.entries, 5);
	expect(&e, "DBSIZE\r\n", ":5\r\n");
	get_is(&e, "snap05", NULL);
	/* A device error during compaction sticks. */
	sn.n = 1;
	set_ok(&e, "c", "3");
	e.disk.fail = -EIO;
	assert_int_equal(kvlog_compact(&e.log, emit_snap, &sn), -EIO);
	assert_int_equal(kv_commit(&e.kv), -EIO);
	env_free(&e);
}

static void test_log_superblock(void **state)
{
	struct env e;
	uint64_t epoch;

	env_new(&e, 4096, 2048);
	set_ok(&e, "a", "1");
	epoch = e.rep.epoch;
	env_crash(&e);
	env_open(&e);
	assert_int_equal(e.rep.epoch, epoch + 1);
	env_crash(&e);
	/* The newest superblock copy torn: the previous one serves. */
	e.disk.data[((epoch + 1) & 1) * 512 + 100] ^= 1;
	env_open(&e);
	assert_int_equal(e.rep.epoch, epoch + 1);
	get_is(&e, "a", "1");
	env_crash(&e);
	/* Both copies bad on a disk that is not blank: refused. */
	e.disk.data[0 + 8] ^= 1;
	e.disk.data[512 + 8] ^= 1;
	env_open_sized(&e, false, ARENA);
	assert_int_equal(e.open_err, -EUCLEAN);
	env_crash(&e);
	/* ... unless formatting is asked for. */
	env_open_sized(&e, true, ARENA);
	assert_int_equal(e.open_err, 0);
	assert_true(e.rep.formatted);
	get_is(&e, "a", NULL);
	env_crash(&e);
	/* The format invalidated the old log for good. */
	env_open(&e);
	assert_false(e.rep.formatted);
	get_is(&e, "a", NULL);
	env_crash(&e);
	/* A superblock whose regions do not fit the disk. */
	e.disk.sectors = 2000;
	env_open_sized(&e, false, ARENA);
	assert_int_equal(e.open_err, -EUCLEAN);
	env_crash(&e);
	/* Too small for a log at all. */
	e.disk.sectors = 2 + 2 * KVLOG_MIN_REGION - 1;
	env_open_sized(&e, false, ARENA);
	assert_int_equal(e.open_err, -EINVAL);
	env_free(&e);
}

static void test_log_device_error(void **state)
{
	struct env e;

	env_new(&e, 4096, 2048);
	set_ok(&e, "a", "1");
	e.disk.fail = -EIO;
	kv_buf_add(&e.cl.in, "SET b 2\r\nGET b\r\n", 16);
	assert_int_equal(kv_run(&e.kv, &e.cl, SIZE_MAX), 2);
	assert_int_equal(kv_commit(&e.kv), -EIO);
	assert_int_equal(e.kv.io_err, -EIO);
	/* Nothing more runs, and the error sticks. */
	kv_buf_add(&e.cl.in, "PING\r\n", 6);
	assert_int_equal(kv_run(&e.kv, &e.cl, SIZE_MAX), 0);
	e.disk.fail = 0;
	assert_int_equal(kv_commit(&e.kv), -EIO);
	env_crash(&e);
	env_open(&e);
	get_is(&e, "a", "1");
	get_is(&e, "b", NULL);
	env_free(&e);
}

/* Many clients, one commit: one flushing write. */
static void test_group_commit(void **state)
{
	struct env e;
	struct kv_client cl[50];
	char req[64];
	int i, j;

	env_new(&e, 4096, 2048);
	e.disk.writes = e.disk.flushes = 0;
	for (i = 0; i < 50; i++) {
		kv_client_init(&cl[i], &e.mem);
		for (j = 0; j < 16; j++) {
			snprintf(req, sizeof(req), "SET c%d:%d %d\r\n", i, j,
				 j);
			kv_buf_add(&cl[i].in, req, strlen(req));
		}
		assert_int_equal(kv_run(&e.kv, &cl[i], SIZE_MAX), 16);
	}
	assert_int_equal(e.disk.writes, 0);
	assert_int_equal(kv_commit(&e.kv), 0);
	assert_int_equal(e.disk.writes, 1);
	assert_int_equal(e.disk.flushes, 1);
	assert_int_equal(e.kv.acked, 800);
	for (i = 0; i < 50; i++)
		kv_client_free(&cl[i]);
	env_crash(&e);
	env_open(&e);
	expect(&e, "DBSIZE\r\n", ":800\r\n");
	env_free(&e);
}

struct usage {
	size_t bytes;
};

static int count_usage(void *ctx, const struct kv_entry *en)
{
	struct usage *u = ctx;

	u->bytes += kvmem_block_size(offsetof(struct kv_entry, data) +
				     en->klen + en->vlen);
	return 0;
}

/*
 * redis-benchmark -t set -n 100000 -r 100000 and then values of changing
 * sizes: memory in use is exactly the live entries' blocks and the
 * client's buffers, whatever the churn.
 */
static void test_memory_churn(void **state)
{
	struct env e;
	struct usage u = {0};
	unsigned int seed = 7;
	char req[4200], val[4000];
	size_t n;
	int i;

	memset(&e, 0, sizeof(e));
	md_init(&e.disk, 2 + 2 * 65536, 2048);
	env_open(&e);
	memset(val, 'x', sizeof(val));
	for (i = 0; i < 300000; i++) {
		unsigned int len =
			i < 100000 ? 3 : (unsigned)rand_r(&seed) % 4000;
		unsigned int key =
			(unsigned)rand_r(&seed) % (i < 100000 ? 100000 : 3000);

		n = (size_t)snprintf(req, sizeof(req),
				     "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012u\r\n"
				     "$%u\r\n%.*s\r\n",
				     key, len, (int)len, val);
		kv_buf_add(&e.cl.in, req, n);
		if (i % 64 == 63) {
			kv_run(&e.kv, &e.cl, SIZE_MAX);
			assert_int_equal(kv_commit(&e.kv), 0);
			assert_null(memmem(e.cl.out.p, e.cl.out.len, "-", 1));
			kv_buf_consume(&e.cl.out, e.cl.out.len);
		}
	}
	kv_run(&e.kv, &e.cl, SIZE_MAX);
	assert_int_equal(kv_commit(&e.kv), 0);
	kv_store_foreach(&e.kv.store, count_usage, &u);
	assert_int_equal(e.mem.used, u.bytes + e.cl.in.cap + e.cl.out.cap);
	assert_int_equal(kvmem_check(&e.mem), 0);
	assert_true(e.log.compactions > 0);
	env_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_xxh64),
		cmocka_unit_test(test_kvmem),
		cmocka_unit_test(test_store),
		cmocka_unit_test(test_strtoll),
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_ftstats),
		cmocka_unit_test(test_pipeline),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_protocol_errors),
		cmocka_unit_test(test_backpressure),
		cmocka_unit_test(test_log_roundtrip),
		cmocka_unit_test(test_log_corrupt_tail),
		cmocka_unit_test(test_log_crash_mid_commit),
		cmocka_unit_test(test_log_stale_after_cut),
		cmocka_unit_test(test_log_full_and_compaction),
		cmocka_unit_test(test_log_compaction_failure),
		cmocka_unit_test(test_log_superblock),
		cmocka_unit_test(test_log_device_error),
		cmocka_unit_test(test_group_commit),
		cmocka_unit_test(test_memory_churn),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
