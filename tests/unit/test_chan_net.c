// SPDX-License-Identifier: MIT
/*
 * test_chan_net.c - TCP/TLS channels over 127.0.0.1: a 32 MiB TLS round
 * trip, every refusal the issue names (wrong CA both ways, expired server
 * and client certificates, no client certificate, hostname mismatch,
 * plain TCP against TLS both ways) with its message, insecure mode,
 * connection refused and connect timeout.  Certificates come from
 * tools/ft-certs in a temporary directory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "chan_net.h"
#include "channel.h"
#include "log.h"

#define BIG (32u << 20)

static char dir[64];
static bool have_certs;
static FILE *logf_;

/* ---- helpers ---- */

struct cfgbuf {
	char ca[128], crt[128], key[128];
	struct chan_tls_cfg cfg;
};

/* TLS config trusting `ca` ("ca" or "ca2"), with the certificate `name`
 * from CA directory `cadir` (NULL: none), expecting `peer`. */
static struct chan_tls_cfg *mkcfg(struct cfgbuf *b, const char *ca,
				  const char *cadir, const char *name,
				  const char *peer)
{
	memset(b, 0, sizeof(*b));
	snprintf(b->ca, sizeof(b->ca), "%s/%s/ca.crt", dir, ca);
	b->cfg.ca_file = b->ca;
	if (name) {
		snprintf(b->crt, sizeof(b->crt), "%s/%s/%s.crt", dir, cadir,
			 name);
		snprintf(b->key, sizeof(b->key), "%s/%s/%s.key", dir, cadir,
			 name);
		b->cfg.cert_file = b->crt;
		b->cfg.key_file = b->key;
	}
	b->cfg.peer_name = peer;
	return &b->cfg;
}

static const struct chan_tls_cfg insecure = {.insecure = true};

/* Whether the log since the test began holds `s`. */
static bool logged(const char *s)
{
	static char buf[1 << 16];
	size_t n;

	fflush(logf_);
	rewind(logf_);
	n = fread(buf, 1, sizeof(buf) - 1, logf_);
	buf[n] = '\0';
	fseek(logf_, 0, SEEK_END);
	if (!strstr(buf, s))
		fprintf(stderr, "log lacks '%s'; log:\n%s", s, buf);
	return strstr(buf, s) != NULL;
}

static long long ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fill(unsigned char *p, size_t n, uint32_t seed)
{
	uint32_t x = seed;

	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (unsigned char)(x >> 16);
	}
}

enum srv_mode { SRV_HOLD, SRV_ECHO, SRV_PLAIN_REPLY };

struct srv {
	int lfd;
	const struct chan_tls_cfg *cfg;
	enum srv_mode mode;
	int timeout_ms;
	size_t len;
	int rc;
	pthread_t th;
	char addr[32];
};

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	struct chan *c;
	char b[64];

	s->rc = chan_net_accept(s->lfd, s->cfg, s->timeout_ms, &c);
	if (s->rc)
		return NULL;
	if (s->mode == SRV_ECHO) {
		unsigned char *buf = malloc(s->len);

		if (!buf || chan_read(c, buf, s->len) ||
		    chan_write(c, buf, s->len))
			s->rc = -EIO;
		free(buf);
	} else if (s->mode == SRV_PLAIN_REPLY) {
		static const char msg[] =
			"this is plain text, not TLS at all\n";

		chan_read_upto(c, b, 16);
		chan_write(c, msg, sizeof(msg) - 1);
	} else {
		/* Hold the connection until the client closes it. */
		while (chan_read_upto(c, b, sizeof(b)) > 0)
			;
	}
	chan_close(c);
	return NULL;
}

/* Handshake timeout of the next server. */
static int srv_timeout = 5000;

static void srv_start(struct srv *s, const struct chan_tls_cfg *cfg,
		      enum srv_mode mode, size_t len)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	memset(s, 0, sizeof(*s));
	s->cfg = cfg;
	s->mode = mode;
	s->len = len;
	s->timeout_ms = srv_timeout;
	assert_int_equal(chan_net_listen("127.0.0.1:0", &s->lfd), 0);
	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sin, &sl), 0);
	snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static int srv_join(struct srv *s)
{
	pthread_join(s->th, NULL);
	close(s->lfd);
	return s->rc;
}

/* Connect with `cfg` to a server with `scfg`; both must fail: the
 * client with `cerr` and `cmsg`, the server with `serr` and `smsg`. */
