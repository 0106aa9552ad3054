// SPDX-License-Identifier: MIT
/*
 * gnet_tcp.c - the server side of TCP (RFC 793/9293): passive open,
 * in-order receive, sending within the peer's window and a congestion
 * window, retransmission, both closes, RST, and the RFC 5961 checks.
 *
 * Shape of the code: tcp_input validates a segment and finds its
 * connection; tcp_segment runs RFC 793's "SEGMENT ARRIVES" steps
 * (acceptability, RST, SYN, ACK, data, FIN); tcp_output sends whatever is
 * due and is run for every marked connection by gnet_flush, so data the
 * application queues and the ACKs of a whole batch of input leave in as
 * few segments as possible.  Events for the application are marked on the
 * connection and delivered by gnet_tcp_dispatch once a frame or the
 * timers are fully processed, so callbacks never see a half-updated
 * connection and may do anything to it.
 *
 * Not implemented (see docs/networking.md): active open, window scaling,
 * timestamps, SACK, urgent data (URG is ignored, the bytes are data),
 * keepalive, reassembly of out-of-order segments (they are dropped and
 * answered with a duplicate ACK so the peer retransmits).
 */
#include "gnet_priv.h"

#define TCP_HLEN 20
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_FLAGS 0x3f /* ECE and CWR are ignored: no ECN */

#define TCP_MSS_DEFAULT 536 /* RFC 9293 3.7.1: without the option */
#define TCP_MSS_MIN 64	    /* a peer's smaller MSS is raised to this */
#define TCP_WIN_MAX 65535   /* no window scaling */
#define TCP_CWND_MAX (2 * TCP_WIN_MAX)
#define RTO_INIT_US 1000000u /* RFC 6298 2.1 */
#define RTO_MIN_US 200000u
#define RTO_MAX_US 60000000u
#define TCP_SYN_RETRIES 5 /* SYN-ACKs sent again before giving up */
#define TCP_RETRIES 8	  /* timeouts (or unanswered probes) in a row */
#define TCP_TIME_WAIT (1 * NSEC_PER_SEC) /* 2MSL, short: we are a server */
#define TCP_FIN_WAIT_2 (60 * NSEC_PER_SEC)

