/* SPDX-License-Identifier: MIT */
/*
 * gnet.h - the guest network stack: Ethernet II, ARP, IPv4, ICMP echo,
 * UDP and the server side of TCP, in portable freestanding C11.
 *
 * docs/networking.md describes what the stack implements and drops, its
 * limits and timers.  In short:
 *
 *   - One stack is one `struct gnet`, a large object the caller places
 *     (static storage in a guest).  Every pool is inside it except the
 *     per-connection TCP buffers, GNET_CONN_MEM bytes per connection, which
 *     the caller passes in gnet_cfg (a guest takes them from its heap, so
 *     pages of connections never used stay untouched and cost nothing).
 *   - The platform is two functions (struct gnet_io): send a batch of
 *     frames, read a monotonic clock.  Nothing else: no malloc, no
 *     interrupts, no threads.
 *   - The caller drives it: gnet_input for each received frame, gnet_timers
 *     when gnet_next_deadline has passed, gnet_flush after a batch of work.
 *     Replies, ACKs and data are queued inside the stack and leave only in
 *     gnet_flush (or when GNET_TXQ frames are queued), in batches of at most
 *     GNET_BATCH_MAX frames: one io->send per batch.
 *   - Application callbacks (UDP receive, TCP accepted/readable/writable/
 *     closed) run only from inside gnet_input and gnet_timers, once the
 *     stack's state is consistent; they may call every function below
 *     except gnet_init, gnet_input and gnet_timers.
 *
 * Single-threaded; nothing is reentrant across different calls on one
 * stack.  IPv4 addresses are uint32_t in network byte order (the bytes as
 * on the wire); ports are in host byte order.  Every received byte is
 * untrusted: a malformed frame is dropped and counted, never acted on.
 */
#ifndef GNET_H
#define GNET_H

#include "gnet_plat.h"

/* ---- Limits (compile-time; struct gnet's size depends on them) -------- */

#define GNET_FRAME_MAX 1514 /* Ethernet header + MTU 1500, no FCS */
#define GNET_FRAME_MIN 60   /* shorter frames are zero-padded to this */
#define GNET_BATCH_MAX 64   /* frames per io->send call */
#define GNET_TXQ 64	    /* frames queued before a forced io->send */
#define GNET_MAX_CONNS 256  /* TCP connections (incl. handshakes, TIME_WAIT) */
#define GNET_MAX_LISTEN 8   /* TCP listening ports */
#define GNET_MAX_UDP 8	    /* bound UDP ports */
#define GNET_ARP_CACHE 32   /* ARP cache entries */
#define GNET_ARP_HOLD 16    /* frames waiting for ARP resolution */
#define GNET_TCP_HASH 512   /* 4-tuple hash buckets (power of two) */
#define GNET_RXBUF 65536    /* receive ring per connection (power of 2) */
#define GNET_TXBUF 65536    /* send ring per connection (power of 2) */
#define GNET_CONN_MEM (GNET_RXBUF + GNET_TXBUF) /* bytes per connection */

/* ---- Configuration and platform --------------------------------------- */

struct gnet_cfg {
	uint8_t mac[6];	  /* unicast, not zero */
	uint16_t mtu;	  /* 576..1500; 0 means 1500 */
	uint32_t ip;	  /* our address; 0: only broadcast traffic is ours */
	uint32_t netmask; /* contiguous */
	uint32_t gw;	  /* default gateway, on our subnet; 0: none */
	/* TCP connection pool: max_conns (0..GNET_MAX_CONNS) connections, each
	 * using GNET_CONN_MEM bytes of conn_mem, which must hold
	 * max_conns * GNET_CONN_MEM bytes, stay valid while the stack lives and
	 * is used only by it.  Its contents need not be initialised. */
	unsigned int max_conns;
	void *conn_mem;
};

/* One frame handed to io->send: `len` bytes at `data`. */
struct gnet_frame {
	const void *data;
	uint32_t len;
};

struct gnet_io {
	/* Transmit frames f[0..n), in order, 1 <= n <= GNET_BATCH_MAX, each
	 * GNET_FRAME_MIN..GNET_FRAME_MAX bytes.  The buffers are the stack's
	 * and valid only during the call.  Returns 0 or -errno; after an
	 * error the stack counts the batch as lost (TCP retransmits). */
	int (*send)(void *ctx, const struct gnet_frame *f, unsigned int n);
	/* Monotonic time in ns.  Called often: make it cheap (a guest returns
	 * a value cached once per poll, see gnet_ft.c). */
	uint64_t (*now)(void *ctx);
	void *ctx;
};

