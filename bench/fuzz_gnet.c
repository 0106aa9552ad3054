// SPDX-License-Identifier: MIT
/*
 * fuzz_gnet.c - arbitrary frames, clock steps and application calls
 * through the guest network stack (guest/net) built for the host.
 *
 * Each input starts from the same stack: the configuration of
 * tests/unit/test_gnet.c (10.0.0.1/24, gateway 10.0.0.254, a pool of
 * POOL connections), UDP echo on port 7, TCP echo on 7, discard on 9 and
 * a "manual" service on 80 that reads only when told to, two peers in
 * the ARP cache and one established connection to each TCP port.  The
 * input is a list of records {op u8, len u16 LE, body[len]} (a short last
 * body is cut); by op % 6:
 *
 *   0  body is a frame, given as it is
 *   1  body is a frame whose IPv4 header and ICMP/UDP/TCP checksums are
 *      fixed first, so that mutations reach what lies behind them
 *   2  body[0] picks a pool slot; if a connection is there, body[1..] (at
 *      least 54 bytes) becomes a well-formed segment of it: Ethernet and
 *      IPv4 headers, addresses and ports are set, checksums fixed; flags,
 *      window, options and payload stay the fuzzer's.  seq and ack are
 *      made relative: with the top bit of the field clear, seq = rcv_nxt +
 *      min(low 16 bits, advertised window) and ack = snd_una + min(low 16
 *      bits, bytes in flight), i.e. plausible; with it set, rcv_nxt or
 *      snd_una + the low 16 bits as a signed offset.  This reaches the
 *      state machine of every connection.
 *   3  body[0..1] LE: advance the clock that many ms, run the timers
 *   4  body[0] = b: an application call on one of the connections it
 *      holds: slot b % POOL, call (b / POOL) % 8 (read all, read one byte,
 *      send one byte, send 3000, send 70000, close, abort, ask
 *      eof/readable/send space)
 *   5  gnet_flush
 * After the last record: flush, then ten minutes of timers in steps.
 *
 * Beyond the sanitizers it aborts when the stack breaks a promise: its
 * invariant checker fails after any step; a frame it sends is out of
 * size or has a bad IPv4, ICMP, UDP or TCP checksum; a callback names a
 * connection the application does not hold, or closed() comes twice.
 *
 * tests/unit/test_gnet writes its inputs in this format when
 * FT_GNET_DUMP_DIR is set: bench/fuzz.sh uses them as seeds.  Two builds,
 * as for fuzz_stream.c: libFuzzer (bench/fuzz.mk, -DFT_LIBFUZZER) and a
 * replay main in the top Makefile's build (build-san/bench/fuzz_gnet FILE).
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest/net/gnet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define POOL 8
#define SEC 1000000000ull
#define MS 1000000ull

static const uint8_t our_mac[6] = {0x02, 0, 0, 0, 0, 0x01};
static const uint8_t peer_mac[2][6] = {{0x02, 0, 0, 0, 0, 0x02},
				       {0x02, 0, 0, 0, 0, 0x03}};

static struct gnet S;
static uint8_t *conn_mem;
static uint64_t now;
static bool verbose;

/* What the fuzzed peer learns from the stack's output: the SYN-ACK ISS. */
static uint32_t last_synack_seq, last_synack_ack;

static void check(bool ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_gnet: %s\n", what);
	abort();
}

static uint32_t ip4(unsigned a, unsigned b, unsigned c, unsigned d)
{
	return htonl(a << 24 | b << 16 | c << 8 | d);
}

/* ---- Checksums (independent of the stack's) ----------------------------- */

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

static uint32_t pseudo(const uint8_t *ip, uint8_t proto, size_t len)
{
	uint8_t ph[12];

	memcpy(ph, ip + 12, 8);
	ph[8] = 0;
	ph[9] = proto;
	ph[10] = (uint8_t)(len >> 8);
	ph[11] = (uint8_t)len;
	return sum16(ph, 12, 0);
}

static void put16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)get16(p) << 16 | get16(p + 2);
}

/* The IPv4 packet in frame f[0..n): its header length and the length of
 * its payload within the frame; false if it is not one. */
