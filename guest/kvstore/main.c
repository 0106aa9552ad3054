// SPDX-License-Identifier: MIT
/*
 * kvstore - a key-value server that Redis clients (redis-cli,
 * redis-benchmark) drive over TCP, persisting every acknowledged write
 * to the VM's disk.  docs/kvstore.md describes the commands, the log
 * format and the guarantees.
 *
 *   kvstore [--format] [--port N] [--conns N]
 *
 * --format  start a new, empty log even if the disk holds one (a blank
 *           disk is formatted without it; a disk that is neither blank
 *           nor a kvstore log is refused)
 * --port    TCP port (default 6379)
 * --conns   TCP connections at once, 1..256 (default 128); each costs
 *           128 KiB of TCP buffers
 *
 * The VM needs a disk and a NIC with an IPv4 address (ftvm --disk,
 * --net ...,ip=A.B.C.D/N).  The loop: poll the NIC; execute what every
 * connection has buffered; commit the log once for all of it (one write
 * call per MiB, the last with flush); only then hand the replies to TCP.
 *
 * Console lines (exact formats, for tests; each on one line):
 *   kvstore: log: formatted <S> sectors
 *   kvstore: log: truncated corrupt tail at offset <X> (<N> entries kept):
 *     <why>
 *   kvstore: replayed <N> entries, <K> keys
 *   kvstore: listening on <a.b.c.d>:<port> epoch <E> conns <C>
 *     memory <M> MiB
 *   kvstore: error <what> <err>
 * A missing device or bad usage exits with 1, a log that cannot be
 * opened with 2, a log write that fails with 3 (nothing from the failed
 * batch was acknowledged).
 */
#include "ft.h"
#include "gnet_ft.h"
#include "kv.h"

#define DEFAULT_PORT 6379
#define DEFAULT_CONNS 128
#define OUT_HIGH (128u << 10)  /* stop executing a client's requests */
#define READ_CHUNK (64u << 10) /* bytes read from TCP at a time */
#define BUF_KEEP (64u << 10)   /* larger empty buffers are given back */
#define HEAP_RESERVE (256u << 10)
#define MAX_ERRORS 20 /* console lines for recurring errors */

struct conn {
	struct gnet_conn *gc; /* NULL: slot free */
	struct kv_client cl;
	size_t release; /* cl.out[0..release) is committed: may be sent */
	bool stalled;	/* stopped executing: too much output pending */
};

static struct gnet net;
static struct kvmem mem;
static struct kvlog klog;
static struct kv kv;
static struct conn *conns;
static unsigned int nconns, n_errors;
static uint64_t epoch; /* this boot's, from the log */

static void error(const char *what, long err)
{
	if (n_errors++ < MAX_ERRORS)
		printf("kvstore: error %s %ld\n", what, err);
}

/* ---- Block device ----------------------------------------------------- */

/* The runtime's wrappers wait out FT_EAGAIN (a write the host cannot take
 * yet while it replicates the disk): a write is retried, never failed. */
static int blk_read(void *ctx, uint64_t sector, void *buf, uint32_t count)
{
	int r = ft_block_read(sector, buf, count);

	(void)ctx;
	if (r)
		error("block read", r);
	return r ? -EIO : 0;
}

static int blk_write(void *ctx, uint64_t sector, const void *buf,
		     uint32_t count, bool flush)
{
	int r = ft_block_write(sector, buf, count,
			       flush ? FT_BLOCK_F_FLUSH : 0);

	(void)ctx;
	if (r)
		error("block write", r);
	return r ? -EIO : 0;
}

/* ---- Connections ------------------------------------------------------ */

static void conn_accepted(void *ctx, struct gnet_conn *gc)
{
	unsigned int i;

	(void)ctx;
	for (i = 0; i < nconns && conns[i].gc; i++)
		;
	if (i == nconns) {
		gnet_tcp_abort(gc);
		return;
	}
	conns[i].gc = gc;
	conns[i].release = 0;
	conns[i].stalled = false;
	kv_client_init(&conns[i].cl, &mem);
	gnet_conn_set_user(gc, &conns[i]);
}

static void conn_closed(void *ctx, struct gnet_conn *gc, int reason)
{
	struct conn *c = gnet_conn_user(gc);

	(void)ctx;
	(void)reason;
	if (!c)
		return;
	kv_client_free(&c->cl);
	c->gc = NULL;
}

