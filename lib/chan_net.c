// SPDX-License-Identifier: MIT
/*
 * chan_net.c - TCP and TLS 1.3 channel backends (see chan_net.h).
 *
 * Connect and handshake run on a non-blocking socket under poll(2) with
 * a deadline; the finished channel's socket is blocking again.  TLS
 * writes go through a staging buffer so that a writev of many small
 * iovecs becomes few SSL_write calls, and OpenSSL's 16 KiB records leave
 * through a buffering BIO in large send(2)s rather than one per record.
 */
#include "chan_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"

/* Staging buffer for TLS writes, and the write BIO's buffer. */
#define STAGE_SIZE (256 * 1024)
#define WBUF_SIZE (512 * 1024)
/* The byte a TLS server sends once it has accepted the client. */
#define CONFIRM_BYTE 0x06

/* ---- addresses and sockets ---- */

/* Split "host:port", "[v6]:port", ":port" into host (maybe "") and port.
 */
static int split_addr(const char *addr, char *host, size_t hlen, char *port,
		      size_t plen)
{
	const char *colon, *h = addr;
	size_t n;

	if (!addr || !*addr)
		goto bad;
	if (*addr == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end[1] != ':')
			goto bad;
		h = addr + 1;
		n = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
			goto bad; /* a bare IPv6 address needs brackets */
		n = (size_t)(colon - addr);
	}
	if (n >= hlen || strlen(colon + 1) >= plen || !colon[1])
		goto bad;
	memcpy(host, h, n);
	host[n] = '\0';
	strcpy(port, colon + 1);
	for (const char *p = port; *p; p++)
		if (*p < '0' || *p > '9')
			goto bad;
	if (strtoul(port, NULL, 10) > 65535)
		goto bad;
	return 0;
bad:
	log_err("bad address '%s': expected host:port, [v6addr]:port or "
		":port",
		addr ? addr : "(null)");
	return -EINVAL;
}

static int resolve(const char *addr, bool passive, struct addrinfo **res)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV};
	char host[256], port[8];
	int err, rc;

	err = split_addr(addr, host, sizeof(host), port, sizeof(port));
	if (err)
		return err;
	if (passive)
		hints.ai_flags |= AI_PASSIVE;
	else if (!*host) {
		log_err("address '%s' has no host to connect to", addr);
		return -EINVAL;
	}
	rc = getaddrinfo(*host ? host : NULL, port, &hints, res);
	if (rc) {
		log_err("cannot resolve '%s': %s", addr,
			rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	}
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on fd until `deadline` (ms, -1: none).  0, -ETIMEDOUT
 * or -errno. */
static int wait_fd(int fd, short events, long long deadline)
{
	struct pollfd p = {.fd = fd, .events = events};

	for (;;) {
		long long left = deadline < 0 ? -1 : deadline - now_ms();
		int r;

		if (deadline >= 0 && left <= 0)
			return -ETIMEDOUT;
		r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int set_nonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	fl = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
	return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

/*
 * Options for a data socket.  TCP_NODELAY: writes are already coalesced,
 * so Nagle would only delay the last segment of a checkpoint.  The socket
 * buffers are left to the kernel's autotuning (tcp_rmem/tcp_wmem, several
 * MiB): setting SO_SNDBUF/SO_RCVBUF switches autotuning off and is capped
 * by net.core.[rw]mem_max.
 */
static void tune_socket(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* "tls 127.0.0.1:443" / "tcp [::1]:80" for the peer of fd. */
static char *peer_label(int fd, bool tls)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?", *name;
	unsigned port = 0;

	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
			port = ntohs(s->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
			port = ntohs(s->sin6_port);
		}
	}
	if (asprintf(&name, "%s %s%s%s:%u", tls ? "tls" : "tcp",
		     ss.ss_family == AF_INET6 ? "[" : "", host,
		     ss.ss_family == AF_INET6 ? "]" : "", port) < 0)
		return NULL;
	return name;
}

int chan_net_listen(const char *addr, int *fd_out)
{
	struct addrinfo *res, *ai;
	int one = 1, fd = -1, err;

	err = resolve(addr, true, &res);
	if (err)
		return err;
	err = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 16) == 0)
			break;
		err = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		log_err("cannot listen on %s: %s", addr, strerror(-err));
		return err;
	}
	*fd_out = fd;
	return 0;
}

