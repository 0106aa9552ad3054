// SPDX-License-Identifier: MIT
/*
 * netbuf_inproc.c - the in-process backend: the VMM's TX hook copies each
 * guest frame into a bounded byte ring here; releases put them on the TAP
 * with hv_ops.net_tx, in order.
 *
 * The ring holds records {u32 len, u32 nic, u64 seq, data} padded to 8
 * bytes; a record that does not fit before the end starts again at 0
 * behind a wrap marker (len = UINT32_MAX, or no room for a header at
 * all).  Frames are numbered (seq) as they are taken; a sealed epoch is
 * "every frame with seq < mark".  The hook (producer, vCPU thread) writes
 * only into free space and the release (consumer, one engine thread)
 * reads only between tail and head, so the consumer sends without the
 * lock and takes it per frame only to move the tail: a long release never
 * blocks the guest for longer than one frame's bookkeeping.
 *
 * Bound: at most max_bytes of frame data are held; a frame that would pass
 * it is refused with -EAGAIN (the guest gets FT_EAGAIN and retries: a
 * stall, counted).  The ring has twice that room plus a wrap's worth, so
 * the byte count is what refuses for every frame of 28 bytes or more
 * (guest stacks pad to 60); a flood of smaller ones fills the ring first,
 * which refuses the same way.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "netbuf_priv.h"

#define REC_HDR 16u
#define REC_WRAP UINT32_MAX
#define FRAME_MAX 65535u	     /* any hv backend's frames fit */
#define TX_TRIES 20		     /* net_tx -EAGAIN: retries ... */
#define TX_RETRY_NS (50 * 1000L) /* ... this far apart (1 ms in all) */

struct rec {
	uint32_t len;
	uint32_t nic;
	uint64_t seq;
};
_Static_assert(sizeof(struct rec) == REC_HDR, "record header");

struct inproc {
	uint8_t *ring;
	size_t cap;
	size_t head, tail, used;   /* lock */
	uint64_t next_seq;	   /* lock: seq of the next frame taken */
	uint64_t unsealed_frames;  /* lock: taken since the last seal */
	uint64_t unsealed_bytes;   /* lock */
	bool draining;		   /* lock: release_all: refuse frames */
	struct nb_epochs epochs;   /* lock */
};

static size_t rec_size(size_t len)
{
	return (REC_HDR + len + 7) & ~(size_t)7;
}

static struct rec *rec_at(struct inproc *ip, size_t pos)
{
	return (struct rec *)(ip->ring + pos);
}

/* Whether the consumer must skip from `pos` to 0. */
static bool wraps_at(struct inproc *ip, size_t pos)
{
	return ip->cap - pos < REC_HDR || rec_at(ip, pos)->len == REC_WRAP;
}

/*
 * The invariant checker (lock held): counters against the ring's
 * geometry and the epoch FIFO; with nb->check, also a walk of every
 * record (sequence numbers consecutive, sizes adding up).
 */
static int inproc_check(struct netbuf *nb, const char *where)
{
	struct inproc *ip = nb->priv;
	const struct netbuf_stats *st = &nb->st;
	uint64_t sealed = 0;
	const char *what = NULL;

	for (size_t i = 0; i < ip->epochs.len; i++)
		sealed += ip->epochs.v[(ip->epochs.head + i) %
				       ip->epochs.cap].frames;
	if (ip->used > ip->cap || ip->head >= ip->cap || ip->tail >= ip->cap)
		what = "ring positions out of range";
	else if (!ip->used != !st->frames_held)
		what = "ring use and held frames disagree";
	else if (st->bytes_held > nb->max_bytes + FRAME_MAX)
		what = "held bytes beyond the bound";
	else if (sealed + ip->unsealed_frames != st->frames_held)
		what = "epoch frame counts do not add up to the held frames";
	else if (ip->epochs.len &&
		 ip->epochs.v[(ip->epochs.head + ip->epochs.len - 1) %
			      ip->epochs.cap].mark > ip->next_seq)
		what = "an epoch ends after the last frame taken";
	if (!what && nb->check && ip->used) {
		size_t pos = ip->tail, left = ip->used;
		uint64_t seq = rec_at(ip, pos)->seq, n = 0, bytes = 0;

		if (wraps_at(ip, pos))
			seq = rec_at(ip, 0)->seq;
		while (left && !what) {
			size_t sz;

			if (wraps_at(ip, pos)) {
				if (left < ip->cap - pos) {
					what = "wrap beyond the used bytes";
					break;
				}
				left -= ip->cap - pos;
				pos = 0;
				continue;
			}
			sz = rec_size(rec_at(ip, pos)->len);
			if (rec_at(ip, pos)->seq != seq + n || sz > left)
				what = "records out of sequence or overrunning";
			bytes += rec_at(ip, pos)->len;
			n++;
			left -= sz;
			pos = (pos + sz) % ip->cap;
		}
		if (!what && (n != st->frames_held || bytes != st->bytes_held ||
			      seq + n != ip->next_seq || pos != ip->head))
			what = "a walk of the ring disagrees with the counters";
	}
	if (what) {
		log_err("netbuf in-process: invariant broken after %s: %s "
			"(held %llu frames, %llu bytes; ring used %zu of %zu)",
			where, what, (unsigned long long)st->frames_held,
			(unsigned long long)st->bytes_held, ip->used, ip->cap);
		return -EIO;
	}
	return nb_epochs_check(&ip->epochs, "in-process");
}

