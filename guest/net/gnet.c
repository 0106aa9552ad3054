// SPDX-License-Identifier: MIT
/*
 * gnet.c - the stack's core: set-up, Ethernet input, the transmit queue
 * and its batches, timers, checksums and the invariant checker.
 */
#include "gnet_priv.h"

GNET_STATIC_ASSERT(GNET_TXQ >= 4 && GNET_BATCH_MAX >= 1);
GNET_STATIC_ASSERT((GNET_RXBUF & (GNET_RXBUF - 1)) == 0);
GNET_STATIC_ASSERT((GNET_TXBUF & (GNET_TXBUF - 1)) == 0);
GNET_STATIC_ASSERT((GNET_TCP_HASH & (GNET_TCP_HASH - 1)) == 0);
GNET_STATIC_ASSERT(GNET_MAX_CONNS % 32 == 0 && GNET_MAX_CONNS < 0xffff);

#define MTU_MIN 576
#define MTU_MAX (GNET_FRAME_MAX - ETH_HLEN)

static const uint8_t eth_bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

uint32_t gnet_csum_add(uint32_t sum, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t acc = sum;

	/* 2^16 = 1 in one's complement arithmetic mod 2^16 - 1, so 32-bit
	 * big-endian words add up to the same fold as their halves. */
	for (; len >= 4; len -= 4, p += 4)
		acc += rd32(p);
	if (len >= 2) {
		acc += rd16(p);
		p += 2;
		len -= 2;
	}
	if (len)
		acc += (uint32_t)p[0] << 8;
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return (uint32_t)acc;
}

uint32_t gnet_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto,
			  uint16_t len)
{
	uint8_t ph[12];

	wrip(ph, src);
	wrip(ph + 4, dst);
	ph[8] = 0;
	ph[9] = proto;
	wr16(ph + 10, len);
	return gnet_csum_add(0, ph, sizeof(ph));
}

uint16_t gnet_csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

uint64_t gnet_now(const struct gnet *s)
{
	return s->io.now(s->io.ctx);
}

bool gnet_is_bcast(const struct gnet *s, uint32_t ip)
{
	uint32_t mask = s->cfg.netmask;

	return ip == IP_BCAST || (mask != IP_BCAST && s->cfg.ip &&
				  ip == ((s->cfg.ip & mask) | ~mask));
}

/* Netmasks are contiguous ones from the top: in host order, ~m + 1 is 0
 * or a power of two. */
static bool mask_ok(uint32_t netmask)
{
	const uint8_t *b = (const uint8_t *)&netmask;
	uint32_t inv = ~rd32(b);

	return !(inv & (inv + 1));
}

static int check_cfg(const struct gnet_cfg *cfg, const struct gnet_io *io)
{
	uint16_t mtu = cfg->mtu ? cfg->mtu : MTU_MAX;
	static const uint8_t zero[6];

	if (!io->send || !io->now)
		return -EINVAL;
	if (mtu < MTU_MIN || mtu > MTU_MAX)
		return -EINVAL;
	if ((cfg->mac[0] & 1) || !gnet_memcmp(cfg->mac, zero, 6))
		return -EINVAL;
	if (!mask_ok(cfg->netmask))
		return -EINVAL;
	if (cfg->gw && (cfg->gw & cfg->netmask) != (cfg->ip & cfg->netmask))
		return -EINVAL;
	if (cfg->max_conns > GNET_MAX_CONNS ||
	    (cfg->max_conns && !cfg->conn_mem))
		return -EINVAL;
	return 0;
}

int gnet_init(struct gnet *s, const struct gnet_cfg *cfg,
	      const struct gnet_io *io)
{
	int err;

	if (!s || !cfg || !io)
		return -EINVAL;
	err = check_cfg(cfg, io);
	if (err)
		return err;
	gnet_memset(s, 0, sizeof(*s));
	s->cfg = *cfg;
	if (!s->cfg.mtu)
		s->cfg.mtu = MTU_MAX;
	s->io = *io;
	/*
	 * The key of the ISS generator and the connection hash.  There is no
	 * entropy source in a deterministic guest: the boot time and our
	 * addresses differ between VMs and boots, which is all RFC 6528 can
	 * get here (see docs/networking.md).
	 */
	s->secret = gnet_mix64(gnet_now(s) ^
			       gnet_mix64((uint64_t)cfg->ip << 32 |
					  (uint64_t)cfg->mac[2] << 24 |
					  (uint64_t)cfg->mac[3] << 16 |
					  (uint64_t)cfg->mac[4] << 8 |
					  cfg->mac[5]));
	gnet_tcp_init(s);
	return 0;
}