static bool ip_parts(const uint8_t *f, size_t n, size_t *ihl, size_t *pay)
{
	size_t tot;

	if (n < 34 || get16(f + 12) != 0x0800 || f[14] >> 4 != 4)
		return false;
	*ihl = (size_t)(f[14] & 15) * 4;
	tot = get16(f + 16);
	if (*ihl < 20 || 14 + *ihl > n || tot < *ihl)
		return false;
	if (tot > n - 14)
		tot = n - 14;
	*pay = tot - *ihl;
	return true;
}

/* Offset of the L4 checksum field for `proto`, or 0 if none fits. */
static size_t csum_field(uint8_t proto, size_t pay)
{
	if (proto == 1 && pay >= 4)
		return 2;
	if (proto == 17 && pay >= 8)
		return 6;
	if (proto == 6 && pay >= 20)
		return 16;
	return 0;
}

static void fix_checksums(uint8_t *f, size_t n)
{
	size_t ihl, pay, at;
	uint8_t *ip = f + 14, *l4;
	uint32_t sum = 0;

	if (!ip_parts(f, n, &ihl, &pay))
		return;
	put16(ip + 10, 0);
	put16(ip + 10, fold(sum16(ip, ihl, 0)));
	l4 = ip + ihl;
	at = csum_field(ip[9], pay);
	if (!at)
		return;
	if (ip[9] == 17) {
		size_t ulen = get16(l4 + 4);

		if (ulen < 8 || ulen > pay)
			return;
		pay = ulen;
	}
	if (ip[9] != 1)
		sum = pseudo(ip, ip[9], pay);
	put16(l4 + at, 0);
	put16(l4 + at, fold(sum16(l4, pay, sum)));
	if (ip[9] == 17 && !get16(l4 + at))
		put16(l4 + at, 0xffff);
}

/* Op 2: make f[0..n) a segment of the connection in pool slot `slot`. */
static void to_conn_segment(uint8_t *f, size_t n, unsigned int slot)
{
	const struct gnet_conn *c = &S.conns[slot % POOL];
	uint8_t *ip = f + 14, *th = f + 34;
	uint32_t seq, ack, dst = S.cfg.ip;
	size_t tot = get16(ip + 2), off = (size_t)(th[12] >> 4) * 4;

	if (!c->state || n < 54)
		return;
	memcpy(f, our_mac, 6);
	memcpy(f + 6, peer_mac[1], 6);
	put16(f + 12, 0x0800);
	if (tot < 40 || tot > n - 14)
		tot = n - 14;
	ip[0] = 0x45;
	put16(ip + 2, (uint32_t)tot);
	put16(ip + 6, 0x4000);
	ip[9] = 6;
	memcpy(ip + 12, &c->rip, 4);
	memcpy(ip + 16, &dst, 4);
	if (off < 20 || off > tot - 20)
		th[12] = (uint8_t)(5 << 4 | (th[12] & 15));
	seq = get16(th + 6);
	ack = get16(th + 10);
	if (th[4] & 0x80)
		seq = (uint32_t)(int16_t)seq;
	else if (seq > c->rcv_adv - c->rcv_nxt)
		seq = c->rcv_adv - c->rcv_nxt;
	if (th[8] & 0x80)
		ack = (uint32_t)(int16_t)ack;
	else if (ack > c->snd_max - c->snd_una)
		ack = c->snd_max - c->snd_una;
	seq += c->rcv_nxt;
	ack += c->snd_una;
	put16(th, c->rport);
	put16(th + 2, c->lport);
	put16(th + 4, seq >> 16);
	put16(th + 6, seq);
	put16(th + 8, ack >> 16);
	put16(th + 10, ack);
}

/* ---- Platform -------------------------------------------------------- */