static void refused(const struct chan_tls_cfg *scfg,
		    const struct chan_tls_cfg *cfg, int cerr, const char *cmsg,
		    int serr, const char *smsg)
{
	struct chan *c = NULL;
	struct srv s;

	srv_start(&s, scfg, SRV_HOLD, 0);
	assert_int_equal(chan_net_connect(s.addr, cfg, 5000, &c), cerr);
	assert_null(c);
	assert_int_equal(srv_join(&s), serr);
	assert_true(logged(cmsg));
	assert_true(logged(smsg));
}

/* ---- tests ---- */

static void test_tls_roundtrip(void **state)
{
	struct cfgbuf sb, cb;
	unsigned char *out, *in;
	struct chan *c;
	struct srv s;
	size_t pos = 0;
	static const size_t sizes[] = {1 << 20, 4096, 17,    256 << 10,
				       65536,	3,    300000};

	if (!have_certs)
		skip();
	out = malloc(BIG);
	in = malloc(BIG);
	assert_non_null(out);
	assert_non_null(in);
	fill(out, BIG, 42);
	srv_start(&s, mkcfg(&sb, "ca", "ca", "server", "client"), SRV_ECHO,
		  BIG);
	assert_int_equal(
		chan_net_connect(s.addr,
				 mkcfg(&cb, "ca", "ca", "client", "server"),
				 5000, &c),
		0);
	assert_int_equal(strncmp(c->name, "tls 127.0.0.1:", 14), 0);
	/* Gather writes of mixed sizes, 16 iovecs at a time. */
	for (int k = 0; pos < BIG; k++) {
		struct iovec iov[16];
		int n = 0;

		for (; n < 16 && pos < BIG; n++) {
			size_t l = sizes[(size_t)(k + n) % 7];

			if (l > BIG - pos)
				l = BIG - pos;
			iov[n].iov_base = out + pos;
			iov[n].iov_len = l;
			pos += l;
		}
		assert_int_equal(chan_writev(c, iov, n), 0);
	}
	assert_int_equal(chan_read(c, in, BIG), 0);
	assert_int_equal(c->bytes_out, BIG);
	assert_int_equal(c->bytes_in, BIG);
	assert_memory_equal(in, out, BIG);
	assert_int_equal(chan_close(c), 0);
	assert_int_equal(srv_join(&s), 0);

	/* An IP address as the peer name matches the SAN's IP entry. */
	srv_start(&s, mkcfg(&sb, "ca", "ca", "server", NULL), SRV_ECHO, 5);
	assert_int_equal(
		chan_net_connect(s.addr,
				 mkcfg(&cb, "ca", "ca", "client", "127.0.0.1"),
				 5000, &c),
		0);
	assert_int_equal(chan_write(c, "hello", 5), 0);
	assert_int_equal(chan_read(c, in, 5), 0);
	assert_memory_equal(in, "hello", 5);
	/* The server closes after the echo: the end of the stream. */
	assert_int_equal(chan_read_upto(c, in, 1), 0);
	assert_int_equal(chan_close(c), 0);
	assert_int_equal(srv_join(&s), 0);
	free(out);
	free(in);
}

static void test_wrong_ca(void **state)
{
	struct cfgbuf sb, cb;

	if (!have_certs)
		skip();
	/* A client certificate from another CA. */
	refused(mkcfg(&sb, "ca", "ca", "server", NULL),
		mkcfg(&cb, "ca", "ca2", "rogue", "server"), -EACCES,
		"peer refused our certificate: unknown CA", -EACCES,
		"peer certificate verify failed: unknown CA");
	/* A server certificate from another CA. */
	refused(mkcfg(&sb, "ca", "ca2", "rogue", NULL),
		mkcfg(&cb, "ca", "ca", "client", NULL), -EACCES,
		"peer certificate verify failed: unknown CA", -EACCES,
		"peer refused our certificate: unknown CA");
}

static void test_expired_server(void **state)
{
	struct cfgbuf sb, cb;

	if (!have_certs)
		skip();
	refused(mkcfg(&sb, "ca", "ca", "oldserver", NULL),
		mkcfg(&cb, "ca", "ca", "client", NULL), -EACCES,
		"certificate verify failed: certificate has expired", -EACCES,
		"peer refused our certificate: certificate has expired");
}

