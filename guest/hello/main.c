// SPDX-License-Identifier: MIT
/*
 * hello - the smallest useful guest: proves the runtime and each hypercall
 * work, and gives tests a crash, an ABI-abuse run and a long-running VM.
 *
 *   hello                 print boot facts and clocks, sleep 10 ms, exit 0
 *   hello fault [KIND]    crash on purpose; KIND is pf (write above RAM,
 *                         the default), null (write to page 0), gp
 *                         (non-canonical read) or ud (ud2)
 *   hello badcall         make invalid hypercalls, check each error code
 *                         (docs/guest-abi.md, section 5); exit 0 if all
 *                         were answered as the ABI says
 *   hello spin            print "hello: spin N mono NS" once a second,
 *                         forever (pause/resume/migration tests)
 */
#include "ft.h"

#define MSEC 1000000ULL
#define WALL_2020 1577836800000000000ULL /* 2020-01-01 in Unix ns */

static int run_default(void)
{
	const struct ft_boot_info *bi = ft_boot_info();
	uint64_t mono0, wall0, mono1, wall1;

	printf("hello from ftengine guest\n");
	printf("hello: mem_size=%lu heap=0x%lx-0x%lx cmdline=\"%s\"\n",
	       bi->mem_size, bi->heap_start, bi->heap_end,
	       (const char *)(uintptr_t)bi->cmdline);
	mono0 = ft_clock_mono();
	wall0 = ft_clock_wall();
	printf("hello: mono=%lu wall=%lu\n", mono0, wall0);
	ft_sleep_ns(10 * MSEC);
	mono1 = ft_clock_mono();
	wall1 = ft_clock_wall();
	printf("hello: slept %lu ns\n", mono1 - mono0);
	if (mono1 < mono0 + 10 * MSEC || wall1 < wall0 || wall0 < WALL_2020) {
		printf("hello: FAIL clocks mono %lu -> %lu wall %lu -> %lu\n",
		       mono0, mono1, wall0, wall1);
		return 1;
	}
	printf("hello: ok\n");
	return 0;
}

static int run_fault(const char *kind)
{
	/* Canonical, 2^47 - 37 MiB: far above any test VM's RAM. */
	volatile uint64_t *above_ram = (uint64_t *)0x7ffdeadbe000ULL;
	volatile uint64_t *non_canonical = (uint64_t *)0x7fff0000deadbeefULL;
	volatile uint64_t *null = NULL;

	printf("hello: fault %s\n", kind);
	ft_flush();
	if (!strcmp(kind, "pf"))
		*above_ram = 0xdead;
	else if (!strcmp(kind, "null"))
		*null = 0xdead;
	else if (!strcmp(kind, "gp"))
		(void)*non_canonical;
	else if (!strcmp(kind, "ud"))
		__asm__ volatile("ud2");
	else
		printf("hello: unknown fault kind '%s'\n", kind);
	printf("hello: FAIL survived fault %s\n", kind);
	return 1;
}

/* ---- badcall ---------------------------------------------------------- */

#define SENTINEL 0x5a5a5a5a5a5a5a5aULL

static int n_checks, n_failed;

static void expect(const char *what, int64_t got, int64_t want)
{
	bool ok = got == want;

	n_checks++;
	n_failed += !ok;
	printf("hello: badcall %-32s got %ld want %ld %s\n", what, got, want,
	       ok ? "ok" : "FAIL");
}

/* Console write of (buf, len) through a valid block: the error from %rax
 * or the block's ret. */
static int64_t console(uint64_t buf, uint64_t len)
{
	struct ft_hc_console c = {.buf = buf, .len = len, .ret = SENTINEL};
	int64_t r = ft_hypercall(FT_HC_CONSOLE_WRITE, (uintptr_t)&c);

	return r ? r : c.ret;
}

/*
 * A block the VMM must refuse via %rax: check the error, and that the VMM
 * left the block's first `words` words (guest memory) alone.
 */
static void refused_block(const char *what, unsigned int nr, uint64_t gpa,
			  int words, int64_t want)
{
	uint64_t *w = (uint64_t *)(uintptr_t)(gpa & ~7ULL);
	int64_t got;
	int i;

	for (i = 0; i < words; i++)
		w[i] = SENTINEL;
	got = ft_hypercall(nr, gpa);
	for (i = 0; i < words; i++) {
		if (w[i] != SENTINEL) {
			printf("hello: badcall %s: VMM wrote the block\n",
			       what);
			n_failed++;
			break;
		}
	}
	expect(what, got, want);
}

/* A device call through a valid block: %rax's error or the block's ret. */
static int64_t devcall(unsigned int nr, void *blk, int64_t *ret)
{
	int64_t r;

	*ret = (int64_t)SENTINEL;
	r = ft_hypercall(nr, (uintptr_t)blk);
	return r ? r : *ret;
}

/* Net calls: without a NIC each is ENOSYS; with one, every malformed batch
 * is refused before any frame moves. */
