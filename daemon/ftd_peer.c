// SPDX-License-Identifier: MIT
/*
 * ftd_peer.c - ftd talking to the ftd of other hosts.
 *
 * Peer channels are lib/chan_net channels (TLS 1.3, mutual certificate
 * authentication against CONFIG/ca.crt), which block.  So every peer
 * exchange runs in a thread of its own, and the loop thread never waits
 * on the network:
 *
 *   listener: PEER_ACCEPTORS threads each block in chan_net_accept() on
 *   the one listening socket (the kernel hands each connection to one of
 *   them), so a slow or hostile handshake holds up one acceptor for at
 *   most CHAN_NET_HANDSHAKE_MS, never the loop; each accepted channel gets
 *   a connection thread that reads request lines, refuses one whose
 *   "from" is not the host its certificate is for, hands the others to
 *   the loop (ftd_post) and writes the loop's answer back.
 *
 *   peer_call: one thread per call connects, sends one request line,
 *   reads one reply line and posts the result to the loop.
 *
 * Framing is the control socket's: one JSON object per line, at most
 * 64 KiB, replies in order.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "chan_net.h"
#include "ftd.h"
#include "log.h"

#define PEER_ACCEPTORS 4
#define PEER_CONNS_MAX 32
#define PEER_IDLE_MS 30000 /* a connection thread's longest wait */
#define PEER_CONNECT_MS 5000 /* connection and TLS handshake */
#define PEER_LINK_CONNECT_MS 1000 /* a heartbeat link's */

/* ---- errors a thread logged, read back for the reply ---- */

/* The last "error:" line this thread logged, without the prefix. */
static __thread char last_err[FTD_REASON_MAX];

static ssize_t tee_write(void *cookie, const char *buf, size_t len)
{
	const char *e;
	size_t n = len, off = 0;

	while (off < len) {
		ssize_t w = write(STDERR_FILENO, buf + off, len - off);

		if (w <= 0)
			break;
		off += (size_t)w;
	}
	e = memmem(buf, len, ": error: ", 9);
	if (e) {
		e += 9;
		n = len - (size_t)(e - buf);
		while (n && (e[n - 1] == '\n' || e[n - 1] == '\r'))
			n--;
		if (n >= sizeof(last_err))
			n = sizeof(last_err) - 1;
		memcpy(last_err, e, n);
		last_err[n] = '\0';
	}
	return (ssize_t)len;
}

void peer_log_init(void)
{
	cookie_io_functions_t io = { .write = tee_write };
	FILE *f = fopencookie(NULL, "w", io);

	/* Line-buffered: each log_msg() is one write, in its own thread. */
	if (f && setvbuf(f, NULL, _IOLBF, 0) == 0)
		log_set_file(f);
}

/* The detail of the last error, without the channel name in front. */
static const char *err_detail(void)
{
	/* A quiet thread (a heartbeat link) writes nothing to the tee. */
	const char *e = *last_err ? last_err : log_last_err();
	const char *p = strstr(e, ": ");

	if (!strncmp(e, "tls ", 4) || !strncmp(e, "tcp ", 4))
		return p ? p + 2 : e;
	return e;
}

/* ---- posting to the loop ---- */

struct post {
	struct post *next;
	void (*fn)(struct ftd *d, void *arg);
	void *arg;
};

static pthread_mutex_t post_mu = PTHREAD_MUTEX_INITIALIZER;
static struct post *post_head, **post_tail = &post_head;

void ftd_post(struct ftd *d, void (*fn)(struct ftd *d, void *arg), void *arg)
{
	struct post *p = malloc(sizeof(*p));

	if (!p) {
		/* Cannot happen in practice; losing a post would hang a
		 * request forever, so do not pretend. */
		log_err("out of memory posting to the loop");
		abort();
	}
	p->fn = fn;
	p->arg = arg;
	p->next = NULL;
	pthread_mutex_lock(&post_mu);
	*post_tail = p;
	post_tail = &p->next;
	pthread_mutex_unlock(&post_mu);
	ev_async_send(d->loop, &d->async_w);
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct ftd *d = w->data;
	struct post *p, *next;

	pthread_mutex_lock(&post_mu);
	p = post_head;
	post_head = NULL;
	post_tail = &post_head;
	pthread_mutex_unlock(&post_mu);
	for (; p; p = next) {
		next = p->next;
		p->fn(d, p->arg);
		free(p);
	}
}

