/* SPDX-License-Identifier: MIT */
/*
 * ckpt.h - checkpoint replication (Remus), generic over struct hv_ops.
 *
 * Primary (struct ckpt, ckpt_run): a pre-copy to the backup (mig_presync),
 * then epochs, one stream (docs/stream-format.md, checkpoint streams):
 *
 *   run the guest for the interval
 *   fetch the dirty set and, if large, copy it into a staging buffer
 *   while the guest runs on
 *   pause; fetch and clear the dirty set; copy the dirty pages (those
 *   copied before and dirty again, and the rest) into the staging buffer;
 *   save the vCPUs and devices; seal the epoch's network output (netbuf)
 *   and disk writes (diskrep); resume                          <- the pause
 *   send the epoch (CKPT_BEGIN, pages as xor deltas against the last sent
 *   version where that is smaller, disk writes, vCPUs, devices, CKPT_END)
 *   in the background while the guest runs on, speculatively
 *   wait for the backup's ack; release the epoch's output
 *
 * Backpressure: one epoch in flight.  When the ack of epoch N has not
 * come when epoch N+1 is due, the engine waits for it: epoch N+1 is
 * stretched (the guest runs on, its output held) rather than a second
 * epoch queued (docs/checkpoint.md says why).  A held-output or disk-log
 * buffer past half full makes the next epoch start at once.
 *
 * Backup (ckpt_recv): keeps a full replica of RAM, vCPUs, devices and
 * disks; stages each epoch and applies it only when its CKPT_END arrives
 * and everything validated; acks; discards a partial epoch.
 *
 * On the connection, after each CKPT_END the backup answers with a
 * struct ckpt_ack (CKPT_MSG_ACK, the epoch) or a precopy.h struct mig_msg
 * ERR with the reason (then it closes); SYNC records of the pre-copy are
 * answered as in a migration.
 */
#ifndef CKPT_H
#define CKPT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "diskrep/diskrep.h"
#include "hv.h"
#include "migrate/precopy.h"
#include "netbuf/netbuf.h"

#define CKPT_DEFAULT_INTERVAL_MS 25
#define CKPT_MIN_INTERVAL_MS 5
#define CKPT_MAX_INTERVAL_MS 1000
#define CKPT_DEFAULT_TIMEOUT_MS 3000
#define CKPT_DEFAULT_CACHE_BYTES (64ULL << 20)
#define CKPT_HIST 4096 /* epochs kept for the percentiles */

#define CKPT_MSG_ACK "FTCKACK!"
struct ckpt_ack {
	char magic[8];	/* CKPT_MSG_ACK (no NUL) */
	uint64_t epoch; /* little-endian: the epoch now applied */
};
_Static_assert(sizeof(struct ckpt_ack) == 16, "ckpt_ack is wire format");

enum ckpt_state {
	CKPT_IDLE,	/* not protecting; output flows */
	CKPT_SYNCING,	/* initial synchronisation */
	CKPT_PROTECTED, /* epochs committing */
	CKPT_LOST,	/* the backup is gone: output held, nothing sent */
	CKPT_FENCED,	/* held output discarded, the guest paused for good */
};

const char *ckpt_state_name(enum ckpt_state s);

enum ckpt_event {
	CKPT_EV_SYNC,	   /* initial synchronisation progress (pr) */
	CKPT_EV_PROTECTED, /* the first epoch committed */
};
typedef int (*ckpt_event_fn)(void *ctx, enum ckpt_event ev,
			     const struct mig_progress *pr);

struct ckpt_params {
	unsigned interval_ms; /* CKPT_MIN..MAX_INTERVAL_MS; 0: default */
	unsigned timeout_ms;  /* every channel read and write, and the ack */
	bool no_delta;	      /* send dirty pages whole (no xor deltas) */
	bool no_prestage;     /* copy every dirty page in the pause (no
			       * copy before it; for measurements) */
	uint64_t cache_bytes; /* delta cache; 0: CKPT_DEFAULT_CACHE_BYTES */
	int compress;	      /* enum stream_compress; default AUTO */
	struct netbuf_cfg netbuf;
	size_t disk_log_bytes; /* diskrep bound; 0: default */
	struct mig_params sync; /* the initial pre-copy (progress: ignored,
				 * use `event`) */
	ckpt_event_fn event;	/* may be NULL; called on ckpt_run's thread;
				 * CKPT_EV_SYNC may cancel (-errno) */
	void *event_ctx;
};

/* Fill `p` with the defaults. */
void ckpt_params_init(struct ckpt_params *p);

/* The steps of the pause, timed per epoch (ckpt_stats.phase). */
enum ckpt_phase {
	CKPT_PH_PAUSE,	/* hv pause: kick the vCPUs, wait until parked */
	CKPT_PH_FETCH,	/* fetch and clear the dirty set (first epoch of a
			 * stream: also the disk blocks and output hooks) */
	CKPT_PH_COPY,	/* copy the dirty pages into the staging buffer */
	CKPT_PH_VCPU,	/* save the vCPUs */
	CKPT_PH_DEV,	/* save the devices */
	CKPT_PH_SEAL,	/* seal the epoch's network output and disk writes */
	CKPT_PH_RESUME, /* hv unpause */
	CKPT_NR_PHASES
};

/* "pause", "fetch", "copy", "vcpu", "dev", "seal", "resume". */
const char *ckpt_phase_name(enum ckpt_phase ph);

struct ckpt_phase_stats {
	uint64_t p50_ns, p99_ns; /* over the last CKPT_HIST epochs */
	uint64_t max_ns;	 /* since ckpt_open */
};

