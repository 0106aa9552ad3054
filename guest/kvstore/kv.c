// SPDX-License-Identifier: MIT
/*
 * kv.c - the commands (kv.h; docs/kvstore.md lists them with their exact
 * replies).
 *
 * Dispatch, arity checks and error texts follow Redis 7.0's
 * processCommand.  A write first prepares its store change (allocating
 * what it needs), then appends its log entry, then applies the change
 * and replies: so a write that cannot be logged (log full) or cannot be
 * stored (memory) is refused whole, and the store never holds a change
 * the log lacks.
 *
 * Log payloads:  KVLOG_SET  u32 klen, u32 vlen, key, value
 *                KVLOG_DEL  u32 count, then count times (u32 klen, key)
 * INCR logs the SET of its result; FLUSHALL starts a new log
 * (kvlog_reset).
 */
#include "kv.h"

#include "kvhash.h"

#define OOM_MSG "OOM command not allowed when used memory > 'maxmemory'."

struct kv_cmd {
	const char *name; /* lower case; "parent|sub" for subcommands */
	int arity;	  /* Redis's: N exactly, -N at least N arguments */
	void (*run)(struct kv *kv, struct kv_client *c,
		    const struct resp_req *r);
	const struct kv_cmd *subs; /* subcommands, NULL-terminated */
};

int kv_init(struct kv *kv, struct kvmem *mem, void *buckets, size_t nbuckets,
	    uint64_t seed, struct kvlog *log)
{
	memset(kv, 0, sizeof(*kv));
	kv->mem = mem;
	kv->log = log;
	return kv_store_init(&kv->store, mem, buckets, nbuckets, seed);
}

void kv_client_init(struct kv_client *c, struct kvmem *mem)
{
	*c = (struct kv_client){.in.mem = mem, .out.mem = mem};
}

void kv_client_free(struct kv_client *c)
{
	kv_buf_free(&c->in);
	kv_buf_free(&c->out);
}

/* ---- Replay ----------------------------------------------------------- */

static int apply_set(struct kv *kv, const uint8_t *p, uint32_t len)
{
	uint32_t klen, vlen;
	struct kv_entry *e;

	if (len < 8)
		return -EBADMSG;
	klen = kv_get32(p);
	vlen = kv_get32(p + 4);
	if (klen > RESP_BULK_MAX || vlen > RESP_BULK_MAX ||
	    8 + klen + vlen != len)
		return -EBADMSG;
	e = kv_store_prepare(&kv->store, p + 8, klen, vlen);
	if (!e)
		return -ENOMEM;
	memcpy(kv_entry_val(e), p + 8 + klen, vlen);
	kv_store_put(&kv->store, e);
	return 0;
}

static int apply_del(struct kv *kv, const uint8_t *p, uint32_t len)
{
	uint32_t count, i, off = 4;

	if (len < 4)
		return -EBADMSG;
	count = kv_get32(p);
	if (count == 0 || count > RESP_ARGS_MAX)
		return -EBADMSG;
	/* Check the whole entry before deleting anything. */
	for (i = 0; i < count; i++) {
		uint32_t klen;

		if (len - off < 4)
			return -EBADMSG;
		klen = kv_get32(p + off);
		if (klen > RESP_BULK_MAX || klen > len - off - 4)
			return -EBADMSG;
		off += 4 + klen;
	}
	if (off != len)
		return -EBADMSG;
	for (i = 0, off = 4; i < count; i++) {
		uint32_t klen = kv_get32(p + off);

		kv_store_del(&kv->store, p + off + 4, klen);
		off += 4 + klen;
	}
	return 0;
}

int kv_apply(void *ctx, unsigned int type, const uint8_t *payload, uint32_t len)
{
	struct kv *kv = ctx;
	int r = type == KVLOG_SET   ? apply_set(kv, payload, len)
		: type == KVLOG_DEL ? apply_del(kv, payload, len)
				    : -EBADMSG;

	if (!r)
		kv->replayed++;
	return r;
}

/* ---- Logging ---------------------------------------------------------- */

static int emit_key(void *ctx, const struct kv_entry *e)
{
	struct kvlog *log = ctx;
	uint8_t *p;
	int r;

	r = kvlog_reserve(log, KVLOG_SET, 8 + (size_t)e->klen + e->vlen, &p);
	if (r)
		return r;
	kv_put32(p, e->klen);
	kv_put32(p + 4, e->vlen);
	memcpy(p + 8, e->data, (size_t)e->klen + e->vlen);
	kvlog_seal(log);
	return 0;
}

