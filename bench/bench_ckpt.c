// SPDX-License-Identifier: MIT
/*
 * bench_ckpt.c - checkpointing (Remus) end to end on this machine: the
 * real engine (checkpoint/ckpt.h: ckpt_open / ckpt_run) protects a bench
 * guest to a backup in the same process (ckpt_recv into a real replica
 * domain) over plain TCP on the loopback, while the guest dirties an
 * exact number of scattered pages per epoch.
 *
 *   build/bench/bench_ckpt [--quick] [--mem MIB] [--levels K[,K...]]
 *                          [--epochs N] [--run PAGES] [--wss-factor F]
 *                          [--workloads random,word] [--no-verify]
 *   build/bench/bench_ckpt --kvstore SECONDS [--disk-dir DIR]   (root)
 *   build/bench/bench_ckpt --cow-probe [--mem MIB]
 *
 * Synthetic mode (default).  One 512 MiB domain runs `benchguest dirty`
 * over a 384 MiB arena that the host first fills with random bytes.  The
 * bench asks the guest, through bench/mailbox.h, to write one word into
 * each of K pages per epoch: K/RUN runs of RUN contiguous pages (default
 * 16, 64 KiB; --run 1 for single pages, slower to drive: each request
 * costs the guest two clock hypercalls) drawn at random from a hot set of
 * F * K pages (default F = 2) scattered over the arena.  Epochs are seen
 * through a wrapper around hv_ops unpause.  Drives:
 *   burst   after each resume, the K pages as fast as the guest can;
 *   paced   the K pages spread evenly over the interval, so the guest is
 *           still writing when the pause comes.
 * The interval is 25 ms, or twice the measured time the guest needs for
 * K pages plus 10 ms if longer (each first write after a fetch costs it
 * ~10 us here), so an epoch carries K pages (plus the mailbox page); the
 * pages taken per epoch are counted in a wrapper around hv_ops
 * dirty_fetch.  Pause runs take 100..400 epochs (--quick: 20..100; the
 * percentiles include the stream's first epoch, so with fewer than 100
 * the p99 is the max).
 * Workloads:
 *   random  the host first overwrites each of those pages with fresh
 *           random bytes (host writes are not dirty-logged: the guest's
 *           word marks the page), so no page compresses or deltas;
 *   word    only the guest's 8-byte store changes each page (the rest
 *           is the random fill): what xor deltas are for.
 * Per K: both workloads with deltas (the default) and without
 * (ckpt_params.no_delta), burst; and `word` burst and paced with and
 * without the copy before the pause (ckpt_params.no_prestage: all of the
 * copy in the pause, as before it existed).  Reported, from
 * ckpt_get_stats: the pause p50/p99/max and by phase, epochs per second,
 * stream bytes per epoch and encoded page bytes per page, the delta
 * cache hit rate, the pages copied before the pause.  After each run
 * the primary is paused, two more epochs commit, and the replica's RAM
 * must equal the primary's byte for byte (--no-verify skips it).  A
 * rate table follows: epochs/s at the minimum interval (5 ms) with the
 * guest idle and with it dirtying 1000-page batches back to back.
 *
 * --kvstore: root only.  In a network namespace of its own, the kvstore
 * guest (128 MiB, 256 MiB disk image in DIR, default /var/tmp) serves
 * redis-benchmark (set,get, 4 connections, pipeline 8, as
 * tests/e2e/test_protect.sh) and is protected for SECONDS with netbuf
 * (in-process) and disk replication, as ftvm does it; prints the pause
 * and its phases.
 *
 * --cow-probe: does userfaultfd write-protection (the copy-on-write
 * that would take the page copy out of the pause) work on guest RAM
 * here, and what does it cost; see cow_probe() below.
 *
 * Every mode prints the load average, how often a spinning thread loses
 * its CPU for more than 0.1 / 1 / 5 ms (the other load and the
 * hypervisor under this machine: context for any p99 here), and the
 * share of CPU time the hypervisor stole during the run (/proc/stat).
 *
 * Numbers only; nothing is judged.  Exit 1 on any failure, including a
 * replica that differs from the primary.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchvm.h"
#include "chan_net.h"
#include "checkpoint/ckpt.h"
#include "mailbox.h"

#define MIB (1ULL << 20)
#define MAX_LEVELS 4
#define MAX_EPOCHS 100000
#define POOL_PAGES 4096 /* 16 MiB of random bytes */
#define KV_GUEST_DEFAULT "build/guest/kvstore.elf"

enum workload { WL_RANDOM, WL_WORD, NR_WL };
static const char *const wl_names[NR_WL] = { "random", "word" };

struct opts {
	uint64_t mem_mib, arena_mib;
	uint64_t levels[MAX_LEVELS];
	unsigned nlevels;
	unsigned epochs; /* per run; 0: by level */
	unsigned run;	 /* pages per guest request */
	unsigned wss_factor;
	bool wl[NR_WL];
	bool quick, verify;
	unsigned kvstore_s;
	const char *disk_dir;
	bool cow_probe;
};

/* ---- the hv_ops wrapper: epochs as the bench sees them ---- */

static struct {
	uint64_t unpauses; /* atomic: bumped after every unpause */
	bool recording;	   /* atomic */
	uint64_t counts[MAX_EPOCHS]; /* pages taken by each fetch */
	unsigned ncounts;	     /* atomic */
} W;

static struct hv_ops w_ops;

static int w_unpause(struct hv_domain *d)
{
	int err = kvm_hv_ops.unpause(d);

	__atomic_fetch_add(&W.unpauses, 1, __ATOMIC_RELEASE);
	return err;
}

/* Pages each fetch adds to the engine's bitmap (an epoch has two: before
 * its pause and in it, unless prestage is off).  Two popcounts, ~0.5 us
 * for 512 MiB, inside the pause for the second. */
static uint64_t bm_count(const uint64_t *bm, uint64_t nr_pfns)
{
	uint64_t c = 0;

	for (uint64_t i = 0; i < (nr_pfns + 63) / 64; i++)
		c += (uint64_t)__builtin_popcountll(bm[i]);
	return c;
}

static int w_fetch(struct hv_domain *d, uint64_t *bm, uint64_t nr_pfns)
{
	bool rec = __atomic_load_n(&W.recording, __ATOMIC_ACQUIRE);
	uint64_t before = rec ? bm_count(bm, nr_pfns) : 0;
	int err = kvm_hv_ops.dirty_fetch(d, bm, nr_pfns);
	unsigned n = __atomic_load_n(&W.ncounts, __ATOMIC_RELAXED);

	if (!err && rec && n < MAX_EPOCHS) {
		W.counts[n] = bm_count(bm, nr_pfns) - before;
		__atomic_store_n(&W.ncounts, n + 1, __ATOMIC_RELEASE);
	}
	return err;
}

static void w_init(void)
{
	w_ops = kvm_hv_ops;
	w_ops.unpause = w_unpause;
	w_ops.dirty_fetch = w_fetch;
}

/* ---- the backup: a thread that accepts streams and runs ckpt_recv ---- */

struct backup {
	int lfd;
	char addr[64];
	pthread_t thread;
	struct ckpt_replica rp;
	struct kvm_cfg cfg;  /* for the replica's domain */
	char disk[4096];     /* the replica's image, if any */
	volatile bool quit;
	int last_err;	     /* of the last ckpt_recv */
};

static int bk_create(void *ctx, const struct hv_dom_info *info,
		     struct hv_domain **out)
{
	struct backup *b = ctx;

	if (b->disk[0] && unlink(b->disk) < 0 && errno != ENOENT)
		return -errno;
	return kvm_create_opts(info, &b->cfg, NULL, out);
}

static void *bk_thread(void *arg)
{
	struct chan_tls_cfg tls = { .insecure = true };
	struct backup *b = arg;

	while (!b->quit) {
		struct pollfd pfd = { .fd = b->lfd, .events = POLLIN };
		struct chan *c;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		if (chan_net_accept(b->lfd, &tls, 5000, &c))
			continue;
		b->last_err = ckpt_recv(&kvm_hv_ops, c, 10000, bk_create, b,
					&b->rp);
		chan_close(c);
	}
	return NULL;
}

