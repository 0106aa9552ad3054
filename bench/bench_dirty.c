// SPDX-License-Identifier: MIT
/*
 * bench_dirty.c - cost of dirty-page tracking with each KVM mechanism
 * hv/kvm offers (kvm_dirty.c): bitmap (KVM_GET_DIRTY_LOG), manual
 * (MANUAL_DIRTY_LOG_PROTECT2: GET + CLEAR), manual-init (the same with
 * KVM_DIRTY_LOG_INITIALLY_SET) and ring (KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
 * at the default size and at 4096 entries).
 *
 *   build/bench/bench_dirty [--mem MIB] [--rounds R] [--all-rounds A]
 *                           [--k PAGES] [--mech NAME[,NAME...]] [--repeat N]
 *
 * For each mechanism a fresh domain of MIB MiB (default 1024) runs the
 * bench guest in `dirty 0` mode: it spins in guest mode on a mailbox
 * (bench/mailbox.h) and, on request, writes one word into each of the
 * next K pages of its arena (the whole heap), timing itself.  Measured:
 *
 *  - enable / disable: hv_ops.dirty_log(on / off);
 *  - fetch: hv_ops.dirty_fetch (fetch-and-clear, OR into a bitmap) while
 *    the guest runs, after it dirtied 0 pages (R rounds), K pages (default
 *    1000, the same pages every round, R rounds; default R 20), K pages
 *    again with the VM paused around the fetch (as a checkpoint epoch
 *    does; R rounds) and every
 *    arena page (A rounds, default 3; 0 skips this level and the arena
 *    is only K pages: for big guests);
 *  - guest side: the guest's time per written page in those rounds, where
 *    every write is the first to a page re-protected by the previous
 *    fetch; against the same writes with logging off (baseline) and the
 *    first writes after enabling (which also split huge mappings).
 *
 * The mechanisms run in turn, the whole list N times (default 1); the
 * summary gives medians over the N repeats and ratios to the bitmap.
 *
 * Every page the guest wrote must be reported by the next fetch; a missed
 * page is an error (exit 1).  Speed is reported, never judged.
 */
#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchvm.h"
#include "mailbox.h"

#define MIB (1ULL << 20)
#define MAX_ROUNDS 1000
#define MAX_MECHS 8
#define MAX_REPEAT 16

struct mech {
	const char *name;
	enum kvm_dirty_mech mech;
	uint32_t ring_entries;
};

static const struct mech all_mechs[] = {
	{ "bitmap", KVM_DIRTY_BITMAP, 0 },
	{ "manual", KVM_DIRTY_MANUAL, 0 },
	{ "manual-init", KVM_DIRTY_MANUAL_INIT, 0 },
	{ "ring", KVM_DIRTY_RING, 0 },
	{ "ring-4k", KVM_DIRTY_RING, 4096 },
};
#define NR_ALL_MECHS (sizeof(all_mechs) / sizeof(all_mechs[0]))

struct opts {
	uint64_t mem_mib;
	unsigned rounds, all_rounds;
	uint64_t k;
	const struct mech *mechs[MAX_MECHS];
	unsigned nmechs;
	unsigned repeat;
};

/* Levels: 0 dirty, k dirty, k dirty with the VM paused, all dirty. */
enum { L_ZERO, L_K, L_KP, L_ALL, NR_LEVELS };

/* What one mechanism measured: medians over the rounds. */
struct result {
	bool ran;
	double enable_ms, disable_ms;
	double fetch_us[NR_LEVELS], fetch_min_us[NR_LEVELS];
	double fetch_max_us[NR_LEVELS];
	double guest_ns_page[NR_LEVELS]; /* L_K, L_KP, L_ALL */
	double unlogged_ns_page, first_after_enable_ns_page;
	uint64_t found[NR_LEVELS];       /* bits set by the last fetch */
	double ring_full_per_round;      /* in the "all" rounds */
	double ring_full_us;             /* VMM time per ring-full exit */
	uint32_t ring_entries;
};

struct ctx {
	struct bvm vm;
	struct bench_mailbox *mb;
	uint64_t base_pfn, pages; /* the guest's arena */
	uint64_t nr_pfns;         /* guest RAM */
	uint64_t *bm;
	uint64_t seq;
	uint64_t missed;
};