struct ckpt_stats {
	enum ckpt_state state;
	uint64_t epoch;	    /* the last committed (acked) epoch */
	uint64_t epochs;    /* committed since ckpt_open */
	uint64_t resyncs;   /* ckpt_run calls after the first */
	uint64_t pages;	    /* page frames sent in epochs */
	uint64_t bytes;	    /* stream bytes of epochs */
	uint64_t page_bytes; /* encoded page data in epochs */
	uint64_t pages_xor, pages_lz4, pages_zero;
	uint64_t cache_hits, cache_misses;
	uint64_t stretched; /* epochs that waited for a late ack */
	uint64_t early;	    /* epochs started early (a buffer half full) */
	uint64_t last_pages, last_bytes; /* of the last epoch */
	uint64_t prestaged; /* pages copied before the pause ... */
	uint64_t recopied;  /* ... of which copied again in it */
	/* percentiles over the last CKPT_HIST epochs, nanoseconds */
	uint64_t pause_p50_ns, pause_p99_ns, pause_max_ns, pause_last_ns;
	uint64_t ack_p50_ns, ack_p99_ns; /* resume to ack */
	/* the pause by step (their sum per epoch is the pause); the max
	 * is over all epochs since ckpt_open */
	struct ckpt_phase_stats phase[CKPT_NR_PHASES];
	uint64_t since_ack_ns;		 /* now - the last ack */
	uint64_t protected_ns;		 /* when the first epoch committed */
	struct mig_stats sync; /* the last initial synchronisation */
	struct netbuf_stats net;
	struct diskrep_stats disk;
	char error[256]; /* why the last ckpt_run failed */
};

struct ckpt;

/* Prepare to protect the running domain `d` (nothing happens yet). */
int ckpt_open(const struct hv_ops *ops, struct hv_domain *d,
	      const struct ckpt_params *p, struct ckpt **out);

/*
 * Protect `d` over `c` until ckpt_stop() or a failure; blocks.  The
 * output hooks are installed at the first epoch's pause.  Returns
 *   0       ckpt_stop: END was sent after the epoch in flight committed;
 *           state CKPT_IDLE again, the output released, hooks removed;
 *   -errno  the initial synchronisation failed (state as before: IDLE,
 *           or LOST for a resync), or the backup was lost after it (state
 *           LOST: dirty logging off, the output of uncommitted epochs held
 *           - the guest runs on and stalls once the buffer is full), with
 *           the reason in the stats' error.
 * After a failure the caller decides: ckpt_run again on a new channel
 * (resync: the held output is released when its first epoch commits),
 * ckpt_unprotect (release it and run unprotected) or ckpt_fence.
 */
int ckpt_run(struct ckpt *ck, struct chan *c);

/* Any thread: make ckpt_run end protection cleanly and return 0. */
void ckpt_stop(struct ckpt *ck);

/* Not running: release the held output, remove the hooks; IDLE. */
int ckpt_unprotect(struct ckpt *ck);

/* Not running: discard the held output and pause the guest; FENCED. */
int ckpt_fence(struct ckpt *ck);

/* Any thread. */
void ckpt_get_stats(struct ckpt *ck, struct ckpt_stats *st);

/* Not running: unprotect (releasing held output) and free. */
void ckpt_close(struct ckpt *ck);

/* ---- backup ---- */

/* The backup's replica across streams; the caller zeroes it, then calls
 * ckpt_replica_init.  Fields under `lock`. */
struct ckpt_replica {
	pthread_mutex_t lock;
	struct hv_domain *d; /* the replica (paused), or NULL */
	bool complete;	     /* d holds a committed epoch: it can run */
	uint64_t epoch;	     /* the last committed */
	uint64_t epochs;     /* committed over the current stream */
	uint64_t streams;    /* streams begun */
	uint64_t bytes;	     /* received over the current stream */
	uint64_t commit_ns;  /* CLOCK_MONOTONIC of the last commit */
	uint64_t apply_last_ns, apply_max_ns; /* commit durations */
	uint64_t discarded;  /* partial epochs thrown away */
	char msg[512];	     /* why the last stream ended badly */
};

void ckpt_replica_init(struct ckpt_replica *rp);
/* Destroy the replica's domain, if any. */
void ckpt_replica_fini(struct ckpt_replica *rp, const struct hv_ops *ops);

/* Create an empty domain shaped like `info` for a new replica (the
 * backup prepares a zeroed disk image first).  0 or -errno. */
typedef int (*ckpt_create_fn)(void *ctx, const struct hv_dom_info *info,
			      struct hv_domain **out);

/*
 * Receive one checkpoint stream from `c` into *rp; blocks until it ends.
 * The DOMAIN record replaces the previous replica (destroyed) with a new
 * one from create(); the pre-copy fills it; each epoch is staged and
 * applied atomically when its CKPT_END validates, then acked.  Returns
 *   0       END: the primary stopped protecting; the replica is dropped;
 *   -errno  the stream failed (dead primary, cut link, corrupt or
 *           truncated epoch: an ERR with the reason is sent if the channel
 *           still works); the epoch in progress is discarded and the last
 *           committed one stays (rp->complete) for a failover; rp->msg
 *           says why.
 * Every read waits at most timeout_ms (0: CKPT_DEFAULT_TIMEOUT_MS).
 */
int ckpt_recv(const struct hv_ops *ops, struct chan *c, unsigned timeout_ms,
	      ckpt_create_fn create, void *create_ctx, struct ckpt_replica *rp);

#endif /* CKPT_H */
