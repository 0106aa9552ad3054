/* SPDX-License-Identifier: MIT */
/*
 * precopy.h - pre-copy live migration (Clark et al.; Xen's xg_sr_save.c),
 * generic over struct hv_ops.
 *
 * Sender (mig_send): header with FT_STREAM_F_LIVE, DOMAIN, then with dirty
 * logging on
 *   round 0   every non-zero page and every non-zero disk block (the
 *             destination's RAM and disks start zero);
 *   round k   the pages and disk blocks written during round k-1, zero
 *             ones included (as ZERO: the destination holds an older copy);
 * each live round paced by a token bucket (p->start_rate, rising with the
 * observed dirty rate up to p->max_rate; 0 and 0: unpaced).  After every
 * round a policy (p->policy, default mig_default_policy) decides whether
 * to go on, stop and copy, or abort.  Auto-converge (p->auto_converge,
 * on by default): while the guest dirties more than half of what a round
 * sends, its vCPUs are throttled in steps (20%, then +10% a round, at most
 * 99%) through ops->throttle.  Stop-and-copy: pause, final dirty fetch,
 * those pages and blocks (unpaced), the vCPUs, the devices, END.
 *
 * Commit (the source must never resume a VM the destination runs, and
 * the destination must never run one the source resumes):
 *   receiver -> READY   the whole stream validated, the VM built (paused)
 *            -> ERR     or why it failed (errno and a sentence)
 *   sender   -> GO      after READY; from here on the source never resumes
 *                       on its own
 *   receiver -> RUN     the VM runs on the destination (or ERR: it could
 *                       not start it and has destroyed it)
 * Before GO any failure resumes the source.  After GO, RUN means success
 * and ERR means the source may resume; silence (timeout, closed
 * connection) leaves the outcome unknown: the receiver may have seen GO.
 * mig_send then returns -EINPROGRESS with the source still paused, and
 * whoever runs it must find out from the destination (ftd asks the peer
 * ftd) and then destroy or resume the source.
 *
 * Every read and write on the channel waits at most p->timeout_ms
 * (chan_set_timeout), so a dead peer or a cut link is an error in bounded
 * time on both sides.
 */
#ifndef PRECOPY_H
#define PRECOPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "hv.h"

#define MIG_DEFAULT_DOWNTIME_NS (30ULL * 1000000)
#define MIG_DEFAULT_MAX_ROUNDS 30
#define MIG_DEFAULT_TIMEOUT_MS 10000
#define MIG_ROUNDS_MAX 64 /* live rounds kept in mig_stats; caps max_rounds */
#define MIG_THROTTLE_INITIAL 20
#define MIG_THROTTLE_STEP 10
#define MIG_THROTTLE_MAX 99

/* What the policy decides after a live round. */
enum mig_decision {
	MIG_CONTINUE,      /* send the dirty set in another live round */
	MIG_STOP_AND_COPY, /* pause and send the rest */
	MIG_ABORT,         /* give up: the source keeps running */
};

/* One live round (round 0 is the full copy). */
struct mig_round_stats {
	uint64_t pages;       /* page frames sent (ZERO encodings included) */
	uint64_t zero_pages;  /* of which all zero (round 0: skipped, not sent) */
	uint64_t disk_blocks; /* disk blocks sent (HV_DISK_BLOCK bytes) */
	uint64_t bytes;	      /* stream bytes written */
	uint64_t ns;	      /* wall time of the round */
	uint64_t send_ns;     /* of which spent writing (not paced sleeping) */
	uint64_t rate;	      /* token-bucket rate, bytes/s (0: unpaced) */
	uint64_t dirty;	      /* pages dirtied during the round */
	uint64_t disk_dirty;  /* disk blocks written during the round */
	unsigned throttle;    /* vCPU throttle (percent) during the round */
};