static int bk_start(struct backup *b, const char *ip)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char laddr[64];
	int err;

	ckpt_replica_init(&b->rp);
	snprintf(laddr, sizeof(laddr), "%s:0", ip);
	err = chan_net_listen(laddr, &b->lfd);
	if (err)
		return err;
	if (getsockname(b->lfd, (struct sockaddr *)&ss, &sl) < 0) {
		err = -errno;
		close(b->lfd);
		return err;
	}
	snprintf(b->addr, sizeof(b->addr), "%s:%u", ip,
		 ntohs(((struct sockaddr_in *)&ss)->sin_port));
	err = -pthread_create(&b->thread, NULL, bk_thread, b);
	if (err)
		close(b->lfd);
	return err;
}

static void bk_stop(struct backup *b)
{
	b->quit = true;
	pthread_join(b->thread, NULL);
	close(b->lfd);
	ckpt_replica_fini(&b->rp, &kvm_hv_ops);
	if (b->disk[0])
		unlink(b->disk);
}

/* ---- the primary: ckpt_run on a thread ---- */

struct prot {
	struct ckpt *ck;
	struct chan *c;
	pthread_t thread;
	int err;
	volatile bool done;
};

static void *prot_thread(void *arg)
{
	struct prot *pr = arg;

	pr->err = ckpt_run(pr->ck, pr->c);
	pr->done = true;
	return NULL;
}

/* Connect to the backup, open the engine and run it until the first epoch
 * committed.  On success the caller calls prot_stop. */
static int prot_start(struct prot *pr, struct hv_domain *d,
		      const struct backup *b, const struct ckpt_params *p)
{
	struct chan_tls_cfg tls = { .insecure = true };
	uint64_t end = bench_ns() + 120ULL * 1000000000ULL;
	struct ckpt_stats st;
	int err;

	memset(pr, 0, sizeof(*pr));
	err = chan_net_connect(b->addr, &tls, 5000, &pr->c);
	if (err)
		return err;
	err = ckpt_open(&w_ops, d, p, &pr->ck);
	if (err) {
		chan_close(pr->c);
		return err;
	}
	err = -pthread_create(&pr->thread, NULL, prot_thread, pr);
	if (err) {
		ckpt_close(pr->ck);
		chan_close(pr->c);
		return err;
	}
	for (;;) {
		ckpt_get_stats(pr->ck, &st);
		if (st.state == CKPT_PROTECTED)
			return 0;
		if (pr->done || bench_ns() > end) {
			log_err("protection did not start: %s",
				pr->done ? st.error : "timeout");
			break;
		}
		usleep(1000);
	}
	ckpt_stop(pr->ck);
	pthread_join(pr->thread, NULL);
	ckpt_close(pr->ck);
	chan_close(pr->c);
	return pr->err ? pr->err : -ETIMEDOUT;
}

static int prot_stop(struct prot *pr)
{
	int err;

	ckpt_stop(pr->ck);
	pthread_join(pr->thread, NULL);
	err = pr->err;
	ckpt_close(pr->ck);
	chan_close(pr->c);
	return err;
}

/* ---- the synthetic guest ---- */

struct prim {
	struct bvm vm;
	struct bench_mailbox *mb;
	uint64_t base_pfn, pages; /* the arena */
	uint64_t nr_pfns;
	uint64_t seq;
	unsigned char *mem; /* guest RAM as the host maps it */
	unsigned char *pool;
	uint64_t rng;
};

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static unsigned char *page_ptr(struct prim *p, uint64_t arena_page)
{
	return p->mem + (p->base_pfn + arena_page) * HV_PAGE_SIZE;
}

/* Ask the guest to write one word into `count` arena pages from `first`;
 * wait for it.  Polls with usleep: spinning here competes with the vCPU
 * thread for the 2 cores and made each request 10-20 times slower. */
static int mb_dirty(struct prim *p, uint64_t first, uint64_t count)
{
	uint64_t t_end = bench_ns() + 60ULL * 1000000000ULL;

	p->mb->first = first;
	p->mb->count = count;
	__atomic_store_n(&p->mb->seq, ++p->seq, __ATOMIC_RELEASE);
	while (__atomic_load_n(&p->mb->done, __ATOMIC_ACQUIRE) != p->seq) {
		if (bench_ns() > t_end) {
			log_err("the guest did not answer in 60 s");
			return -ETIMEDOUT;
		}
		usleep(20);
	}
	return 0;
}

static int prim_start(struct prim *p, const struct opts *o)
{
	char cmd[64];
	const char *line;
	long long mbox, base, pages;
	uint64_t pfn0 = 0, t_end;
	void *ptr;
	int err;

	memset(p, 0, sizeof(*p));
	p->rng = 0x9e3779b97f4a7c15ULL;
	p->nr_pfns = o->mem_mib * MIB / HV_PAGE_SIZE;
	snprintf(cmd, sizeof(cmd), "dirty %llu",
		 (unsigned long long)o->arena_mib);
	err = bvm_start(&p->vm, bench_guest(), o->mem_mib * MIB, cmd, NULL);
	if (err)
		return err;
	line = bvm_wait_line(&p->vm, "benchguest: dirty ", 60);
	mbox = line ? bvm_field(line, "mailbox") : -1;
	base = line ? bvm_field(line, "base") : -1;
	pages = line ? bvm_field(line, "pages") : -1;
	if (mbox <= 0 || base <= 0 || pages <= 0 || mbox % HV_PAGE_SIZE ||
	    base % HV_PAGE_SIZE) {
		log_err("bad guest output:\n%s", p->vm.out);
		err = -EPROTO;
		goto fail;
	}
	/* hv/kvm maps all of RAM at once: frame 0's pointer is the base. */
	err = kvm_hv_ops.map(p->vm.d, &pfn0, 1, &ptr);
	if (err)
		goto fail;
	p->mem = ptr;
	p->mb = (struct bench_mailbox *)(p->mem + mbox);
	p->base_pfn = (uint64_t)base / HV_PAGE_SIZE;
	p->pages = (uint64_t)pages;
	t_end = bench_ns() + 10ULL * 1000000000ULL;
	while (__atomic_load_n(&p->mb->magic, __ATOMIC_ACQUIRE) !=
	       BENCH_MB_MAGIC) {
		if (bench_ns() > t_end) {
			log_err("guest mailbox never came up");
			err = -ETIMEDOUT;
			goto fail;
		}
		usleep(100);
	}
	err = -ENOMEM;
	p->pool = malloc(POOL_PAGES * HV_PAGE_SIZE);
	if (!p->pool)
		goto fail;
	for (uint64_t i = 0; i < POOL_PAGES * HV_PAGE_SIZE / 8; i++)
		((uint64_t *)p->pool)[i] = rng_next(&p->rng);
	/* Random content everywhere in the arena (not logged: before
	 * protection, so the pre-copy sends it). */
	for (uint64_t i = 0; i < p->pages; i++)
		memcpy(page_ptr(p, i),
		       p->pool + (rng_next(&p->rng) % POOL_PAGES) *
					 HV_PAGE_SIZE,
		       HV_PAGE_SIZE);
	return 0;
fail:
	bvm_stop(&p->vm);
	free(p->pool);
	return err;
}

static void prim_stop(struct prim *p)
{
	__atomic_store_n(&p->mb->quit, 1, __ATOMIC_RELEASE);
	bvm_wait_exit(&p->vm, 10);
	bvm_stop(&p->vm);
	free(p->pool);
}

/* Runs of `run` pages: the hot set and a per-epoch draw from it. */
struct draw {
	uint64_t *runs; /* first arena page of each hot run, shuffled */
	uint64_t nr_runs, per_epoch;
	unsigned run;
};

static int draw_init(struct draw *dw, struct prim *p, uint64_t k,
		     unsigned run, unsigned factor)
{
	uint64_t all = p->pages / run, hot;

	dw->run = run;
	dw->per_epoch = (k + run - 1) / run;
	hot = dw->per_epoch * factor;
	if (hot > all)
		hot = all;
	if (dw->per_epoch > hot) {
		log_err("%llu dirty pages per epoch do not fit the arena "
			"(%llu pages)", (unsigned long long)k,
			(unsigned long long)p->pages);
		return -EINVAL;
	}
	dw->runs = malloc(all * sizeof(*dw->runs));
	if (!dw->runs)
		return -ENOMEM;
	for (uint64_t i = 0; i < all; i++)
		dw->runs[i] = i * run;
	/* The hot set: `hot` runs at random places of the arena. */
	for (uint64_t i = 0; i < hot; i++) {
		uint64_t j = i + rng_next(&p->rng) % (all - i), t = dw->runs[i];

		dw->runs[i] = dw->runs[j];
		dw->runs[j] = t;
	}
	dw->nr_runs = hot;
	return 0;
}