static int fz_send(void *ctx, const struct gnet_frame *fr, unsigned int n)
{
	(void)ctx;
	check(n >= 1 && n <= GNET_BATCH_MAX, "batch size");
	for (unsigned int i = 0; i < n; i++) {
		const uint8_t *f = fr[i].data;
		size_t len = fr[i].len, ihl, pay, at;
		uint32_t sum = 0;

		check(len >= GNET_FRAME_MIN && len <= GNET_FRAME_MAX,
		      "frame size");
		check(!memcmp(f + 6, our_mac, 6), "source MAC");
		if (!ip_parts(f, len, &ihl, &pay))
			continue;
		check(ihl == 20 && get16(f + 16) + 14u <= len, "IPv4 length");
		check(!fold(sum16(f + 14, 20, 0)), "IPv4 checksum");
		at = csum_field(f[23], pay);
		check(at, "transport header");
		if (f[23] != 1)
			sum = pseudo(f + 14, f[23], pay);
		check(!fold(sum16(f + 34, pay, sum)), "transport checksum");
		if (f[23] == 6 && (f[34 + 13] & 0x12) == 0x12) {
			last_synack_seq = get32(f + 34 + 4);
			last_synack_ack = get32(f + 34 + 8);
		}
	}
	return 0;
}

static uint64_t fz_now(void *ctx)
{
	(void)ctx;
	return now;
}

static const struct gnet_io fz_io = {fz_send, fz_now, NULL};

/* ---- Applications ------------------------------------------------------- */

enum { APP_ECHO, APP_DISCARD, APP_MANUAL };

struct slot {
	bool live;
	int app;
	struct gnet_conn *c;
};

static struct slot slots[POOL];
static uint8_t scratch[70000];

static struct slot *slot_of(struct gnet_conn *c)
{
	struct slot *sl = gnet_conn_user(c);

	check(sl >= slots && sl < slots + POOL && sl->live && sl->c == c,
	      "callback for a connection the application does not hold");
	return sl;
}

static void echo(struct gnet_conn *c)
{
	for (;;) {
		size_t n = gnet_tcp_readable(c), sp = gnet_tcp_send_space(c);

		n = n < sp ? n : sp;
		n = n < 4096 ? n : 4096;
		if (!n)
			break;
		check(gnet_tcp_read(c, scratch, n) == n, "short read");
		check(gnet_tcp_send(c, scratch, n) == n, "short send");
	}
	if (gnet_tcp_eof(c))
		gnet_tcp_close(c);
}

static void cb_accepted(void *ctx, struct gnet_conn *c)
{
	struct slot *sl = slots;

	while (sl < slots + POOL && sl->live)
		sl++;
	check(sl < slots + POOL, "more connections than the pool");
	sl->live = true;
	sl->app = (int)(intptr_t)ctx;
	sl->c = c;
	gnet_conn_set_user(c, sl);
}

static void cb_readable(void *ctx, struct gnet_conn *c)
{
	struct slot *sl = slot_of(c);

	(void)ctx;
	if (sl->app == APP_ECHO) {
		echo(c);
	} else if (sl->app == APP_DISCARD) {
		while (gnet_tcp_read(c, scratch, sizeof(scratch)))
			;
		if (gnet_tcp_eof(c))
			gnet_tcp_close(c);
	}
}

static void cb_writable(void *ctx, struct gnet_conn *c)
{
	struct slot *sl = slot_of(c);

	(void)ctx;
	if (sl->app == APP_ECHO)
		echo(c);
}

static void cb_closed(void *ctx, struct gnet_conn *c, int reason)
{
	struct slot *sl = slot_of(c);

	(void)ctx;
	check(reason == 0 || reason == -ECONNRESET || reason == -ETIMEDOUT ||
		      reason == -ECONNABORTED,
	      "closed reason");
	sl->live = false;
}

static const struct gnet_tcp_cb tcp_cb = {cb_accepted, cb_readable, cb_writable,
					  cb_closed};

static void udp_echo(void *ctx, uint32_t src, uint16_t sport, const void *d,
		     size_t len)
{
	(void)ctx;
	gnet_udp_send(&S, src, sport, 7, d, len);
}

