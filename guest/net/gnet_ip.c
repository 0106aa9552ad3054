// SPDX-License-Identifier: MIT
/*
 * gnet_ip.c - IPv4 (RFC 791) without fragmentation, ICMP echo (RFC 792)
 * and UDP (RFC 768).
 *
 * Input checks, in order: length, version, IHL, total length against the
 * frame (trailing Ethernet padding is cut off), header checksum, no
 * fragment, destination ours or broadcast, source not a martian.  Options
 * are skipped.  Broadcasts reach UDP only: no echo replies or TCP for them.
 * Output: 20-byte header, DF set, TTL 64.
 */
#include "gnet_priv.h"

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO 8
#define ICMP_HLEN 8
#define UDP_HLEN 8

/* A source we never answer: 0, broadcast, loopback, multicast or class E,
 * or our own address. */
static bool martian(const struct gnet *s, uint32_t src)
{
	const uint8_t *b = (const uint8_t *)&src;

	return !src || b[0] == 127 || b[0] >= 224 || gnet_is_bcast(s, src) ||
	       src == s->cfg.ip;
}

static void icmp_input(struct gnet *s, uint32_t src, const uint8_t *m,
		       size_t len)
{
	uint8_t *f, *r;

	if (len < ICMP_HLEN) {
		s->stats.rx_bad_len++;
		return;
	}
	if (gnet_csum_fold(gnet_csum_add(0, m, len))) {
		s->stats.rx_bad_csum++;
		return;
	}
	if (m[0] != ICMP_ECHO || m[1] != 0) {
		s->stats.rx_bad_proto++;
		return;
	}
	/* The request fits: a 20-byte header is never longer than its. */
	f = gnet_tx_begin(s);
	r = f + L4_OFF;
	gnet_memcpy(r, m, len);
	r[0] = ICMP_ECHO_REPLY;
	wr16(r + 2, 0);
	wr16(r + 2, gnet_csum_fold(gnet_csum_add(0, r, len)));
	if (!gnet_ip_send(s, f, src, IP_PROTO_ICMP, len))
		s->stats.icmp_echo++;
}

static void udp_input(struct gnet *s, uint32_t src, uint32_t dst,
		      const uint8_t *u, size_t len)
{
	uint16_t ulen, dport;

	if (len < UDP_HLEN) {
		s->stats.rx_bad_len++;
		return;
	}
	ulen = rd16(u + 4);
	if (ulen < UDP_HLEN || ulen > len) {
		s->stats.rx_bad_len++;
		return;
	}
	if (rd16(u + 6) &&
	    gnet_csum_fold(gnet_csum_add(
		    gnet_csum_pseudo(src, dst, IP_PROTO_UDP, ulen), u, ulen))) {
		s->stats.rx_bad_csum++;
		return;
	}
	dport = rd16(u + 2);
	for (unsigned int i = 0; i < GNET_MAX_UDP; i++) {
		struct gnet_udp_bind *b = &s->udp[i];

		if (b->port && b->port == dport) {
			s->stats.udp_rx++;
			s->in_callback = true;
			b->cb(b->ctx, src, rd16(u), u + UDP_HLEN,
			      ulen - UDP_HLEN);
			s->in_callback = false;
			return;
		}
	}
	s->stats.rx_no_listener++;
}