/* Ask the guest to write `count` pages from arena page `first`; wait. */
static int guest_dirty(struct ctx *c, uint64_t first, uint64_t count,
		       uint64_t *ns)
{
	uint64_t end = bench_ns() + 120ULL * 1000000000ULL;

	c->mb->first = first;
	c->mb->count = count;
	__atomic_store_n(&c->mb->seq, ++c->seq, __ATOMIC_RELEASE);
	while (__atomic_load_n(&c->mb->done, __ATOMIC_ACQUIRE) != c->seq) {
		if (bench_ns() > end) {
			log_err("guest did not finish dirtying %llu pages in "
				"120 s", (unsigned long long)count);
			return -ETIMEDOUT;
		}
		usleep(20);
	}
	*ns = c->mb->ns;
	return 0;
}

static uint64_t popcount_bm(const uint64_t *bm, uint64_t words)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* Timed fetch into a cleared bitmap; checks that the arena pages
 * [first, first + count) (wrapping) are all reported. */
static int fetch(struct ctx *c, uint64_t first, uint64_t count, double *us,
		 uint64_t *found)
{
	uint64_t words = (c->nr_pfns + 63) / 64, t0, t1, miss = 0;
	int err;

	memset(c->bm, 0, words * 8);
	t0 = bench_ns();
	err = kvm_hv_ops.dirty_fetch(c->vm.d, c->bm, c->nr_pfns);
	t1 = bench_ns();
	if (err)
		return err;
	*us = (double)(t1 - t0) / 1e3;
	*found = popcount_bm(c->bm, words);
	if (count > c->pages)
		count = c->pages;
	for (uint64_t i = 0; i < count; i++) {
		uint64_t pfn = c->base_pfn + (first + i) % c->pages;

		if (!(c->bm[pfn / 64] & (1ULL << (pfn % 64))))
			miss++;
	}
	if (miss) {
		log_err("fetch missed %llu of %llu pages the guest wrote",
			(unsigned long long)miss, (unsigned long long)count);
		c->missed += miss;
	}
	return 0;
}

/* Rounds at one level: dirty `count` pages (0: none), fetch (with the
 * vCPU paused around the fetch at level L_KP, as checkpoints do). */
static int level(struct ctx *c, struct result *res, int lv, uint64_t count,
		 unsigned rounds)
{
	double fus[MAX_ROUNDS], gns[MAX_ROUNDS], dummy;
	struct kvm_dirty_info i0, i1;
	int err;

	kvm_dirty_get_info(c->vm.d, &i0);
	for (unsigned r = 0; r < rounds; r++) {
		uint64_t ns = 0;

		if (count) {
			err = guest_dirty(c, 0, count, &ns);
			if (err)
				return err;
		}
		gns[r] = count ? (double)ns / (double)count : 0;
		if (lv == L_KP)
			kvm_hv_ops.pause(c->vm.d);
		err = fetch(c, 0, count, &fus[r], &res->found[lv]);
		if (lv == L_KP)
			kvm_hv_ops.unpause(c->vm.d);
		if (err)
			return err;
	}
	kvm_dirty_get_info(c->vm.d, &i1);
	bench_stats(fus, rounds, &res->fetch_us[lv], &res->fetch_min_us[lv],
		    &res->fetch_max_us[lv]);
	bench_stats(gns, rounds, &res->guest_ns_page[lv], &dummy, &dummy);
	if (lv == L_ALL && i1.ring_full_exits > i0.ring_full_exits) {
		res->ring_full_per_round =
			(double)(i1.ring_full_exits - i0.ring_full_exits) /
			rounds;
		res->ring_full_us =
			(double)(i1.ring_full_ns - i0.ring_full_ns) / 1e3 /
			(double)(i1.ring_full_exits - i0.ring_full_exits);
	}
	return 0;
}