static void badcall_net(uint64_t mem)
{
	struct ft_hc_net_info info;
	static uint8_t frame[FT_NET_FRAME_MAX];
	struct ft_net_frame fr[FT_NET_BATCH_MAX + 1];
	struct ft_hc_net_batch b;
	bool nic = devcall(FT_HC_NET_INFO, &info, &info.ret) == 0;
	int i;

#define BATCH(nr, frames_, count_, res_)                                     \
	(b = (struct ft_hc_net_batch){ .frames = (frames_), .count = (count_), \
				       .reserved = (res_) },                  \
	 devcall(nr, &b, &b.ret))
	for (i = 0; i <= FT_NET_BATCH_MAX; i++)
		fr[i] = (struct ft_net_frame){ .buf = (uintptr_t)frame,
					       .len = 60 };
	if (!nic) {
		expect("net send without a NIC",
		       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 1, 0), -FT_ENOSYS);
		expect("net recv without a NIC",
		       BATCH(FT_HC_NET_RECV, (uintptr_t)fr, 1, 0), -FT_ENOSYS);
		return;
	}
	expect("net send count 0", BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 0, 0),
	       -FT_E2BIG);
	expect("net send count 65",
	       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, FT_NET_BATCH_MAX + 1, 0),
	       -FT_E2BIG);
	expect("net send reserved set",
	       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 1, 1), -FT_EINVAL);
	expect("net send frames beyond RAM",
	       BATCH(FT_HC_NET_SEND, mem - 16, 2, 0), -FT_EFAULT);
	expect("net send frames in system area",
	       BATCH(FT_HC_NET_SEND, 0x1000, 1, 0), -FT_EFAULT);
	fr[1].len = FT_NET_FRAME_MIN - 1;
	expect("net send runt frame", BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 2, 0),
	       -FT_EINVAL);
	fr[1].len = FT_NET_FRAME_MAX + 1;
	expect("net send giant frame",
	       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 2, 0), -FT_EINVAL);
	fr[1] = (struct ft_net_frame){ .buf = mem - 30, .len = 60 };
	expect("net send frame across end of RAM",
	       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 2, 0), -FT_EFAULT);
	fr[1] = (struct ft_net_frame){ .buf = (uintptr_t)frame, .len = 60,
				       .reserved = 1 };
	expect("net send frame reserved set",
	       BATCH(FT_HC_NET_SEND, (uintptr_t)fr, 2, 0), -FT_EINVAL);
	fr[1].reserved = 0;
	expect("net recv buffer too small",
	       BATCH(FT_HC_NET_RECV, (uintptr_t)fr, 1, 0), -FT_EINVAL);
	fr[0].len = FT_NET_FRAME_MAX;
	expect("net recv nothing pending is fine",
	       BATCH(FT_HC_NET_RECV, (uintptr_t)fr, 1, 0), 0);
#undef BATCH
}

/* Block calls: ENOSYS without a disk; range, size and flag checks with. */
static void badcall_block(uint64_t mem)
{
	struct ft_hc_block_info info;
	struct ft_hc_block_io io;
	struct ft_hc_block_flush fl = { .reserved = 1 };
	static uint8_t buf[FT_BLOCK_SECTOR * 2];
	bool disk = devcall(FT_HC_BLOCK_INFO, &info, &info.ret) == 0;

#define IO(nr, sector_, buf_, count_, flags_)                                \
	(io = (struct ft_hc_block_io){ .sector = (sector_), .buf = (buf_),    \
				       .count = (count_), .flags = (flags_) }, \
	 devcall(nr, &io, &io.ret))
	if (!disk) {
		expect("block read without a disk",
		       IO(FT_HC_BLOCK_READ, 0, (uintptr_t)buf, 1, 0),
		       -FT_ENOSYS);
		return;
	}
	expect("block read sector beyond disk",
	       IO(FT_HC_BLOCK_READ, info.sectors, (uintptr_t)buf, 1, 0),
	       -FT_EINVAL);
	expect("block read across end of disk",
	       IO(FT_HC_BLOCK_READ, info.sectors - 1, (uintptr_t)buf, 2, 0),
	       -FT_EINVAL);
	expect("block write sector wraps",
	       IO(FT_HC_BLOCK_WRITE, UINT64_MAX, (uintptr_t)buf, 2, 0),
	       -FT_EINVAL);
	expect("block read count 0", IO(FT_HC_BLOCK_READ, 0, (uintptr_t)buf, 0, 0),
	       -FT_E2BIG);
	expect("block read over max_io",
	       IO(FT_HC_BLOCK_READ, 0, (uintptr_t)buf,
		  FT_BLOCK_IO_MAX / FT_BLOCK_SECTOR + 1, 0), -FT_E2BIG);
	expect("block read buf beyond RAM",
	       IO(FT_HC_BLOCK_READ, 0, mem - FT_BLOCK_SECTOR / 2, 1, 0),
	       -FT_EFAULT);
	expect("block read into system area",
	       IO(FT_HC_BLOCK_READ, 0, 0x2000, 1, 0), -FT_EFAULT);
	expect("block read with flush flag",
	       IO(FT_HC_BLOCK_READ, 0, (uintptr_t)buf, 1, FT_BLOCK_F_FLUSH),
	       -FT_EINVAL);
	expect("block write unknown flag",
	       IO(FT_HC_BLOCK_WRITE, 0, (uintptr_t)buf, 1, 0x80), -FT_EINVAL);
	expect("block flush reserved set", devcall(FT_HC_BLOCK_FLUSH, &fl,
						   &fl.ret), -FT_EINVAL);
	expect("block read last sector",
	       IO(FT_HC_BLOCK_READ, info.sectors - 1, (uintptr_t)buf, 1, 0), 0);
#undef IO
}