void gnet_ip_input(struct gnet *s, const uint8_t *f, size_t len)
{
	const uint8_t *ip = f + ETH_HLEN;
	size_t n = len - ETH_HLEN, ihl, tot;
	uint32_t src, dst;
	bool bcast;

	if (n < IP_HLEN) {
		s->stats.rx_bad_len++;
		return;
	}
	ihl = (size_t)(ip[0] & 15) * 4;
	if (ip[0] >> 4 != 4 || ihl < IP_HLEN) {
		s->stats.rx_bad_hdr++;
		return;
	}
	tot = rd16(ip + 2);
	if (ihl > n || tot < ihl || tot > n) {
		s->stats.rx_bad_len++;
		return;
	}
	if (gnet_csum_fold(gnet_csum_add(0, ip, ihl))) {
		s->stats.rx_bad_csum++;
		return;
	}
	if (rd16(ip + 6) & IP_MF_OFF) {
		s->stats.rx_frag++;
		return;
	}
	src = rdip(ip + 12);
	dst = rdip(ip + 16);
	bcast = gnet_is_bcast(s, dst);
	if (!bcast && (!s->cfg.ip || dst != s->cfg.ip)) {
		s->stats.rx_not_for_us++;
		return;
	}
	if (martian(s, src)) {
		s->stats.rx_bad_hdr++;
		return;
	}
	switch (ip[9]) {
	case IP_PROTO_ICMP:
		if (bcast)
			break;
		icmp_input(s, src, ip + ihl, tot - ihl);
		return;
	case IP_PROTO_UDP:
		udp_input(s, src, dst, ip + ihl, tot - ihl);
		return;
	case IP_PROTO_TCP:
		if (bcast)
			break;
		gnet_tcp_input(s, src, dst, ip + ihl, tot - ihl);
		return;
	}
	s->stats.rx_bad_proto++;
}

int gnet_ip_send(struct gnet *s, uint8_t *frame, uint32_t dst, uint8_t proto,
		 size_t l4len)
{
	uint8_t *ip = frame + ETH_HLEN;
	uint32_t nexthop = dst;

	if ((dst & s->cfg.netmask) != (s->cfg.ip & s->cfg.netmask) &&
	    dst != IP_BCAST) {
		if (!s->cfg.gw) {
			s->stats.tx_no_route++;
			return -ENETUNREACH;
		}
		nexthop = s->cfg.gw;
	}
	gnet_eth_header(s, frame, ETH_TYPE_IP);
	ip[0] = 0x45;
	ip[1] = 0;
	wr16(ip + 2, (uint16_t)(IP_HLEN + l4len));
	wr16(ip + 4, s->ip_id++);
	wr16(ip + 6, IP_DF);
	ip[8] = IP_TTL;
	ip[9] = proto;
	wr16(ip + 10, 0);
	wrip(ip + 12, s->cfg.ip);
	wrip(ip + 16, dst);
	wr16(ip + 10, gnet_csum_fold(gnet_csum_add(0, ip, IP_HLEN)));
	gnet_arp_output(s, frame, L4_OFF + l4len, nexthop);
	return 0;
}

int gnet_udp_bind(struct gnet *s, uint16_t port,
		  void (*cb)(void *ctx, uint32_t src_ip, uint16_t src_port,
			     const void *data, size_t len),
		  void *ctx)
{
	struct gnet_udp_bind *slot = NULL;

	if (!port || !cb)
		return -EINVAL;
	for (unsigned int i = 0; i < GNET_MAX_UDP; i++) {
		if (s->udp[i].port == port)
			return -EADDRINUSE;
		if (!s->udp[i].port && !slot)
			slot = &s->udp[i];
	}
	if (!slot)
		return -ENOSPC;
	slot->port = port;
	slot->cb = cb;
	slot->ctx = ctx;
	return 0;
}

int gnet_udp_send(struct gnet *s, uint32_t dst_ip, uint16_t dst_port,
		  uint16_t src_port, const void *data, size_t len)
{
	uint8_t *f, *u;
	uint16_t ulen;
	uint16_t sum;
	int err;

	if (!dst_ip || !dst_port || !src_port || (len && !data))
		return -EINVAL;
	if (len > (size_t)s->cfg.mtu - IP_HLEN - UDP_HLEN)
		return -EMSGSIZE;
	ulen = (uint16_t)(UDP_HLEN + len);
	f = gnet_tx_begin(s);
	u = f + L4_OFF;
	wr16(u, src_port);
	wr16(u + 2, dst_port);
	wr16(u + 4, ulen);
	wr16(u + 6, 0);
	if (len)
		gnet_memcpy(u + UDP_HLEN, data, len);
	sum = gnet_csum_fold(gnet_csum_add(
		gnet_csum_pseudo(s->cfg.ip, dst_ip, IP_PROTO_UDP, ulen), u,
		ulen));
	wr16(u + 6, sum ? sum : 0xffff);
	err = gnet_ip_send(s, f, dst_ip, IP_PROTO_UDP, ulen);
	if (!err)
		s->stats.udp_tx++;
	return err;
}
