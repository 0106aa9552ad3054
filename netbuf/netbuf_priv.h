/* SPDX-License-Identifier: MIT */
/*
 * netbuf_priv.h - what netbuf.c (the generic part) and the backends
 * (netbuf_inproc.c, netbuf_nfq.c, netbuf_plug.c) share.  Not for users.
 */
#ifndef NETBUF_PRIV_H
#define NETBUF_PRIV_H

#include <net/if.h>
#include <pthread.h>

#include "netbuf.h"

#define NB_MIN_BYTES (16u << 10) /* smaller bounds are refused */
#define NB_MAX_BYTES (1u << 30)

/* One backend: an operation table over struct netbuf. */
struct nb_backend {
	/* Set up `nb` (common fields filled in, lock initialised); on error
	 * undo everything and return -errno (reason logged). */
	int (*open)(struct netbuf *nb);
	/* The generic code checked `epoch` and updates last_sealed. */
	int (*seal)(struct netbuf *nb, uint64_t epoch);
	int (*release)(struct netbuf *nb, uint64_t epoch);
	/* Send everything and pass output through until the next seal. */
	int (*release_all)(struct netbuf *nb);
	/* Update nb->st from the backend's own counters (lock held). */
	void (*stats)(struct netbuf *nb);
	/* Release or discard what is held, undo open.  Called once. */
	void (*close)(struct netbuf *nb, bool release);
	bool (*available)(char *why, size_t len);
};

extern const struct nb_backend nb_inproc, nb_nfqueue, nb_plug;

/* A sealed epoch: its frames are those before `mark` (a backend's
 * position: a frame sequence number, a packet id) and after the previous
 * epoch's mark. */
struct nb_epoch {
	uint64_t epoch, mark, frames, bytes;
};

/* FIFO of sealed, unreleased epochs, oldest first, epochs increasing. */
struct nb_epochs {
	struct nb_epoch *v;
	size_t head, len, cap;
};

int nb_epochs_push(struct nb_epochs *q, const struct nb_epoch *e);
/* Pop every epoch <= `epoch`; *sum gets the total frames and bytes and
 * the last popped epoch and mark.  Returns how many were popped. */
size_t nb_epochs_pop(struct nb_epochs *q, uint64_t epoch,
		     struct nb_epoch *sum);
void nb_epochs_free(struct nb_epochs *q);
/* 0 if epochs strictly increase and marks never decrease, else -EINVAL
 * (logged): the invariant checker's part for the FIFO. */
int nb_epochs_check(const struct nb_epochs *q, const char *who);

struct netbuf {
	const struct nb_backend *be;
	enum netbuf_backend kind;
	size_t max_bytes;
	char ifname[IF_NAMESIZE];
	unsigned queue_num;
	const struct hv_ops *ops; /* may be NULL for NFQUEUE and PLUG */
	struct hv_domain *d;
	int event_fd;
	bool check;		 /* FT_NETBUF_CHECK: full invariant walks */
	bool sealed_any;	 /* engine thread */
	uint64_t last_sealed;	 /* engine thread */
	pthread_mutex_t lock;	 /* the backend's state and these: */
	struct netbuf_stats st;	 /* lock; stats() may refresh */
	bool event_sent;	 /* lock: the eventfd was signalled */
	bool passthrough;	 /* lock: after release_all, until a seal */
	unsigned waiters;	 /* atomic: nb_lock callers not in yet */
	void *priv;		 /* the backend's */
};

/* Take nb->lock for an engine call: a backend thread that takes the lock
 * in a loop lets such a caller in first (see nb_lock_yield). */
void nb_lock(struct netbuf *nb);
/* In a backend thread, after unlocking: wait until engine calls that want
 * the lock have had it (a mutex is not fair). */
void nb_lock_yield(struct netbuf *nb);

/* After held bytes changed (lock held): track the high-water mark and
 * signal the event fd when they pass half the bound (re-armed when they
 * fall back to half or less). */
void nb_held_changed(struct netbuf *nb);

#endif /* NETBUF_PRIV_H */