/* Start a detached thread with every signal blocked: signals are the
 * loop thread's. */
static int spawn_thread(void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t t;
	int err;

	sigfillset(&all);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(&t, &attr, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return -err;
}

/* ---- lines on a channel ---- */

/* Read one line (without its newline) into buf.  Return its length, 0
 * at a clean end before any byte, or -errno (-EMSGSIZE: too long). */
static ssize_t chan_read_line(struct chan *c, char *buf, size_t size)
{
	size_t n = 0;

	for (;;) {
		ssize_t r = chan_read_upto(c, buf + n, 1);

		if (r < 0)
			return r;
		if (r == 0)
			return n ? -EPIPE : 0;
		if (buf[n] == '\n')
			break;
		if (++n >= size - 1)
			return -EMSGSIZE;
	}
	buf[n] = '\0';
	return (ssize_t)n;
}

static int chan_write_json(struct chan *c, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);
	size_t len;
	int err;

	if (!s)
		return -ENOMEM;
	len = strlen(s);
	s[len++] = '\n';
	err = chan_write(c, s, len);
	if (!err)
		err = chan_flush(c, false);
	free(s);
	return err;
}

/* ---- the listener: requests from other hosts ---- */

struct peer_req {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	json_t *req;
	json_t *rep; /* set once by peer_req_reply */
};

static int peer_conns;
static pthread_mutex_t conns_mu = PTHREAD_MUTEX_INITIALIZER;

static void peer_req_run(struct ftd *d, void *arg)
{
	struct peer_req *pr = arg;

	peer_dispatch(d, pr, pr->req);
}

void peer_req_reply(struct peer_req *pr, json_t *rep)
{
	pthread_mutex_lock(&pr->mu);
	pr->rep = rep;
	pthread_cond_signal(&pr->cv);
	pthread_mutex_unlock(&pr->mu);
}

struct conn {
	struct conn *next;
	struct ftd *d;
	struct chan *c;
};

/* Threads that hold a channel (connections, calls, links), so that a
 * stopping ftd can end them before it exits. */
static struct conn *conns; /* guarded by conns_mu */
static int peer_threads;   /* guarded by conns_mu */

static void thread_count(int n)
{
	pthread_mutex_lock(&conns_mu);
	peer_threads += n;
	pthread_mutex_unlock(&conns_mu);
}

/* Hand one request to the loop and wait for its answer. */
static json_t *conn_ask_loop(struct ftd *d, json_t *req)
{
	struct peer_req pr = { .req = req };
	json_t *rep;

	pthread_mutex_init(&pr.mu, NULL);
	pthread_cond_init(&pr.cv, NULL);
	ftd_post(d, peer_req_run, &pr);
	pthread_mutex_lock(&pr.mu);
	while (!pr.rep)
		pthread_cond_wait(&pr.cv, &pr.mu);
	rep = pr.rep;
	pthread_mutex_unlock(&pr.mu);
	pthread_mutex_destroy(&pr.mu);
	pthread_cond_destroy(&pr.cv);
	return rep;
}

/*
 * Over TLS, the sender a request names in "from" must be the host its
 * certificate is for: else any host with a certificate from the cluster's
 * CA could speak for any other (claim its leases, end its protection or
 * its migrations).  NULL if the request may go on (no "from": the loop
 * refuses it), else the error reply.  With --insecure-peers nothing
 * authenticates the sender and "from" is taken on trust.  Untrusted
 * strings are logged and echoed only when they are names (no control
 * characters to forge log lines with).
 */
