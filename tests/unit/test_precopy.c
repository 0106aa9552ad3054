// SPDX-License-Identifier: MIT
/*
 * test_precopy.c - pre-copy live migration (migrate/precopy.c) of a real
 * guest, guest/dirtier, between two in-process micro-VMs over a socketpair:
 *
 *  - a migration while the guest dirties memory succeeds; the destination's
 *    RAM equals the paused source's, holds the dirtier's pattern (one
 *    counter boundary), and the guest runs on there, verifying its memory;
 *  - a receiver that closes the connection mid-stream, one that never
 *    answers, and a stream with one flipped byte each make mig_send fail
 *    and leave the source running (its console advancing); the corrupt
 *    stream is rejected by the receiver with an ERR message;
 *  - the commit: a destination that cannot start the VM after GO answers
 *    ERR and the source resumes; one that goes silent after GO leaves the
 *    source paused and mig_send in doubt (-EINPROGRESS); a sender that
 *    vanishes after READY makes the receiver discard its copy.
 *
 * Needs /dev/kvm; skips with the reason where it is missing.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>
/* cmocka after the standard headers it needs */
#include <cmocka.h>

#include "bench/benchvm.h"
#include "migrate/precopy.h"
#include "migrate/snapshot.h"

#define MEM (128ULL << 20)
#define CMDLINE "--wss 64 --rate 32 --fill random"
#define DIRTIER_ID 0x5eed5eed5eed5eedULL

static char image[512];

static bool have_kvm(void)
{
	return access("/dev/kvm", R_OK | W_OK) == 0;
}

/* Console text of memfd `fd` into buf (NULs made blanks). */
static void read_con(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);

	if (n < 0)
		n = 0;
	for (ssize_t i = 0; i < n; i++)
		if (!buf[i])
			buf[i] = ' ';
	buf[n] = '\0';
}

static unsigned count_ok(const char *text)
{
	unsigned n = 0;

	for (const char *p = text; (p = strstr(p, "verified ok")); p++)
		n++;
	return n;
}

struct source {
	struct bvm vm;
	uint64_t base, pages; /* the working set, in frames */
};

static struct source *start_source(void)
{
	struct source *s = calloc(1, sizeof(*s));
	const char *line;

	assert_non_null(s);
	assert_int_equal(bvm_start(&s->vm, image, MEM, CMDLINE, NULL), 0);
	line = bvm_wait_line(&s->vm, "dirtier: ready", 10);
	assert_non_null(line);
	s->base = (uint64_t)bvm_field(line, "base") / HV_PAGE_SIZE;
	s->pages = (uint64_t)bvm_field(line, "pages");
	assert_int_equal(s->pages, 64 * 256);
	assert_non_null(bvm_wait_line(&s->vm, "dirtier: sweep", 10));
	return s;
}

/* The source is running and its guest still reports verified sweeps. */
static void assert_source_runs(struct source *s)
{
	struct hv_status st;
	unsigned n0;
	uint64_t end = bench_ns() + 5000000000ULL;

	kvm_hv_ops.status(s->vm.d, &st);
	assert_int_equal(st.state, HV_STATE_RUNNING);
	bvm_read_console(&s->vm);
	n0 = count_ok(s->vm.out);
	do {
		usleep(50000);
		bvm_read_console(&s->vm);
	} while (count_ok(s->vm.out) <= n0 && bench_ns() < end);
	assert_true(count_ok(s->vm.out) > n0);
	assert_null(strstr(s->vm.out, "VERIFY FAIL"));
}

static void stop_source(struct source *s)
{
	bvm_stop(&s->vm);
	free(s);
}

/* ---- receivers ---------------------------------------------------------- */

struct rx {
	int fd;   /* owned by the thread */
	int con;  /* the destination's console memfd */
	int mode; /* RX_* */
	int err;
	struct hv_domain *dom;
	char msg[512];
};

enum { RX_MIGRATE, RX_CLOSE_EARLY, RX_NO_ACK, RX_START_FAILS, RX_MUTE_AFTER_GO };

/* The test starts the destination itself, after comparing RAM. */
static int start_later(void *ctx, struct hv_domain *d)
{
	return 0;
}

static int start_fails(void *ctx, struct hv_domain *d)
{
	return -EIO;
}

/* Runs, but the source never hears of it. */
static int start_mute(void *ctx, struct hv_domain *d)
{
	shutdown(*(int *)ctx, SHUT_RDWR);
	return 0;
}

