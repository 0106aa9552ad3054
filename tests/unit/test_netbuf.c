// SPDX-License-Identifier: MIT
/*
 * test_netbuf.c - output commit with a real guest on a real TAP.
 *
 * The test process moves into a network namespace of its own (as root;
 * the network tests skip otherwise) and builds there: bridge nbbr0, the
 * VM's TAP nbtap0 enslaved to it, and a veth pair nbvh (a bridge port) /
 * nbvc (10.99.0.1, where a UDP socket of this test listens).  The guest
 * is `benchguest netsend`, which sends numbered UDP frames to nbvc on
 * request and waits out FT_EAGAIN.  Frames are counted where they leave:
 * on the TAP itself (a packet socket) for the in-process backend, at the
 * UDP socket behind the bridge (after iptables) for NFQUEUE.
 *
 *  - in-process: frames of epoch N do not appear before netbuf_release(N)
 *    and appear in order after it; release_all passes everything and then
 *    output flows until the next seal; a 16 KiB bound stalls a guest
 *    sending 3000 frames (stats.stalls > 0, the guest saw FT_EAGAIN) and
 *    all 3000 arrive in order; close(false) discards and counts, and the
 *    hook is gone afterwards; bad arguments and epoch order are refused.
 *  - nfqueue: the same holding and ordering through iptables rules and a
 *    netfilter queue; the rules exist while open and are gone after close;
 *    a stale rule is cleaned up; the bound drops and counts the excess.
 *  - plug: this kernel's lack of sch_plug is reported with the reason and
 *    netbuf_open fails with it (where sch_plug exists, the hold/release
 *    test runs instead).
 *
 * `test_netbuf --available BACKEND` prints "available" (exit 0) or the
 * reason it is not (exit 1): tests/e2e/test_netbuf.sh uses it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <net/ethernet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
/* cmocka after the standard headers it needs */
#include <cmocka.h>

#include "bench/benchvm.h"
#include "bench/mailbox.h"
#include "netbuf/netbuf.h"

#define MEM (64ULL << 20)
#define TAP "nbtap0"
#define BRIDGE "nbbr0"
#define PEER_IP "10.99.0.1"
#define PORT 9999
#define NETSEND_MAGIC 0x71657362656e7466ULL /* guest/benchguest */
#define QUIET_MS 150 /* no frame for this long: nothing more is coming */
#define MAXSEQ 8192

static char image[512];
static char peer_mac[32];
static bool have_kvm, have_net;
static FILE *logf_;
static uint64_t seqs[MAXSEQ];

/* ---- environment -------------------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A private network namespace with the bridge and the peer; false (and
 * why on stderr) if this process cannot have one. */
static bool net_setup(void)
{
	struct ifreq ifr = { 0 };
	const uint8_t *m;
	int fd;

	if (geteuid() != 0) {
		fprintf(stderr, "test_netbuf: not root: no TAP tests\n");
		return false;
	}
	if (unshare(CLONE_NEWNET) < 0) {
		fprintf(stderr, "test_netbuf: unshare(CLONE_NEWNET): %s\n",
			strerror(errno));
		return false;
	}
	if (sh("ip link set lo up && ip link add " BRIDGE " type bridge && "
	       "ip link set " BRIDGE " up && "
	       "ip link add nbvh type veth peer name nbvc && "
	       "ip link set nbvh master " BRIDGE " up && "
	       "ip addr add " PEER_IP "/24 dev nbvc && ip link set nbvc up")) {
		fprintf(stderr, "test_netbuf: cannot build the topology\n");
		return false;
	}
	/* (/sys still shows the namespace it was mounted in.) */
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "nbvc");
	if (fd < 0 || ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
		fprintf(stderr, "test_netbuf: nbvc's MAC: %s\n",
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return false;
	}
	close(fd);
	m = (const uint8_t *)ifr.ifr_hwaddr.sa_data;
	snprintf(peer_mac, sizeof(peer_mac), "%02x:%02x:%02x:%02x:%02x:%02x",
		 m[0], m[1], m[2], m[3], m[4], m[5]);
	return true;
}

/* Whether the log since the last call holds `s`. */
static bool logged(const char *s)
{
	static char buf[1 << 16];
	size_t n;

	fflush(logf_);
	rewind(logf_);
	n = fread(buf, 1, sizeof(buf) - 1, logf_);
	buf[n] = '\0';
	rewind(logf_);
	if (ftruncate(fileno(logf_), 0) < 0)
		return false;
	if (!strstr(buf, s)) {
		fprintf(stderr, "log lacks \"%s\":\n%s\n", s, buf);
		return false;
	}
	return true;
}