/* Dirty the draw's i-th run: a run not drawn yet this epoch (a partial
 * Fisher-Yates shuffle of the hot set), filled in `wl`'s way. */
static int dirty_run(struct draw *dw, struct prim *p, enum workload wl,
		     uint64_t i)
{
	uint64_t j = i + rng_next(&p->rng) % (dw->nr_runs - i);
	uint64_t t = dw->runs[i];

	dw->runs[i] = dw->runs[j];
	dw->runs[j] = t;
	if (wl == WL_RANDOM)
		for (unsigned r = 0; r < dw->run; r++)
			memcpy(page_ptr(p, dw->runs[i] + r),
			       p->pool + (rng_next(&p->rng) % POOL_PAGES) *
						 HV_PAGE_SIZE,
			       HV_PAGE_SIZE);
	return mb_dirty(p, dw->runs[i], dw->run);
}

/* Dirty per_epoch runs drawn from the hot set, in `wl`'s way. */
static int draw_dirty(struct draw *dw, struct prim *p, enum workload wl)
{
	for (uint64_t i = 0; i < dw->per_epoch; i++) {
		int err = dirty_run(dw, p, wl, i);

		if (err)
			return err;
	}
	return 0;
}

/* ms the guest takes to dirty a draw of `dw`'s size with logging on,
 * every write the first to a re-protected page (as in an epoch). */
static int calibrate(struct prim *p, struct draw *dw, double *ms)
{
	uint64_t *bm = calloc((p->nr_pfns + 63) / 64, 8), t0;
	int err;

	if (!bm)
		return -ENOMEM;
	err = kvm_hv_ops.dirty_log(p->vm.d, true);
	if (!err)
		err = draw_dirty(dw, p, WL_WORD);
	if (!err)
		err = kvm_hv_ops.dirty_fetch(p->vm.d, bm, p->nr_pfns);
	t0 = bench_ns();
	if (!err)
		err = draw_dirty(dw, p, WL_WORD);
	*ms = (double)(bench_ns() - t0) / 1e6;
	if (!err)
		err = kvm_hv_ops.dirty_fetch(p->vm.d, bm, p->nr_pfns);
	kvm_hv_ops.dirty_log(p->vm.d, false);
	free(bm);
	return err;
}

/* ---- one measured run ---- */

struct result {
	bool ran;
	unsigned interval_ms;
	uint64_t epochs;
	double secs;
	struct ckpt_stats st; /* at the end */
	uint64_t bytes, pages, page_bytes, hits, misses; /* over the run */
	uint64_t prestaged, recopied;
	uint64_t pp_med, pp_min, pp_max; /* pages taken per epoch */
	int verified; /* 1 equal, 0 skipped, -1 differs */
	uint64_t diff_pages;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Wait until the engine committed `n` more epochs than `from`. */
static int wait_epochs(struct prot *pr, uint64_t from, uint64_t n)
{
	uint64_t end = bench_ns() + 30ULL * 1000000000ULL;
	struct ckpt_stats st;

	for (;;) {
		ckpt_get_stats(pr->ck, &st);
		if (st.epochs >= from + n)
			return 0;
		if (pr->done || bench_ns() > end) {
			log_err("the engine stopped committing epochs: %s",
				st.error[0] ? st.error : "timeout");
			return -EIO;
		}
		usleep(2000);
	}
}

/* Pause the primary, let two epochs commit, compare RAM with the
 * replica's. */
static int verify(struct prim *p, struct prot *pr, struct backup *b,
		  struct result *res)
{
	struct ckpt_stats st;
	uint64_t pfn0 = 0;
	void *rptr;
	int err;