/* Give the buffers of an idle client back if they grew large. */
static void shrink(struct kv_buf *b)
{
	if (!b->len && b->cap > BUF_KEEP)
		kv_buf_free(b);
}

/* Hand committed replies to TCP; close once a closing client's replies
 * are all out, or the peer has closed and nothing is left to do. */
static void send_out(struct conn *c)
{
	size_t n;

	if (c->release) {
		n = gnet_tcp_send(c->gc, c->cl.out.p, c->release);
		kv_buf_consume(&c->cl.out, n);
		c->release -= n;
	}
	shrink(&c->cl.out);
	if (c->cl.out.len)
		return;
	/* At the peer's end, every complete request has been executed
	 * unless stalled; a partial one is dropped, as Redis does. */
	if (c->cl.closing || (gnet_tcp_eof(c->gc) && !c->stalled))
		gnet_tcp_close(c->gc);
}

/* Execute what the client sent, reading from TCP while its output stays
 * below OUT_HIGH (past it, unread data closes the TCP window). */
static void pump(struct conn *c)
{
	size_t avail, room;

	for (;;) {
		kv_run(&kv, &c->cl, OUT_HIGH);
		c->stalled = c->cl.out.len >= OUT_HIGH;
		if (c->stalled || c->cl.closing || kv.io_err)
			return;
		if (c->cl.in.oom || c->cl.out.oom) {
			error("connection out of memory, reset", -ENOMEM);
			gnet_conn_set_user(c->gc, NULL);
			gnet_tcp_abort(c->gc);
			c->gc = NULL;
			kv_client_free(&c->cl);
			return;
		}
		avail = gnet_tcp_readable(c->gc);
		if (!avail)
			break;
		if (avail > READ_CHUNK)
			avail = READ_CHUNK;
		if (!kv_buf_reserve(&c->cl.in, avail))
			continue; /* reported as oom above */
		room = c->cl.in.cap - c->cl.in.len;
		c->cl.in.len += gnet_tcp_read(c->gc, c->cl.in.p + c->cl.in.len,
					      avail < room ? avail : room);
	}
	shrink(&c->cl.in);
}

static const struct gnet_tcp_cb tcp_cb = {
	.accepted = conn_accepted,
	.closed = conn_closed,
};

/* ---- Start-up --------------------------------------------------------- */

/* Open (and replay) the log on the disk; exits on failure. */
static void open_log(bool format)
{
	struct ft_hc_block_info bi = {0};
	struct kvlog_report rep;
	struct kvlog_dev dev = {.read = blk_read, .write = blk_write};
	void *buf;
	int64_t r;
	int err;

	r = ft_hypercall(FT_HC_BLOCK_INFO, (uintptr_t)&bi);
	if (r || bi.ret) {
		printf("kvstore: error no disk %ld\n", r ? r : bi.ret);
		ft_exit(1);
	}
	dev.sectors = bi.sectors;
	dev.max_io = bi.max_io / FT_BLOCK_SECTOR;
	buf = ft_alloc_aligned(KVLOG_BUF_MIN, FT_PAGE_SIZE);
	if (!buf)
		ft_panic("no memory for the log buffer");
	err = kvlog_open(&klog, &dev, buf, KVLOG_BUF_MIN, format, kv_apply, &kv,
			 &rep);
	if (err) {
		printf("kvstore: error log open %d%s\n", err,
		       err == -EUCLEAN	? " (not a kvstore log: use --format)"
		       : err == -ENOMEM ? " (memory too small for the data)"
		       : err == -EINVAL ? " (disk too small)"
					: "");
		ft_exit(2);
	}
	if (rep.formatted)
		printf("kvstore: log: formatted %lu sectors\n", bi.sectors);
	if (rep.truncated)
		printf("kvstore: log: truncated corrupt tail at offset %lu "
		       "(%lu entries kept): %s\n",
		       rep.end, rep.entries, rep.why);
	printf("kvstore: replayed %lu entries, %zu keys\n", rep.entries,
	       kv.store.count);
	epoch = rep.epoch;
}

/* Memory: TCP buffers, then the log buffer, then the hash table's
 * buckets (1/32 of the rest), then everything else for keys, values and
 * connection buffers. */
