/* SPDX-License-Identifier: MIT */
/*
 * diskrep.c - disk replication for checkpointing (see diskrep.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "diskrep.h"
#include "log.h"
#include "migrate/snapshot.h"
#include "stream_state.h"

/* One captured or staged write; its data follows, padded to 8 bytes. */
struct wr_hdr {
	uint32_t disk;
	uint32_t len;
	uint64_t off;
	uint32_t zero; /* stage only: a zeroed range, no data */
	uint32_t pad;
};

struct wlog {
	unsigned char *buf;
	size_t len, cap;
	uint32_t count;
	uint64_t bytes;
};

struct diskrep {
	const struct hv_ops *ops;
	struct hv_domain *d;
	pthread_mutex_t lock;
	struct wlog open;   /* lock: the epoch in progress (the hook's) */
	struct wlog sealed; /* the engine's: sealed, not yet released */
	bool have_sealed;
	uint64_t epoch;	    /* of `sealed` */
	size_t max_bytes;
	bool signalled;	    /* lock: event fd written since the last seal */
	int efd;
	struct diskrep_stats st; /* lock */
};

static size_t rec_size(uint32_t len)
{
	return sizeof(struct wr_hdr) + ((len + 7u) & ~7u);
}

/* Append a write to `l`; data NULL: a zeroed range (no bytes kept). */
static int wlog_add(struct wlog *l, uint32_t disk, uint64_t off, uint32_t len,
		    const void *data)
{
	size_t need = rec_size(data ? len : 0);
	struct wr_hdr h = {.disk = disk, .len = len, .off = off,
			   .zero = !data};

	if (l->len + need > l->cap) {
		size_t cap = l->cap ? l->cap : 1u << 20;
		unsigned char *b;

		while (cap < l->len + need)
			cap *= 2;
		b = realloc(l->buf, cap);
		if (!b)
			return -ENOMEM;
		l->buf = b;
		l->cap = cap;
	}
	memcpy(l->buf + l->len, &h, sizeof(h));
	if (data)
		memcpy(l->buf + l->len + sizeof(h), data, len);
	l->len += need;
	l->count++;
	l->bytes += len;
	return 0;
}

static void wlog_clear(struct wlog *l)
{
	l->len = 0;
	l->count = 0;
	l->bytes = 0;
	/* Keep the memory for the next epoch, unless it ballooned. */
	if (l->cap > (16u << 20)) {
		free(l->buf);
		l->buf = NULL;
		l->cap = 0;
	}
}

/* Walk `l`: fn(ctx, hdr, data) for each write, stopping at an error. */
static int wlog_walk(const struct wlog *l,
		     int (*fn)(void *ctx, const struct wr_hdr *h,
			       const void *data),
		     void *ctx)
{
	size_t at = 0;

	while (at < l->len) {
		struct wr_hdr h;
		int err;

		memcpy(&h, l->buf + at, sizeof(h));
		err = fn(ctx, &h, h.zero ? NULL : l->buf + at + sizeof(h));
		if (err)
			return err;
		at += rec_size(h.zero ? 0 : h.len);
	}
	return 0;
}

/* hv_disk_wr_fn, on the vCPU thread. */
static int capture(void *ctx, unsigned disk, uint64_t off, const void *data,
		   size_t len)
{
	struct diskrep *dr = ctx;
	uint64_t held;
	int err;

	if (len > FT_DISK_WRITE_MAX)
		return -EINVAL; /* the guest ABI caps a write at 1 MiB */
	pthread_mutex_lock(&dr->lock);
	held = dr->open.bytes + dr->sealed.bytes;
	if (held + len > dr->max_bytes && (dr->open.count || dr->sealed.count)) {
		dr->st.stalls++;
		err = -EAGAIN;
	} else {
		err = wlog_add(&dr->open, disk, off, (uint32_t)len, data);
	}
	if (!err) {
		held += len;
		dr->st.writes++;
		dr->st.bytes += len;
		dr->st.held_bytes = held;
		if (held > dr->st.max_held_bytes)
			dr->st.max_held_bytes = held;
	}
	if ((err == -EAGAIN || held > dr->max_bytes / 2) && !dr->signalled) {
		uint64_t one = 1;

		dr->signalled = true;
		if (write(dr->efd, &one, sizeof(one)) < 0)
			log_warn("diskrep: event: %s", strerror(errno));
	}
	pthread_mutex_unlock(&dr->lock);
	return err == -ENOMEM ? -EAGAIN : err; /* no memory: stall, retry */
}

int diskrep_open(const struct hv_ops *ops, struct hv_domain *d,
		 size_t max_bytes, struct diskrep **out)
{
	struct diskrep *dr;
	int err;

	if (!ops->disk_write_hook) {
		log_err("diskrep: the %s backend cannot capture disk writes",
			ops->name);
		return -EOPNOTSUPP;
	}
	dr = calloc(1, sizeof(*dr));
	if (!dr)
		return -ENOMEM;
	dr->ops = ops;
	dr->d = d;
	dr->max_bytes = max_bytes ? max_bytes : DISKREP_DEFAULT_BYTES;
	pthread_mutex_init(&dr->lock, NULL);
	dr->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (dr->efd < 0) {
		err = -errno;
		free(dr);
		return err;
	}
	err = ops->disk_write_hook(d, capture, dr);
	if (err) {
		log_err("diskrep: cannot install the disk write hook: %s",
			strerror(-err));
		close(dr->efd);
		free(dr);
		return err;
	}
	*out = dr;
	return 0;
}