static void app_call(uint8_t b)
{
	struct slot *sl = &slots[b % POOL];
	struct gnet_conn *c = sl->c;

	if (!sl->live)
		return;
	switch (b / POOL % 8) {
	case 0:
		while (gnet_tcp_read(c, scratch, sizeof(scratch)))
			;
		break;
	case 1:
		gnet_tcp_read(c, scratch, 1);
		break;
	case 2:
		gnet_tcp_send(c, "x", 1);
		break;
	case 3:
		gnet_tcp_send(c, scratch, 3000);
		break;
	case 4:
		gnet_tcp_send(c, scratch, sizeof(scratch));
		break;
	case 5:
		gnet_tcp_close(c);
		break;
	case 6:
		gnet_tcp_abort(c);
		break;
	default:
		check(gnet_tcp_readable(c) <= GNET_RXBUF &&
			      gnet_tcp_send_space(c) <= GNET_TXBUF,
		      "buffer accessors");
		(void)gnet_tcp_eof(c);
		break;
	}
}

/* ---- Driving ------------------------------------------------------------- */

static void step_check(void)
{
	check(!gnet_check(&S), "invariant checker");
}

static void input(const uint8_t *f, size_t n)
{
	gnet_input(&S, f, n);
	step_check();
}

static size_t eth_ip(uint8_t *f, int peer, uint8_t proto, size_t l4len)
{
	uint8_t *ip = f + 14;
	uint32_t src = ip4(10, 0, 0, 2 + peer), dst = ip4(10, 0, 0, 1);

	memcpy(f, our_mac, 6);
	memcpy(f + 6, peer_mac[peer], 6);
	put16(f + 12, 0x0800);
	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, (uint32_t)(20 + l4len));
	put16(ip + 4, 0);
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = proto;
	memcpy(ip + 12, &src, 4);
	memcpy(ip + 16, &dst, 4);
	fix_checksums(f, 34 + l4len);
	return 34 + l4len;
}

static void tcp_seg(int peer, uint16_t sport, uint16_t dport, uint32_t seq,
		    uint32_t ack, uint8_t flags)
{
	uint8_t f[64] = {0};
	uint8_t *th = f + 34;

	put16(th, sport);
	put16(th + 2, dport);
	put16(th + 4, seq >> 16);
	put16(th + 6, seq);
	put16(th + 8, ack >> 16);
	put16(th + 10, ack);
	th[12] = 5 << 4;
	th[13] = flags;
	put16(th + 14, 65535);
	input(f, eth_ip(f, peer, 6, 20));
}

