// SPDX-License-Identifier: MIT
/*
 * test_gnet.c - the guest network stack (guest/net), built for the host:
 * Ethernet, ARP, IPv4, ICMP echo, UDP and TCP, driven by hand-built frames
 * through a mock platform that captures every transmitted frame and a mock
 * clock.
 *
 * The builders and the checksum here are written independently of the
 * stack's own.  Every frame the stack sends is parsed and its checksums
 * verified; every test ends with the stack's invariant checker.
 *
 * With FT_GNET_DUMP_DIR set, the frames and clock steps each test feeds
 * in are also written there, one file per test, in the input format of
 * bench/fuzz_gnet.c: bench/fuzz.sh uses them as seeds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guest/net/gnet.h"

#define MS 1000000ull
#define SEC 1000000000ull
#define T0 SEC /* the mock clock at gnet_init */

#define OUR_PORT 80  /* manual application */
#define ECHO_PORT 7  /* echo application */
#define MAX_OUT 4096 /* captured frames per test */

static const uint8_t our_mac[6] = {0x02, 0, 0, 0, 0, 0x01};
static const uint8_t peer_mac[6] = {0x02, 0, 0, 0, 0, 0x02};
static const uint8_t gw_mac[6] = {0x02, 0, 0, 0, 0, 0xfe};
static const uint8_t bcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static uint32_t ip4(unsigned a, unsigned b, unsigned c, unsigned d)
{
	return htonl(a << 24 | b << 16 | c << 8 | d);
}

#define OUR_IP ip4(10, 0, 0, 1)
#define PEER_IP ip4(10, 0, 0, 2)
#define GW_IP ip4(10, 0, 0, 254)

/* ---- Mock platform ----------------------------------------------------- */

struct out_frame {
	uint8_t d[GNET_FRAME_MAX];
	uint32_t len;
};

static struct gnet S;
static uint8_t *conn_mem;
static uint64_t mock_now;
static struct out_frame *outq;
static unsigned int n_out, out_pos, n_batches, max_batch;
static int send_err;
static FILE *dump;
static bool auto_arp; /* the peer answers ARP requests by itself */

static int mock_send(void *ctx, const struct gnet_frame *f, unsigned int n)
{
	assert_ptr_equal(ctx, &S);
	assert_true(n >= 1 && n <= GNET_BATCH_MAX);
	n_batches++;
	if (n > max_batch)
		max_batch = n;
	if (send_err)
		return send_err;
	for (unsigned int i = 0; i < n; i++) {
		assert_true(f[i].len >= GNET_FRAME_MIN &&
			    f[i].len <= GNET_FRAME_MAX);
		assert_true(n_out < MAX_OUT);
		memcpy(outq[n_out].d, f[i].data, f[i].len);
		outq[n_out++].len = f[i].len;
	}
	return 0;
}

static uint64_t mock_clock(void *ctx)
{
	assert_ptr_equal(ctx, &S);
	return mock_now;
}

static const struct gnet_io mock_io = {mock_send, mock_clock, &S};

static struct gnet_cfg test_cfg(unsigned int max_conns)
{
	struct gnet_cfg cfg = {
		.mtu = 1500,
		.ip = OUR_IP,
		.netmask = ip4(255, 255, 255, 0),
		.gw = GW_IP,
		.max_conns = max_conns,
		.conn_mem = conn_mem,
	};

	memcpy(cfg.mac, our_mac, 6);
	return cfg;
}

/* Fuzz-input records (bench/fuzz_gnet.c). */
enum { OP_FRAME = 0, OP_TIME = 3, OP_FLUSH = 5 };

static void dump_rec(uint8_t op, const void *d, uint16_t len)
{
	if (!dump)
		return;
	fputc(op, dump);
	fputc(len & 0xff, dump);
	fputc(len >> 8, dump);
	if (len)
		fwrite(d, 1, len, dump);
}

static void start(unsigned int max_conns)
{
	struct gnet_cfg cfg = test_cfg(max_conns);

	n_out = out_pos = n_batches = max_batch = 0;
	send_err = 0;
	auto_arp = false;
	mock_now = T0;
	assert_int_equal(gnet_init(&S, &cfg, &mock_io), 0);
}

static int setup(void **state)
{
	const char *dir = getenv("FT_GNET_DUMP_DIR");

	if (dir) {
		char path[512];

		snprintf(path, sizeof(path), "%s/%s", dir,
			 (const char *)*state);
		dump = fopen(path, "wb");
		assert_non_null(dump);
	}
	start(GNET_MAX_CONNS);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (dump) {
		fclose(dump);
		dump = NULL;
	}
	assert_int_equal(gnet_check(&S), 0);
	return 0;
}

static void inject(const void *f, size_t len)
{
	dump_rec(OP_FRAME, f, (uint16_t)len);
	gnet_input(&S, f, len);
	assert_int_equal(gnet_check(&S), 0);
}

static void answer_arp(void);

static void flush(void)
{
	dump_rec(OP_FLUSH, NULL, 0);
	assert_int_equal(gnet_flush(&S), 0);
	if (auto_arp)
		answer_arp();
}

static void advance(uint64_t ns)
{
	uint16_t ms = (uint16_t)(ns / MS);

	dump_rec(OP_TIME, &ms, 2);
	mock_now += ns;
	gnet_timers(&S);
	assert_int_equal(gnet_check(&S), 0);
}

static unsigned int pending(void)
{
	return n_out - out_pos;
}

/* ---- Reference checksum and frame builders ----------------------------- */

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (n & 1)
		sum += (uint32_t)p[n - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len)
{
	uint8_t ph[12];

	memcpy(ph, &src, 4);
	memcpy(ph + 4, &dst, 4);
	ph[8] = 0;
	ph[9] = proto;
	ph[10] = len >> 8;
	ph[11] = len & 0xff;
	return sum16(ph, 12, 0);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p + 2, v & 0xffff);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)get16(p) << 16 | get16(p + 2);
}

static size_t eth(uint8_t *f, const uint8_t *dst, const uint8_t *src,
		  uint16_t type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	put16(f + 12, type);
	return 14;
}

static size_t build_arp(uint8_t *f, uint16_t op, const uint8_t *sha,
			uint32_t spa, const uint8_t *tha, uint32_t tpa)
{
	uint8_t *a = f + eth(f, op == 1 ? bcast_mac : our_mac, sha, 0x0806);

	put16(a, 1);
	put16(a + 2, 0x0800);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, sha, 6);
	memcpy(a + 14, &spa, 4);
	memcpy(a + 18, tha, 6);
	memcpy(a + 24, &tpa, 4);
	return 42;
}

/* An IPv4 frame from the peer (MAC peer_mac) to `dst`. */
static size_t build_ip(uint8_t *f, uint32_t src, uint32_t dst, uint8_t proto,
		       const uint8_t *l4, size_t l4len)
{
	uint8_t *ip = f + eth(f, our_mac, peer_mac, 0x0800);

	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, (uint16_t)(20 + l4len));
	put16(ip + 4, 0x1234);
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = proto;
	put16(ip + 10, 0);
	memcpy(ip + 12, &src, 4);
	memcpy(ip + 16, &dst, 4);
	put16(ip + 10, fold(sum16(ip, 20, 0)));
	if (l4len)
		memcpy(ip + 20, l4, l4len);
	return 34 + l4len;
}

static size_t build_udp(uint8_t *f, uint32_t src, uint16_t sport, uint32_t dst,
			uint16_t dport, const void *data, size_t len, bool csum)
{
	uint8_t u[1500];
	uint16_t ulen = (uint16_t)(8 + len);

	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, ulen);
	put16(u + 6, 0);
	if (len)
		memcpy(u + 8, data, len);
	if (csum) {
		uint16_t c = fold(sum16(u, ulen, pseudo(src, dst, 17, ulen)));

		put16(u + 6, c ? c : 0xffff);
	}
	return build_ip(f, src, dst, 17, u, ulen);
}

static size_t build_icmp_echo(uint8_t *f, uint32_t dst, uint16_t id,
			      uint16_t seq, const void *data, size_t len)
{
	uint8_t m[1500];

	m[0] = 8;
	m[1] = 0;
	put16(m + 2, 0);
	put16(m + 4, id);
	put16(m + 6, seq);
	if (len)
		memcpy(m + 8, data, len);
	put16(m + 2, fold(sum16(m, 8 + len, 0)));
	return build_ip(f, PEER_IP, dst, 1, m, 8 + len);
}

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10

struct tcp_in {
	uint32_t src;
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd;
	const uint8_t *opt;
	size_t optlen; /* a multiple of 4 */
	const void *data;
	size_t len;
};

static size_t build_tcp(uint8_t *f, const struct tcp_in *t)
{
	uint8_t s[1600];
	size_t hlen = 20 + t->optlen, n = hlen + t->len;

	put16(s, t->sport);
	put16(s + 2, t->dport);
	put32(s + 4, t->seq);
	put32(s + 8, t->ack);
	s[12] = (uint8_t)(hlen / 4 << 4);
	s[13] = t->flags;
	put16(s + 14, t->wnd);
	put16(s + 16, 0);
	put16(s + 18, 0);
	if (t->optlen)
		memcpy(s + 20, t->opt, t->optlen);
	if (t->len)
		memcpy(s + hlen, t->data, t->len);
	put16(s + 16, fold(sum16(s, n, pseudo(t->src, OUR_IP, 6, n))));
	return build_ip(f, t->src, OUR_IP, 6, s, n);
}

/* ---- Parsing what the stack sent --------------------------------------- */

struct pkt {
	const uint8_t *f;
	uint32_t flen;
	uint8_t dst_mac[6];
	uint16_t type;
	uint32_t src, dst;
	uint8_t proto, ttl;
	const uint8_t *l4;
	size_t l4len;
	/* TCP */
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd, mss;
	const uint8_t *data;
	size_t len;
};