	kvm_hv_ops.pause(p->vm.d);
	ckpt_get_stats(pr->ck, &st);
	err = wait_epochs(pr, st.epochs, 2);
	if (!err) {
		pthread_mutex_lock(&b->rp.lock);
		err = b->rp.d ? kvm_hv_ops.map(b->rp.d, &pfn0, 1, &rptr)
			      : -ENOENT;
		if (!err) {
			res->diff_pages = 0;
			for (uint64_t i = 0; i < p->nr_pfns; i++)
				if (memcmp(p->mem + i * HV_PAGE_SIZE,
					   (unsigned char *)rptr +
						   i * HV_PAGE_SIZE,
					   HV_PAGE_SIZE))
					res->diff_pages++;
			res->verified = res->diff_pages ? -1 : 1;
		}
		pthread_mutex_unlock(&b->rp.lock);
	}
	kvm_hv_ops.unpause(p->vm.d);
	return err;
}

/* How the bench dirties pages during a run. */
enum drive {
	DRIVE_BURST,  /* after each resume, K pages as fast as the guest can */
	DRIVE_PACED,  /* K pages per interval, spread evenly over it, so the
		       * guest is still writing when the next pause comes */
	DRIVE_IDLE,   /* nothing */
	DRIVE_STREAM, /* K-page batches back to back, ignoring epochs */
};
static const char *const drive_names[] = { "burst", "paced", "idle",
					   "stream" };

struct spec {
	enum workload wl;
	enum drive how;
	bool no_delta, no_prestage;
	unsigned epochs_div; /* run epochs / this */
};

/* Dirty the draw's runs at an even pace over `interval_ns` from t0; stop
 * when the next epoch comes (*seen moves from at_start): the runs not
 * written by then are left out. */
static int draw_paced(struct draw *dw, struct prim *p, enum workload wl,
		      uint64_t t0, uint64_t interval_ns, const uint64_t *seen,
		      uint64_t at_start)
{
	for (uint64_t i = 0; i < dw->per_epoch; i++) {
		uint64_t when = t0 + interval_ns * i / dw->per_epoch, now;
		int err;

		now = bench_ns();
		if (when > now) {
			struct timespec ts = {
				.tv_sec = (time_t)((when - now) / 1000000000ULL),
				.tv_nsec = (long)((when - now) % 1000000000ULL),
			};

			nanosleep(&ts, NULL);
		}
		if (__atomic_load_n(seen, __ATOMIC_ACQUIRE) != at_start)
			return 0; /* an epoch came: start over */
		err = dirty_run(dw, p, wl, i);
		if (err)
			return err;
	}
	return 0;
}

static int run_one(struct prim *p, struct backup *b, struct draw *dw,
		   const struct spec *sp, unsigned interval_ms,
		   unsigned epochs, bool do_verify, struct result *res)
{
	struct ckpt_params cp;
	struct ckpt_stats s0, s1 = { 0 };
	struct prot pr;
	uint64_t seen0, seen, t0, *cnt;
	bool first = true;
	unsigned n;
	int err;

	memset(res, 0, sizeof(*res));
	ckpt_params_init(&cp);
	cp.interval_ms = interval_ms;
	cp.timeout_ms = 10000;
	cp.no_delta = sp->no_delta;
	cp.no_prestage = sp->no_prestage;
	err = prot_start(&pr, p->vm.d, b, &cp);
	if (err)
		return err;
	/* ckpt_get_stats sorts its histories: called per run, not polled */
	ckpt_get_stats(pr.ck, &s0);
	__atomic_store_n(&W.ncounts, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&W.recording, true, __ATOMIC_RELEASE);
	seen0 = seen = __atomic_load_n(&W.unpauses, __ATOMIC_ACQUIRE);
	t0 = bench_ns();
	/* Epochs taken from now on; the first batch at once, so that the
	 * first of them carries K pages too. */
	while (!err) {
		uint64_t now_seen = __atomic_load_n(&W.unpauses,
						    __ATOMIC_ACQUIRE);

		if (now_seen - seen0 >= epochs)
			break;
		if (pr.done) {
			log_err("protection failed");
			err = -EIO;
			break;
		}
		if (sp->how == DRIVE_STREAM) {
			err = draw_dirty(dw, p, sp->wl);
			continue;
		}
		if (sp->how == DRIVE_IDLE || (now_seen == seen && !first)) {
			/* A batch may start up to 0.5 ms after the resume:
			 * polling faster competes with the engine for the
			 * CPUs (two here). */
			usleep(500);
			continue;
		}
		first = false;
		seen = now_seen;
		if (sp->how == DRIVE_PACED)
			err = draw_paced(dw, p, sp->wl, bench_ns(),
					 (uint64_t)interval_ms * 1000000ULL,
					 &W.unpauses, seen);
		else
			err = draw_dirty(dw, p, sp->wl);
	}
	if (!err)
		err = wait_epochs(&pr, s0.epochs, epochs);
	if (!err)
		ckpt_get_stats(pr.ck, &s1);
	res->secs = (double)(bench_ns() - t0) / 1e9;
	__atomic_store_n(&W.recording, false, __ATOMIC_RELEASE);
	res->st = s1; /* before the verification's idle epochs */
	if (!err && do_verify)
		err = verify(p, &pr, b, res);
	if (err)
		ckpt_get_stats(pr.ck, &res->st);
	if (prot_stop(&pr) && !err) {
		log_err("protection ended badly: %s", res->st.error);
		err = -EIO;
	}
	if (err)
		return err;
	res->ran = true;
	res->interval_ms = interval_ms;
	res->epochs = s1.epochs - s0.epochs;
	res->bytes = s1.bytes - s0.bytes;
	res->pages = s1.pages - s0.pages;
	res->page_bytes = s1.page_bytes - s0.page_bytes;
	res->hits = s1.cache_hits - s0.cache_hits;
	res->misses = s1.cache_misses - s0.cache_misses;
	res->prestaged = s1.prestaged - s0.prestaged;
	res->recopied = s1.recopied - s0.recopied;
	/* Pages per epoch: the fetches while the bench drove (prestage and
	 * pause fetches of an epoch add up), but the last (the bench stopped
	 * during it). */
	n = __atomic_load_n(&W.ncounts, __ATOMIC_ACQUIRE);
	if (n > 4) {
		unsigned per = sp->no_prestage ? 1 : 2, m = 0;

		cnt = W.counts;
		for (unsigned i = 0; i + 2 * per <= n; i += per)
			cnt[m++] = per == 2 ? cnt[i] + cnt[i + 1] : cnt[i];
		if (m) {
			qsort(cnt, m, sizeof(*cnt), cmp_u64);
			res->pp_med = cnt[(m - 1) / 2];
			res->pp_min = cnt[0];
			res->pp_max = cnt[m - 1];
		}
	}
	return 0;
}

static double us(uint64_t ns)
{
	return (double)ns / 1e3;
}

static void print_header(void)
{
	printf("%-7s %-6s %6s %-5s %-4s %5s %15s %6s %6s %7s %7s %7s %6s "
	       "%10s %7s %5s %6s %s\n",
	       "work", "drive", "dirty", "delta", "pre", "ms", "taken",
	       "epochs", "ep/s", "p50", "p99", "max", "pre%", "bytes",
	       "B/page", "hit%", "ack", "replica");
}

static void print_run(const struct spec *sp, uint64_t k,
		      const struct result *r)
{
	const struct ckpt_stats *s = &r->st;
	double ep = r->epochs ? (double)r->epochs : 1;
	char taken[48];

	snprintf(taken, sizeof(taken), "%llu/%llu/%llu",
		 (unsigned long long)r->pp_med, (unsigned long long)r->pp_min,
		 (unsigned long long)r->pp_max);
	printf("%-7s %-6s %6llu %-5s %-4s %5u %15s %6llu %6.1f %7.0f %7.0f "
	       "%7.0f %5.0f%% %10.0f %7.0f %4.0f%% %6.0f %s\n",
	       wl_names[sp->wl], drive_names[sp->how], (unsigned long long)k,
	       sp->no_delta ? "off" : "on", sp->no_prestage ? "off" : "on",
	       r->interval_ms, taken, (unsigned long long)r->epochs,
	       (double)r->epochs / r->secs, us(s->pause_p50_ns),
	       us(s->pause_p99_ns), us(s->pause_max_ns),
	       r->pages ? 100.0 * (double)(r->prestaged - r->recopied) /
				  (double)r->pages
			: 0.0,
	       (double)r->bytes / ep,
	       r->pages ? (double)r->page_bytes / (double)r->pages : 0.0,
	       r->hits + r->misses ? 100.0 * (double)r->hits /
					     (double)(r->hits + r->misses)
				   : 0.0,
	       us(s->ack_p50_ns),
	       r->verified > 0 ? "ok" : r->verified < 0 ? "DIFFERS" : "-");
}

static void print_phases(const char *what, const struct ckpt_stats *s)
{
	printf("  %-24s", what);
	for (unsigned i = 0; i < CKPT_NR_PHASES; i++)
		printf(" %5.0f/%-5.0f/%-5.0f", us(s->phase[i].p50_ns),
		       us(s->phase[i].p99_ns), us(s->phase[i].max_ns));
	printf("\n");
}

static void print_phase_header(void)
{
	printf("  %-24s", "");
	for (unsigned i = 0; i < CKPT_NR_PHASES; i++)
		printf(" %-17s", ckpt_phase_name((enum ckpt_phase)i));
	printf("\n");
}

/* The runs per level: the engine's defaults on both workloads (pause,
 * bytes), the same without deltas (bytes: fewer epochs), and the pause
 * with the whole copy in it (prestage off), burst and paced. */
static const struct spec specs[] = {
	{ WL_RANDOM, DRIVE_BURST, false, false, 1 },
	{ WL_RANDOM, DRIVE_BURST, true, false, 4 },
	{ WL_WORD, DRIVE_BURST, false, false, 1 },
	{ WL_WORD, DRIVE_BURST, true, false, 4 },
	{ WL_WORD, DRIVE_BURST, false, true, 1 },
	{ WL_WORD, DRIVE_PACED, false, false, 1 },
	{ WL_WORD, DRIVE_PACED, false, true, 1 },
};
#define NR_SPECS (sizeof(specs) / sizeof(specs[0]))

static int synthetic(const struct opts *o)
{
	static struct result res[MAX_LEVELS][NR_SPECS];
	struct result rate[3];
	struct backup b = { 0 };
	struct prim p;
	int err;

	err = prim_start(&p, o);
	if (err)
		return err;
	b.cfg.console_fd = -1;
	err = bk_start(&b, "127.0.0.1");
	if (err) {
		prim_stop(&p);
		return err;
	}
	printf("guest: %llu MiB, arena %llu pages (random bytes), runs of %u "
	       "pages, hot set %u x K; backup in-process over TCP %s\n",
	       (unsigned long long)o->mem_mib, (unsigned long long)p.pages,
	       o->run, o->wss_factor, b.addr);
	printf("columns: dirty = K asked per epoch; pre = copy before the "
	       "pause; ms = interval; taken = pages per epoch median/min/max; "
	       "p50/p99/max = pause us; pre%% = pages copied before the pause "
	       "and not again in it; bytes = stream bytes per epoch; B/page "
	       "= encoded bytes per page; hit%% = delta cache; ack = resume "
	       "to ack p50 us; replica = RAM compared after the run\n\n");
	print_header();
	fflush(stdout);
	for (unsigned l = 0; !err && l < o->nlevels; l++) {
		uint64_t k = o->levels[l];
		unsigned interval, epochs;
		struct draw dw;
		double ms;

		err = draw_init(&dw, &p, k, o->run, o->wss_factor);
		if (err)
			break;
		err = calibrate(&p, &dw, &ms);
		if (err) {
			free(dw.runs);
			break;
		}
		/* 25 ms, or twice what the guest needs and 10 ms, in 5 ms
		 * steps */
		interval = (unsigned)(2 * ms + 10 + 4.999) / 5 * 5;
		if (interval < CKPT_DEFAULT_INTERVAL_MS)
			interval = CKPT_DEFAULT_INTERVAL_MS;
		if (interval > CKPT_MAX_INTERVAL_MS)
			interval = CKPT_MAX_INTERVAL_MS;
		/* 100..400 epochs (quick: 20..100) for the pause runs: the
		 * percentiles include the stream's first epoch, so below 100
		 * the p99 is the max */
		epochs = (o->quick ? 3000 : 20000) / interval;
		if (epochs < (o->quick ? 20u : 100u))
			epochs = o->quick ? 20 : 100;
		if (epochs > (o->quick ? 100u : 400u))
			epochs = o->quick ? 100 : 400;
		if (o->epochs)
			epochs = o->epochs;
		for (unsigned i = 0; !err && i < NR_SPECS; i++) {
			unsigned ep = epochs / specs[i].epochs_div;

			if (!o->wl[specs[i].wl])
				continue;
			err = run_one(&p, &b, &dw, &specs[i], interval,
				      ep < 10 ? 10 : ep, o->verify,
				      &res[l][i]);
			if (err)
				break;
			print_run(&specs[i], k, &res[l][i]);
			fflush(stdout);
			if (res[l][i].verified < 0)
				err = -EIO;
		}
		free(dw.runs);
	}
	if (err)
		goto out;

	printf("\npause by phase, us p50/p99/max:\n");
	print_phase_header();
	for (unsigned l = 0; l < o->nlevels; l++)
		for (unsigned i = 0; i < NR_SPECS; i++) {
			char what[64];

			if (!res[l][i].ran || specs[i].no_delta)
				continue;
			snprintf(what, sizeof(what), "%s %s %llu pre %s",
				 wl_names[specs[i].wl],
				 drive_names[specs[i].how],
				 (unsigned long long)o->levels[l],
				 specs[i].no_prestage ? "off" : "on");
			print_phases(what, &res[l][i].st);
		}

	printf("\nbytes per epoch, deltas off / on (the compression "
	       "ratio):\n");
	for (unsigned l = 0; l < o->nlevels; l++)
		for (unsigned i = 0; i + 1 < NR_SPECS; i++) {
			const struct result *on = &res[l][i],
					    *off = &res[l][i + 1];
			double b_on, b_off;

			if (!on->ran || !off->ran || specs[i].no_delta ||
			    !specs[i + 1].no_delta)
				continue;
			b_on = (double)on->bytes / (double)on->epochs;
			b_off = (double)off->bytes / (double)off->epochs;
			printf("  %-7s %6llu  %10.0f / %10.0f B  ratio %6.2f  "
			       "(page data %.0f / %.0f B/page)\n",
			       wl_names[specs[i].wl],
			       (unsigned long long)o->levels[l], b_off, b_on,
			       b_off / b_on,
			       off->pages ? (double)off->page_bytes /
						    (double)off->pages
					  : 0.0,
			       on->pages ? (double)on->page_bytes /
						   (double)on->pages
					 : 0.0);
		}

	/* Epoch rate at the minimum interval. */
	{
		static const struct spec rs[3] = {
			{ WL_WORD, DRIVE_IDLE, false, false, 1 },
			{ WL_WORD, DRIVE_STREAM, false, false, 1 },
			{ WL_RANDOM, DRIVE_STREAM, false, false, 1 },
		};
		static const char *const what[] = {
			"idle guest", "word, 1000-page batches",
			"random, 1000-page batches" };
		unsigned ep = o->quick ? 100 : 400;
		struct draw dw;

		printf("\nepochs per second at the minimum interval (%u ms), "
		       "%u epochs (the guest's batches ignore epochs):\n",
		       CKPT_MIN_INTERVAL_MS, ep);
		err = draw_init(&dw, &p, 1000, o->run, o->wss_factor);
		for (unsigned i = 0; !err && i < 3; i++)
			err = run_one(&p, &b, &dw, &rs[i],
				      CKPT_MIN_INTERVAL_MS, ep, false,
				      &rate[i]);
		free(dw.runs);
		for (unsigned i = 0; !err && i < 3; i++) {
			const struct ckpt_stats *s = &rate[i].st;

			printf("  %-26s %6.1f epochs/s, %6.0f pages/epoch, "
			       "pause p50 %4.0f p99 %5.0f us, ack p50 %5.0f "
			       "us, stretched %llu\n",
			       what[i], (double)rate[i].epochs / rate[i].secs,
			       (double)rate[i].pages /
				       (double)(rate[i].epochs ? rate[i].epochs
							       : 1),
			       us(s->pause_p50_ns), us(s->pause_p99_ns),
			       us(s->ack_p50_ns),
			       (unsigned long long)s->stretched);
		}
	}
out:
	bk_stop(&b);
	prim_stop(&p);
	return err;
}

/* ---- --kvstore: the kvstore guest under redis-benchmark ---- */

#define KV_TAP "ckkv0"
#define KV_TAP_B "ckkv1"
#define KV_MAC "52:54:00:98:00:02"
#define KV_IP "10.98.0.2"

static int wait_pong(double secs)
{
	uint64_t end = bench_ns() + (uint64_t)(secs * 1e9);

	while (bench_ns() < end) {
		if (!system("timeout 2 redis-cli -h " KV_IP " ping 2>/dev/null "
			    "| grep -q PONG"))
			return 0;
		usleep(200000);
	}
	return -ETIMEDOUT;
}

static int kvstore(const struct opts *o)
{
	const char *img = getenv("BENCH_KVSTORE");
	struct hv_dom_info info = { .mem_size = 128 * MIB, .nr_vcpus = 1,
				    .page_size = HV_PAGE_SIZE };
	struct kvm_cfg cfg = { 0 };
	struct backup b = { 0 };
	struct ckpt_params cp;
	struct ckpt_stats st;
	struct bvm vm = { 0 };
	struct prot pr;
	char disk[3072];
	pid_t bench;
	int err;

	if (!img || !*img)
		img = KV_GUEST_DEFAULT;
	if (unshare(CLONE_NEWNET) < 0 || system("ip link set lo up")) {
		fprintf(stderr, "bench_ckpt: --kvstore needs root (a network "
			"namespace of its own): %s\n", strerror(errno));
		return -EPERM;
	}
	snprintf(disk, sizeof(disk), "%s/bench-ckpt-%d.img", o->disk_dir,
		 (int)getpid());
	snprintf(b.disk, sizeof(b.disk), "%s.replica", disk);
	unlink(disk);
	err = kvm_net_parse("tap=" KV_TAP ",mac=" KV_MAC ",ip=" KV_IP "/24,"
			    "host-ip=10.98.0.1/24", &cfg.net);
	if (!err)
		err = kvm_net_parse("tap=" KV_TAP_B ",mac=" KV_MAC ",ip=" KV_IP
				    "/24", &b.cfg.net);
	if (err)
		return err;
	cfg.disk = disk;
	cfg.disk_size = 256 * MIB;
	b.cfg.console_fd = -1;
	b.cfg.disk = b.disk;
	b.cfg.disk_size = cfg.disk_size;
	vm.con = memfd_create("bench-console", MFD_CLOEXEC);
	cfg.console_fd = vm.con;
	err = kvm_create_opts(&info, &cfg, NULL, &vm.d);
	if (!err)
		err = kvm_boot(vm.d, img, "");
	if (!err)
		err = kvm_hv_ops.unpause(vm.d);
	if (err)
		goto out_vm;
	if (!bvm_wait_line(&vm, "kvstore: listening", 30) || wait_pong(30)) {
		err = -EIO;
		goto out_vm;
	}
	err = bk_start(&b, "127.0.0.1");
	if (err)
		goto out_vm;
	bench = fork();
	if (bench < 0) {
		err = -errno;
		bk_stop(&b);
		goto out_vm;
	}
	if (bench == 0) {
		int fd = open("/dev/null", O_WRONLY);

		dup2(fd, 1);
		dup2(fd, 2);
		execlp("redis-benchmark", "redis-benchmark", "-h", KV_IP, "-t",
		       "set,get", "-n", "100000000", "-c", "4", "-P", "8",
		       "-r", "100000", "-q", (char *)NULL);
		_exit(127);
	}
	sleep(1);
	ckpt_params_init(&cp);
	cp.timeout_ms = 10000;
	err = prot_start(&pr, vm.d, &b, &cp);
	if (!err) {
		struct hv_status hs0, hs1;
		uint64_t t0 = bench_ns();

		double secs;

		kvm_hv_ops.status(vm.d, &hs0);
		sleep(o->kvstore_s);
		kvm_hv_ops.status(vm.d, &hs1);
		ckpt_get_stats(pr.ck, &st);
		secs = (double)(bench_ns() - t0) / 1e9;
		err = prot_stop(&pr);
		printf("kvstore under redis-benchmark (set,get -c 4 -P 8), "
		       "protected %.1f s, disk image in %s:\n",
		       secs, o->disk_dir);
		printf("  %llu epochs (%.1f/s), %llu stretched, %llu early; "
		       "pages/epoch %.0f; bytes/epoch %.0f; disk writes %llu; "
		       "hypercalls/s %.0f\n",
		       (unsigned long long)st.epochs, (double)st.epochs / secs,
		       (unsigned long long)st.stretched,
		       (unsigned long long)st.early,
		       (double)st.pages / (double)(st.epochs ? st.epochs : 1),
		       (double)st.bytes / (double)(st.epochs ? st.epochs : 1),
		       (unsigned long long)st.disk.writes,
		       (double)(hs1.hypercalls - hs0.hypercalls) /
			       (double)o->kvstore_s);
		printf("  pause p50 %.0f us, p99 %.0f us, max %.0f us; ack "
		       "p50 %.0f us, p99 %.0f us\n",
		       us(st.pause_p50_ns), us(st.pause_p99_ns),
		       us(st.pause_max_ns), us(st.ack_p50_ns),
		       us(st.ack_p99_ns));
		printf("  pause by phase, us p50/p99/max:\n");
		print_phase_header();
		print_phases("kvstore", &st);
	}
	kill(bench, SIGTERM); /* bench > 0: our child */
	waitpid(bench, NULL, 0);
	bk_stop(&b);
out_vm:
	if (err) {
		bvm_read_console(&vm);
		log_err("kvstore run failed: %s; console:\n%s",
			strerror(-err), vm.out);
	}
	if (vm.d)
		kvm_hv_ops.destroy(vm.d);
	close(vm.con);
	unlink(disk);
	return err;
}

/* ---- --cow-probe ---- */

/*
 * Copy-on-write for the pause, as QEMU's background snapshot does it: in
 * the pause, write-protect the dirty pages with userfaultfd
 * (UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT) instead of copying them;
 * resume; a background thread copies them and lifts the protection page
 * by page, and a guest write to a page not copied yet faults to a handler
 * thread that copies it first.  The probe, on guest RAM of a running
 * bench guest with dirty logging on (as in an epoch), K = 1000 pages in
 * runs of RUN:
 *   1. register guest RAM with userfaultfd in write-protect mode;
 *   2. in-pause cost: dirty_fetch + UFFDIO_WRITEPROTECT of the dirty
 *      runs, one ioctl per run and one per page, and of all guest RAM in
 *      one ioctl, against dirty_fetch + memcpy of the same pages;
 *   3. background: copy + unprotect of the K pages with the guest idle;
 *   4. faults: the guest writes the K pages while all are still
 *      protected; the handler copies and unprotects each; the guest's
 *      time per page against the same writes without userfaultfd (dirty
 *      logging only);
 *   5. correctness: every staged copy holds the page as it was at the
 *      protection (the guest's word of the round before), and the next
 *      dirty_fetch reports every page the guest wrote under protection.
 * Root: the faults come from KVM inside the kernel (not UFFD_USER_MODE_
 * ONLY), which unprivileged userfaultfd does not handle here.
 */

struct cow {
	struct prim *p;
	int uffd;
	unsigned char *stage;	  /* K pages */
	uint64_t *slot_of;	  /* arena page -> staging slot + 1, or 0 */
	uint8_t *state;		  /* per arena page: 0 clean, 1 pending, 2 copying */
	volatile bool quit;
	pthread_t handler;
	uint64_t faults, copied_by_handler, wakes;
	uint64_t handler_ns;
	int err;
};

static int uffd_wp(int uffd, void *addr, uint64_t len, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

/* Copy arena page `ap` to its slot if it is pending (whoever wins the
 * state change copies), then lift the protection (which also wakes a
 * faulting thread). */
static int cow_take(struct cow *cw, uint64_t ap, bool *copied)
{
	uint8_t one = 1;

	*copied = false;
	if (__atomic_compare_exchange_n(&cw->state[ap], &one, 2, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		memcpy(cw->stage + (cw->slot_of[ap] - 1) * HV_PAGE_SIZE,
		       page_ptr(cw->p, ap), HV_PAGE_SIZE);
		__atomic_store_n(&cw->state[ap], 0, __ATOMIC_RELEASE);
		*copied = true;
	} else {
		while (__atomic_load_n(&cw->state[ap], __ATOMIC_ACQUIRE) == 2)
			;
	}
	return uffd_wp(cw->uffd, page_ptr(cw->p, ap), HV_PAGE_SIZE, false);
}

static void *cow_handler(void *arg)
{
	struct cow *cw = arg;
	uint64_t lo = (uint64_t)(uintptr_t)cw->p->mem;
	uint64_t hi = lo + cw->p->nr_pfns * HV_PAGE_SIZE;

	while (!cw->quit) {
		struct pollfd pfd = { .fd = cw->uffd, .events = POLLIN };
		struct uffd_msg m;
		uint64_t a, t0;
		bool copied;
		int err;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		if (read(cw->uffd, &m, sizeof(m)) != sizeof(m))
			continue;
		t0 = bench_ns();
		if (m.event != UFFD_EVENT_PAGEFAULT ||
		    !(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)) {
			log_err("cow: unexpected userfaultfd event %u flags "
				"0x%llx", m.event,
				(unsigned long long)m.arg.pagefault.flags);
			cw->err = -EPROTO;
			continue;
		}
		a = m.arg.pagefault.address & ~(uint64_t)(HV_PAGE_SIZE - 1);
		cw->faults++;
		if (a < lo || a >= hi) {
			cw->err = -EFAULT;
			continue;
		}
		if (a >= (uint64_t)(uintptr_t)page_ptr(cw->p, 0) &&
		    a < (uint64_t)(uintptr_t)page_ptr(cw->p, cw->p->pages)) {
			uint64_t ap = (a - (uint64_t)(uintptr_t)page_ptr(cw->p,
									 0)) /
				      HV_PAGE_SIZE;

			err = cow_take(cw, ap, &copied);
			cw->copied_by_handler += copied;
		} else {
			/* Outside the arena (mailbox, stack, hypercall
			 * blocks): nothing to copy in this probe. */
			err = uffd_wp(cw->uffd, (void *)(uintptr_t)a,
				      HV_PAGE_SIZE, false);
			cw->wakes++;
		}
		if (err) {
			log_err("cow: unprotect: %s", strerror(-err));
			cw->err = err;
		}
		cw->handler_ns += bench_ns() - t0;
	}
	return NULL;
}

/* The dirty arena pages (in order) of the bitmap, with their slots. */
static uint64_t cow_collect(struct cow *cw, const uint64_t *bm,
			    uint64_t *list, uint64_t max)
{
	struct prim *p = cw->p;
	uint64_t n = 0;

	memset(cw->slot_of, 0, p->pages * sizeof(*cw->slot_of));
	for (uint64_t ap = 0; ap < p->pages && n < max; ap++) {
		uint64_t pfn = p->base_pfn + ap;

		if (bm[pfn / 64] >> (pfn % 64) & 1) {
			list[n++] = ap;
			cw->slot_of[ap] = n;
		}
	}
	return n;
}

/* The guest writes the arena pages list[0..n) again, run by run; its
 * own time per page. */
static int cow_redirty(struct prim *p, const uint64_t *list, uint64_t n,
		       double *us_page)
{
	uint64_t ns = 0;
	int err = 0;

	for (uint64_t i = 0; !err && i < n;) {
		uint64_t j = i + 1;

		while (j < n && list[j] == list[j - 1] + 1)
			j++;
		err = mb_dirty(p, list[i], j - i);
		ns += p->mb->ns;
		i = j;
	}
	*us_page = n ? (double)ns / (double)n / 1e3 : 0;
	return err;
}

enum { CW_FETCH, CW_COPY, CW_WP_RUN, CW_WP_PAGE, CW_WP_ALL, CW_UNWP_ALL,
       CW_BG, CW_G_BASE, CW_G_COW, CW_HANDLER, CW_NR };
#define COW_ROUNDS_MAX 16

static int cow_probe(const struct opts *o)
{
	const uint64_t k = 1000;
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { 0 };
	struct cow cw = { .uffd = -1 };
	static double v[CW_NR][COW_ROUNDS_MAX];
	unsigned rounds = o->quick ? 3 : 7;
	uint64_t *bm, *list, n = 0, nruns = 0, bad = 0, missed = 0, t0;
	uint64_t words, faults = 0, hcopies = 0;
	struct kvm_dirty_info di;
	double med[CW_NR], lo, hi;
	bool have_handler = false;
	struct draw dw;
	struct prim p;
	int err;

	err = prim_start(&p, o);
	if (err)
		return err;
	cw.p = &p;
	words = (p.nr_pfns + 63) / 64;
	bm = calloc(words, 8);
	list = calloc(p.pages, 8);
	cw.slot_of = calloc(p.pages, 8);
	cw.state = calloc(p.pages, 1);
	cw.stage = calloc(2 * k, HV_PAGE_SIZE); /* touched: no first faults */
	err = -ENOMEM;
	if (!bm || !list || !cw.slot_of || !cw.state || !cw.stage)
		goto out;
	memset(cw.stage, 1, 2 * k * HV_PAGE_SIZE);
	err = draw_init(&dw, &p, k, o->run, o->wss_factor);
	if (err)
		goto out;
	kvm_dirty_get_info(p.vm.d, &di);
	printf("cow-probe: %llu MiB guest, K = %llu dirty pages in runs of "
	       "%u, dirty logging on (%s), medians of %u rounds\n",
	       (unsigned long long)o->mem_mib, (unsigned long long)k, o->run,
	       kvm_dirty_mech_name(di.mech), rounds);
	err = kvm_hv_ops.dirty_log(p.vm.d, true);
	if (err)
		goto out_draw;
	err = draw_dirty(&dw, &p, WL_WORD); /* first writes after enable */
	memset(bm, 0, words * 8);
	if (!err)
		err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);

	/* What the engine does today: in the pause, fetch and copy; and the
	 * guest's cost of a first write to a page the fetch re-protected. */
	for (unsigned r = 0; !err && r < rounds; r++) {
		err = draw_dirty(&dw, &p, WL_WORD);
		if (err)
			break;
		kvm_hv_ops.pause(p.vm.d);
		memset(bm, 0, words * 8);
		t0 = bench_ns();
		err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
		v[CW_FETCH][r] = (double)(bench_ns() - t0) / 1e3;
		n = cow_collect(&cw, bm, list, 2 * k);
		t0 = bench_ns();
		for (uint64_t i = 0; i < n; i++)
			memcpy(cw.stage + i * HV_PAGE_SIZE,
			       page_ptr(&p, list[i]), HV_PAGE_SIZE);
		v[CW_COPY][r] = (double)(bench_ns() - t0) / 1e3;
		kvm_hv_ops.unpause(p.vm.d);
		if (!err)
			err = cow_redirty(&p, list, n, &v[CW_G_BASE][r]);
		memset(bm, 0, words * 8);
		if (!err)
			err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
	}
	if (err)
		goto out_log;

	/* 1. userfaultfd on guest RAM. */
	cw.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (cw.uffd < 0) {
		printf("  userfaultfd: %s: copy-on-write impossible here\n",
		       strerror(errno));
		err = 0;
		goto out_log;
	}
	if (ioctl(cw.uffd, UFFDIO_API, &api) < 0 ||
	    !(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		printf("  UFFDIO_API with write-protect faults: %s\n",
		       strerror(errno));
		err = 0;
		goto out_log;
	}
	reg.range.start = (uintptr_t)p.mem;
	reg.range.len = p.nr_pfns * HV_PAGE_SIZE;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	if (ioctl(cw.uffd, UFFDIO_REGISTER, &reg) < 0) {
		printf("  UFFDIO_REGISTER_MODE_WP on guest RAM: %s\n",
		       strerror(errno));
		err = 0;
		goto out_log;
	}
	printf("  userfaultfd registered on all guest RAM in write-protect "
	       "mode\n");
	err = -pthread_create(&cw.handler, NULL, cow_handler, &cw);
	if (err)
		goto out_log;
	have_handler = true;

	/* 2, 3. In the pause: fetch + write-protect (per run, per page, all
	 * RAM); after it, the background copy with the guest idle. */
	for (unsigned r = 0; !err && r < 3 * rounds; r++) {
		unsigned variant = r % 3, ri = r / 3;
		uint64_t i;

		err = draw_dirty(&dw, &p, WL_WORD);
		if (err)
			break;
		kvm_hv_ops.pause(p.vm.d);
		memset(bm, 0, words * 8);
		err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
		n = cow_collect(&cw, bm, list, 2 * k);
		t0 = bench_ns();
		if (variant == 0) {
			nruns = 0;
			for (i = 0; i < n && !err;) {
				uint64_t j = i + 1;

				while (j < n && list[j] == list[j - 1] + 1)
					j++;
				err = uffd_wp(cw.uffd, page_ptr(&p, list[i]),
					      (j - i) * HV_PAGE_SIZE, true);
				nruns++;
				i = j;
			}
			v[CW_WP_RUN][ri] = (double)(bench_ns() - t0) / 1e3;
		} else if (variant == 1) {
			for (i = 0; i < n && !err; i++)
				err = uffd_wp(cw.uffd, page_ptr(&p, list[i]),
					      HV_PAGE_SIZE, true);
			v[CW_WP_PAGE][ri] = (double)(bench_ns() - t0) / 1e3;
		} else {
			err = uffd_wp(cw.uffd, p.mem, p.nr_pfns * HV_PAGE_SIZE,
				      true);
			v[CW_WP_ALL][ri] = (double)(bench_ns() - t0) / 1e3;
		}
		for (i = 0; i < n; i++)
			cw.state[list[i]] = 1;
		kvm_hv_ops.unpause(p.vm.d);
		t0 = bench_ns();
		for (i = 0; i < n && !err; i++) {
			bool copied;

			err = cow_take(&cw, list[i], &copied);
		}
		if (variant == 0)
			v[CW_BG][ri] = (double)(bench_ns() - t0) / 1e3 /
				       (double)n;
		if (variant == 2 && !err) {
			t0 = bench_ns();
			err = uffd_wp(cw.uffd, p.mem, p.nr_pfns * HV_PAGE_SIZE,
				      false);
			v[CW_UNWP_ALL][ri] = (double)(bench_ns() - t0) / 1e3;
		}
		memset(bm, 0, words * 8);
		if (!err)
			err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
	}

	/* 4, 5. The guest writes every protected page before any copy:
	 * each write faults to the handler, which copies and unprotects.
	 * The staged copy must hold the guest's word of the round before,
	 * and the next fetch must report every page. */
	for (unsigned r = 0; !err && r < rounds; r++) {
		uint64_t f0 = cw.faults, h0 = cw.handler_ns, c0;
		uint64_t *snap;

		err = draw_dirty(&dw, &p, WL_WORD);
		if (err)
			break;
		kvm_hv_ops.pause(p.vm.d);
		memset(bm, 0, words * 8);
		err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
		n = cow_collect(&cw, bm, list, 2 * k);
		for (uint64_t i = 0; i < n && !err;) {
			uint64_t j = i + 1;

			while (j < n && list[j] == list[j - 1] + 1)
				j++;
			err = uffd_wp(cw.uffd, page_ptr(&p, list[i]),
				      (j - i) * HV_PAGE_SIZE, true);
			for (; i < j; i++)
				cw.state[list[i]] = 1;
		}
		kvm_hv_ops.unpause(p.vm.d);
		snap = malloc(n * 8);
		if (!snap)
			err = -ENOMEM;
		for (uint64_t i = 0; !err && i < n; i++)
			memcpy(&snap[i], page_ptr(&p, list[i]), 8);
		c0 = cw.copied_by_handler;
		if (!err)
			err = cow_redirty(&p, list, n, &v[CW_G_COW][r]);
		faults += cw.faults - f0;
		hcopies += cw.copied_by_handler - c0;
		v[CW_HANDLER][r] = cw.faults > f0
					   ? (double)(cw.handler_ns - h0) / 1e3 /
						     (double)(cw.faults - f0)
					   : 0;
		for (uint64_t i = 0; !err && i < n; i++) {
			uint64_t w;

			if (cw.state[list[i]]) {
				bool copied;

				bad++; /* never faulted: not written? */
				err = cow_take(&cw, list[i], &copied);
				continue;
			}
			memcpy(&w, cw.stage + i * HV_PAGE_SIZE, 8);
			bad += w != snap[i];
		}
		free(snap);
		memset(bm, 0, words * 8);
		if (!err)
			err = kvm_hv_ops.dirty_fetch(p.vm.d, bm, p.nr_pfns);
		for (uint64_t i = 0; !err && i < n; i++) {
			uint64_t pfn = p.base_pfn + list[i];

			missed += !(bm[pfn / 64] >> (pfn % 64) & 1);
		}
	}
	if (err)
		goto out_handler;

	for (unsigned i = 0; i < CW_NR; i++)
		bench_stats(v[i], rounds, &med[i], &lo, &hi);
	printf("  in the pause, %llu dirty pages (%llu runs):\n",
	       (unsigned long long)n, (unsigned long long)nruns);
	printf("    dirty_fetch                           %7.0f us\n",
	       med[CW_FETCH]);
	printf("    copy (what the engine does)           %7.0f us  "
	       "(%.2f us/page)\n",
	       med[CW_COPY], med[CW_COPY] / (double)n);
	printf("    write-protect, one ioctl per run      %7.0f us  "
	       "(%.1f us/run)\n",
	       med[CW_WP_RUN], med[CW_WP_RUN] / (double)(nruns ? nruns : 1));
	printf("    write-protect, one ioctl per page     %7.0f us  "
	       "(%.2f us/page)\n",
	       med[CW_WP_PAGE], med[CW_WP_PAGE] / (double)n);
	printf("    write-protect all guest RAM, 1 ioctl  %7.0f us  "
	       "(lifting it after the copy: %.0f us)\n",
	       med[CW_WP_ALL], med[CW_UNWP_ALL]);
	printf("  after the pause:\n");
	printf("    background copy + unprotect           %7.2f us/page\n",
	       med[CW_BG]);
	printf("    guest write, dirty logging only       %7.2f us/page\n",
	       med[CW_G_BASE]);
	printf("    guest write to a protected page       %7.2f us/page "
	       "(handler: %.1f us/fault, %llu faults, %llu copies)\n",
	       med[CW_G_COW], med[CW_HANDLER], (unsigned long long)faults,
	       (unsigned long long)hcopies);
	printf("  correctness: %llu staged copies wrong or missing, %llu "
	       "pages written under protection missing from the next "
	       "fetch%s\n",
	       (unsigned long long)bad, (unsigned long long)missed,
	       cw.err ? "; HANDLER ERRORS" : "");
	if (bad || missed || cw.err)
		err = -EIO;
out_handler:
	if (have_handler) {
		cw.quit = true;
		pthread_join(cw.handler, NULL);
	}
out_log:
	if (cw.uffd >= 0)
		close(cw.uffd);
	kvm_hv_ops.dirty_log(p.vm.d, false);
out_draw:
	free(dw.runs);
out:
	prim_stop(&p);
	free(bm);
	free(list);
	free(cw.slot_of);
	free(cw.state);
	free(cw.stage);
	return err;
}

/* The first line of /proc/stat: all CPU time and the part stolen by the
 * hypervisor under this machine (our host is itself a VM), in ticks. */
static void cpu_times(uint64_t *total, uint64_t *steal)
{
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "r");

	*total = *steal = 0;
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
		   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*steal = v[7];
	}
	fclose(f);
}

/*
 * How often a thread that never sleeps loses its CPU here, and for how
 * long (to the host's scheduler, or to the hypervisor under this VM):
 * the floor under any pause's p99, whatever the engine does.
 */
static void hiccups(double secs)
{
	uint64_t t0 = bench_ns(), end = t0 + (uint64_t)(secs * 1e9);
	uint64_t last = t0, n01 = 0, n1 = 0, n5 = 0, max = 0, lost = 0;

	for (;;) {
		uint64_t t = bench_ns(), gap = t - last;

		last = t;
		if (t > end)
			break;
		if (gap > 100000) {
			n01++;
			lost += gap;
		}
		n1 += gap > 1000000;
		n5 += gap > 5000000;
		if (gap > max)
			max = gap;
	}
	printf("bench_ckpt: a spinning thread lost its CPU %.0f times/s for "
	       "> 0.1 ms, %.0f/s > 1 ms, %.1f/s > 5 ms (max %.1f ms, %.1f%% "
	       "of the time) over %.0f s\n",
	       (double)n01 / secs, (double)n1 / secs, (double)n5 / secs,
	       (double)max / 1e6, 100.0 * (double)lost / (secs * 1e9), secs);
}

static void print_load(const char *when)
{
	char la[64] = "?";
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (!fgets(la, sizeof(la), f))
			strcpy(la, "?");
		fclose(f);
	}
	la[strcspn(la, "\n")] = 0;
	printf("bench_ckpt: load average %s: %s\n", when, la);
	fflush(stdout);
}