static void test_expired_client(void **state)
{
	struct cfgbuf sb, cb;

	if (!have_certs)
		skip();
	refused(mkcfg(&sb, "ca", "ca", "server", NULL),
		mkcfg(&cb, "ca", "ca", "oldclient", NULL), -EACCES,
		"peer refused our certificate: certificate has expired",
		-EACCES, "certificate verify failed: certificate has expired");
}

static void test_no_client_cert(void **state)
{
	struct cfgbuf sb, cb;

	if (!have_certs)
		skip();
	refused(mkcfg(&sb, "ca", "ca", "server", NULL),
		mkcfg(&cb, "ca", NULL, NULL, "server"), -EACCES,
		"peer requires a certificate", -EACCES,
		"peer sent no certificate");
}

static void test_hostname_mismatch(void **state)
{
	struct cfgbuf sb, cb;

	if (!have_certs)
		skip();
	refused(mkcfg(&sb, "ca", "ca", "server", NULL),
		mkcfg(&cb, "ca", "ca", "client", "other"), -EACCES,
		"certificate verify failed: hostname mismatch", -EACCES,
		"peer refused our certificate");
}

static void test_plain_client_to_tls(void **state)
{
	static const char hello[] = "hello, I speak plain TCP only\n";
	struct cfgbuf sb;
	struct chan *c;
	struct srv s;
	long long t0;
	char b[4];

	if (!have_certs)
		skip();
	/* A plain client that talks: refused at once. */
	srv_start(&s, mkcfg(&sb, "ca", "ca", "server", NULL), SRV_HOLD, 0);
	t0 = ms();
	assert_int_equal(chan_net_connect(s.addr, &insecure, 5000, &c), 0);
	assert_int_equal(chan_write(c, hello, sizeof(hello) - 1), 0);
	assert_int_equal(srv_join(&s), -EPROTO);
	assert_true(ms() - t0 < 2000);
	assert_true(logged("peer is not speaking TLS (plain TCP?)"));
	assert_true(chan_read_upto(c, b, sizeof(b)) <= 0);
	chan_close(c);

	/* A plain client that waits for the server: the handshake times
	 * out instead of hanging. */
	srv_timeout = 300;
	srv_start(&s, mkcfg(&sb, "ca", "ca", "server", NULL), SRV_HOLD, 0);
	srv_timeout = 5000;
	assert_int_equal(chan_net_connect(s.addr, &insecure, 5000, &c), 0);
	t0 = ms();
	assert_int_equal(srv_join(&s), -ETIMEDOUT);
	assert_true(ms() - t0 < 3000);
	assert_true(logged("TLS handshake timed out"));
	chan_close(c);
}

static void test_tls_client_to_plain(void **state)
{
	struct cfgbuf cb;
	struct chan *c = NULL;
	struct srv s;

	if (!have_certs)
		skip();
	srv_start(&s, &insecure, SRV_PLAIN_REPLY, 0);
	assert_int_equal(
		chan_net_connect(s.addr,
				 mkcfg(&cb, "ca", "ca", "client", "server"),
				 5000, &c),
		-EPROTO);
	assert_null(c);
	assert_int_equal(srv_join(&s), 0);
	assert_true(logged("peer is not speaking TLS (plain TCP?)"));
}

static void test_insecure_roundtrip(void **state)
{
	size_t n = 3 << 20;
	unsigned char *out = malloc(n), *in = malloc(n);
	struct chan *c;
	struct srv s;

	assert_non_null(out);
	assert_non_null(in);
	fill(out, n, 7);
	srv_start(&s, &insecure, SRV_ECHO, n);
	assert_int_equal(chan_net_connect(s.addr, &insecure, 5000, &c), 0);
	assert_int_equal(strncmp(c->name, "tcp 127.0.0.1:", 14), 0);
	assert_int_equal(chan_write(c, out, n), 0);
	assert_int_equal(chan_read(c, in, n), 0);
	assert_memory_equal(in, out, n);
	assert_int_equal(chan_close(c), 0);
	assert_int_equal(srv_join(&s), 0);
	assert_true(logged("insecure: no TLS, no authentication"));
	free(out);
	free(in);
}

static void test_refused_fast(void **state)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	struct chan *c;
	char addr[32];
	long long t0;
	int fd;

	/* A port that was free a moment ago and has no listener. */
	assert_int_equal(chan_net_listen("127.0.0.1:0", &fd), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	close(fd);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	t0 = ms();
	assert_int_equal(chan_net_connect(addr, &insecure, 5000, &c),
			 -ECONNREFUSED);
	assert_true(ms() - t0 < 1000);
	assert_true(logged("Connection refused"));
}