static void *rx_main(void *arg)
{
	struct rx *rx = arg;
	static char buf[1 << 16];
	struct chan *c;
	size_t got = 0;
	ssize_t n;

	switch (rx->mode) {
	case RX_MIGRATE:
	case RX_START_FAILS:
	case RX_MUTE_AFTER_GO: {
		struct kvm_cfg cfg = { .console_fd = rx->con };
		mig_start_fn fn = rx->mode == RX_MIGRATE	 ? start_later
				  : rx->mode == RX_START_FAILS ? start_fails
							       : start_mute;

		rx->err = chan_from_fd(&c, rx->fd, true);
		if (!rx->err) {
			rx->err = mig_recv(&kvm_hv_ops, &cfg, c, 2000, fn,
					   &rx->fd, &rx->dom, rx->msg,
					   sizeof(rx->msg));
			chan_close(c);
		}
		break;
	}
	case RX_CLOSE_EARLY: /* read 4 MiB, then hang up */
		while (got < (4u << 20) &&
		       (n = read(rx->fd, buf, sizeof(buf))) > 0)
			got += (size_t)n;
		close(rx->fd);
		break;
	case RX_NO_ACK: /* read everything, answer nothing */
		while (read(rx->fd, buf, sizeof(buf)) > 0)
			;
		close(rx->fd);
		break;
	}
	return NULL;
}

/* Relay between the sender's socket `a` and the receiver's `b`, flipping
 * the byte at stream offset `flip`; keeps what b sent back in reply[]. */
struct relay {
	int a, b;
	uint64_t flip;
	unsigned char reply[64];
	size_t reply_len;
};

static bool write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static void relay_keep(struct relay *r, const void *buf, size_t n)
{
	if (n > sizeof(r->reply) - r->reply_len)
		n = sizeof(r->reply) - r->reply_len;
	memcpy(r->reply + r->reply_len, buf, n);
	r->reply_len += n;
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	static char buf[1 << 16];
	uint64_t off = 0;
	ssize_t n;

	for (;;) {
		struct pollfd pf[2] = { { .fd = r->a, .events = POLLIN },
					{ .fd = r->b, .events = POLLIN } };

		if (poll(pf, 2, -1) < 0)
			break;
		if (pf[0].revents) {
			n = read(r->a, buf, sizeof(buf));
			if (n <= 0)
				break;
			if (r->flip >= off && r->flip < off + (uint64_t)n)
				buf[r->flip - off] ^= 0x40;
			off += (uint64_t)n;
			if (!write_all(r->b, buf, (size_t)n))
				break;
		}
		if (pf[1].revents) {
			n = read(r->b, buf, sizeof(buf));
			if (n <= 0)
				break;
			relay_keep(r, buf, (size_t)n);
			if (!write_all(r->a, buf, (size_t)n))
				break;
		}
	}
	/* Let the receiver see the end, collect its last words. */
	shutdown(r->b, SHUT_WR);
	while ((n = read(r->b, buf, sizeof(buf))) > 0) {
		relay_keep(r, buf, (size_t)n);
		write_all(r->a, buf, (size_t)n);
	}
	close(r->a);
	close(r->b);
	return NULL;
}

/* ---- tests -------------------------------------------------------------- */

static void params(struct mig_params *p)
{
	mig_params_init(p);
	p->start_rate = 256ULL << 20;
	p->max_rate = 256ULL << 20;
	p->timeout_ms = 2000;
}

/*
 * Migrate s's VM to a receiver thread in rx->mode over a socketpair, with
 * parameters `p`; return mig_send's result.  The sender's end is closed
 * before the receiver is joined (that ends a receiver that drains).
 */
static int send_to(struct source *s, struct rx *rx, const struct mig_params *p,
		   struct mig_stats *st)
{
	struct chan *c;
	pthread_t t;
	int sv[2], err;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	rx->fd = sv[1];
	assert_int_equal(pthread_create(&t, NULL, rx_main, rx), 0);
	assert_int_equal(chan_from_fd(&c, sv[0], false), 0);
	err = mig_send(&kvm_hv_ops, s->vm.d, c, p, st);
	chan_close(c);
	close(sv[0]);
	pthread_join(t, NULL);
	return err;
}

/* Destination RAM == source RAM; the dirtier's pattern holds. */
static void check_ram(struct hv_domain *src, struct hv_domain *dst,
		      const struct source *s)
{
	uint64_t pfn, diff = 0, boundary = 0, c0 = 0, bad = 0;
	void *a, *b;

	for (pfn = 0; pfn < MEM / HV_PAGE_SIZE; pfn++) {
		assert_int_equal(kvm_hv_ops.map(src, &pfn, 1, &a), 0);
		assert_int_equal(kvm_hv_ops.map(dst, &pfn, 1, &b), 0);
		if (memcmp(a, b, HV_PAGE_SIZE)) {
			if (diff++ < 5)
				print_message("page 0x%llx differs\n",
					      (unsigned long long)pfn);
		}
		if (pfn >= s->base && pfn < s->base + s->pages) {
			const uint64_t *w = b;
			uint64_t p = pfn - s->base;

			if (w[1] != (p ^ DIRTIER_ID))
				bad++;
			if (p == 0)
				c0 = w[0];
			else if (!boundary && w[0] == c0 - 1)
				boundary = p; /* [0, p) hold c0 = c + 1 */
			else if (w[0] != (boundary ? c0 - 1 : c0))
				bad++;
		}
		kvm_hv_ops.unmap(src, &a, 1);
		kvm_hv_ops.unmap(dst, &b, 1);
	}
	print_message("# ram: %llu pages differ; counter %llu boundary %llu;"
		      " %llu pattern errors\n",
		      (unsigned long long)diff, (unsigned long long)c0,
		      (unsigned long long)(boundary ? boundary : s->pages),
		      (unsigned long long)bad);
	assert_int_equal(diff, 0);
	assert_int_equal(bad, 0);
	assert_true(c0 > 0);
}

