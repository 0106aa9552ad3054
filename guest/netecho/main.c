// SPDX-License-Identifier: MIT
/*
 * netecho - network services over the guest stack (guest/net), for the
 * networking tests:
 *
 *   UDP 7    echo: every datagram goes back to its sender
 *   TCP 7    echo: every byte goes back, until the client closes
 *   TCP 9    discard: bytes are counted and dropped; when the client
 *            closes, the count is printed and the connection closed
 *
 *   netecho [MAXCONNS]   TCP connection pool size (1..256; default: as
 *                        many as half the heap holds, at most 256)
 *
 * Output lines (exact formats, parsed by tests):
 *   netecho: up mac=<mac> ip=<a.b.c.d> conns=<N>
 *   netecho: discard peer=<a.b.c.d>:<port> bytes=<N> reason=<R>
 *   netecho: error <what> <-errno>
 * reason is the closed() reason: 0, or a negative errno.  A VM without a
 * NIC or an IPv4 address exits with status 1.
 */
#include "ft.h"
#include "gnet_ft.h"

#define MAX_ERRORS 10 /* lines; a persistent error must not flood */

static struct gnet net;
static unsigned int n_errors;

struct discard {
	bool used;
	uint64_t bytes;
};

static void error(const char *what, int err)
{
	if (n_errors++ < MAX_ERRORS)
		printf("netecho: error %s %d\n", what, err);
}

static void print_ip(const char *prefix, uint32_t ip)
{
	const uint8_t *b = (const uint8_t *)&ip;

	printf("%s%u.%u.%u.%u", prefix, b[0], b[1], b[2], b[3]);
}

/* ---- UDP echo --------------------------------------------------------- */

static void udp_echo(void *ctx, uint32_t src_ip, uint16_t src_port,
		     const void *data, size_t len)
{
	int err = gnet_udp_send(ctx, src_ip, src_port, 7, data, len);

	if (err)
		error("udp send", err);
}

/* ---- TCP echo --------------------------------------------------------- */

/* Move as much as the send buffer takes; close after the client did. */
static void echo_pump(struct gnet_conn *c)
{
	uint8_t buf[2048];

	for (;;) {
		size_t n = gnet_tcp_readable(c), space = gnet_tcp_send_space(c);

		n = n < space ? n : space;
		n = n < sizeof(buf) ? n : sizeof(buf);
		if (!n)
			break;
		n = gnet_tcp_read(c, buf, n);
		gnet_tcp_send(c, buf, n);
	}
	if (gnet_tcp_eof(c))
		gnet_tcp_close(c);
}

static void echo_accepted(void *ctx, struct gnet_conn *c)
{
	(void)ctx;
	(void)c;
}

static void echo_event(void *ctx, struct gnet_conn *c)
{
	(void)ctx;
	echo_pump(c);
}

static void echo_closed(void *ctx, struct gnet_conn *c, int reason)
{
	(void)ctx;
	(void)c;
	(void)reason;
}

static const struct gnet_tcp_cb echo_cb = {
	.accepted = echo_accepted,
	.readable = echo_event,
	.writable = echo_event,
	.closed = echo_closed,
};

/* ---- TCP discard ------------------------------------------------------ */

/* A counter per connection; there are never more than GNET_MAX_CONNS. */
static struct discard discards[GNET_MAX_CONNS];

static void discard_accepted(void *ctx, struct gnet_conn *c)
{
	struct discard *d = discards;

	(void)ctx;
	while (d->used)
		d++;
	d->used = true;
	d->bytes = 0;
	gnet_conn_set_user(c, d);
}

static void discard_readable(void *ctx, struct gnet_conn *c)
{
	struct discard *d = gnet_conn_user(c);
	uint8_t buf[4096];
	size_t n;

	(void)ctx;
	while ((n = gnet_tcp_read(c, buf, sizeof(buf))))
		d->bytes += n;
	if (gnet_tcp_eof(c))
		gnet_tcp_close(c);
}

static void discard_closed(void *ctx, struct gnet_conn *c, int reason)
{
	struct discard *d = gnet_conn_user(c);
	uint32_t ip;
	uint16_t port;

	(void)ctx;
	gnet_conn_addr(c, &ip, &port, NULL);
	print_ip("netecho: discard peer=", ip);
	printf(":%u bytes=%lu reason=%d\n", port, d->bytes, reason);
	d->used = false;
}

static const struct gnet_tcp_cb discard_cb = {
	.accepted = discard_accepted,
	.readable = discard_readable,
	.closed = discard_closed,
};

/* ---- Main ------------------------------------------------------------- */

static unsigned int default_conns(void)
{
	size_t n = ft_heap_free() / 2 / GNET_CONN_MEM;

	return n < GNET_MAX_CONNS ? (unsigned int)n : GNET_MAX_CONNS;
}

int main(int argc, char **argv)
{
	unsigned int conns = default_conns();
	const struct gnet_cfg *cfg;
	uint64_t v;
	int err;

	if (argc > 2 || (argc == 2 && (ft_parse_u64(argv[1], &v) || !v ||
				       v > GNET_MAX_CONNS))) {
		printf("netecho: usage: netecho [MAXCONNS (1..%d)]\n",
		       GNET_MAX_CONNS);
		return 1;
	}
	if (argc == 2)
		conns = (unsigned int)v;
	err = gnet_ft_init(&net, conns);
	if (err) {
		printf("netecho: no usable NIC (%d)\n", err);
		return 1;
	}
	cfg = gnet_config(&net);
	if (!cfg->ip) {
		printf("netecho: the NIC has no IPv4 address\n");
		return 1;
	}
	if (gnet_udp_bind(&net, 7, udp_echo, &net) ||
	    gnet_tcp_listen(&net, 7, &echo_cb, NULL) ||
	    gnet_tcp_listen(&net, 9, &discard_cb, NULL))
		ft_panic("netecho: cannot bind the services");
	printf("netecho: up mac=%02x:%02x:%02x:%02x:%02x:%02x", cfg->mac[0],
	       cfg->mac[1], cfg->mac[2], cfg->mac[3], cfg->mac[4], cfg->mac[5]);
	print_ip(" ip=", cfg->ip);
	printf(" conns=%u\n", conns);
	for (;;) {
		err = gnet_ft_poll(&net, UINT64_MAX);
		if (err)
			error("poll", err);
	}
}
