// SPDX-License-Identifier: MIT
/*
 * gnet_ft.c - the guest network stack on the ftengine NIC (guest only:
 * the host builds of guest/net leave this file out).
 *
 * Every hypercall is an exit of ~25 us, so a round of gnet_ft_poll makes
 * as few as it can: one POLL, one clock read, one RECV per 64 frames (none
 * when POLL did not report the NIC ready) and one SEND per 64 frames out
 * (more only while the host holds our output and answers FT_EAGAIN).
 * Frames go out straight from the stack's transmit buffers and come in
 * straight into the receive buffers here (guest memory is identity-mapped,
 * so a pointer is its GPA).
 */
#include "gnet_ft.h"

/* Frames may start anywhere; 1536 keeps each buffer 512-aligned. */
#define RX_BUF_SIZE 1536
_Static_assert(RX_BUF_SIZE >= FT_NET_FRAME_MAX, "receive buffer");
_Static_assert(GNET_BATCH_MAX <= FT_NET_BATCH_MAX, "send batch");
_Static_assert(GNET_FRAME_MAX <= FT_NET_FRAME_MAX, "frame size");

static struct ft_net_frame rx_desc[FT_NET_BATCH_MAX];
static struct ft_net_frame tx_desc[FT_NET_BATCH_MAX];
static uint8_t rx_buf[FT_NET_BATCH_MAX][RX_BUF_SIZE];
static uint64_t now_cached;

static int ft_errno(int64_t err)
{
	switch (-err) {
	case FT_EFAULT:
		return -EFAULT;
	case FT_EINVAL:
		return -EINVAL;
	case FT_ENOSYS:
		return -ENOSYS;
	case FT_EAGAIN:
		return -EAGAIN;
	case FT_E2BIG:
		return -E2BIG;
	default:
		return -EIO;
	}
}

/* Issue call `nr` with `block`, whose result field is `ret`. */
static int net_call(unsigned int nr, void *block, const int64_t *ret)
{
	int64_t r = ft_hypercall(nr, (uintptr_t)block);

	if (!r)
		r = *ret;
	return r < 0 ? ft_errno(r) : 0;
}

/* FT_EAGAIN (the host holds our output and is full) is waited out in
 * ft_net_send: the stack never loses a frame to it. */
static int ft_send(void *ctx, const struct gnet_frame *f, unsigned int n)
{
	int err;

	(void)ctx;
	for (unsigned int i = 0; i < n; i++) {
		tx_desc[i].buf = (uintptr_t)f[i].data;
		tx_desc[i].len = f[i].len;
		tx_desc[i].reserved = 0;
	}
	err = ft_net_send(tx_desc, n, NULL);
	return err ? ft_errno(err) : 0;
}

static uint64_t ft_now(void *ctx)
{
	(void)ctx;
	return now_cached;
}

static const struct gnet_io ft_io = {.send = ft_send, .now = ft_now};

int gnet_ft_init(struct gnet *s, unsigned int max_conns)
{
	struct ft_hc_net_info info = {0};
	struct gnet_cfg cfg = {0};
	void *mem = NULL;
	int err;

	err = net_call(FT_HC_NET_INFO, &info, &info.ret);
	if (err)
		return err;
	if (max_conns > GNET_MAX_CONNS)
		return -EINVAL;
	if (max_conns) {
		mem = ft_alloc_aligned((size_t)max_conns * GNET_CONN_MEM,
				       FT_PAGE_SIZE);
		if (!mem)
			return -ENOMEM;
	}
	memcpy(cfg.mac, info.mac, sizeof(cfg.mac));
	cfg.mtu = info.mtu;
	cfg.ip = info.ipv4_addr;
	cfg.netmask = info.ipv4_netmask;
	cfg.gw = info.ipv4_gateway;
	cfg.max_conns = max_conns;
	cfg.conn_mem = mem;
	now_cached = ft_clock_mono();
	return gnet_init(s, &cfg, &ft_io);
}

/* Receive and process batches until one comes back short.  Returns 0 or
 * -errno. */
static int receive_all(struct gnet *s)
{
	int err = 0;

	for (;;) {
		struct ft_hc_net_batch b = {.frames = (uintptr_t)rx_desc,
					    .count = FT_NET_BATCH_MAX};
		uint64_t done;

		for (unsigned int i = 0; i < FT_NET_BATCH_MAX; i++) {
			rx_desc[i].buf = (uintptr_t)rx_buf[i];
			rx_desc[i].len = RX_BUF_SIZE;
			rx_desc[i].reserved = 0;
		}
		/* Nothing pending is done = 0 (guest-abi.md, section 8);
		 * receive never answers FT_EAGAIN, but it would mean the
		 * same. */
		err = net_call(FT_HC_NET_RECV, &b, &b.ret);
		if (err == -EAGAIN)
			return 0;
		if (err)
			return err;
		done = b.done < FT_NET_BATCH_MAX ? b.done : FT_NET_BATCH_MAX;
		for (unsigned int i = 0; i < done; i++)
			gnet_input(s, rx_buf[i],
				   rx_desc[i].len < RX_BUF_SIZE ? rx_desc[i].len
								: RX_BUF_SIZE);
		err = gnet_flush(s);
		if (err || done < FT_NET_BATCH_MAX)
			return err;
	}
}

int gnet_ft_poll(struct gnet *s, uint64_t deadline)
{
	uint64_t next, ready;
	int err, err2;

	err = gnet_flush(s);
	next = gnet_next_deadline(s);
	ready = ft_poll(next < deadline ? next : deadline);
	now_cached = ft_clock_mono();
	if (ready & FT_POLL_MOVED)
		gnet_moved(s);
	if (ready & FT_POLL_NET) {
		err2 = receive_all(s);
		err = err ? err : err2;
	}
	gnet_timers(s);
	err2 = gnet_flush(s);
	return err ? err : err2;
}