static void test_migrate(void **state)
{
	struct source *s = start_source();
	struct rx rx = { .mode = RX_MIGRATE };
	struct mig_params p;
	struct mig_stats st;
	static char con[BVM_CONSOLE_MAX];
	struct hv_status hs;
	uint64_t end;

	rx.con = memfd_create("dst-console", MFD_CLOEXEC);
	assert_true(rx.con >= 0);
	params(&p);
	p.downtime_ns = 2000000; /* below round 0's remainder: >= 2 rounds */
	assert_int_equal(send_to(s, &rx, &p, &st), 0);
	assert_int_equal(rx.err, 0);
	print_message("# migrated: %u live rounds (pages:", st.rounds);
	for (unsigned i = 0; i < st.rounds; i++)
		print_message(" %llu", (unsigned long long)st.round[i].pages);
	print_message("), final %llu pages, %.1f MiB, downtime %.2f ms, "
		      "stop-and-copy %.2f ms, total %.0f ms, link %llu MiB/s\n",
		      (unsigned long long)st.final_pages,
		      (double)st.bytes / (1 << 20), st.downtime_ns / 1e6,
		      st.stop_copy_ns / 1e6, st.total_ns / 1e6,
		      (unsigned long long)st.link_rate >> 20);
	assert_true(st.rounds >= 2);
	assert_int_equal(st.decision, MIG_STOP_AND_COPY);

	check_ram(s->vm.d, rx.dom, s);
	stop_source(s);

	assert_int_equal(kvm_hv_ops.unpause(rx.dom), 0);
	end = bench_ns() + 10000000000ULL;
	do {
		usleep(50000);
		read_con(rx.con, con, sizeof(con));
	} while (count_ok(con) < 1 && bench_ns() < end);
	usleep(1000000);
	read_con(rx.con, con, sizeof(con));
	kvm_hv_ops.status(rx.dom, &hs);
	print_message("# destination console:\n%s", con);
	assert_int_equal(hs.state, HV_STATE_RUNNING);
	assert_true(count_ok(con) >= 1);
	assert_null(strstr(con, "VERIFY FAIL"));
	kvm_hv_ops.destroy(rx.dom);
	close(rx.con);
}

/* mig_send against a receiver of `mode`; expects failure `want`. */
static void failing_receiver(int mode, int want)
{
	struct source *s = start_source();
	struct rx rx = { .mode = mode, .con = -1 };
	struct mig_params p;
	int err;

	params(&p);
	p.timeout_ms = 500;
	err = send_to(s, &rx, &p, NULL);
	if (want)
		assert_int_equal(err, want);
	else
		assert_true(err < 0);
	assert_source_runs(s);
	stop_source(s);
}

static void test_receiver_hangs_up(void **state)
{
	failing_receiver(RX_CLOSE_EARLY, 0); /* -EPIPE or -ECONNRESET */
}

static void test_no_verdict(void **state)
{
	failing_receiver(RX_NO_ACK, -ETIMEDOUT);
}

static void test_corrupt_byte(void **state)
{
	struct source *s = start_source();
	struct rx rx = { .mode = RX_MIGRATE };
	struct relay rl = { .flip = (8u << 20) + 12345 };
	struct mig_params p;
	struct mig_msg rep;
	struct chan *c;
	pthread_t t, tr;
	int sa[2], sb[2], err;

	rx.con = memfd_create("dst-console", MFD_CLOEXEC);
	assert_true(rx.con >= 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa),
			 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sb),
			 0);
	rl.a = sa[1];
	rl.b = sb[0];
	rx.fd = sb[1];
	assert_int_equal(pthread_create(&tr, NULL, relay_main, &rl), 0);
	assert_int_equal(pthread_create(&t, NULL, rx_main, &rx), 0);
	assert_int_equal(chan_from_fd(&c, sa[0], false), 0);
	params(&p);
	err = mig_send(&kvm_hv_ops, s->vm.d, c, &p, NULL);
	chan_close(c);
	close(sa[0]);
	pthread_join(t, NULL);
	pthread_join(tr, NULL);
	close(rx.con);
	assert_true(err < 0);
	assert_int_equal(rx.err, -EBADMSG); /* record checksum */
	assert_null(rx.dom);
	assert_true(rl.reply_len > sizeof(rep));
	memcpy(&rep, rl.reply, sizeof(rep));
	assert_memory_equal(rep.magic, MIG_MSG_ERR, 8);
	assert_int_equal(rep.err, EBADMSG);
	print_message("# receiver: %s\n", rx.msg);
	assert_non_null(strstr(rx.msg, "checksum"));
	assert_source_runs(s);
	stop_source(s);
}

