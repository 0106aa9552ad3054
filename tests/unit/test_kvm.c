// SPDX-License-Identifier: MIT
/*
 * test_kvm.c - the micro-VMM's dirty logging, with a real guest, for every
 * mechanism the host offers (bitmap, manual protect, ring):
 *
 *  - pages the guest writes are reported, and fetch clears them: a second
 *    fetch after other writes does not report the first set again;
 *  - a page only the VMM writes (a hypercall's result block) is reported
 *    too, although KVM itself never logs VMM writes.
 *
 * Uses guest/benchguest (its "dirty" mailbox and "vmmwrite" modes).  Needs
 * /dev/kvm; skips with the reason where it is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
/* cmocka after the standard headers it needs */
#include <cmocka.h>

#include "bench/benchvm.h"
#include "bench/mailbox.h"

#define MEM (64ULL << 20)

static char image[512];

static bool have_kvm(void)
{
	return access("/dev/kvm", R_OK | W_OK) == 0;
}

static bool bit(const uint64_t *bm, uint64_t pfn)
{
	return (bm[pfn / 64] >> (pfn % 64)) & 1;
}

static unsigned count_bits(const uint64_t *bm, uint64_t words)
{
	unsigned n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += (unsigned)__builtin_popcountll(bm[i]);
	return n;
}

static uint64_t hex_field(const char *line, const char *key)
{
	const char *p = strstr(line, key);

	assert_non_null(p);
	return strtoull(p + strlen(key), NULL, 16);
}

static int start(struct bvm *vm, const char *cmdline, enum kvm_dirty_mech m)
{
	struct kvm_create_opts o = { .dirty = m };

	return bvm_start(vm, image, MEM, cmdline, &o);
}

/* Post a request to the mailbox guest and wait until it is done. */
static void dirty_pages(struct bench_mailbox *mb, uint64_t first,
			uint64_t count)
{
	uint64_t seq = mb->seq + 1;
	uint64_t end = bench_ns() + 10ULL * 1000000000ULL;

	mb->first = first;
	mb->count = count;
	__atomic_store_n(&mb->seq, seq, __ATOMIC_RELEASE);
	while (__atomic_load_n(&mb->done, __ATOMIC_ACQUIRE) != seq)
		assert_true(bench_ns() < end);
}

static void guest_writes(enum kvm_dirty_mech m)
{
	const uint64_t words = (MEM / HV_PAGE_SIZE + 63) / 64;
	struct bvm *vm = calloc(1, sizeof(*vm));
	uint64_t *bm = calloc(words, 8), mb_gpa, base, mb_pfn, p;
	struct bench_mailbox *mb;
	const char *line;
	void *ptr;
	int err;

	assert_non_null(vm);
	err = start(vm, "dirty 8", m);
	if (err == -EOPNOTSUPP) {
		free(vm);
		free(bm);
		skip(); /* this host lacks the mechanism */
	}
	assert_int_equal(err, 0);
	line = bvm_wait_line(vm, "benchguest: dirty", 10);
	assert_non_null(line);
	mb_gpa = hex_field(line, "mailbox=");
	base = hex_field(line, "base=") / HV_PAGE_SIZE;
	mb_pfn = mb_gpa / HV_PAGE_SIZE;
	assert_int_equal(kvm_hv_ops.map(vm->d, &mb_pfn, 1, &ptr), 0);
	mb = (struct bench_mailbox *)((char *)ptr + mb_gpa % HV_PAGE_SIZE);
	while (__atomic_load_n(&mb->magic, __ATOMIC_ACQUIRE) != BENCH_MB_MAGIC)
		;

	assert_int_equal(kvm_hv_ops.dirty_log(vm->d, true), 0);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	memset(bm, 0, words * 8);

	dirty_pages(mb, 5, 300);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	for (p = base + 5; p < base + 305; p++)
		assert_true(bit(bm, p));
	/* Besides those: the mailbox and stack pages, little else. */
	assert_in_range(count_bits(bm, words), 300, 300 + 16);

	memset(bm, 0, words * 8);
	dirty_pages(mb, 1000, 2);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	assert_true(bit(bm, base + 1000) && bit(bm, base + 1001));
	for (p = base + 5; p < base + 305; p++)
		assert_false(bit(bm, p)); /* cleared by the previous fetch */

	/* More pages than a small ring holds: every one still reported. */
	memset(bm, 0, words * 8);
	dirty_pages(mb, 0, 2000);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	for (p = base; p < base + 2000; p++)
		assert_true(bit(bm, p));

	assert_int_equal(kvm_hv_ops.dirty_log(vm->d, false), 0);
	mb->quit = 1;
	bvm_stop(vm);
	free(vm);
	free(bm);
}

static void vmm_writes(enum kvm_dirty_mech m)
{
	const uint64_t words = (MEM / HV_PAGE_SIZE + 63) / 64;
	struct bvm *vm = calloc(1, sizeof(*vm));
	uint64_t *bm = calloc(words, 8), page;
	const char *line;
	int err;

	assert_non_null(vm);
	err = start(vm, "vmmwrite", m);
	if (err == -EOPNOTSUPP) {
		free(vm);
		free(bm);
		skip();
	}
	assert_int_equal(err, 0);
	line = bvm_wait_line(vm, "benchguest: vmmwrite", 10);
	assert_non_null(line);
	page = hex_field(line, "page=") / HV_PAGE_SIZE;

	assert_int_equal(kvm_hv_ops.dirty_log(vm->d, true), 0);
	usleep(20000);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	memset(bm, 0, words * 8);
	usleep(20000); /* ~20 hypercalls write into the page meanwhile */
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	assert_true(bit(bm, page));
	/* Logging off, then on: a fresh start reports nothing old. */
	assert_int_equal(kvm_hv_ops.dirty_log(vm->d, false), 0);
	assert_int_equal(kvm_hv_ops.pause(vm->d), 0);
	assert_int_equal(kvm_hv_ops.dirty_log(vm->d, true), 0);
	memset(bm, 0, words * 8);
	assert_int_equal(kvm_hv_ops.dirty_fetch(vm->d, bm, MEM / 4096), 0);
	assert_int_equal(count_bits(bm, words), 0);
	assert_int_equal(kvm_hv_ops.unpause(vm->d), 0);
	bvm_stop(vm);
	free(vm);
	free(bm);
}

#define MECH_TESTS(m)                                                        \
	static void test_guest_writes_##m(void **state)                      \
	{                                                                    \
		guest_writes(KVM_DIRTY_##m);                                 \
	}                                                                    \
	static void test_vmm_writes_##m(void **state)                        \
	{                                                                    \
		vmm_writes(KVM_DIRTY_##m);                                   \
	}
MECH_TESTS(BITMAP)
MECH_TESTS(MANUAL)
MECH_TESTS(RING)

static int setup(void **state)
{
	const char *dir = getenv("GUEST_DIR");

	snprintf(image, sizeof(image), "%s/benchguest.elf",
		 dir ? dir : "build/guest");
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_guest_writes_BITMAP),
		cmocka_unit_test(test_guest_writes_MANUAL),
		cmocka_unit_test(test_guest_writes_RING),
		cmocka_unit_test(test_vmm_writes_BITMAP),
		cmocka_unit_test(test_vmm_writes_MANUAL),
		cmocka_unit_test(test_vmm_writes_RING),
	};

	if (!have_kvm()) {
		printf("1..0 # SKIP /dev/kvm not available\n");
		return 0;
	}
	return cmocka_run_group_tests(tests, setup, NULL);
}