static void usage(FILE *f, int status)
{
	fprintf(f,
		"usage: bench_ckpt [--quick] [--mem MIB] [--levels K[,K...]] "
		"[--epochs N] [--run PAGES] [--wss-factor F] "
		"[--workloads random,word] [--no-verify]\n"
		"       bench_ckpt --kvstore SECONDS [--disk-dir DIR]\n"
		"       bench_ckpt --cow-probe [--mem MIB]\n");
	exit(status);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "quick", no_argument, NULL, 'q' },
		{ "mem", required_argument, NULL, 'm' },
		{ "levels", required_argument, NULL, 'l' },
		{ "epochs", required_argument, NULL, 'e' },
		{ "run", required_argument, NULL, 'r' },
		{ "wss-factor", required_argument, NULL, 'f' },
		{ "workloads", required_argument, NULL, 'w' },
		{ "no-verify", no_argument, NULL, 'n' },
		{ "kvstore", required_argument, NULL, 'k' },
		{ "disk-dir", required_argument, NULL, 'd' },
		{ "cow-probe", no_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .mem_mib = 512, .levels = { 1000, 10000 },
			  .nlevels = 2, .run = 16, .wss_factor = 2,
			  .wl = { true, true }, .verify = true,
			  .disk_dir = "/var/tmp" };
	uint64_t tot0, steal0, tot1, steal1;
	int c, err;

	log_set_prog("bench_ckpt");
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		char *save = NULL, *t;

		switch (c) {
		case 'q':
			o.quick = true;
			break;
		case 'm':
			o.mem_mib = strtoull(optarg, NULL, 0);
			break;
		case 'l':
			o.nlevels = 0;
			for (t = strtok_r(optarg, ",", &save); t;
			     t = strtok_r(NULL, ",", &save)) {
				if (o.nlevels == MAX_LEVELS)
					usage(stderr, 2);
				o.levels[o.nlevels++] = strtoull(t, NULL, 0);
				if (!o.levels[o.nlevels - 1])
					usage(stderr, 2);
			}
			break;
		case 'e':
			o.epochs = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'r':
			o.run = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'f':
			o.wss_factor = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'w':
			o.wl[WL_RANDOM] = o.wl[WL_WORD] = false;
			for (t = strtok_r(optarg, ",", &save); t;
			     t = strtok_r(NULL, ",", &save)) {
				if (!strcmp(t, "random"))
					o.wl[WL_RANDOM] = true;
				else if (!strcmp(t, "word"))
					o.wl[WL_WORD] = true;
				else
					usage(stderr, 2);
			}
			break;
		case 'n':
			o.verify = false;
			break;
		case 'k':
			o.kvstore_s = (unsigned)strtoul(optarg, NULL, 0);
			if (!o.kvstore_s)
				usage(stderr, 2);
			break;
		case 'd':
			o.disk_dir = optarg;
			break;
		case 'h':
			usage(stdout, 0);
			break;
		case 'c':
			o.cow_probe = true;
			break;
		default:
			usage(stderr, 2);
		}
	}
	if (optind != argc || o.mem_mib < 64 || !o.run || o.run > 512 ||
	    !o.wss_factor || o.epochs > MAX_EPOCHS - 8)
		usage(stderr, 2);
	o.arena_mib = o.mem_mib * 3 / 4;
	if (kvm_probe())
		return 1;
	log_set_level(LOG_ERR);
	signal(SIGPIPE, SIG_IGN);
	w_init();
	print_load("before");
	cpu_times(&tot0, &steal0);
	hiccups(o.quick ? 1 : 3);
	if (o.cow_probe)
		err = cow_probe(&o);
	else if (o.kvstore_s)
		err = kvstore(&o);
	else
		err = synthetic(&o);
	print_load("after");
	cpu_times(&tot1, &steal1);
	if (tot1 > tot0)
		printf("bench_ckpt: CPU time stolen by the hypervisor under "
		       "this machine during the run: %.1f%%\n",
		       100.0 * (double)(steal1 - steal0) /
			       (double)(tot1 - tot0));
	if (err) {
		fprintf(stderr, "bench_ckpt: failed: %s\n", strerror(-err));
		return 1;
	}
	return 0;
}
