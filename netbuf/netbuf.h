/* SPDX-License-Identifier: MIT */
/*
 * netbuf.h - output commit: hold a protected guest's network output until
 * the checkpoint epoch that produced it has committed on the backup
 * (Remus).  Generic over struct hv_ops; the checkpoint engine drives it.
 *
 * Epochs: frames the guest sends after netbuf_seal(nb, N - 1) and up to
 * netbuf_seal(nb, N) belong to epoch N (the first epoch is whatever
 * netbuf_seal names first).  netbuf_release(nb, N) lets every frame of
 * epochs <= N leave the host, in the order the guest sent them.
 * docs/networking.md ("netbuf: output commit") describes the backends.
 *
 * Backends (one interface):
 *   NETBUF_INPROC   the VMM's own TX path (hv_ops.net_tx_hook/net_tx):
 *                   frames are copied into a bounded buffer here; when it
 *                   is full the guest is stalled (its send returns
 *                   FT_EAGAIN and it retries), never dropped.  Default.
 *   NETBUF_NFQUEUE  the guest's frames leave the VMM and are queued by
 *                   netfilter (an iptables NFQUEUE rule on the TAP,
 *                   installed and removed here); verdicts through
 *                   libnl-nf.  Works with any TAP; when the queue nears
 *                   its bound netbuf_event_fd() asks for an early epoch;
 *                   beyond it packets are dropped (counted): the guest
 *                   cannot be stalled from outside the VMM.  IP only.
 *   NETBUF_PLUG     sch_plug through libnl-route (Xen style), on an IFB
 *                   device the TAP's ingress is redirected to;
 *                   netbuf_available() says whether this kernel has it.
 *
 * Threads: netbuf_seal is called with the domain paused; netbuf_release,
 * netbuf_stats and the rest from one engine thread; the hooks run on vCPU
 * threads.  The implementation locks what it shares.
 *
 * FT_NETBUF_CHECK=1 in the environment at netbuf_open makes every seal
 * and release run the full invariant checker (tests set it).
 */
#ifndef NETBUF_H
#define NETBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv.h"

enum netbuf_backend {
	NETBUF_INPROC = 0,
	NETBUF_NFQUEUE = 1,
	NETBUF_PLUG = 2,
};

#define NETBUF_DEFAULT_BYTES (4u << 20)

struct netbuf_cfg {
	enum netbuf_backend backend;
	size_t max_bytes;  /* bound on held frame bytes; 0: default */
	const char *ifname; /* NFQUEUE, PLUG: the guest's TAP on this host */
	unsigned queue_num; /* NFQUEUE: queue number; 0: picked here */
};

struct netbuf_stats {
	uint64_t frames_held, bytes_held;	  /* now */
	uint64_t frames_released, bytes_released; /* so far */
	uint64_t max_bytes_held;		  /* high-water mark */
	uint64_t stalls;   /* guest sends refused for lack of room */
	uint64_t dropped;  /* frames lost on the way out (host queue full,
			    * kernel queue overflow): counted, never silent */
	uint64_t discarded; /* frames thrown away by netbuf_close(.., false) */
};

struct netbuf;

/* "in-process", "nfqueue", "plug"; parse: 0 or -EINVAL. */
const char *netbuf_backend_name(enum netbuf_backend b);
int netbuf_backend_parse(const char *s, enum netbuf_backend *out);

/* Whether backend `b` can work on this host; if not, why[0..len) says
 * why (e.g. "this kernel has no sch_plug qdisc").  NETBUF_PLUG probes the
 * kernel (in a throwaway network namespace: needs CAP_SYS_ADMIN);
 * NETBUF_INPROC depends on the hv backend, which netbuf_open checks. */
bool netbuf_available(enum netbuf_backend b, char *why, size_t len);

/* Start holding `d`'s output.  Frames sent before the first seal belong
 * to the first epoch sealed.  0 or -errno (reason logged): -EINVAL (bad
 * cfg), -EOPNOTSUPP (backend unavailable here, or hv backend without
 * output hooks), -ENODEV (no such interface), -ENOENT (INPROC: the domain has
 * no NIC; NFQUEUE: no iptables), -EBUSY (queue number taken).  `ops` and `d` may be NULL for NFQUEUE
 * and PLUG (then netbuf_close cannot pause the domain). */
int netbuf_open(const struct netbuf_cfg *cfg, const struct hv_ops *ops,
		struct hv_domain *d, struct netbuf **out);

/* The domain is paused: the frames held and not yet sealed belong to
 * `epoch` (strictly greater than the last sealed). */
int netbuf_seal(struct netbuf *nb, uint64_t epoch);

/* Epoch `epoch` committed: send every held frame of epochs <= epoch. */
int netbuf_release(struct netbuf *nb, uint64_t epoch);

/* Send everything held, sealed or not (protection ends: the guest is no
 * longer checkpointed, so nothing is speculative any more).  Output then
 * passes unheld until the next netbuf_seal, which starts holding again
 * (what the guest sends after that seal is the next epoch). */
int netbuf_release_all(struct netbuf *nb);

/* Readable (eventfd, read 8 bytes) when the buffer passes half its
 * bound: the engine should take the next epoch now. */
int netbuf_event_fd(struct netbuf *nb);

void netbuf_get_stats(struct netbuf *nb, struct netbuf_stats *st);

/* Stop holding: release everything (release) or discard it (the VM is
 * being fenced or destroyed; counted in `discarded`), and remove the
 * hook / queue rules / qdiscs.  The domain is paused meanwhile (if `ops`
 * was given), so nothing the guest sends overtakes held frames.  Frees
 * `nb`.  NULL is a no-op. */
void netbuf_close(struct netbuf *nb, bool release);

#endif /* NETBUF_H */
