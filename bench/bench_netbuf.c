// SPDX-License-Identifier: MIT
/*
 * bench_netbuf.c - what output commit costs a guest that sends as fast as
 * it can: frames/s of `benchguest netsend` (batches of 64 UDP frames)
 * straight to its TAP, and with netbuf holding its output and an engine
 * thread that seals (the domain paused) and releases an epoch every
 * period, as a checkpoint loop would (the commit itself is instant here:
 * no backup, so this is netbuf's own cost plus the pauses).  "guest" is
 * the rate the guest sent at (its own clock); "out" counts until the last
 * frame was released (the final epoch released at once).
 *
 *   build/bench/bench_netbuf [--frames N] [--len BYTES] [--period-ms MS]
 *                            [--runs R] [--bound BYTES]
 *
 * Defaults: 200000 frames of 1514 bytes, 25 ms, 3 runs (medians), bound
 * 4 MiB.  Root only: it runs in a network namespace of its own, where
 * the TAP has the address 10.99.0.1 and the guest sends to it (the host
 * answers nothing: port 9).  Modes: direct (no netbuf), in-process,
 * nfqueue (iptables INPUT rule on the TAP).  Numbers only.
 */
#include <errno.h>
#include <getopt.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "benchvm.h"
#include "mailbox.h"
#include "netbuf/netbuf.h"

#define MAX_RUNS 16
#define TAP "nbbench0"

struct opts {
	uint64_t frames;
	unsigned len, period_ms, runs;
	size_t bound;
};

struct engine {
	struct hv_domain *d;
	struct netbuf *nb;
	unsigned period_ms;
	volatile bool stop;
	uint64_t epochs;
	double pause_us; /* total time the domain spent paused */
	double seal_us;	 /* of which in netbuf_seal */
};

static void *engine_thread(void *arg)
{
	struct engine *e = arg;

	while (!e->stop) {
		uint64_t t0, t1;

		usleep(e->period_ms * 1000);
		t0 = bench_ns();
		kvm_hv_ops.pause(e->d);
		t1 = bench_ns();
		netbuf_seal(e->nb, ++e->epochs);
		e->seal_us += (double)(bench_ns() - t1) / 1e3;
		kvm_hv_ops.unpause(e->d);
		e->pause_us += (double)(bench_ns() - t0) / 1e3;
		netbuf_release(e->nb, e->epochs);
	}
	return NULL;
}

static int tap_mac(char *out, size_t len)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	const unsigned char *m;

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), TAP);
	if (fd < 0 || ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	close(fd);
	m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
	snprintf(out, len, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2],
		 m[3], m[4], m[5]);
	return 0;
}

/* One run of `mode`: frames/s as the guest sent them and as they left
 * (until the last one was released), and netbuf's counters. */
static int run(const struct opts *o, enum netbuf_backend mode, bool direct,
	       double *fps, double *out_fps, struct netbuf_stats *st,
	       struct engine *eng)
{
	struct hv_dom_info info = { .mem_size = 64ULL << 20, .nr_vcpus = 1,
				    .page_size = HV_PAGE_SIZE };
	struct kvm_cfg cfg = { 0 };
	struct netbuf_cfg ncfg = { .backend = mode, .max_bytes = o->bound,
				   .ifname = TAP };
	struct bvm vm = { 0 };
	struct bench_mailbox *mb;
	struct netbuf *nb = NULL;
	pthread_t t;
	char cmd[128], mac[32];
	const char *line;
	uint64_t gpa, pfn, t0;
	void *ptr;
	int err;