int diskrep_seal(struct diskrep *dr, uint64_t epoch)
{
	struct wlog t;
	uint64_t junk;

	if (dr->have_sealed)
		return -EBUSY;
	pthread_mutex_lock(&dr->lock);
	t = dr->sealed; /* empty, its memory reused */
	dr->sealed = dr->open;
	dr->open = t;
	dr->signalled = false;
	pthread_mutex_unlock(&dr->lock);
	if (read(dr->efd, &junk, sizeof(junk)) < 0 && errno != EAGAIN)
		log_warn("diskrep: event: %s", strerror(errno));
	dr->have_sealed = true;
	dr->epoch = epoch;
	return 0;
}

struct send_ctx {
	struct stream_writer *w;
	uint64_t epoch;
};

static int send_one(void *ctx, const struct wr_hdr *h, const void *data)
{
	struct send_ctx *sc = ctx;

	return stream_write_disk(sc->w, h->disk, h->off, h->len, data,
				 sc->epoch);
}

int diskrep_stage_send(const struct diskrep_stage *st,
		       struct stream_writer *w, uint64_t epoch)
{
	struct wlog l = {.buf = st->buf, .len = st->len};
	struct send_ctx sc = {.w = w, .epoch = epoch};

	return wlog_walk(&l, send_one, &sc);
}

int diskrep_send(struct diskrep *dr, struct stream_writer *w)
{
	struct send_ctx sc = {.w = w, .epoch = dr->epoch};

	if (!dr->have_sealed)
		return -EINVAL;
	return wlog_walk(&dr->sealed, send_one, &sc);
}

void diskrep_release(struct diskrep *dr)
{
	pthread_mutex_lock(&dr->lock);
	wlog_clear(&dr->sealed);
	dr->st.held_bytes = dr->open.bytes;
	pthread_mutex_unlock(&dr->lock);
	dr->have_sealed = false;
}

int diskrep_event_fd(struct diskrep *dr)
{
	return dr->efd;
}

void diskrep_get_stats(struct diskrep *dr, struct diskrep_stats *st)
{
	pthread_mutex_lock(&dr->lock);
	*st = dr->st;
	pthread_mutex_unlock(&dr->lock);
}

void diskrep_close(struct diskrep *dr)
{
	if (!dr)
		return;
	dr->ops->disk_write_hook(dr->d, NULL, NULL);
	free(dr->open.buf);
	free(dr->sealed.buf);
	close(dr->efd);
	pthread_mutex_destroy(&dr->lock);
	free(dr);
}

/* ---- backup ---- */

void diskrep_stage_init(struct diskrep_stage *st)
{
	memset(st, 0, sizeof(*st));
}

void diskrep_stage_fini(struct diskrep_stage *st)
{
	free(st->buf);
	memset(st, 0, sizeof(*st));
}

int diskrep_stage_add(struct diskrep_stage *st, uint32_t disk, uint64_t off,
		      uint32_t len, const void *data)
{
	struct wlog l = {.buf = st->buf, .len = st->len, .cap = st->cap,
			 .count = st->count, .bytes = st->bytes};
	int err = wlog_add(&l, disk, off, len, data);

	st->buf = l.buf;
	st->len = l.len;
	st->cap = l.cap;
	st->count = l.count;
	st->bytes = l.bytes;
	return err;
}

struct apply_ctx {
	const struct hv_ops *ops;
	struct hv_domain *d;
};

static int apply_one(void *ctx, const struct wr_hdr *h, const void *data)
{
	struct apply_ctx *ac = ctx;
	int err = snap_disk_write(ac->ops, ac->d, h->disk, h->off, h->len,
				  data);

	if (err)
		log_err("diskrep: disk %u: writing %u bytes at %llu: %s",
			h->disk, h->len, (unsigned long long)h->off,
			strerror(-err));
	return err;
}

int diskrep_stage_apply(struct diskrep_stage *st, const struct hv_ops *ops,
			struct hv_domain *d)
{
	struct wlog l = {.buf = st->buf, .len = st->len};
	struct apply_ctx ac = {.ops = ops, .d = d};
	int err = wlog_walk(&l, apply_one, &ac);

	diskrep_stage_clear(st);
	return err;
}

void diskrep_writeback(const struct hv_ops *ops, struct hv_domain *d)
{
	static bool warned;
	uint64_t size;

	if (!ops->disk_writeback || !ops->disk_info)
		return;
	for (unsigned i = 0; ops->disk_info(d, i, &size) == 0; i++) {
		int err = ops->disk_writeback(d, i);

		if (err && !warned) {
			warned = true;
			log_warn("diskrep: disk %u: cannot start write-back: "
				 "%s (the first flush after a failover will "
				 "take longer)",
				 i, strerror(-err));
		}
	}
}

void diskrep_stage_clear(struct diskrep_stage *st)
{
	struct wlog l = {.buf = st->buf, .cap = st->cap};

	wlog_clear(&l);
	st->buf = l.buf;
	st->cap = l.cap;
	st->len = 0;
	st->count = 0;
	st->bytes = 0;
}
