/* SPDX-License-Identifier: MIT */
/*
 * ckpt.c - checkpoint replication, primary side (see ckpt.h).
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"
#include "log.h"
#include "pagecache.h"
#include "stream.h"
#include "stream_state.h"

#define NSEC_PER_MS 1000000ULL
#define MAP_BATCH 512
/* Dirty pages worth copying before the pause (see prestage()): fewer
 * cost the pause little to copy (~1 us each here). */
#define PRESTAGE_MIN 256

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

const char *ckpt_state_name(enum ckpt_state s)
{
	switch (s) {
	case CKPT_IDLE:
		return "unprotected";
	case CKPT_SYNCING:
		return "syncing";
	case CKPT_PROTECTED:
		return "protected";
	case CKPT_LOST:
		return "backup-lost";
	case CKPT_FENCED:
		return "fenced";
	}
	return "?";
}

const char *ckpt_phase_name(enum ckpt_phase ph)
{
	static const char *const names[CKPT_NR_PHASES] = {
		[CKPT_PH_PAUSE] = "pause", [CKPT_PH_FETCH] = "fetch",
		[CKPT_PH_COPY] = "copy",   [CKPT_PH_VCPU] = "vcpu",
		[CKPT_PH_DEV] = "dev",	   [CKPT_PH_SEAL] = "seal",
		[CKPT_PH_RESUME] = "resume",
	};

	return (unsigned)ph < CKPT_NR_PHASES ? names[ph] : "?";
}

void ckpt_params_init(struct ckpt_params *p)
{
	memset(p, 0, sizeof(*p));
	p->interval_ms = CKPT_DEFAULT_INTERVAL_MS;
	p->timeout_ms = CKPT_DEFAULT_TIMEOUT_MS;
	p->cache_bytes = CKPT_DEFAULT_CACHE_BYTES;
	p->compress = STREAM_COMP_AUTO;
	p->netbuf.backend = NETBUF_INPROC;
	mig_params_init(&p->sync);
}

/* A device blob saved in the pause: header, then the data. */
struct dev_copy {
	struct hv_dev_rec rec; /* rec.data points after it */
};

struct ckpt {
	const struct hv_ops *ops;
	struct hv_domain *d;
	struct ckpt_params p;
	struct hv_dom_info info;
	uint64_t nr_pfns;
	uint64_t *pending; /* pages to send in the next epoch */
	unsigned nr_disks;
	uint64_t disk_blocks[FT_MAX_DISKS];
	uint64_t *disk_pending[FT_MAX_DISKS];
	/* staging, reused from epoch to epoch: page i of `pages` holds frame
	 * pfns[i]; the first nr_pre were copied before the pause (their
	 * frames marked in `staged`, pfns[] ascending) */
	uint64_t *pfns;
	unsigned char *pages;
	void **ptrs;
	uint64_t stage_cap; /* pages */
	uint64_t *staged;
	uint64_t nr_pre;
	uint64_t *redo_pfn, *redo_slot; /* in the pause: staged, dirty again */
	struct hv_vcpu_state *vcpus;
	unsigned char *devs; /* struct dev_copy + data, 8-aligned */
	size_t devs_len, devs_cap;
	unsigned nr_devs;
	struct diskrep_stage blocks; /* first epoch: dirty disk blocks */
	unsigned char *block;	     /* HV_DISK_BLOCK */
	struct pagecache cache;
	bool have_cache;
	struct netbuf *nb;
	struct diskrep *dr;
	int stop_efd;
	bool logging;
	bool no_nic; /* the domain has no NIC: netbuf has nothing to hold */
	uint64_t next_epoch;
	bool ran;
	/* shared with ckpt_get_stats */
	pthread_mutex_t lock;
	struct ckpt_stats st;
	uint64_t pause_hist[CKPT_HIST], ack_hist[CKPT_HIST];
	uint64_t phase_hist[CKPT_NR_PHASES][CKPT_HIST];
	uint64_t hist_n;
	uint64_t last_ack;
};

static void __attribute__((format(printf, 2, 3)))
set_error(struct ckpt *ck, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ck->lock);
	va_start(ap, fmt);
	vsnprintf(ck->st.error, sizeof(ck->st.error), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&ck->lock);
}

static void set_state(struct ckpt *ck, enum ckpt_state s)
{
	pthread_mutex_lock(&ck->lock);
	ck->st.state = s;
	pthread_mutex_unlock(&ck->lock);
}