static int emit_snapshot(void *ctx, struct kvlog *log)
{
	struct kv *kv = ctx;

	return kv_store_foreach(&kv->store, emit_key, log);
}

/*
 * Reserve a log entry; when the log is full, compact it first if the
 * live keys' snapshot fills at most half of a region (so compaction
 * costs O(1) per byte written, amortised).  A device error is recorded
 * in kv->io_err.
 */
static int log_reserve(struct kv *kv, unsigned int type, size_t len,
		       uint8_t **p)
{
	struct kvlog_stats st;
	uint64_t snap;
	int r;

	r = kvlog_reserve(kv->log, type, len, p);
	if (r == -ENOSPC) {
		kvlog_stats(kv->log, &st);
		snap = kv->store.count * kvlog_entry_size(15) + kv->store.bytes;
		if (snap <= st.capacity / 2) {
			r = kvlog_compact(kv->log, emit_snapshot, kv);
			if (!r)
				r = kvlog_reserve(kv->log, type, len, p);
		}
	}
	if (r && r != -ENOSPC && r != -E2BIG)
		kv->io_err = r;
	return r;
}

/* Reply to a write that could not be logged. */
static void log_failed(struct kv_client *c, int r)
{
	resp_error(&c->out, r == -ENOSPC || r == -E2BIG
				    ? "ERR log full"
				    : "ERR log write failed");
}

/* Log SET key e (prepared).  Returns 0 or the error (replied). */
static int log_set(struct kv *kv, struct kv_client *c, const struct kv_entry *e)
{
	uint8_t *p;
	int r;

	r = log_reserve(kv, KVLOG_SET, 8 + (size_t)e->klen + e->vlen, &p);
	if (r) {
		log_failed(c, r);
		return r;
	}
	kv_put32(p, e->klen);
	kv_put32(p + 4, e->vlen);
	memcpy(p + 8, e->data, (size_t)e->klen + e->vlen);
	kvlog_seal(kv->log);
	kv->batch++;
	return 0;
}

int kv_commit(struct kv *kv)
{
	int r = kvlog_commit(kv->log);

	if (r) {
		kv->io_err = r;
		return r;
	}
	kv->acked += kv->batch;
	kv->batch = 0;
	return 0;
}

/* ---- Commands --------------------------------------------------------- */

static bool arg_is(const struct resp_req *r, int i, const char *word)
{
	size_t n = strlen(word), k;

	if (r->argl[i] != n)
		return false;
	for (k = 0; k < n; k++) {
		uint8_t ch = r->argv[i][k];

		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		if (ch != (uint8_t)word[k])
			return false;
	}
	return true;
}

static void cmd_ping(struct kv *kv, struct kv_client *c,
		     const struct resp_req *r)
{
	(void)kv;
	if (r->argc > 2)
		resp_error(&c->out,
			   "ERR wrong number of arguments for 'ping' command");
	else if (r->argc == 2)
		resp_bulk(&c->out, r->argv[1], r->argl[1]);
	else
		resp_simple(&c->out, "PONG");
}

static void cmd_echo(struct kv *kv, struct kv_client *c,
		     const struct resp_req *r)
{
	resp_bulk(&c->out, r->argv[1], r->argl[1]);

	(void)kv;
}

static void cmd_quit(struct kv *kv, struct kv_client *c,
		     const struct resp_req *r)
{
	resp_simple(&c->out, "OK");
	c->closing = true;

	(void)kv;
	(void)r;
}

static void cmd_get(struct kv *kv, struct kv_client *c,
		    const struct resp_req *r)
{
	struct kv_entry *e = kv_store_get(&kv->store, r->argv[1], r->argl[1]);

	if (e)
		resp_bulk(&c->out, kv_entry_val(e), e->vlen);
	else
		resp_null(&c->out);
}

#define SET_NX 1
#define SET_XX 2
#define SET_GET 4