/* Parse the next captured frame, checking every checksum. */
static void next_pkt(struct pkt *p)
{
	const struct out_frame *o;
	const uint8_t *ip;
	size_t tot;

	assert_true(out_pos < n_out);
	o = &outq[out_pos++];
	memset(p, 0, sizeof(*p));
	p->f = o->d;
	p->flen = o->len;
	memcpy(p->dst_mac, o->d, 6);
	assert_memory_equal(o->d + 6, our_mac, 6);
	p->type = get16(o->d + 12);
	if (p->type != 0x0800)
		return;
	ip = o->d + 14;
	assert_int_equal(ip[0], 0x45);
	tot = get16(ip + 2);
	assert_true(tot >= 20 && 14 + tot <= o->len);
	assert_int_equal(fold(sum16(ip, 20, 0)), 0);
	assert_int_equal(get16(ip + 6), 0x4000); /* DF, no fragment */
	p->ttl = ip[8];
	p->proto = ip[9];
	memcpy(&p->src, ip + 12, 4);
	memcpy(&p->dst, ip + 16, 4);
	assert_int_equal(p->src, OUR_IP);
	p->l4 = ip + 20;
	p->l4len = tot - 20;
	switch (p->proto) {
	case 1:
		assert_int_equal(fold(sum16(p->l4, p->l4len, 0)), 0);
		break;
	case 17:
		assert_int_equal(get16(p->l4 + 4), p->l4len);
		assert_int_not_equal(get16(p->l4 + 6), 0);
		assert_int_equal(fold(sum16(p->l4, p->l4len,
					    pseudo(p->src, p->dst, 17,
						   (uint16_t)p->l4len))),
				 0);
		break;
	case 6: {
		size_t off = (size_t)(p->l4[12] >> 4) * 4;

		assert_int_equal(fold(sum16(p->l4, p->l4len,
					    pseudo(p->src, p->dst, 6,
						   (uint16_t)p->l4len))),
				 0);
		p->sport = get16(p->l4);
		p->dport = get16(p->l4 + 2);
		p->seq = get32(p->l4 + 4);
		p->ack = get32(p->l4 + 8);
		p->flags = p->l4[13];
		p->wnd = get16(p->l4 + 14);
		if (off == 24 && p->l4[20] == 2 && p->l4[21] == 4)
			p->mss = get16(p->l4 + 22);
		p->data = p->l4 + off;
		p->len = p->l4len - off;
		break;
	}
	default:
		fail_msg("unexpected IP protocol %u", p->proto);
	}
}

/* ---- Applications ------------------------------------------------------ */

enum app_mode { APP_MANUAL, APP_READ, APP_ECHO };

struct app {
	enum app_mode mode;
	unsigned int accepted, readable, writable, closed;
	int reason;
	struct gnet_conn *last;
	uint8_t *rx;
	size_t rx_len;
};

static struct app app80, app7;
static uint8_t rx80[1 << 20];

static void app_accepted(void *ctx, struct gnet_conn *c)
{
	struct app *a = ctx;

	a->accepted++;
	a->last = c;
	gnet_conn_set_user(c, a);
}

static void echo_pump(struct gnet_conn *c)
{
	uint8_t buf[4096];

	for (;;) {
		size_t n = gnet_tcp_readable(c), sp = gnet_tcp_send_space(c);

		n = n < sp ? n : sp;
		n = n < sizeof(buf) ? n : sizeof(buf);
		if (!n)
			break;
		assert_int_equal(gnet_tcp_read(c, buf, n), n);
		assert_int_equal(gnet_tcp_send(c, buf, n), n);
	}
	if (gnet_tcp_eof(c))
		gnet_tcp_close(c);
}

static void app_readable(void *ctx, struct gnet_conn *c)
{
	struct app *a = ctx;

	assert_ptr_equal(gnet_conn_user(c), a);
	a->readable++;
	if (a->mode == APP_READ)
		a->rx_len += gnet_tcp_read(c, a->rx + a->rx_len,
					   sizeof(rx80) - a->rx_len);
	else if (a->mode == APP_ECHO)
		echo_pump(c);
}

static void app_writable(void *ctx, struct gnet_conn *c)
{
	struct app *a = ctx;

	a->writable++;
	if (a->mode == APP_ECHO)
		echo_pump(c);
}

static void app_closed(void *ctx, struct gnet_conn *c, int reason)
{
	struct app *a = ctx;

	assert_ptr_equal(gnet_conn_user(c), a);
	a->closed++;
	a->reason = reason;
}

static const struct gnet_tcp_cb app_cb = {app_accepted, app_readable,
					  app_writable, app_closed};

static void listen80(enum app_mode mode)
{
	memset(&app80, 0, sizeof(app80));
	app80.mode = mode;
	app80.rx = rx80;
	assert_int_equal(gnet_tcp_listen(&S, OUR_PORT, &app_cb, &app80), 0);
}

static void listen7(void)
{
	memset(&app7, 0, sizeof(app7));
	app7.mode = APP_ECHO;
	assert_int_equal(gnet_tcp_listen(&S, ECHO_PORT, &app_cb, &app7), 0);
}

/* ---- A TCP peer --------------------------------------------------------- */

struct peer {
	uint32_t ip;
	uint16_t port, lport;
	uint32_t nxt; /* the peer's next sequence number */
	uint32_t rcv; /* what the peer has received from us (ACK) */
	uint32_t iss; /* our ISS */
	uint16_t wnd;
	uint16_t mss; /* advertised by the peer in its SYN (0: none) */
};

static void peer_init(struct peer *p, uint16_t port, uint16_t lport)
{
	memset(p, 0, sizeof(*p));
	p->ip = PEER_IP;
	p->port = port;
	p->lport = lport;
	p->nxt = 1000000 + port * 7919u;
	p->wnd = 65535;
	p->mss = 1460;
}

/* Send a segment from the peer with explicit sequence numbers. */
static void peer_raw(const struct peer *p, uint8_t flags, uint32_t seq,
		     uint32_t ack, const void *data, size_t len)
{
	uint8_t f[1600];
	uint8_t opt[4] = {2, 4, p->mss >> 8, p->mss & 0xff};
	struct tcp_in t = {
		.src = p->ip,
		.sport = p->port,
		.dport = p->lport,
		.seq = seq,
		.ack = ack,
		.flags = flags,
		.wnd = p->wnd,
		.data = data,
		.len = len,
	};

	if ((flags & TH_SYN) && p->mss) {
		t.opt = opt;
		t.optlen = 4;
	}
	inject(f, build_tcp(f, &t));
}

/* Send the peer's next segment (ACKing all it has seen). */
static void peer_send(struct peer *p, uint8_t flags, const void *data,
		      size_t len)
{
	peer_raw(p, flags | (flags & TH_SYN ? 0 : TH_ACK), p->nxt, p->rcv, data,
		 len);
	p->nxt += (uint32_t)len + !!(flags & TH_SYN) + !!(flags & TH_FIN);
}

/* The next captured frame must be a TCP segment to the peer. */
static void peer_recv(struct peer *p, struct pkt *t)
{
	next_pkt(t);
	assert_int_equal(t->proto, 6);
	assert_memory_equal(t->dst_mac, peer_mac, 6);
	assert_int_equal(t->dst, p->ip);
	assert_int_equal(t->sport, p->lport);
	assert_int_equal(t->dport, p->port);
	assert_int_equal(t->ttl, 64);
}

/* Take the stack's ARP requests for the peer out of the captured frames
 * and answer them, as the peer would (cache entries expire during long
 * timer tests). */
static void answer_arp(void)
{
	uint32_t peer = PEER_IP;
	bool answered = false;
	uint8_t f[64];

	for (unsigned int i = out_pos; i < n_out;) {
		const uint8_t *d = outq[i].d;

		if (get16(d + 12) != 0x0806 || get16(d + 20) != 1 ||
		    memcmp(d + 38, &peer, 4)) {
			i++;
			continue;
		}
		memmove(&outq[i], &outq[i + 1],
			(n_out - i - 1) * sizeof(*outq));
		n_out--;
		answered = true;
	}
	if (!answered)
		return;
	inject(f, build_arp(f, 2, peer_mac, PEER_IP, our_mac, OUR_IP));
	assert_int_equal(gnet_flush(&S), 0);
}

/* Teach the stack the peer's MAC (an ARP request for us), drop the reply;
 * from now on the peer answers the stack's requests. */
static void learn_peer(void)
{
	uint8_t f[64];

	inject(f, build_arp(f, 1, peer_mac, PEER_IP, bcast_mac, OUR_IP));
	flush();
	out_pos = n_out;
	auto_arp = true;
}

/* Three-way handshake; returns the connection the application got. */
static struct gnet_conn *handshake(struct peer *p, struct app *a)
{
	unsigned int before = a->accepted;
	struct pkt t;

	peer_send(p, TH_SYN, NULL, 0);
	flush();
	peer_recv(p, &t);
	assert_int_equal(t.flags, TH_SYN | TH_ACK);
	assert_int_equal(t.ack, p->nxt);
	assert_int_equal(t.mss, 1460);
	assert_int_equal(t.wnd, 65535);
	p->iss = t.seq;
	p->rcv = t.seq + 1;
	peer_send(p, TH_ACK, NULL, 0);
	assert_int_equal(a->accepted, before + 1);
	assert_int_equal(pending(), 0);
	return a->last;
}

/* ---- Set-up ------------------------------------------------------------ */