/* ---- plain TCP backend ---- */

static void warn_insecure(const char *name)
{
	log_warn("%s: insecure: no TLS, no authentication", name);
}

/* chan_from_fd() with our name; takes fd over. */
static int tcp_chan(int fd, const char *name, struct chan **out)
{
	char *n;
	int err;

	err = chan_from_fd(out, fd, true);
	if (err)
		return err;
	n = strdup(name);
	if (!n) {
		chan_close(*out);
		return -ENOMEM;
	}
	free((*out)->name);
	(*out)->name = n;
	warn_insecure(n);
	return 0;
}

/* ---- TLS backend ---- */

struct chan_tls {
	struct chan c; /* first */
	SSL *ssl;
	SSL_CTX *ctx;
	int fd;
	size_t staged;
	unsigned char *stage; /* STAGE_SIZE bytes */
};

static bool not_tls_reason(int reason)
{
	switch (reason) {
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_UNKNOWN_PROTOCOL:
	case SSL_R_HTTP_REQUEST:
	case SSL_R_HTTPS_PROXY_REQUEST:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_RECORD_LENGTH_MISMATCH:
	case SSL_R_UNEXPECTED_RECORD:
	case SSL_R_UNEXPECTED_MESSAGE:
	case SSL_R_BAD_PACKET_LENGTH:
	case SSL_R_LENGTH_MISMATCH:
	case SSL_R_DATA_LENGTH_TOO_LONG:
	case SSL_R_BAD_RECORD_TYPE:
		return true;
	}
	return false;
}

/*
 * Log why `what` (an SSL call that returned r) failed on `name`, in words
 * an operator can act on, and return the errno for it.  Clears OpenSSL's
 * error queue.
 */
static int tls_fail(const char *name, const char *what, SSL *ssl, int r,
		    int sys_errno)
{
	int e = SSL_get_error(ssl, r);
	unsigned long ec = ERR_peek_error();
	int reason = ERR_GET_LIB(ec) == ERR_LIB_SSL ? ERR_GET_REASON(ec) : 0;
	long vr = SSL_get_verify_result(ssl);
	char buf[256];
	int err;

	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
	    (e == SSL_ERROR_SYSCALL &&
	     (sys_errno == EAGAIN || sys_errno == EWOULDBLOCK))) {
		/* A blocking socket with SO_RCVTIMEO/SO_SNDTIMEO. */
		log_err("%s: %s: timed out (peer silent or link down)", name,
			what);
		err = -ETIMEDOUT;
	} else if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED &&
		   vr != X509_V_OK) {
		bool unknown_ca =
			vr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
			vr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
			vr == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
			vr == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
			vr == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE ||
			vr == X509_V_ERR_CERT_SIGNATURE_FAILURE;

		log_err("%s: %s: peer certificate verify failed: %s%s", name,
			what, unknown_ca ? "unknown CA: " : "",
			X509_verify_cert_error_string(vr));
		err = -EACCES;
	} else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		log_err("%s: %s: peer sent no certificate", name, what);
		err = -EACCES;
	} else if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA) {
		log_err("%s: %s: peer refused our certificate: unknown CA",
			name, what);
		err = -EACCES;
	} else if (reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED) {
		log_err("%s: %s: peer refused our certificate: certificate "
			"has expired",
			name, what);
		err = -EACCES;
	} else if (reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
		log_err("%s: %s: peer requires a certificate and we sent none",
			name, what);
		err = -EACCES;
	} else if (reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
		   reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
		   reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
		   reason == SSL_R_TLSV1_ALERT_ACCESS_DENIED) {
		log_err("%s: %s: peer refused our certificate (%s)", name, what,
			ERR_reason_error_string(ec));
		err = -EACCES;
	} else if (not_tls_reason(reason)) {
		log_err("%s: %s: peer is not speaking TLS (plain TCP?): %s",
			name, what, ERR_reason_error_string(ec));
		err = -EPROTO;
	} else if (reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
		   reason == SSL_R_UNSUPPORTED_PROTOCOL) {
		log_err("%s: %s: peer does not speak TLS 1.3", name, what);
		err = -EPROTO;
	} else if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
		   (e == SSL_ERROR_SYSCALL && !ec && !sys_errno) ||
		   e == SSL_ERROR_ZERO_RETURN) {
		log_err("%s: %s: peer closed the connection", name, what);
		err = -ECONNRESET;
	} else if (e == SSL_ERROR_SYSCALL && !ec) {
		log_err("%s: %s: %s", name, what, strerror(sys_errno));
		err = -sys_errno;
	} else {
		ERR_error_string_n(ec, buf, sizeof(buf));
		log_err("%s: %s failed: %s", name, what, buf);
		err = -EPROTO;
	}
	ERR_clear_error();
	return err;
}

