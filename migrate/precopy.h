/* SPDX-License-Identifier: MIT */
/*
 * precopy.h - pre-copy live migration (Clark et al.; Xen's xg_sr_save.c),
 * generic over struct hv_ops.
 *
 * Sender (mig_send): header with FT_STREAM_F_LIVE, DOMAIN, then with dirty
 * logging on
 *   round 0   every non-zero page (the destination's RAM starts zero);
 *   round k   the pages dirtied during round k-1, zero pages included (as
 *             ZERO: the destination holds an older, non-zero copy);
 * each live round paced by a token bucket whose rate starts at
 * p->start_rate and rises with the observed dirty rate, up to p->max_rate.
 * After every round a policy (p->policy, default mig_default_policy)
 * decides from the statistics whether to go on, stop and copy, or abort.
 * Stop-and-copy: pause, final dirty fetch, those pages (unpaced), the
 * vCPUs, the devices, END.  Then the sender waits for the destination's
 * verdict (struct mig_reply).  Only an OK verdict makes mig_send succeed;
 * on every failure the source is left running with dirty logging off.
 *
 * Receiver (mig_recv): the validated reading of snap_restore (a page sent
 * again overwrites the older copy, a ZERO page zeroes it), then the
 * verdict back on the same channel.
 *
 * Not implemented: auto-converge (throttling the source's vCPU when the
 * dirty rate outruns the link).  A migration that does not converge is
 * either aborted (p->abort_if_busy) or stopped and copied with a longer
 * downtime.
 *
 * Same-channel verdict: the channel must carry bytes both ways (a socket,
 * TCP or TLS connection), and the sender reads the verdict only after END,
 * so a receiver that fails early makes the sender fail on a write once
 * the receiver's side closes the connection (the sender then logs the
 * channel error, not the receiver's reason).
 */
#ifndef PRECOPY_H
#define PRECOPY_H

#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "hv.h"

#define MIG_DEFAULT_START_RATE (128ULL << 20) /* bytes/s */
#define MIG_DEFAULT_DOWNTIME_NS (30ULL * 1000000)
#define MIG_DEFAULT_MAX_ROUNDS 30
#define MIG_DEFAULT_ACK_TIMEOUT_MS 10000
#define MIG_ROUNDS_MAX 64 /* live rounds kept in mig_stats; caps max_rounds */

/* What the policy decides after a live round. */
enum mig_decision {
	MIG_CONTINUE,      /* send the dirty set in another live round */
	MIG_STOP_AND_COPY, /* pause and send the rest */
	MIG_ABORT,         /* give up: the source keeps running */
};

/* One live round (round 0 is the full copy). */
struct mig_round_stats {
	uint64_t pages;      /* page frames sent (ZERO encodings included) */
	uint64_t zero_pages; /* of which all zero (round 0: skipped, not sent) */
	uint64_t bytes;      /* stream bytes written */
	uint64_t ns;         /* wall time of the round */
	uint64_t send_ns;    /* of which spent writing (not paced sleeping) */
	uint64_t rate;       /* token-bucket rate, bytes/s (0: unpaced) */
	uint64_t dirty;      /* pages dirtied during the round: the next
			      * round's set, fetched after it */
};

struct mig_stats {
	unsigned rounds; /* live rounds done, round 0 included */
	struct mig_round_stats round[MIG_ROUNDS_MAX];
	enum mig_decision decision; /* the policy's last answer */
	uint64_t final_pages;	    /* pages sent while paused */
	uint64_t bytes;		    /* all stream bytes written */
	uint64_t total_ns;	    /* mig_send start to verdict */
	uint64_t downtime_ns;	    /* pause to END sent (without the verdict) */
	uint64_t ack_ns;	    /* END sent to verdict received */
	uint64_t link_rate;	    /* bytes/s measured over the live rounds */
};

struct mig_params;

/* Decide after live round st->rounds - 1 (its stats in
 * st->round[st->rounds - 1]); `p` has its defaults filled in. */
typedef enum mig_decision (*mig_policy_fn)(void *ctx,
					   const struct mig_params *p,
					   const struct mig_stats *st);

/*
 * Parameters; mig_params_init gives the defaults.  A zero numeric field
 * also means its default, except max_rate (0: no cap).
 */
struct mig_params {
	uint64_t start_rate;  /* bytes/s of round 0 */
	uint64_t max_rate;    /* bytes/s cap of every live round; 0: none */
	uint64_t downtime_ns; /* stop-and-copy target */
	unsigned max_rounds;  /* live rounds before stop-and-copy */
	bool abort_if_busy;   /* not converging: abort (else stop and copy) */
	unsigned ack_timeout_ms; /* wait for the verdict after END */
	/* The descriptor under the channel, polled to bound the wait for the
	 * verdict (the chan API has no timed read); -1: wait without limit. */
	int ack_fd;
	mig_policy_fn policy; /* NULL: mig_default_policy */
	void *policy_ctx;
};

/* The verdict the receiver writes back after END (or after a failure). */
#define MIG_REPLY_OK  "FTMIGOK" /* 8 bytes with the NUL */
#define MIG_REPLY_ERR "FTMIGERR" /* 8 bytes, no NUL */
struct mig_reply {
	char magic[8];	   /* MIG_REPLY_OK or MIG_REPLY_ERR */
	uint32_t err;	   /* little-endian positive errno; 0 with OK */
	uint32_t reserved; /* zero */
};
_Static_assert(sizeof(struct mig_reply) == 16, "mig_reply is wire format");

/* Fill `p` with the defaults (ack_fd -1, default policy). */
void mig_params_init(struct mig_params *p);

/*
 * The default policy: stop and copy when the dirty set fits
 * p->downtime_ns at the link rate measured so far, or after
 * p->max_rounds live rounds; when the dirty set has not shrunk over the
 * last 3 rounds, abort if p->abort_if_busy, else stop and copy.
 */
enum mig_decision mig_default_policy(void *ctx, const struct mig_params *p,
				     const struct mig_stats *st);

/*
 * Migrate the running domain `d` over `c` (see above); `p` may be NULL
 * (defaults).  Fills *st (may be NULL).  May block for the whole
 * migration; the caller serialises other operations on `d`.
 * Return 0 once the destination confirmed it built the domain: `d` is
 * then left paused, dirty logging off, for the caller to destroy.
 * Otherwise return -errno with the reason logged (-ECANCELED: the policy
 * aborted; -ETIMEDOUT: no verdict in time; -EBADMSG: a malformed
 * verdict; the receiver's errno from an error verdict; the channel's or
 * the backend's error), and `d` runs as before with dirty logging off.
 */
int mig_send(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	     const struct mig_params *p, struct mig_stats *st);

/*
 * Receive a migration from `c`: validate the stream as snap_restore does,
 * create the domain with ops->create(info, cfg), and after END write the
 * OK verdict.  On success *out owns the paused domain and 0 is returned.
 * On any error write an error verdict if the channel still works,
 * destroy the half-built domain and return -errno (logged).  The channel
 * stays the caller's.
 *
 * NOT YET SAFE TO UNPAUSE ON ITS OWN: if the OK verdict is lost, the
 * sender resumes the source while this side holds a complete copy.
 * Before this is wired into ftvm/ftd, the protocol needs a final "go"
 * from the sender after it has seen OK (and gives up its VM), and the
 * receiver must unpause only on that "go".
 */
int mig_recv(const struct hv_ops *ops, const void *cfg, struct chan *c,
	     struct hv_domain **out);

#endif /* PRECOPY_H */