static void test_init(void **state)
{
	struct gnet_cfg cfg = test_cfg(4);
	struct gnet_io io = mock_io;

	(void)state;
	assert_int_equal(gnet_init(&S, &cfg, &io), 0);
	cfg.mtu = 0;
	assert_int_equal(gnet_init(&S, &cfg, &io), 0);
	assert_int_equal(gnet_config(&S)->mtu, 1500);
#define BAD(field, value)                                                      \
	do {                                                                   \
		cfg = test_cfg(4);                                             \
		cfg.field = value;                                             \
		assert_int_equal(gnet_init(&S, &cfg, &io), -EINVAL);           \
	} while (0)
	BAD(mtu, 575);
	BAD(mtu, 1501);
	BAD(mac[0], 0x01); /* multicast */
	BAD(netmask, ip4(255, 0, 255, 0));
	BAD(gw, ip4(10, 0, 1, 1)); /* off our subnet */
	BAD(max_conns, GNET_MAX_CONNS + 1);
	BAD(conn_mem, NULL);
	cfg = test_cfg(4);
	memset(cfg.mac, 0, 6);
	assert_int_equal(gnet_init(&S, &cfg, &io), -EINVAL);
	cfg = test_cfg(4);
	io.now = NULL;
	assert_int_equal(gnet_init(&S, &cfg, &io), -EINVAL);
	assert_int_equal(gnet_init(&S, NULL, &mock_io), -EINVAL);
	/* No TCP pool is fine; leave the stack set up for teardown. */
	cfg = test_cfg(0);
	cfg.conn_mem = NULL;
	assert_int_equal(gnet_init(&S, &cfg, &mock_io), 0);
	assert_int_equal(gnet_next_deadline(&S), UINT64_MAX);
#undef BAD
}

/* ---- ARP --------------------------------------------------------------- */

static void udp_to(uint32_t dst, const char *msg)
{
	assert_int_equal(gnet_udp_send(&S, dst, 9999, 5555, msg, strlen(msg)),
			 0);
}

static void expect_arp(uint16_t op, const uint8_t *dst_mac, uint32_t tpa,
		       const uint8_t *tha)
{
	struct pkt p;
	const uint8_t *a;
	uint32_t ip;

	next_pkt(&p);
	assert_int_equal(p.type, 0x0806);
	assert_int_equal(p.flen, 60); /* padded */
	assert_memory_equal(p.dst_mac, dst_mac, 6);
	a = p.f + 14;
	assert_int_equal(get16(a), 1);
	assert_int_equal(get16(a + 2), 0x0800);
	assert_int_equal(get16(a + 6), op);
	assert_memory_equal(a + 8, our_mac, 6);
	memcpy(&ip, a + 14, 4);
	assert_int_equal(ip, OUR_IP);
	assert_memory_equal(a + 18, tha, 6);
	memcpy(&ip, a + 24, 4);
	assert_int_equal(ip, tpa);
}

static void expect_udp_to(const uint8_t *mac, uint32_t dst, const char *msg)
{
	struct pkt p;

	next_pkt(&p);
	assert_int_equal(p.proto, 17);
	assert_memory_equal(p.dst_mac, mac, 6);
	assert_int_equal(p.dst, dst);
	assert_int_equal(p.l4len, 8 + strlen(msg));
	assert_memory_equal(p.l4 + 8, msg, strlen(msg));
}

static void test_arp_reply(void **state)
{
	static const uint8_t zero[6];
	uint8_t f[64];

	(void)state;
	inject(f, build_arp(f, 1, peer_mac, PEER_IP, zero, OUR_IP));
	flush();
	expect_arp(2, peer_mac, PEER_IP, peer_mac);
	assert_int_equal(gnet_stats(&S)->arp_replies, 1);
	/* Cached from the request: no ARP needed to answer the peer. */
	udp_to(PEER_IP, "hi");
	flush();
	expect_udp_to(peer_mac, PEER_IP, "hi");
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->arp_requests, 0);
	/* Truncated, or not Ethernet/IPv4: dropped. */
	inject(f, 41);
	assert_int_equal(gnet_stats(&S)->rx_bad_len, 1);
	f[14 + 5] = 16;
	inject(f, 42);
	assert_int_equal(gnet_stats(&S)->rx_bad_hdr, 1);
	/* A multicast sender address is refused. */
	build_arp(f, 1, bcast_mac, PEER_IP, zero, OUR_IP);
	inject(f, 42);
	assert_int_equal(gnet_stats(&S)->rx_bad_hdr, 2);
	flush();
	assert_int_equal(pending(), 0);
}

static void test_arp_other_ignored(void **state)
{
	static const uint8_t zero[6];
	uint32_t other = ip4(10, 0, 0, 3);
	uint8_t f[64];

	(void)state;
	/* A request for someone else: no reply, nothing cached. */
	inject(f, build_arp(f, 1, peer_mac, other, zero, ip4(10, 0, 0, 9)));
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->rx_not_for_us, 1);
	udp_to(other, "x");
	flush();
	expect_arp(1, bcast_mac, other, zero); /* must resolve it itself */
	assert_int_equal(pending(), 0);
	/* Frames to other MACs are not ours either. */
	build_arp(f, 2, peer_mac, other, our_mac, OUR_IP);
	memcpy(f, peer_mac, 6);
	inject(f, 42);
	assert_int_equal(gnet_stats(&S)->rx_not_for_us, 2);
}

static void test_arp_resolve(void **state)
{
	static const uint8_t zero[6];
	uint32_t far = ip4(192, 168, 1, 1);
	uint8_t f[64];

	(void)state;
	/* Two datagrams wait for one request; the reply releases both, in
	 * order, with the learnt MAC. */
	udp_to(PEER_IP, "one");
	udp_to(PEER_IP, "two");
	flush();
	expect_arp(1, bcast_mac, PEER_IP, zero);
	assert_int_equal(pending(), 0);
	inject(f, build_arp(f, 2, peer_mac, PEER_IP, our_mac, OUR_IP));
	flush();
	expect_udp_to(peer_mac, PEER_IP, "one");
	expect_udp_to(peer_mac, PEER_IP, "two");
	assert_int_equal(pending(), 0);
	/* Off-link goes through the gateway. */
	udp_to(far, "far");
	flush();
	expect_arp(1, bcast_mac, GW_IP, zero);
	inject(f, build_arp(f, 2, gw_mac, GW_IP, our_mac, OUR_IP));
	flush();
	expect_udp_to(gw_mac, far, "far");
	/* After ARP's TTL the entry is used but refreshed. */
	advance(61 * SEC);
	udp_to(PEER_IP, "old");
	flush();
	expect_udp_to(peer_mac, PEER_IP, "old");
	expect_arp(1, bcast_mac, PEER_IP, zero);
	/* Nobody answers: 3 requests a second apart, then the held frame is
	 * dropped.  The stale entry's refresh is answered. */
	udp_to(ip4(10, 0, 0, 77), "lost");
	flush();
	expect_arp(1, bcast_mac, ip4(10, 0, 0, 77), zero);
	advance(SEC - 1);
	flush();
	assert_int_equal(pending(), 0);
	advance(1);
	flush();
	expect_arp(1, bcast_mac, PEER_IP, zero);
	expect_arp(1, bcast_mac, ip4(10, 0, 0, 77), zero);
	inject(f, build_arp(f, 2, peer_mac, PEER_IP, our_mac, OUR_IP));
	advance(SEC);
	flush();
	expect_arp(1, bcast_mac, ip4(10, 0, 0, 77), zero);
	assert_int_equal(pending(), 0);
	advance(SEC);
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->arp_unresolved, 1);
	assert_int_equal(gnet_next_deadline(&S), UINT64_MAX);
	/* Without a gateway, off-link is unreachable. */
	{
		struct gnet_cfg cfg = test_cfg(0);

		cfg.gw = 0;
		cfg.conn_mem = NULL;
		assert_int_equal(gnet_init(&S, &cfg, &mock_io), 0);
		assert_int_equal(gnet_udp_send(&S, far, 1, 2, "x", 1),
				 -ENETUNREACH);
		assert_int_equal(gnet_stats(&S)->tx_no_route, 1);
	}
}

static void test_arp_hold_bounded(void **state)
{
	(void)state;
	for (int i = 0; i < GNET_ARP_HOLD + 4; i++)
		udp_to(PEER_IP, "q");
	flush();
	assert_int_equal(pending(), 1); /* the request */
	assert_int_equal(gnet_stats(&S)->arp_unresolved, 4);
	out_pos = n_out;
	/* Every cache entry INCOMPLETE: a new destination is refused. */
	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++)
		udp_to(ip4(10, 0, 0, 100 + i), "q");
	assert_int_equal(gnet_stats(&S)->arp_unresolved, 4 + GNET_ARP_CACHE);
	flush();
	assert_int_equal(pending(), GNET_ARP_CACHE - 1);
}

/* ---- IPv4 and ICMP ------------------------------------------------------ */

static void test_icmp_echo(void **state)
{
	uint8_t f[1600], payload[1000];
	struct pkt p;

	(void)state;
	learn_peer();
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 13);
	inject(f, build_icmp_echo(f, OUR_IP, 0xbeef, 42, payload, 1000));
	flush();
	next_pkt(&p);
	assert_int_equal(p.proto, 1);
	assert_int_equal(p.dst, PEER_IP);
	assert_int_equal(p.l4len, 1008);
	assert_int_equal(p.l4[0], 0);
	assert_int_equal(p.l4[1], 0);
	assert_int_equal(get16(p.l4 + 4), 0xbeef);
	assert_int_equal(get16(p.l4 + 6), 42);
	assert_memory_equal(p.l4 + 8, payload, 1000);
	assert_int_equal(gnet_stats(&S)->icmp_echo, 1);
	/* Largest: 1500-byte packet. */
	inject(f, build_icmp_echo(f, OUR_IP, 1, 2, rx80, 1472));
	flush();
	next_pkt(&p);
	assert_int_equal(p.flen, 1514);
	/* Broadcast pings (counted as unsupported), bad checksums, other
	 * types: no answer. */
	inject(f, build_icmp_echo(f, ip4(10, 0, 0, 255), 1, 1, "x", 1));
	inject(f, build_icmp_echo(f, ip4(255, 255, 255, 255), 1, 1, "x", 1));
	build_icmp_echo(f, OUR_IP, 1, 1, "abc", 3);
	f[34 + 8] ^= 1;
	inject(f, 34 + 11);
	assert_int_equal(gnet_stats(&S)->rx_bad_csum, 1);
	build_icmp_echo(f, OUR_IP, 1, 1, "abc", 3);
	f[34] = 13; /* timestamp request */
	put16(f + 36, 0);
	put16(f + 36, fold(sum16(f + 34, 11, 0)));
	inject(f, 34 + 11);
	inject(f, 34 + 4); /* cut short: the IP total length lies */
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->rx_bad_proto, 3);
	assert_int_equal(gnet_stats(&S)->rx_bad_len, 1);
}