static json_t *conn_check_from(struct conn *cn, json_t *req)
{
	const char *cmd = json_string_value(json_object_get(req, "cmd"));
	const char *from = json_string_value(json_object_get(req, "from"));
	int r;

	if (!from)
		return NULL;
	if (!name_ok(cmd))
		cmd = "?";
	if (!name_ok(from)) {
		log_warn("peer request \"%s\" from %s refused: its \"from\" "
			 "is not a host name",
			 cmd, cn->c->name);
		return reply_err("peer request refused: \"from\" is not a "
				 "host name");
	}
	if (cn->d->insecure_peers)
		return NULL; /* names are taken on trust (docs/ftd.md) */
	r = chan_net_peer_is(cn->c, from);
	if (r == 1)
		return NULL;
	if (r == 0) {
		log_warn("peer request \"%s\" from %s refused: it claims "
			 "to be %s, but its certificate is not for %s",
			 cmd, cn->c->name, from, from);
		return reply_err("peer request refused: the certificate "
				 "presented is not for host '%s'",
				 from);
	}
	log_warn("peer request \"%s\" from %s refused: it claims to be "
		 "%s, but its certificate cannot be checked: %s",
		 cmd, cn->c->name, from, strerror(-r));
	return reply_err("peer request refused: cannot check that the "
			 "certificate presented is for host '%s' (%s)",
			 from, strerror(-r));
}

static void *conn_thread(void *arg)
{
	struct conn *cn = arg;
	char *line = malloc(FTD_LINE_MAX);
	json_error_t jerr;
	json_t *req, *rep, *id;
	ssize_t n;

	chan_set_timeout(cn->c, PEER_IDLE_MS);
	while (line &&
	       (n = chan_read_line(cn->c, line, FTD_LINE_MAX)) != 0) {
		if (n < 0) {
			if (n == -EMSGSIZE) {
				rep = reply_err("request longer than %d bytes",
						FTD_LINE_MAX - 1);
				chan_write_json(cn->c, rep);
				json_decref(rep);
			}
			break;
		}
		req = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
		if (!req)
			rep = reply_err("bad JSON at column %d: %s",
					jerr.column, jerr.text);
		else if (!json_is_object(req))
			rep = reply_err("request must be a JSON object");
		else if (!json_is_string(json_object_get(req, "cmd")))
			rep = reply_err("request has no \"cmd\" string");
		else if (!(rep = conn_check_from(cn, req)))
			rep = conn_ask_loop(cn->d, req);
		id = json_is_object(req) ? json_object_get(req, "id") : NULL;
		if (id)
			json_object_set(rep, "id", id);
		n = chan_write_json(cn->c, rep);
		json_decref(rep);
		json_decref(req);
		if (n)
			break;
	}
	free(line);
	pthread_mutex_lock(&conns_mu);
	for (struct conn **pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == cn) {
			*pp = cn->next;
			break;
		}
	peer_conns--;
	peer_threads--;
	pthread_mutex_unlock(&conns_mu);
	chan_close(cn->c);
	free(cn);
	return NULL;
}

static void *acceptor_thread(void *arg)
{
	struct ftd *d = arg;
	struct chan_tls_cfg cfg = { .ca_file = d->ca,
				    .cert_file = d->cert,
				    .key_file = d->key,
				    .insecure = d->insecure_peers };
	struct conn *cn;
	struct chan *c;
	bool full;
	int err;

	for (;;) {
		err = chan_net_accept(d->peer_fd, &cfg, -1, &c);
		if (err) {
			/* Logged with the cause (a refused certificate, a
			 * plain-TCP client...); a failing socket must not
			 * spin. */
			if (err != -EACCES && err != -EPROTO &&
			    err != -ECONNRESET && err != -ETIMEDOUT)
				usleep(100 * 1000);
			continue;
		}
		pthread_mutex_lock(&conns_mu);
		full = peer_conns >= PEER_CONNS_MAX;
		if (!full)
			peer_conns++;
		pthread_mutex_unlock(&conns_mu);
		cn = full ? NULL : malloc(sizeof(*cn));
		if (!cn) {
			if (full)
				log_warn("peers: more than %d connections; "
					 "refusing one",
					 PEER_CONNS_MAX);
			chan_close(c);
			continue;
		}
		cn->d = d;
		cn->c = c;
		pthread_mutex_lock(&conns_mu);
		cn->next = conns;
		conns = cn;
		peer_threads++;
		pthread_mutex_unlock(&conns_mu);
		if (spawn_thread(conn_thread, cn)) {
			log_err("peers: cannot start a thread");
			pthread_mutex_lock(&conns_mu);
			conns = cn->next;
			peer_conns--;
			peer_threads--;
			pthread_mutex_unlock(&conns_mu);
			chan_close(c);
			free(cn);
		}
	}
	return NULL;
}