static void cmd_set(struct kv *kv, struct kv_client *c,
		    const struct resp_req *r)
{
	struct kv_entry *old, *e;
	unsigned int flags = 0;
	int i;

	for (i = 3; i < r->argc; i++) {
		if (arg_is(r, i, "nx") && !(flags & SET_XX))
			flags |= SET_NX;
		else if (arg_is(r, i, "xx") && !(flags & SET_NX))
			flags |= SET_XX;
		else if (arg_is(r, i, "get"))
			flags |= SET_GET;
		else if (arg_is(r, i, "keepttl"))
			continue; /* no key has a TTL to keep */
		else {
			resp_error(&c->out, "ERR syntax error");
			return;
		}
	}
	old = kv_store_get(&kv->store, r->argv[1], r->argl[1]);
	if ((flags & SET_NX && old) || (flags & SET_XX && !old)) {
		if (flags & SET_GET && old)
			resp_bulk(&c->out, kv_entry_val(old), old->vlen);
		else
			resp_null(&c->out);
		return;
	}
	e = kv_store_prepare(&kv->store, r->argv[1], r->argl[1], r->argl[2]);
	if (!e) {
		resp_error(&c->out, OOM_MSG);
		return;
	}
	memcpy(kv_entry_val(e), r->argv[2], r->argl[2]);
	if (log_set(kv, c, e)) {
		kv_store_discard(&kv->store, e);
		return;
	}
	if (!(flags & SET_GET))
		resp_simple(&c->out, "OK");
	else if (old)
		resp_bulk(&c->out, kv_entry_val(old), old->vlen);
	else
		resp_null(&c->out);
	kv_store_put(&kv->store, e);
}

static void cmd_incr(struct kv *kv, struct kv_client *c,
		     const struct resp_req *r)
{
	struct kv_entry *old = kv_store_get(&kv->store, r->argv[1], r->argl[1]);
	char digits[24], *end = digits + sizeof(digits), *p;
	long long v = 0;
	struct kv_entry *e;

	if (old && !resp_strtoll(kv_entry_val(old), old->vlen, &v)) {
		resp_error(&c->out,
			   "ERR value is not an integer or out of range");
		return;
	}
	if (v == INT64_MAX) {
		resp_error(&c->out,
			   "ERR increment or decrement would overflow");
		return;
	}
	p = resp_fmt_ll(end, ++v);
	e = kv_store_prepare(&kv->store, r->argv[1], r->argl[1],
			     (size_t)(end - p));
	if (!e) {
		resp_error(&c->out, OOM_MSG);
		return;
	}
	memcpy(kv_entry_val(e), p, (size_t)(end - p));
	if (log_set(kv, c, e)) {
		kv_store_discard(&kv->store, e);
		return;
	}
	resp_int(&c->out, v);
	kv_store_put(&kv->store, e);
}

/*
 * Pick the arguments of DEL that name existing keys, each key once (a
 * hash of each picked key spares comparing every pair of arguments).
 * Returns how many; *len is the size of their log payload.
 */
static uint32_t del_pick(struct kv *kv, const struct resp_req *r, size_t *len)
{
	uint32_t count = 0;
	int i, j;

	*len = 4;
	for (i = 1; i < r->argc; i++) {
		kv->pick[i] = false;
		if (!kv_store_get(&kv->store, r->argv[i], r->argl[i]))
			continue;
		kv->hash[i] = kv_xxh64(r->argv[i], r->argl[i], 0);
		for (j = 1; j < i; j++)
			if (kv->pick[j] && kv->hash[j] == kv->hash[i] &&
			    r->argl[j] == r->argl[i] &&
			    !memcmp(r->argv[j], r->argv[i], r->argl[i]))
				break;
		if (j < i)
			continue;
		kv->pick[i] = true;
		count++;
		*len += 4 + r->argl[i];
	}
	return count;
}

static void cmd_del(struct kv *kv, struct kv_client *c,
		    const struct resp_req *r)
{
	size_t len, off = 4;
	uint32_t count = del_pick(kv, r, &len);
	uint8_t *p;
	int i, e;

	if (!count) {
		resp_int(&c->out, 0);
		return;
	}
	e = log_reserve(kv, KVLOG_DEL, len, &p);
	if (e) {
		log_failed(c, e);
		return;
	}
	kv_put32(p, count);
	for (i = 1; i < r->argc; i++) {
		if (!kv->pick[i])
			continue;
		kv_put32(p + off, (uint32_t)r->argl[i]);
		memcpy(p + off + 4, r->argv[i], r->argl[i]);
		off += 4 + r->argl[i];
		kv_store_del(&kv->store, r->argv[i], r->argl[i]);
	}
	kvlog_seal(kv->log);
	kv->batch++;
	resp_int(&c->out, count);
}

static void cmd_exists(struct kv *kv, struct kv_client *c,
		       const struct resp_req *r)
{
	long long n = 0;
	int i;

	for (i = 1; i < r->argc; i++)
		n += kv_store_get(&kv->store, r->argv[i], r->argl[i]) != NULL;
	resp_int(&c->out, n);
}