int ckpt_open(const struct hv_ops *ops, struct hv_domain *d,
	      const struct ckpt_params *p, struct ckpt **out)
{
	struct ckpt *ck;
	int err;

	ck = calloc(1, sizeof(*ck));
	if (!ck)
		return -ENOMEM;
	ck->ops = ops;
	ck->d = d;
	if (p)
		ck->p = *p;
	else
		ckpt_params_init(&ck->p);
	if (!ck->p.interval_ms)
		ck->p.interval_ms = CKPT_DEFAULT_INTERVAL_MS;
	if (!ck->p.timeout_ms)
		ck->p.timeout_ms = CKPT_DEFAULT_TIMEOUT_MS;
	if (!ck->p.cache_bytes)
		ck->p.cache_bytes = CKPT_DEFAULT_CACHE_BYTES;
	ck->p.sync.timeout_ms = ck->p.timeout_ms;
	ck->p.sync.progress = NULL;
	pthread_mutex_init(&ck->lock, NULL);
	diskrep_stage_init(&ck->blocks);
	ck->stop_efd = -1;
	ck->next_epoch = 1;
	err = ops->info(d, &ck->info);
	if (err)
		goto fail;
	err = -ENOMEM;
	ck->nr_pfns = ck->info.mem_size / HV_PAGE_SIZE;
	ck->pending = calloc((ck->nr_pfns + 63) / 64, sizeof(uint64_t));
	ck->staged = calloc((ck->nr_pfns + 63) / 64, sizeof(uint64_t));
	ck->vcpus = calloc(ck->info.nr_vcpus, sizeof(*ck->vcpus));
	ck->block = malloc(HV_DISK_BLOCK);
	ck->ptrs = calloc(MAP_BATCH, sizeof(void *));
	if (!ck->pending || !ck->staged || !ck->vcpus || !ck->block ||
	    !ck->ptrs)
		goto fail;
	for (unsigned i = 0; ops->disk_info && i < FT_MAX_DISKS; i++) {
		uint64_t size;

		if (ops->disk_info(d, i, &size))
			break;
		ck->disk_blocks[i] = (size + HV_DISK_BLOCK - 1) / HV_DISK_BLOCK;
		ck->disk_pending[i] = calloc((ck->disk_blocks[i] + 63) / 64,
					     sizeof(uint64_t));
		if (!ck->disk_pending[i])
			goto fail;
		ck->nr_disks++;
	}
	if (!ck->p.no_delta) {
		err = pagecache_init(&ck->cache, ck->p.cache_bytes);
		if (err)
			goto fail;
		ck->have_cache = true;
	}
	ck->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ck->stop_efd < 0) {
		err = -errno;
		goto fail;
	}
	*out = ck;
	return 0;
fail:
	ckpt_close(ck);
	return err;
}

/* ---- the pause ---- */

static int stage_grow(struct ckpt *ck, uint64_t n)
{
	uint64_t cap = ck->stage_cap ? ck->stage_cap : 1024;
	unsigned char *pages;
	uint64_t *a;

	if (n <= ck->stage_cap)
		return 0;
	while (cap < n)
		cap *= 2;
	if (cap > ck->nr_pfns)
		cap = ck->nr_pfns;
	a = realloc(ck->pfns, cap * sizeof(*a));
	if (!a)
		return -ENOMEM;
	ck->pfns = a;
	a = realloc(ck->redo_pfn, cap * sizeof(*a));
	if (!a)
		return -ENOMEM;
	ck->redo_pfn = a;
	a = realloc(ck->redo_slot, cap * sizeof(*a));
	if (!a)
		return -ENOMEM;
	ck->redo_slot = a;
	pages = realloc(ck->pages, cap * HV_PAGE_SIZE);
	if (!pages)
		return -ENOMEM;
	ck->pages = pages;
	ck->stage_cap = cap;
	return 0;
}

static uint64_t popcount(const uint64_t *bm, uint64_t bits)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < (bits + 63) / 64; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* Copy frames pfns[0..n) into staging slots slots[i] (slots NULL: first,
 * first + 1, ...). */