static void test_ip_options_and_padding(void **state)
{
	uint8_t f[128], m[12] = {8, 0, 0, 0, 0, 7, 0, 9, 'p', 'i', 'n', 'g'};
	uint8_t *ip = f + 14;
	struct pkt p;

	(void)state;
	learn_peer();
	/* IHL 6: four option bytes (NOPs, EOL) are skipped. */
	put16(m + 2, fold(sum16(m, 12, 0)));
	eth(f, our_mac, peer_mac, 0x0800);
	ip[0] = 0x46;
	ip[1] = 0;
	put16(ip + 2, 24 + 12);
	put16(ip + 4, 1);
	put16(ip + 6, 0);
	ip[8] = 64;
	ip[9] = 1;
	put16(ip + 10, 0);
	memcpy(ip + 12, &(uint32_t){PEER_IP}, 4);
	memcpy(ip + 16, &(uint32_t){OUR_IP}, 4);
	memcpy(ip + 20, "\x01\x01\x01\x00", 4);
	put16(ip + 10, fold(sum16(ip, 24, 0)));
	memcpy(ip + 24, m, 12);
	inject(f, 14 + 36);
	flush();
	next_pkt(&p);
	assert_int_equal(p.l4len, 12);
	assert_memory_equal(p.l4 + 8, "ping", 4);
	/* Ethernet padding after the IP packet is not data. */
	memset(f, 0xee, sizeof(f));
	build_icmp_echo(f, OUR_IP, 3, 4, "pad", 3);
	inject(f, 60);
	flush();
	next_pkt(&p);
	assert_int_equal(p.l4len, 11);
	assert_memory_equal(p.l4 + 8, "pad", 3);
	assert_int_equal(pending(), 0);
}

/* Each malformation is dropped, counted under its reason, answered by
 * nothing. */