static int run_badcall(void)
{
	const struct ft_boot_info *bi = ft_boot_info();
	uint64_t mem = bi->mem_size;
	/* A buffer for console writes that are valid but for their length. */
	char *big = ft_alloc_aligned(FT_CONSOLE_MAX + 1, 8);
	uint64_t slot[4];
	struct ft_hc_poll p = {.deadline_ns = 0, .ready = SENTINEL};
	bool low_ram = mem < FT_GPA_ARG_LIMIT;

	if (!big)
		ft_panic("badcall: heap too small");
	memset(big, '.', FT_CONSOLE_MAX + 1);

	/* Check 1: call numbers. */
	refused_block("unassigned call 0", FT_HC_INVALID, (uintptr_t)slot, 3,
		      -FT_ENOSYS);
	refused_block("unassigned call 13", 13, (uintptr_t)slot, 3, -FT_ENOSYS);
	refused_block("unassigned call 15", 15, (uintptr_t)slot, 3, -FT_ENOSYS);

	/* Checks 2 and 3: the block itself. */
	refused_block("misaligned block", FT_HC_CLOCK_MONO, (uintptr_t)slot + 4,
		      3, -FT_EINVAL);
	refused_block("misaligned exit block", FT_HC_EXIT, (uintptr_t)slot + 2,
		      3, -FT_EINVAL);
	expect("block in page 0", ft_hypercall(FT_HC_CLOCK_MONO, 0),
	       -FT_EFAULT);
	expect("block in system area", ft_hypercall(FT_HC_CLOCK_MONO, 0x1000),
	       -FT_EFAULT);
	expect("exit block in system area", ft_hypercall(FT_HC_EXIT, 0x2000),
	       -FT_EFAULT);
	expect("block at boot info",
	       ft_hypercall(FT_HC_CLOCK_WALL, FT_GPA_BOOTINFO), -FT_EFAULT);
	expect("block across 4 GiB", ft_hypercall(FT_HC_CLOCK_MONO, 0xfffffff8),
	       -FT_EFAULT);
	if (low_ram) {
		expect("block beyond RAM", ft_hypercall(FT_HC_CLOCK_MONO, mem),
		       -FT_EFAULT);
		refused_block("block across end of RAM", FT_HC_CONSOLE_WRITE,
			      mem - 8, 1, -FT_EFAULT);
	}

	/* Check 5: buffers, with overflow. */
	expect("console buf beyond RAM", console(mem, 16), -FT_EFAULT);
	expect("console buf in system area", console(0x1000, 16), -FT_EFAULT);
	expect("console buf across end of RAM", console(mem - 8, 16),
	       -FT_EFAULT);
	expect("console len wraps (end of RAM)",
	       console(mem - 8, UINT64_MAX - 4), -FT_EFAULT);
	expect("console len wraps (heap)", console((uintptr_t)big, UINT64_MAX),
	       -FT_EFAULT);

	/* Check 6, and valid edge cases. */
	expect("console len 4097", console((uintptr_t)big, FT_CONSOLE_MAX + 1),
	       -FT_E2BIG);
	expect("console len 0", console((uintptr_t)big, 0), 0);
	expect("poll deadline 0",
	       ft_hypercall(FT_HC_POLL, (uintptr_t)&p) ?: p.ret, 0);
	expect("poll deadline 0 ready", p.ready, 0);

	/* Devices: their own argument checks (or ENOSYS without them). */
	badcall_net(mem);
	badcall_block(mem);

	if (n_failed) {
		printf("hello: badcall FAILED %d of %d\n", n_failed, n_checks);
		return 1;
	}
	printf("hello: badcall passed %d/%d\n", n_checks, n_checks);
	return 0;
}

static __attribute__((noreturn)) void run_spin(void)
{
	uint64_t start = ft_clock_mono();

	for (uint64_t n = 1;; n++) {
		ft_sleep_until(start + n * FT_NSEC_PER_SEC);
		printf("hello: spin %lu mono %lu\n", n, ft_clock_mono());
	}
}

int main(int argc, char **argv)
{
	if (argc == 1)
		return run_default();
	if (!strcmp(argv[1], "fault") && argc <= 3)
		return run_fault(argc == 3 ? argv[2] : "pf");
	if (!strcmp(argv[1], "badcall") && argc == 2)
		return run_badcall();
	if (!strcmp(argv[1], "spin") && argc == 2)
		run_spin();
	printf("hello: usage: hello [fault [pf|null|gp|ud] | badcall | "
	       "spin]\n");
	return 1;
}