static void test_connect_timeout(void **state)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	int lfd, cl[64], ncl = 0;
	struct chan *c;
	char addr[32];
	long long t0;
	bool full = false;

	/* A listener that never accepts, with its queue filled: further
	 * SYNs are dropped and a connect can only time out. */
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(lfd, 0), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
	while (ncl < 64 && !full) {
		struct pollfd p = {.events = POLLOUT};
		int fd = socket(AF_INET,
				SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

		assert_true(fd >= 0);
		cl[ncl++] = fd;
		connect(fd, (struct sockaddr *)&sin, sizeof(sin));
		p.fd = fd;
		full = poll(&p, 1, 200) == 0;
	}
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	if (full) {
		t0 = ms();
		assert_int_equal(chan_net_connect(addr, &insecure, 300, &c),
				 -ETIMEDOUT);
		assert_true(ms() - t0 >= 250 && ms() - t0 < 2000);
		assert_true(logged("timed out"));
	}
	while (ncl)
		close(cl[--ncl]);
	close(lfd);
	if (!full)
		skip(); /* the kernel never dropped a SYN */
}

static void test_bad_config(void **state)
{
	struct chan_tls_cfg none = {0};
	struct chan_tls_cfg half = {.ca_file = "/nonexistent/ca.crt"};
	struct chan *c;
	int fd;

	/* TLS without its files is refused, never downgraded. */
	assert_int_equal(chan_net_connect("127.0.0.1:1", &none, 100, &c),
			 -EINVAL);
	assert_int_equal(chan_net_connect("127.0.0.1:1", NULL, 100, &c),
			 -EINVAL);
	assert_int_equal(chan_net_accept(-1, &half, 100, &c), -EINVAL);
	assert_int_equal(chan_net_connect("127.0.0.1", &insecure, 100, &c),
			 -EINVAL);
	assert_int_equal(chan_net_connect("::1:80", &insecure, 100, &c),
			 -EINVAL);
	assert_int_equal(chan_net_connect(":80", &insecure, 100, &c), -EINVAL);
	assert_int_equal(
		chan_net_connect("127.0.0.1:99999", &insecure, 100, &c),
		-EINVAL);
	assert_int_equal(chan_net_listen("[::1", &fd), -EINVAL);
	assert_int_equal(chan_net_listen("127.0.0.1:x", &fd), -EINVAL);
	assert_true(logged("plain TCP only with insecure"));
}

/* ---- fixtures ---- */

static int run(const char *cmd)
{
	char full[512];

	snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
	return system(full);
}

static int group_setup(void **state)
{
	static const char *const steps[] = {
		"init %s/ca",
		"host %s/ca server 127.0.0.1",
		"host %s/ca client",
		"expired %s/ca oldserver 127.0.0.1",
		"expired %s/ca oldclient",
		"init %s/ca2",
		"host %s/ca2 rogue 127.0.0.1",
	};
	char cmd[400];

	signal(SIGPIPE, SIG_IGN);
	strcpy(dir, "/tmp/test_chan_net.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	if (access("tools/ft-certs", X_OK) != 0) {
		fprintf(stderr, "SKIP TLS cases: tools/ft-certs not found "
				"(run from the source tree)\n");
		return 0;
	}
	if (run("command -v openssl")) {
		fprintf(stderr, "SKIP TLS cases: the openssl command is "
				"missing (apt-get install openssl)\n");
		return 0;
	}
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		char arg[300];

		snprintf(arg, sizeof(arg), steps[i], dir);
		snprintf(cmd, sizeof(cmd), "tools/ft-certs %s", arg);
		if (run(cmd)) {
			fprintf(stderr, "setup: '%s' failed\n", cmd);
			return -1;
		}
	}
	have_certs = true;
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return run(cmd) ? -1 : 0;
}

static int setup(void **state)
{
	logf_ = tmpfile();
	if (!logf_)
		return -1;
	log_set_file(logf_);
	return 0;
}

static int teardown(void **state)
{
	log_set_file(NULL);
	fclose(logf_);
	return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_tls_roundtrip),	     T(test_wrong_ca),
		T(test_expired_server),	     T(test_expired_client),
		T(test_no_client_cert),	     T(test_hostname_mismatch),
		T(test_plain_client_to_tls), T(test_tls_client_to_plain),
		T(test_insecure_roundtrip),  T(test_refused_fast),
		T(test_connect_timeout),     T(test_bad_config),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
