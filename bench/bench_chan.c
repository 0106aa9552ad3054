// SPDX-License-Identifier: MIT
/*
 * bench_chan.c - TLS 1.3 and plain TCP channel throughput over loopback.
 *
 *   build/bench/bench_chan [MiB]      (default: 1024 MiB; run from the
 *                                      source tree: it calls tools/ft-certs)
 *
 * Sends MiB in 1 MiB writes from a client to a server thread that reads
 * them in 1 MiB pieces, once over TLS and once over plain TCP, and prints
 * GB/s (10^9 bytes per second) for each and their ratio.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chan_net.h"
#include "log.h"

#define PIECE (1u << 20)

struct srv {
	int lfd;
	const struct chan_tls_cfg *cfg;
	size_t total;
	int rc;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	char *buf = malloc(PIECE);
	struct chan *c;

	s->rc = buf ? chan_net_accept(s->lfd, s->cfg, 10000, &c) : -1;
	if (s->rc) {
		free(buf);
		return NULL;
	}
	for (size_t got = 0; got < s->total && !s->rc; got += PIECE)
		s->rc = chan_read(c, buf, PIECE);
	if (!s->rc)
		s->rc = chan_write(c, "k", 1); /* all arrived */
	chan_close(c);
	free(buf);
	return NULL;
}

/* GB/s for `mib` MiB over `cfg`, or a negative value on failure. */
static double run(const struct chan_tls_cfg *scfg,
		  const struct chan_tls_cfg *ccfg, size_t mib)
{
	struct srv s = {.cfg = scfg, .total = mib * PIECE};
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	char addr[32], k;
	char *buf = malloc(PIECE);
	struct chan *c;
	pthread_t th;
	double t0, t;
	int err;

	if (!buf || chan_net_listen("127.0.0.1:0", &s.lfd))
		return -1;
	getsockname(s.lfd, (struct sockaddr *)&sin, &sl);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	memset(buf, 0x5a, PIECE);
	pthread_create(&th, NULL, srv_main, &s);
	err = chan_net_connect(addr, ccfg, 10000, &c);
	t0 = now();
	for (size_t i = 0; i < mib && !err; i++)
		err = chan_write(c, buf, PIECE);
	if (!err)
		err = chan_read(c, &k, 1);
	t = now() - t0;
	if (!err || c)
		chan_close(c);
	pthread_join(th, NULL);
	close(s.lfd);
	free(buf);
	if (err || s.rc)
		return -1;
	return (double)mib * PIECE / t / 1e9;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	char dir[] = "/tmp/bench_chan.XXXXXX", cmd[256];
	char ca[64], scrt[64], skey[64], ccrt[64], ckey[64];
	struct chan_tls_cfg plain = {.insecure = true}, stls, ctls;
	double g_tls, g_tcp;

	signal(SIGPIPE, SIG_IGN);
	log_set_prog("bench_chan");
	if (!mib || !mkdtemp(dir)) {
		fprintf(stderr, "usage: bench_chan [MiB]\n");
		return 2;
	}
	snprintf(cmd, sizeof(cmd),
		 "(tools/ft-certs init %s && tools/ft-certs host %s srv && "
		 "tools/ft-certs host %s cli) >/dev/null",
		 dir, dir, dir);
	if (system(cmd)) {
		fprintf(stderr, "bench_chan: tools/ft-certs failed (run from "
				"the source tree; needs openssl)\n");
		rmdir(dir);
		return 1;
	}
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	snprintf(scrt, sizeof(scrt), "%s/srv.crt", dir);
	snprintf(skey, sizeof(skey), "%s/srv.key", dir);
	snprintf(ccrt, sizeof(ccrt), "%s/cli.crt", dir);
	snprintf(ckey, sizeof(ckey), "%s/cli.key", dir);
	stls = (struct chan_tls_cfg){.ca_file = ca,
				     .cert_file = scrt,
				     .key_file = skey,
				     .peer_name = "cli"};
	ctls = (struct chan_tls_cfg){.ca_file = ca,
				     .cert_file = ccrt,
				     .key_file = ckey,
				     .peer_name = "srv"};

	log_set_level(LOG_ERR); /* no "insecure" warnings in the output */
	g_tls = run(&stls, &ctls, mib);
	g_tcp = run(&plain, &plain, mib);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd))
		fprintf(stderr, "bench_chan: cannot remove %s\n", dir);
	if (g_tls < 0 || g_tcp < 0) {
		fprintf(stderr, "bench_chan: a run failed\n");
		return 1;
	}
	printf("%zu MiB in 1 MiB writes over loopback:\n", mib);
	printf("  tls 1.3: %6.2f GB/s\n", g_tls);
	printf("  tcp:     %6.2f GB/s\n", g_tcp);
	printf("  tls/tcp: %6.2f\n", g_tls / g_tcp);
	return 0;
}