int peer_listen_start(struct ftd *d)
{
	int i, err;

	ev_async_init(&d->async_w, async_cb);
	d->async_w.data = d;
	ev_async_start(d->loop, &d->async_w);
	for (i = 0; d->peering && i < PEER_ACCEPTORS; i++) {
		err = spawn_thread(acceptor_thread, d);
		if (err) {
			log_err("peers: cannot start a thread: %s",
				strerror(-err));
			return err;
		}
	}
	return 0;
}

/* ---- calls to other hosts ---- */

struct pcall {
	struct ftd *d;
	char name[FTD_NAME_MAX + 1];
	char addr[FTD_ADDR_MAX];
	json_t *req;
	int timeout_ms;
	peer_cb cb;
	void *arg;
	json_t *rep;
	char err[1536];
};

/* A sentence for a failed connection to peer `name` at `addr`. */
static void describe_connect(const char *name, const char *addr, int err,
			     char *out, size_t outlen)
{
	const char *detail = err_detail();
	char why[700];

	switch (err) {
	case -ECONNREFUSED:
		snprintf(why, sizeof(why),
			 "connection refused (is ftd running there and "
			 "listening on that port?)");
		break;
	case -ETIMEDOUT:
		snprintf(why, sizeof(why), "%s",
			 strstr(detail, "handshake")
				 ? detail
				 : "no answer in time (host down, link cut "
				   "or port filtered?)");
		break;
	case -EACCES:
		/* chan_net's words, turned to say whose certificate. */
		if (!strncmp(detail, "TLS handshake: ", 15))
			detail += 15;
		if (!strncmp(detail, "peer certificate verify failed: ", 32))
			snprintf(why, sizeof(why),
				 "the TLS handshake failed on a certificate: "
				 "%s's certificate is not acceptable here: %s",
				 name, detail + 32);
		else if (!strncmp(detail, "peer refused our certificate", 28))
			snprintf(why, sizeof(why),
				 "the TLS handshake failed on a certificate: "
				 "%s refused this host's certificate%s",
				 name, detail + 28);
		else
			snprintf(why, sizeof(why),
				 "the TLS handshake failed on a certificate: "
				 "%s",
				 *detail ? detail : "refused");
		break;
	case -EPROTO:
		snprintf(why, sizeof(why),
			 "it does not speak TLS 1.3 (a plain-TCP peer, or not "
			 "an ftd?)");
		break;
	case -ECONNRESET:
		snprintf(why, sizeof(why),
			 "it closed the connection during the TLS handshake "
			 "(did it refuse this host's certificate?)");
		break;
	case -EINVAL:
		snprintf(why, sizeof(why), "%s",
			 *detail ? detail : "bad address or configuration");
		break;
	default:
		snprintf(why, sizeof(why), "%s", strerror(-err));
	}
	snprintf(out, outlen, "cannot reach %s at %s: %s", name, addr, why);
}

static void pcall_done(struct ftd *d, void *arg)
{
	struct pcall *p = arg;

	p->cb(d, p->arg, p->rep, p->rep ? NULL : p->err);
	free(p);
}