static int start(struct ctx *c, const struct opts *o, const struct mech *m)
{
	struct kvm_create_opts co = { .dirty = m->mech,
				      .ring_entries = m->ring_entries };
	const char *line;
	long long mbox, base, pages;
	uint64_t pfn, t_end;
	void *p;
	int err;

	memset(c, 0, sizeof(*c));
	c->nr_pfns = o->mem_mib * MIB / HV_PAGE_SIZE;
	c->bm = calloc((c->nr_pfns + 63) / 64, 8);
	if (!c->bm)
		return -ENOMEM;
	err = bvm_start(&c->vm, bench_guest(), o->mem_mib * MIB, "dirty 0",
			&co);
	if (err) {
		free(c->bm);
		return err;
	}
	line = bvm_wait_line(&c->vm, "benchguest: dirty ", 60);
	mbox = line ? bvm_field(line, "mailbox") : -1;
	base = line ? bvm_field(line, "base") : -1;
	pages = line ? bvm_field(line, "pages") : -1;
	if (mbox <= 0 || base <= 0 || pages <= 0 || mbox % HV_PAGE_SIZE ||
	    base % HV_PAGE_SIZE) {
		log_err("bad guest output:\n%s", c->vm.out);
		err = -EPROTO;
		goto fail;
	}
	pfn = (uint64_t)mbox / HV_PAGE_SIZE;
	err = kvm_hv_ops.map(c->vm.d, &pfn, 1, &p);
	if (err)
		goto fail;
	c->mb = p;
	c->base_pfn = (uint64_t)base / HV_PAGE_SIZE;
	c->pages = (uint64_t)pages;
	t_end = bench_ns() + 10ULL * 1000000000ULL;
	while (__atomic_load_n(&c->mb->magic, __ATOMIC_ACQUIRE) !=
	       BENCH_MB_MAGIC) {
		if (bench_ns() > t_end) {
			log_err("guest mailbox never came up");
			err = -ETIMEDOUT;
			goto fail;
		}
		usleep(100);
	}
	return 0;
fail:
	bvm_stop(&c->vm);
	free(c->bm);
	return err;
}

static void stop(struct ctx *c)
{
	__atomic_store_n(&c->mb->quit, 1, __ATOMIC_RELEASE);
	bvm_wait_exit(&c->vm, 10);
	bvm_stop(&c->vm);
	free(c->bm);
}

static int run_mech(const struct opts *o, const struct mech *m,
		    struct result *res, uint64_t *missed)
{
	struct kvm_dirty_info info;
	struct ctx c;
	uint64_t t0, ns, found, used;
	double us;
	int err;

	err = start(&c, o, m);
	if (err == -EOPNOTSUPP) {
		printf("%-12s not offered by this host: skipped\n", m->name);
		return 0;
	}
	if (err)
		return err;
	kvm_dirty_get_info(c.vm.d, &info);
	res->ring_entries = info.ring_entries;
	/* The arena pages the rounds write: all, or only the first k. */
	used = o->all_rounds || o->k > c.pages ? c.pages : o->k;

	/* Populate them, then time writes to writable pages. */
	err = guest_dirty(&c, 0, used, &ns);
	if (!err)
		err = guest_dirty(&c, 0, used, &ns);
	if (err)
		goto out;
	res->unlogged_ns_page = (double)ns / (double)used;

	t0 = bench_ns();
	err = kvm_hv_ops.dirty_log(c.vm.d, true);
	res->enable_ms = (double)(bench_ns() - t0) / 1e6;
	if (err)
		goto out;
	/* Warm-up: the first writes after enabling, then a clean slate. */
	err = guest_dirty(&c, 0, used, &ns);
	if (!err)
		err = fetch(&c, 0, used, &us, &found);
	if (err)
		goto out;
	res->first_after_enable_ns_page = (double)ns / (double)used;

	err = level(&c, res, L_ZERO, 0, o->rounds);
	if (!err)
		err = level(&c, res, L_K, o->k, o->rounds);
	if (!err)
		err = level(&c, res, L_KP, o->k, o->rounds);
	if (!err && o->all_rounds)
		err = level(&c, res, L_ALL, c.pages, o->all_rounds);
	if (err)
		goto out;
	t0 = bench_ns();
	err = kvm_hv_ops.dirty_log(c.vm.d, false);
	res->disable_ms = (double)(bench_ns() - t0) / 1e6;
	res->ran = !err;
out:
	*missed += c.missed;
	stop(&c);
	return err;
}