static int copy_frames(struct ckpt *ck, const uint64_t *pfns,
		       const uint64_t *slots, uint64_t first, uint64_t n)
{
	for (uint64_t i = 0; i < n; i += MAP_BATCH) {
		unsigned m = n - i < MAP_BATCH ? (unsigned)(n - i) : MAP_BATCH;
		int err = ck->ops->map(ck->d, pfns + i, m, ck->ptrs);

		if (err)
			return err;
		for (unsigned j = 0; j < m; j++)
			memcpy(ck->pages + (slots ? slots[i + j] : first + i + j) *
						   HV_PAGE_SIZE,
			       ck->ptrs[j], HV_PAGE_SIZE);
		ck->ops->unmap(ck->d, ck->ptrs, m);
	}
	return 0;
}

/* The slot of frame `pfn` among the pages staged before the pause. */
static uint64_t prestaged_slot(const struct ckpt *ck, uint64_t pfn)
{
	uint64_t lo = 0, hi = ck->nr_pre;

	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;

		if (ck->pfns[mid] <= pfn)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/*
 * Copy the pending pages into the staging buffer and clear `pending`.
 * Pages staged before the pause and dirty again are copied again into
 * their slots (*recopied counts them); the others go after the staged
 * ones.  *count: the pages staged in all.
 */
static int stage_pages(struct ckpt *ck, uint64_t *count, uint64_t *recopied)
{
	uint64_t n = popcount(ck->pending, ck->nr_pfns), k = ck->nr_pre;
	uint64_t k0 = k, nr = 0;
	int err = stage_grow(ck, k + n);

	if (err)
		return err;
	for (uint64_t w = 0; w < (ck->nr_pfns + 63) / 64; w++) {
		uint64_t bits = ck->pending[w], again = bits & ck->staged[w];

		ck->pending[w] = 0;
		bits &= ~again;
		while (bits) {
			ck->pfns[k++] = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
		}
		while (again) {
			uint64_t pfn = w * 64 + (uint64_t)__builtin_ctzll(again);

			ck->redo_pfn[nr] = pfn;
			ck->redo_slot[nr++] = prestaged_slot(ck, pfn);
			again &= again - 1;
		}
	}
	err = copy_frames(ck, ck->redo_pfn, ck->redo_slot, 0, nr);
	if (!err)
		err = copy_frames(ck, ck->pfns + k0, NULL, k0, k - k0);
	*count = k;
	*recopied = nr;
	return err;
}

/*
 * Before the pause, while the guest runs: fetch the dirty set and, if it
 * is large, copy it into the staging buffer now.  The fetch re-protects
 * those pages before the copy reads them, so a write that lands after
 * the copy is in the pause's fetch, and stage_pages copies that page
 * again: the staged pages are the pages at the pause either way.  The
 * pause then copies only what the guest wrote during this copy (about a
 * millisecond for 1000 pages), not the whole epoch's dirty set.  Small
 * sets stay pending for the pause.
 */
static int prestage(struct ckpt *ck, uint64_t *pages)
{
	uint64_t n, k = 0;
	int err;

	*pages = 0;
	err = ck->ops->dirty_fetch(ck->d, ck->pending, ck->nr_pfns);
	if (err)
		return err;
	n = popcount(ck->pending, ck->nr_pfns);
	if (n < PRESTAGE_MIN)
		return 0;
	err = stage_grow(ck, n);
	if (err)
		return err;
	for (uint64_t w = 0; w < (ck->nr_pfns + 63) / 64; w++) {
		uint64_t bits = ck->pending[w];

		ck->staged[w] = bits;
		ck->pending[w] = 0;
		while (bits) {
			ck->pfns[k++] = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
		}
	}
	ck->nr_pre = k;
	*pages = k;
	return copy_frames(ck, ck->pfns, NULL, 0, k);
}

/* Forget what was staged before the pause (after the epoch's pause). */
static void prestage_clear(struct ckpt *ck)
{
	for (uint64_t i = 0; i < ck->nr_pre; i++)
		ck->staged[ck->pfns[i] / 64] = 0;
	ck->nr_pre = 0;
}

static int save_dev(void *ctx, const struct hv_dev_rec *rec)
{
	struct ckpt *ck = ctx;
	size_t need = sizeof(struct dev_copy) + ((rec->len + 7u) & ~7u);
	struct dev_copy dc = {.rec = *rec};

	if (ck->devs_len + need > ck->devs_cap) {
		size_t cap = ck->devs_cap ? ck->devs_cap : 64u << 10;
		unsigned char *b;

		while (cap < ck->devs_len + need)
			cap *= 2;
		b = realloc(ck->devs, cap);
		if (!b)
			return -ENOMEM;
		ck->devs = b;
		ck->devs_cap = cap;
	}
	dc.rec.data = NULL; /* set when sending: the buffer may move */
	memcpy(ck->devs + ck->devs_len, &dc, sizeof(dc));
	memcpy(ck->devs + ck->devs_len + sizeof(dc), rec->data, rec->len);
	ck->devs_len += need;
	ck->nr_devs++;
	return 0;
}

/* First epoch of a stream: the disk blocks written since the pre-copy's
 * last round, read now (paused) into ck->blocks. */
static int stage_blocks(struct ckpt *ck)
{
	int err = 0;

	diskrep_stage_clear(&ck->blocks);
	for (unsigned i = 0; !err && i < ck->nr_disks; i++) {
		uint64_t *bm = ck->disk_pending[i], size;

		err = ck->ops->disk_dirty_fetch(ck->d, i, bm,
						ck->disk_blocks[i]);
		if (!err)
			err = ck->ops->disk_info(ck->d, i, &size);
		for (uint64_t b = 0; !err && b < ck->disk_blocks[i]; b++) {
			uint64_t off = b * HV_DISK_BLOCK;
			uint32_t len;

			if (!(bm[b / 64] >> (b % 64) & 1))
				continue;
			bm[b / 64] &= ~(1ULL << (b % 64));
			len = size - off < HV_DISK_BLOCK ? (uint32_t)(size - off)
							 : HV_DISK_BLOCK;
			err = ck->ops->disk_read(ck->d, i, off, ck->block, len);
			if (!err)
				err = diskrep_stage_add(
					&ck->blocks, i, off, len,
					!ck->block[0] &&
							!memcmp(ck->block,
								ck->block + 1,
								len - 1)
						? NULL /* all zero */
						: ck->block);
		}
	}
	return err;
}

/*
 * Take epoch `epoch`: pause, collect, resume.  `first`: the first of a
 * stream (installs the hooks, sends the dirty disk blocks).
 */
static int take_epoch(struct ckpt *ck, uint64_t epoch, bool first,
		      uint64_t *pages, uint64_t *pause_ns, uint64_t *phase,
		      uint64_t *pre, uint64_t *recopied)
{
	uint64_t t0, t;
	int err, err2;

	*pre = *recopied = 0;
	if (!ck->p.no_prestage) {
		err = prestage(ck, pre);
		if (err) {
			prestage_clear(ck);
			set_error(ck, "checkpoint of epoch %llu failed before "
				  "the pause: %s",
				  (unsigned long long)epoch, strerror(-err));
			return err;
		}
	}
	t0 = t = now_ns();

	/* phase[i]: time from the end of step i - 1 to the end of step i */
#define PHASE_DONE(i)                          \
	do {                                   \
		uint64_t t_ = now_ns();        \
		phase[CKPT_PH_##i] = t_ - t;   \
		t = t_;                        \
	} while (0)
	memset(phase, 0, CKPT_NR_PHASES * sizeof(*phase));
	err = ck->ops->pause(ck->d);
	PHASE_DONE(PAUSE);
	if (err) {
		prestage_clear(ck);
		set_error(ck, "cannot pause the VM: %s", strerror(-err));
		return err;
	}
	err = ck->ops->dirty_fetch(ck->d, ck->pending, ck->nr_pfns);
	if (!err && first)
		err = stage_blocks(ck);
	if (!err && first && !ck->nb && !ck->no_nic) {
		err = netbuf_open(&ck->p.netbuf, ck->ops, ck->d, &ck->nb);
		if (err == -ENOENT && ck->p.netbuf.backend == NETBUF_INPROC) {
			/* No NIC: no output to hold. */
			ck->no_nic = true;
			err = 0;
		} else if (err)
			set_error(ck, "cannot hold the VM's network output "
				  "(netbuf %s): %s",
				  netbuf_backend_name(ck->p.netbuf.backend),
				  *log_last_err() ? log_last_err()
						  : strerror(-err));
	}
	if (!err && first && !ck->dr && ck->nr_disks) {
		err = diskrep_open(ck->ops, ck->d, ck->p.disk_log_bytes,
				   &ck->dr);
		if (err)
			set_error(ck, "cannot mirror the VM's disk writes: %s",
				  strerror(-err));
	}
	PHASE_DONE(FETCH);
	if (!err)
		err = stage_pages(ck, pages, recopied);
	PHASE_DONE(COPY);
	for (unsigned v = 0; !err && v < ck->info.nr_vcpus; v++)
		err = ck->ops->vcpu_save(ck->d, v, &ck->vcpus[v]);
	PHASE_DONE(VCPU);
	ck->devs_len = 0;
	ck->nr_devs = 0;
	if (!err)
		err = ck->ops->dev_save(ck->d, save_dev, ck);
	PHASE_DONE(DEV);
	if (!err && ck->nb)
		err = netbuf_seal(ck->nb, epoch);
	if (!err && ck->dr && !first)
		err = diskrep_seal(ck->dr, epoch);
	PHASE_DONE(SEAL);
	err2 = ck->ops->unpause(ck->d);
	PHASE_DONE(RESUME);
#undef PHASE_DONE
	*pause_ns = t - t0;
	prestage_clear(ck);
	if (err2) {
		set_error(ck, "CANNOT RESUME the VM after a checkpoint: %s",
			  strerror(-err2));
		return err2;
	}
	if (err && !ck->st.error[0])
		set_error(ck, "checkpoint of epoch %llu failed: %s",
			  (unsigned long long)epoch, strerror(-err));
	return err;
}

/* ---- sending ---- */

static int send_epoch(struct ckpt *ck, struct stream_writer *w,
		      uint64_t epoch, uint64_t pages, bool first)
{
	int err = stream_write_ckpt_begin(w, epoch);

	for (uint64_t i = 0; !err && i < pages; i += MAP_BATCH) {
		unsigned m = pages - i < MAP_BATCH ? (unsigned)(pages - i)
						   : MAP_BATCH;

		for (unsigned j = 0; j < m; j++)
			ck->ptrs[j] = ck->pages + (i + j) * HV_PAGE_SIZE;
		err = stream_write_pages(w, ck->pfns + i, ck->ptrs, m);
	}
	if (!err && first)
		err = diskrep_stage_send(&ck->blocks, w, epoch);
	if (!err && ck->dr && !first)
		err = diskrep_send(ck->dr, w);
	for (unsigned v = 0; !err && v < ck->info.nr_vcpus; v++)
		err = stream_write_vcpu(w, v, &ck->vcpus[v]);
	for (size_t at = 0, n = 0; !err && n < ck->nr_devs; n++) {
		struct dev_copy dc;

		memcpy(&dc, ck->devs + at, sizeof(dc));
		dc.rec.data = ck->devs + at + sizeof(dc);
		err = stream_write_device(w, &dc.rec);
		at += sizeof(dc) + ((dc.rec.len + 7u) & ~7u);
	}
	if (!err)
		err = stream_write_ckpt_end(w);
	if (!err)
		err = chan_flush(w->chan, false);
	return err;
}

/* A sentence for a channel error talking to the backup. */
static const char *chan_error_text(int err)
{
	static __thread char buf[160];
	const char *why = mig_chan_error(err, "backup", buf, sizeof(buf));

	return why ? why : strerror(-err);
}

/* Wait for the ack of `epoch` (or the backup's ERR). */
static int wait_ack(struct ckpt *ck, struct chan *c, uint64_t epoch)
{
	unsigned char raw[16];
	struct ckpt_ack a;
	int err = chan_read(c, raw, sizeof(raw));

	if (err) {
		set_error(ck, "no acknowledgement of epoch %llu: %s",
			  (unsigned long long)epoch, chan_error_text(err));
		return err;
	}
	if (!memcmp(raw, MIG_MSG_ERR, 8)) {
		struct mig_msg m;
		char text[MIG_MSG_TEXT_MAX + 1] = "";
		uint32_t len;

		memcpy(&m, raw, sizeof(m));
		len = le32toh(m.msg_len);
		if (len > MIG_MSG_TEXT_MAX || chan_read(c, text, len))
			len = 0;
		text[len] = 0;
		set_error(ck, "the backup refused epoch %llu: %s",
			  (unsigned long long)epoch, text);
		err = -(int)le32toh(m.err);
		return err < 0 && err > -4096 ? err : -EPROTO;
	}
	memcpy(&a, raw, sizeof(a));
	if (memcmp(a.magic, CKPT_MSG_ACK, 8) || le64toh(a.epoch) != epoch) {
		set_error(ck, "unexpected answer from the backup (%.8s, epoch "
			  "%llu) to epoch %llu",
			  a.magic, (unsigned long long)le64toh(a.epoch),
			  (unsigned long long)epoch);
		return -EPROTO;
	}
	return 0;
}

/* Wait until the next epoch is due, an early one is asked for, or stop.
 * Returns 1 for stop, 0 otherwise. */
static int wait_due(struct ckpt *ck, uint64_t due, bool *early)
{
	for (;;) {
		struct pollfd pfd[3] = {
			{.fd = ck->stop_efd, .events = POLLIN},
			{.fd = ck->nb ? netbuf_event_fd(ck->nb) : -1,
			 .events = POLLIN},
			{.fd = ck->dr ? diskrep_event_fd(ck->dr) : -1,
			 .events = POLLIN},
		};
		uint64_t now = now_ns();
		int ms, n;

		if (now >= due)
			return 0;
		ms = (int)((due - now + NSEC_PER_MS - 1) / NSEC_PER_MS);
		n = poll(pfd, 3, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		if (pfd[0].revents)
			return 1;
		*early = true;
		return 0;
	}
}

static uint64_t pct(uint64_t *sorted, uint64_t n, unsigned p)
{
	uint64_t i = n ? (n * p + 99) / 100 : 0;

	return n ? sorted[i ? i - 1 : 0] : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void ckpt_get_stats(struct ckpt *ck, struct ckpt_stats *out)
{
	uint64_t tmp[CKPT_HIST]; /* 32 KiB */
	uint64_t n;

	pthread_mutex_lock(&ck->lock);
	*out = ck->st;
	n = ck->hist_n < CKPT_HIST ? ck->hist_n : CKPT_HIST;
	memcpy(tmp, ck->pause_hist, n * sizeof(*tmp));
	qsort(tmp, n, sizeof(*tmp), cmp_u64);
	out->pause_p50_ns = pct(tmp, n, 50);
	out->pause_p99_ns = pct(tmp, n, 99);
	memcpy(tmp, ck->ack_hist, n * sizeof(*tmp));
	qsort(tmp, n, sizeof(*tmp), cmp_u64);
	out->ack_p50_ns = pct(tmp, n, 50);
	out->ack_p99_ns = pct(tmp, n, 99);
	for (unsigned i = 0; i < CKPT_NR_PHASES; i++) {
		memcpy(tmp, ck->phase_hist[i], n * sizeof(*tmp));
		qsort(tmp, n, sizeof(*tmp), cmp_u64);
		out->phase[i].p50_ns = pct(tmp, n, 50);
		out->phase[i].p99_ns = pct(tmp, n, 99);
	}
	out->since_ack_ns = ck->last_ack ? now_ns() - ck->last_ack : 0;
	pthread_mutex_unlock(&ck->lock);
	if (ck->nb)
		netbuf_get_stats(ck->nb, &out->net);
	if (ck->dr)
		diskrep_get_stats(ck->dr, &out->disk);
}

static int sync_progress(void *ctx, const struct mig_progress *pr)
{
	struct ckpt *ck = ctx;
	struct pollfd pfd = {.fd = ck->stop_efd, .events = POLLIN};

	/* A stop during the sync cancels it; the request stays pending. */
	if (poll(&pfd, 1, 0) > 0)
		return -ECANCELED;
	return ck->p.event ? ck->p.event(ck->p.event_ctx, CKPT_EV_SYNC, pr)
			   : 0;
}

static void record_epoch(struct ckpt *ck, const struct stream_writer *w,
			 const struct stream_stats *before, uint64_t epoch,
			 uint64_t pages, uint64_t pause_ns,
			 const uint64_t *phase, uint64_t ack_ns, uint64_t bytes)
{
	const struct stream_stats *a = &w->stats;

	pthread_mutex_lock(&ck->lock);
	ck->st.epoch = epoch;
	ck->st.epochs++;
	ck->st.pages += pages;
	ck->st.bytes += bytes;
	ck->st.last_pages = pages;
	ck->st.last_bytes = bytes;
	ck->st.pages_xor += a->pages_xor - before->pages_xor;
	ck->st.pages_lz4 += a->pages_lz4 - before->pages_lz4;
	ck->st.pages_zero += a->pages_zero - before->pages_zero;
	ck->st.page_bytes += (a->lz4_bytes - before->lz4_bytes) +
			     (a->xor_bytes - before->xor_bytes) +
			     (a->pages_raw - before->pages_raw) * FT_PAGE_SIZE;
	ck->st.pause_last_ns = pause_ns;
	if (pause_ns > ck->st.pause_max_ns)
		ck->st.pause_max_ns = pause_ns;
	ck->pause_hist[ck->hist_n % CKPT_HIST] = pause_ns;
	ck->ack_hist[ck->hist_n % CKPT_HIST] = ack_ns;
	for (unsigned i = 0; i < CKPT_NR_PHASES; i++) {
		ck->phase_hist[i][ck->hist_n % CKPT_HIST] = phase[i];
		if (phase[i] > ck->st.phase[i].max_ns)
			ck->st.phase[i].max_ns = phase[i];
	}
	ck->hist_n++;
	ck->last_ack = now_ns();
	if (ck->have_cache) {
		ck->st.cache_hits = ck->cache.stats.hits;
		ck->st.cache_misses = ck->cache.stats.misses;
	}
	pthread_mutex_unlock(&ck->lock);
}

int ckpt_run(struct ckpt *ck, struct chan *c)
{
	struct stream_writer w;
	struct stream_stats before;
	struct ckpt_params *p = &ck->p;
	uint64_t due = 0, junk;
	bool first = true, have_w = false;
	int err;

	if (read(ck->stop_efd, &junk, sizeof(junk)) < 0 && errno != EAGAIN)
		return -errno;
	pthread_mutex_lock(&ck->lock);
	if (ck->ran)
		ck->st.resyncs++;
	ck->ran = true;
	ck->st.error[0] = 0;
	ck->st.state = CKPT_SYNCING;
	pthread_mutex_unlock(&ck->lock);
	memset(ck->pending, 0, (ck->nr_pfns + 63) / 64 * sizeof(uint64_t));
	/* A resync copies the disks whole again (the pre-copy's block log
	 * sees every write from now on): the old write log goes.  The held
	 * network output stays held until the first epoch commits. */
	diskrep_close(ck->dr);
	ck->dr = NULL;

	err = stream_writer_init(&w, c,
				 FT_STREAM_F_LIVE | FT_STREAM_F_CHECKPOINT,
				 (enum stream_compress)p->compress);
	if (err) {
		set_error(ck, "%s", strerror(-err));
		return err;
	}
	have_w = true;
	err = stream_write_header(&w);
	if (!err)
		err = stream_write_domain(&w, ck->info.mem_size,
					  ck->info.nr_vcpus);
	if (!err) {
		struct mig_params sp = p->sync;
		struct mig_stats *ss = malloc(sizeof(*ss));

		sp.progress = sync_progress;
		sp.progress_ctx = ck;
		err = ss ? mig_presync(ck->ops, ck->d, c, &w, &sp, ss,
				       ck->pending, ck->disk_pending)
			 : -ENOMEM;
		if (ss) {
			pthread_mutex_lock(&ck->lock);
			ck->st.sync = *ss;
			pthread_mutex_unlock(&ck->lock);
			if (err)
				set_error(ck, "initial synchronisation: %s",
					  ss->error[0] ? ss->error
						       : strerror(-err));
			free(ss);
		}
		if (!err)
			ck->logging = true;
	} else {
		set_error(ck, "cannot start the stream: %s", strerror(-err));
	}
	if (err)
		goto out;
	stream_writer_set_link_rate(&w, ck->st.sync.link_rate);
	if (ck->have_cache)
		stream_writer_set_cache(&w, &ck->cache);

	for (;;) {
		uint64_t epoch = ck->next_epoch, pages = 0, pause_ns, t_run,
			 bytes0, phase[CKPT_NR_PHASES], pre, recopied;
		bool early = false;

		if (!first) {
			int stop = wait_due(ck, due, &early);

			if (stop) {
				err = stream_write_end(&w);
				if (err)
					set_error(ck, "cannot end the stream: "
						  "%s",
						  strerror(-err));
				break;
			}
		}
		due = now_ns() + (uint64_t)p->interval_ms * NSEC_PER_MS;
		ck->next_epoch++;
		err = take_epoch(ck, epoch, first, &pages, &pause_ns, phase,
				 &pre, &recopied);
		if (err)
			break;
		t_run = now_ns();
		before = w.stats;
		bytes0 = c->bytes_out;
		err = send_epoch(ck, &w, epoch, pages, first);
		if (err) {
			set_error(ck, "sending epoch %llu: %s",
				  (unsigned long long)epoch,
				  chan_error_text(err));
			break;
		}
		err = wait_ack(ck, c, epoch);
		if (err)
			break;
		if (ck->nb)
			netbuf_release(ck->nb, epoch);
		if (ck->dr)
			diskrep_release(ck->dr);
		record_epoch(ck, &w, &before, epoch, pages, pause_ns, phase,
			     now_ns() - t_run, c->bytes_out - bytes0);
		pthread_mutex_lock(&ck->lock);
		ck->st.prestaged += pre;
		ck->st.recopied += recopied;
		if (early)
			ck->st.early++;
		if (now_ns() > due && !first)
			ck->st.stretched++;
		pthread_mutex_unlock(&ck->lock);
		if (first) {
			pthread_mutex_lock(&ck->lock);
			ck->st.state = CKPT_PROTECTED;
			ck->st.protected_ns = now_ns();
			pthread_mutex_unlock(&ck->lock);
			log_info("protected: epoch %llu committed on the "
				 "backup (%llu pages; pause %.2f ms)",
				 (unsigned long long)epoch,
				 (unsigned long long)pages,
				 (double)pause_ns / 1e6);
			if (p->event)
				p->event(p->event_ctx, CKPT_EV_PROTECTED, NULL);
			first = false;
		}
	}
out:
	if (have_w) {
		if (ck->have_cache)
			stream_writer_set_cache(&w, NULL);
		stream_writer_fini(&w);
	}
	if (ck->logging) {
		ck->ops->dirty_log(ck->d, false);
		ck->logging = false;
	}
	if (!err) {
		/* Stopped: nothing is speculative any more. */
		int e = ckpt_unprotect(ck);

		log_info("protection ended; the backup drops its replica");
		return e;
	}
	set_state(ck, ck->nb ? CKPT_LOST : CKPT_IDLE);
	pthread_mutex_lock(&ck->lock);
	if (!ck->st.error[0])
		snprintf(ck->st.error, sizeof(ck->st.error), "%s",
			 strerror(-err));
	pthread_mutex_unlock(&ck->lock);
	log_err("protection %s: %s",
		ck->nb ? "LOST, the VM's output is held" : "failed",
		ck->st.error);
	return err;
}

void ckpt_stop(struct ckpt *ck)
{
	uint64_t one = 1;

	if (write(ck->stop_efd, &one, sizeof(one)) < 0)
		log_err("ckpt: stop: %s", strerror(errno));
}

int ckpt_unprotect(struct ckpt *ck)
{
	int err = 0;

	if (ck->nb) {
		err = netbuf_release_all(ck->nb);
		netbuf_get_stats(ck->nb, &ck->st.net);
		netbuf_close(ck->nb, true);
		ck->nb = NULL;
	}
	if (ck->dr) {
		diskrep_get_stats(ck->dr, &ck->st.disk);
		diskrep_close(ck->dr);
		ck->dr = NULL;
	}
	set_state(ck, CKPT_IDLE);
	return err;
}

int ckpt_fence(struct ckpt *ck)
{
	int err = ck->ops->pause(ck->d);

	if (ck->nb) {
		netbuf_get_stats(ck->nb, &ck->st.net);
		netbuf_close(ck->nb, false);
		ck->nb = NULL;
	}
	if (ck->dr) {
		diskrep_close(ck->dr);
		ck->dr = NULL;
	}
	set_state(ck, CKPT_FENCED);
	return err;
}

void ckpt_close(struct ckpt *ck)
{
	if (!ck)
		return;
	if (ck->st.state != CKPT_FENCED)
		ckpt_unprotect(ck);
	if (ck->have_cache)
		pagecache_fini(&ck->cache);
	for (unsigned i = 0; i < FT_MAX_DISKS; i++)
		free(ck->disk_pending[i]);
	diskrep_stage_fini(&ck->blocks);
	free(ck->pending);
	free(ck->staged);
	free(ck->redo_pfn);
	free(ck->redo_slot);
	free(ck->vcpus);
	free(ck->block);
	free(ck->ptrs);
	free(ck->pfns);
	free(ck->pages);
	free(ck->devs);
	if (ck->stop_efd >= 0)
		close(ck->stop_efd);
	pthread_mutex_destroy(&ck->lock);
	free(ck);
}