/* A destination that cannot start the VM after GO: ERR, source resumes. */
static void test_start_fails(void **state)
{
	struct source *s = start_source();
	struct rx rx = { .mode = RX_START_FAILS };
	struct mig_params p;
	struct mig_stats st;
	int err;

	rx.con = memfd_create("dst-console", MFD_CLOEXEC);
	params(&p);
	err = send_to(s, &rx, &p, &st);
	close(rx.con);
	print_message("# sender: %s\n", st.error);
	assert_int_equal(err, -EIO);
	assert_int_equal(rx.err, -EIO);
	assert_null(rx.dom);
	assert_non_null(strstr(st.error, "after the go"));
	assert_source_runs(s);
	stop_source(s);
}

/* Silence after GO: in doubt, the source stays paused. */
static void test_in_doubt(void **state)
{
	struct source *s = start_source();
	struct rx rx = { .mode = RX_MUTE_AFTER_GO };
	struct mig_params p;
	struct mig_stats st;
	struct hv_status hs;
	int err;

	rx.con = memfd_create("dst-console", MFD_CLOEXEC);
	params(&p);
	err = send_to(s, &rx, &p, &st);
	print_message("# sender: %s\n", st.error);
	assert_int_equal(err, -EINPROGRESS);
	assert_int_equal(rx.err, 0); /* it runs there */
	assert_non_null(rx.dom);
	kvm_hv_ops.status(s->vm.d, &hs);
	assert_int_equal(hs.state, HV_STATE_PAUSED);
	kvm_hv_ops.destroy(rx.dom);
	close(rx.con);
	/* The owner resolves it (here: resume the source) */
	assert_int_equal(kvm_hv_ops.unpause(s->vm.d), 0);
	usleep(100000); /* let the vCPU thread leave its park */
	assert_source_runs(s);
	stop_source(s);
}

/* A sender that vanishes after READY: the receiver discards its copy. */
static void test_no_go(void **state)
{
	struct source *s = start_source();
	struct rx rx = { .mode = RX_MIGRATE };
	struct chan *c, *mem;
	struct snap_stats ss;
	const void *data;
	pthread_t t;
	size_t len;
	int sv[2];
	char buf[64];

	rx.con = memfd_create("dst-console", MFD_CLOEXEC);
	assert_int_equal(chan_open_mem(&mem, NULL, 0, 1ULL << 30), 0);
	assert_int_equal(kvm_hv_ops.pause(s->vm.d), 0);
	assert_int_equal(snap_save(&kvm_hv_ops, s->vm.d, mem, &ss), 0);
	assert_int_equal(kvm_hv_ops.unpause(s->vm.d), 0);
	data = chan_mem_data(mem, &len);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	rx.fd = sv[1];
	assert_int_equal(pthread_create(&t, NULL, rx_main, &rx), 0);
	assert_int_equal(chan_from_fd(&c, sv[0], false), 0);
	assert_int_equal(chan_write(c, data, len), 0);
	/* READY arrives; never answer it, then hang up */
	assert_int_equal(chan_read(c, buf, sizeof(struct mig_msg)), 0);
	assert_memory_equal(buf, MIG_MSG_READY, 8);
	pthread_join(t, NULL);
	chan_close(c);
	chan_close(mem);
	close(sv[0]);
	close(rx.con);
	print_message("# receiver: %s\n", rx.msg);
	assert_int_equal(rx.err, -ETIMEDOUT);
	assert_null(rx.dom);
	assert_non_null(strstr(rx.msg, "never gave the go"));
	stop_source(s);
}

static int setup(void **state)
{
	const char *dir = getenv("GUEST_DIR");

	snprintf(image, sizeof(image), "%s/dirtier.elf",
		 dir ? dir : "build/guest");
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_migrate),
		cmocka_unit_test(test_receiver_hangs_up),
		cmocka_unit_test(test_no_verdict),
		cmocka_unit_test(test_corrupt_byte),
		cmocka_unit_test(test_start_fails),
		cmocka_unit_test(test_in_doubt),
		cmocka_unit_test(test_no_go),
	};

	if (!have_kvm()) {
		printf("1..0 # SKIP /dev/kvm not available\n");
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, NULL);
}
