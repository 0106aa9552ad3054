/* SPDX-License-Identifier: MIT */
/*
 * chan_net.h - TCP channels: TLS 1.3 with mutual certificate
 * authentication (OpenSSL), or plain TCP for benchmarks when asked for.
 *
 * Both ends verify the other's certificate against the CA in
 * cfg->ca_file only (never the system store); a server refuses a client
 * that sends no certificate.  A TLS server confirms a finished handshake
 * with one application byte, which chan_net_connect() reads: in TLS 1.3
 * the client's handshake ends before the server has checked the client's
 * certificate, and without the confirmation a refused client would only
 * learn of it at its first read.  So a refusal is an error of
 * chan_net_accept() and of chan_net_connect() on both sides.
 *
 * Errors (logged with the cause):
 *   -ETIMEDOUT     no connection or no finished handshake in time
 *   -ECONNREFUSED  nothing listens at the address
 *   -EACCES        a certificate was refused (ours by the peer, or the
 *                  peer's by us: unknown CA, expired, no certificate,
 *                  hostname mismatch)
 *   -EPROTO        the peer does not speak TLS 1.3 (plain TCP?)
 *   -ECONNRESET    the peer closed the connection during the handshake
 *   -EINVAL        bad address or configuration
 *
 * The resulting channels block; they are not thread-safe (see channel.h).
 */
#ifndef CHAN_NET_H
#define CHAN_NET_H

#include <stdbool.h>

#include "channel.h"

/* Handshake limit when chan_net_accept() is given no timeout. */
#define CHAN_NET_HANDSHAKE_MS 10000

struct chan_tls_cfg {
	/* PEM files.  ca_file: the only trusted CA.  cert_file, key_file:
	 * our certificate and key; required to accept, optional to connect
	 * (a server then refuses us). */
	const char *ca_file, *cert_file, *key_file;
	/* Expected name (DNS name or IP in the SAN, or the CN) of the peer;
	 * NULL accepts any certificate signed by the CA. */
	const char *peer_name;
	/* Plain TCP: no TLS, no authentication.  The explicit opt-in: a TLS
	 * configuration that lacks its files is refused, never downgraded.
	 * Logs a warning on every use. */
	bool insecure;
};

/*
 * Listen on `addr`: "host:port", "[v6addr]:port" or ":port" (all
 * addresses).  Port 0 picks a free port (see getsockname(2)).  The socket
 * is close-on-exec with SO_REUSEADDR.  On success *fd_out is the caller's.
 * Return 0 or -errno (logged).
 */
int chan_net_listen(const char *addr, int *fd_out);

/*
 * Accept one connection on the listening socket `lfd` and, unless
 * cfg->insecure, run the TLS server handshake.  Waits up to `timeout_ms`
 * for a connection (-1: forever), then up to `timeout_ms` for the
 * handshake (CHAN_NET_HANDSHAKE_MS when -1).  A refused peer is closed
 * and is an error: the caller may accept again.  On success *out owns the
 * connection.  May block; thread-safe (for different `lfd`s or not).
 * Return 0 or -errno (see above).
 */
int chan_net_accept(int lfd, const struct chan_tls_cfg *cfg, int timeout_ms,
		    struct chan **out);

/*
 * Connect to `addr` (as for chan_net_listen, with a host) and, unless
 * cfg->insecure, run the TLS client handshake; `timeout_ms` (> 0) bounds
 * the whole, name resolution excepted.  On success *out owns the
 * connection.  May block; thread-safe.
 * Return 0 or -errno (see above).
 */
int chan_net_connect(const char *addr, const struct chan_tls_cfg *cfg,
		     int timeout_ms, struct chan **out);

/*
 * Is the peer of the TLS channel `c` (from chan_net_accept() or
 * chan_net_connect()) the host `name`?  Checks the certificate it
 * presented in the handshake, already verified against the CA, for `name`
 * as a DNS name (a SAN entry, or the CN when the certificate has no DNS
 * SAN; no partial wildcards; case-insensitive, as DNS names are).  For a
 * server that gave no cfg->peer_name, this is how it learns who connected.
 * Does not block; not thread-safe with other calls on `c`.
 * Return 1 (it is), 0 (it is not), or:
 *   -ENOTSUP  `c` is not a TLS channel (plain TCP with cfg->insecure, or
 *             not a network channel): nothing authenticates its peer;
 *   -EACCES   no verified peer certificate (cannot happen after a
 *             successful chan_net_accept() or chan_net_connect());
 *   -EINVAL   `name` is NULL or empty.
 */
int chan_net_peer_is(struct chan *c, const char *name);

#endif /* CHAN_NET_H */
