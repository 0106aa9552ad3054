// SPDX-License-Identifier: MIT
/*
 * precopy.c - pre-copy live migration over struct hv_ops (precopy.h).
 *
 * The sender keeps one dirty bitmap for RAM and one per disk.  After each
 * live round it fetches what was written meanwhile into them and asks the
 * policy; the next round (or the stop-and-copy, after one more fetch while
 * paused) sends exactly that and clears the bitmaps.  A page or block read
 * while the guest writes it is dirty again by then, so it goes out once
 * more.
 *
 * The receiver is snap_restore plus the commit messages: the stream format
 * and its validation are the same for a file and a migration.
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "migrate/precopy.h"
#include "pagecache.h"
#include "migrate/snapshot.h"
#include "stream.h"
#include "stream_state.h"

/* Pages per map/write: small enough for smooth pacing (1 MiB). */
#define MIG_BATCH 256u
/* Token-bucket depth: this much time's worth of bytes may go in a burst. */
#define BUCKET_NS (10ULL * 1000000)
#define NSEC_PER_SEC 1000000000ULL
#define PROGRESS_NS (100ULL * 1000000)
/* Stream bytes per page sent raw: the data and its descriptor. */
#define PAGE_WIRE (FT_PAGE_SIZE + sizeof(struct ft_page_desc))
#define BLOCK_WIRE (HV_DISK_BLOCK + sizeof(struct ft_rec_disk_write) + 16)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

void mig_params_init(struct mig_params *p)
{
	*p = (struct mig_params){
		.downtime_ns = MIG_DEFAULT_DOWNTIME_NS,
		.max_rounds = MIG_DEFAULT_MAX_ROUNDS,
		.timeout_ms = MIG_DEFAULT_TIMEOUT_MS,
		.auto_converge = true,
		.compress = STREAM_COMP_AUTO,
	};
}

/* `p` with every default filled in. */
static void params_resolve(struct mig_params *out, const struct mig_params *p)
{
	if (!p) {
		mig_params_init(out);
		p = out;
	}
	*out = *p;
	if (!out->start_rate || (out->max_rate && out->start_rate > out->max_rate))
		out->start_rate = out->max_rate;
	if (!out->downtime_ns)
		out->downtime_ns = MIG_DEFAULT_DOWNTIME_NS;
	if (!out->max_rounds)
		out->max_rounds = MIG_DEFAULT_MAX_ROUNDS;
	if (out->max_rounds > MIG_ROUNDS_MAX)
		out->max_rounds = MIG_ROUNDS_MAX;
	if (!out->timeout_ms)
		out->timeout_ms = MIG_DEFAULT_TIMEOUT_MS;
	if (!out->policy)
		out->policy = mig_default_policy;
}

/* Stream bytes the dirty set of round `r` will take, at most. */
static uint64_t dirty_bytes(const struct mig_round_stats *r)
{
	return r->dirty * PAGE_WIRE + r->disk_dirty * BLOCK_WIRE;
}

enum mig_decision mig_default_policy(void *ctx, const struct mig_params *p,
				     const struct mig_stats *st)
{
	unsigned n = st->rounds;
	const struct mig_round_stats *r = st->round;

	/* The remainder fits the downtime at the measured link rate. */
	if (st->link_rate &&
	    (unsigned __int128)dirty_bytes(&r[n - 1]) * NSEC_PER_SEC <=
		    (unsigned __int128)p->downtime_ns * st->link_rate)
		return MIG_STOP_AND_COPY;
	if (n >= p->max_rounds)
		return MIG_STOP_AND_COPY;
	/* Not converging: no round of the last three beat the one before. */
	if (n >= 4) {
		uint64_t best = dirty_bytes(&r[n - 1]);

		for (unsigned k = 2; k <= 3; k++)
			if (dirty_bytes(&r[n - k]) < best)
				best = dirty_bytes(&r[n - k]);
		if (best >= dirty_bytes(&r[n - 4])) {
			if (p->auto_converge &&
			    r[n - 1].throttle < MIG_THROTTLE_MAX)
				return MIG_CONTINUE; /* throttle harder */
			return p->abort_if_busy ? MIG_ABORT
						: MIG_STOP_AND_COPY;
		}
	}
	return MIG_CONTINUE;
}

struct mig_disk {
	uint64_t size, nr_blocks;
	uint64_t *bitmap; /* the dirty blocks to send next */
};

struct mig_sender {
	const struct hv_ops *ops;
	struct hv_domain *d;
	struct chan *c;
	const struct mig_params *p;
	struct mig_stats *st;
	struct stream_writer *w; /* own_w, or the caller's (mig_presync) */
	struct stream_writer own_w;
	uint64_t nr_pfns;
	uint64_t *bitmap; /* the dirty pages to send next */
	struct mig_disk disk[FT_MAX_DISKS];
	unsigned nr_disks;
	unsigned char *block; /* HV_DISK_BLOCK bytes */
	unsigned throttle;
	struct pagecache cache; /* xbzrle, from round 1 */
	bool have_cache;
	uint64_t link_bytes, link_ns; /* completed rounds, for the rate */
	/* token bucket of the round in progress */
	uint64_t rate; /* bytes/s; 0: unpaced */
	uint64_t t_start, sent;
	/* progress */
	uint64_t t0, bytes0, left; /* left: estimate for the progress line */
	uint64_t last_ns, last_bytes;
	bool paused;
};

