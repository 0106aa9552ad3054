// SPDX-License-Identifier: MIT
/*
 * kvm_dirty.c - dirty-page logging behind hv_ops.dirty_log / dirty_fetch.
 *
 * Three KVM mechanisms, picked when the domain is created (the ring must
 * be enabled before the vCPU exists):
 *
 *   bitmap  KVM_GET_DIRTY_LOG copies the slot's dirty bitmap out and
 *           write-protects the dirty pages again, in one call.
 *   manual  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: KVM_GET_DIRTY_LOG only
 *           copies; KVM_CLEAR_DIRTY_LOG then clears and re-protects the
 *           pages we pass (the ones just fetched).  With
 *           KVM_DIRTY_LOG_INITIALLY_SET ("manual-init") KVM skips the
 *           write-protect pass when logging starts and reports every page
 *           dirty instead; we clear them all at once, because our contract
 *           says that turning logging on marks nothing dirty.
 *   ring    KVM_CAP_DIRTY_LOG_RING(_ACQ_REL): the first write to a logged,
 *           protected page appends its frame number to a ring shared with
 *           us (one per vCPU); we harvest entries and KVM_RESET_DIRTY_RINGS
 *           re-protects them.  Work is proportional to the pages dirtied,
 *           not to guest RAM.  When the ring is nearly full, KVM_RUN
 *           returns KVM_EXIT_DIRTY_RING_FULL: the vCPU thread harvests into
 *           an accumulator bitmap (kvm_dirty_ring_full) and carries on.
 *
 * docs/performance.md has the measurements that chose the default
 * (KVM_DIRTY_AUTO): the ring when the host has it, else the bitmap.
 *
 * Correctness of fetch-and-clear while the guest runs: a page written
 * after its dirty bit (or ring entry) was collected but before it is
 * re-protected is not reported again; the caller copies pages only after
 * dirty_fetch returns, i.e. after the re-protection, so the copy holds
 * that write.
 *
 * Writes the VMM itself makes to guest memory (hypercall results, later
 * received frames and disk reads) are not tracked by KVM in any mechanism,
 * so the VMM marks them in its own bitmap (kvm_dirty_mark, after the
 * write) and every fetch merges it in.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

#define RING_ENTRIES_DEFAULT 65536U /* 1 MiB per vCPU; capped by the host */

static const char *const mech_names[] = {
	[KVM_DIRTY_AUTO] = "auto",
	[KVM_DIRTY_BITMAP] = "bitmap",
	[KVM_DIRTY_MANUAL] = "manual",
	[KVM_DIRTY_MANUAL_INIT] = "manual-init",
	[KVM_DIRTY_RING] = "ring",
};

const char *kvm_dirty_mech_name(enum kvm_dirty_mech m)
{
	if ((unsigned)m >= sizeof(mech_names) / sizeof(mech_names[0]))
		return "unknown";
	return mech_names[m];
}

static uint64_t nr_pages(const struct hv_domain *d)
{
	return d->mem_size / HV_PAGE_SIZE;
}

static uint64_t bitmap_words(const struct hv_domain *d)
{
	return (nr_pages(d) + 63) / 64;
}

static int enable_cap(struct hv_domain *d, uint32_t cap, uint64_t arg0)
{
	struct kvm_enable_cap ec = { .cap = cap, .args = { arg0 } };

	if (ioctl(d->vm_fd, KVM_ENABLE_CAP, &ec) < 0) {
		int err = -errno;

		log_err("KVM_ENABLE_CAP %u (0x%llx): %s", cap,
			(unsigned long long)arg0, strerror(errno));
		return err;
	}
	return 0;
}

/*
 * The ring: size checks against the host's limit, then enable.  When the
 * ring was not asked for by name (`forced` false, AUTO) a failure is only
 * a warning: the caller falls back to the bitmap.
 */
