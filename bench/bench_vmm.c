// SPDX-License-Identifier: MIT
/*
 * bench_vmm.c - what running inside the built-in micro-VMM costs:
 *
 *  1. exits: the round trip of a clock hypercall, of an `out` and of an
 *     `in` on an unclaimed port (bare exit to the VMM and back), as the
 *     guest times them; against a host syscall and a vDSO clock read
 *     measured in the same run;
 *  2. compute: the kernels of bench/kernels.h (integer hash, first touch,
 *     memory stream, pointer chase) in a guest and on the host, compiled
 *     from the same source; guest/host time ratio.
 *
 *   build/bench/bench_vmm [--calls N] [--runs R] [--mem MIB]
 *                         [--only exits|compute]
 *
 * Defaults: 20000 calls per exit run, 3 runs (medians for exits, minima
 * for compute), 1024 MiB guest.  The guest image is
 * build/guest/benchguest.elf or $BENCH_GUEST.  Numbers only: nothing here
 * judges them (docs/performance.md does).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "benchvm.h"
#include "kernels.h"

#define MAX_RUNS 32
#define MIB (1ULL << 20)

struct opts {
	uint64_t calls;
	unsigned runs;
	uint64_t mem_mib;
	const char *only;
};

/* ---- 1. exits ----------------------------------------------------------- */

/* One guest run of `mode`: guest ns per call and VM exits per call. */
static int exit_run(const struct opts *o, const char *mode, double *ns_call,
		    double *exits_call)
{
	struct bvm vm;
	struct hv_status st;
	char cmd[64];
	const char *line;
	long long n, ns;
	int err;

	snprintf(cmd, sizeof(cmd), "%s %llu", mode,
		 (unsigned long long)o->calls);
	err = bvm_start(&vm, bench_guest(), 64 * MIB, cmd, NULL);
	if (err)
		return err;
	err = bvm_wait_exit(&vm, 120);
	if (!err) {
		char prefix[64];

		snprintf(prefix, sizeof(prefix), "benchguest: %s ", mode);
		line = bvm_wait_line(&vm, prefix, 1);
		n = line ? bvm_field(line, "n") : -1;
		ns = line ? bvm_field(line, "ns") : -1;
		if (n <= 0 || ns <= 0) {
			log_err("unexpected guest output:\n%s", vm.out);
			err = -EPROTO;
		} else {
			kvm_hv_ops.status(vm.d, &st);
			*ns_call = (double)ns / (double)n;
			*exits_call = (double)st.exits / (double)n;
		}
	}
	bvm_stop(&vm);
	return err;
}

static double host_syscall_ns(void)
{
	uint64_t t0, n = 1000000;

	t0 = bench_ns();
	for (uint64_t i = 0; i < n; i++)
		syscall(SYS_getppid);
	return (double)(bench_ns() - t0) / (double)n;
}

static double host_clock_ns(void)
{
	uint64_t t0, n = 1000000, sink = 0;

	t0 = bench_ns();
	for (uint64_t i = 0; i < n; i++)
		sink += bench_ns();
	if (!sink)
		puts("");
	return (double)(bench_ns() - t0) / (double)n;
}

static int bench_exits(const struct opts *o)
{
	static const char *const modes[] = { "hcall", "null", "nullin" };
	static const char *const what[] = {
		"clock hypercall (FT_HC_CLOCK_MONO)",
		"outb to unclaimed port 0x80",
		"inb from unclaimed port 0x80",
	};
	double med[3], min, max, sys_ns, clk_ns;

	printf("== exits: round trip guest -> VMM -> guest, guest-timed, "
	       "%llu calls x %u runs ==\n",
	       (unsigned long long)o->calls, o->runs);
	printf("%-8s %-36s %10s %10s %10s %11s\n", "mode", "what",
	       "median us", "min us", "max us", "exits/call");
	for (unsigned m = 0; m < 3; m++) {
		double v[MAX_RUNS], ex = 0;

		for (unsigned r = 0; r < o->runs; r++) {
			int err = exit_run(o, modes[m], &v[r], &ex);

			if (err)
				return err;
		}
		bench_stats(v, o->runs, &med[m], &min, &max);
		printf("%-8s %-36s %10.2f %10.2f %10.2f %11.3f\n", modes[m],
		       what[m], med[m] / 1e3, min / 1e3, max / 1e3, ex);
	}
	sys_ns = host_syscall_ns();
	clk_ns = host_clock_ns();
	printf("host baselines (this run): getppid() syscall %.0f ns, "
	       "clock_gettime (vDSO) %.0f ns\n",
	       sys_ns, clk_ns);
	printf("ratios: hypercall/syscall %.0fx, hypercall/vDSO clock %.0fx, "
	       "hypercall/bare exit %.2fx\n\n",
	       med[0] / sys_ns, med[0] / clk_ns, med[0] / med[1]);
	return 0;
}