static void print_result(const struct mech *m, const struct result *r,
			 const struct opts *o)
{
	static const char *const lvname[NR_LEVELS] = { "0", "k", "k-p",
						       "all" };

	printf("%s", m->name);
	if (r->ring_entries)
		printf(" (%u entries)", r->ring_entries);
	printf(": enable %.2f ms, disable %.2f ms; guest write to a writable "
	       "page %.1f ns, first write after enable %.2f us\n",
	       r->enable_ms, r->disable_ms, r->unlogged_ns_page,
	       r->first_after_enable_ns_page / 1e3);
	printf("  %-6s %8s %12s %10s %10s %14s\n", "dirty", "found",
	       "fetch us", "min", "max", "guest us/page");
	for (int lv = 0; lv < (o->all_rounds ? NR_LEVELS : L_ALL); lv++) {
		char name[32];

		if (lv == L_K || lv == L_KP)
			snprintf(name, sizeof(name), "%llu%s",
				 (unsigned long long)o->k,
				 lv == L_KP ? " p" : "");
		else
			snprintf(name, sizeof(name), "%s", lvname[lv]);
		printf("  %-6s %8llu %12.1f %10.1f %10.1f", name,
		       (unsigned long long)r->found[lv], r->fetch_us[lv],
		       r->fetch_min_us[lv], r->fetch_max_us[lv]);
		if (lv == L_ZERO)
			printf(" %14s\n", "-");
		else
			printf(" %14.2f\n", r->guest_ns_page[lv] / 1e3);
	}
	if (m->mech == KVM_DIRTY_RING && o->all_rounds)
		printf("  ring-full exits per \"all\" round: %.1f, each "
		       "handled in %.0f us (harvest + reset)\n",
		       r->ring_full_per_round, r->ring_full_us);
}