/* Counters; all only ever increase except tcp_conns.  docs/networking.md
 * lists what each drop counter counts. */
struct gnet_stats {
	uint64_t rx_frames;  /* frames given to gnet_input */
	uint64_t tx_frames;  /* frames io->send accepted */
	uint64_t tx_batches; /* io->send calls */
	uint64_t tx_errors;  /* frames lost to io->send errors */
	/* Received frames dropped, by reason. */
	uint64_t rx_bad_len;	   /* truncated, or a length field lies */
	uint64_t rx_bad_csum;	   /* IPv4, ICMP, UDP or TCP checksum */
	uint64_t rx_bad_hdr;	   /* bad field or flags, martian source */
	uint64_t rx_not_for_us;	   /* other MAC or IP address */
	uint64_t rx_bad_proto;	   /* unsupported protocol or type */
	uint64_t rx_frag;	   /* IPv4 fragments */
	uint64_t rx_no_listener;   /* no such UDP/TCP port or connection */
	uint64_t rx_pool_full;	   /* SYN with every connection live */
	uint64_t rx_out_of_window; /* TCP sequence or ACK checks failed */
	uint64_t rx_out_of_order;  /* TCP data after a hole */
	uint64_t misuse;	   /* gnet_input/timers from a callback */
	/* ARP. */
	uint64_t arp_requests;	 /* requests sent */
	uint64_t arp_replies;	 /* replies sent */
	uint64_t arp_unresolved; /* frames dropped waiting for ARP */
	uint64_t tx_no_route;	 /* sends off-link without a gateway */
	/* ICMP, UDP. */
	uint64_t icmp_echo; /* echo replies sent */
	uint64_t udp_rx;    /* datagrams delivered */
	uint64_t udp_tx;    /* datagrams sent */
	/* TCP. */
	uint64_t tcp_rx_segs;	  /* valid segments received */
	uint64_t tcp_tx_segs;	  /* segments sent, all kinds */
	uint64_t tcp_retransmits; /* segments sent again */
	uint64_t tcp_rst_tx;	  /* RSTs sent */
	uint64_t tcp_accepted;	  /* connections that reached ESTABLISHED */
	uint64_t tcp_resets;	  /* connections reset by the peer */
	uint64_t tcp_timeouts;	  /* connections given up (-ETIMEDOUT) */
	uint64_t tcp_syn_evicted; /* half-open connections dropped for SYNs */
	uint64_t tcp_conns;	  /* connections in the pool now */
	uint64_t moves;		  /* gnet_moved calls */
};

/* ---- TCP application interface ---------------------------------------- */

struct gnet_conn;

/*
 * Callbacks of a listening port; `ctx` is the one given to
 * gnet_tcp_listen.  accepted and closed are required, the others optional.
 * A connection the application has seen gets exactly one closed call,
 * whatever ends it; after closed returns the handle is gone for good.
 */
struct gnet_tcp_cb {
	/* The handshake completed; `c` is the application's from now on. */
	void (*accepted)(void *ctx, struct gnet_conn *c);
	/* New data is ready to read, or the peer closed its side (then
	 * gnet_tcp_eof turns true once the data is read).  Edge-triggered:
	 * data left unread is not announced again until more arrives. */
	void (*readable)(void *ctx, struct gnet_conn *c);
	/* The peer acknowledged data, so send space was freed. */
	void (*writable)(void *ctx, struct gnet_conn *c);
	/* The connection is over: 0 after a clean close in both directions,
	 * -ECONNRESET (peer's RST), -ETIMEDOUT (peer stopped answering), or
	 * -ECONNABORTED (gnet_tcp_abort). */
	void (*closed)(void *ctx, struct gnet_conn *c, int reason);
};

/* ---- Private state (fields are the stack's; use the functions) --------- */