/* ---- 2. compute ---------------------------------------------------------- */

enum { K_HASH, K_TOUCH, K_STREAM, K_CHASE, NR_KERNELS };
static const char *const kernel_names[NR_KERNELS] = { "hash", "touch",
						      "stream", "chase" };

struct kern_result {
	uint64_t ns[NR_KERNELS];
	uint64_t result[NR_KERNELS];
};

/* Like the guest's heap: anonymous memory, transparent huge pages allowed
 * (the VMM backs guest RAM the same way). */
static void *host_alloc(uint64_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, bytes, MADV_HUGEPAGE);
	return p;
}

/* The guest's run_compute, step for step, on the host. */
static int host_compute(const struct kern_params *p, struct kern_result *kr)
{
	uint64_t hw = p->hash_kib * 1024 / 8, sw = p->stream_mib * MIB / 8;
	uint64_t nodes = p->chase_mib * MIB / 64, t0;
	uint64_t *hbuf = host_alloc(hw * 8), *sbuf = host_alloc(sw * 8);
	uint64_t *cbuf = host_alloc(nodes * 64);
	int err = 0;

	if (!hbuf || !sbuf || !cbuf) {
		log_err("host buffers: %s", strerror(errno));
		err = -ENOMEM;
		goto out;
	}
	kern_fill(hbuf, hw, 1);
	t0 = bench_ns();
	kr->result[K_HASH] = kern_hash(hbuf, hw, p->hash_reps);
	kr->ns[K_HASH] = bench_ns() - t0;

	t0 = bench_ns();
	kr->result[K_TOUCH] = kern_touch(sbuf, sw);
	kr->ns[K_TOUCH] = bench_ns() - t0;
	kern_fill(sbuf, sw, 2);
	t0 = bench_ns();
	kr->result[K_STREAM] = kern_stream(sbuf, sw, p->stream_reps);
	kr->ns[K_STREAM] = bench_ns() - t0;

	kern_chase_build(cbuf, nodes, 3);
	kern_chase(cbuf, nodes);
	t0 = bench_ns();
	kr->result[K_CHASE] = kern_chase(cbuf, p->chase_steps);
	kr->ns[K_CHASE] = bench_ns() - t0;
out:
	if (hbuf)
		munmap(hbuf, hw * 8);
	if (sbuf)
		munmap(sbuf, sw * 8);
	if (cbuf)
		munmap(cbuf, nodes * 64);
	return err;
}

static int guest_compute(const struct opts *o, const struct kern_params *p,
			 struct kern_result *kr)
{
	struct bvm vm;
	char cmd[256], prefix[64];
	int err;

	snprintf(cmd, sizeof(cmd), "compute %llu %llu %llu %llu %llu %llu",
		 (unsigned long long)p->hash_kib,
		 (unsigned long long)p->hash_reps,
		 (unsigned long long)p->stream_mib,
		 (unsigned long long)p->stream_reps,
		 (unsigned long long)p->chase_mib,
		 (unsigned long long)p->chase_steps);
	err = bvm_start(&vm, bench_guest(), o->mem_mib * MIB, cmd, NULL);
	if (err)
		return err;
	err = bvm_wait_exit(&vm, 300);
	for (unsigned k = 0; !err && k < NR_KERNELS; k++) {
		const char *line;
		long long ns;

		snprintf(prefix, sizeof(prefix), "benchguest: kernel %s ",
			 kernel_names[k]);
		line = bvm_wait_line(&vm, prefix, 1);
		ns = line ? bvm_field(line, "ns") : -1;
		if (ns <= 0) {
			err = -EPROTO;
			break;
		}
		kr->ns[k] = (uint64_t)ns;
		/* bvm_field's strtoll would saturate above INT64_MAX */
		kr->result[k] = strtoull(strstr(line, "result=") + 7, NULL, 0);
	}
	bvm_stop(&vm);
	return err;
}