static void cmd_dbsize(struct kv *kv, struct kv_client *c,
		       const struct resp_req *r)
{
	resp_int(&c->out, (long long)kv->store.count);

	(void)r;
}

static void cmd_flushall(struct kv *kv, struct kv_client *c,
			 const struct resp_req *r)
{
	if (r->argc > 2 ||
	    (r->argc == 2 && !arg_is(r, 1, "sync") && !arg_is(r, 1, "async"))) {
		resp_error(&c->out, "ERR syntax error");
		return;
	}
	kv_store_clear(&kv->store);
	kvlog_reset(kv->log);
	kv->batch++;
	resp_simple(&c->out, "OK");
}

static void add_stat(struct kv_buf *b, const char *name, uint64_t v)
{
	resp_bulk(b, name, strlen(name));
	resp_int(b, (long long)v);
}

static void cmd_ftstats(struct kv *kv, struct kv_client *c,
			const struct resp_req *r)
{
	struct kvlog_stats st;

	(void)r;
	kvlog_stats(kv->log, &st);
	resp_array(&c->out, 24);
	/* Writes in this batch are acknowledged when this reply is. */
	add_stat(&c->out, "acked_writes", kv->acked + kv->batch);
	add_stat(&c->out, "keys", kv->store.count);
	add_stat(&c->out, "log_entries", st.entries);
	add_stat(&c->out, "log_bytes", st.bytes);
	add_stat(&c->out, "log_capacity", st.capacity);
	add_stat(&c->out, "replayed_entries", kv->replayed);
	add_stat(&c->out, "commits", st.commits);
	add_stat(&c->out, "compactions", st.compactions);
	add_stat(&c->out, "epoch", st.epoch);
	add_stat(&c->out, "mem_used", kv->mem->used);
	add_stat(&c->out, "mem_total", kv->mem->size);
	add_stat(&c->out, "net_moves", kv->net_moves);
}

static void cmd_command(struct kv *kv, struct kv_client *c,
			const struct resp_req *r)
{
	resp_array(&c->out, 0);

	(void)kv;
	(void)r;
}

static const struct kv_cmd commands[];

static void cmd_command_count(struct kv *kv, struct kv_client *c,
			      const struct resp_req *r)
{
	long long n = 0;

	(void)kv;
	(void)r;
	while (commands[n].name)
		n++;
	resp_int(&c->out, n);
}

/* CONFIG GET answers these, for clients that ask (redis-benchmark). */
static const char *const config[][2] = {
	{"appendfsync", "always"},
	{"appendonly", "yes"},
	{"databases", "1"},
	{"save", ""},
};

static void cmd_config_get(struct kv *kv, struct kv_client *c,
			   const struct resp_req *r)
{
	unsigned int want = 0, n = 0, k;
	int i;

	(void)kv;
	for (i = 2; i < r->argc; i++)
		for (k = 0; k < KV_ARRAY_SIZE(config); k++)
			if (arg_is(r, i, config[k][0]))
				want |= 1u << k;
	for (k = 0; k < KV_ARRAY_SIZE(config); k++)
		n += want >> k & 1;
	resp_array(&c->out, 2 * n);
	for (k = 0; k < KV_ARRAY_SIZE(config); k++) {
		if (!(want >> k & 1))
			continue;
		resp_bulk(&c->out, config[k][0], strlen(config[k][0]));
		resp_bulk(&c->out, config[k][1], strlen(config[k][1]));
	}
}

static const struct kv_cmd command_subs[] = {
	{"command|docs", -2, cmd_command, NULL},
	{"command|count", 2, cmd_command_count, NULL},
	{NULL, 0, NULL, NULL},
};

static const struct kv_cmd config_subs[] = {
	{"config|get", -3, cmd_config_get, NULL},
	{NULL, 0, NULL, NULL},
};

static const struct kv_cmd commands[] = {
	{"get", 2, cmd_get, NULL},
	{"set", -3, cmd_set, NULL},
	{"incr", 2, cmd_incr, NULL},
	{"del", -2, cmd_del, NULL},
	{"exists", -2, cmd_exists, NULL},
	{"ping", -1, cmd_ping, NULL},
	{"echo", 2, cmd_echo, NULL},
	{"dbsize", 1, cmd_dbsize, NULL},
	{"flushall", -1, cmd_flushall, NULL},
	{"ftstats", 1, cmd_ftstats, NULL},
	{"command", -1, cmd_command, command_subs},
	{"config", -2, NULL, config_subs},
	{"quit", -1, cmd_quit, NULL},
	{NULL, 0, NULL, NULL},
};