struct gnet_conn {
	struct gnet *s;
	uint8_t *rxbuf, *txbuf;
	void *user;
	uint32_t rip;	       /* peer address (network order) */
	uint16_t rport, lport; /* peer and local port */
	uint16_t idx, hnext;   /* pool index; hash chain / free list */
	uint16_t flags;	       /* TF_* */
	uint8_t state;	       /* TS_* */
	uint8_t listener;      /* index into gnet.listen */
	uint8_t ev;	       /* pending TEV_* */
	uint8_t timer;	       /* armed TT_* */
	uint8_t retries;       /* timeouts in a row; persist backoff */
	uint8_t probes;	       /* unanswered window probes */
	uint8_t dupacks;
	int16_t reason; /* for closed() */
	uint16_t mss;	/* send MSS */
	uint32_t iss, snd_una, snd_nxt, snd_max;
	uint32_t snd_wnd, snd_wl1, snd_wl2, max_sndwnd;
	uint32_t cwnd, ssthresh, recover;
	uint32_t rcv_nxt, rcv_adv;
	uint32_t rx_head, rx_len; /* ring: unread data */
	uint32_t tx_head, tx_len; /* ring: data from snd_una on */
	uint32_t srtt_us, rttvar_us, rto_us;
	uint32_t rtt_seq;
	uint64_t rtt_start;
};

struct gnet_listener {
	uint16_t port; /* 0: free slot */
	struct gnet_tcp_cb cb;
	void *ctx;
};

struct gnet_udp_bind {
	uint16_t port; /* 0: free slot */
	void (*cb)(void *ctx, uint32_t src_ip, uint16_t src_port,
		   const void *data, size_t len);
	void *ctx;
};

struct gnet_arp_entry {
	uint32_t ip;
	uint8_t mac[6];
	uint8_t state; /* ARP_* (gnet_arp.c) */
	uint8_t tries;
	uint64_t deadline; /* retry, or the end of reachability */
};

struct gnet_hold {
	uint32_t nexthop;
	uint32_t seq; /* FIFO order */
	uint16_t len; /* 0: free */
	uint8_t frame[GNET_FRAME_MAX];
};

struct gnet {
	struct gnet_cfg cfg;
	struct gnet_io io;
	struct gnet_stats stats;
	uint64_t secret; /* ISS and hash key */
	uint16_t ip_id;
	bool in_callback;
	/* Transmit queue. */
	unsigned int txq_len;
	struct gnet_frame txq[GNET_TXQ];
	uint8_t txbuf[GNET_TXQ][GNET_FRAME_MAX];
	/* ARP. */
	struct gnet_arp_entry arp[GNET_ARP_CACHE];
	struct gnet_hold hold[GNET_ARP_HOLD];
	uint32_t hold_seq;
	/* UDP and TCP. */
	struct gnet_udp_bind udp[GNET_MAX_UDP];
	struct gnet_listener listen[GNET_MAX_LISTEN];
	uint16_t free_conn; /* free list head */
	uint16_t hash[GNET_TCP_HASH];
	uint32_t ev_map[GNET_MAX_CONNS / 32];  /* connections with events */
	uint32_t out_map[GNET_MAX_CONNS / 32]; /* connections to output */
	uint64_t deadline[GNET_MAX_CONNS];     /* armed timer per connection */
	struct gnet_conn conns[GNET_MAX_CONNS];
};

/* ---- The stack -------------------------------------------------------- */

/*
 * Set up `s` (overwriting all of it) with configuration `cfg` and platform
 * `io`, both copied.  Returns 0, or -EINVAL for a configuration outside
 * the ranges documented in struct gnet_cfg or an io without send/now.
 * Calls io->now once.  Sends nothing.
 */
int gnet_init(struct gnet *s, const struct gnet_cfg *cfg,
	      const struct gnet_io *io);

/*
 * Process one received Ethernet frame of `len` bytes (without FCS).  The
 * bytes are only read, and only during the call.  Anything malformed,
 * not addressed to us or unsupported is dropped and counted in the stats.
 * Replies are queued (see gnet_flush); callbacks run before it returns.
 */
void gnet_input(struct gnet *s, const void *frame, size_t len);

/* Run every timer that is due at io->now(): ARP retries, TCP
 * retransmission, persist, FIN_WAIT_2 and TIME_WAIT; deliver pending
 * callbacks (e.g. after gnet_tcp_abort). */
void gnet_timers(struct gnet *s);

/* The VM now runs elsewhere: restored, migrated, or failed over to a
 * backup (FT_POLL_MOVED).  Prompt every TCP peer to retransmit what this
 * copy of the VM never received (three duplicate ACKs each), and send
 * again what it sent and has not seen acknowledged.  Frames are queued;
 * gnet_flush sends them. */
void gnet_moved(struct gnet *s);

/* The io->now() time at which gnet_timers next has work: 0 if it has work
 * now, UINT64_MAX if no timer is armed. */