static void *pcall_thread(void *arg)
{
	struct pcall *p = arg;
	struct ftd *d = p->d;
	struct chan_tls_cfg cfg = { .ca_file = d->ca,
				    .cert_file = d->cert,
				    .key_file = d->key,
				    .peer_name = p->name,
				    .insecure = d->insecure_peers };
	char *line = malloc(FTD_LINE_MAX);
	struct chan *c = NULL;
	ssize_t n;
	int err;

	*last_err = '\0';
	if (!line) {
		snprintf(p->err, sizeof(p->err), "out of memory");
		goto out;
	}
	err = chan_net_connect(p->addr, &cfg,
			       p->timeout_ms < PEER_CONNECT_MS
				       ? p->timeout_ms
				       : PEER_CONNECT_MS,
			       &c);
	if (err) {
		describe_connect(p->name, p->addr, err, p->err,
				 sizeof(p->err));
		goto out;
	}
	chan_set_timeout(c, (unsigned)p->timeout_ms);
	err = chan_write_json(c, p->req);
	if (err) {
		snprintf(p->err, sizeof(p->err),
			 "%s at %s: cannot send the request: %s", p->name,
			 p->addr, strerror(-err));
		goto out;
	}
	n = chan_read_line(c, line, FTD_LINE_MAX);
	if (n <= 0) {
		snprintf(p->err, sizeof(p->err),
			 "%s at %s: %s", p->name, p->addr,
			 n == 0 || n == -EPIPE || n == -ECONNRESET
				 ? "it closed the connection without an "
				   "answer"
			 : n == -ETIMEDOUT
				 ? "no answer in time (host down or link "
				   "cut?)"
				 : strerror((int)-n));
		goto out;
	}
	p->rep = json_loads(line, 0, NULL);
	if (!json_is_object(p->rep)) {
		json_decref(p->rep);
		p->rep = NULL;
		snprintf(p->err, sizeof(p->err),
			 "%s at %s: its answer is not a JSON object", p->name,
			 p->addr);
	}
out:
	chan_close(c);
	free(line);
	json_decref(p->req);
	p->req = NULL;
	ftd_post(d, pcall_done, p);
	thread_count(-1);
	return NULL;
}

void peer_call(struct ftd *d, const char *name, const char *addr,
	       json_t *req, int timeout_ms, peer_cb cb, void *arg)
{
	struct pcall *p = calloc(1, sizeof(*p));

	if (!p) {
		json_decref(req);
		cb(d, arg, NULL, "out of memory");
		return;
	}
	p->d = d;
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->addr, sizeof(p->addr), "%s", addr);
	json_object_set_new(req, "from", json_string(d->name));
	p->req = req;
	p->timeout_ms = timeout_ms;
	p->cb = cb;
	p->arg = arg;
	thread_count(1);
	if (spawn_thread(pcall_thread, p)) {
		thread_count(-1);
		snprintf(p->err, sizeof(p->err),
			 "cannot start a thread to call %s", name);
		json_decref(req);
		p->req = NULL;
		ftd_post(d, pcall_done, p); /* callbacks never run inline */
	}
}

/* ---- heartbeat links ---- */

struct peer_link {
	struct ftd *d;
	char name[FTD_NAME_MAX + 1];
	char addr[FTD_ADDR_MAX];
	unsigned interval_ms, timeout_ms;
	link_cb cb;
	void *arg;
	bool stopped; /* loop thread: peer_link_stop() was called */
	/* shared with the link's thread */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool quit, kick;
	json_t *payload;
	struct chan *c;
};

struct link_post {
	struct peer_link *l;
	json_t *rep;
	double sent;
	bool free_link;
	char err[1536];
};

double ftd_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void link_post_run(struct ftd *d, void *arg)
{
	struct link_post *lp = arg;
	struct peer_link *l = lp->l;

	if (lp->free_link) {
		json_decref(l->payload);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
	} else if (!l->stopped) {
		l->cb(d, l->arg, lp->rep, lp->sent, lp->rep ? NULL : lp->err);
		lp->rep = NULL;
	}
	json_decref(lp->rep);
	free(lp);
}

static void link_post(struct peer_link *l, json_t *rep, double sent,
		      const char *err, bool free_link)
{
	struct link_post *lp = calloc(1, sizeof(*lp));

	if (!lp) {
		log_err("out of memory posting to the loop");
		abort();
	}
	lp->l = l;
	lp->rep = rep;
	lp->sent = sent;
	lp->free_link = free_link;
	if (err)
		snprintf(lp->err, sizeof(lp->err), "%s", err);
	ftd_post(l->d, link_post_run, lp);
}