/* The table entry for argument i, matched after `skip` name bytes. */
static const struct kv_cmd *lookup(const struct kv_cmd *t,
				   const struct resp_req *r, int i, size_t skip)
{
	for (; t->name; t++)
		if (arg_is(r, i, t->name + skip))
			return t;
	return NULL;
}

/* Append s[0..n) as C's "%.*s" would: at most max bytes, cut at a NUL. */
static size_t error_cstr(struct kv_buf *b, const uint8_t *s, size_t n,
			 size_t max)
{
	const uint8_t *nul = kv_memchr(s, 0, n);

	if (nul)
		n = (size_t)(nul - s);
	if (n > max)
		n = max;
	resp_error_piece(b, s, n);
	return n;
}

static void unknown_command(struct kv_client *c, const struct resp_req *r)
{
	static const char intro[] = "ERR unknown command '";
	static const char args[] = "', with args beginning with: ";
	size_t len = 0;
	int i;

	resp_error_begin(&c->out);
	resp_error_piece(&c->out, intro, sizeof(intro) - 1);
	error_cstr(&c->out, r->argv[0], r->argl[0], 128);
	resp_error_piece(&c->out, args, sizeof(args) - 1);
	for (i = 1; i < r->argc && len < 128; i++) {
		resp_error_piece(&c->out, "'", 1);
		len += error_cstr(&c->out, r->argv[i], r->argl[i], 128 - len);
		resp_error_piece(&c->out, "' ", 2);
		len += 3;
	}
	resp_error_end(&c->out);
}

static void unknown_subcommand(struct kv_client *c, const struct resp_req *r)
{
	static const char intro[] = "ERR unknown subcommand '";
	size_t k, n = r->argl[0];
	const uint8_t *nul = kv_memchr(r->argv[0], 0, n);

	resp_error_begin(&c->out);
	resp_error_piece(&c->out, intro, sizeof(intro) - 1);
	error_cstr(&c->out, r->argv[1], r->argl[1], 128);
	resp_error_piece(&c->out, "'. Try ", 7);
	if (nul)
		n = (size_t)(nul - r->argv[0]);
	for (k = 0; k < n; k++) {
		char ch = (char)r->argv[0][k];

		if (ch >= 'a' && ch <= 'z')
			ch -= 'a' - 'A';
		resp_error_piece(&c->out, &ch, 1);
	}
	resp_error_piece(&c->out, " HELP.", 6);
	resp_error_end(&c->out);
}

static void exec(struct kv *kv, struct kv_client *c, const struct resp_req *r)
{
	static const char arity1[] = "ERR wrong number of arguments for '";
	static const char arity2[] = "' command";
	const struct kv_cmd *cmd = lookup(commands, r, 0, 0);

	if (!cmd) {
		unknown_command(c, r);
		return;
	}
	if (cmd->subs && r->argc >= 2) {
		const struct kv_cmd *sub =
			lookup(cmd->subs, r, 1, strlen(cmd->name) + 1);

		if (!sub) {
			unknown_subcommand(c, r);
			return;
		}
		cmd = sub;
	}
	if ((cmd->arity > 0 && r->argc != cmd->arity) ||
	    r->argc < -cmd->arity) {
		resp_error_begin(&c->out);
		resp_error_piece(&c->out, arity1, sizeof(arity1) - 1);
		resp_error_piece(&c->out, cmd->name, strlen(cmd->name));
		resp_error_piece(&c->out, arity2, sizeof(arity2) - 1);
		resp_error_end(&c->out);
		return;
	}
	cmd->run(kv, c, r);
}

size_t kv_run(struct kv *kv, struct kv_client *c, size_t out_high)
{
	size_t off = 0, used, n = 0;
	enum resp_status st;
	const char *err;

	while (off < c->in.len && !c->closing && c->out.len < out_high &&
	       !c->out.oom && !kv->io_err) {
		st = resp_parse(c->in.p + off, c->in.len - off, &kv->req, &used,
				&err);
		if (st == RESP_MORE)
			break;
		if (st == RESP_ERR) {
			resp_error_begin(&c->out);
			resp_error_piece(&c->out, "ERR ", 4);
			resp_error_piece(&c->out, err, strlen(err));
			resp_error_end(&c->out);
			c->closing = true;
			break;
		}
		off += used;
		if (kv->req.argc) {
			exec(kv, c, &kv->req);
			n++;
		}
	}
	if (off)
		kv_buf_consume(&c->in, off);
	return n;
}