void gnet_input(struct gnet *s, const void *frame, size_t len)
{
	const uint8_t *f = frame;

	if (s->in_callback) {
		s->stats.misuse++;
		return;
	}
	s->stats.rx_frames++;
	if (!f || len < ETH_HLEN || len > (size_t)ETH_HLEN + s->cfg.mtu) {
		s->stats.rx_bad_len++;
		return;
	}
	if (gnet_memcmp(f, s->cfg.mac, 6) && gnet_memcmp(f, eth_bcast, 6)) {
		s->stats.rx_not_for_us++;
		return;
	}
	switch (rd16(f + 12)) {
	case ETH_TYPE_IP:
		gnet_ip_input(s, f, len);
		break;
	case ETH_TYPE_ARP:
		gnet_arp_input(s, f, len);
		break;
	default:
		s->stats.rx_bad_proto++;
		return;
	}
	gnet_tcp_dispatch(s);
}

void gnet_eth_header(const struct gnet *s, uint8_t *frame, uint16_t type)
{
	gnet_memcpy(frame + 6, s->cfg.mac, 6);
	wr16(frame + 12, type);
}

/* Hand the queued frames to io->send in batches. */
static int tx_push(struct gnet *s)
{
	unsigned int done = 0;
	int first_err = 0;

	while (done < s->txq_len) {
		unsigned int n = s->txq_len - done;
		int err;

		if (n > GNET_BATCH_MAX)
			n = GNET_BATCH_MAX;
		err = s->io.send(s->io.ctx, s->txq + done, n);
		s->stats.tx_batches++;
		if (err < 0) {
			s->stats.tx_errors += n;
			if (!first_err)
				first_err = err;
		} else {
			s->stats.tx_frames += n;
		}
		done += n;
	}
	s->txq_len = 0;
	return first_err;
}

uint8_t *gnet_tx_begin(struct gnet *s)
{
	if (s->txq_len == GNET_TXQ)
		tx_push(s);
	return s->txbuf[s->txq_len];
}

void gnet_tx_commit(struct gnet *s, size_t len)
{
	uint8_t *buf = s->txbuf[s->txq_len];

	if (len < GNET_FRAME_MIN) {
		gnet_memset(buf + len, 0, GNET_FRAME_MIN - len);
		len = GNET_FRAME_MIN;
	}
	s->txq[s->txq_len].data = buf;
	s->txq[s->txq_len].len = (uint32_t)len;
	s->txq_len++;
}

int gnet_flush(struct gnet *s)
{
	gnet_tcp_output_all(s);
	return tx_push(s);
}

void gnet_timers(struct gnet *s)
{
	uint64_t now;

	if (s->in_callback) {
		s->stats.misuse++;
		return;
	}
	now = gnet_now(s);
	gnet_arp_timers(s, now);
	gnet_tcp_timers(s, now);
	gnet_tcp_dispatch(s);
}

void gnet_moved(struct gnet *s)
{
	if (s->in_callback) {
		s->stats.misuse++;
		return;
	}
	s->stats.moves++;
	gnet_tcp_moved(s);
}

uint64_t gnet_next_deadline(const struct gnet *s)
{
	return min64(gnet_arp_deadline(s), gnet_tcp_deadline(s));
}

const struct gnet_stats *gnet_stats(const struct gnet *s)
{
	return &s->stats;
}

const struct gnet_cfg *gnet_config(const struct gnet *s)
{
	return &s->cfg;
}

int gnet_check(const struct gnet *s)
{
	int err;

	if (s->txq_len > GNET_TXQ)
		return -EINVAL;
	err = gnet_arp_check(s);
	return err ? err : gnet_tcp_check(s);
}