/* Wait until `until` (ftd_mono) or a stop or kick; true to go on. */
static bool link_wait(struct peer_link *l, double until)
{
	struct timespec ts;
	double now;
	bool go;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = ftd_mono();
	if (until > now) {
		double t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 +
			   (until - now);

		ts.tv_sec = (time_t)t;
		ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	}
	pthread_mutex_lock(&l->mu);
	while (!l->quit && !l->kick && until > ftd_mono() &&
	       pthread_cond_timedwait(&l->cv, &l->mu, &ts) != ETIMEDOUT)
		;
	l->kick = false;
	go = !l->quit;
	pthread_mutex_unlock(&l->mu);
	return go;
}

static void link_drop_chan(struct peer_link *l, struct chan **c)
{
	pthread_mutex_lock(&l->mu);
	l->c = NULL;
	pthread_mutex_unlock(&l->mu);
	chan_close(*c);
	*c = NULL;
}

static void *link_thread(void *arg)
{
	struct peer_link *l = arg;
	struct ftd *d = l->d;
	struct chan_tls_cfg cfg = { .ca_file = d->ca,
				    .cert_file = d->cert,
				    .key_file = d->key,
				    .peer_name = l->name,
				    .insecure = d->insecure_peers };
	char *line = malloc(FTD_LINE_MAX), err[1536];
	struct chan *c = NULL;
	json_int_t seq = 0;
	double t, backoff = l->interval_ms / 1e3;
	ssize_t n;
	int e;

	/* A dead peer would otherwise log a failed connection per beat;
	 * the loop logs the link's ups and downs instead. */
	log_set_quiet(true);
	while (line && link_wait(l, 0)) {
		if (!c) {
			*last_err = '\0';
			e = chan_net_connect(l->addr, &cfg, PEER_LINK_CONNECT_MS,
					     &c);
			if (e) {
				describe_connect(l->name, l->addr, e, err,
						 sizeof(err));
				link_post(l, NULL, 0, err, false);
				/* Retry soon, then less often: at most one
				 * attempt a second to a host that is down. */
				if (!link_wait(l, ftd_mono() + backoff))
					break;
				backoff = backoff * 2 > 1.0 ? 1.0 : backoff * 2;
				continue;
			}
			backoff = l->interval_ms / 1e3;
			chan_set_timeout(c, l->timeout_ms);
			pthread_mutex_lock(&l->mu);
			l->c = c;
			pthread_mutex_unlock(&l->mu);
		}
		pthread_mutex_lock(&l->mu);
		{
			json_t *req = l->payload ? json_deep_copy(l->payload)
						 : json_object();

			pthread_mutex_unlock(&l->mu);
			json_object_set_new(req, "cmd", json_string("hb"));
			json_object_set_new(req, "from", json_string(d->name));
			json_object_set_new(req, "seq", json_integer(++seq));
			t = ftd_mono();
			e = chan_write_json(c, req);
			json_decref(req);
		}
		n = e ? e : chan_read_line(c, line, FTD_LINE_MAX);
		if (n <= 0) {
			snprintf(err, sizeof(err), "%s at %s: %s", l->name,
				 l->addr,
				 n == 0 || n == -EPIPE || n == -ECONNRESET
					 ? "the connection closed"
				 : n == -ETIMEDOUT
					 ? "no heartbeat answer in time"
					 : strerror((int)-n));
			link_drop_chan(l, &c);
			link_post(l, NULL, 0, err, false);
			if (!link_wait(l, ftd_mono() + backoff))
				break;
			continue;
		}
		{
			json_t *rep = json_loads(line, 0, NULL);

			if (!json_is_object(rep)) {
				json_decref(rep);
				snprintf(err, sizeof(err),
					 "%s at %s: its heartbeat answer is "
					 "not a JSON object",
					 l->name, l->addr);
				link_drop_chan(l, &c);
				link_post(l, NULL, 0, err, false);
				if (!link_wait(l, ftd_mono() + backoff))
					break;
				continue;
			}
			link_post(l, rep, t, NULL, false);
		}
		if (!link_wait(l, t + l->interval_ms / 1e3))
			break;
	}
	if (c)
		link_drop_chan(l, &c);
	free(line);
	link_post(l, NULL, 0, NULL, true); /* after every earlier post */
	thread_count(-1);
	return NULL;
}

