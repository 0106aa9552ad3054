// SPDX-License-Identifier: MIT
/*
 * bench_snapshot.c - save and restore throughput of a whole VM through
 * migrate/snapshot.c over the hv interface, as `ftvm ctl save` and
 * `ftvm restore` do it.
 *
 *   build/bench/bench_snapshot [--mem MIB] [--runs R] [--dir DIR]...
 *
 * For each content (random pages, zero pages): boot the bench guest in a
 * MIB-MiB domain (default 1024) with `fill random|zero 0`, which writes
 * every heap page and then idles in poll; pause it; then for each DIR
 * (default /dev/shm and /tmp), R times (default 2):
 *   save     snap_save to DIR/ftbench-snap-PID.ftst (not synced)
 *   fsync    the file, as ftvm's save does before its rename
 *   restore  snap_restore from the file into a new domain; on a
 *            non-tmpfs DIR the page cache is dropped first
 *            (posix_fadvise DONTNEED), so it reads from the disk
 * and check that the restored RAM equals the original, byte for byte.
 * Rates are GiB of guest RAM per second (not of file bytes).  The file is
 * removed after each run, also on SIGINT/SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "benchvm.h"
#include "channel.h"
#include "migrate/snapshot.h"

#define MIB (1ULL << 20)
#define MAX_DIRS 8

static char cur_file[4096]; /* removed by the signal handler */

static void on_signal(int sig)
{
	if (cur_file[0])
		unlink(cur_file);
	signal(sig, SIG_DFL);
	raise(sig);
}

static bool is_tmpfs(const char *dir)
{
	struct statfs sf;

	return statfs(dir, &sf) == 0 && sf.f_type == TMPFS_MAGIC;
}

/* Compare the RAM of two domains of the same size; returns the first
 * differing frame or UINT64_MAX. */
static uint64_t ram_diff(struct hv_domain *a, struct hv_domain *b,
			 uint64_t pages)
{
	for (uint64_t pfn = 0; pfn < pages; pfn++) {
		void *pa, *pb;

		if (kvm_hv_ops.map(a, &pfn, 1, &pa) ||
		    kvm_hv_ops.map(b, &pfn, 1, &pb))
			return pfn;
		if (memcmp(pa, pb, HV_PAGE_SIZE))
			return pfn;
	}
	return UINT64_MAX;
}

static double gibs(uint64_t bytes, uint64_t ns)
{
	return (double)bytes / (double)(1ULL << 30) / ((double)ns / 1e9);
}

/* One save + restore of `d` through `dir`; prints one line. */
static int save_restore(struct hv_domain *d, uint64_t mem, const char *kind,
			const char *dir)
{
	struct kvm_cfg cfg = { .console_fd = -1 };
	struct snap_stats st;
	struct hv_domain *r = NULL;
	struct chan *c;
	uint64_t t0, t_save, t_sync, t_rest, bad;
	bool tmpfs = is_tmpfs(dir);
	int err, fd;

	snprintf(cur_file, sizeof(cur_file), "%s/ftbench-snap-%d.ftst", dir,
		 (int)getpid());
	err = chan_open_file(&c, cur_file, O_WRONLY | O_CREAT | O_TRUNC);
	if (err)
		goto out;
	t0 = bench_ns();
	err = snap_save(&kvm_hv_ops, d, c, &st);
	t_save = bench_ns() - t0;
	t0 = bench_ns();
	if (!err)
		err = chan_flush(c, true);
	t_sync = bench_ns() - t0;
	if (chan_close(c) && !err)
		err = -EIO;
	if (err)
		goto out;
	if (!tmpfs) {
		fd = open(cur_file, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
	}
	err = chan_open_file(&c, cur_file, O_RDONLY);
	if (err)
		goto out;
	t0 = bench_ns();
	err = snap_restore(&kvm_hv_ops, &cfg, c, true, &r);
	t_rest = bench_ns() - t0;
	chan_close(c);
	if (err)
		goto out;
	bad = ram_diff(d, r, mem / HV_PAGE_SIZE);
	printf("%-7s %-9s %-6s %10.1f %8.2f %9.1f %10.1f %8.2f %9.1f  %s\n",
	       kind, dir, tmpfs ? "tmpfs" : "disk", (double)t_save / 1e6,
	       gibs(mem, t_save), (double)t_sync / 1e6, (double)t_rest / 1e6,
	       gibs(mem, t_rest), (double)st.bytes / (double)MIB,
	       bad == UINT64_MAX ? "ok" : "MISMATCH");
	if (bad != UINT64_MAX) {
		log_err("restored RAM differs at frame 0x%llx",
			(unsigned long long)bad);
		err = -EIO;
	}
out:
	if (r)
		kvm_hv_ops.destroy(r);
	unlink(cur_file);
	cur_file[0] = '\0';
	return err;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ "dir", required_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const kinds[] = { "random", "zero" };
	const char *dirs[MAX_DIRS] = { "/dev/shm", "/tmp" };
	unsigned ndirs = 0, runs = 2;
	uint64_t mem = 1024 * MIB;
	int c, err = 0;

	log_set_prog("bench_snapshot");
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'm':
			mem = strtoull(optarg, NULL, 0) * MIB;
			break;
		case 'r':
			runs = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'd':
			if (ndirs == MAX_DIRS) {
				fprintf(stderr, "at most %d --dir\n", MAX_DIRS);
				return 2;
			}
			dirs[ndirs++] = optarg;
			break;
		default:
			fprintf(stderr, "usage: bench_snapshot [--mem MIB] "
					"[--runs R] [--dir DIR]...\n");
			return 2;
		}
	}
	if (!ndirs)
		ndirs = 2;
	if (!runs || mem < 64 * MIB) {
		fprintf(stderr, "bench_snapshot: need runs > 0, mem >= 64\n");
		return 2;
	}
	if (kvm_probe())
		return 1;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	printf("== snapshot: save/restore of a %llu MiB guest via "
	       "snap_save/snap_restore, %u runs per line ==\n",
	       (unsigned long long)(mem / MIB), runs);
	printf("rates are GiB of guest RAM per second; restore includes "
	       "creating the domain\n");
	printf("%-7s %-9s %-6s %10s %8s %9s %10s %8s %9s  %s\n", "content",
	       "dir", "fs", "save ms", "GiB/s", "fsync ms", "restore ms",
	       "GiB/s", "file MiB", "check");
	for (unsigned k = 0; !err && k < 2; k++) {
		struct bvm vm;
		char cmd[64];
		const char *line;

		snprintf(cmd, sizeof(cmd), "fill %s 0", kinds[k]);
		err = bvm_start(&vm, bench_guest(), mem, cmd, NULL);
		if (err)
			break;
		line = bvm_wait_line(&vm, "benchguest: ready", 300);
		if (!line)
			err = -ETIMEDOUT;
		if (!err)
			err = kvm_hv_ops.pause(vm.d);
		for (unsigned d = 0; !err && d < ndirs; d++)
			for (unsigned r = 0; !err && r < runs; r++)
				err = save_restore(vm.d, mem, kinds[k],
						   dirs[d]);
		bvm_stop(&vm);
	}
	return err ? 1 : 0;
}