static void setup(bool format, unsigned int max_conns)
{
	size_t left, nb = 1, arena;
	void *buckets, *base;
	int err;

	err = gnet_ft_init(&net, max_conns);
	if (err) {
		printf("kvstore: error network init %d%s\n", err,
		       err == -ENOSYS ? " (no NIC)" : "");
		ft_exit(1);
	}
	conns = malloc(max_conns * sizeof(*conns));
	if (!conns)
		ft_panic("no memory for connections");
	nconns = max_conns;
	left = ft_heap_free();
	if (left < KVLOG_BUF_MIN + HEAP_RESERVE + (8u << 20))
		ft_panic("heap too small: %zu bytes", left);
	left -= KVLOG_BUF_MIN + HEAP_RESERVE;
	while (nb * 2 * sizeof(void *) <= left / 32)
		nb *= 2;
	buckets = ft_alloc_aligned(nb * sizeof(void *), FT_PAGE_SIZE);
	arena = ft_heap_free() - KVLOG_BUF_MIN - HEAP_RESERVE - FT_PAGE_SIZE;
	base = ft_alloc_aligned(arena, FT_PAGE_SIZE);
	if (!buckets || !base || kvmem_init(&mem, base, arena) ||
	    kv_init(&kv, &mem, buckets, nb, ft_clock_wall(), &klog))
		ft_panic("memory setup failed");
	open_log(format);
}

/* ---- The loop --------------------------------------------------------- */

static __attribute__((noreturn)) void serve(void)
{
	uint64_t deadline = UINT64_MAX;
	unsigned int i;
	int err;

	for (;;) {
		err = gnet_ft_poll(&net, deadline);
		if (err)
			error("network", err);
		kv.net_moves = net.stats.moves;
		for (i = 0; i < nconns; i++)
			if (conns[i].gc)
				send_out(&conns[i]);
		for (i = 0; i < nconns; i++)
			if (conns[i].gc)
				pump(&conns[i]);
		err = kv.io_err ? kv.io_err : kv_commit(&kv);
		if (err) {
			printf("kvstore: error log write %d: stopping\n", err);
			ft_exit(3);
		}
		deadline = UINT64_MAX;
		for (i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];

			if (!c->gc)
				continue;
			c->release = c->cl.out.len;
			send_out(c);
			if (c->stalled && c->cl.out.len < OUT_HIGH)
				deadline = 0; /* more to do: do not block */
		}
	}
}

static int usage(void)
{
	printf("kvstore: usage: kvstore [--format] [--port N] [--conns N]\n");
	return 1;
}

int main(int argc, char **argv)
{
	const struct ft_boot_info *bi = ft_boot_info();
	struct ft_hc_net_info ni = {0};
	uint64_t port = DEFAULT_PORT, max_conns = DEFAULT_CONNS;
	const uint8_t *ip;
	bool format = false;
	int i, err;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--format"))
			format = true;
		else if (!strcmp(argv[i], "--port") && i + 1 < argc &&
			 !ft_parse_u64(argv[++i], &port) && port &&
			 port <= 65535)
			continue;
		else if (!strcmp(argv[i], "--conns") && i + 1 < argc &&
			 !ft_parse_u64(argv[++i], &max_conns) && max_conns &&
			 max_conns <= GNET_MAX_CONNS)
			continue;
		else
			return usage();
	}
	if (ft_hypercall(FT_HC_NET_INFO, (uintptr_t)&ni) || ni.ret ||
	    !ni.ipv4_addr) {
		printf("kvstore: error no NIC with an IPv4 address %ld\n",
		       ni.ret);
		return 1;
	}
	setup(format, (unsigned int)max_conns);
	err = gnet_tcp_listen(&net, (uint16_t)port, &tcp_cb, NULL);
	if (err) {
		printf("kvstore: error listen %d\n", err);
		return 1;
	}
	ip = (const uint8_t *)&ni.ipv4_addr;
	printf("kvstore: listening on %u.%u.%u.%u:%lu epoch %lu conns %u "
	       "memory %lu MiB\n",
	       ip[0], ip[1], ip[2], ip[3], port, epoch, nconns,
	       bi->mem_size >> 20);
	serve();
}