/* hv_net_tx_fn, on the vCPU thread. */
static int inproc_hook(void *ctx, unsigned nic, const void *frame, size_t len)
{
	struct netbuf *nb = ctx;
	struct inproc *ip = nb->priv;
	size_t need = rec_size(len), waste = 0;
	struct rec *r;
	int err = 0;

	pthread_mutex_lock(&nb->lock);
	if (len > FRAME_MAX) { /* no hv backend sends these */
		nb->st.dropped++;
		goto out;
	}
	if (nb->passthrough) {
		/* Not protected now: straight out, as without the hook. */
		if (nb->ops->net_tx(nb->d, nic, frame, len)) {
			nb->st.dropped++;
		} else {
			nb->st.frames_released++;
			nb->st.bytes_released += len;
		}
		goto out;
	}
	if (ip->draining) {
		err = -EAGAIN;
		goto out;
	}
	if (ip->cap - ip->head < need)
		waste = ip->cap - ip->head;
	if ((nb->st.bytes_held && nb->st.bytes_held + len > nb->max_bytes) ||
	    ip->used + waste + need > ip->cap) {
		nb->st.stalls++;
		err = -EAGAIN;
		goto out;
	}
	if (waste) {
		if (waste >= REC_HDR)
			rec_at(ip, ip->head)->len = REC_WRAP;
		ip->used += waste;
		ip->head = 0;
	}
	r = rec_at(ip, ip->head);
	*r = (struct rec){ .len = (uint32_t)len, .nic = nic,
			   .seq = ip->next_seq++ };
	memcpy(r + 1, frame, len);
	ip->head = (ip->head + need) % ip->cap;
	ip->used += need;
	ip->unsealed_frames++;
	ip->unsealed_bytes += len;
	nb->st.frames_held++;
	nb->st.bytes_held += len;
	nb_held_changed(nb);
out:
	pthread_mutex_unlock(&nb->lock);
	return err;
}

/* Put one frame on the wire: retry a full TAP queue briefly. */
static int send_frame(struct netbuf *nb, const struct rec *r)
{
	struct timespec ts = { .tv_nsec = TX_RETRY_NS };
	int err;

	for (int i = 0;; i++) {
		err = nb->ops->net_tx(nb->d, r->nic, r + 1, r->len);
		if (err != -EAGAIN || i == TX_TRIES)
			return err;
		nanosleep(&ts, NULL);
	}
}

#define FLUSH_BATCH 32 /* frames sent per lock round trip */

/*
 * Send (or, `discard`, throw away) every held frame with seq < limit,
 * oldest first, FLUSH_BATCH at a time: the lock is taken to find them and
 * again to free their space, never while sending (the producer writes
 * only outside [tail, head), the engine thread is the only consumer).
 */
static void flush(struct netbuf *nb, uint64_t limit, bool discard)
{
	struct inproc *ip = nb->priv;
	struct rec *batch[FLUSH_BATCH];
	uint64_t dropped = 0;
	int first_err = 0;

	pthread_mutex_lock(&nb->lock);
	for (;;) {
		size_t pos = ip->tail, left = ip->used, end;
		unsigned n = 0;

		while (n < FLUSH_BATCH && left) {
			struct rec *r;
			size_t sz;

			if (wraps_at(ip, pos)) {
				left -= ip->cap - pos;
				pos = 0;
				continue;
			}
			r = rec_at(ip, pos);
			if (r->seq >= limit)
				break;
			sz = rec_size(r->len);
			batch[n++] = r;
			left -= sz;
			pos = (pos + sz) % ip->cap;
		}
		if (!n)
			break;
		pthread_mutex_unlock(&nb->lock);
		for (unsigned i = 0; i < n; i++) {
			int err = discard ? 0 : send_frame(nb, batch[i]);

			if (err) {
				dropped++;
				first_err = first_err ? first_err : err;
				batch[i]->nic = UINT32_MAX; /* mark: dropped */
			}
		}
		pthread_mutex_lock(&nb->lock);
		for (unsigned i = 0; i < n; i++) {
			struct rec *r = batch[i];

			if (discard) {
				nb->st.discarded++;
			} else if (r->nic == UINT32_MAX) {
				nb->st.dropped++;
			} else {
				nb->st.frames_released++;
				nb->st.bytes_released += r->len;
			}
			nb->st.frames_held--;
			nb->st.bytes_held -= r->len;
		}
		/* Free the space from tail to just past the batch's last. */
		end = (size_t)((uint8_t *)batch[n - 1] - ip->ring) +
		      rec_size(batch[n - 1]->len);
		ip->used -= end > ip->tail ? end - ip->tail
					   : ip->cap - ip->tail + end;
		ip->tail = end % ip->cap;
		if (!ip->used)
			ip->head = ip->tail = 0;
		nb_held_changed(nb);
	}
	pthread_mutex_unlock(&nb->lock);
	if (dropped)
		log_warn("netbuf in-process: %llu frames dropped on the way "
			 "out: %s%s", (unsigned long long)dropped,
			 strerror(-first_err),
			 first_err == -EAGAIN ? " (the TAP queue stayed full "
						"for 1 ms)" : "");
}