static void test_ip_malformed(void **state)
{
	const struct gnet_stats *st = gnet_stats(&S);
	uint8_t good[128], f[2048];
	size_t n;
	struct gnet_stats before;

	(void)state;
	learn_peer();
	n = build_icmp_echo(good, OUR_IP, 1, 1, "abcd", 4);
#define CASE(counter, len, mutate)                                             \
	do {                                                                   \
		memcpy(f, good, sizeof(good));                                 \
		before = *st;                                                  \
		mutate;                                                        \
		inject(f, len);                                                \
		assert_int_equal(st->counter, before.counter + 1);             \
	} while (0)
	CASE(rx_bad_len, 13, (void)0);	    /* runt */
	CASE(rx_bad_len, 14 + 19, (void)0); /* < 20 */
	CASE(rx_bad_len, 1515, (void)0);    /* > MTU */
	CASE(rx_bad_hdr, n, f[14] = 0x65);  /* version 6 */
	CASE(rx_bad_hdr, n, f[14] = 0x44);  /* IHL 4 */
	CASE(rx_bad_len, n, f[14] = 0x4f);  /* IHL > len */
	CASE(rx_bad_len, n, put16(f + 16, (uint16_t)(n - 14 + 1)));
	CASE(rx_bad_len, n, put16(f + 16, 19)); /* tot < IHL */
	CASE(rx_bad_len, n - 1, (void)0);	/* cut short */
	CASE(rx_bad_csum, n, f[24] ^= 0x40);	/* header sum */
	CASE(rx_frag, n,
	     (put16(f + 20, 0x2000), put16(f + 24, 0),
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_frag, n,
	     (put16(f + 20, 0x0010), put16(f + 24, 0),
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_not_for_us, n,
	     (memcpy(f + 30, &(uint32_t){ip4(10, 0, 0, 5)}, 4),
	      put16(f + 24, 0), put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_bad_hdr, n,
	     (memcpy(f + 26, &(uint32_t){ip4(224, 0, 0, 1)}, 4),
	      put16(f + 24, 0), put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_bad_hdr, n,
	     (memcpy(f + 26, &(uint32_t){OUR_IP}, 4), put16(f + 24, 0),
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_bad_proto, n,
	     (f[23] = 99, put16(f + 24, 0),
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_bad_proto, n, put16(f + 12, 0x86dd)); /* IPv6 */
	CASE(rx_bad_len, n,
	     (f[23] = 17, put16(f + 24, 0), /* UDP < 8 */
	      put16(f + 16, 20 + 4),
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
	CASE(rx_bad_len, n,
	     (f[23] = 6, put16(f + 24, 0), /* TCP < 20 */
	      put16(f + 24, fold(sum16(f + 14, 20, 0)))));
#undef CASE
	gnet_input(&S, NULL, 64);
	flush();
	assert_int_equal(pending(), 0);
}

/* ---- UDP ----------------------------------------------------------------- */

static struct {
	unsigned int n;
	uint32_t src;
	uint16_t sport;
	uint8_t data[1500];
	size_t len;
	bool reenter;
} udp_got;

static void udp_cb(void *ctx, uint32_t src, uint16_t sport, const void *d,
		   size_t len)
{
	assert_ptr_equal(ctx, &udp_got);
	udp_got.n++;
	udp_got.src = src;
	udp_got.sport = sport;
	memcpy(udp_got.data, d, len);
	udp_got.len = len;
	if (udp_got.reenter) /* not allowed: ignored and counted */
		gnet_input(&S, d, len);
	/* Sending from the callback is. */
	assert_int_equal(gnet_udp_send(&S, src, sport, 7, d, len), 0);
}

static void test_udp(void **state)
{
	uint8_t f[1600], big[1473] = {0};
	struct pkt p;
	size_t n;

	(void)state;
	memset(&udp_got, 0, sizeof(udp_got));
	learn_peer();
	assert_int_equal(gnet_udp_bind(&S, 7, udp_cb, &udp_got), 0);
	assert_int_equal(gnet_udp_bind(&S, 7, udp_cb, NULL), -EADDRINUSE);
	assert_int_equal(gnet_udp_bind(&S, 0, udp_cb, NULL), -EINVAL);
	assert_int_equal(gnet_udp_bind(&S, 8, NULL, NULL), -EINVAL);
	for (int i = 1; i < GNET_MAX_UDP; i++)
		assert_int_equal(gnet_udp_bind(&S, (uint16_t)(100 + i), udp_cb,
					       &udp_got),
				 0);
	assert_int_equal(gnet_udp_bind(&S, 99, udp_cb, NULL), -ENOSPC);

	inject(f, build_udp(f, PEER_IP, 4242, OUR_IP, 7, "hello", 5, true));
	assert_int_equal(udp_got.n, 1);
	assert_int_equal(udp_got.src, PEER_IP);
	assert_int_equal(udp_got.sport, 4242);
	assert_int_equal(udp_got.len, 5);
	assert_memory_equal(udp_got.data, "hello", 5);
	flush();
	next_pkt(&p);
	assert_int_equal(p.proto, 17);
	assert_int_equal(get16(p.l4), 7);
	assert_int_equal(get16(p.l4 + 2), 4242);
	assert_memory_equal(p.l4 + 8, "hello", 5);
	/* Checksum 0 means none; broadcast is delivered; empty is fine. */
	inject(f,
	       build_udp(f, PEER_IP, 1, ip4(10, 0, 0, 255), 7, "b", 1, false));
	assert_int_equal(udp_got.n, 2);
	inject(f, build_udp(f, PEER_IP, 1, OUR_IP, 7, "", 0, true));
	assert_int_equal(udp_got.n, 3);
	assert_int_equal(udp_got.len, 0);
	/* Bad checksum, lying length, nobody bound. */
	n = build_udp(f, PEER_IP, 1, OUR_IP, 7, "data", 4, true);
	f[n - 1] ^= 0xff;
	inject(f, n);
	assert_int_equal(gnet_stats(&S)->rx_bad_csum, 1);
	n = build_udp(f, PEER_IP, 1, OUR_IP, 7, "data", 4, false);
	put16(f + 34 + 4, 13);
	inject(f, n);
	put16(f + 34 + 4, 7);
	inject(f, n);
	assert_int_equal(gnet_stats(&S)->rx_bad_len, 2);
	inject(f, build_udp(f, PEER_IP, 1, OUR_IP, 8, "x", 1, true));
	assert_int_equal(gnet_stats(&S)->rx_no_listener, 1);
	assert_int_equal(udp_got.n, 3);
	/* Sending: limits. */
	assert_int_equal(gnet_udp_send(&S, PEER_IP, 1, 2, big, 1472), 0);
	assert_int_equal(gnet_udp_send(&S, PEER_IP, 1, 2, big, 1473),
			 -EMSGSIZE);
	assert_int_equal(gnet_udp_send(&S, 0, 1, 2, big, 1), -EINVAL);
	assert_int_equal(gnet_udp_send(&S, PEER_IP, 0, 2, big, 1), -EINVAL);
	assert_int_equal(gnet_udp_send(&S, PEER_IP, 1, 2, NULL, 1), -EINVAL);
	/* Reentering gnet_input from a callback is refused. */
	udp_got.reenter = true;
	inject(f, build_udp(f, PEER_IP, 1, OUR_IP, 7, "r", 1, true));
	assert_int_equal(gnet_stats(&S)->misuse, 1);
	flush();
}

static void test_tx_batches(void **state)
{
	struct pkt p;

	(void)state;
	learn_peer();
	n_batches = max_batch = 0;
	for (int i = 0; i < 200; i++)
		assert_int_equal(gnet_udp_send(&S, PEER_IP, 1, 2, &i, 4), 0);
	/* A full queue went out on its own. */
	assert_int_equal(pending(), 3 * GNET_TXQ);
	flush();
	assert_int_equal(pending(), 200);
	assert_int_equal(max_batch, GNET_BATCH_MAX);
	assert_int_equal(n_batches,
			 (200 + GNET_BATCH_MAX - 1) / GNET_BATCH_MAX);
	for (int i = 0; i < 200; i++) {
		next_pkt(&p);
		assert_memory_equal(p.l4 + 8, &i, 4);
	}
	assert_int_equal(gnet_stats(&S)->tx_frames, 200 + 1);
	/* An io error loses the batch, counted, and is returned. */
	send_err = -EIO;
	assert_int_equal(gnet_udp_send(&S, PEER_IP, 1, 2, "x", 1), 0);
	assert_int_equal(gnet_flush(&S), -EIO);
	assert_int_equal(gnet_stats(&S)->tx_errors, 1);
	send_err = 0;
	assert_int_equal(gnet_flush(&S), 0); /* nothing left */
}

/* ---- TCP: connection set-up ---------------------------------------------- */

static void test_tcp_handshake(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;
	uint32_t ip;
	uint16_t pport, lport;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	assert_int_equal(gnet_tcp_listen(&S, OUR_PORT, &app_cb, NULL),
			 -EADDRINUSE);
	assert_int_equal(gnet_tcp_listen(&S, 0, &app_cb, NULL), -EINVAL);
	assert_int_equal(gnet_tcp_listen(&S, 1, &(struct gnet_tcp_cb){0}, NULL),
			 -EINVAL);
	peer_init(&p, 40000, OUR_PORT);
	p.mss = 1000;
	c = handshake(&p, &app80);
	gnet_conn_addr(c, &ip, &pport, &lport);
	assert_int_equal(ip, PEER_IP);
	assert_int_equal(pport, 40000);
	assert_int_equal(lport, OUR_PORT);
	assert_int_equal(gnet_stats(&S)->tcp_accepted, 1);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 1);
	/* Segments respect the peer's MSS. */
	assert_int_equal(gnet_tcp_send(c, rx80, 2500), 2500);
	flush();
	for (unsigned int i = 0; i < 3; i++) {
		peer_recv(&p, &t);
		assert_int_equal(t.seq, p.iss + 1 + 1000 * i);
		assert_int_equal(t.len, i < 2 ? 1000 : 500);
		assert_int_equal(t.flags, TH_ACK | (i == 2 ? TH_PSH : 0));
	}
	/* No MSS option: 536; a silly one: raised to 64. */
	peer_init(&p, 40001, OUR_PORT);
	p.mss = 0;
	c = handshake(&p, &app80);
	assert_int_equal(gnet_tcp_send(c, rx80, 600), 600);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.len, 536);
	out_pos = n_out;
	peer_init(&p, 40002, OUR_PORT);
	p.mss = 1;
	c = handshake(&p, &app80);
	assert_int_equal(gnet_tcp_send(c, rx80, 100), 100);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.len, 64);
	out_pos = n_out;
}

static void test_tcp_options_garbage(void **state)
{
	static const uint8_t opts[][8] = {
		{1, 1, 1, 0, 2, 4, 0, 10}, /* EOL before MSS: ignored */
		{8, 10, 1, 2, 3, 4, 5, 6}, /* timestamp running off the end */
		{5, 0, 2, 4, 0, 10, 1, 1}, /* length 0 */
		{5, 1, 2, 4, 0, 10, 1, 1}, /* length 1 */
		{2, 3, 0, 10, 1, 1, 1, 1}, /* MSS of bad length */
		{3, 3, 7, 4, 2, 1, 1, 1},  /* window scale, SACK-permitted */
	};
	struct pkt t;
	uint8_t f[128];

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	for (unsigned int i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		struct tcp_in in = {.src = PEER_IP,
				    .sport = (uint16_t)(30000 + i),
				    .dport = OUR_PORT,
				    .seq = 5,
				    .flags = TH_SYN,
				    .wnd = 1000,
				    .opt = opts[i],
				    .optlen = 8};

		inject(f, build_tcp(f, &in));
		flush();
		next_pkt(&t);
		assert_int_equal(t.flags, TH_SYN | TH_ACK);
		assert_int_equal(t.mss, 1460);
		assert_int_equal(t.len, 0);
	}
	assert_int_equal(gnet_stats(&S)->tcp_conns, 6);
}

static void test_tcp_syn_retransmit(void **state)
{
	struct peer p;
	struct pkt t;
	uint64_t wait = SEC;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40100, OUR_PORT);
	peer_send(&p, TH_SYN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	p.iss = t.seq;
	/* The same SYN again: the SYN-ACK again at once. */
	peer_raw(&p, TH_SYN, p.nxt - 1, 0, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_SYN | TH_ACK);
	assert_int_equal(t.seq, p.iss);
	/* Unanswered: 1 s, then backing off; five times; then a RST and
	 * the slot is free, with no callback. */
	for (int i = 0; i < 5; i++) {
		advance(wait - 1);
		flush();
		assert_int_equal(pending(), 0);
		advance(1);
		flush();
		peer_recv(&p, &t);
		assert_int_equal(t.flags, TH_SYN | TH_ACK);
		assert_int_equal(t.seq, p.iss);
		wait *= 2;
	}
	advance(wait);
	flush();
	peer_recv(&p, &t);
	assert_true(t.flags & TH_RST);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
	assert_int_equal(app80.accepted + app80.closed, 0);
	assert_int_equal(gnet_stats(&S)->tcp_retransmits, 6);
}

static void test_tcp_handshake_bad_ack(void **state)
{
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40200, OUR_PORT);
	peer_send(&p, TH_SYN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	p.iss = t.seq;
	/* An ACK of something we never sent: RST with its ack as seq. */
	peer_raw(&p, TH_ACK, p.nxt, p.iss + 7, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST);
	assert_int_equal(t.seq, p.iss + 7);
	/* Data without ACK: dropped. */
	peer_raw(&p, 0, p.nxt, 0, "x", 1);
	assert_int_equal(app80.accepted, 0);
	/* The right ACK, carrying data and FIN: all of it counts. */
	p.rcv = p.iss + 1;
	peer_send(&p, TH_FIN | TH_PSH, "data", 4);
	assert_int_equal(app80.accepted, 1);
	assert_int_equal(app80.readable, 1);
	assert_int_equal(gnet_tcp_readable(app80.last), 4);
	assert_false(gnet_tcp_eof(app80.last));
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
}

/* ---- TCP: receiving ----------------------------------------------------- */

static void test_tcp_receive(void **state)
{
	struct gnet_conn *c;
	uint8_t buf[8192];
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40300, OUR_PORT);
	c = handshake(&p, &app80);
	for (int i = 0; i < 3; i++) {
		memset(buf, 'a' + i, 1000);
		peer_send(&p, TH_PSH, buf, 1000);
	}
	assert_int_equal(app80.readable, 3);
	/* One ACK for the batch; the unread data shrinks the window. */
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_ACK);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(t.wnd, 65535 - 3000);
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_tcp_readable(c), 3000);
	assert_int_equal(gnet_tcp_read(c, buf, sizeof(buf)), 3000);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 1000; j++)
			assert_int_equal(buf[i * 1000 + j], 'a' + i);
	/* Reading made room: a window update. */
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.wnd, 65535);
	assert_int_equal(gnet_tcp_read(c, buf, sizeof(buf)), 0);
	/* Part duplicate, part new: only the new part is delivered. */
	memset(buf, 'x', 200);
	memset(buf + 200, 'y', 300);
	peer_raw(&p, TH_ACK, p.nxt - 200, p.rcv, buf, 500);
	p.nxt += 300;
	assert_int_equal(gnet_tcp_read(c, buf + 1000, 1000), 300);
	assert_memory_equal(buf + 1000, buf + 200, 300);
	/* A full duplicate: an ACK, nothing delivered. */
	peer_raw(&p, TH_ACK, p.nxt - 300, p.rcv, buf, 300);
	assert_int_equal(gnet_tcp_readable(c), 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(pending(), 0);
}

/* gnet_moved: three duplicate ACKs per connection (same ack and window,
 * no data), our unacknowledged data again, a half-open connection's
 * SYN-ACK again; nothing for a connection whose peer is gone. */
static void test_tcp_moved(void **state)
{
	struct gnet_conn *c;
	struct peer p, q;
	struct pkt t;
	uint32_t wnd, seq;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40350, OUR_PORT);
	c = handshake(&p, &app80);
	peer_send(&p, TH_PSH, "get k", 5);
	flush();
	peer_recv(&p, &t);
	wnd = t.wnd;
	/* We answered; the answer is in flight, never acknowledged. */
	assert_int_equal(gnet_tcp_send(c, "value", 5), 5);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.len, 5);
	seq = t.seq;
	/* A second peer, half open: its SYN-ACK was lost. */
	peer_init(&q, 40351, OUR_PORT);
	peer_send(&q, TH_SYN, NULL, 0);
	flush();
	peer_recv(&q, &t);
	assert_int_equal(t.flags, TH_SYN | TH_ACK);
	q.iss = t.seq;
	assert_int_equal(pending(), 0);

	gnet_moved(&S);
	assert_int_equal(gnet_stats(&S)->moves, 1);
	flush();
	for (int k = 0; k < 3; k++) {
		peer_recv(&p, &t);
		assert_int_equal(t.flags, TH_ACK);
		assert_int_equal(t.ack, p.nxt);
		assert_int_equal(t.wnd, wnd);
		assert_int_equal(t.len, 0);
	}
	peer_recv(&p, &t);
	assert_int_equal(t.seq, seq);
	assert_int_equal(t.len, 5);
	assert_memory_equal(t.data, "value", 5);
	peer_recv(&q, &t);
	assert_int_equal(t.flags, TH_SYN | TH_ACK);
	assert_int_equal(t.seq, q.iss);
	assert_int_equal(t.ack, q.nxt);
	assert_int_equal(pending(), 0);
}