	err = kvm_net_parse("tap=" TAP ",mac=52:54:00:99:00:02,ip=10.99.0.2/24,"
			    "host-ip=10.99.0.1/24", &cfg.net);
	if (err)
		return err;
	vm.con = memfd_create("bench-console", MFD_CLOEXEC);
	cfg.console_fd = vm.con;
	err = kvm_create_opts(&info, &cfg, NULL, &vm.d);
	if (!err)
		err = tap_mac(mac, sizeof(mac));
	if (!err) {
		snprintf(cmd, sizeof(cmd), "netsend %s 10.99.0.1 9 %u", mac,
			 o->len);
		err = kvm_boot(vm.d, bench_guest(), cmd);
	}
	if (!err)
		err = kvm_hv_ops.unpause(vm.d);
	if (err)
		goto out;
	line = bvm_wait_line(&vm, "benchguest: netsend mailbox=", 10);
	if (!line) {
		err = -EIO;
		goto out;
	}
	gpa = strtoull(strchr(line, '=') + 1, NULL, 16);
	pfn = gpa / HV_PAGE_SIZE;
	kvm_hv_ops.map(vm.d, &pfn, 1, &ptr);
	mb = (struct bench_mailbox *)((char *)ptr + gpa % HV_PAGE_SIZE);
	while (__atomic_load_n(&mb->magic, __ATOMIC_ACQUIRE) != BENCH_MB_MAGIC)
		usleep(100);
	if (!direct) {
		err = netbuf_open(&ncfg, &kvm_hv_ops, vm.d, &nb);
		if (err)
			goto out;
		*eng = (struct engine){ .d = vm.d, .nb = nb,
					.period_ms = o->period_ms };
		pthread_create(&t, NULL, engine_thread, eng);
	}
	mb->first = 0;
	mb->count = o->frames;
	t0 = bench_ns();
	__atomic_store_n(&mb->seq, 1, __ATOMIC_RELEASE);
	while (__atomic_load_n(&mb->done, __ATOMIC_ACQUIRE) != 1)
		usleep(1000);
	*fps = (double)o->frames / ((double)mb->ns / 1e9);
	*out_fps = *fps;
	if (nb) {
		eng->stop = true;
		pthread_join(t, NULL);
		netbuf_release_all(nb); /* the last epoch commits */
		*out_fps = (double)o->frames /
			   ((double)(bench_ns() - t0) / 1e9);
		netbuf_get_stats(nb, st);
		st->stalls = mb->aux; /* as the guest saw them */
		netbuf_close(nb, true);
	}
out:
	bvm_stop(&vm);
	return err;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_netbuf [--frames N] [--len BYTES] "
		"[--period-ms MS] [--runs R] [--bound BYTES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "frames", required_argument, NULL, 'f' },
		{ "len", required_argument, NULL, 'l' },
		{ "period-ms", required_argument, NULL, 'p' },
		{ "runs", required_argument, NULL, 'r' },
		{ "bound", required_argument, NULL, 'b' },
		{ 0 } };
	struct opts o = { .frames = 200000, .len = 1514, .period_ms = 25,
			  .runs = 3, .bound = NETBUF_DEFAULT_BYTES };
	const struct {
		const char *name;
		enum netbuf_backend b;
		bool direct;
	} modes[] = { { "direct", NETBUF_INPROC, true },
		      { "in-process", NETBUF_INPROC, false },
		      { "nfqueue", NETBUF_NFQUEUE, false } };
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			o.frames = strtoull(optarg, NULL, 0);
			break;
		case 'l':
			o.len = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'p':
			o.period_ms = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'r':
			o.runs = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'b':
			o.bound = strtoull(optarg, NULL, 0);
			break;
		default:
			usage();
		}
	}
	if (!o.frames || o.len < 60 || o.len > 1514 || !o.runs ||
	    o.runs > MAX_RUNS || !o.period_ms)
		usage();
	if (unshare(CLONE_NEWNET) < 0 || system("ip link set lo up")) {
		fprintf(stderr, "bench_netbuf: needs root (a network "
			"namespace of its own): %s\n", strerror(errno));
		return 1;
	}
	log_set_level(LOG_WARN);
	printf("bench_netbuf: %llu frames of %u bytes, epoch every %u ms, "
	       "bound %zu bytes, %u runs (medians)\n",
	       (unsigned long long)o.frames, o.len, o.period_ms, o.bound,
	       o.runs);
	for (unsigned m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
		double fps[MAX_RUNS], ofps[MAX_RUNS], med, min, max, omed;
		struct netbuf_stats st = { 0 };
		struct engine eng = { 0 };

		for (unsigned r = 0; r < o.runs; r++) {
			if (run(&o, modes[m].b, modes[m].direct, &fps[r],
				&ofps[r], &st, &eng)) {
				fprintf(stderr, "bench_netbuf: %s failed\n",
					modes[m].name);
				return 1;
			}
		}
		bench_stats(ofps, o.runs, &omed, &min, &max);
		bench_stats(fps, o.runs, &med, &min, &max);
		printf("%-10s guest %9.0f frames/s (%.0f..%.0f) %7.1f MB/s, "
		       "out %9.0f frames/s", modes[m].name, med, min, max,
		       med * o.len / 1e6, omed);
		if (!modes[m].direct)
			printf("  epochs %llu, paused %.0f us/epoch (seal %.0f)"
			       ", guest waits %llu, dropped %llu, high-water "
			       "%llu B",
			       (unsigned long long)eng.epochs,
			       eng.epochs ? eng.pause_us / (double)eng.epochs
					  : 0.0,
			       eng.epochs ? eng.seal_us / (double)eng.epochs
					  : 0.0,
			       (unsigned long long)st.stalls,
			       (unsigned long long)st.dropped,
			       (unsigned long long)st.max_bytes_held);
		printf("\n");
	}
	return 0;
}