static bool iptables_has(const char *what)
{
	return sh("iptables -w 10 -S FORWARD | grep -q -- '%s'", what) == 0;
}

/* ---- the guest ---------------------------------------------------------- */

struct gvm {
	struct bvm b;
	struct bench_mailbox *mb;
	uint64_t posted;
};

static void vm_start(struct gvm *vm, unsigned len)
{
	struct hv_dom_info info = { .mem_size = MEM, .nr_vcpus = 1,
				    .page_size = HV_PAGE_SIZE };
	struct kvm_cfg cfg = { 0 };
	char cmdline[128];
	const char *line;
	uint64_t gpa, pfn;
	void *ptr;

	memset(vm, 0, sizeof(*vm));
	assert_int_equal(kvm_net_parse("tap=" TAP ",mac=52:54:00:99:00:02,"
				       "ip=10.99.0.2/24,bridge=" BRIDGE,
				       &cfg.net), 0);
	vm->b.con = memfd_create("netbuf-console", MFD_CLOEXEC);
	assert_true(vm->b.con >= 0);
	cfg.console_fd = vm->b.con;
	snprintf(cmdline, sizeof(cmdline), "netsend %s %s %d %u", peer_mac,
		 PEER_IP, PORT, len);
	assert_int_equal(kvm_create_opts(&info, &cfg, NULL, &vm->b.d), 0);
	assert_int_equal(kvm_boot(vm->b.d, image, cmdline), 0);
	assert_int_equal(kvm_hv_ops.unpause(vm->b.d), 0);
	line = bvm_wait_line(&vm->b, "benchguest: netsend mailbox=", 10);
	assert_non_null(line);
	gpa = strtoull(strchr(line, '=') + 1, NULL, 16);
	pfn = gpa / HV_PAGE_SIZE;
	assert_int_equal(kvm_hv_ops.map(vm->b.d, &pfn, 1, &ptr), 0);
	vm->mb = (struct bench_mailbox *)((char *)ptr + gpa % HV_PAGE_SIZE);
	while (__atomic_load_n(&vm->mb->magic, __ATOMIC_ACQUIRE) !=
	       BENCH_MB_MAGIC)
		usleep(100);
}

static void vm_stop(struct gvm *vm)
{
	bvm_stop(&vm->b);
}

/* Ask the guest to send `count` frames numbered from `first`. */
static void post(struct gvm *vm, uint64_t first, uint64_t count)
{
	vm->mb->first = first;
	vm->mb->count = count;
	__atomic_store_n(&vm->mb->seq, ++vm->posted, __ATOMIC_RELEASE);
}

static bool done(struct gvm *vm)
{
	return __atomic_load_n(&vm->mb->done, __ATOMIC_ACQUIRE) == vm->posted;
}

static void wait_done(struct gvm *vm)
{
	uint64_t end = bench_ns() + 10ULL * 1000000000ULL;

	while (!done(vm))
		assert_true(bench_ns() < end);
}

static void send_frames(struct gvm *vm, uint64_t first, uint64_t count)
{
	post(vm, first, count);
	wait_done(vm);
}

/* Seal `epoch` with the domain paused, as the checkpoint engine does. */
static void seal(struct gvm *vm, struct netbuf *nb, uint64_t epoch)
{
	assert_int_equal(kvm_hv_ops.pause(vm->b.d), 0);
	assert_int_equal(netbuf_seal(nb, epoch), 0);
	assert_int_equal(kvm_hv_ops.unpause(vm->b.d), 0);
}

/* ---- where frames arrive ------------------------------------------------ */

/* A packet socket on the TAP: every frame the guest put on it. */
static int tap_sniffer(void)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET,
				   .sll_protocol = htons(ETH_P_ALL) };
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	int size = 64 << 20;

	assert_true(fd >= 0);
	sll.sll_ifindex = (int)if_nametoindex(TAP);
	assert_true(sll.sll_ifindex > 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size,
				    sizeof(size)), 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sll, sizeof(sll)), 0);
	return fd;
}

/* The UDP socket on the peer, behind the bridge and iptables. */
static int peer_socket(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(PORT) };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int size = 64 << 20;

	assert_true(fd >= 0);
	inet_pton(AF_INET, PEER_IP, &a.sin_addr);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size,
				    sizeof(size)), 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

/* Collect the sequence numbers of netsend frames on `fd` (`udp`: payload
 * only) until none came for `quiet_ms`.  Returns how many. */