/*
 * After a non-blocking SSL call of the handshake returned `r` (not 1):
 * if it only needs the socket readable or writable, wait for that until
 * `deadline` and return 0 (call it again); else return -errno with the
 * cause logged (`timeout_msg` when the deadline passed).  Reads errno as
 * the SSL call left it.
 */
static int tls_step_wait(const char *name, SSL *ssl, int fd, int r,
			 long long deadline, const char *timeout_msg)
{
	int saved = errno, e = SSL_get_error(ssl, r), err;

	if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
		return tls_fail(name, "TLS handshake", ssl, r, saved);
	err = wait_fd(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
		      deadline);
	if (err == -ETIMEDOUT)
		log_err("%s: %s", name, timeout_msg);
	else if (err)
		log_err("%s: poll failed: %s", name, strerror(-err));
	return err;
}

/* Log OpenSSL's error queue for a setup step. */
static int tls_setup_fail(const char *what, const char *file)
{
	char buf[256];

	ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
	log_err("TLS setup: %s%s%s: %s", what, file ? " " : "",
		file ? file : "", buf);
	ERR_clear_error();
	return -EINVAL;
}

static SSL_CTX *tls_ctx(const struct chan_tls_cfg *cfg, bool server, int *err)
{
	SSL_CTX *ctx =
		SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());

	*err = -ENOMEM;
	if (!ctx)
		return NULL;
	*err = -EINVAL;
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
		tls_setup_fail("cannot require TLS 1.3", NULL);
		goto fail;
	}
	SSL_CTX_set_verify(
		ctx,
		SSL_VERIFY_PEER |
			(server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
		NULL);
	/* No resumption: every connection authenticates afresh, and no
	 * tickets cross the wire after the handshake. */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
	SSL_CTX_clear_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
	if (!SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL)) {
		tls_setup_fail("cannot load the CA", cfg->ca_file);
		goto fail;
	}
	if (cfg->cert_file) {
		if (!SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file)) {
			tls_setup_fail("cannot load the certificate",
				       cfg->cert_file);
			goto fail;
		}
		if (!SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file,
						 SSL_FILETYPE_PEM)) {
			tls_setup_fail("cannot load the key", cfg->key_file);
			goto fail;
		}
		if (!SSL_CTX_check_private_key(ctx)) {
			tls_setup_fail("key does not match the certificate",
				       cfg->key_file);
			goto fail;
		}
	}
	*err = 0;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* SSL_write_ex all of buf[0..len) (blocking socket), then flush the BIO. */
static int tls_send(struct chan_tls *t, const void *buf, size_t len)
{
	while (len) {
		size_t w = 0;
		int r;

		ERR_clear_error();
		r = SSL_write_ex(t->ssl, buf, len, &w);
		if (r <= 0)
			return tls_fail(t->c.name, "write", t->ssl, r, errno);
		buf = (const char *)buf + w;
		len -= w;
	}
	return 0;
}