struct mig_stats {
	unsigned rounds; /* live rounds done, round 0 included */
	struct mig_round_stats round[MIG_ROUNDS_MAX];
	enum mig_decision decision; /* the policy's last answer */
	uint64_t final_pages;	    /* pages sent while paused */
	uint64_t final_blocks;	    /* disk blocks sent while paused */
	uint64_t pages;		    /* page frames sent in all */
	uint64_t disk_blocks;	    /* disk blocks sent in all */
	uint64_t bytes;		    /* all stream bytes written */
	uint64_t total_ns;	    /* mig_send start to RUN (or failure) */
	uint64_t stop_copy_ns;	    /* pause to END sent */
	uint64_t downtime_ns;	    /* pause to RUN received: an upper bound
				     * of the time the guest ran nowhere */
	uint64_t link_rate;	    /* bytes/s measured over the live rounds */
	unsigned throttle;	    /* highest throttle applied, percent */
	uint64_t pages_lz4;	    /* pages sent LZ4-compressed */
	uint64_t pages_xor;	    /* pages sent as xor-deltas */
	uint64_t cache_hits;	    /* xbzrle cache: previous version found */
	uint64_t cache_misses;
	uint64_t page_bytes;	    /* page data (after encoding) sent */
	char error[256];	    /* why it failed, for the operator */
};

/* Progress, reported by mig_send from its own thread. */
struct mig_progress {
	unsigned round;	    /* live round, or rounds done when paused */
	bool paused;	    /* in stop-and-copy */
	uint64_t sent;	    /* stream bytes so far */
	uint64_t remaining; /* estimate: bytes of this round not yet sent
			     * plus what was dirtied before it */
	uint64_t rate;	    /* bytes/s over the last interval */
	uint64_t elapsed_ns;
	unsigned throttle; /* percent */
};
/* Return 0 to go on, or -errno to cancel the migration (honoured before
 * the go: the source then resumes). */
typedef int (*mig_progress_fn)(void *ctx, const struct mig_progress *pr);

struct mig_params;

/* Decide after live round st->rounds - 1 (its stats in
 * st->round[st->rounds - 1]); `p` has its defaults filled in. */
typedef enum mig_decision (*mig_policy_fn)(void *ctx,
					   const struct mig_params *p,
					   const struct mig_stats *st);

/*
 * Parameters; mig_params_init gives the defaults.  A zero numeric field
 * also means its default, except the rates (0: no cap / unpaced).
 */
struct mig_params {
	uint64_t start_rate;  /* bytes/s of round 0; 0: max_rate */
	uint64_t max_rate;    /* bytes/s cap of every live round; 0: none */
	uint64_t downtime_ns; /* stop-and-copy target */
	unsigned max_rounds;  /* live rounds before stop-and-copy */
	bool abort_if_busy;   /* not converging: abort (else stop and copy) */
	bool auto_converge;   /* throttle a guest that outruns the link */
	unsigned timeout_ms;  /* bound on every channel read and write */
	int compress;	      /* enum stream_compress for page batches;
			       * STREAM_COMP_AUTO (the default) gets the
			       * measured link rate */
	uint64_t xbzrle_bytes; /* from round 1 on, send a re-sent page as an
				* xor-delta against the version sent before
				* when a cache of this size still holds it;
				* 0: off (the default) */
	mig_policy_fn policy; /* NULL: mig_default_policy */
	void *policy_ctx;
	mig_progress_fn progress; /* NULL: none; else about every 100 ms
				   * and after each round */
	void *progress_ctx;
};

/* The commit messages (see above), both ways: a fixed header, then
 * msg_len bytes of text (a sentence saying why, with ERR). */
#define MIG_MSG_READY "FTMIGRDY"
#define MIG_MSG_ERR   "FTMIGERR"
#define MIG_MSG_GO    "FTMIGGO!"
#define MIG_MSG_RUN   "FTMIGRUN"
#define MIG_MSG_SYNC  "FTMIGSYN" /* receiver: caught up with a SYNC record */
#define MIG_MSG_TEXT_MAX 1024
struct mig_msg {
	char magic[8];	  /* one of MIG_MSG_* (no NUL) */
	uint32_t err;	  /* little-endian positive errno with ERR, else 0 */
	uint32_t msg_len; /* little-endian, <= MIG_MSG_TEXT_MAX */
};
_Static_assert(sizeof(struct mig_msg) == 16, "mig_msg is wire format");