static unsigned collect(int fd, bool udp, int quiet_ms)
{
	unsigned n = 0;
	uint8_t buf[2048];

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		struct sockaddr_ll sll;
		socklen_t sl = sizeof(sll);
		const uint8_t *pl = buf;
		uint64_t magic, seq;
		ssize_t len;

		if (poll(&p, 1, quiet_ms) <= 0)
			break;
		len = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sll,
			       &sl);
		if (!udp) {
			if (len < 42 + 16 ||
			    sll.sll_pkttype == PACKET_OUTGOING ||
			    buf[12] != 0x08 || buf[13] != 0 || buf[23] != 17)
				continue;
			pl = buf + 42;
			len -= 42;
		}
		if (len < 16)
			continue;
		memcpy(&magic, pl, 8);
		memcpy(&seq, pl + 8, 8);
		if (magic != NETSEND_MAGIC)
			continue;
		if (n < MAXSEQ)
			seqs[n] = seq;
		n++;
	}
	return n;
}

/* Exactly first..first+count-1 arrive, in order. */
static void expect_frames(int fd, bool udp, uint64_t first, unsigned count)
{
	unsigned n = collect(fd, udp, QUIET_MS);

	if (n != count)
		fprintf(stderr, "expected %u frames from %llu, got %u (first "
			"%llu)\n", count, (unsigned long long)first, n,
			n ? (unsigned long long)seqs[0] : 0ULL);
	assert_int_equal(n, count);
	for (unsigned i = 0; i < count && i < MAXSEQ; i++)
		assert_int_equal(seqs[i], first + i);
}

static void expect_nothing(int fd, bool udp)
{
	assert_int_equal(collect(fd, udp, 2 * QUIET_MS), 0);
}

static struct netbuf *open_nb(enum netbuf_backend b, size_t max,
			      struct gvm *vm)
{
	struct netbuf_cfg cfg = { .backend = b, .max_bytes = max,
				  .ifname = TAP };
	struct netbuf *nb = NULL;

	assert_int_equal(netbuf_open(&cfg, &kvm_hv_ops, vm->b.d, &nb), 0);
	return nb;
}

#define NEED_NET()                                                           \
	do {                                                                 \
		if (!have_kvm || !have_net)                                  \
			skip();                                              \
	} while (0)

/* ---- generic ------------------------------------------------------------ */

static void test_names(void **state)
{
	enum netbuf_backend b;

	for (int i = NETBUF_INPROC; i <= NETBUF_PLUG; i++) {
		assert_int_equal(netbuf_backend_parse(
					 netbuf_backend_name(i), &b), 0);
		assert_int_equal(b, i);
	}
	assert_string_equal(netbuf_backend_name(NETBUF_INPROC), "in-process");
	assert_string_equal(netbuf_backend_name(NETBUF_NFQUEUE), "nfqueue");
	assert_string_equal(netbuf_backend_name(NETBUF_PLUG), "plug");
	assert_int_equal(netbuf_backend_parse("inproc", &b), -EINVAL);
	assert_int_equal(netbuf_backend_parse("", &b), -EINVAL);
	assert_int_equal(netbuf_backend_parse(NULL, &b), -EINVAL);
}

static void test_bad_args(void **state)
{
	struct netbuf_cfg cfg = { .backend = NETBUF_NFQUEUE };
	struct netbuf *nb = NULL;

	/* No interface name, a bad one, a bound out of range. */
	assert_int_equal(netbuf_open(&cfg, NULL, NULL, &nb), -EINVAL);
	assert_true(logged("needs the TAP's interface name"));
	cfg.ifname = "tap0;reboot";
	assert_int_equal(netbuf_open(&cfg, NULL, NULL, &nb), -EINVAL);
	cfg.ifname = "nosuchtap9";
	cfg.max_bytes = 1000;
	assert_int_equal(netbuf_open(&cfg, NULL, NULL, &nb), -EINVAL);
	assert_true(logged("out of range"));
	cfg.backend = NETBUF_INPROC;
	cfg.max_bytes = 0;
	assert_int_equal(netbuf_open(&cfg, NULL, NULL, &nb), -EINVAL);
	assert_true(logged("needs the domain"));
	if (have_net) {
		cfg.backend = NETBUF_NFQUEUE;
		assert_int_equal(netbuf_open(&cfg, NULL, NULL, &nb), -ENODEV);
		assert_true(logged("no interface nosuchtap9"));
	}
	assert_null(nb);
}