uint64_t gnet_next_deadline(const struct gnet *s);

/*
 * Build every segment that is due (data, FINs, ACKs, window updates) and
 * hand all queued frames to io->send, in batches of at most GNET_BATCH_MAX.
 * Received data is ACKed here, once per flush: call it after each batch
 * of gnet_input calls.  Returns 0, or the first io->send error.
 */
int gnet_flush(struct gnet *s);

/* The counters. */
const struct gnet_stats *gnet_stats(const struct gnet *s);

/* The configuration in use: gnet_init's copy, with the MTU filled in. */
const struct gnet_cfg *gnet_config(const struct gnet *s);

/*
 * Check the stack's internal invariants (pools, hash, lists, sequence
 * numbers, buffers, timers).  Returns 0, or -EINVAL at the first broken
 * one.  For tests and fuzzing; costs O(connections).
 */
int gnet_check(const struct gnet *s);

/* ---- UDP -------------------------------------------------------------- */

/*
 * Deliver datagrams for local `port` (1..65535) to cb(ctx, src_ip,
 * src_port, data, len), called from gnet_input with data valid only during
 * the call.  Returns 0, -EINVAL (port 0, no cb), -EADDRINUSE (already
 * bound) or -ENOSPC (GNET_MAX_UDP bound).
 */
int gnet_udp_bind(struct gnet *s, uint16_t port,
		  void (*cb)(void *ctx, uint32_t src_ip, uint16_t src_port,
			     const void *data, size_t len),
		  void *ctx);

/*
 * Queue one datagram of `len` bytes to dst_ip:dst_port (dst_ip may be a
 * broadcast address) from local src_port.  Returns 0 (queued, or held
 * while ARP resolves: delivery is not guaranteed), -EINVAL (zero address
 * or port), -EMSGSIZE (len > MTU - 28) or -ENETUNREACH (off-link without
 * a gateway).
 */
int gnet_udp_send(struct gnet *s, uint32_t dst_ip, uint16_t dst_port,
		  uint16_t src_port, const void *data, size_t len);

/* ---- TCP -------------------------------------------------------------- */

/*
 * Accept connections on local `port` (1..65535), reporting them through
 * `cb` (copied) with `ctx`.  Returns 0, -EINVAL (port 0, cb without
 * accepted or closed), -EADDRINUSE or -ENOSPC (GNET_MAX_LISTEN ports).
 */
int gnet_tcp_listen(struct gnet *s, uint16_t port, const struct gnet_tcp_cb *cb,
		    void *ctx);

/* Copy up to `len` received bytes to `buf`, consuming them; returns the
 * number copied (0: nothing buffered).  Freeing space may queue a window
 * update for the next gnet_flush. */
size_t gnet_tcp_read(struct gnet_conn *c, void *buf, size_t len);

/* Bytes ready for gnet_tcp_read. */
size_t gnet_tcp_readable(const struct gnet_conn *c);

/* True once the peer has closed its side and every byte was read. */
bool gnet_tcp_eof(const struct gnet_conn *c);

/*
 * Copy up to `len` bytes into the send buffer; returns how many it took
 * (0 when the buffer is full, or after gnet_tcp_close/abort or a reset);
 * writable() says when acknowledgements free space.  The data leaves at
 * the next gnet_flush, within the peer's window.
 */
size_t gnet_tcp_send(struct gnet_conn *c, const void *data, size_t len);

/* Bytes gnet_tcp_send would take now. */
size_t gnet_tcp_send_space(const struct gnet_conn *c);

/* Close our side: a FIN follows the data already queued; reading goes on
 * until the peer closes too, then closed(0).  Idempotent. */
void gnet_tcp_close(struct gnet_conn *c);

/* Reset the connection now (RST to the peer, buffered data discarded);
 * closed(-ECONNABORTED) follows from the next gnet_timers/gnet_input, and
 * until then every call on `c` does nothing. */
void gnet_tcp_abort(struct gnet_conn *c);

/* The application's pointer for `c` (NULL until set). */
void gnet_conn_set_user(struct gnet_conn *c, void *user);
void *gnet_conn_user(const struct gnet_conn *c);

/* The peer's address (network order) and port, and our local port. */
void gnet_conn_addr(const struct gnet_conn *c, uint32_t *peer_ip,
		    uint16_t *peer_port, uint16_t *local_port);

#endif /* GNET_H */
