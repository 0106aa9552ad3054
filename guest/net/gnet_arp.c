// SPDX-License-Identifier: MIT
/*
 * gnet_arp.c - ARP for IPv4 over Ethernet (RFC 826): answer requests for
 * our address, keep a small cache, resolve next hops for sending while
 * holding a bounded number of frames.
 *
 * Cache entries are
 *   INCOMPLETE  requested, no answer yet: frames to it wait in the hold
 *               queue; a request goes out every ARP_RETRY, and after
 *               ARP_TRIES unanswered ones the entry and its frames go;
 *   REACHABLE   MAC known, trusted until `deadline` (ARP_TTL after the
 *               last ARP packet from the host);
 *   STALE       MAC known but old: still used for sending, while requests
 *               refresh it as for INCOMPLETE; unanswered, the entry goes.
 * Entries are created for hosts that ask for us and for hosts we send to;
 * an ARP packet from a host already cached refreshes it whoever it is for
 * (RFC 826's merge).  A full cache evicts the resolved entry with the
 * earliest deadline; INCOMPLETE entries are never evicted.
 */
#include "gnet_priv.h"

#define ARP_LEN 28
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2
#define ARP_RETRY (1 * NSEC_PER_SEC)
#define ARP_TRIES 3
#define ARP_TTL (60 * NSEC_PER_SEC)

enum { ARP_FREE, ARP_INCOMPLETE, ARP_REACHABLE, ARP_STALE };

static const uint8_t eth_bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static struct gnet_arp_entry *arp_find(struct gnet *s, uint32_t ip)
{
	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++)
		if (s->arp[i].state != ARP_FREE && s->arp[i].ip == ip)
			return &s->arp[i];
	return NULL;
}

/* A free entry for `ip`, evicting the resolved entry that expires first
 * if need be; NULL if every entry is INCOMPLETE. */
static struct gnet_arp_entry *arp_alloc(struct gnet *s, uint32_t ip)
{
	struct gnet_arp_entry *victim = NULL;

	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++) {
		struct gnet_arp_entry *e = &s->arp[i];

		if (e->state == ARP_FREE) {
			victim = e;
			break;
		}
		if (e->state != ARP_INCOMPLETE &&
		    (!victim || e->deadline < victim->deadline))
			victim = e;
	}
	if (victim) {
		gnet_memset(victim, 0, sizeof(*victim));
		victim->ip = ip;
	}
	return victim;
}

static void arp_send(struct gnet *s, uint16_t op, const uint8_t *dst_mac,
		     const uint8_t *tha, uint32_t tpa)
{
	uint8_t *f = gnet_tx_begin(s);
	uint8_t *a = f + ETH_HLEN;

	gnet_memcpy(f, dst_mac, 6);
	gnet_eth_header(s, f, ETH_TYPE_ARP);
	wr16(a, 1);
	wr16(a + 2, ETH_TYPE_IP);
	a[4] = 6;
	a[5] = 4;
	wr16(a + 6, op);
	gnet_memcpy(a + 8, s->cfg.mac, 6);
	wrip(a + 14, s->cfg.ip);
	gnet_memcpy(a + 18, tha, 6);
	wrip(a + 24, tpa);
	gnet_tx_commit(s, ETH_HLEN + ARP_LEN);
	if (op == ARP_OP_REQUEST)
		s->stats.arp_requests++;
	else
		s->stats.arp_replies++;
}

static void arp_request(struct gnet *s, uint32_t ip)
{
	static const uint8_t zero[6];

	arp_send(s, ARP_OP_REQUEST, eth_bcast, zero, ip);
}

/* Send the frames held for `e`, which now has a MAC, oldest first. */
static void arp_release(struct gnet *s, const struct gnet_arp_entry *e)
{
	for (;;) {
		struct gnet_hold *first = NULL;
		uint8_t *f;

		for (unsigned int i = 0; i < GNET_ARP_HOLD; i++) {
			struct gnet_hold *h = &s->hold[i];

			if (h->len && h->nexthop == e->ip &&
			    (!first || (int32_t)(h->seq - first->seq) < 0))
				first = h;
		}
		if (!first)
			return;
		f = gnet_tx_begin(s);
		gnet_memcpy(f, first->frame, first->len);
		gnet_memcpy(f, e->mac, 6);
		gnet_tx_commit(s, first->len);
		first->len = 0;
	}
}

static void arp_drop_held(struct gnet *s, uint32_t ip)
{
	for (unsigned int i = 0; i < GNET_ARP_HOLD; i++) {
		if (s->hold[i].len && s->hold[i].nexthop == ip) {
			s->hold[i].len = 0;
			s->stats.arp_unresolved++;
		}
	}
}

static void arp_learn(struct gnet *s, struct gnet_arp_entry *e,
		      const uint8_t *mac)
{
	bool was_incomplete = e->state == ARP_INCOMPLETE;

	gnet_memcpy(e->mac, mac, 6);
	e->state = ARP_REACHABLE;
	e->tries = 0;
	e->deadline = gnet_now(s) + ARP_TTL;
	if (was_incomplete)
		arp_release(s, e);
}

/* An address we may cache: not 0, ours, broadcast, multicast or class E. */
static bool arp_cacheable(const struct gnet *s, uint32_t ip)
{
	const uint8_t *b = (const uint8_t *)&ip;

	return ip && ip != s->cfg.ip && !gnet_is_bcast(s, ip) && b[0] < 224;
}