/* The starting state described at the top. */
static void setup(void)
{
	static const uint16_t ports[] = {7, 9, 80};
	struct gnet_cfg cfg = {
		.mac = {0x02, 0, 0, 0, 0, 0x01},
		.mtu = 1500,
		.ip = ip4(10, 0, 0, 1),
		.netmask = ip4(255, 255, 255, 0),
		.gw = ip4(10, 0, 0, 254),
		.max_conns = POOL,
	};

	if (!conn_mem) {
		conn_mem = calloc(POOL, GNET_CONN_MEM);
		check(conn_mem, "out of memory");
	}
	cfg.conn_mem = conn_mem;
	memset(slots, 0, sizeof(slots));
	now = SEC;
	check(!gnet_init(&S, &cfg, &fz_io), "gnet_init");
	check(!gnet_udp_bind(&S, 7, udp_echo, NULL) &&
		      !gnet_tcp_listen(&S, 7, &tcp_cb, (void *)APP_ECHO) &&
		      !gnet_tcp_listen(&S, 9, &tcp_cb, (void *)APP_DISCARD) &&
		      !gnet_tcp_listen(&S, 80, &tcp_cb, (void *)APP_MANUAL),
	      "services");
	for (int peer = 0; peer < 2; peer++) {
		uint8_t f[64] = {0};
		uint8_t *a = f + 14;
		uint32_t spa = ip4(10, 0, 0, 2 + peer), tpa = ip4(10, 0, 0, 1);

		memset(f, 0xff, 6);
		memcpy(f + 6, peer_mac[peer], 6);
		put16(f + 12, 0x0806);
		put16(a, 1);
		put16(a + 2, 0x0800);
		a[4] = 6;
		a[5] = 4;
		put16(a + 6, 1);
		memcpy(a + 8, peer_mac[peer], 6);
		memcpy(a + 14, &spa, 4);
		memcpy(a + 24, &tpa, 4);
		input(f, 42);
	}
	/* From 10.0.0.3, so as not to meet the unit tests' 10.0.0.2. */
	for (unsigned int i = 0; i < 3; i++) {
		uint16_t sport = (uint16_t)(1000 + i);
		uint32_t seq = 5000 + i * 100000;

		tcp_seg(1, sport, ports[i], seq, 0, 0x02);
		check(!gnet_flush(&S), "flush");
		tcp_seg(1, sport, ports[i], seq + 1, last_synack_seq + 1, 0x10);
		check(last_synack_ack == seq + 1, "set-up handshake");
	}
	check(slots[2].live, "set-up connections");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t f[65536];
	size_t at = 0;

	setup();
	while (size - at >= 3) {
		uint8_t op = data[at] % 6;
		size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;

		at += 3;
		if (len > size - at)
			len = size - at;
		memcpy(f, data + at, len);
		at += len;
		switch (op) {
		case 2:
			if (len) {
				to_conn_segment(f + 1, len - 1, f[0]);
				fix_checksums(f + 1, len - 1);
				input(f + 1, len - 1);
			}
			break;
		case 1:
			fix_checksums(f, len);
			/* fall through */
		case 0:
			input(f, len);
			break;
		case 3:
			if (len >= 2)
				now += (uint64_t)(f[0] | f[1] << 8) * MS;
			gnet_timers(&S);
			step_check();
			break;
		case 4:
			if (len)
				app_call(f[0]);
			step_check();
			break;
		case 5:
			check(!gnet_flush(&S), "flush");
			step_check();
			break;
		}
		if (verbose)
			fprintf(stderr,
				"op %u len %zu: conns %lu accepted %lu oow "
				"%lu\n",
				op, len,
				(unsigned long)gnet_stats(&S)->tcp_conns,
				(unsigned long)gnet_stats(&S)->tcp_accepted,
				(unsigned long)gnet_stats(&S)
					->rx_out_of_window);
	}
	check(!gnet_flush(&S), "flush");
	for (int i = 0; i < 60; i++) {
		now += 10 * SEC;
		gnet_timers(&S);
		step_check();
		check(!gnet_flush(&S), "flush");
	}
	return 0;
}

#ifndef FT_LIBFUZZER
/* ---- Crafted seeds (fuzz_gnet -s DIR) ------------------------------------ */

static uint8_t seed[8192];
static size_t seed_len;

static void rec(uint8_t op, const void *body, size_t len)
{
	seed[seed_len++] = op;
	seed[seed_len++] = (uint8_t)len;
	seed[seed_len++] = (uint8_t)(len >> 8);
	memcpy(seed + seed_len, body, len);
	seed_len += len;
}

static void rec_app(unsigned int slot, unsigned int call)
{
	uint8_t b = (uint8_t)(slot + POOL * call);

	rec(4, &b, 1);
}

static void rec_flush(void)
{
	rec(5, NULL, 0);
}

static void rec_time(unsigned int ms)
{
	uint8_t b[2] = {(uint8_t)ms, (uint8_t)(ms >> 8)};

	rec(3, b, 2);
}

/* An op-2 segment for pool slot `slot`: plausible seq/ack offsets. */
static void rec_seg(unsigned int slot, uint8_t flags, uint16_t seq,
		    uint16_t ack, uint16_t wnd, size_t len)
{
	uint8_t b[1 + 54 + 1460] = {0};
	uint8_t *th = b + 1 + 34;

	b[0] = (uint8_t)slot;
	put16(th + 6, seq);
	put16(th + 10, ack);
	th[12] = 5 << 4;
	th[13] = flags;
	put16(th + 14, wnd);
	memset(th + 20, 'd', len);
	rec(2, b, 1 + 54 + len);
}

/* An op-1 record: a SYN from 10.0.0.2:`port` to port 80. */
static void rec_syn(uint16_t port)
{
	uint8_t f[54] = {0};
	uint8_t *th = f + 34;
	uint32_t src = ip4(10, 0, 0, 2), dst = ip4(10, 0, 0, 1);

	memcpy(f, our_mac, 6);
	memcpy(f + 6, peer_mac[0], 6);
	put16(f + 12, 0x0800);
	f[14] = 0x45;
	put16(f + 16, 40);
	f[23] = 6;
	memcpy(f + 26, &src, 4);
	memcpy(f + 30, &dst, 4);
	put16(th, port);
	put16(th + 2, 80);
	th[12] = 5 << 4;
	th[13] = 0x02;
	put16(th + 14, 65535);
	rec(1, f, sizeof(f));
}