static int parse_mechs(struct opts *o, char *list)
{
	char *save = NULL;

	o->nmechs = 0;
	for (char *t = strtok_r(list, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		unsigned i;

		for (i = 0; i < NR_ALL_MECHS; i++)
			if (!strcmp(t, all_mechs[i].name))
				break;
		if (i == NR_ALL_MECHS || o->nmechs == MAX_MECHS) {
			fprintf(stderr, "bench_dirty: unknown mechanism '%s' "
					"(bitmap, manual, manual-init, ring, "
					"ring-4k)\n", t);
			return -EINVAL;
		}
		o->mechs[o->nmechs++] = &all_mechs[i];
	}
	return 0;
}

/* Median over the repeats of one field of struct result. */
static double med_of(struct result (*res)[MAX_MECHS], unsigned reps,
		     unsigned i, size_t off)
{
	double v[MAX_REPEAT], med, min, max;
	unsigned n = 0;

	for (unsigned r = 0; r < reps; r++)
		if (res[r][i].ran)
			v[n++] = *(const double *)((const char *)&res[r][i] +
						   off);
	if (!n)
		return 0;
	bench_stats(v, n, &med, &min, &max);
	return med;
}

#define MED(field) med_of(res, o->repeat, i, offsetof(struct result, field))

static void summary(const struct opts *o, struct result (*res)[MAX_MECHS])
{
	enum { F0, FK, FKP, FALL, RFULL, GK, GALL, NV };
	double base[NV] = { 0 };
	bool have_base = false;

	printf("\nsummary: medians over %u repeat(s).  fetch: us per "
	       "dirty_fetch at 0, k, k with the VM paused (\"k p\") and all "
	       "pages dirty; ring-full: VMM us per \"all\" round spent on "
	       "ring-full exits (vCPU thread, guest stalled); guest: us per "
	       "first write after re-protection; 1st write: after enable\n",
	       o->repeat);
	printf("%-12s %7s %7s %7s %9s %9s %7s %7s %7s %7s %7s\n", "mechanism",
	       "fetch 0", "fetch k", "k p", "fetch all", "ring-full",
	       "guest k", "g all", "1st wr", "enable", "disable");
	printf("%-12s %7s %7s %7s %9s %9s %7s %7s %7s %7s %7s\n", "", "us",
	       "us", "us", "us", "us/round", "us/page", "us/page", "us/page",
	       "ms", "ms");
	for (unsigned i = 0; i < o->nmechs; i++) {
		double v[NV];

		if (!res[0][i].ran)
			continue;
		v[F0] = MED(fetch_us[L_ZERO]);
		v[FK] = MED(fetch_us[L_K]);
		v[FKP] = MED(fetch_us[L_KP]);
		v[FALL] = MED(fetch_us[L_ALL]);
		v[RFULL] = MED(ring_full_us) * MED(ring_full_per_round);
		v[GK] = MED(guest_ns_page[L_K]) / 1e3;
		v[GALL] = MED(guest_ns_page[L_ALL]) / 1e3;
		printf("%-12s %7.1f %7.1f %7.1f %9.1f %9.1f %7.2f %7.2f %7.2f "
		       "%7.2f %7.2f\n",
		       o->mechs[i]->name, v[F0], v[FK], v[FKP], v[FALL],
		       v[RFULL], v[GK], v[GALL],
		       MED(first_after_enable_ns_page) / 1e3, MED(enable_ms),
		       MED(disable_ms));
		if (o->mechs[i]->mech == KVM_DIRTY_BITMAP && !have_base) {
			memcpy(base, v, sizeof(base));
			have_base = true;
		}
	}
	if (!have_base)
		return;
	printf("\nratio to bitmap (same run; < 1 is cheaper): fetch 0, "
	       "fetch k, k paused, fetch all + ring-full, guest k, "
	       "guest all\n");
	for (unsigned i = 0; i < o->nmechs; i++) {
		if (!res[0][i].ran)
			continue;
		printf("%-12s %7.3f %7.3f %7.3f", o->mechs[i]->name,
		       MED(fetch_us[L_ZERO]) / base[F0],
		       MED(fetch_us[L_K]) / base[FK],
		       MED(fetch_us[L_KP]) / base[FKP]);
		if (o->all_rounds)
			printf(" %9.3f", (MED(fetch_us[L_ALL]) +
					  MED(ring_full_us) *
						  MED(ring_full_per_round)) /
						 (base[FALL] + base[RFULL]));
		else
			printf(" %9s", "-");
		printf(" %7.2f", MED(guest_ns_page[L_K]) / 1e3 / base[GK]);
		if (o->all_rounds)
			printf(" %7.2f\n",
			       MED(guest_ns_page[L_ALL]) / 1e3 / base[GALL]);
		else
			printf(" %7s\n", "-");
	}
}
#undef MED

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "all-rounds", required_argument, NULL, 'a' },
		{ "k", required_argument, NULL, 'k' },
		{ "mech", required_argument, NULL, 'x' },
		{ "repeat", required_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .mem_mib = 1024, .rounds = 20, .all_rounds = 3,
			  .k = 1000, .repeat = 1 };
	static struct result res[MAX_REPEAT][MAX_MECHS];
	uint64_t missed = 0;
	int c, err = 0;

	log_set_prog("bench_dirty");
	for (unsigned i = 0; i < NR_ALL_MECHS; i++)
		o.mechs[o.nmechs++] = &all_mechs[i];
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'm':
			o.mem_mib = strtoull(optarg, NULL, 0);
			break;
		case 'r':
			o.rounds = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'a':
			o.all_rounds = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'k':
			o.k = strtoull(optarg, NULL, 0);
			break;
		case 'x':
			if (parse_mechs(&o, optarg))
				return 2;
			break;
		case 'n':
			o.repeat = (unsigned)strtoul(optarg, NULL, 0);
			break;
		default:
			fprintf(stderr, "usage: bench_dirty [--mem MIB] "
					"[--rounds R] [--all-rounds A] "
					"[--k PAGES] [--mech NAME,...] "
					"[--repeat N]\n");
			return 2;
		}
	}
	if (!o.rounds || o.rounds > MAX_ROUNDS ||
	    o.all_rounds > MAX_ROUNDS || !o.k || o.mem_mib < 64 ||
	    !o.repeat || o.repeat > MAX_REPEAT) {
		fprintf(stderr, "bench_dirty: rounds 1..%d, all-rounds 0..%d, "
				"k > 0, mem >= 64 MiB, repeat 1..%d\n",
			MAX_ROUNDS, MAX_ROUNDS, MAX_REPEAT);
		return 2;
	}
	if (kvm_probe())
		return 1;

	printf("== dirty logging: %llu MiB guest, fetch-and-clear "
	       "(hv_ops.dirty_fetch) while the guest runs ==\n",
	       (unsigned long long)o.mem_mib);
	printf("rounds: %u at 0 and at %llu dirty pages, %u with every "
	       "arena page dirty; medians; mechanisms in turn, %u time(s)\n",
	       o.rounds, (unsigned long long)o.k, o.all_rounds, o.repeat);
	for (unsigned r = 0; !err && r < o.repeat; r++) {
		for (unsigned i = 0; !err && i < o.nmechs; i++) {
			err = run_mech(&o, o.mechs[i], &res[r][i], &missed);
			if (err || !res[r][i].ran)
				continue;
			print_result(o.mechs[i], &res[r][i], &o);
			fflush(stdout);
		}
	}
	if (!err)
		summary(&o, res);
	if (missed) {
		log_err("%llu dirtied pages were not reported: dirty logging "
			"is broken", (unsigned long long)missed);
		return 1;
	}
	return err ? 1 : 0;
}