static int ring_enable(struct hv_domain *d, uint32_t entries, bool forced)
{
	int acq = ioctl(d->vm_fd, KVM_CHECK_EXTENSION,
			KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
	int plain = ioctl(d->vm_fd, KVM_CHECK_EXTENSION,
			  KVM_CAP_DIRTY_LOG_RING);
	int max = acq > 0 ? acq : plain;
	enum log_level lvl = forced ? LOG_ERR : LOG_WARN;
	struct kvm_enable_cap ec = { 0 };
	size_t gfn = sizeof(struct kvm_dirty_gfn);
	uint64_t bytes;

	if (max <= 0) {
		if (forced)
			log_err("dirty ring: KVM_CAP_DIRTY_LOG_RING not "
				"offered by this host");
		return -EOPNOTSUPP;
	}
	if (!entries) {
		entries = RING_ENTRIES_DEFAULT;
		while ((uint64_t)entries * gfn > (uint64_t)max && entries > 1)
			entries /= 2;
	}
	bytes = (uint64_t)entries * gfn;
	if (entries & (entries - 1) || bytes < (uint64_t)getpagesize() ||
	    bytes > (uint64_t)max) {
		log_msg(lvl, "dirty ring of %u entries: must be a power of "
			"two of %zu..%zu entries on this host",
			entries, (size_t)getpagesize() / gfn,
			(size_t)max / gfn);
		return -EINVAL;
	}
	/* ACQ_REL orders our flag stores on weakly ordered CPUs; on x86
	 * both behave the same, and we use acquire/release either way. */
	ec.cap = acq > 0 ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
			 : KVM_CAP_DIRTY_LOG_RING;
	ec.args[0] = bytes;
	if (ioctl(d->vm_fd, KVM_ENABLE_CAP, &ec) < 0) {
		int err = -errno;

		log_msg(lvl, "KVM_ENABLE_CAP dirty ring of %llu bytes: %s",
			(unsigned long long)bytes, strerror(errno));
		return err;
	}
	d->ring_entries = entries;
	return 0;
}

/* Manual protect with `flags`, if the host offers them all. */
static int manual_enable(struct hv_domain *d, int flags)
{
	int have = ioctl(d->vm_fd, KVM_CHECK_EXTENSION,
			 KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);

	if (have < 0 || (have & flags) != flags) {
		log_err("dirty logging: this host offers "
			"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags 0x%x, "
			"need 0x%x",
			have < 0 ? 0 : have, flags);
		return -EOPNOTSUPP;
	}
	return enable_cap(d, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
			  (uint64_t)flags);
}

int kvm_dirty_init_vm(struct hv_domain *d, const struct kvm_create_opts *o)
{
	enum kvm_dirty_mech m = o ? o->dirty : KVM_DIRTY_AUTO;
	uint32_t entries = o ? o->ring_entries : 0;
	int manual = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, err;

	switch (m) {
	case KVM_DIRTY_AUTO:
		/* docs/performance.md: the ring costs nothing when little
		 * is dirty and scales with the dirty set, not with RAM;
		 * manual protect was no better than the bitmap. */
		d->dirty_mech = ring_enable(d, entries, false)
					? KVM_DIRTY_BITMAP
					: KVM_DIRTY_RING;
		log_debug("dirty logging: %s",
			  kvm_dirty_mech_name(d->dirty_mech));
		return 0;
	case KVM_DIRTY_BITMAP:
		d->dirty_mech = m;
		return 0;
	case KVM_DIRTY_MANUAL:
	case KVM_DIRTY_MANUAL_INIT:
		if (m == KVM_DIRTY_MANUAL_INIT)
			manual |= KVM_DIRTY_LOG_INITIALLY_SET;
		err = manual_enable(d, manual);
		if (err)
			return err;
		d->dirty_mech = m;
		return 0;
	case KVM_DIRTY_RING:
		err = ring_enable(d, entries, true);
		if (err)
			return err;
		d->dirty_mech = m;
		return 0;
	}
	log_err("dirty logging: unknown mechanism %d", (int)m);
	return -EINVAL;
}

int kvm_dirty_init_vcpu(struct hv_domain *d)
{
	size_t bytes = (size_t)d->ring_entries * sizeof(struct kvm_dirty_gfn);
	void *p;

	if (d->dirty_mech != KVM_DIRTY_RING)
		return 0;
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, d->vcpu_fd,
		 (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
	if (p == MAP_FAILED) {
		int err = -errno;

		log_err("mapping the dirty ring (%zu bytes): %s", bytes,
			strerror(errno));
		return err;
	}
	d->ring = p;
	return 0;
}

void kvm_dirty_fini(struct hv_domain *d)
{
	if (d->ring)
		munmap(d->ring, (size_t)d->ring_entries *
					sizeof(struct kvm_dirty_gfn));
	free(d->dirty_buf);
	free(d->ring_acc);
	free(d->vmm_dirty);
}

void kvm_dirty_mark(struct hv_domain *d, uint64_t gpa, uint64_t len)
{
	uint64_t pfn, last;

	if (!len || !__atomic_load_n(&d->dirty_on, __ATOMIC_ACQUIRE))
		return;
	last = (gpa + len - 1) >> HV_PAGE_SHIFT;
	for (pfn = gpa >> HV_PAGE_SHIFT; pfn <= last; pfn++)
		__atomic_fetch_or(&d->vmm_dirty[pfn / 64], 1ULL << (pfn % 64),
				  __ATOMIC_RELEASE);
	__atomic_store_n(&d->vmm_dirty_any, true, __ATOMIC_RELEASE);
}

/* Move the VMM's own writes into `bitmap`. */
static void fetch_vmm(struct hv_domain *d, uint64_t *bitmap)
{
	uint64_t words = bitmap_words(d), i;

	if (!__atomic_exchange_n(&d->vmm_dirty_any, false, __ATOMIC_ACQ_REL))
		return;
	for (i = 0; i < words; i++)
		if (d->vmm_dirty[i])
			bitmap[i] |= __atomic_exchange_n(&d->vmm_dirty[i], 0,
							 __ATOMIC_ACQ_REL);
}

/*
 * Move every harvestable ring entry into `bm` (NULL: discard) and hand the
 * entries back to KVM (flag RESET); returns how many.  Entries are
 * consumed strictly in order, as KVM requires.  The caller holds
 * dirty_lock and calls ring_reset() afterwards if this returned non-zero.
 */
static uint64_t ring_harvest(struct hv_domain *d, uint64_t *bm)
{
	uint64_t n = 0, max = nr_pages(d);
	uint32_t mask = d->ring_entries - 1;

	for (;;) {
		struct kvm_dirty_gfn *e = &d->ring[d->ring_next & mask];
		uint32_t fl = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		uint64_t off;

		if ((fl & KVM_DIRTY_GFN_F_MASK) != KVM_DIRTY_GFN_F_DIRTY)
			break;
		off = e->offset;
		if (e->slot != 0 || off >= max)
			log_warn("dirty ring: entry for slot 0x%x frame 0x%llx "
				 "outside guest RAM; ignored",
				 e->slot, (unsigned long long)off);
		else if (bm)
			bm[off / 64] |= 1ULL << (off % 64);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET,
				 __ATOMIC_RELEASE);
		d->ring_next++;
		n++;
	}
	return n;
}

/* Re-protect the pages of the entries harvested so far. */
static int ring_reset(struct hv_domain *d)
{
	if (ioctl(d->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0) {
		int err = -errno;

		log_err("KVM_RESET_DIRTY_RINGS: %s", strerror(errno));
		return err;
	}
	return 0;
}

bool kvm_dirty_ring_full(struct hv_domain *d)
{
	uint64_t t0 = kvm_host_ns(CLOCK_MONOTONIC);
	int err = 0;

	atomic_fetch_add(&d->ring_full_exits, 1);
	pthread_mutex_lock(&d->dirty_lock);
	if (d->ring) {
		uint64_t n = ring_harvest(d, d->ring_acc);

		if (d->ring_acc)
			d->ring_acc_n += n;
		if (n)
			err = ring_reset(d);
	}
	pthread_mutex_unlock(&d->dirty_lock);
	atomic_fetch_add(&d->ring_full_ns,
			 kvm_host_ns(CLOCK_MONOTONIC) - t0);
	if (!d->ring || err) {
		kvm_cpu_crash_report(d, d->ring ? "cannot reset the full dirty "
						  "ring"
						: "dirty ring full without a "
						  "ring");
		return false;
	}
	return true;
}

/* Clear the whole slot's dirty state (manual protect), re-protecting
 * every page: used once when logging starts with INITIALLY_SET. */
static int manual_clear_all(struct hv_domain *d)
{
	struct kvm_clear_dirty_log cl = { .slot = 0,
					  .num_pages = (uint32_t)nr_pages(d),
					  .first_page = 0,
					  .dirty_bitmap = d->dirty_buf };

	memset(d->dirty_buf, 0xff, bitmap_words(d) * sizeof(uint64_t));
	if (ioctl(d->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0) {
		int err = -errno;

		log_err("KVM_CLEAR_DIRTY_LOG of all %llu pages: %s",
			(unsigned long long)nr_pages(d), strerror(errno));
		return err;
	}
	return 0;
}

int kvm_dirty_set(struct hv_domain *d, bool on)
{
	struct kvm_userspace_memory_region slot = {
		.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.memory_size = d->mem_size,
		.userspace_addr = (uint64_t)(uintptr_t)d->mem,
	};
	uint64_t **buf = d->dirty_mech == KVM_DIRTY_RING ? &d->ring_acc
							 : &d->dirty_buf;
	int err = 0;

	pthread_mutex_lock(&d->dirty_lock);
	if (on && !*buf) {
		*buf = calloc(bitmap_words(d), sizeof(uint64_t));
		if (!*buf) {
			err = -ENOMEM;
			goto out;
		}
	}
	if (on && !d->vmm_dirty) {
		d->vmm_dirty = calloc(bitmap_words(d), sizeof(uint64_t));
		if (!d->vmm_dirty) {
			err = -ENOMEM;
			goto out;
		}
	}
	if (on) {
		memset(d->vmm_dirty, 0, bitmap_words(d) * sizeof(uint64_t));
		d->vmm_dirty_any = false;
	}
	if (on && d->ring_acc) {
		memset(d->ring_acc, 0, bitmap_words(d) * sizeof(uint64_t));
		d->ring_acc_n = 0;
	}
	/* The vCPU thread may take dirty_lock on a ring-full exit; KVM
	 * holds no vCPU lock of ours, so holding it here is safe. */
	if (ioctl(d->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
		err = -errno;
		log_err("dirty logging %s: %s", on ? "on" : "off",
			strerror(errno));
		goto out;
	}
	if (on && d->dirty_mech == KVM_DIRTY_MANUAL_INIT) {
		err = manual_clear_all(d);
		if (err)
			goto out;
	}
	if (!on && d->ring && ring_harvest(d, NULL))
		err = ring_reset(d); /* leftovers of the last round */
	__atomic_store_n(&d->dirty_on, on, __ATOMIC_RELEASE);
	kvm_blk_log(d, on);
out:
	pthread_mutex_unlock(&d->dirty_lock);
	return err;
}

/* Is any word of bitmap[0..words) non-zero? */
static bool any_set(const uint64_t *bm, uint64_t words)
{
	for (uint64_t i = 0; i < words; i++)
		if (bm[i])
			return true;
	return false;
}

static int fetch_bitmap(struct hv_domain *d, uint64_t *bitmap)
{
	struct kvm_dirty_log log = { .slot = 0, .dirty_bitmap = d->dirty_buf };
	uint64_t words = bitmap_words(d), i;

	if (ioctl(d->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
		int err = -errno;

		log_err("KVM_GET_DIRTY_LOG: %s", strerror(errno));
		return err;
	}
	if (d->dirty_mech != KVM_DIRTY_BITMAP && any_set(d->dirty_buf, words)) {
		/* Only the set bits are cleared and their pages protected. */
		struct kvm_clear_dirty_log cl = {
			.slot = 0,
			.num_pages = (uint32_t)nr_pages(d),
			.first_page = 0,
			.dirty_bitmap = d->dirty_buf,
		};

		if (ioctl(d->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0) {
			int err = -errno;

			log_err("KVM_CLEAR_DIRTY_LOG: %s", strerror(errno));
			return err;
		}
	}
	for (i = 0; i < words; i++)
		bitmap[i] |= d->dirty_buf[i];
	return 0;
}

static int fetch_ring(struct hv_domain *d, uint64_t *bitmap)
{
	uint64_t words = bitmap_words(d), i;
	int err = 0;

	pthread_mutex_lock(&d->dirty_lock);
	if (ring_harvest(d, bitmap))
		err = ring_reset(d);
	if (d->ring_acc_n) {
		for (i = 0; i < words; i++)
			bitmap[i] |= d->ring_acc[i];
		memset(d->ring_acc, 0, words * sizeof(uint64_t));
		d->ring_acc_n = 0;
	}
	pthread_mutex_unlock(&d->dirty_lock);
	return err;
}

int kvm_dirty_fetch(struct hv_domain *d, uint64_t *bitmap, uint64_t nr_pfns)
{
	if (!d->dirty_on) {
		log_err("dirty_fetch with dirty logging off");
		return -EINVAL;
	}
	if (nr_pfns < nr_pages(d)) {
		log_err("dirty_fetch: bitmap of %llu bits for %llu pages",
			(unsigned long long)nr_pfns,
			(unsigned long long)nr_pages(d));
		return -EINVAL;
	}
	fetch_vmm(d, bitmap);
	if (d->dirty_mech == KVM_DIRTY_RING)
		return fetch_ring(d, bitmap);
	return fetch_bitmap(d, bitmap);
}

void kvm_dirty_get_info(struct hv_domain *d, struct kvm_dirty_info *info)
{
	*info = (struct kvm_dirty_info){
		.mech = d->dirty_mech,
		.ring_entries = d->ring_entries,
		.ring_full_exits = atomic_load(&d->ring_full_exits),
		.ring_full_ns = atomic_load(&d->ring_full_ns),
	};
}