struct peer_link *peer_link_start(struct ftd *d, const char *name,
				  const char *addr, unsigned interval_ms,
				  unsigned timeout_ms, link_cb cb, void *arg)
{
	struct peer_link *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->d = d;
	snprintf(l->name, sizeof(l->name), "%s", name);
	snprintf(l->addr, sizeof(l->addr), "%s", addr);
	l->interval_ms = interval_ms;
	l->timeout_ms = timeout_ms;
	l->cb = cb;
	l->arg = arg;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	thread_count(1);
	if (spawn_thread(link_thread, l)) {
		thread_count(-1);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
		return NULL;
	}
	return l;
}

void peer_link_payload(struct peer_link *l, json_t *payload, bool now)
{
	pthread_mutex_lock(&l->mu);
	json_decref(l->payload);
	l->payload = payload;
	if (now) {
		l->kick = true;
		pthread_cond_signal(&l->cv);
	}
	pthread_mutex_unlock(&l->mu);
}

void peer_link_stop(struct peer_link *l)
{
	if (!l)
		return;
	l->stopped = true;
	pthread_mutex_lock(&l->mu);
	l->quit = true;
	if (l->c)
		chan_shutdown(l->c);
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

void peer_shutdown(struct ftd *d, double timeout)
{
	double end = ftd_mono() + timeout;
	struct conn *cn;
	int n;

	for (;;) {
		pthread_mutex_lock(&conns_mu);
		for (cn = conns; cn; cn = cn->next)
			chan_shutdown(cn->c);
		n = peer_threads;
		pthread_mutex_unlock(&conns_mu);
		if (!n || ftd_mono() > end)
			break;
		/* A thread may wait for the loop: answer it. */
		async_cb(d->loop, &d->async_w, 0);
		usleep(10 * 1000);
	}
	if (n)
		log_warn("peers: %d connection(s) still open at exit", n);
}

/* ---- addresses and the peers file ---- */

int addr_split(const char *addr, char *host, size_t hlen, int *port)
{
	const char *colon, *h = addr;
	char *end;
	size_t n;
	long v;

	if (!addr || !*addr)
		return -EINVAL;
	if (*addr == '[') {
		const char *close = strchr(addr, ']');

		if (!close || close[1] != ':')
			return -EINVAL;
		h = addr + 1;
		n = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
			return -EINVAL;
		n = (size_t)(colon - addr);
	}
	if (n >= hlen || !colon[1] ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return -EINVAL;
	errno = 0;
	v = strtol(colon + 1, &end, 10);
	if (errno || v < 0 || v > 65535)
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = '\0';
	*port = (int)v;
	return 0;
}

/*
 * Read the peers file; for each entry call fn(name, addr, arg) (stop and
 * return its non-zero result).  A missing file that was not given with
 * --peers has no entries.  Return 0, or -errno with err filled.
 */
static int peers_read(struct ftd *d,
		      int (*fn)(const char *name, const char *addr, void *arg),
		      void *arg, char *err, size_t errlen)
{
	char line[512], host[FTD_ADDR_MAX], addr[FTD_ADDR_MAX];
	char *name, *a, *extra, *save;
	FILE *f = fopen(d->peers_file, "re");
	int lineno = 0, port, rc = 0;

	if (!f) {
		if (errno == ENOENT && !d->peers_explicit)
			return 0;
		rc = -errno;
		snprintf(err, errlen, "peers file %s: %s", d->peers_file,
			 strerror(errno));
		return rc;
	}
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			snprintf(err, errlen, "%s:%d: line too long",
				 d->peers_file, lineno);
			rc = -EINVAL;
			break;
		}
		*strchrnul(line, '#') = '\0';
		name = strtok_r(line, " \t\r\n", &save);
		if (!name)
			continue;
		a = strtok_r(NULL, " \t\r\n", &save);
		extra = a ? strtok_r(NULL, " \t\r\n", &save) : NULL;
		if (!a || extra || strlen(name) > FTD_NAME_MAX ||
		    strlen(a) >= sizeof(addr) - 8) {
			snprintf(err, errlen,
				 "%s:%d: expected \"NAME ADDR:PORT\"",
				 d->peers_file, lineno);
			rc = -EINVAL;
			break;
		}
		/* A bare host name or IPv4 address gets the default port. */
		if (!strchr(a, ':'))
			snprintf(addr, sizeof(addr), "%s:%s", a,
				 FTD_PEER_PORT);
		else
			snprintf(addr, sizeof(addr), "%s", a);
		if (addr_split(addr, host, sizeof(host), &port) || !*host ||
		    port <= 0) {
			snprintf(err, errlen,
				 "%s:%d: bad address '%s' for %s (HOST:PORT "
				 "or [V6]:PORT)",
				 d->peers_file, lineno, a, name);
			rc = -EINVAL;
			break;
		}
		rc = fn(name, addr, arg);
		if (rc)
			break;
	}
	fclose(f);
	return rc;
}