/* ---- in-process ------------------------------------------------------- */

static void test_inproc_hold_release(void **state)
{
	struct netbuf_stats st;
	struct netbuf *nb;
	struct gvm vm;
	int tap;

	NEED_NET();
	vm_start(&vm, 200);
	tap = tap_sniffer();
	send_frames(&vm, 0, 5); /* without netbuf: straight out */
	expect_frames(tap, false, 0, 5);

	nb = open_nb(NETBUF_INPROC, 0, &vm);
	send_frames(&vm, 5, 100);
	expect_nothing(tap, false);
	seal(&vm, nb, 1);
	send_frames(&vm, 105, 100);
	seal(&vm, nb, 2);
	send_frames(&vm, 205, 50); /* not sealed yet */
	expect_nothing(tap, false);
	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_held, 250);
	assert_int_equal(st.bytes_held, 250 * 200);
	assert_int_equal(st.frames_released, 0);

	/* Epochs must increase. */
	assert_int_equal(kvm_hv_ops.pause(vm.b.d), 0);
	assert_int_equal(netbuf_seal(nb, 2), -EINVAL);
	assert_int_equal(netbuf_seal(nb, 1), -EINVAL);
	assert_int_equal(kvm_hv_ops.unpause(vm.b.d), 0);
	assert_true(logged("epochs must increase"));

	assert_int_equal(netbuf_release(nb, 1), 0);
	expect_frames(tap, false, 5, 100);
	assert_int_equal(netbuf_release(nb, 1), 0); /* again: nothing */
	expect_nothing(tap, false);
	assert_int_equal(netbuf_release(nb, 2), 0);
	expect_frames(tap, false, 105, 100);
	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_held, 50);
	assert_int_equal(st.frames_released, 200);
	assert_int_equal(st.bytes_released, 200 * 200);
	assert_int_equal(st.max_bytes_held, 250 * 200);

	/* Everything, and then output flows until the next seal. */
	assert_int_equal(netbuf_release_all(nb), 0);
	expect_frames(tap, false, 205, 50);
	send_frames(&vm, 255, 10);
	expect_frames(tap, false, 255, 10);
	seal(&vm, nb, 3);
	send_frames(&vm, 265, 10);
	expect_nothing(tap, false);
	assert_int_equal(netbuf_release(nb, 3), 0);
	expect_nothing(tap, false); /* sent after the seal: epoch 4 */
	seal(&vm, nb, 4);
	assert_int_equal(netbuf_release(nb, 10), 0);
	expect_frames(tap, false, 265, 10);

	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_held, 0);
	assert_int_equal(st.frames_released, 270);
	assert_int_equal(st.dropped, 0);
	assert_int_equal(st.stalls, 0);
	netbuf_close(nb, true);
	assert_true(logged("270 frames released, 0 dropped, 0 discarded"));
	close(tap);
	vm_stop(&vm);
}

/* A bound of 16 KiB and a guest that sends 3000 1000-byte frames: it is
 * stalled again and again, and every frame arrives, in order. */
static void test_inproc_stall(void **state)
{
	const unsigned total = 3000;
	struct netbuf_stats st;
	struct tpacket_stats ps;
	socklen_t psl = sizeof(ps);
	unsigned events = 0;
	struct netbuf *nb;
	struct gvm vm;
	uint64_t epoch = 0, end, junk;
	int tap;

	NEED_NET();
	vm_start(&vm, 1000);
	tap = tap_sniffer();
	nb = open_nb(NETBUF_INPROC, 16 << 10, &vm);
	post(&vm, 0, total);
	end = bench_ns() + 60ULL * 1000000000ULL;
	while (!done(&vm)) {
		struct pollfd p = { .fd = netbuf_event_fd(nb),
				    .events = POLLIN };

		assert_true(bench_ns() < end);
		/* The engine: an epoch when asked, or every 2 ms. */
		if (poll(&p, 1, 2) == 1 &&
		    read(p.fd, &junk, sizeof(junk)) == sizeof(junk))
			events++;
		seal(&vm, nb, ++epoch);
		assert_int_equal(netbuf_release(nb, epoch), 0);
	}
	assert_int_equal(netbuf_release_all(nb), 0);
	expect_frames(tap, false, 0, total);
	assert_int_equal(getsockopt(tap, SOL_PACKET, PACKET_STATISTICS, &ps,
				    &psl), 0);
	assert_int_equal(ps.tp_drops, 0); /* the count above is complete */

	netbuf_get_stats(nb, &st);
	fprintf(stderr, "stall: %llu stalls, guest waited %llu times, %u "
		"events, %llu epochs, high-water %llu bytes\n",
		(unsigned long long)st.stalls,
		(unsigned long long)vm.mb->aux, events,
		(unsigned long long)epoch,
		(unsigned long long)st.max_bytes_held);
	assert_true(st.stalls > 0);
	assert_true(vm.mb->aux > 0); /* the guest saw FT_EAGAIN */
	assert_true(events > 0);
	assert_int_equal(st.frames_released, total);
	assert_int_equal(st.bytes_released, (uint64_t)total * 1000);
	assert_int_equal(st.dropped, 0);
	assert_true(st.max_bytes_held <= 16 << 10);
	netbuf_close(nb, true);
	close(tap);
	vm_stop(&vm);
}

