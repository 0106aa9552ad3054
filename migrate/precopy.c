// SPDX-License-Identifier: MIT
/*
 * precopy.c - pre-copy live migration over struct hv_ops (precopy.h).
 *
 * The sender keeps one dirty bitmap.  After each live round it fetches
 * the pages dirtied meanwhile into it and asks the policy; the next round
 * (or the stop-and-copy, after one more fetch while paused) sends exactly
 * those pages and clears the bitmap.  A page read while the guest writes
 * it is dirty again by then, so it goes out once more.
 *
 * The receiver is snap_restore plus the verdict: the stream format and its
 * validation are the same for a file and a migration.
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "migrate/precopy.h"
#include "migrate/snapshot.h"
#include "stream.h"
#include "stream_state.h"

/* Pages per map/write: small enough for smooth pacing (1 MiB). */
#define MIG_BATCH 256u
/* Token-bucket depth: this much time's worth of bytes may go in a burst. */
#define BUCKET_NS (10ULL * 1000000)
#define NSEC_PER_SEC 1000000000ULL
/* Stream bytes per page sent raw: the data and its descriptor. */
#define PAGE_WIRE (FT_PAGE_SIZE + sizeof(struct ft_page_desc))

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

void mig_params_init(struct mig_params *p)
{
	*p = (struct mig_params){
		.start_rate = MIG_DEFAULT_START_RATE,
		.downtime_ns = MIG_DEFAULT_DOWNTIME_NS,
		.max_rounds = MIG_DEFAULT_MAX_ROUNDS,
		.ack_timeout_ms = MIG_DEFAULT_ACK_TIMEOUT_MS,
		.ack_fd = -1,
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
	if (!out->start_rate)
		out->start_rate = MIG_DEFAULT_START_RATE;
	if (out->max_rate && out->start_rate > out->max_rate)
		out->start_rate = out->max_rate;
	if (!out->downtime_ns)
		out->downtime_ns = MIG_DEFAULT_DOWNTIME_NS;
	if (!out->max_rounds)
		out->max_rounds = MIG_DEFAULT_MAX_ROUNDS;
	if (out->max_rounds > MIG_ROUNDS_MAX)
		out->max_rounds = MIG_ROUNDS_MAX;
	if (!out->ack_timeout_ms)
		out->ack_timeout_ms = MIG_DEFAULT_ACK_TIMEOUT_MS;
	if (!out->policy)
		out->policy = mig_default_policy;
}

enum mig_decision mig_default_policy(void *ctx, const struct mig_params *p,
				     const struct mig_stats *st)
{
	unsigned n = st->rounds;
	const struct mig_round_stats *r = st->round;
	uint64_t dirty = r[n - 1].dirty;

	/* The remainder fits the downtime at the measured link rate. */
	if (st->link_rate &&
	    (unsigned __int128)dirty * PAGE_WIRE * NSEC_PER_SEC <=
		    (unsigned __int128)p->downtime_ns * st->link_rate)
		return MIG_STOP_AND_COPY;
	if (n >= p->max_rounds)
		return MIG_STOP_AND_COPY;
	/* Not converging: no round of the last three beat the one before. */
	if (n >= 4) {
		uint64_t best = r[n - 1].dirty;

		if (r[n - 2].dirty < best)
			best = r[n - 2].dirty;
		if (r[n - 3].dirty < best)
			best = r[n - 3].dirty;
		if (best >= r[n - 4].dirty)
			return p->abort_if_busy ? MIG_ABORT
						: MIG_STOP_AND_COPY;
	}
	return MIG_CONTINUE;
}

struct mig_sender {
	const struct hv_ops *ops;
	struct hv_domain *d;
	struct chan *c;
	struct stream_writer w;
	uint64_t nr_pfns;
	uint64_t *bitmap; /* the dirty set to send next */
	/* token bucket of the round in progress */
	uint64_t rate; /* bytes/s; 0: unpaced */
	uint64_t t_start, sent;
};

/* Sleep until the round's bytes so far are within its rate plus one
 * bucket's depth.  Returns the time slept. */
static uint64_t pace(struct mig_sender *s)
{
	uint64_t allowed, ahead, ns;
	struct timespec ts;

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
	return ns;
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
	err = k ? stream_write_pages(&s->w, sel, selp, k) : 0;
	r->send_ns += now_ns() - t0;
	s->ops->unmap(s->d, ptrs, n);
	r->pages += k;
	r->bytes += s->c->bytes_out - out0;
	s->sent += s->c->bytes_out - out0;
	if (!err)
		pace(s);
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

static uint64_t count_dirty(const struct mig_sender *s)
{
	uint64_t words = (s->nr_pfns + 63) / 64, i, n = 0;

	for (i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(s->bitmap[i]);
	return n;
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

/* Wait for and check the receiver's verdict. */
static int read_verdict(struct chan *c, const struct mig_params *p)
{
	struct mig_reply rep;
	uint32_t rerr;
	int err;

	if (p->ack_fd >= 0) {
		struct pollfd pfd = { .fd = p->ack_fd, .events = POLLIN };
		int rc;

		do
			rc = poll(&pfd, 1, (int)p->ack_timeout_ms);
		while (rc < 0 && errno == EINTR);
		if (rc < 0) {
			err = -errno;
			log_err("migration: waiting for the verdict: %s",
				strerror(errno));
			return err;
		}
		if (rc == 0) {
			log_err("migration: no verdict from the destination "
				"within %u ms",
				p->ack_timeout_ms);
			return -ETIMEDOUT;
		}
	}
	err = chan_read(c, &rep, sizeof(rep));
	if (err) {
		log_err("migration: no verdict from the destination: %s",
			strerror(-err));
		return err;
	}
	rerr = le32toh(rep.err);
	if (!memcmp(rep.magic, MIG_REPLY_OK, sizeof(rep.magic)) && !rerr &&
	    !rep.reserved)
		return 0;
	if (!memcmp(rep.magic, MIG_REPLY_ERR, sizeof(rep.magic)) && rerr &&
	    rerr < 4096 && !rep.reserved) {
		log_err("migration: the destination failed: %s",
			strerror((int)rerr));
		return -(int)rerr;
	}
	log_err("migration: malformed verdict from the destination "
		"(magic %02x%02x%02x%02x%02x%02x%02x%02x err %u)",
		(unsigned char)rep.magic[0], (unsigned char)rep.magic[1],
		(unsigned char)rep.magic[2], (unsigned char)rep.magic[3],
		(unsigned char)rep.magic[4], (unsigned char)rep.magic[5],
		(unsigned char)rep.magic[6], (unsigned char)rep.magic[7],
		rerr);
	return -EBADMSG;
}

/* The live rounds; returns with the policy's final decision in st. */
static int live_rounds(struct mig_sender *s, const struct mig_params *p,
		       struct mig_stats *st)
{
	uint64_t rate = p->start_rate, link_bytes = 0, link_ns = 0;
	int err;

	for (;;) {
		struct mig_round_stats *r = &st->round[st->rounds];
		uint64_t dirty_rate;

		memset(r, 0, sizeof(*r));
		r->rate = s->rate = rate;
		s->t_start = now_ns();
		s->sent = 0;
		err = st->rounds ? send_dirty(s, r) : send_all(s, r);
		if (!err)
			err = chan_flush(s->c, false);
		r->ns = now_ns() - s->t_start;
		if (!err)
			err = s->ops->dirty_fetch(s->d, s->bitmap, s->nr_pfns);
		if (err)
			return err;
		r->dirty = count_dirty(s);
		st->rounds++;
		link_bytes += r->bytes;
		link_ns += r->send_ns;
		if (link_ns)
			st->link_rate = (uint64_t)((unsigned __int128)link_bytes *
						   NSEC_PER_SEC / link_ns);
		st->decision = p->policy(p->policy_ctx, p, st);
		log_info("migration: round %u: %llu pages (%llu zero) "
			 "%llu KiB in %llu ms at %llu MiB/s; %llu dirty: %s",
			 st->rounds - 1, (unsigned long long)r->pages,
			 (unsigned long long)r->zero_pages,
			 (unsigned long long)r->bytes >> 10,
			 (unsigned long long)r->ns / 1000000,
			 (unsigned long long)rate >> 20,
			 (unsigned long long)r->dirty, decision_name(st->decision));

		if (st->decision != MIG_CONTINUE)
			return 0;
		if (st->rounds == MIG_ROUNDS_MAX) {
			st->decision = MIG_STOP_AND_COPY;
			return 0;
		}
		/* Outrun the dirtying: twice its rate, never less than now. */
		dirty_rate = r->ns ? (uint64_t)((unsigned __int128)r->dirty *
						PAGE_WIRE * NSEC_PER_SEC /
						r->ns)
				   : 0;
		if (dirty_rate > UINT64_MAX / 2)
			dirty_rate = UINT64_MAX / 2;
		if (2 * dirty_rate > rate)
			rate = 2 * dirty_rate;
		if (p->max_rate && rate > p->max_rate)
			rate = p->max_rate;
	}
}

int mig_send(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	     const struct mig_params *params, struct mig_stats *stats)
{
	struct mig_sender s = { .ops = ops, .d = d, .c = c };
	struct mig_params p;
	struct mig_stats local, *st = stats ? stats : &local;
	struct hv_dom_info info;
	struct hv_vcpu_state *vs;
	uint64_t t0 = now_ns(), bytes0 = c->bytes_out, t_pause = 0, t_end;
	bool paused = false;
	unsigned v;
	int err, err2;

	params_resolve(&p, params);
	memset(st, 0, sizeof(*st));
	err = ops->info(d, &info);
	if (err)
		return err;
	if (info.page_size != HV_PAGE_SIZE || !info.mem_size ||
	    info.mem_size % HV_PAGE_SIZE) {
		log_err("migration: unsupported domain shape (mem %llu, "
			"page size %u)",
			(unsigned long long)info.mem_size, info.page_size);
		return -EINVAL;
	}
	s.nr_pfns = info.mem_size / HV_PAGE_SIZE;
	s.bitmap = calloc((s.nr_pfns + 63) / 64, sizeof(uint64_t));
	vs = malloc(sizeof(*vs));
	if (!s.bitmap || !vs) {
		err = -ENOMEM;
		goto out_free;
	}
	err = stream_writer_init(&s.w, c, FT_STREAM_F_LIVE, STREAM_COMP_NONE);
	if (err)
		goto out_free;
	err = ops->dirty_log(d, true);
	if (err)
		goto out_fini;

	err = stream_write_header(&s.w);
	if (!err)
		err = stream_write_domain(&s.w, info.mem_size, info.nr_vcpus);
	if (!err)
		err = live_rounds(&s, &p, st);
	if (!err && st->decision == MIG_ABORT) {
		log_err("migration: aborted by the policy after %u rounds "
			"(dirty set %llu pages, not converging)",
			st->rounds,
			(unsigned long long)st->round[st->rounds - 1].dirty);
		err = -ECANCELED;
	}
	if (err)
		goto out_log;

	/* Stop and copy. */
	t_pause = now_ns();
	err = ops->pause(d);
	if (err)
		goto out_log;
	paused = true;
	err = ops->dirty_fetch(d, s.bitmap, s.nr_pfns);
	if (!err) {
		struct mig_round_stats fin = { 0 };

		st->final_pages = count_dirty(&s);
		s.rate = 0;
		err = send_dirty(&s, &fin);
	}
	for (v = 0; !err && v < info.nr_vcpus; v++) {
		err = ops->vcpu_save(d, v, vs);
		if (!err)
			err = stream_write_vcpu(&s.w, v, vs);
	}
	if (!err)
		err = ops->dev_save(d, send_device, &s.w);
	if (!err)
		err = stream_write_end(&s.w);
	if (!err)
		err = chan_flush(c, false);
	t_end = now_ns();
	st->downtime_ns = t_end - t_pause;
	if (err)
		goto out_log;
	err = read_verdict(c, &p);
	st->ack_ns = now_ns() - t_end;
	if (err)
		goto out_resume;
	ops->dirty_log(d, false);
	st->bytes = c->bytes_out - bytes0;
	st->total_ns = now_ns() - t0;
	log_info("migration: done: %u live rounds, %llu pages while paused, "
		 "%llu MiB, downtime %.1f ms (+%.1f ms verdict), total %llu ms",
		 st->rounds, (unsigned long long)st->final_pages,
		 (unsigned long long)st->bytes >> 20,
		 (double)st->downtime_ns / 1e6, (double)st->ack_ns / 1e6,
		 (unsigned long long)st->total_ns / 1000000);
	goto out_fini;

out_log:
	if (err != -ECANCELED)
		log_err("migration failed after %u rounds%s: %s", st->rounds,
			paused ? " (in stop-and-copy)" : "", strerror(-err));
out_resume:
	err2 = ops->dirty_log(d, false);
	if (err2)
		log_err("migration: cannot turn dirty logging off: %s",
			strerror(-err2));
	if (paused) {
		err2 = ops->unpause(d);
		if (err2)
			log_err("migration: CANNOT RESUME the source: %s",
				strerror(-err2));
		else
			log_info("migration: source resumed");
	}
	st->bytes = c->bytes_out - bytes0;
	st->total_ns = now_ns() - t0;
out_fini:
	stream_writer_fini(&s.w);
out_free:
	free(vs);
	free(s.bitmap);
	return err;
}

static int write_verdict(struct chan *c, int err)
{
	struct mig_reply rep = { .err = htole32((uint32_t)-err) };

	memcpy(rep.magic, err ? MIG_REPLY_ERR : MIG_REPLY_OK,
	       sizeof(rep.magic));
	if (c->err)
		return c->err;
	err = chan_write(c, &rep, sizeof(rep));
	if (!err)
		err = chan_flush(c, false);
	return err;
}

int mig_recv(const struct hv_ops *ops, const void *cfg, struct chan *c,
	     struct hv_domain **out)
{
	struct hv_domain *d = NULL;
	int err, werr;

	err = snap_restore(ops, cfg, c, false, &d);
	if (err) {
		werr = write_verdict(c, err);
		if (werr)
			log_err("migration: cannot send the error verdict: %s",
				strerror(-werr));
		return err;
	}
	err = write_verdict(c, 0);
	if (err) {
		log_err("migration: cannot send the OK verdict: %s",
			strerror(-err));
		ops->destroy(d);
		return err;
	}
	*out = d;
	return 0;
}