struct lookup {
	const char *name;
	char *addr;
	size_t alen;
	bool found;
};

static int lookup_fn(const char *name, const char *addr, void *arg)
{
	struct lookup *l = arg;

	if (strcmp(name, l->name))
		return 0;
	snprintf(l->addr, l->alen, "%s", addr);
	l->found = true;
	return 1;
}

int peers_lookup(struct ftd *d, const char *name, char *addr, size_t alen,
		 char *err, size_t errlen)
{
	struct lookup l = { .name = name, .addr = addr, .alen = alen };
	int rc = peers_read(d, lookup_fn, &l, err, errlen);

	if (rc < 0)
		return rc;
	if (!l.found) {
		snprintf(err, errlen,
			 "unknown host %s: not in the peers file %s (lines "
			 "\"NAME ADDR:PORT\")",
			 name, d->peers_file);
		return -ENOENT;
	}
	return 0;
}

static int list_fn(const char *name, const char *addr, void *arg)
{
	json_array_append_new(arg, json_pack("{s:s, s:s}", "name", name,
					     "addr", addr));
	return 0;
}

json_t *peers_list(struct ftd *d)
{
	char err[FTD_REASON_MAX];
	json_t *a = json_array();

	if (d->peering)
		peers_read(d, list_fn, a, err, sizeof(err));
	return a;
}

static int check_fn(const char *name, const char *addr, void *arg)
{
	(*(int *)arg)++;
	return 0;
}

int peers_check(struct ftd *d)
{
	char err[FTD_REASON_MAX];
	int n = 0;

	if (peers_read(d, check_fn, &n, err, sizeof(err))) {
		log_err("%s", err);
		return -EINVAL;
	}
	if (!n && d->peering)
		log_info("no peers in %s: migrations have nowhere to go",
			 d->peers_file);
	return 0;
}

/* ---- this host's certificate ---- */

int cert_check(struct ftd *d, char *err, size_t errlen)
{
	char when[64] = "";
	const ASN1_TIME *t;
	FILE *f = fopen(d->cert, "re");
	BIO *b;
	X509 *x;
	int rc = 0;
	long n;

	if (!f) {
		snprintf(err, errlen, "this host's certificate %s: %s",
			 d->cert, strerror(errno));
		return -errno;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!x) {
		snprintf(err, errlen,
			 "this host's certificate %s: not a PEM certificate",
			 d->cert);
		return -EINVAL;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		t = X509_get0_notAfter(x);
		rc = -EKEYEXPIRED;
	} else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		t = X509_get0_notBefore(x);
		rc = -EKEYREJECTED;
	} else {
		t = NULL;
	}
	if (t) {
		b = BIO_new(BIO_s_mem());
		if (b && ASN1_TIME_print(b, t)) {
			n = BIO_read(b, when, sizeof(when) - 1);
			when[n > 0 ? n : 0] = '\0';
		}
		BIO_free(b);
		snprintf(err, errlen,
			 "this host's certificate %s %s %s (renew it: "
			 "tools/ft-certs host %s %s)",
			 d->cert,
			 rc == -EKEYEXPIRED ? "expired on"
					    : "is not valid before",
			 when, d->config_dir, d->name);
	} else if (X509_check_host(x, d->name, 0, 0, NULL) != 1) {
		snprintf(err, errlen,
			 "this host's certificate %s is not issued for %s "
			 "(peers check the name)",
			 d->cert, d->name);
		rc = -EACCES;
	}
	X509_free(x);
	return rc;
}