/* Keep the first reason, for st->error. */
static void __attribute__((format(printf, 2, 3)))
set_error(struct mig_stats *st, const char *fmt, ...)
{
	va_list ap;

	if (st->error[0])
		return;
	va_start(ap, fmt);
	vsnprintf(st->error, sizeof(st->error), fmt, ap);
	va_end(ap);
}

int mig_msg_send(struct chan *c, const char *magic, int err,
		 const char *text)
{
	struct mig_msg m = { .err = htole32((uint32_t)-err) };
	size_t len = text ? strnlen(text, MIG_MSG_TEXT_MAX) : 0;
	struct iovec iov[2] = { { &m, sizeof(m) }, { (void *)text, len } };
	int rc;

	memcpy(m.magic, magic, sizeof(m.magic));
	m.msg_len = htole32((uint32_t)len);
	if (c->err)
		return c->err;
	rc = chan_writev(c, iov, len ? 2 : 1);
	if (!rc)
		rc = chan_flush(c, false);
	return rc;
}

/*
 * Read one commit message; return 0 and its magic in `magic` (with *rerr
 * the ERR errno and text[] its sentence), or -errno: the channel's, or
 * -EBADMSG for a malformed message.
 */
static int read_msg(struct chan *c, char magic[9], int *rerr, char *text,
		    size_t tlen)
{
	static const char *const known[] = { MIG_MSG_READY, MIG_MSG_ERR,
					     MIG_MSG_GO, MIG_MSG_RUN,
					     MIG_MSG_SYNC };
	char buf[MIG_MSG_TEXT_MAX + 1];
	struct mig_msg m;
	uint32_t e, len;
	bool ok = false;
	int err;

	err = chan_read(c, &m, sizeof(m));
	if (err)
		return err;
	e = le32toh(m.err);
	len = le32toh(m.msg_len);
	for (unsigned i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		ok |= !memcmp(m.magic, known[i], 8);
	if (!ok || len > MIG_MSG_TEXT_MAX ||
	    (!memcmp(m.magic, MIG_MSG_ERR, 8) ? !e || e >= 4096 : e != 0)) {
		log_err("migration: malformed message from the peer "
			"(magic %.8s, err %u, text %u bytes)",
			m.magic, e, len);
		return -EBADMSG;
	}
	err = chan_read(c, buf, len);
	if (err)
		return err;
	buf[len] = '\0';
	memcpy(magic, m.magic, 8);
	magic[8] = '\0';
	*rerr = -(int)e;
	snprintf(text, tlen, "%s", buf);
	return 0;
}

/* The receiver only speaks before END to report a failure: if it did,
 * read why and fail with its errno. */
static int early_answer(struct mig_sender *s)
{
	char magic[9], text[MIG_MSG_TEXT_MAX + 1];
	int rerr, err = chan_readable(s->c, 0);

	if (err <= 0)
		return err;
	err = read_msg(s->c, magic, &rerr, text, sizeof(text));
	if (err)
		return err;
	if (!strcmp(magic, MIG_MSG_SYNC))
		return 0; /* a late answer to sync_receiver */
	if (strcmp(magic, MIG_MSG_ERR)) {
		set_error(s->st, "unexpected %s message from the destination "
			  "during the transfer", magic);
		log_err("migration: %s", s->st->error);
		return -EBADMSG;
	}
	set_error(s->st, "the destination refused the VM: %s", text);
	log_err("migration: %s", s->st->error);
	return rerr;
}

/* The link rate for STREAM_COMP_AUTO: measured send speed, or the
 * round's cap if that is lower. */
static void feed_link_rate(struct mig_sender *s, const struct mig_round_stats *r)
{
	uint64_t b = s->link_bytes + (r ? r->bytes : 0);
	uint64_t ns = s->link_ns + (r ? r->send_ns : 0);
	uint64_t rate = ns ? (uint64_t)((unsigned __int128)b * NSEC_PER_SEC / ns)
			   : 0;

	if (s->rate && (!rate || s->rate < rate))
		rate = s->rate;
	stream_writer_set_link_rate(s->w, rate);
}

/* Report progress if the last report is PROGRESS_NS old (or `force`);
 * returns the callback's verdict (non-zero: cancel). */
static int progress(struct mig_sender *s, bool force)
{
	struct mig_progress pr;
	uint64_t now, sent;

	if (!s->p->progress)
		return 0;
	now = now_ns();
	if (!force && now - s->last_ns < PROGRESS_NS)
		return 0;
	sent = s->c->bytes_out - s->bytes0;
	pr = (struct mig_progress){
		.round = s->st->rounds,
		.paused = s->paused,
		.sent = sent,
		.remaining = s->left,
		.rate = now > s->last_ns
				? (uint64_t)((unsigned __int128)(sent -
								 s->last_bytes) *
					     NSEC_PER_SEC / (now - s->last_ns))
				: 0,
		.elapsed_ns = now - s->t0,
		.throttle = s->throttle,
	};
	s->last_ns = now;
	s->last_bytes = sent;
	return s->p->progress(s->p->progress_ctx, &pr);
}

/* Sleep until the round's bytes so far are within its rate plus one
 * bucket's depth.  Returns non-zero if the progress callback cancels. */
static int pace(struct mig_sender *s)
{
	uint64_t allowed, ahead, ns;
	struct timespec ts;
	int err = progress(s, false);

	if (err) {
		set_error(s->st, "cancelled");
		return err;
	}
	err = early_answer(s);
	if (err)
		return err;
	if (!s->rate)
		return 0;
	allowed = (uint64_t)((unsigned __int128)(now_ns() - s->t_start +
						 BUCKET_NS) *
			     s->rate / NSEC_PER_SEC);
	if (s->sent <= allowed)
		return 0;
	ahead = s->sent - allowed;
	ns = (uint64_t)((unsigned __int128)ahead * NSEC_PER_SEC / s->rate);
	ts.tv_sec = (time_t)(ns / NSEC_PER_SEC);
	ts.tv_nsec = (long)(ns % NSEC_PER_SEC);
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
	return 0;
}

static void account(struct mig_sender *s, struct mig_round_stats *r,
		    uint64_t out0, uint64_t t0)
{
	uint64_t b = s->c->bytes_out - out0;

	r->send_ns += now_ns() - t0;
	r->bytes += b;
	s->sent += b;
	s->left = s->left > b ? s->left - b : 0;
}

/*
 * Send the frames pfns[0..n), n <= MIG_BATCH; with `skip_zero` leave out
 * all-zero ones (round 0).  Adds to r's counters.
 */
static int send_batch(struct mig_sender *s, const uint64_t *pfns, unsigned n,
		      bool skip_zero, struct mig_round_stats *r)
{
	uint64_t sel[MIG_BATCH];
	void *ptrs[MIG_BATCH], *selp[MIG_BATCH];
	uint64_t out0 = s->c->bytes_out, t0;
	unsigned i, k;
	int err;

	err = s->ops->map(s->d, pfns, n, ptrs);
	if (err)
		return err;
	for (i = 0, k = 0; i < n; i++) {
		bool zero = stream_page_is_zero(ptrs[i]);

		if (zero)
			r->zero_pages++;
		if (zero && skip_zero)
			continue;
		sel[k] = pfns[i];
		selp[k++] = ptrs[i];
	}
	t0 = now_ns();
	err = k ? stream_write_pages(s->w, sel, selp, k) : 0;
	s->ops->unmap(s->d, ptrs, n);
	r->pages += k;
	account(s, r, out0, t0);
	feed_link_rate(s, r);
	if (skip_zero) /* round 0 counts every frame in its estimate */
		s->left = s->left > (n - k) * PAGE_WIRE
				  ? s->left - (n - k) * PAGE_WIRE
				  : 0;
	if (!err)
		err = pace(s);
	return err;
}

/* Round 0: every non-zero frame. */
static int send_all(struct mig_sender *s, struct mig_round_stats *r)
{
	uint64_t pfns[MIG_BATCH], base;
	unsigned i, n;
	int err = 0;

	for (base = 0; !err && base < s->nr_pfns; base += n) {
		n = s->nr_pfns - base < MIG_BATCH ? (unsigned)(s->nr_pfns - base)
						  : MIG_BATCH;
		for (i = 0; i < n; i++)
			pfns[i] = base + i;
		err = send_batch(s, pfns, n, true, r);
	}
	return err;
}

/* Send every frame set in s->bitmap, zero ones too, clearing the bitmap. */
static int send_dirty(struct mig_sender *s, struct mig_round_stats *r)
{
	uint64_t pfns[MIG_BATCH], words = (s->nr_pfns + 63) / 64, i;
	unsigned n = 0;
	int err = 0;

	for (i = 0; !err && i < words; i++) {
		uint64_t bits = s->bitmap[i];

		s->bitmap[i] = 0;
		while (bits && !err) {
			uint64_t pfn = i * 64 + (unsigned)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (pfn >= s->nr_pfns)
				break;
			pfns[n++] = pfn;
			if (n == MIG_BATCH) {
				err = send_batch(s, pfns, n, false, r);
				n = 0;
			}
		}
	}
	if (!err && n)
		err = send_batch(s, pfns, n, false, r);
	return err;
}

/* Send block `b` of disk `idx`; with `skip_zero` not if it is all zero. */
static int send_block(struct mig_sender *s, unsigned idx, uint64_t b,
		      bool skip_zero, struct mig_round_stats *r)
{
	struct mig_disk *dk = &s->disk[idx];
	uint64_t off = b * HV_DISK_BLOCK, out0 = s->c->bytes_out, t0;
	uint32_t len = dk->size - off < HV_DISK_BLOCK
			       ? (uint32_t)(dk->size - off)
			       : HV_DISK_BLOCK;
	bool zero = true;
	int err;

	err = s->ops->disk_read(s->d, idx, off, s->block, len);
	if (err)
		return err;
	for (uint32_t i = 0; zero && i < len; i += FT_PAGE_SIZE) {
		if (len - i >= FT_PAGE_SIZE) {
			zero = stream_page_is_zero(s->block + i);
			continue;
		}
		for (uint32_t k = i; zero && k < len; k++) /* a short tail */
			zero = !s->block[k];
	}
	if (zero && skip_zero) {
		s->left = s->left > BLOCK_WIRE ? s->left - BLOCK_WIRE : 0;
		return 0;
	}
	t0 = now_ns();
	err = stream_write_disk(s->w, idx, off, len, zero ? NULL : s->block,
				0);
	r->disk_blocks++;
	account(s, r, out0, t0);
	if (!err)
		err = pace(s);
	return err;
}

/* Disks: round 0 sends every non-zero block, later rounds the dirty ones. */
static int send_disks(struct mig_sender *s, bool all,
		      struct mig_round_stats *r)
{
	int err = 0;

	for (unsigned idx = 0; !err && idx < s->nr_disks; idx++) {
		struct mig_disk *dk = &s->disk[idx];

		for (uint64_t b = 0; !err && b < dk->nr_blocks; b++) {
			uint64_t *w = &dk->bitmap[b / 64], bit = 1ULL << (b % 64);

			if (!all && !(*w & bit))
				continue;
			*w &= ~bit;
			err = send_block(s, idx, b, all, r);
		}
	}
	return err;
}

static uint64_t popcount(const uint64_t *bm, uint64_t bits)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < (bits + 63) / 64; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* Fetch what was written since the last fetch into the bitmaps; count it. */
static int fetch(struct mig_sender *s, uint64_t *pages, uint64_t *blocks)
{
	int err = s->ops->dirty_fetch(s->d, s->bitmap, s->nr_pfns);

	*pages = popcount(s->bitmap, s->nr_pfns);
	*blocks = 0;
	for (unsigned i = 0; !err && i < s->nr_disks; i++) {
		err = s->ops->disk_dirty_fetch(s->d, i, s->disk[i].bitmap,
					       s->disk[i].nr_blocks);
		*blocks += popcount(s->disk[i].bitmap, s->disk[i].nr_blocks);
	}
	return err;
}

static int send_device(void *ctx, const struct hv_dev_rec *rec)
{
	return stream_write_device(ctx, rec);
}

static const char *decision_name(enum mig_decision dc)
{
	switch (dc) {
	case MIG_CONTINUE:
		return "continue";
	case MIG_STOP_AND_COPY:
		return "stop-and-copy";
	case MIG_ABORT:
		return "abort";
	}
	return "?";
}

/* A channel error in words an operator can act on. */
const char *mig_chan_error(int err, const char *peer, char *buf,
			   size_t len)
{
	const char *what;

	switch (err) {
	case -ETIMEDOUT:
		what = "fell silent (dead, or the link is down)";
		break;
	case -EPIPE:
	case -ECONNRESET:
		what = "closed the connection";
		break;
	case -ENETUNREACH:
	case -EHOSTUNREACH:
	case -ENETDOWN:
		snprintf(buf, len, "the network to the %s is down", peer);
		return buf;
	case -EPROTO:
		snprintf(buf, len, "the TLS session failed (a damaged record "
			 "or a TLS alert from the %s; see its log)", peer);
		return buf;
	default:
		return NULL;
	}
	snprintf(buf, len, "the %s %s", peer, what);
	return buf;
}

/* mig_chan_error for `peer`, or strerror. */
static const char *chan_error_text(int err, const char *peer)
{
	static __thread char buf[160];
	const char *why = mig_chan_error(err, peer, buf, sizeof(buf));

	return why ? why : strerror(-err);
}

/* Throttle the guest while it dirties more than half of what a round
 * sends; returns the level for the next round. */
static unsigned next_throttle(struct mig_sender *s,
			      const struct mig_round_stats *r)
{
	unsigned t = s->throttle;

	if (!s->p->auto_converge || !s->ops->throttle || s->st->rounds < 2)
		return t;
	if (dirty_bytes(r) * 2 <= r->bytes || t >= MIG_THROTTLE_MAX)
		return t;
	t = t ? t + MIG_THROTTLE_STEP : MIG_THROTTLE_INITIAL;
	return t > MIG_THROTTLE_MAX ? MIG_THROTTLE_MAX : t;
}

/* The live rounds; returns with the policy's final decision in st. */
static int live_rounds(struct mig_sender *s)
{
	const struct mig_params *p = s->p;
	struct mig_stats *st = s->st;
	uint64_t rate = p->start_rate;
	int err;

	s->left = s->nr_pfns * PAGE_WIRE;
	for (unsigned i = 0; i < s->nr_disks; i++)
		s->left += s->disk[i].nr_blocks * BLOCK_WIRE;
	for (;;) {
		struct mig_round_stats *r = &st->round[st->rounds];
		uint64_t dirty_rate;
		unsigned t;

		memset(r, 0, sizeof(*r));
		r->rate = s->rate = rate;
		r->throttle = s->throttle;
		s->t_start = now_ns();
		s->sent = 0;
		err = st->rounds ? send_dirty(s, r) : send_all(s, r);
		if (!err)
			err = send_disks(s, !st->rounds, r);
		if (!err)
			err = chan_flush(s->c, false);
		r->ns = now_ns() - s->t_start;
		if (!err)
			err = fetch(s, &r->dirty, &r->disk_dirty);
		if (err)
			return err;
		s->left = dirty_bytes(r);
		st->rounds++;
		st->pages += r->pages;
		st->disk_blocks += r->disk_blocks;
		s->link_bytes += r->bytes;
		/* Unpaced, the round's wall time is the link's: the time in
		 * write calls alone misses what the socket buffers absorbed
		 * (megabytes, on a slow link a large share).  Paced, only
		 * the time spent writing says what the link can do. */
		s->link_ns += r->rate ? r->send_ns : r->ns;
		if (s->link_ns)
			st->link_rate = (uint64_t)((unsigned __int128)
							   s->link_bytes *
						   NSEC_PER_SEC / s->link_ns);
		feed_link_rate(s, NULL);
		if (st->rounds == 1 && p->xbzrle_bytes) {
			/* Only re-sent pages can gain: start the cache now
			 * (filling it costs the first sends ~40%). */
			err = pagecache_init(&s->cache, p->xbzrle_bytes);
			if (err) {
				set_error(st, "cannot allocate the %llu-byte "
					  "xbzrle cache: %s",
					  (unsigned long long)p->xbzrle_bytes,
					  strerror(-err));
				return err;
			}
			s->have_cache = true;
			stream_writer_set_cache(s->w, &s->cache);
		}
		st->decision = p->policy(p->policy_ctx, p, st);
		log_info("migration: round %u: %llu pages (%llu zero), %llu "
			 "disk blocks, %llu KiB in %llu ms%s; dirty %llu pages "
			 "%llu blocks; throttle %u%%: %s",
			 st->rounds - 1, (unsigned long long)r->pages,
			 (unsigned long long)r->zero_pages,
			 (unsigned long long)r->disk_blocks,
			 (unsigned long long)r->bytes >> 10,
			 (unsigned long long)r->ns / 1000000,
			 rate ? "" : " (unpaced)",
			 (unsigned long long)r->dirty,
			 (unsigned long long)r->disk_dirty, s->throttle,
			 decision_name(st->decision));
		if (progress(s, true)) {
			set_error(st, "cancelled");
			return -ECANCELED;
		}
		if (st->decision != MIG_CONTINUE)
			return 0;
		if (st->rounds == MIG_ROUNDS_MAX) {
			st->decision = MIG_STOP_AND_COPY;
			return 0;
		}
		t = next_throttle(s, r);
		if (t != s->throttle) {
			err = s->ops->throttle(s->d, t);
			if (err)
				return err;
			log_info("migration: auto-converge: guest throttled "
				 "to %u%%",
				 t);
			s->throttle = t;
			if (t > st->throttle)
				st->throttle = t;
		}
		if (!rate)
			continue; /* unpaced stays unpaced */
		/* Outrun the dirtying: twice its rate, never less than now. */
		dirty_rate = r->ns ? (uint64_t)((unsigned __int128)dirty_bytes(r) *
						NSEC_PER_SEC / r->ns)
				   : 0;
		if (dirty_rate > UINT64_MAX / 2)
			dirty_rate = UINT64_MAX / 2;
		if (2 * dirty_rate > rate)
			rate = 2 * dirty_rate;
		if (p->max_rate && rate > p->max_rate)
			rate = p->max_rate;
	}
}

/*
 * Before pausing: let the receiver catch up.  What the sender has written
 * may still sit in socket buffers (megabytes) that the receiver has yet to
 * apply; doing that while the guest runs keeps it out of the downtime.
 * A SYNC record asks the receiver to answer once it has applied
 * everything before it.  A receiver that does not answer within a second
 * (one that skips SYNC) only costs that second.
 */
static int sync_receiver(struct mig_sender *s)
{
	char magic[9], text[MIG_MSG_TEXT_MAX + 1];
	uint64_t seq = htole64(s->st->rounds), t0 = now_ns();
	int rerr, err;

	err = stream_write_record(s->w, REC_SYNC, &seq, sizeof(seq));
	if (!err)
		err = chan_flush(s->c, false);
	if (!err)
		err = chan_readable(s->c, 1000);
	if (err <= 0)
		return err; /* 0: no answer, go on */
	err = read_msg(s->c, magic, &rerr, text, sizeof(text));
	if (err)
		return err;
	if (!strcmp(magic, MIG_MSG_ERR)) {
		set_error(s->st, "the destination refused the VM: %s", text);
		log_err("migration: %s", s->st->error);
		return rerr;
	}
	if (strcmp(magic, MIG_MSG_SYNC)) {
		set_error(s->st, "unexpected %s message from the destination",
			  magic);
		return -EBADMSG;
	}
	log_debug("migration: receiver caught up in %.1f ms",
		  (double)(now_ns() - t0) / 1e6);
	return 0;
}

static int sender_init(struct mig_sender *s, const struct hv_dom_info *info)
{
	s->nr_pfns = info->mem_size / HV_PAGE_SIZE;
	s->bitmap = calloc((s->nr_pfns + 63) / 64, sizeof(uint64_t));
	s->block = malloc(HV_DISK_BLOCK);
	if (!s->bitmap || !s->block)
		return -ENOMEM;
	if (!s->ops->disk_info)
		return 0;
	for (unsigned i = 0; i < FT_MAX_DISKS; i++) {
		struct mig_disk *dk = &s->disk[i];

		if (s->ops->disk_info(s->d, i, &dk->size))
			break;
		dk->nr_blocks = (dk->size + HV_DISK_BLOCK - 1) / HV_DISK_BLOCK;
		dk->bitmap = calloc((dk->nr_blocks + 63) / 64,
				    sizeof(uint64_t));
		if (!dk->bitmap)
			return -ENOMEM;
		s->nr_disks++;
	}
	return 0;
}

static void sender_fini(struct mig_sender *s)
{
	if (s->have_cache)
		pagecache_fini(&s->cache);
	for (unsigned i = 0; i < s->nr_disks; i++)
		free(s->disk[i].bitmap);
	free(s->block);
	free(s->bitmap);
}

/* Stop and copy; the domain is paused on return unless it failed to. */
static int stop_and_copy(struct mig_sender *s, const struct hv_dom_info *info,
			 struct hv_vcpu_state *vs)
{
	struct mig_round_stats fin = { 0 };
	uint64_t pages, blocks;
	int err;

	err = fetch(s, &pages, &blocks);
	s->st->final_pages = pages;
	s->st->final_blocks = blocks;
	s->rate = 0;
	s->paused = true;
	s->left = pages * PAGE_WIRE + blocks * BLOCK_WIRE;
	if (!err)
		err = send_dirty(s, &fin);
	if (!err)
		err = send_disks(s, false, &fin);
	for (unsigned v = 0; !err && v < info->nr_vcpus; v++) {
		err = s->ops->vcpu_save(s->d, v, vs);
		if (!err)
			err = stream_write_vcpu(s->w, v, vs);
	}
	if (!err)
		err = s->ops->dev_save(s->d, send_device, s->w);
	if (!err)
		err = stream_write_end(s->w);
	if (!err)
		err = chan_flush(s->c, false);
	s->st->pages += fin.pages;
	s->st->disk_blocks += fin.disk_blocks;
	return err;
}

/*
 * After END: READY? then GO, then RUN?  Returns 0 (RUN), -EINPROGRESS (in
 * doubt) or -errno before GO or with an ERR after it (safe to resume).
 */
static int commit(struct mig_sender *s)
{
	char magic[9], text[MIG_MSG_TEXT_MAX + 1];
	int rerr, err;

	do /* a late answer to sync_receiver may come first */
		err = read_msg(s->c, magic, &rerr, text, sizeof(text));
	while (!err && !strcmp(magic, MIG_MSG_SYNC));
	if (err) {
		set_error(s->st, "no answer from the destination after the "
			  "last page: %s",
			  chan_error_text(err, "destination"));
		return err;
	}
	if (!strcmp(magic, MIG_MSG_ERR)) {
		set_error(s->st, "the destination refused the VM: %s", text);
		log_err("migration: the destination refused the VM: %s", text);
		return rerr;
	}
	if (strcmp(magic, MIG_MSG_READY)) {
		set_error(s->st, "unexpected %s message from the destination",
			  magic);
		log_err("migration: unexpected %s message from the "
			"destination", magic);
		return -EBADMSG;
	}
	/* Point of no return: from here the source never resumes itself. */
	err = mig_msg_send(s->c, MIG_MSG_GO, 0, NULL);
	if (!err)
		err = read_msg(s->c, magic, &rerr, text, sizeof(text));
	if (!err && !strcmp(magic, MIG_MSG_RUN))
		return 0;
	if (!err && !strcmp(magic, MIG_MSG_ERR)) {
		set_error(s->st, "the destination failed after the go and "
			  "discarded its copy: %s",
			  text);
		log_err("migration: %s", s->st->error);
		return rerr;
	}
	set_error(s->st, "IN DOUBT: the go was sent but the destination "
		  "never confirmed (%s); the VM stays paused here until it "
		  "is known whether it runs there",
		  err ? strerror(-err) : magic);
	log_err("migration: %s", s->st->error);
	return -EINPROGRESS;
}

int mig_send(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	     const struct mig_params *params, struct mig_stats *stats)
{
	struct mig_params p;
	struct mig_stats local, *st = stats ? stats : &local;
	struct mig_sender s = { .ops = ops, .d = d, .c = c, .p = &p, .st = st };
	struct hv_dom_info info;
	struct hv_vcpu_state *vs = NULL;
	uint64_t t_pause = 0;
	bool paused = false, logging = false;
	int err, err2;

	s.w = &s.own_w;
	params_resolve(&p, params);
	memset(st, 0, sizeof(*st));
	s.t0 = s.last_ns = now_ns();
	s.bytes0 = c->bytes_out;
	err = ops->info(d, &info);
	if (err)
		goto out_log;
	if (info.page_size != HV_PAGE_SIZE || !info.mem_size ||
	    info.mem_size % HV_PAGE_SIZE) {
		set_error(st, "unsupported domain shape (mem %llu, page size "
			  "%u)",
			  (unsigned long long)info.mem_size, info.page_size);
		err = -EINVAL;
		goto out_log;
	}
	vs = malloc(sizeof(*vs));
	err = vs ? sender_init(&s, &info) : -ENOMEM;
	if (!err)
		err = stream_writer_init(s.w, c, FT_STREAM_F_LIVE,
					 (enum stream_compress)p.compress);
	if (err)
		goto out_log;
	err = chan_set_timeout(c, p.timeout_ms);
	if (!err)
		err = ops->dirty_log(d, true);
	if (err)
		goto out_fini;
	logging = true;
	err = stream_write_header(s.w);
	if (!err)
		err = stream_write_domain(s.w, info.mem_size, info.nr_vcpus);
	if (!err)
		err = live_rounds(&s);
	if (!err && st->decision == MIG_ABORT) {
		set_error(st, "aborted after %u rounds: the guest dirties "
			  "memory faster than the link sends it (dirty set "
			  "%llu pages, not shrinking)",
			  st->rounds,
			  (unsigned long long)st->round[st->rounds - 1].dirty);
		log_err("migration: %s", st->error);
		err = -ECANCELED;
	}
	if (!err)
		err = sync_receiver(&s);
	if (err)
		goto out_fini;

	t_pause = now_ns();
	err = ops->pause(d);
	if (err)
		goto out_fini;
	paused = true;
	err = stop_and_copy(&s, &info, vs);
	st->stop_copy_ns = now_ns() - t_pause;
	if (!err)
		err = commit(&s);
	st->downtime_ns = now_ns() - t_pause;
	if (!err || err == -EINPROGRESS) {
		/* The source stays paused for the caller. */
		paused = false;
		if (err)
			goto out_fini;
		st->bytes = c->bytes_out - s.bytes0;
		st->total_ns = now_ns() - s.t0;
		log_info("migration: done: %u live rounds, %llu pages and "
			 "%llu disk blocks while paused, %llu MiB, downtime "
			 "%.1f ms (stop-and-copy %.1f ms), total %llu ms",
			 st->rounds, (unsigned long long)st->final_pages,
			 (unsigned long long)st->final_blocks,
			 (unsigned long long)st->bytes >> 20,
			 (double)st->downtime_ns / 1e6,
			 (double)st->stop_copy_ns / 1e6,
			 (unsigned long long)st->total_ns / 1000000);
	}
out_fini:
	if (err && err != -EINPROGRESS && !st->error[0]) {
		set_error(st, "%s after %u rounds%s",
			  chan_error_text(err, "destination"), st->rounds,
			  paused ? " (in stop-and-copy)" : "");
		log_err("migration failed: %s", st->error);
	}
	if (logging) {
		err2 = ops->dirty_log(d, false);
		if (err2)
			log_err("migration: cannot turn dirty logging off: %s",
				strerror(-err2));
	}
	if (s.throttle && ops->throttle(d, 0))
		log_err("migration: cannot end the throttle");
	if (paused) {
		err2 = ops->unpause(d);
		if (err2)
			log_err("migration: CANNOT RESUME the source: %s",
				strerror(-err2));
		else
			log_info("migration: source resumed");
	}
	st->bytes = c->bytes_out - s.bytes0;
	st->total_ns = now_ns() - s.t0;
	st->pages_lz4 = s.w->stats.pages_lz4;
	st->pages_xor = s.w->stats.pages_xor;
	st->page_bytes = s.w->stats.lz4_bytes + s.w->stats.xor_bytes +
			 s.w->stats.pages_raw * FT_PAGE_SIZE;
	if (s.have_cache) {
		st->cache_hits = s.cache.stats.hits;
		st->cache_misses = s.cache.stats.misses;
		stream_writer_set_cache(s.w, NULL);
	}
	if (s.w->chan)
		stream_writer_fini(s.w);
	sender_fini(&s);
	free(vs);
	return err;
out_log:
	set_error(st, "%s", strerror(-err));
	goto out_fini;
}

int mig_presync(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
		struct stream_writer *w, const struct mig_params *params,
		struct mig_stats *st, uint64_t *pending,
		uint64_t *const *disk_pending)
{
	struct mig_params p;
	struct mig_sender s = { .ops = ops, .d = d, .c = c, .p = &p, .st = st,
				.w = w };
	struct hv_dom_info info;
	int err;

	params_resolve(&p, params);
	memset(st, 0, sizeof(*st));
	s.t0 = s.last_ns = now_ns();
	s.bytes0 = c->bytes_out;
	err = ops->info(d, &info);
	if (!err)
		err = sender_init(&s, &info);
	if (!err)
		err = chan_set_timeout(c, p.timeout_ms);
	if (!err)
		err = ops->dirty_log(d, true);
	if (err) {
		set_error(st, "%s", strerror(-err));
		sender_fini(&s);
		return err;
	}
	err = live_rounds(&s);
	if (!err && st->decision == MIG_ABORT) {
		set_error(st, "aborted after %u rounds: the guest dirties "
			  "memory faster than the link sends it (dirty set "
			  "%llu pages, not shrinking)",
			  st->rounds,
			  (unsigned long long)st->round[st->rounds - 1].dirty);
		err = -ECANCELED;
	}
	if (!err)
		err = sync_receiver(&s);
	if (err && !st->error[0]) {
		/* checkpointing's initial sync: the peer is the backup */
		set_error(st, "%s after %u rounds",
			  chan_error_text(err, "backup"), st->rounds);
	}
	if (err) {
		log_err("initial synchronisation failed: %s", st->error);
		ops->dirty_log(d, false);
	} else {
		memcpy(pending, s.bitmap,
		       (s.nr_pfns + 63) / 64 * sizeof(uint64_t));
		for (unsigned i = 0; i < s.nr_disks; i++)
			memcpy(disk_pending[i], s.disk[i].bitmap,
			       (s.disk[i].nr_blocks + 63) / 64 *
				       sizeof(uint64_t));
	}
	if (s.throttle && ops->throttle(d, 0))
		log_err("initial synchronisation: cannot end the throttle");
	st->bytes = c->bytes_out - s.bytes0;
	st->total_ns = now_ns() - s.t0;
	if (s.have_cache)
		stream_writer_set_cache(w, NULL);
	sender_fini(&s);
	return err;
}

/* SYNC: everything before it is applied; say so. */
static int on_sync(void *ctx, uint64_t seq)
{
	return mig_msg_send(ctx, MIG_MSG_SYNC, 0, NULL);
}

void mig_drain(struct chan *c)
{
	char buf[1 << 16];
	uint64_t end = now_ns() + 2 * NSEC_PER_SEC;

	if (chan_set_timeout(c, 500))
		return;
	while (now_ns() < end && chan_read_upto(c, buf, sizeof(buf)) > 0)
		;
}

int mig_recv(const struct hv_ops *ops, const void *cfg, struct chan *c,
	     unsigned timeout_ms, mig_start_fn start, void *start_ctx,
	     struct hv_domain **out, char *msg, size_t len)
{
	char magic[9], text[MIG_MSG_TEXT_MAX + 1], why[512] = "";
	struct hv_domain *d = NULL;
	uint64_t t_ready, t_go;
	int err, werr, rerr;

	err = chan_set_timeout(c, timeout_ms ? timeout_ms
					     : MIG_DEFAULT_TIMEOUT_MS);
	if (!err)
		err = snap_restore_msg(ops, cfg, c, false, &d, why,
				       sizeof(why), on_sync, c);
	if (err)
		goto fail;
	t_ready = now_ns();
	err = mig_msg_send(c, MIG_MSG_READY, 0, NULL);
	if (err) {
		snprintf(why, sizeof(why), "cannot confirm the stream: %s",
			 strerror(-err));
		goto fail;
	}
	err = read_msg(c, magic, &rerr, text, sizeof(text));
	if (!err && strcmp(magic, MIG_MSG_GO))
		err = -EBADMSG;
	if (err) {
		snprintf(why, sizeof(why),
			 "the source never gave the go (%s); the copy here is "
			 "discarded",
			 err == -EBADMSG ? "unexpected message"
					 : strerror(-err));
		goto fail;
	}
	t_go = now_ns();
	err = start(start_ctx, d);
	log_debug("migration: READY to GO %.3f ms, start %.3f ms",
		  (double)(t_go - t_ready) / 1e6,
		  (double)(now_ns() - t_go) / 1e6);
	if (err) {
		snprintf(why, sizeof(why), "cannot start the VM: %s",
			 strerror(-err));
		goto fail;
	}
	werr = mig_msg_send(c, MIG_MSG_RUN, 0, NULL);
	if (werr)
		log_warn("migration: the VM runs here, but the source was not "
			 "told (%s): it must ask",
			 strerror(-werr));
	*out = d;
	return 0;
fail:
	if (!why[0])
		snprintf(why, sizeof(why), "%s", strerror(-err));
	log_err("incoming migration failed: %s", why);
	werr = mig_msg_send(c, MIG_MSG_ERR, err, why);
	if (werr && werr != err)
		log_err("migration: cannot send the error to the source: %s",
			strerror(-werr));
	if (!werr)
		mig_drain(c);
	if (d)
		ops->destroy(d);
	if (msg && len)
		snprintf(msg, len, "%s", why);
	return err;
}