static void test_tcp_out_of_order(void **state)
{
	struct gnet_conn *c;
	uint8_t buf[3000];
	struct peer p;
	struct pkt t;
	uint32_t seq1;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40400, OUR_PORT);
	c = handshake(&p, &app80);
	seq1 = p.nxt;
	memset(buf, '1', 1000);
	memset(buf + 1000, '2', 1000);
	/* Segment 2 first: dropped, a duplicate ACK at once. */
	peer_raw(&p, TH_ACK, seq1 + 1000, p.rcv, buf + 1000, 1000);
	assert_int_equal(gnet_tcp_readable(c), 0);
	assert_int_equal(app80.readable, 0);
	/* One duplicate ACK per such segment, not one per flush: the peer
	 * needs three for a fast retransmit. */
	peer_raw(&p, TH_ACK | TH_FIN, seq1 + 1000, p.rcv, buf + 1000, 1000);
	flush();
	for (int i = 0; i < 2; i++) {
		peer_recv(&p, &t);
		assert_int_equal(t.ack, seq1);
		assert_int_equal(t.len, 0);
	}
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->rx_out_of_order, 2);
	/* Segment 1: delivered alone. */
	peer_raw(&p, TH_ACK, seq1, p.rcv, buf, 1000);
	assert_int_equal(gnet_tcp_readable(c), 1000);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, seq1 + 1000);
	/* Segment 2 again: now in order. */
	peer_raw(&p, TH_ACK, seq1 + 1000, p.rcv, buf + 1000, 1000);
	assert_int_equal(gnet_tcp_read(c, buf + 2000, 1000), 1000);
	assert_int_equal(gnet_tcp_read(c, buf + 2000, 1000), 1000);
	assert_memory_equal(buf + 2000, buf + 1000, 1000);
}

static void test_tcp_zero_receive_window(void **state)
{
	struct gnet_conn *c;
	uint8_t buf[1460];
	struct peer p;
	struct pkt t;
	uint32_t got = 0;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40500, OUR_PORT);
	c = handshake(&p, &app80);
	memset(buf, 'z', sizeof(buf));
	/* Fill the window exactly; the last segment is cut to fit. */
	while (got < 65535) {
		peer_send(&p, TH_ACK, buf, sizeof(buf));
		got += sizeof(buf);
	}
	assert_int_equal(gnet_tcp_readable(c), 65535);
	p.nxt = p.nxt - got + 65535;
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(t.wnd, 0);
	/* A zero-window probe: answered, not taken. */
	peer_raw(&p, TH_ACK, p.nxt, p.rcv, "P", 1);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(t.wnd, 0);
	assert_int_equal(gnet_tcp_readable(c), 65535);
	/* Reading a little does not reopen it (no silly window)... */
	assert_int_equal(gnet_tcp_read(c, buf, 100), 100);
	flush();
	assert_int_equal(pending(), 0);
	/* ...reading enough does. */
	assert_int_equal(gnet_tcp_read(c, buf, 1460), 1460);
	assert_int_equal(gnet_tcp_read(c, buf, 1460), 1460);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.wnd, 3020);
	assert_int_equal(pending(), 0);
}

/* ---- TCP: sending -------------------------------------------------------- */

/* Each segment the stack sends now, in order, must continue the stream. */
static uint32_t take_data(struct peer *p, uint32_t *next, unsigned int *segs)
{
	uint32_t bytes = 0;
	struct pkt t;

	while (pending()) {
		peer_recv(p, &t);
		assert_int_equal(t.seq, *next);
		for (size_t i = 0; i < t.len; i++)
			assert_int_equal(t.data[i],
					 (uint8_t)(*next - p->iss - 1 + i));
		*next += (uint32_t)t.len;
		bytes += (uint32_t)t.len;
		(*segs)++;
	}
	return bytes;
}

static void fill_pattern(uint8_t *b, size_t n, uint32_t from)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(from + i);
}

static void test_tcp_send_window(void **state)
{
	static uint8_t data[100000];
	struct gnet_conn *c;
	struct peer p;
	uint32_t next;
	unsigned int segs = 0;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40600, OUR_PORT);
	p.mss = 1000;
	p.wnd = 3500;
	c = handshake(&p, &app80);
	next = p.iss + 1;
	fill_pattern(data, sizeof(data), 0);
	/* The send buffer takes 64 KiB. */
	assert_int_equal(gnet_tcp_send_space(c), GNET_TXBUF);
	assert_int_equal(gnet_tcp_send(c, data, sizeof(data)), GNET_TXBUF);
	assert_int_equal(gnet_tcp_send_space(c), 0);
	assert_int_equal(gnet_tcp_send(c, data, 1), 0);
	flush();
	/* Three full segments fit in 3500; the 500 left over waits (no
	 * silly window: 500 < MSS and < half the largest window). */
	assert_int_equal(take_data(&p, &next, &segs), 3000);
	assert_int_equal(segs, 3);
	/* An ACK moves the window: more goes, writable is reported. */
	p.rcv = next;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(app80.writable, 1);
	assert_int_equal(gnet_tcp_send_space(c), 3000);
	flush();
	assert_int_equal(take_data(&p, &next, &segs), 3000);
	/* A zero window stops everything; the persist timer probes with one
	 * byte after the RTO (200 ms after a 0 ms RTT sample). */
	p.rcv = next;
	p.wnd = 0;
	peer_send(&p, TH_ACK, NULL, 0);
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_next_deadline(&S), mock_now + 200 * MS);
	for (unsigned int i = 0; i < 12; i++) {
		struct pkt t;

		advance((200 * MS << i) > 60 * SEC ? 60 * SEC : 200 * MS << i);
		flush();
		peer_recv(&p, &t);
		assert_int_equal(t.seq, next);
		assert_int_equal(t.len, 1);
		/* The peer answers: still zero. */
		peer_send(&p, TH_ACK, NULL, 0);
		flush();
		assert_int_equal(pending(), 0);
	}
	assert_int_equal(app80.closed, 0); /* answered probes never time out */
	/* The window opens: data resumes where it stopped. */
	p.wnd = 2000;
	peer_send(&p, TH_ACK, NULL, 0);
	flush();
	assert_int_equal(take_data(&p, &next, &segs), 2000);
	/* Unanswered probes: the connection is given up. */
	p.rcv = next;
	p.wnd = 0;
	peer_send(&p, TH_ACK, NULL, 0);
	for (unsigned int i = 0; i < 40 && !app80.closed; i++) {
		advance(60 * SEC);
		flush();
		out_pos = n_out;
	}
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, -ETIMEDOUT);
}

static void test_tcp_retransmit(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;
	uint64_t rto = 200 * MS;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40700, OUR_PORT);
	c = handshake(&p, &app80);
	assert_int_equal(gnet_tcp_send(c, "hello", 5), 5);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.len, 5);
	assert_int_equal(gnet_next_deadline(&S), mock_now + rto);
	/* Unacknowledged: sent again after the RTO, doubling each time. */
	for (int i = 0; i < 8; i++) {
		advance(rto - 1);
		flush();
		assert_int_equal(pending(), 0);
		advance(1);
		flush();
		peer_recv(&p, &t);
		assert_int_equal(t.seq, p.iss + 1);
		assert_int_equal(t.len, 5);
		assert_memory_equal(t.data, "hello", 5);
		rto *= 2;
	}
	assert_int_equal(gnet_stats(&S)->tcp_retransmits, 8);
	/* The ninth timeout gives up: RST, closed(-ETIMEDOUT). */
	advance(rto);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST | TH_ACK);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, -ETIMEDOUT);
	assert_int_equal(gnet_stats(&S)->tcp_timeouts, 1);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
	/* The connection is gone: its segments are answered by a RST. */
	peer_send(&p, TH_ACK, "late", 4);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST);
}

static void test_tcp_rtt(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40800, OUR_PORT);
	/* A 300 ms handshake RTT: RTO = 300 + 4 * 150 = 900 ms. */
	peer_send(&p, TH_SYN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	p.iss = t.seq;
	p.rcv = t.seq + 1;
	advance(300 * MS);
	peer_send(&p, TH_ACK, NULL, 0);
	c = app80.last;
	assert_int_equal(gnet_tcp_send(c, "a", 1), 1);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(gnet_next_deadline(&S), mock_now + 900 * MS);
	/* A 100 ms sample: srtt 275, rttvar 162.5 -> 925 ms. */
	advance(100 * MS);
	p.rcv += 1;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(gnet_tcp_send(c, "b", 1), 1);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(gnet_next_deadline(&S), mock_now + 925 * MS);
	/* Karn: an ACK of a retransmitted segment gives no sample. */
	advance(925 * MS);
	flush();
	peer_recv(&p, &t); /* retransmission; RTO now 1850 */
	advance(10 * MS);
	p.rcv += 1;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(gnet_tcp_send(c, "c", 1), 1);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(gnet_next_deadline(&S), mock_now + 1850 * MS);
}

static void test_tcp_fast_retransmit(void **state)
{
	static uint8_t data[8000];
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;
	uint32_t next;
	unsigned int segs = 0;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 40900, OUR_PORT);
	p.mss = 1000;
	c = handshake(&p, &app80);
	next = p.iss + 1;
	fill_pattern(data, sizeof(data), 0);
	assert_int_equal(gnet_tcp_send(c, data, 5000), 5000);
	flush();
	assert_int_equal(take_data(&p, &next, &segs), 5000);
	/* The first segment is lost: the peer ACKs the others as dups. */
	for (int i = 0; i < 2; i++) {
		peer_send(&p, TH_ACK, NULL, 0);
		flush();
		assert_int_equal(pending(), 0);
	}
	peer_send(&p, TH_ACK, NULL, 0);
	flush();
	peer_recv(&p, &t); /* third duplicate: retransmitted, no RTO wait */
	assert_int_equal(t.seq, p.iss + 1);
	assert_int_equal(t.len, 1000);
	assert_int_equal(pending(), 0);
	/* A partial ACK: the next hole goes too. */
	p.rcv = p.iss + 1 + 1000;
	peer_send(&p, TH_ACK, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.seq, p.iss + 1 + 1000);
	/* Everything acknowledged: recovery ends, the timer stops. */
	p.rcv = next;
	peer_send(&p, TH_ACK, NULL, 0);
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_next_deadline(&S), UINT64_MAX);
	assert_int_equal(gnet_stats(&S)->tcp_retransmits, 2);
}