static void test_inproc_close(void **state)
{
	struct netbuf *nb;
	struct gvm vm;
	int tap;

	NEED_NET();
	vm_start(&vm, 100);
	tap = tap_sniffer();
	nb = open_nb(NETBUF_INPROC, 0, &vm);
	send_frames(&vm, 0, 50);
	seal(&vm, nb, 1);
	send_frames(&vm, 50, 10);
	netbuf_close(nb, false);
	assert_true(logged("0 frames released, 0 dropped, 60 discarded"));
	expect_nothing(tap, false);
	/* The hook is gone: frames go straight out again. */
	send_frames(&vm, 60, 10);
	expect_frames(tap, false, 60, 10);

	/* close(true) sends what is held, sealed or not. */
	nb = open_nb(NETBUF_INPROC, 0, &vm);
	send_frames(&vm, 70, 20);
	seal(&vm, nb, 7);
	send_frames(&vm, 90, 5);
	expect_nothing(tap, false);
	netbuf_close(nb, true);
	expect_frames(tap, false, 70, 25);
	assert_true(logged("25 frames released, 0 dropped, 0 discarded"));
	netbuf_close(NULL, true);
	close(tap);
	vm_stop(&vm);
}

/* ---- nfqueue ------------------------------------------------------------ */

static void test_nfqueue_hold_release(void **state)
{
	struct netbuf_stats st;
	struct netbuf *nb;
	struct gvm vm;
	int peer;

	NEED_NET();
	vm_start(&vm, 300);
	peer = peer_socket();
	send_frames(&vm, 0, 5); /* the path works without netbuf */
	expect_frames(peer, true, 0, 5);

	nb = open_nb(NETBUF_NFQUEUE, 0, &vm);
	assert_true(iptables_has("--physdev-in " TAP));
	assert_true(iptables_has("-i " TAP));
	send_frames(&vm, 5, 100);
	expect_nothing(peer, true);
	seal(&vm, nb, 1);
	send_frames(&vm, 105, 100);
	seal(&vm, nb, 2);
	send_frames(&vm, 205, 30);
	expect_nothing(peer, true);
	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_held, 230);
	assert_int_equal(st.bytes_held, 230 * 300);

	assert_int_equal(netbuf_release(nb, 1), 0);
	expect_frames(peer, true, 5, 100);
	assert_int_equal(netbuf_release(nb, 2), 0);
	expect_frames(peer, true, 105, 100);
	assert_int_equal(netbuf_release_all(nb), 0);
	expect_frames(peer, true, 205, 30);
	send_frames(&vm, 235, 10); /* passing through until the next seal */
	expect_frames(peer, true, 235, 10);
	seal(&vm, nb, 3);
	send_frames(&vm, 245, 20);
	expect_nothing(peer, true);
	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_released, 240);
	assert_int_equal(st.frames_held, 20);
	assert_int_equal(st.dropped, 0);

	netbuf_close(nb, false);
	assert_true(logged("20 discarded"));
	expect_nothing(peer, true);
	assert_false(iptables_has("ftnetbuf"));
	send_frames(&vm, 265, 10); /* rules gone: traffic flows */
	expect_frames(peer, true, 265, 10);
	close(peer);
	vm_stop(&vm);
}