static int tls_flush_bio(struct chan_tls *t)
{
	if (BIO_flush(SSL_get_wbio(t->ssl)) <= 0) {
		int err = errno ? -errno : -EIO;

		log_err("%s: send failed: %s", t->c.name, strerror(-err));
		return err;
	}
	return 0;
}

static int tls_writev(struct chan *c, const struct iovec *iov, int n)
{
	struct chan_tls *t = (struct chan_tls *)c;
	int err;

	for (int i = 0; i < n; i++) {
		const char *p = iov[i].iov_base;
		size_t len = iov[i].iov_len;

		/* A large piece goes straight out: copying buys nothing. */
		if (len >= STAGE_SIZE) {
			err = tls_send(t, t->stage, t->staged);
			t->staged = 0;
			if (!err)
				err = tls_send(t, p, len);
			if (err)
				return err;
			continue;
		}
		while (len) {
			size_t k = STAGE_SIZE - t->staged;

			if (k > len)
				k = len;
			memcpy(t->stage + t->staged, p, k);
			t->staged += k;
			p += k;
			len -= k;
			if (t->staged == STAGE_SIZE) {
				err = tls_send(t, t->stage, t->staged);
				t->staged = 0;
				if (err)
					return err;
			}
		}
	}
	err = tls_send(t, t->stage, t->staged);
	t->staged = 0;
	return err ? err : tls_flush_bio(t);
}

static ssize_t tls_read(struct chan *c, void *buf, size_t len)
{
	struct chan_tls *t = (struct chan_tls *)c;
	size_t got = 0;

	while (got < len) {
		size_t r = 0;
		int rc;

		ERR_clear_error();
		errno = 0;
		rc = SSL_read_ex(t->ssl, (char *)buf + got, len - got, &r);
		if (rc <= 0) {
			if (SSL_get_error(t->ssl, rc) == SSL_ERROR_ZERO_RETURN)
				break; /* close_notify: the end */
			return tls_fail(c->name, "read", t->ssl, rc, errno);
		}
		got += r;
	}
	return (ssize_t)got;
}

static int tls_close(struct chan *c)
{
	struct chan_tls *t = (struct chan_tls *)c;
	int err = 0;

	if (t->ssl) {
		/* Best effort close_notify; never wait for the peer's. */
		if (!c->err)
			SSL_shutdown(t->ssl);
		SSL_free(t->ssl);
	}
	SSL_CTX_free(t->ctx);
	ERR_clear_error();
	if (close(t->fd) < 0) {
		err = -errno;
		log_err("%s: close failed: %s", c->name, strerror(errno));
	}
	free(t->stage);
	free(t);
	return err;
}

static int tls_set_timeout(struct chan *c, unsigned ms)
{
	return chan_sock_timeout(((struct chan_tls *)c)->fd, ms);
}

/* Decrypted bytes waiting, or ciphertext on the socket (which may be
 * less than a record: the read that follows waits for the rest). */
static int tls_readable(struct chan *c, int ms)
{
	struct chan_tls *t = (struct chan_tls *)c;

	return SSL_pending(t->ssl) > 0 ? 1 : chan_fd_readable(t->fd, ms);
}

static void tls_shutdown(struct chan *c)
{
	shutdown(((struct chan_tls *)c)->fd, SHUT_RDWR);
}

static const struct chan_ops tls_ops = {
	.shutdown = tls_shutdown,
	.kind = "tls",
	.writev = tls_writev,
	.read = tls_read,
	.set_timeout = tls_set_timeout,
	.readable = tls_readable,
	.close = tls_close,
};

int chan_net_peer_is(struct chan *c, const char *name)
{
	struct chan_tls *t = (struct chan_tls *)c;
	X509 *x;
	int r;

	if (!name || !*name)
		return -EINVAL;
	if (!c || c->ops != &tls_ops)
		return -ENOTSUP;
	x = SSL_get0_peer_certificate(t->ssl);
	if (!x || SSL_get_verify_result(t->ssl) != X509_V_OK)
		return -EACCES;
	r = X509_check_host(x, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
			    NULL);
	ERR_clear_error();
	/* -1 (an internal error) and -2 (a malformed name): no match. */
	return r == 1;
}

