/* SPDX-License-Identifier: MIT */
/*
 * gnet_ft.h - the guest network stack on the ftengine NIC: struct gnet_io
 * over FT_HC_NET_SEND and the clock, configuration from FT_HC_NET_INFO,
 * and the poll loop (docs/networking.md, "The guest's event loop").
 *
 * One NIC per VM, so one stack per guest: these functions keep their
 * buffers in static storage and must be used with a single struct gnet.
 */
#ifndef GNET_FT_H
#define GNET_FT_H

#include "ft.h"
#include "gnet.h"

/*
 * Read the NIC's configuration and set up `s` on it with a pool of
 * `max_conns` (0..GNET_MAX_CONNS) TCP connections, whose buffers
 * (max_conns * GNET_CONN_MEM bytes) come from the heap for good.  Call
 * once.  Returns 0, -ENOSYS (the VM has no NIC), -ENOMEM (heap too small)
 * or -EINVAL (the VMM's configuration is one gnet_init refuses).
 */
int gnet_ft_init(struct gnet *s, unsigned int max_conns);

/*
 * One round of the event loop: send what is queued, block in FT_HC_POLL
 * until a frame arrives, a timer of `s` is due or the monotonic clock
 * reaches `deadline` (UINT64_MAX: no limit of the caller's), then receive
 * every pending frame in batches (each batch is processed and answered
 * with one gnet_flush), run the timers and flush again.  Callbacks run
 * inside.  Returns 0, or the first error of a NET call as -errno (frames
 * of a failed send are lost; TCP recovers them).
 *
 * The clock that `s` sees (io->now) is read once per round, after the
 * poll: work the application does between rounds is stamped with the time
 * the round began.
 */
int gnet_ft_poll(struct gnet *s, uint64_t deadline);

#endif /* GNET_FT_H */
