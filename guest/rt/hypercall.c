// SPDX-License-Identifier: MIT
/*
 * hypercall.c - typed wrappers around ft_hypercall, and ft_exit.
 *
 * Argument blocks live on the stack (below 4 GiB, 8-byte aligned, inside
 * guest memory), so the VMM accepts them; a wrapper that still sees an
 * error has met a broken VMM and panics, except console writes, whose
 * caller may have passed a bad buffer, and the device calls, whose errors
 * go to the caller.  FT_EAGAIN from a send or a write is waited out here.
 */
#include "ft.h"

int ft_console_write(const void *buf, size_t len)
{
	const char *p = buf;

	do {
		size_t n = len < FT_CONSOLE_MAX ? len : FT_CONSOLE_MAX;
		struct ft_hc_console c = {.buf = (uintptr_t)p, .len = n};
		int64_t r = ft_hypercall(FT_HC_CONSOLE_WRITE, (uintptr_t)&c);

		if (r)
			return (int)r;
		if (c.ret < 0)
			return (int)c.ret;
		p += n;
		len -= n;
	} while (len);
	return 0;
}

static uint64_t clock_read(unsigned int nr, const char *name)
{
	struct ft_hc_clock c = {0};
	int64_t r = ft_hypercall(nr, (uintptr_t)&c);

	if (r || c.ret)
		ft_panic("%s clock call failed: %ld", name, r ? r : c.ret);
	return c.ns;
}

uint64_t ft_clock_mono(void)
{
	return clock_read(FT_HC_CLOCK_MONO, "monotonic");
}

uint64_t ft_clock_wall(void)
{
	return clock_read(FT_HC_CLOCK_WALL, "wall");
}

uint64_t ft_poll(uint64_t deadline_ns)
{
	struct ft_hc_poll p = {.deadline_ns = deadline_ns};
	int64_t r = ft_hypercall(FT_HC_POLL, (uintptr_t)&p);

	if (r || p.ret)
		ft_panic("poll call failed: %ld", r ? r : p.ret);
	return p.ready;
}

void ft_sleep_until(uint64_t deadline_ns)
{
	do
		ft_poll(deadline_ns);
	while (ft_clock_mono() < deadline_ns);
}

void ft_sleep_ns(uint64_t ns)
{
	uint64_t now = ft_clock_mono();

	ft_sleep_until(ns > UINT64_MAX - now ? UINT64_MAX : now + ns);
}

void ft_eagain_wait(void)
{
	ft_poll(ft_clock_mono() + FT_EAGAIN_WAIT_NS);
}

int ft_net_send(const struct ft_net_frame *frames, uint32_t count,
		uint64_t *waits)
{
	while (count) {
		struct ft_hc_net_batch b = {.frames = (uintptr_t)frames,
					    .count = count};
		int64_t r = ft_hypercall(FT_HC_NET_SEND, (uintptr_t)&b);

		if (!r)
			r = b.ret;
		if (r != -FT_EAGAIN)
			return r < 0 ? (int)r : 0;
		if (b.done > count) /* a VMM breaking the ABI */
			return -FT_EIO;
		frames += b.done;
		count -= (uint32_t)b.done;
		if (waits)
			(*waits)++;
		ft_eagain_wait();
	}
	return 0;
}

static int block_io(unsigned int nr, uint64_t sector, const void *buf,
		    uint32_t count, uint32_t flags)
{
	for (;;) {
		struct ft_hc_block_io io = {.sector = sector,
					    .buf = (uintptr_t)buf,
					    .count = count,
					    .flags = flags};
		int64_t r = ft_hypercall(nr, (uintptr_t)&io);

		if (!r)
			r = io.ret;
		if (r != -FT_EAGAIN || nr != FT_HC_BLOCK_WRITE)
			return (int)r;
		ft_eagain_wait();
	}
}

int ft_block_read(uint64_t sector, void *buf, uint32_t count)
{
	return block_io(FT_HC_BLOCK_READ, sector, buf, count, 0);
}

int ft_block_write(uint64_t sector, const void *buf, uint32_t count,
		   uint32_t flags)
{
	return block_io(FT_HC_BLOCK_WRITE, sector, buf, count, flags);
}

void ft_exit(int64_t status)
{
	struct ft_hc_exit e = {.status = status};

	ft_flush();
	ft_hypercall(FT_HC_EXIT, (uintptr_t)&e);
	/* Only a VMM that broke the ABI gets here: crash loudly. */
	__builtin_trap();
}