/*
 * Run the TLS handshake on the non-blocking socket fd (taken over: closed
 * on failure) until `deadline`, confirm it (see chan_net.h), and make the
 * socket blocking.  `name` is taken over.
 */
static int tls_start(int fd, char *name, const struct chan_tls_cfg *cfg,
		     bool server, long long deadline, struct chan **out)
{
	struct chan_tls *t;
	BIO *sock, *wbuf;
	int err;

	t = calloc(1, sizeof(*t));
	if (!t || !name) {
		free(t);
		free(name);
		close(fd);
		return -ENOMEM;
	}
	t->c.ops = &tls_ops;
	t->c.name = name;
	t->fd = fd;
	err = -ENOMEM;
	t->stage = malloc(STAGE_SIZE);
	if (!t->stage)
		goto fail;
	t->ctx = tls_ctx(cfg, server, &err);
	if (!t->ctx)
		goto fail;
	err = -ENOMEM;
	t->ssl = SSL_new(t->ctx);
	if (!t->ssl)
		goto fail;
	if (cfg->peer_name) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);

		X509_VERIFY_PARAM_set_hostflags(
			vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		/* An IP address is checked against the SAN's IP entries. */
		if (!X509_VERIFY_PARAM_set1_ip_asc(vp, cfg->peer_name)) {
			ERR_clear_error();
			if (!X509_VERIFY_PARAM_set1_host(vp, cfg->peer_name,
							 0)) {
				err = tls_setup_fail("bad peer name",
						     cfg->peer_name);
				goto fail;
			}
		}
		if (!server)
			SSL_set_tlsext_host_name(t->ssl, cfg->peer_name);
	}
	if (!SSL_set_fd(t->ssl, fd))
		goto fail;

	for (;;) {
		int r;

		ERR_clear_error();
		errno = 0;
		r = server ? SSL_accept(t->ssl) : SSL_connect(t->ssl);
		if (r == 1)
			break;
		err = tls_step_wait(name, t->ssl, fd, r, deadline,
				    "TLS handshake timed out (peer not "
				    "speaking TLS?)");
		if (err)
			goto fail;
	}

	/* The confirmation byte: sent by the server, awaited by the
	 * client, so that a refused client certificate fails here. */
	for (;;) {
		unsigned char b = CONFIRM_BYTE;
		size_t k = 0;
		int r;

		ERR_clear_error();
		errno = 0;
		r = server ? SSL_write_ex(t->ssl, &b, 1, &k)
			   : SSL_read_ex(t->ssl, &b, 1, &k);
		if (r == 1) {
			if (b != CONFIRM_BYTE) {
				log_err("%s: bad handshake confirmation "
					"%#x",
					name, b);
				err = -EPROTO;
				goto fail;
			}
			break;
		}
		err = tls_step_wait(name, t->ssl, fd, r, deadline,
				    "no handshake confirmation from the "
				    "peer: timed out");
		if (err)
			goto fail;
	}

	err = set_nonblock(fd, false);
	if (err) {
		log_err("%s: cannot make the socket blocking: %s", name,
			strerror(-err));
		goto fail;
	}
	/* Records leave through a buffer: few large send(2)s. */
	err = -ENOMEM;
	sock = SSL_get_wbio(t->ssl);
	wbuf = BIO_new(BIO_f_buffer());
	if (!wbuf)
		goto fail;
	if (BIO_set_write_buffer_size(wbuf, WBUF_SIZE) <= 0) {
		BIO_free(wbuf);
		goto fail;
	}
	BIO_up_ref(sock);
	BIO_push(wbuf, sock);
	SSL_set0_wbio(t->ssl, wbuf);
	*out = &t->c;
	return 0;