void gnet_arp_input(struct gnet *s, const uint8_t *f, size_t len)
{
	const uint8_t *a = f + ETH_HLEN;
	const uint8_t *sha = a + 8;
	uint32_t spa, tpa;
	uint16_t op;
	bool for_us;

	if (len < ETH_HLEN + ARP_LEN) {
		s->stats.rx_bad_len++;
		return;
	}
	op = rd16(a + 6);
	if (rd16(a) != 1 || rd16(a + 2) != ETH_TYPE_IP || a[4] != 6 ||
	    a[5] != 4 || (op != ARP_OP_REQUEST && op != ARP_OP_REPLY) ||
	    (sha[0] & 1)) {
		s->stats.rx_bad_hdr++;
		return;
	}
	spa = rdip(a + 14);
	tpa = rdip(a + 24);
	for_us = s->cfg.ip && tpa == s->cfg.ip;
	if (arp_cacheable(s, spa)) {
		struct gnet_arp_entry *e = arp_find(s, spa);

		if (!e && for_us)
			e = arp_alloc(s, spa);
		if (e)
			arp_learn(s, e, sha);
	}
	if (!for_us) {
		s->stats.rx_not_for_us++;
		return;
	}
	/* Also answers RFC 5227 probes (spa 0), so the prober sees us. */
	if (op == ARP_OP_REQUEST)
		arp_send(s, ARP_OP_REPLY, sha, sha, spa);
}

void gnet_arp_output(struct gnet *s, uint8_t *frame, size_t len,
		     uint32_t nexthop)
{
	struct gnet_arp_entry *e;
	struct gnet_hold *slot = NULL;
	bool fresh = false;
	uint64_t now;

	if (gnet_is_bcast(s, nexthop)) {
		gnet_memcpy(frame, eth_bcast, 6);
		gnet_tx_commit(s, len);
		return;
	}
	now = gnet_now(s);
	e = arp_find(s, nexthop);
	if (e && e->state != ARP_INCOMPLETE) {
		gnet_memcpy(frame, e->mac, 6);
		gnet_tx_commit(s, len);
		if (e->state == ARP_REACHABLE && now >= e->deadline) {
			e->state = ARP_STALE;
			e->tries = 1;
			e->deadline = now + ARP_RETRY;
			arp_request(s, nexthop);
		}
		return;
	}
	for (unsigned int i = 0; i < GNET_ARP_HOLD && !slot; i++)
		if (!s->hold[i].len)
			slot = &s->hold[i];
	if (!e) {
		e = arp_alloc(s, nexthop);
		if (!e) {
			s->stats.arp_unresolved++;
			return;
		}
		e->state = ARP_INCOMPLETE;
		e->tries = 1;
		e->deadline = now + ARP_RETRY;
		fresh = true;
	}
	if (slot) {
		/* Before the request: it reuses the transmit buffer. */
		gnet_memcpy(slot->frame, frame, len);
		slot->len = (uint16_t)len;
		slot->nexthop = nexthop;
		slot->seq = s->hold_seq++;
	} else {
		s->stats.arp_unresolved++;
	}
	if (fresh)
		arp_request(s, nexthop);
}

void gnet_arp_timers(struct gnet *s, uint64_t now)
{
	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++) {
		struct gnet_arp_entry *e = &s->arp[i];

		if ((e->state != ARP_INCOMPLETE && e->state != ARP_STALE) ||
		    e->deadline > now)
			continue;
		if (e->tries >= ARP_TRIES) {
			if (e->state == ARP_INCOMPLETE)
				arp_drop_held(s, e->ip);
			e->state = ARP_FREE;
			continue;
		}
		e->tries++;
		e->deadline = now + ARP_RETRY;
		arp_request(s, e->ip);
	}
}

uint64_t gnet_arp_deadline(const struct gnet *s)
{
	uint64_t d = UINT64_MAX;

	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++) {
		const struct gnet_arp_entry *e = &s->arp[i];

		if (e->state == ARP_INCOMPLETE || e->state == ARP_STALE)
			d = min64(d, e->deadline);
	}
	return d;
}

int gnet_arp_check(const struct gnet *s)
{
	for (unsigned int i = 0; i < GNET_ARP_CACHE; i++) {
		const struct gnet_arp_entry *e = &s->arp[i];

		if (e->state > ARP_STALE ||
		    (e->state != ARP_FREE && e->tries > ARP_TRIES))
			return -EINVAL;
		for (unsigned int j = 0; j < i && e->state != ARP_FREE; j++)
			if (s->arp[j].state != ARP_FREE &&
			    s->arp[j].ip == e->ip)
				return -EINVAL;
	}
	/* A held frame waits for an INCOMPLETE entry of its next hop. */
	for (unsigned int i = 0; i < GNET_ARP_HOLD; i++) {
		const struct gnet_hold *h = &s->hold[i];
		bool found = false;

		if (!h->len)
			continue;
		if (h->len > GNET_FRAME_MAX)
			return -EINVAL;
		for (unsigned int j = 0; j < GNET_ARP_CACHE; j++)
			found |= s->arp[j].state == ARP_INCOMPLETE &&
				 s->arp[j].ip == h->nexthop;
		if (!found)
			return -EINVAL;
	}
	return 0;
}