#define NIL 0xffff

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((a) - (b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((a) - (b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((a) - (b)) >= 0)

enum tcp_state {
	TS_FREE,
	TS_SYN_RCVD,
	TS_ESTABLISHED,
	TS_CLOSE_WAIT,
	TS_LAST_ACK,
	TS_FIN_WAIT_1,
	TS_FIN_WAIT_2,
	TS_CLOSING,
	TS_TIME_WAIT,
	TS_DEAD, /* over; freed once the application has heard */
};

/* Connection flags. */
#define TF_ACKNOW 0x001	    /* send an ACK at the next output */
#define TF_FIN_QUEUED 0x002 /* the application closed: FIN after data */
#define TF_FIN_RCVD 0x004   /* the peer's FIN is in */
#define TF_APP 0x008	    /* the application holds the handle */
#define TF_RTT 0x010	    /* timing the segment at rtt_seq */
#define TF_RECOVERY 0x020   /* fast recovery until `recover` */
#define TF_FORCE 0x040	    /* persist: send despite SWS avoidance */
#define TF_HASHED 0x080	    /* in the 4-tuple hash */
#define TF_ALIVE 0x100	    /* an ACK came since the last probe */

/* Events for the application. */
#define TEV_ACCEPTED 0x1
#define TEV_READABLE 0x2
#define TEV_WRITABLE 0x4
#define TEV_CLOSED 0x8

/* The one timer of a connection; its deadline is in gnet.deadline[]. */
enum { TT_NONE, TT_REXMIT, TT_PERSIST, TT_FIN_WAIT_2, TT_TIME_WAIT };

/* A received segment, decoded. */
struct seg {
	uint32_t src;
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd;
	uint16_t mss; /* the MSS option of a SYN; 0: none */
	const uint8_t *data;
	uint32_t len;
};

/* ---- Bitmaps of connections ------------------------------------------- */

static void map_set(uint32_t *m, unsigned int i)
{
	m[i / 32] |= 1u << (i % 32);
}

static void map_clear(uint32_t *m, unsigned int i)
{
	m[i / 32] &= ~(1u << (i % 32));
}

static bool map_test(const uint32_t *m, unsigned int i)
{
	return m[i / 32] >> (i % 32) & 1;
}

static int map_first(const uint32_t *m)
{
	for (unsigned int w = 0; w < GNET_MAX_CONNS / 32; w++)
		if (m[w])
			return (int)(w * 32 + (unsigned int)gnet_ctz(m[w]));
	return -1;
}

/* ---- Rings ------------------------------------------------------------ */

static void ring_put(uint8_t *ring, uint32_t size, uint32_t pos,
		     const uint8_t *src, uint32_t n)
{
	uint32_t at = pos & (size - 1), first = min32(n, size - at);

	gnet_memcpy(ring + at, src, first);
	gnet_memcpy(ring, src + first, n - first);
}

static void ring_get(const uint8_t *ring, uint32_t size, uint32_t pos,
		     uint8_t *dst, uint32_t n)
{
	uint32_t at = pos & (size - 1), first = min32(n, size - at);

	gnet_memcpy(dst, ring + at, first);
	gnet_memcpy(dst + first, ring, n - first);
}

/* ---- Pool, hash, events, timers --------------------------------------- */

static unsigned int tcp_hash(const struct gnet *s, uint32_t rip, uint16_t rport,
			     uint16_t lport)
{
	uint64_t key = (uint64_t)rip << 32 | (uint32_t)rport << 16 | lport;

	return (unsigned int)gnet_mix64(s->secret ^ key) & (GNET_TCP_HASH - 1);
}

static struct gnet_conn *tcp_lookup(struct gnet *s, uint32_t rip,
				    uint16_t rport, uint16_t lport)
{
	uint16_t i = s->hash[tcp_hash(s, rip, rport, lport)];

	while (i != NIL) {
		struct gnet_conn *c = &s->conns[i];

		if (c->rip == rip && c->rport == rport && c->lport == lport)
			return c;
		i = c->hnext;
	}
	return NULL;
}

static void tcp_hash_insert(struct gnet_conn *c)
{
	struct gnet *s = c->s;
	uint16_t *head = &s->hash[tcp_hash(s, c->rip, c->rport, c->lport)];

	c->hnext = *head;
	*head = c->idx;
	c->flags |= TF_HASHED;
}

static void tcp_hash_remove(struct gnet_conn *c)
{
	struct gnet *s = c->s;
	uint16_t *p = &s->hash[tcp_hash(s, c->rip, c->rport, c->lport)];

	while (*p != c->idx)
		p = &s->conns[*p].hnext;
	*p = c->hnext;
	c->hnext = NIL;
	c->flags &= ~TF_HASHED;
}

static void tcp_event(struct gnet_conn *c, uint8_t ev)
{
	c->ev |= ev;
	map_set(c->s->ev_map, c->idx);
}

/* Have gnet_flush run tcp_output for `c`. */
static void tcp_mark_output(struct gnet_conn *c)
{
	map_set(c->s->out_map, c->idx);
}

static void tcp_ack_later(struct gnet_conn *c)
{
	c->flags |= TF_ACKNOW;
	tcp_mark_output(c);
}

static void tcp_set_timer(struct gnet_conn *c, uint8_t kind, uint64_t when)
{
	c->timer = kind;
	c->s->deadline[c->idx] = kind == TT_NONE ? UINT64_MAX : when;
}

static void tcp_free(struct gnet_conn *c)
{
	struct gnet *s = c->s;

	if (c->flags & TF_HASHED)
		tcp_hash_remove(c);
	map_clear(s->ev_map, c->idx);
	map_clear(s->out_map, c->idx);
	tcp_set_timer(c, TT_NONE, 0);
	c->state = TS_FREE;
	c->flags = 0;
	c->ev = 0;
	c->hnext = s->free_conn;
	s->free_conn = c->idx;
	s->stats.tcp_conns--;
}

/* The connection is over: unreachable for segments at once, freed once
 * the application has had closed(reason) (at once if it never saw it). */
static void tcp_dead(struct gnet_conn *c, int reason)
{
	if (c->flags & TF_HASHED)
		tcp_hash_remove(c);
	map_clear(c->s->out_map, c->idx);
	tcp_set_timer(c, TT_NONE, 0);
	c->state = TS_DEAD;
	c->reason = (int16_t)reason;
	tcp_event(c, TEV_CLOSED);
}

/* Both sides are closed: closed(0) now, the slot lingers for 2MSL to ACK
 * a retransmitted FIN. */
static void tcp_time_wait(struct gnet_conn *c)
{
	c->state = TS_TIME_WAIT;
	c->reason = 0;
	tcp_set_timer(c, TT_TIME_WAIT, gnet_now(c->s) + TCP_TIME_WAIT);
	tcp_event(c, TEV_CLOSED);
}

/*
 * A slot for a new connection: a free one, else one reclaimed from a
 * TIME_WAIT connection the application is done with, else from the
 * half-open connection that has waited longest (a SYN flood must not lock
 * out real clients for the handshake timeout).  NULL if the pool holds
 * only live connections.
 */
static struct gnet_conn *tcp_alloc(struct gnet *s)
{
	struct gnet_conn *c, *victim = NULL;

	if (s->free_conn == NIL) {
		for (unsigned int i = 0; i < s->cfg.max_conns; i++) {
			c = &s->conns[i];
			if (c->state == TS_TIME_WAIT && !(c->flags & TF_APP)) {
				victim = c;
				break;
			}
			if (c->state == TS_SYN_RCVD &&
			    (!victim || c->retries > victim->retries))
				victim = c;
		}
		if (!victim)
			return NULL;
		if (victim->state == TS_SYN_RCVD)
			s->stats.tcp_syn_evicted++;
		tcp_free(victim);
	}
	c = &s->conns[s->free_conn];
	s->free_conn = c->hnext;
	s->stats.tcp_conns++;
	return c;
}

/* ---- Output ----------------------------------------------------------- */

static void tcp_header(uint8_t *th, uint16_t sport, uint16_t dport,
		       uint32_t seq, uint32_t ack, size_t hlen, uint8_t flags,
		       uint16_t wnd)
{
	wr16(th, sport);
	wr16(th + 2, dport);
	wr32(th + 4, seq);
	wr32(th + 8, ack);
	th[12] = (uint8_t)(hlen / 4 << 4);
	th[13] = flags;
	wr16(th + 14, wnd);
	wr16(th + 16, 0);
	wr16(th + 18, 0);
}

/* Checksum the segment of `len` bytes at L4_OFF of `f` and send it. */
static void tcp_send_frame(struct gnet *s, uint8_t *f, uint32_t dst, size_t len)
{
	uint8_t *th = f + L4_OFF;
	uint32_t sum =
		gnet_csum_pseudo(s->cfg.ip, dst, IP_PROTO_TCP, (uint16_t)len);

	wr16(th + 16, gnet_csum_fold(gnet_csum_add(sum, th, len)));
	s->stats.tcp_tx_segs++;
	gnet_ip_send(s, f, dst, IP_PROTO_TCP, len);
}

/* RFC 793's reset for a segment that has no connection. */
static void tcp_rst(struct gnet *s, const struct seg *t)
{
	uint8_t *f = gnet_tx_begin(s);
	uint32_t seq = 0, ack = 0;
	uint8_t flags = TH_RST;

	if (t->flags & TH_ACK) {
		seq = t->ack;
	} else {
		ack = t->seq + t->len + !!(t->flags & TH_SYN) +
		      !!(t->flags & TH_FIN);
		flags |= TH_ACK;
	}
	tcp_header(f + L4_OFF, t->dport, t->sport, seq, ack, TCP_HLEN, flags,
		   0);
	s->stats.tcp_rst_tx++;
	tcp_send_frame(s, f, t->src, TCP_HLEN);
}

/* Room in the receive ring, at most the largest window: the ring never
 * holds more than we advertised. */
static uint32_t tcp_rcv_space(const struct gnet_conn *c)
{
	return min32(GNET_RXBUF - 1 - c->rx_len, TCP_WIN_MAX);
}

/* What we have advertised and not yet received. */
static uint32_t tcp_rcv_adv(const struct gnet_conn *c)
{
	return SEQ_GT(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
}

/* The window for an outgoing segment.  The right edge never moves back,
 * and moves forward only by min(RXBUF / 2, MSS) or more (RFC 1122
 * 4.2.3.3: no silly windows). */
static uint16_t tcp_rcv_wnd(struct gnet_conn *c)
{
	uint32_t space = tcp_rcv_space(c), adv = tcp_rcv_adv(c);

	if (space < adv + min32(GNET_RXBUF / 2, c->mss))
		space = adv;
	c->rcv_adv = c->rcv_nxt + space;
	return (uint16_t)space;
}

/* Send one segment of connection `c`: `len` bytes of its send buffer from
 * `seq` on, with `flags`.  Every segment but a RST carries an ACK. */
static void tcp_xmit(struct gnet_conn *c, uint32_t seq, uint32_t len,
		     uint8_t flags)
{
	struct gnet *s = c->s;
	uint8_t *f = gnet_tx_begin(s);
	uint8_t *th = f + L4_OFF;
	size_t hlen = TCP_HLEN + (flags & TH_SYN ? 4 : 0);

	tcp_header(th, c->lport, c->rport, seq, flags & TH_ACK ? c->rcv_nxt : 0,
		   hlen, flags, flags & TH_RST ? 0 : tcp_rcv_wnd(c));
	if (flags & TH_SYN) {
		th[20] = 2; /* MSS */
		th[21] = 4;
		wr16(th + 22, (uint16_t)(s->cfg.mtu - IP_HLEN - TCP_HLEN));
	}
	if (len)
		ring_get(c->txbuf, GNET_TXBUF, c->tx_head + (seq - c->snd_una),
			 th + hlen, len);
	if (flags & TH_ACK)
		c->flags &= ~TF_ACKNOW;
	if (flags & TH_RST)
		s->stats.tcp_rst_tx++;
	if ((len || (flags & (TH_SYN | TH_FIN))) && SEQ_LT(seq, c->snd_max))
		s->stats.tcp_retransmits++;
	tcp_send_frame(s, f, c->rip, hlen + len);
}

/* Bytes of the send buffer not sent yet. */
static uint32_t tcp_unsent(const struct gnet_conn *c)
{
	uint32_t off = c->snd_nxt - c->snd_una;

	return off < c->tx_len ? c->tx_len - off : 0;
}

/* Send the next segment that is due, if any; true if another may be. */
static bool tcp_output_one(struct gnet_conn *c)
{
	uint32_t off, avail, win, usable, len;
	uint8_t flags = TH_ACK;
	bool fin;

	switch (c->state) {
	case TS_SYN_RCVD:
		if (c->snd_nxt == c->iss) {
			if (c->snd_max == c->iss) {
				c->flags |= TF_RTT;
				c->rtt_seq = c->iss;
				c->rtt_start = gnet_now(c->s);
			}
			tcp_xmit(c, c->iss, 0, TH_SYN | TH_ACK);
			c->snd_nxt = c->snd_max = c->iss + 1;
		} else if (c->flags & TF_ACKNOW) {
			tcp_xmit(c, c->snd_nxt, 0, TH_ACK);
		}
		return false;
	case TS_TIME_WAIT:
		if (c->flags & TF_ACKNOW)
			tcp_xmit(c, c->snd_nxt, 0, TH_ACK);
		return false;
	case TS_FREE:
	case TS_DEAD:
		return false;
	}
	off = c->snd_nxt - c->snd_una;
	avail = tcp_unsent(c);
	win = min32(c->snd_wnd, c->cwnd);
	usable = win > off ? win - off : 0;
	len = min32(min32(avail, usable), c->mss);
	/* Sender SWS avoidance: a window-limited runt waits for the window
	 * to open, unless the persist timer forces it out. */
	if (len < avail && len < c->mss && len < c->max_sndwnd / 2 &&
	    !(c->flags & TF_FORCE))
		len = 0;
	/* The FIN follows the last byte, whatever the window. */
	fin = (c->flags & TF_FIN_QUEUED) && len == avail && off <= c->tx_len;
	if (!len && !fin) {
		if (c->flags & TF_ACKNOW)
			tcp_xmit(c, c->snd_nxt, 0, TH_ACK);
		return false;
	}
	if (len && off + len == c->tx_len)
		flags |= TH_PSH;
	if (fin)
		flags |= TH_FIN;
	if (!(c->flags & TF_RTT) && c->snd_nxt == c->snd_max) {
		c->flags |= TF_RTT;
		c->rtt_seq = c->snd_nxt;
		c->rtt_start = gnet_now(c->s);
	}
	tcp_xmit(c, c->snd_nxt, len, flags);
	c->snd_nxt += len + fin;
	if (SEQ_GT(c->snd_nxt, c->snd_max))
		c->snd_max = c->snd_nxt;
	return true;
}

static void tcp_output(struct gnet_conn *c)
{
	while (tcp_output_one(c))
		;
	c->flags &= ~TF_FORCE;
}

/*
 * Arm the timer the connection's state calls for: retransmission while
 * anything is in flight, persist while data waits for a window, the
 * FIN_WAIT_2 limit, or none.  An armed timer of the right kind keeps its
 * deadline unless `restart`.
 */
static void tcp_arm(struct gnet_conn *c, bool restart)
{
	uint64_t after;
	uint8_t want;

	if (c->state == TS_TIME_WAIT || c->state == TS_DEAD ||
	    c->state == TS_FREE)
		return;
	if (c->state == TS_SYN_RCVD || c->snd_nxt != c->snd_una)
		want = TT_REXMIT;
	else if (tcp_unsent(c))
		want = TT_PERSIST;
	else if (c->state == TS_FIN_WAIT_2)
		want = TT_FIN_WAIT_2;
	else
		want = TT_NONE;
	if (want == c->timer && !restart)
		return;
	if (want != c->timer && (want == TT_PERSIST || c->timer == TT_PERSIST))
		c->retries = c->probes = 0;
	switch (want) {
	case TT_REXMIT:
		after = (uint64_t)c->rto_us * NSEC_PER_USEC;
		break;
	case TT_PERSIST:
		after = min64((uint64_t)max32(c->rto_us, RTO_MIN_US)
				      << c->retries,
			      RTO_MAX_US) *
			NSEC_PER_USEC;
		break;
	case TT_FIN_WAIT_2:
		after = TCP_FIN_WAIT_2;
		break;
	default:
		tcp_set_timer(c, TT_NONE, 0);
		return;
	}
	tcp_set_timer(c, want, gnet_now(c->s) + after);
}

void gnet_tcp_output_all(struct gnet *s)
{
	int i;

	while ((i = map_first(s->out_map)) >= 0) {
		map_clear(s->out_map, (unsigned int)i);
		tcp_output(&s->conns[i]);
		tcp_arm(&s->conns[i], false);
	}
}

/* ---- Input ------------------------------------------------------------ */

/* The MSS option of a SYN, or 0.  Malformed options end the parse. */
static uint16_t tcp_parse_mss(const uint8_t *o, size_t n)
{
	while (n && o[0] != 0) {
		if (o[0] == 1) {
			o++;
			n--;
			continue;
		}
		if (n < 2 || o[1] < 2 || o[1] > n)
			break;
		if (o[0] == 2 && o[1] == 4)
			return rd16(o + 2);
		n -= o[1];
		o += o[1];
	}
	return 0;
}

static uint32_t tcp_iss(const struct gnet *s, const struct seg *t, uint64_t now)
{
	uint64_t key =
		(uint64_t)t->src << 32 | (uint32_t)t->sport << 16 | t->dport;

	/* RFC 6528: a keyed hash of the 4-tuple plus a 4 us clock. */
	return (uint32_t)gnet_mix64(gnet_mix64(s->secret + 1) ^ key) +
	       (uint32_t)(now / (4 * NSEC_PER_USEC));
}

/* A new connection for SYN `t` on listener `listener`; its ISS is at least
 * *iss_min if that is given. */
static void tcp_passive_open(struct gnet *s, unsigned int listener,
			     const struct seg *t, const uint32_t *iss_min)
{
	uint32_t mss_max = s->cfg.mtu - IP_HLEN - TCP_HLEN;
	struct gnet_conn *c = tcp_alloc(s);
	uint8_t *rxbuf, *txbuf;
	uint64_t now;
	uint16_t idx;

	if (!c) {
		s->stats.rx_pool_full++;
		return;
	}
	now = gnet_now(s);
	idx = c->idx;
	rxbuf = c->rxbuf;
	txbuf = c->txbuf;
	gnet_memset(c, 0, sizeof(*c));
	c->s = s;
	c->idx = idx;
	c->rxbuf = rxbuf;
	c->txbuf = txbuf;
	c->rip = t->src;
	c->rport = t->sport;
	c->lport = t->dport;
	c->listener = (uint8_t)listener;
	c->state = TS_SYN_RCVD;
	c->mss = (uint16_t)min32(
		max32(t->mss ? t->mss : TCP_MSS_DEFAULT, TCP_MSS_MIN), mss_max);
	c->iss = tcp_iss(s, t, now);
	if (iss_min && SEQ_LT(c->iss, *iss_min))
		c->iss = *iss_min;
	c->snd_una = c->snd_nxt = c->snd_max = c->iss;
	c->snd_wnd = c->max_sndwnd = t->wnd;
	c->snd_wl1 = t->seq;
	c->snd_wl2 = c->iss;
	/* RFC 6928's initial window; no slow-start threshold until a loss. */
	c->cwnd = min32(10 * c->mss, max32(2 * c->mss, 14600));
	c->ssthresh = TCP_CWND_MAX;
	c->rcv_nxt = c->rcv_adv = t->seq + 1;
	c->rto_us = RTO_INIT_US;
	tcp_hash_insert(c);
	tcp_output(c);
	tcp_arm(c, false);
}

/* A segment that matches no connection (see tcp_passive_open for
 * iss_min). */
static void tcp_no_conn(struct gnet *s, const struct seg *t,
			const uint32_t *iss_min)
{
	unsigned int l;

	if (t->flags & TH_RST) {
		s->stats.rx_no_listener++;
		return;
	}
	for (l = 0; l < GNET_MAX_LISTEN; l++)
		if (s->listen[l].port && s->listen[l].port == t->dport)
			break;
	if (l == GNET_MAX_LISTEN || (t->flags & TH_ACK)) {
		s->stats.rx_no_listener++;
		tcp_rst(s, t);
		return;
	}
	if (!(t->flags & TH_SYN)) {
		s->stats.rx_no_listener++;
		return;
	}
	tcp_passive_open(s, l, t, iss_min);
}

/* Does the segment overlap the receive window (RFC 793's acceptability
 * test; a zero window accepts only a segment at rcv_nxt, whose text is
 * then cut, so that its ACK and RST are seen)? */
static bool tcp_acceptable(const struct gnet_conn *c, const struct seg *t,
			   uint32_t wnd)
{
	int64_t lo = (int32_t)(t->seq - c->rcv_nxt);
	int64_t seglen =
		(int64_t)t->len + !!(t->flags & TH_SYN) + !!(t->flags & TH_FIN);

	if (wnd == 0)
		return lo == 0;
	if (seglen == 0)
		return lo >= 0 && lo < wnd;
	return lo < wnd && lo + seglen - 1 >= 0;
}

/* Cut what lies before rcv_nxt (already received) and beyond the window
 * from an acceptable segment. */
static void tcp_trim(struct gnet_conn *c, struct seg *t, uint32_t wnd)
{
	int32_t front = (int32_t)(c->rcv_nxt - t->seq);
	int64_t excess;

	if (front > 0) {
		if (t->flags & TH_SYN) {
			t->flags &= ~TH_SYN;
			t->seq++;
			front--;
		}
		t->data += front;
		t->len -= (uint32_t)front;
		t->seq += (uint32_t)front;
		c->flags |= TF_ACKNOW;
	}
	excess = (int64_t)(t->seq - c->rcv_nxt) + t->len - wnd;
	if (excess > 0) {
		t->len -= (uint32_t)excess;
		t->flags &= ~TH_FIN;
		c->flags |= TF_ACKNOW;
	}
}

static void tcp_rtt_sample(struct gnet_conn *c)
{
	uint64_t now = gnet_now(c->s), us = 0;
	uint32_t r, delta;

	c->flags &= ~TF_RTT;
	if (now > c->rtt_start)
		us = (now - c->rtt_start) / NSEC_PER_USEC;
	r = (uint32_t)min64(us ? us : 1, RTO_MAX_US);
	if (!c->srtt_us) { /* RFC 6298 2.2 */
		c->srtt_us = r;
		c->rttvar_us = r / 2;
	} else { /* 2.3 */
		delta = c->srtt_us > r ? c->srtt_us - r : r - c->srtt_us;
		c->rttvar_us = (3 * c->rttvar_us + delta) / 4;
		c->srtt_us = (7 * c->srtt_us + r) / 8;
	}
	c->rto_us = c->srtt_us + max32(1, 4 * c->rttvar_us);
	c->rto_us = min32(max32(c->rto_us, RTO_MIN_US), RTO_MAX_US);
}

/* Send the first unacknowledged segment again (fast retransmit). */
static void tcp_rexmit_first(struct gnet_conn *c)
{
	uint32_t len = min32(c->tx_len, c->mss);
	bool fin_sent = c->snd_max - c->snd_una > c->tx_len;

	c->flags &= ~TF_RTT;
	tcp_xmit(c, c->snd_una, len,
		 TH_ACK | (fin_sent && len == c->tx_len ? TH_FIN : 0));
}

/* RFC 5681 3.2 and RFC 6582 (NewReno), without window inflation. */
static void tcp_dupack(struct gnet_conn *c)
{
	if ((c->flags & TF_RECOVERY) || ++c->dupacks != 3)
		return;
	c->ssthresh = max32((c->snd_max - c->snd_una) / 2, 2 * c->mss);
	c->cwnd = c->ssthresh;
	c->recover = c->snd_max;
	c->flags |= TF_RECOVERY;
	tcp_rexmit_first(c);
}

/* An ACK of new data up to `ack`. */
static void tcp_new_ack(struct gnet_conn *c, uint32_t ack)
{
	uint32_t acked = ack - c->snd_una, data = min32(acked, c->tx_len);
	bool fin_acked = acked > c->tx_len;

	if ((c->flags & TF_RTT) && SEQ_GT(ack, c->rtt_seq))
		tcp_rtt_sample(c);
	c->tx_head = (c->tx_head + data) & (GNET_TXBUF - 1);
	c->tx_len -= data;
	c->snd_una = ack;
	if (SEQ_LT(c->snd_nxt, ack))
		c->snd_nxt = ack;
	c->retries = 0;
	c->dupacks = 0;
	if (c->flags & TF_RECOVERY) {
		if (SEQ_GEQ(ack, c->recover)) {
			c->flags &= ~TF_RECOVERY;
			c->cwnd = c->ssthresh;
		} else {
			tcp_rexmit_first(c); /* a partial ACK: next hole */
		}
	} else if (c->cwnd < c->ssthresh) {
		c->cwnd += min32(acked, c->mss);
	} else {
		c->cwnd += max32(1, c->mss * c->mss / c->cwnd);
	}
	c->cwnd = min32(c->cwnd, TCP_CWND_MAX);
	if (data)
		tcp_event(c, TEV_WRITABLE);
	tcp_mark_output(c);
	if (!fin_acked) {
		tcp_arm(c, true);
		return;
	}
	switch (c->state) {
	case TS_FIN_WAIT_1:
		c->state = TS_FIN_WAIT_2;
		tcp_arm(c, true);
		break;
	case TS_CLOSING:
		tcp_time_wait(c);
		break;
	case TS_LAST_ACK:
		tcp_dead(c, 0);
		break;
	}
}

/* Step 5 of SEGMENT ARRIVES.  False if the segment goes no further. */
static bool tcp_ack(struct gnet_conn *c, const struct seg *t)
{
	struct gnet *s = c->s;
	bool dup;

	if (c->state == TS_SYN_RCVD) {
		if (t->ack != c->iss + 1) {
			s->stats.rx_out_of_window++;
			tcp_rst(s, t);
			return false;
		}
		if (c->flags & TF_RTT)
			tcp_rtt_sample(c);
		c->snd_una = c->snd_nxt = c->snd_max = t->ack;
		c->snd_wnd = t->wnd;
		c->max_sndwnd = max32(c->max_sndwnd, t->wnd);
		c->snd_wl1 = t->seq;
		c->snd_wl2 = t->ack;
		c->retries = 0;
		c->state = TS_ESTABLISHED;
		s->stats.tcp_accepted++;
		tcp_event(c, TEV_ACCEPTED);
		tcp_arm(c, true);
		return true;
	}
	/* RFC 5961 5.2: SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.MAX. */
	if (SEQ_GT(t->ack, c->snd_max) ||
	    SEQ_LT(t->ack, c->snd_una - c->max_sndwnd)) {
		s->stats.rx_out_of_window++;
		tcp_ack_later(c);
		return false;
	}
	c->flags |= TF_ALIVE;
	dup = t->ack == c->snd_una && !t->len &&
	      !(t->flags & (TH_SYN | TH_FIN)) && t->wnd == c->snd_wnd &&
	      c->snd_nxt != c->snd_una;
	if (SEQ_GT(t->ack, c->snd_una)) {
		tcp_new_ack(c, t->ack);
		if (c->state == TS_DEAD)
			return false;
	} else if (dup) {
		tcp_dupack(c);
	}
	if (SEQ_LT(c->snd_wl1, t->seq) ||
	    (c->snd_wl1 == t->seq && SEQ_LEQ(c->snd_wl2, t->ack))) {
		if (t->wnd > c->snd_wnd)
			tcp_mark_output(c);
		c->snd_wnd = t->wnd;
		c->max_sndwnd = max32(c->max_sndwnd, t->wnd);
		c->snd_wl1 = t->seq;
		c->snd_wl2 = t->ack;
	}
	return true;
}

static bool tcp_receiving(const struct gnet_conn *c)
{
	return c->state == TS_ESTABLISHED || c->state == TS_FIN_WAIT_1 ||
	       c->state == TS_FIN_WAIT_2;
}

/* Steps 6 and 7: in-order text and FIN. */
static void tcp_text(struct gnet_conn *c, const struct seg *t)
{
	if (!tcp_receiving(c))
		return; /* after the peer's FIN: nothing more can be new */
	if (t->seq != c->rcv_nxt) {
		/* A hole before it: drop it, and answer it with a duplicate
		 * ACK of its own (not coalesced like other ACKs), so that the
		 * peer gets the three that trigger its fast retransmit. */
		c->s->stats.rx_out_of_order++;
		tcp_xmit(c, c->snd_nxt, 0, TH_ACK);
		return;
	}
	if (t->len) {
		ring_put(c->rxbuf, GNET_RXBUF, c->rx_head + c->rx_len, t->data,
			 t->len);
		c->rx_len += t->len;
		c->rcv_nxt += t->len;
		c->flags |= TF_ACKNOW;
		tcp_event(c, TEV_READABLE);
	}
	if (!(t->flags & TH_FIN))
		return;
	c->rcv_nxt++;
	c->flags |= TF_FIN_RCVD | TF_ACKNOW;
	tcp_event(c, TEV_READABLE);
	if (c->state == TS_ESTABLISHED)
		c->state = TS_CLOSE_WAIT;
	else if (c->state == TS_FIN_WAIT_1)
		c->state = TS_CLOSING;
	else
		tcp_time_wait(c);
}

static void tcp_segment(struct gnet_conn *c, struct seg *t)
{
	struct gnet *s = c->s;
	uint32_t wnd = tcp_rcv_space(c), seq0 = t->seq;

	/* The same SYN again: our SYN-ACK was lost. */
	if (c->state == TS_SYN_RCVD && (t->flags & TH_SYN) &&
	    !(t->flags & TH_ACK) && t->seq + 1 == c->rcv_nxt) {
		c->snd_nxt = c->iss;
		c->flags &= ~TF_RTT;
		tcp_output(c);
		return;
	}
	if (!tcp_acceptable(c, t, wnd)) {
		s->stats.rx_out_of_window++;
		if (t->flags & TH_RST)
			return;
		tcp_ack_later(c);
		if (c->state == TS_TIME_WAIT && (t->flags & TH_FIN))
			tcp_set_timer(c, TT_TIME_WAIT,
				      gnet_now(s) + TCP_TIME_WAIT);
		return;
	}
	tcp_trim(c, t, wnd);
	if (t->flags & TH_RST) {
		/* RFC 5961 3.2: only an exact hit resets; else a challenge. */
		if (seq0 != c->rcv_nxt) {
			s->stats.rx_out_of_window++;
			tcp_ack_later(c);
			return;
		}
		if (c->flags & TF_APP)
			s->stats.tcp_resets++;
		tcp_dead(c, -ECONNRESET);
		return;
	}
	if (t->flags & TH_SYN) { /* RFC 5961 4.2: a challenge ACK */
		s->stats.rx_out_of_window++;
		tcp_ack_later(c);
		return;
	}
	if (!(t->flags & TH_ACK)) {
		s->stats.rx_bad_hdr++;
		return;
	}
	if (!tcp_ack(c, t))
		return;
	if (t->len || (t->flags & TH_FIN))
		tcp_text(c, t);
	if (SEQ_LT(c->rcv_adv, c->rcv_nxt))
		c->rcv_adv = c->rcv_nxt;
	if (c->flags & TF_ACKNOW)
		tcp_mark_output(c);
}

/* A TIME_WAIT connection gives way to a new SYN beyond it (RFC 6191). */
static bool tcp_tw_reusable(const struct gnet_conn *c, const struct seg *t)
{
	return c->state == TS_TIME_WAIT && !(c->flags & TF_APP) &&
	       (t->flags & (TH_SYN | TH_ACK)) == TH_SYN &&
	       SEQ_GT(t->seq, c->rcv_nxt);
}

void gnet_tcp_input(struct gnet *s, uint32_t src, uint32_t dst,
		    const uint8_t *th, size_t len)
{
	struct gnet_conn *c;
	uint32_t iss_min;
	struct seg t;
	size_t off;

	if (len < TCP_HLEN) {
		s->stats.rx_bad_len++;
		return;
	}
	off = (size_t)(th[12] >> 4) * 4;
	if (off < TCP_HLEN) {
		s->stats.rx_bad_hdr++;
		return;
	}
	if (off > len) {
		s->stats.rx_bad_len++;
		return;
	}
	if (gnet_csum_fold(gnet_csum_add(
		    gnet_csum_pseudo(src, dst, IP_PROTO_TCP, (uint16_t)len), th,
		    len))) {
		s->stats.rx_bad_csum++;
		return;
	}
	t.src = src;
	t.sport = rd16(th);
	t.dport = rd16(th + 2);
	t.seq = rd32(th + 4);
	t.ack = rd32(th + 8);
	t.flags = th[13] & TH_FLAGS;
	t.wnd = rd16(th + 14);
	t.data = th + off;
	t.len = (uint32_t)(len - off);
	t.mss = 0;
	if (!t.sport || !t.dport ||
	    ((t.flags & TH_SYN) && (t.flags & (TH_RST | TH_FIN)))) {
		s->stats.rx_bad_hdr++;
		return;
	}
	if (t.flags & TH_SYN)
		t.mss = tcp_parse_mss(th + TCP_HLEN, off - TCP_HLEN);
	s->stats.tcp_rx_segs++;
	c = tcp_lookup(s, src, t.sport, t.dport);
	if (c && tcp_tw_reusable(c, &t)) {
		/* The new incarnation starts beyond anything of the old one
		 * the peer may still hold. */
		iss_min = c->snd_max + TCP_WIN_MAX + 1;
		tcp_free(c);
		tcp_no_conn(s, &t, &iss_min);
	} else if (c) {
		tcp_segment(c, &t);
	} else {
		tcp_no_conn(s, &t, NULL);
	}
}

/* ---- Timers ----------------------------------------------------------- */

static void tcp_give_up(struct gnet_conn *c)
{
	c->s->stats.tcp_timeouts++;
	tcp_xmit(c, c->snd_nxt, 0, TH_RST | TH_ACK);
	tcp_dead(c, -ETIMEDOUT);
}

static void tcp_rexmit_timeout(struct gnet_conn *c)
{
	if (++c->retries >
	    (c->state == TS_SYN_RCVD ? TCP_SYN_RETRIES : TCP_RETRIES)) {
		tcp_give_up(c);
		return;
	}
	c->rto_us = min32(c->rto_us * 2, RTO_MAX_US); /* RFC 6298 5.5 */
	c->ssthresh = max32((c->snd_max - c->snd_una) / 2, 2 * c->mss);
	c->cwnd = c->mss;
	c->flags &= ~(TF_RTT | TF_RECOVERY);
	c->dupacks = 0;
	c->snd_nxt = c->state == TS_SYN_RCVD ? c->iss : c->snd_una;
	tcp_output(c);
	tcp_arm(c, true);
}

/*
 * The window has been closed (or too small to use) with nothing in flight.
 * A zero window is probed with one byte beyond it, which the peer must
 * ACK; snd_nxt stays, so the byte counts as unsent.  A small window is
 * used anyway.  The connection is given up only after TCP_RETRIES probes
 * in a row went unanswered (RFC 1122 4.2.2.17).
 */
static void tcp_persist_timeout(struct gnet_conn *c)
{
	if (c->flags & TF_ALIVE)
		c->probes = 0;
	else if (++c->probes > TCP_RETRIES) {
		tcp_give_up(c);
		return;
	}
	c->flags &= ~TF_ALIVE;
	if (c->retries < 16)
		c->retries++;
	if (c->snd_wnd) {
		c->flags |= TF_FORCE;
		tcp_output(c);
	} else {
		tcp_xmit(c, c->snd_nxt, 1, TH_ACK);
		if (SEQ_GT(c->snd_nxt + 1, c->snd_max))
			c->snd_max = c->snd_nxt + 1;
	}
	tcp_arm(c, true);
}

void gnet_tcp_timers(struct gnet *s, uint64_t now)
{
	for (unsigned int i = 0; i < s->cfg.max_conns; i++) {
		struct gnet_conn *c = &s->conns[i];

		if (s->deadline[i] > now)
			continue;
		switch (c->timer) {
		case TT_REXMIT:
			tcp_rexmit_timeout(c);
			break;
		case TT_PERSIST:
			tcp_persist_timeout(c);
			break;
		case TT_FIN_WAIT_2:
			tcp_give_up(c);
			break;
		case TT_TIME_WAIT:
			tcp_dead(c, 0);
			break;
		}
	}
}

/*
 * The VM was resumed elsewhere (gnet_moved).  A failed primary's last
 * epoch is gone: segments the peer sent in it were taken but are not in
 * our state, and the peer will not send them again before its
 * retransmission timeout (200 ms at least on Linux).  Three duplicate
 * ACKs make it retransmit now (RFC 5681 3.2, fast retransmit); a peer with
 * nothing outstanding ignores them.  What we had sent and not seen
 * acknowledged goes again too, and a half-open connection repeats its
 * SYN-ACK.
 */
void gnet_tcp_moved(struct gnet *s)
{
	for (unsigned int i = 0; i < s->cfg.max_conns; i++) {
		struct gnet_conn *c = &s->conns[i];

		switch (c->state) {
		case TS_SYN_RCVD:
			tcp_xmit(c, c->iss, 0, TH_SYN | TH_ACK);
			break;
		case TS_ESTABLISHED:
		case TS_CLOSE_WAIT:
		case TS_FIN_WAIT_1:
		case TS_FIN_WAIT_2:
		case TS_CLOSING:
		case TS_LAST_ACK:
			for (int k = 0; k < 3; k++)
				tcp_xmit(c, c->snd_nxt, 0, TH_ACK);
			if (c->snd_max != c->snd_una)
				tcp_rexmit_first(c);
			break;
		default:
			break;
		}
	}
}

uint64_t gnet_tcp_deadline(const struct gnet *s)
{
	uint64_t d = UINT64_MAX;

	if (map_first(s->ev_map) >= 0)
		return 0;
	for (unsigned int i = 0; i < s->cfg.max_conns; i++)
		d = min64(d, s->deadline[i]);
	return d;
}

/* ---- Events ----------------------------------------------------------- */

void gnet_tcp_dispatch(struct gnet *s)
{
	int i;

	s->in_callback = true;
	while ((i = map_first(s->ev_map)) >= 0) {
		struct gnet_conn *c = &s->conns[i];
		const struct gnet_listener *l = &s->listen[c->listener];
		uint8_t ev = c->ev;

		map_clear(s->ev_map, (unsigned int)i);
		c->ev = 0;
		if (ev & TEV_ACCEPTED) {
			c->flags |= TF_APP;
			l->cb.accepted(l->ctx, c);
		}
		/* Callbacks may have aborted it: then only closed follows. */
		if ((ev & TEV_READABLE) && l->cb.readable &&
		    (c->flags & TF_APP) && c->state != TS_DEAD)
			l->cb.readable(l->ctx, c);
		if ((ev & TEV_WRITABLE) && l->cb.writable &&
		    (c->flags & TF_APP) && c->state != TS_DEAD)
			l->cb.writable(l->ctx, c);
		if (!(ev & TEV_CLOSED))
			continue;
		if (c->flags & TF_APP) {
			c->flags &= ~TF_APP;
			l->cb.closed(l->ctx, c, c->reason);
		}
		if (c->state == TS_DEAD)
			tcp_free(c);
	}
	s->in_callback = false;
}

/* ---- Application interface -------------------------------------------- */

int gnet_tcp_listen(struct gnet *s, uint16_t port, const struct gnet_tcp_cb *cb,
		    void *ctx)
{
	struct gnet_listener *slot = NULL;

	if (!port || !cb || !cb->accepted || !cb->closed)
		return -EINVAL;
	for (unsigned int i = 0; i < GNET_MAX_LISTEN; i++) {
		if (s->listen[i].port == port)
			return -EADDRINUSE;
		if (!s->listen[i].port && !slot)
			slot = &s->listen[i];
	}
	if (!slot)
		return -ENOSPC;
	slot->port = port;
	slot->cb = *cb;
	slot->ctx = ctx;
	return 0;
}

/* Is `c` the application's and not yet over? */
static bool tcp_usable(const struct gnet_conn *c)
{
	return c && (c->flags & TF_APP) && c->state != TS_DEAD;
}

static bool tcp_can_send(const struct gnet_conn *c)
{
	return tcp_usable(c) &&
	       (c->state == TS_ESTABLISHED || c->state == TS_CLOSE_WAIT);
}

size_t gnet_tcp_read(struct gnet_conn *c, void *buf, size_t len)
{
	uint32_t n;

	if (!tcp_usable(c) || !buf)
		return 0;
	n = (uint32_t)min64(len, c->rx_len);
	if (!n)
		return 0;
	ring_get(c->rxbuf, GNET_RXBUF, c->rx_head, buf, n);
	c->rx_head = (c->rx_head + n) & (GNET_RXBUF - 1);
	c->rx_len -= n;
	/* Announce the space once it is worth it (RFC 1122 4.2.3.3). */
	if (!(c->flags & TF_FIN_RCVD) &&
	    tcp_rcv_space(c) >=
		    tcp_rcv_adv(c) + min32(GNET_RXBUF / 2, 2 * c->mss))
		tcp_ack_later(c);
	return n;
}

size_t gnet_tcp_readable(const struct gnet_conn *c)
{
	return tcp_usable(c) ? c->rx_len : 0;
}

bool gnet_tcp_eof(const struct gnet_conn *c)
{
	return !tcp_usable(c) || ((c->flags & TF_FIN_RCVD) && !c->rx_len);
}

size_t gnet_tcp_send(struct gnet_conn *c, const void *data, size_t len)
{
	uint32_t n;

	if (!tcp_can_send(c) || (len && !data))
		return 0;
	n = (uint32_t)min64(len, GNET_TXBUF - c->tx_len);
	if (!n)
		return 0;
	ring_put(c->txbuf, GNET_TXBUF, c->tx_head + c->tx_len, data, n);
	c->tx_len += n;
	tcp_mark_output(c);
	return n;
}

size_t gnet_tcp_send_space(const struct gnet_conn *c)
{
	return tcp_can_send(c) ? GNET_TXBUF - c->tx_len : 0;
}

void gnet_tcp_close(struct gnet_conn *c)
{
	if (!tcp_can_send(c))
		return;
	c->state = c->state == TS_ESTABLISHED ? TS_FIN_WAIT_1 : TS_LAST_ACK;
	c->flags |= TF_FIN_QUEUED;
	tcp_mark_output(c);
}

void gnet_tcp_abort(struct gnet_conn *c)
{
	if (!tcp_usable(c))
		return;
	if (c->state != TS_TIME_WAIT)
		tcp_xmit(c, c->snd_nxt, 0, TH_RST | TH_ACK);
	tcp_dead(c, -ECONNABORTED);
}

void gnet_conn_set_user(struct gnet_conn *c, void *user)
{
	if (c)
		c->user = user;
}

void *gnet_conn_user(const struct gnet_conn *c)
{
	return c ? c->user : NULL;
}

void gnet_conn_addr(const struct gnet_conn *c, uint32_t *peer_ip,
		    uint16_t *peer_port, uint16_t *local_port)
{
	if (peer_ip)
		*peer_ip = c->rip;
	if (peer_port)
		*peer_port = c->rport;
	if (local_port)
		*local_port = c->lport;
}

/* ---- Set-up and invariants -------------------------------------------- */

void gnet_tcp_init(struct gnet *s)
{
	uint8_t *mem = s->cfg.conn_mem;

	for (unsigned int i = 0; i < GNET_TCP_HASH; i++)
		s->hash[i] = NIL;
	s->free_conn = NIL;
	for (unsigned int i = GNET_MAX_CONNS; i-- > 0;) {
		struct gnet_conn *c = &s->conns[i];

		c->s = s;
		c->idx = (uint16_t)i;
		c->hnext = NIL;
		s->deadline[i] = UINT64_MAX;
		if (i >= s->cfg.max_conns)
			continue;
		c->rxbuf = mem + (size_t)i * GNET_CONN_MEM;
		c->txbuf = c->rxbuf + GNET_RXBUF;
		c->hnext = s->free_conn;
		s->free_conn = (uint16_t)i;
	}
}

static int tcp_check_conn(const struct gnet *s, const struct gnet_conn *c)
{
	uint32_t flight = c->snd_max - c->snd_una;
	uint32_t mss_max = s->cfg.mtu - IP_HLEN - TCP_HLEN;
	bool in_hash = false;

	if (c->state > TS_DEAD || c->listener >= GNET_MAX_LISTEN ||
	    s->listen[c->listener].port != c->lport)
		return -EINVAL;
	for (uint16_t i = s->hash[tcp_hash(s, c->rip, c->rport, c->lport)],
		      n = 0;
	     i != NIL && n <= s->cfg.max_conns; i = s->conns[i].hnext, n++)
		in_hash |= i == c->idx;
	if (in_hash != !!(c->flags & TF_HASHED) ||
	    in_hash != (c->state != TS_DEAD))
		return -EINVAL;
	if (c->rx_len > GNET_RXBUF || c->tx_len > GNET_TXBUF ||
	    c->rx_head >= GNET_RXBUF || c->tx_head >= GNET_TXBUF)
		return -EINVAL;
	if (!SEQ_LEQ(c->snd_una, c->snd_nxt) ||
	    !SEQ_LEQ(c->snd_nxt, c->snd_max))
		return -EINVAL;
	if (c->state == TS_SYN_RCVD
		    ? c->snd_una != c->iss || flight > 1 || c->tx_len ||
			      c->rx_len || (c->flags & TF_APP)
		    : flight > c->tx_len + !!(c->flags & TF_FIN_QUEUED))
		return -EINVAL;
	if (SEQ_LT(c->rcv_adv, c->rcv_nxt) ||
	    c->rcv_adv - c->rcv_nxt > tcp_rcv_space(c))
		return -EINVAL;
	if ((c->timer == TT_NONE) != (s->deadline[c->idx] == UINT64_MAX) ||
	    (c->state == TS_DEAD && c->timer != TT_NONE) ||
	    (c->state == TS_TIME_WAIT && c->timer != TT_TIME_WAIT))
		return -EINVAL;
	if (!c->ev != !map_test(s->ev_map, c->idx) ||
	    (c->state == TS_DEAD && !(c->ev & TEV_CLOSED)))
		return -EINVAL;
	if (c->mss < TCP_MSS_MIN || c->mss > mss_max || c->cwnd < c->mss ||
	    c->cwnd > TCP_CWND_MAX || c->rto_us < RTO_MIN_US ||
	    c->rto_us > RTO_MAX_US)
		return -EINVAL;
	return 0;
}

int gnet_tcp_check(const struct gnet *s)
{
	unsigned int nfree = 0, nused = 0;

	for (uint16_t i = s->free_conn; i != NIL; i = s->conns[i].hnext) {
		if (i >= s->cfg.max_conns || s->conns[i].state != TS_FREE ||
		    ++nfree > s->cfg.max_conns)
			return -EINVAL;
	}
	/* Slots beyond max_conns are never used: no bit, timer or chain
	 * can name them (checked below and by the loops' bounds). */
	for (unsigned int i = 0; i < s->cfg.max_conns; i++) {
		const struct gnet_conn *c = &s->conns[i];
		int err;

		if (c->state == TS_FREE) {
			if (c->ev || c->flags || map_test(s->ev_map, i) ||
			    map_test(s->out_map, i) ||
			    s->deadline[i] != UINT64_MAX)
				return -EINVAL;
			continue;
		}
		err = tcp_check_conn(s, c);
		if (err)
			return err;
		nused++;
	}
	if (nfree + nused != s->cfg.max_conns || s->stats.tcp_conns != nused)
		return -EINVAL;
	for (unsigned int w = 0; w < GNET_MAX_CONNS / 32; w++) {
		uint32_t beyond = 0;

		if (s->cfg.max_conns <= w * 32)
			beyond = ~0u;
		else if (s->cfg.max_conns < (w + 1) * 32)
			beyond = ~0u << (s->cfg.max_conns % 32);
		if ((s->ev_map[w] | s->out_map[w]) & beyond)
			return -EINVAL;
	}
	/* Every hashed slot is a live connection in its own bucket. */
	for (unsigned int b = 0; b < GNET_TCP_HASH; b++) {
		unsigned int n = 0;

		for (uint16_t i = s->hash[b]; i != NIL; i = s->conns[i].hnext) {
			const struct gnet_conn *c = &s->conns[i];

			if (i >= s->cfg.max_conns || ++n > s->cfg.max_conns ||
			    c->state == TS_FREE || c->state == TS_DEAD ||
			    tcp_hash(s, c->rip, c->rport, c->lport) != b)
				return -EINVAL;
		}
	}
	return 0;
}