static void seed_write(const char *dir, const char *name)
{
	char path[512];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/crafted-%s", dir, name);
	fp = fopen(path, "wb");
	if (!fp || fwrite(seed, 1, seed_len, fp) != seed_len || fclose(fp)) {
		perror(path);
		exit(2);
	}
	seed_len = 0;
}

enum { C_READ, C_READ1, C_SEND1, C_SEND3000, C_SEND70000, C_CLOSE, C_ABORT };
#define ACK 0x10
#define ALL 0xffff /* ack everything in flight */

static void write_seeds(const char *dir)
{
	/* Data both ways, partial and full ACKs, the peer closes. */
	for (unsigned int i = 0; i < 3; i++) {
		rec_app(i, C_SEND3000);
		rec_flush();
		rec_seg(i, ACK, 0, 1000, 65535, 0);
		rec_seg(i, ACK | 0x08, 0, ALL, 65535, 1000);
		rec_flush();
		rec_seg(i, ACK | 0x01, 0, ALL, 65535, 0);
		rec_flush();
		rec_time(300);
	}
	seed_write(dir, "data");
	/* Three duplicate ACKs, then partial ACKs: fast retransmit. */
	rec_app(2, C_SEND70000);
	rec_flush();
	for (int i = 0; i < 3; i++)
		rec_seg(2, ACK, 0, 0, 65535, 0);
	rec_flush();
	rec_seg(2, ACK, 0, 1460, 65535, 0);
	rec_seg(2, ACK, 0, 2920, 65535, 0);
	rec_flush();
	rec_seg(2, ACK, 0, ALL, 65535, 0);
	rec_flush();
	seed_write(dir, "fastrexmit");
	/* Our close, the peer's ACK and FIN: TIME_WAIT, and a SYN reusing it.
	 */
	rec_app(2, C_CLOSE);
	rec_flush();
	rec_seg(2, ACK, 0, ALL, 65535, 0);
	rec_seg(2, ACK | 0x01, 0, ALL, 65535, 0);
	rec_flush();
	rec_seg(2, 0x02, 0x8000 | 100, 0, 65535, 0);
	rec_flush();
	rec_time(2000);
	rec_time(60000);
	seed_write(dir, "close");
	/* Zero window: probes, then the window opens. */
	rec_app(2, C_SEND70000);
	rec_flush();
	rec_seg(2, ACK, 0, 2000, 0, 0);
	for (int i = 0; i < 6; i++) {
		rec_time(1000);
		rec_flush();
		rec_seg(2, ACK, 0, 0, 0, 0);
	}
	rec_seg(2, ACK, 0, 0, 8000, 0);
	rec_flush();
	rec_time(200);
	rec_time(60000);
	seed_write(dir, "zerowindow");
	/* RSTs: in the window, exact. */
	rec_seg(0, 0x04, 100, 0, 0, 0);
	rec_flush();
	rec_seg(0, 0x04, 0, 0, 0, 0);
	rec_app(1, C_ABORT);
	rec_time(0);
	seed_write(dir, "rst");
	/* SYNs from new ports until the pool is full, and an ACK for one. */
	for (unsigned int i = 0; i < POOL + 2; i++) {
		rec_syn((uint16_t)(2000 + i));
		rec_flush();
	}
	rec_seg(5, ACK, 0, ALL, 65535, 0);
	rec_time(1000);
	seed_write(dir, "poolfull");
}

/* Replay: run each file named on the command line; -v traces each step;
 * -s DIR writes the crafted seeds to DIR instead. */
#include "fuzz_replay.h"

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-v")) {
			verbose = true;
			continue;
		}
		if (!strcmp(argv[i], "-s") && i + 1 < argc) {
			write_seeds(argv[++i]);
			continue;
		}
		if (fuzz_replay_file(argv[i]))
			return 2;
	}
	return 0;
}
#endif
