/* SPDX-License-Identifier: MIT */
/*
 * gnet_priv.h - the stack's internal interfaces: wire constants, byte
 * order and checksum helpers, and the calls between its layers.  Not for
 * applications.
 */
#ifndef GNET_PRIV_H
#define GNET_PRIV_H

#include "gnet.h"

#define GNET_STATIC_ASSERT(e) _Static_assert(e, #e)

/* Ethernet II. */
#define ETH_HLEN 14
#define ETH_TYPE_IP 0x0800
#define ETH_TYPE_ARP 0x0806

/* IPv4. */
#define IP_HLEN 20
#define IP_PROTO_ICMP 1
#define IP_PROTO_TCP 6
#define IP_PROTO_UDP 17
#define IP_TTL 64
#define IP_DF 0x4000
#define IP_MF_OFF 0x3fff /* more-fragments flag and fragment offset */
#define L4_OFF (ETH_HLEN + IP_HLEN) /* transport header in our frames */

#define IP_BCAST 0xffffffffu

#define NSEC_PER_USEC 1000ull
#define NSEC_PER_MSEC 1000000ull
#define NSEC_PER_SEC 1000000000ull

/* Big-endian loads and stores at any alignment (frames are 2-aligned at
 * best past the Ethernet header). */
static inline uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static inline void wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* IPv4 addresses stay in network order: copied, never swapped. */
static inline uint32_t rdip(const uint8_t *p)
{
	uint32_t v;

	gnet_memcpy(&v, p, 4);
	return v;
}

static inline void wrip(uint8_t *p, uint32_t v)
{
	gnet_memcpy(p, &v, 4);
}

static inline uint64_t min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static inline uint32_t min32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

static inline uint32_t max32(uint32_t a, uint32_t b)
{
	return a > b ? a : b;
}

/* A strong 64-bit mixer (splitmix64's finaliser). */
static inline uint64_t gnet_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- Internet checksum (RFC 1071) ------------------------------------- */

/* Add `len` bytes at `buf` to the running sum `sum` (start with 0).  Every
 * piece but the last must have an even length. */
uint32_t gnet_csum_add(uint32_t sum, const void *buf, size_t len);

/* The sum of the TCP/UDP pseudo-header. */
uint32_t gnet_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto,
			  uint16_t len);

/* The checksum field value for `sum`: the complement of its 16-bit fold.
 * Over data that includes a correct checksum field, this is 0. */
uint16_t gnet_csum_fold(uint32_t sum);

/* ---- Layers ----------------------------------------------------------- */

uint64_t gnet_now(const struct gnet *s);

/* True if `ip` (network order) is a broadcast address for us: the limited
 * broadcast or our subnet's. */
bool gnet_is_bcast(const struct gnet *s, uint32_t ip);

/* The next free transmit buffer (GNET_FRAME_MAX bytes).  Hands the queue to
 * io->send first if it is full.  The buffer is the caller's until the next
 * gnet_tx_begin; gnet_tx_commit queues it. */
uint8_t *gnet_tx_begin(struct gnet *s);

/* Queue the buffer from the last gnet_tx_begin as a frame of `len` bytes
 * (padded to GNET_FRAME_MIN). */
void gnet_tx_commit(struct gnet *s, size_t len);

/* Fill in the Ethernet source and type of `frame`. */
void gnet_eth_header(const struct gnet *s, uint8_t *frame, uint16_t type);

/* ARP (gnet_arp.c). */
void gnet_arp_input(struct gnet *s, const uint8_t *f, size_t len);
/* Queue the IP frame in the current tx buffer (`len` bytes, Ethernet
 * destination still unset) to next hop `nexthop`: now if its MAC is known,
 * else after ARP resolves it. */
void gnet_arp_output(struct gnet *s, uint8_t *frame, size_t len,
		     uint32_t nexthop);
void gnet_arp_timers(struct gnet *s, uint64_t now);
uint64_t gnet_arp_deadline(const struct gnet *s);
int gnet_arp_check(const struct gnet *s);

/* IPv4, ICMP, UDP (gnet_ip.c). */
void gnet_ip_input(struct gnet *s, const uint8_t *f, size_t len);
/* Send the current tx buffer, whose `l4len` transport bytes are in place at
 * L4_OFF, to `dst`.  Returns 0 or -ENETUNREACH. */
int gnet_ip_send(struct gnet *s, uint8_t *frame, uint32_t dst, uint8_t proto,
		 size_t l4len);

/* TCP (gnet_tcp.c). */
void gnet_tcp_init(struct gnet *s);
void gnet_tcp_input(struct gnet *s, uint32_t src, uint32_t dst,
		    const uint8_t *seg, size_t len);
void gnet_tcp_timers(struct gnet *s, uint64_t now);
uint64_t gnet_tcp_deadline(const struct gnet *s);
void gnet_tcp_output_all(struct gnet *s);
void gnet_tcp_moved(struct gnet *s);
void gnet_tcp_dispatch(struct gnet *s);
int gnet_tcp_check(const struct gnet *s);

#endif /* GNET_PRIV_H */