/* Send one commit message (MIG_MSG_*; `err` and `text` for ERR) and
 * flush.  0 or the channel's -errno.  Shared with checkpoint/. */
int mig_msg_send(struct chan *c, const char *magic, int err,
		 const char *text);

/* After sending ERR: read and drop what the sender still sends, for at
 * most 2 s or until it closes, so that it reads our ERR instead of having
 * its writes reset by a close with unread data.  Shared with checkpoint/. */
void mig_drain(struct chan *c);

/* A sentence for a channel error talking to `peer` ("destination",
 * "backup") in buf, e.g. "the backup fell silent (dead, or the link is
 * down)"; NULL for errors without one (use strerror). */
const char *mig_chan_error(int err, const char *peer, char *buf,
			   size_t len);

/* Fill `p` with the defaults (auto-converge on, default policy). */
void mig_params_init(struct mig_params *p);

/*
 * The default policy: stop and copy when what is dirty (pages and disk
 * blocks) fits p->downtime_ns at the link rate measured so far, or after
 * p->max_rounds live rounds; when the dirty set has not shrunk over the
 * last 3 rounds: go on if auto-converge can still throttle harder, else
 * abort if p->abort_if_busy, else stop and copy.
 */
enum mig_decision mig_default_policy(void *ctx, const struct mig_params *p,
				     const struct mig_stats *st);

/*
 * Migrate the running domain `d` over `c` (see above); `p` may be NULL
 * (defaults).  Fills *st (may be NULL).  Blocks for the whole migration;
 * the caller serialises other operations on `d`.  Returns
 *   0             the destination runs the domain: `d` is left paused,
 *                 dirty logging off, for the caller to destroy;
 *   -EINPROGRESS  in doubt (GO sent, no answer): `d` is left paused, the
 *                 caller must find out and then destroy or unpause it;
 *   -errno        failed, `d` runs as before (dirty logging off, throttle
 *                 0); st->error says why: -ECANCELED the policy aborted,
 *                 -ETIMEDOUT the destination fell silent, the receiver's
 *                 errno from an ERR message, the channel's or backend's.
 */
int mig_send(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	     const struct mig_params *p, struct mig_stats *st);

struct stream_writer;

/*
 * The initial synchronisation of checkpointing (checkpoint/): the live
 * rounds of a pre-copy of the running domain `d` through the caller's
 * writer `w` on `c` (header and DOMAIN already written), with dirty
 * logging turned on here, until the policy says stop and copy; then a
 * SYNC barrier.  On success the guest runs unthrottled with dirty
 * logging still on (the caller's to turn off), and pending[] (one bit per
 * page frame) and disk_pending[i] (one per HV_DISK_BLOCK of disk i, for
 * each disk ops->disk_info knows) hold what was dirtied since the last
 * round: the caller sends it in its first epoch.  On failure (-errno,
 * st->error) logging is off and the guest runs unthrottled.
 */
int mig_presync(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
		struct stream_writer *w, const struct mig_params *p,
		struct mig_stats *st, uint64_t *pending,
		uint64_t *const *disk_pending);

/* Called by mig_recv on GO with the built, paused domain: start it
 * (unpause, announce the NIC).  Return 0 or -errno. */
typedef int (*mig_start_fn)(void *ctx, struct hv_domain *d);

/*
 * Receive a migration from `c`: validate the stream as snap_restore
 * does, create the domain with ops->create(info, cfg), send READY, wait
 * for GO (at most timeout_ms; 0: MIG_DEFAULT_TIMEOUT_MS), call start()
 * and send RUN.  Returns 0 with *out owning the running domain (even if
 * RUN could not be sent: the sender resolves its doubt with the
 * destination).  On any failure before start() succeeded: sends ERR with
 * the reason if the channel still works, destroys the half-built domain,
 * leaves the reason in msg[0..len) and returns -errno.  The channel
 * stays the caller's.
 */
int mig_recv(const struct hv_ops *ops, const void *cfg, struct chan *c,
	     unsigned timeout_ms, mig_start_fn start, void *start_ctx,
	     struct hv_domain **out, char *msg, size_t len);

#endif /* PRECOPY_H */