fail:
	if (t->ssl)
		SSL_free(t->ssl);
	SSL_CTX_free(t->ctx);
	ERR_clear_error();
	close(fd);
	free(t->stage);
	free(t->c.name);
	free(t);
	return err;
}

static bool cfg_ok(const struct chan_tls_cfg *cfg, bool server)
{
	if (!cfg) {
		log_err("chan_net: no TLS configuration");
		return false;
	}
	if (cfg->insecure)
		return true;
	if (!cfg->ca_file || (server && !cfg->cert_file) ||
	    (!cfg->cert_file != !cfg->key_file)) {
		log_err("chan_net: TLS needs a CA file%s and both certificate "
			"and key or neither (plain TCP only with insecure)",
			server ? ", a certificate" : "");
		return false;
	}
	return true;
}

int chan_net_accept(int lfd, const struct chan_tls_cfg *cfg, int timeout_ms,
		    struct chan **out)
{
	long long deadline;
	int fd, err;

	if (!cfg_ok(cfg, true))
		return -EINVAL;
	deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	for (;;) {
		err = wait_fd(lfd, POLLIN, deadline);
		if (err) {
			log_err("accept on fd %d: %s", lfd,
				err == -ETIMEDOUT ? "no connection in time"
						  : strerror(-err));
			return err;
		}
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0)
			break;
		if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
			continue;
		err = -errno;
		log_err("accept on fd %d: %s", lfd, strerror(errno));
		return err;
	}
	tune_socket(fd);
	if (cfg->insecure) {
		char *name = peer_label(fd, false);

		err = set_nonblock(fd, false);
		if (err || !name) {
			free(name);
			close(fd);
			return err ? err : -ENOMEM;
		}
		err = tcp_chan(fd, name, out);
		free(name);
		return err;
	}
	deadline = now_ms() +
		   (timeout_ms < 0 ? CHAN_NET_HANDSHAKE_MS : timeout_ms);
	return tls_start(fd, peer_label(fd, true), cfg, true, deadline, out);
}

/* Non-blocking connect of a new socket to `ai` until `deadline`. */
static int connect_one(const struct addrinfo *ai, const char *addr,
		       long long deadline, int *fd_out)
{
	socklen_t sl = sizeof(int);
	int fd, err, soerr = 0;

	fd = socket(ai->ai_family,
		    ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	tune_socket(fd);
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			err = -errno;
			goto fail;
		}
		err = wait_fd(fd, POLLOUT, deadline);
		if (err)
			goto fail;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			soerr = errno;
		if (soerr) {
			err = -soerr;
			goto fail;
		}
	}
	*fd_out = fd;
	return 0;
fail:
	close(fd);
	return err;
}

int chan_net_connect(const char *addr, const struct chan_tls_cfg *cfg,
		     int timeout_ms, struct chan **out)
{
	struct addrinfo *res, *ai;
	long long deadline;
	char *name;
	int fd = -1, err;

	if (!cfg_ok(cfg, false))
		return -EINVAL;
	if (timeout_ms <= 0) {
		log_err("connect to %s: timeout %d ms must be positive", addr,
			timeout_ms);
		return -EINVAL;
	}
	err = resolve(addr, false, &res);
	if (err)
		return err;
	deadline = now_ms() + timeout_ms;
	err = -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		err = connect_one(ai, addr, deadline, &fd);
		if (!err || err == -ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (err) {
		log_err("connect to %s: %s", addr,
			err == -ETIMEDOUT ? "timed out" : strerror(-err));
		return err;
	}
	if (asprintf(&name, "%s %s", cfg->insecure ? "tcp" : "tls", addr) < 0)
		name = NULL;
	if (cfg->insecure) {
		err = name ? set_nonblock(fd, false) : -ENOMEM;
		if (err) {
			free(name);
			close(fd);
			return err;
		}
		err = tcp_chan(fd, name, out);
		free(name);
		return err;
	}
	return tls_start(fd, name, cfg, false, deadline, out);
}