static int bench_compute(const struct opts *o)
{
	struct kern_params p = kern_params_default();
	struct kern_result host[MAX_RUNS], guest[MAX_RUNS];
	int err;

	printf("== compute: bench/kernels.h on the host and in a %llu MiB "
	       "guest, best of %u runs ==\n",
	       (unsigned long long)o->mem_mib, o->runs);
	printf("params: hash %llu KiB x %llu, touch+stream %llu MiB x %llu, "
	       "chase %llu MiB %llu steps\n",
	       (unsigned long long)p.hash_kib,
	       (unsigned long long)p.hash_reps,
	       (unsigned long long)p.stream_mib,
	       (unsigned long long)p.stream_reps,
	       (unsigned long long)p.chase_mib,
	       (unsigned long long)p.chase_steps);
	for (unsigned r = 0; r < o->runs; r++) {
		err = host_compute(&p, &host[r]);
		if (!err)
			err = guest_compute(o, &p, &guest[r]);
		if (err)
			return err;
	}
	printf("%-8s %10s %10s %12s %8s  %s\n", "kernel", "host ms",
	       "guest ms", "guest/host", "same", "unit cost host / guest");
	for (unsigned k = 0; k < NR_KERNELS; k++) {
		uint64_t h = UINT64_MAX, g = UINT64_MAX;
		bool same = true;
		double units;
		const char *unit;

		for (unsigned r = 0; r < o->runs; r++) {
			h = host[r].ns[k] < h ? host[r].ns[k] : h;
			g = guest[r].ns[k] < g ? guest[r].ns[k] : g;
			same &= host[r].result[k] == guest[r].result[k];
		}
		switch (k) {
		case K_HASH:
			units = (double)p.hash_kib * 128 * (double)p.hash_reps;
			unit = "ns/word";
			break;
		case K_TOUCH:
			units = (double)p.stream_mib * 256;
			unit = "ns/4K page";
			break;
		case K_STREAM: /* shown as a rate: GiB read+written per s */
			units = (double)p.stream_mib * (double)p.stream_reps /
				1024;
			unit = "GiB/s";
			break;
		default:
			units = (double)p.chase_steps;
			unit = "ns/step";
			break;
		}
		printf("%-8s %10.1f %10.1f %12.3f %8s  %.2f / %.2f %s\n",
		       kernel_names[k], (double)h / 1e6, (double)g / 1e6,
		       (double)g / (double)h, same ? "yes" : "NO",
		       k == K_STREAM ? units / ((double)h / 1e9)
				     : (double)h / units,
		       k == K_STREAM ? units / ((double)g / 1e9)
				     : (double)g / units,
		       unit);
	}
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "calls", required_argument, NULL, 'c' },
		{ "runs", required_argument, NULL, 'r' },
		{ "mem", required_argument, NULL, 'm' },
		{ "only", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .calls = 20000, .runs = 3, .mem_mib = 1024 };
	int c, err = 0;

	log_set_prog("bench_vmm");
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o.calls = strtoull(optarg, NULL, 0);
			break;
		case 'r':
			o.runs = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'm':
			o.mem_mib = strtoull(optarg, NULL, 0);
			break;
		case 'o':
			o.only = optarg;
			break;
		default:
			fprintf(stderr, "usage: bench_vmm [--calls N] "
					"[--runs R] [--mem MIB] "
					"[--only exits|compute]\n");
			return 2;
		}
	}
	if (!o.calls || !o.runs || o.runs > MAX_RUNS || o.mem_mib < 640) {
		fprintf(stderr, "bench_vmm: need calls > 0, 1 <= runs <= %d, "
				"mem >= 640 MiB\n",
			MAX_RUNS);
		return 2;
	}
	if (kvm_probe())
		return 1;
	if (!o.only || !strcmp(o.only, "exits"))
		err = bench_exits(&o);
	if (!err && (!o.only || !strcmp(o.only, "compute")))
		err = bench_compute(&o);
	return err ? 1 : 0;
}