static int inproc_open(struct netbuf *nb)
{
	struct inproc *ip;
	int err;

	if (!nb->ops->net_tx_hook || !nb->ops->net_tx) {
		log_err("netbuf in-process: the %s backend has no network "
			"output hook", nb->ops->name);
		return -EOPNOTSUPP;
	}
	ip = calloc(1, sizeof(*ip));
	if (!ip)
		return -ENOMEM;
	ip->cap = 2 * nb->max_bytes + 2 * rec_size(FRAME_MAX);
	ip->ring = malloc(ip->cap);
	if (!ip->ring) {
		log_err("netbuf in-process: %zu bytes for the buffer: %s",
			ip->cap, strerror(ENOMEM));
		free(ip);
		return -ENOMEM;
	}
	nb->priv = ip;
	err = nb->ops->net_tx_hook(nb->d, inproc_hook, nb);
	if (err) {
		if (err == -ENOENT) /* the caller may not mind */
			log_info("netbuf in-process: the domain has no NIC");
		else
			log_err("netbuf in-process: installing the TX hook: %s",
				strerror(-err));
		free(ip->ring);
		free(ip);
		nb->priv = NULL;
	}
	return err;
}

static int inproc_seal(struct netbuf *nb, uint64_t epoch)
{
	struct inproc *ip = nb->priv;
	struct nb_epoch e;
	int err;

	pthread_mutex_lock(&nb->lock);
	e = (struct nb_epoch){ .epoch = epoch, .mark = ip->next_seq,
			       .frames = ip->unsealed_frames,
			       .bytes = ip->unsealed_bytes };
	err = nb_epochs_push(&ip->epochs, &e);
	if (!err) {
		ip->unsealed_frames = ip->unsealed_bytes = 0;
		nb->passthrough = false;
		err = inproc_check(nb, "seal");
	}
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int inproc_release(struct netbuf *nb, uint64_t epoch)
{
	struct inproc *ip = nb->priv;
	struct nb_epoch sum;
	size_t n;
	int err;

	pthread_mutex_lock(&nb->lock);
	n = nb_epochs_pop(&ip->epochs, epoch, &sum);
	pthread_mutex_unlock(&nb->lock);
	if (n)
		flush(nb, sum.mark, false);
	pthread_mutex_lock(&nb->lock);
	err = inproc_check(nb, "release");
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int inproc_release_all(struct netbuf *nb)
{
	struct inproc *ip = nb->priv;
	struct nb_epoch sum;
	int err;

	/* Refuse new frames while the ring drains, so that it does end and
	 * nothing overtakes what it holds; then pass through. */
	pthread_mutex_lock(&nb->lock);
	ip->draining = true;
	nb_epochs_pop(&ip->epochs, UINT64_MAX, &sum);
	ip->unsealed_frames = ip->unsealed_bytes = 0;
	pthread_mutex_unlock(&nb->lock);
	flush(nb, UINT64_MAX, false);
	pthread_mutex_lock(&nb->lock);
	ip->draining = false;
	nb->passthrough = true;
	err = inproc_check(nb, "release_all");
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static void inproc_close(struct netbuf *nb, bool release)
{
	struct inproc *ip = nb->priv;
	bool paused = nb->ops->pause && nb->ops->pause(nb->d) == 0;

	/* Paused, the guest sends nothing: what is held goes (or is
	 * discarded) before anything it sends without the hook. */
	if (!paused)
		log_warn("netbuf in-process: closing without a pause: frames "
			 "sent meanwhile may overtake held ones");
	nb->ops->net_tx_hook(nb->d, NULL, NULL);
	flush(nb, UINT64_MAX, !release);
	if (paused)
		nb->ops->unpause(nb->d);
	nb_epochs_free(&ip->epochs);
	free(ip->ring);
	free(ip);
	nb->priv = NULL;
}

static bool inproc_available(char *why, size_t len)
{
	return true; /* if the hv backend has the hook: netbuf_open says */
}

const struct nb_backend nb_inproc = {
	.open = inproc_open,
	.seal = inproc_seal,
	.release = inproc_release,
	.release_all = inproc_release_all,
	.close = inproc_close,
	.available = inproc_available,
};