static void test_nfqueue_bound_and_stale(void **state)
{
	struct netbuf_stats st;
	struct netbuf *nb;
	struct gvm vm;
	uint64_t junk;
	int peer;

	NEED_NET();
	vm_start(&vm, 1000);
	peer = peer_socket();
	/* A VMM that died with the same TAP name left a rule behind. */
	assert_int_equal(sh("iptables -w 10 -I FORWARD -i " TAP " -m comment "
			    "--comment ftnetbuf:" TAP " -j NFQUEUE "
			    "--queue-num 33333"), 0);
	nb = open_nb(NETBUF_NFQUEUE, 16 << 10, &vm);
	assert_true(logged("removed a stale ftnetbuf:" TAP " rule"));
	assert_false(iptables_has("33333"));

	/* 100 frames of 1000 bytes into a 16 KiB bound. */
	send_frames(&vm, 0, 100);
	expect_nothing(peer, true);
	netbuf_get_stats(nb, &st);
	assert_int_equal(st.frames_held, 16);
	assert_int_equal(st.dropped, 100 - 16);
	assert_true(logged("dropping"));
	assert_int_equal(read(netbuf_event_fd(nb), &junk, 8), 8);
	seal(&vm, nb, 1);
	assert_int_equal(netbuf_release(nb, 1), 0);
	expect_frames(peer, true, 0, 16);
	netbuf_close(nb, true);
	assert_false(iptables_has("ftnetbuf"));
	close(peer);
	vm_stop(&vm);
}

/* ---- plug --------------------------------------------------------------- */

static void test_plug_detection(void **state)
{
	struct netbuf_cfg cfg = { .backend = NETBUF_PLUG, .ifname = TAP };
	struct netbuf *nb = NULL;
	char why[256];
	struct gvm vm;

	NEED_NET();
	if (netbuf_available(NETBUF_PLUG, why, sizeof(why)))
		skip(); /* the hold/release test covers it */
	fprintf(stderr, "plug: %s\n", why);
	assert_non_null(strstr(why, "sch_plug"));
	vm_start(&vm, 100);
	assert_int_equal(netbuf_open(&cfg, &kvm_hv_ops, vm.b.d, &nb),
			 -EOPNOTSUPP);
	assert_true(logged(why));
	assert_null(nb);
	assert_int_not_equal(sh("ip link show | grep -q ftnb"), 0);
	vm_stop(&vm);
}

static void test_plug_hold_release(void **state)
{
	struct netbuf *nb;
	char why[256];
	struct gvm vm;
	int peer;

	NEED_NET();
	if (!netbuf_available(NETBUF_PLUG, why, sizeof(why))) {
		fprintf(stderr, "plug: %s\n", why);
		skip();
	}
	vm_start(&vm, 300);
	peer = peer_socket();
	nb = open_nb(NETBUF_PLUG, 0, &vm);
	send_frames(&vm, 0, 100);
	expect_nothing(peer, true);
	seal(&vm, nb, 1);
	send_frames(&vm, 100, 50);
	assert_int_equal(netbuf_release(nb, 1), 0);
	expect_frames(peer, true, 0, 100);
	seal(&vm, nb, 2);
	assert_int_equal(netbuf_release(nb, 2), 0);
	expect_frames(peer, true, 100, 50);
	netbuf_close(nb, true);
	assert_int_not_equal(sh("ip link show | grep -q ftnb"), 0);
	close(peer);
	vm_stop(&vm);
}

static int setup(void **state)
{
	const char *dir = getenv("GUEST_DIR");

	snprintf(image, sizeof(image), "%s/benchguest.elf",
		 dir ? dir : "build/guest");
	logf_ = tmpfile();
	if (!logf_)
		return -1;
	log_set_file(logf_);
	setenv("FT_NETBUF_CHECK", "1", 1); /* full invariant walks */
	return 0;
}

static int teardown(void **state)
{
	log_set_file(NULL);
	fclose(logf_);
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_inproc_hold_release),
		cmocka_unit_test(test_inproc_stall),
		cmocka_unit_test(test_inproc_close),
		cmocka_unit_test(test_nfqueue_hold_release),
		cmocka_unit_test(test_nfqueue_bound_and_stale),
		cmocka_unit_test(test_plug_detection),
		cmocka_unit_test(test_plug_hold_release),
	};

	if (argc == 3 && !strcmp(argv[1], "--available")) {
		enum netbuf_backend b;
		char why[256];

		if (netbuf_backend_parse(argv[2], &b)) {
			fprintf(stderr, "unknown backend %s\n", argv[2]);
			return 2;
		}
		if (!netbuf_available(b, why, sizeof(why))) {
			printf("%s\n", why);
			return 1;
		}
		printf("available\n");
		return 0;
	}
	have_kvm = access("/dev/kvm", R_OK | W_OK) == 0;
	have_net = have_kvm && net_setup();
	if (argc == 2) /* a test name pattern, e.g. from the e2e test */
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, setup, teardown);
}