static void test_tcp_echo_bulk(void **state)
{
	static uint8_t data[300000];
	struct peer p;
	struct pkt t;
	uint32_t sent = 0, echoed = 0, next, edge;

	(void)state;
	learn_peer();
	listen7();
	peer_init(&p, 41000, ECHO_PORT);
	handshake(&p, &app7);
	next = p.iss + 1;
	fill_pattern(data, sizeof(data), 0);
	/* The peer sends within our window, ACKing what it got; when the
	 * window is shut it sends a bare ACK. */
	edge = p.nxt + 65535;
	for (int round = 0; echoed < sizeof(data); round++) {
		unsigned int segs = 0;

		assert_true(round < 10000);
		for (int i = 0; i < 8 && sent < sizeof(data); i++) {
			uint32_t n = sizeof(data) - sent < 1460
					     ? sizeof(data) - sent
					     : 1460;

			if ((int32_t)(p.nxt + n - edge) > 0)
				break;
			peer_send(&p, TH_ACK, data + sent, n);
			sent += n;
			segs++;
		}
		if (!segs)
			peer_send(&p, TH_ACK, NULL, 0);
		flush();
		while (pending()) {
			peer_recv(&p, &t);
			edge = t.ack + t.wnd;
			if (!t.len)
				continue;
			assert_int_equal(t.seq, next);
			assert_memory_equal(t.data, data + echoed, t.len);
			next += (uint32_t)t.len;
			echoed += (uint32_t)t.len;
		}
		p.rcv = next;
	}
	/* Close from the peer: the echo app closes too. */
	peer_send(&p, TH_FIN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags & (TH_FIN | TH_ACK), TH_FIN | TH_ACK);
	assert_int_equal(t.ack, p.nxt);
	p.rcv = t.seq + 1;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(app7.closed, 1);
	assert_int_equal(app7.reason, 0);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
}

/* ---- TCP: closing ---------------------------------------------------------
 */

static void test_tcp_peer_close(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;
	char buf[16];

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41100, OUR_PORT);
	c = handshake(&p, &app80);
	peer_send(&p, TH_FIN | TH_PSH, "bye", 3);
	assert_int_equal(app80.readable, 1);
	assert_false(gnet_tcp_eof(c));
	assert_int_equal(gnet_tcp_read(c, buf, sizeof(buf)), 3);
	assert_true(gnet_tcp_eof(c));
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt); /* FIN acknowledged */
	assert_int_equal(pending(), 0);
	/* Half-closed (CLOSE_WAIT): we can still send; then close. */
	assert_int_equal(gnet_tcp_send(c, "ok", 2), 2);
	gnet_tcp_close(c);
	gnet_tcp_close(c); /* idempotent */
	assert_int_equal(gnet_tcp_send(c, "no", 2), 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_ACK | TH_PSH | TH_FIN);
	assert_int_equal(t.len, 2);
	assert_int_equal(app80.closed, 0);
	/* LAST_ACK: the FIN is retransmitted until acknowledged. */
	advance(200 * MS);
	flush();
	peer_recv(&p, &t);
	assert_true(t.flags & TH_FIN);
	p.rcv = t.seq + 3;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, 0);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
	assert_int_equal(gnet_next_deadline(&S), UINT64_MAX);
}

static void test_tcp_our_close(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;
	char buf[8];

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41200, OUR_PORT);
	c = handshake(&p, &app80);
	assert_int_equal(gnet_tcp_send(c, "data", 4), 4);
	gnet_tcp_close(c);
	flush();
	/* The FIN rides on the data. */
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_ACK | TH_PSH | TH_FIN);
	assert_int_equal(t.len, 4);
	p.rcv = t.seq + 5;
	peer_send(&p, TH_ACK, NULL, 0); /* FIN_WAIT_2 */
	/* The peer may still send (half-close). */
	peer_send(&p, TH_ACK, "more", 4);
	assert_int_equal(gnet_tcp_read(c, buf, sizeof(buf)), 4);
	assert_int_equal(app80.closed, 0);
	/* Its FIN: TIME_WAIT, closed(0) now. */
	peer_send(&p, TH_FIN, NULL, 0);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	/* A retransmitted FIN is ACKed again. */
	peer_raw(&p, TH_FIN | TH_ACK, p.nxt - 1, p.rcv, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 1);
	/* 2MSL later the slot is free; no more callbacks. */
	advance(SEC);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
	assert_int_equal(app80.closed, 1);
}

static void test_tcp_simultaneous_close(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41300, OUR_PORT);
	c = handshake(&p, &app80);
	gnet_tcp_close(c);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_ACK | TH_FIN);
	/* The peer's FIN crosses ours: CLOSING. */
	peer_send(&p, TH_FIN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(app80.closed, 0);
	p.rcv = t.seq;
	peer_send(&p, TH_ACK, NULL, 0);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, 0);
	advance(SEC);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
}

static void test_tcp_fin_wait_2_timeout(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41400, OUR_PORT);
	c = handshake(&p, &app80);
	gnet_tcp_close(c);
	flush();
	peer_recv(&p, &t);
	p.rcv = t.seq + 1;
	peer_send(&p, TH_ACK, NULL, 0);
	advance(60 * SEC - 1);
	assert_int_equal(app80.closed, 0);
	advance(1);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, -ETIMEDOUT);
	flush();
	peer_recv(&p, &t);
	assert_true(t.flags & TH_RST);
}

static void test_tcp_abort(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41500, OUR_PORT);
	c = handshake(&p, &app80);
	peer_send(&p, TH_ACK, "unread", 6);
	gnet_tcp_abort(c);
	/* Dead at once for the application; closed() comes from the
	 * stack's next turn, which is due now. */
	assert_int_equal(gnet_tcp_send(c, "x", 1), 0);
	assert_int_equal(gnet_tcp_readable(c), 0);
	assert_true(gnet_tcp_eof(c));
	gnet_tcp_abort(c);
	assert_int_equal(app80.closed, 0);
	assert_int_equal(gnet_next_deadline(&S), 0);
	advance(0);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, -ECONNABORTED);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST | TH_ACK);
	assert_int_equal(t.seq, p.iss + 1);
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
}

/* ---- TCP: resets and hostile segments ---------------------------------------
 */

static void test_tcp_rst_closed_port(void **state)
{
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	peer_init(&p, 41600, 81);
	/* SYN: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>. */
	peer_send(&p, TH_SYN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST | TH_ACK);
	assert_int_equal(t.seq, 0);
	assert_int_equal(t.ack, p.nxt);
	/* With ACK: <SEQ=SEG.ACK><CTL=RST>. */
	peer_raw(&p, TH_ACK | TH_PSH, p.nxt, 777, "data", 4);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST);
	assert_int_equal(t.seq, 777);
	/* Never a RST for a RST. */
	peer_raw(&p, TH_RST, p.nxt, 0, NULL, 0);
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->rx_no_listener, 3);
	assert_int_equal(gnet_stats(&S)->tcp_rst_tx, 2);
	/* A listening port, unknown connection, no SYN: RST if ACK. */
	listen80(APP_MANUAL);
	peer_init(&p, 41601, OUR_PORT);
	peer_raw(&p, TH_ACK, 5, 6, NULL, 0);
	peer_raw(&p, TH_FIN, 5, 0, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_RST);
	assert_int_equal(pending(), 0);
	/* TCP to a broadcast address: nothing. */
	{
		uint8_t f[128];
		struct tcp_in in = {.src = PEER_IP,
				    .sport = 5,
				    .dport = 80,
				    .flags = TH_SYN};
		size_t n = build_tcp(f, &in);

		memcpy(f + 30, &(uint32_t){ip4(10, 0, 0, 255)}, 4);
		put16(f + 24, 0);
		put16(f + 24, fold(sum16(f + 14, 20, 0)));
		inject(f, n);
		flush();
		assert_int_equal(pending(), 0);
	}
}

static void test_tcp_rst_window(void **state)
{
	struct gnet_conn *c;
	struct peer p;
	struct pkt t;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41700, OUR_PORT);
	c = handshake(&p, &app80);
	/* Outside the window: ignored, silently. */
	peer_raw(&p, TH_RST, p.nxt + 100000, 0, NULL, 0);
	peer_raw(&p, TH_RST, p.nxt - 1, 0, NULL, 0);
	flush();
	assert_int_equal(pending(), 0);
	/* In the window but not exact: a challenge ACK, no reset. */
	peer_raw(&p, TH_RST, p.nxt + 1000, 0, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.flags, TH_ACK);
	assert_int_equal(t.ack, p.nxt);
	/* A SYN on an established connection: a challenge ACK too. */
	peer_raw(&p, TH_SYN, p.nxt + 5, 0, NULL, 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(app80.closed, 0);
	assert_int_equal(gnet_tcp_send(c, "alive", 5), 5);
	flush();
	peer_recv(&p, &t);
	/* Exactly rcv_nxt: reset. */
	peer_raw(&p, TH_RST, p.nxt, 0, NULL, 0);
	assert_int_equal(app80.closed, 1);
	assert_int_equal(app80.reason, -ECONNRESET);
	assert_int_equal(gnet_stats(&S)->tcp_resets, 1);
	flush();
	assert_int_equal(pending(), 0); /* no RST for a RST */
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
}

