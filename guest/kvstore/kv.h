/* SPDX-License-Identifier: MIT */
/*
 * kv.h - the kvstore's command executor: Redis commands over the store,
 * logged to the write-ahead log, replies in RESP.
 *
 * A client is two buffers: requests in, replies out.  kv_run executes
 * the complete requests a client has buffered; every write appends its
 * log entry (kvlog) before it changes the store.  Nothing is durable
 * until kv_commit: the caller runs any number of clients, then commits
 * once (group commit) and only then releases the replies produced
 * before it.  The log's payload formats (KVLOG_SET, KVLOG_DEL) are
 * defined here and in docs/kvstore.md.  Single-threaded.
 */
#ifndef KV_H
#define KV_H

#include "kvlog.h"
#include "resp.h"
#include "store.h"

struct kv {
	/* Read-only for users. */
	struct kv_store store;
	uint64_t acked;	   /* writes committed by kv_commit */
	uint64_t batch;	   /* writes logged since the last kv_commit */
	uint64_t replayed; /* log entries applied by kv_apply */
	int io_err;	   /* a log write failed: acknowledge nothing more */
	uint64_t net_moves; /* kept by the caller: times the VM was resumed
			     * elsewhere (FTSTATS) */
	/* Private. */
	struct kvlog *log;
	struct kvmem *mem;
	struct resp_req req;
	bool pick[RESP_ARGS_MAX];     /* DEL: arguments to delete */
	uint64_t hash[RESP_ARGS_MAX]; /* DEL: their hashes */
};

struct kv_client {
	struct kv_buf in;  /* received bytes not yet executed */
	struct kv_buf out; /* replies not yet sent */
	bool closing;	   /* protocol error or QUIT: execute nothing more,
			    * close once `out` is sent */
};

/*
 * Set up `kv` over an empty store (see kv_store_init for mem, buckets,
 * nbuckets, seed) and `log`, which the caller opens with kv_apply as
 * the replay function and `kv` as its context.  Returns 0 or -EINVAL.
 */
int kv_init(struct kv *kv, struct kvmem *mem, void *buckets, size_t nbuckets,
	    uint64_t seed, struct kvlog *log);

/* kvlog_apply_fn for kvlog_open: apply one replayed entry to kv's store.
 * Returns 0, -EBADMSG (malformed payload) or -ENOMEM. */
int kv_apply(void *kv, unsigned int type, const uint8_t *payload, uint32_t len);

/* Set up an empty client whose buffers use `mem`. */
void kv_client_init(struct kv_client *c, struct kvmem *mem);

/* Free the client's buffers. */
void kv_client_free(struct kv_client *c);

/*
 * Execute the complete requests at the start of c->in, appending their
 * replies to c->out, until none is left, c->out holds `out_high` bytes
 * or more, the client is closing, a buffer ran out of memory or the log
 * failed (kv->io_err).  A malformed request gets Redis's "-ERR Protocol
 * error: ..." and sets c->closing.  Consumed input is dropped from
 * c->in.  Returns the number of commands executed.
 */
size_t kv_run(struct kv *kv, struct kv_client *c, size_t out_high);

/*
 * Make the writes of every kv_run since the last commit durable.  Returns
 * 0 (the replies may go out now) or the log's error, which also lands in
 * kv->io_err: then no reply produced since the last commit may be sent.
 */
int kv_commit(struct kv *kv);

#endif /* KV_H */