static void test_tcp_malformed(void **state)
{
	const struct gnet_stats *st = gnet_stats(&S);
	struct gnet_conn *c;
	struct gnet_stats before;
	uint8_t f[2048];
	struct peer p;
	struct pkt t;
	size_t n;
	char buf[16];

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 41800, OUR_PORT);
	c = handshake(&p, &app80);
	assert_int_equal(gnet_tcp_send(c, "out", 3), 3);
	flush();
	peer_recv(&p, &t);

	/* Broken segments: dropped, counted, no answer. */
	before = *st;
	{
		struct tcp_in in = {.src = PEER_IP,
				    .sport = p.port,
				    .dport = OUR_PORT,
				    .seq = p.nxt,
				    .ack = p.rcv,
				    .flags = TH_ACK,
				    .wnd = 1000,
				    .data = "evil",
				    .len = 4};

		n = build_tcp(f, &in);
		f[n - 1] ^= 1; /* checksum */
		inject(f, n);
		build_tcp(f, &in);
		f[34 + 12] = 4 << 4; /* data offset 4 */
		put16(f + 34 + 16, 0);
		put16(f + 34 + 16, fold(sum16(f + 34, n - 34,
					      pseudo(PEER_IP, OUR_IP, 6,
						     (uint16_t)(n - 34)))));
		inject(f, n);
		f[34 + 12] = 15 << 4; /* data offset past the end */
		put16(f + 34 + 16, 0);
		put16(f + 34 + 16, fold(sum16(f + 34, n - 34,
					      pseudo(PEER_IP, OUR_IP, 6,
						     (uint16_t)(n - 34)))));
		inject(f, n);
		in.flags = TH_SYN | TH_FIN;
		inject(f, build_tcp(f, &in));
		in.flags = TH_ACK;
		in.sport = 0;
		inject(f, build_tcp(f, &in));
	}
	assert_int_equal(st->rx_bad_csum, before.rx_bad_csum + 1);
	assert_int_equal(st->rx_bad_hdr, before.rx_bad_hdr + 3);
	assert_int_equal(st->rx_bad_len, before.rx_bad_len + 1);
	flush();
	assert_int_equal(pending(), 0);

	/* Wild numbers: dropped with an ACK (coalesced per flush). */
	before = *st;
	peer_raw(&p, TH_ACK, p.nxt + 0x80000000u, p.rcv, "w", 1);
	peer_raw(&p, TH_ACK, p.nxt - 70000, p.rcv, "w", 1);
	peer_raw(&p, TH_ACK, p.nxt, p.rcv + 1000000, "w", 1); /* future ack */
	peer_raw(&p, TH_ACK, p.nxt, p.rcv - 200000, "w", 1);  /* ancient */
	assert_int_equal(st->rx_out_of_window, before.rx_out_of_window + 4);
	assert_int_equal(gnet_tcp_readable(c), 0);
	flush();
	peer_recv(&p, &t);
	assert_int_equal(t.ack, p.nxt);
	assert_int_equal(t.seq, p.iss + 4);
	assert_int_equal(pending(), 0);
	/* The connection is unharmed. */
	peer_send(&p, TH_ACK, "fine", 4);
	assert_int_equal(gnet_tcp_read(c, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "fine", 4);
	assert_int_equal(app80.closed, 0);
}

/* ---- TCP: many connections, full pool --------------------------------------
 */

static void test_tcp_many(void **state)
{
	static struct peer peers[250];
	struct pkt t;
	char msg[16];

	(void)state;
	learn_peer();
	listen7();
	for (unsigned int i = 0; i < 250; i++) {
		peer_init(&peers[i], (uint16_t)(20000 + i), ECHO_PORT);
		handshake(&peers[i], &app7);
	}
	assert_int_equal(gnet_stats(&S)->tcp_conns, 250);
	for (unsigned int i = 0; i < 250; i++) {
		snprintf(msg, sizeof(msg), "conn %u", i);
		peer_send(&peers[i], TH_PSH, msg, strlen(msg));
	}
	flush();
	for (unsigned int i = 0; i < 250; i++) {
		snprintf(msg, sizeof(msg), "conn %u", i);
		peer_recv(&peers[i], &t);
		assert_int_equal(t.len, strlen(msg));
		assert_memory_equal(t.data, msg, t.len);
		peers[i].rcv = t.seq + (uint32_t)t.len;
	}
	assert_int_equal(pending(), 0);
	for (unsigned int i = 0; i < 250; i++) {
		peer_send(&peers[i], TH_FIN, NULL, 0);
	}
	flush();
	for (unsigned int i = 0; i < 250; i++) {
		peer_recv(&peers[i], &t);
		assert_true(t.flags & TH_FIN);
		peers[i].rcv = t.seq + 1;
		peer_send(&peers[i], TH_ACK, NULL, 0);
	}
	assert_int_equal(app7.closed, 250);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
}

static void test_tcp_pool_full(void **state)
{
	struct gnet_conn *c[4];
	struct peer p[6];
	struct pkt t;

	(void)state;
	start(4);
	learn_peer();
	listen80(APP_MANUAL);
	for (unsigned int i = 0; i < 4; i++) {
		peer_init(&p[i], (uint16_t)(42000 + i), OUR_PORT);
		c[i] = handshake(&p[i], &app80);
	}
	/* Four live connections: a fifth SYN is dropped (the client will
	 * retry, as with a full accept queue). */
	peer_init(&p[4], 42004, OUR_PORT);
	peer_send(&p[4], TH_SYN, NULL, 0);
	flush();
	assert_int_equal(pending(), 0);
	assert_int_equal(gnet_stats(&S)->rx_pool_full, 1);
	/* A connection that ends frees its slot. */
	gnet_tcp_abort(c[3]);
	advance(0);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 3);
	flush();
	out_pos = n_out;
	peer_init(&p[4], 42005, OUR_PORT);
	handshake(&p[4], &app80);

	/* Half-open connections give way to new SYNs (SYN floods). */
	start(2);
	learn_peer();
	listen80(APP_MANUAL);
	for (unsigned int i = 0; i < 3; i++) {
		peer_init(&p[i], (uint16_t)(43000 + i), OUR_PORT);
		peer_send(&p[i], TH_SYN, NULL, 0);
		flush();
		peer_recv(&p[i], &t);
		p[i].iss = t.seq;
		p[i].rcv = t.seq + 1;
	}
	assert_int_equal(gnet_stats(&S)->tcp_syn_evicted, 1);
	peer_send(&p[2], TH_ACK, NULL, 0);
	assert_int_equal(app80.accepted, 1);

	/* TIME_WAIT slots are reclaimed. */
	start(1);
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p[0], 44000, OUR_PORT);
	handshake(&p[0], &app80);
	gnet_tcp_close(app80.last);
	flush();
	peer_recv(&p[0], &t);
	p[0].rcv = t.seq + 1;
	peer_send(&p[0], TH_FIN, NULL, 0); /* -> TIME_WAIT */
	assert_int_equal(app80.closed, 1);
	flush();
	out_pos = n_out;
	peer_init(&p[1], 44001, OUR_PORT);
	handshake(&p[1], &app80);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 1);
}

static void test_tcp_time_wait_reuse(void **state)
{
	struct peer p;
	struct pkt t;

	uint32_t old_iss;

	(void)state;
	learn_peer();
	listen80(APP_MANUAL);
	peer_init(&p, 45000, OUR_PORT);
	handshake(&p, &app80);
	old_iss = p.iss;
	gnet_tcp_close(app80.last);
	flush();
	peer_recv(&p, &t);
	p.rcv = t.seq + 1;
	peer_send(&p, TH_FIN, NULL, 0);
	flush();
	out_pos = n_out;
	/* The same 4-tuple, a SYN beyond the old sequence space: a new
	 * connection, whose ISS is beyond the old one's too (RFC 6191). */
	p.nxt += 100000;
	handshake(&p, &app80);
	assert_true((int32_t)(p.iss - (old_iss + 2 + 65535)) >= 0);
	assert_int_equal(app80.accepted, 2);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 1);
}

/* A callback may tear its connection down. */
static void abort_on_accept(void *ctx, struct gnet_conn *c)
{
	(void)ctx;
	gnet_tcp_abort(c);
}

static unsigned int closed_calls;

static void count_closed(void *ctx, struct gnet_conn *c, int reason)
{
	(void)ctx;
	(void)c;
	assert_int_equal(reason, -ECONNABORTED);
	closed_calls++;
}

static void test_tcp_callback_abort(void **state)
{
	static const struct gnet_tcp_cb cb = {.accepted = abort_on_accept,
					      .readable = app_readable,
					      .closed = count_closed};
	struct peer p;
	struct pkt t;

	(void)state;
	closed_calls = 0;
	learn_peer();
	assert_int_equal(gnet_tcp_listen(&S, OUR_PORT, &cb, NULL), 0);
	peer_init(&p, 46000, OUR_PORT);
	peer_send(&p, TH_SYN, NULL, 0);
	flush();
	peer_recv(&p, &t);
	p.rcv = t.seq + 1;
	/* Handshake ACK with data: accepted aborts, readable never comes. */
	peer_send(&p, TH_ACK, "data", 4);
	assert_int_equal(closed_calls, 1);
	assert_int_equal(gnet_stats(&S)->tcp_conns, 0);
	flush();
	peer_recv(&p, &t);
	assert_true(t.flags & TH_RST);
}

#define T(f) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, #f)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_init),
		T(test_arp_reply),
		T(test_arp_other_ignored),
		T(test_arp_resolve),
		T(test_arp_hold_bounded),
		T(test_icmp_echo),
		T(test_ip_options_and_padding),
		T(test_ip_malformed),
		T(test_udp),
		T(test_tx_batches),
		T(test_tcp_handshake),
		T(test_tcp_options_garbage),
		T(test_tcp_syn_retransmit),
		T(test_tcp_handshake_bad_ack),
		T(test_tcp_receive),
		T(test_tcp_out_of_order),
		T(test_tcp_moved),
		T(test_tcp_zero_receive_window),
		T(test_tcp_send_window),
		T(test_tcp_retransmit),
		T(test_tcp_rtt),
		T(test_tcp_fast_retransmit),
		T(test_tcp_echo_bulk),
		T(test_tcp_peer_close),
		T(test_tcp_our_close),
		T(test_tcp_simultaneous_close),
		T(test_tcp_fin_wait_2_timeout),
		T(test_tcp_abort),
		T(test_tcp_rst_closed_port),
		T(test_tcp_rst_window),
		T(test_tcp_malformed),
		T(test_tcp_many),
		T(test_tcp_pool_full),
		T(test_tcp_time_wait_reuse),
		T(test_tcp_callback_abort),
	};
	int rc;

	conn_mem = calloc(GNET_MAX_CONNS, GNET_CONN_MEM);
	outq = calloc(MAX_OUT, sizeof(*outq));
	if (!conn_mem || !outq)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	free(conn_mem);
	free(outq);
	return rc;
}
