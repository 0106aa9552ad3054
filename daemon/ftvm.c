// SPDX-License-Identifier: MIT
/*
 * ftvm - one process per VM: boots a guest image or restores a saved VM on
 * the built-in micro-VMM, and serves a control socket (JSON lines,
 * docs/control-protocol.md).
 *
 *   ftvm run --image FILE [--mem SIZE] [--cmdline ARGS] [options]
 *   ftvm restore --from FILE [options]
 *   ftvm incoming --listen ADDR [TLS options] [options]
 *   ftvm backup --listen ADDR [TLS options] [options]
 *   ftvm ctl --control SOCKET COMMAND [ARGS]
 *
 * Live migration runs on a worker thread (migrate/precopy.h) while the
 * event loop keeps serving the control socket: the source side from the
 * `migrate` command, the destination side in `ftvm incoming`.  The worker
 * reports to the loop through an ev_async; the loop owns every client.
 * Checkpoint protection works the same way: the primary's worker runs
 * ckpt_run from the `protect` command (checkpoint/ckpt.h), the backup's
 * (`ftvm backup`) receives into a replica until `failover` starts it.
 *
 * Exit status: the guest's own status when it exits; 125 when ftvm itself
 * fails (bad arguments, unusable image or stream); 126 when the guest
 * crashed (the reason with registers is printed); 0 after `quit`.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "chan_net.h"
#include "checkpoint/ckpt.h"
#include "channel.h"
#include "cli.h"
#include "kvm/kvm.h"
#include "log.h"
#include "migrate/precopy.h"
#include "migrate/snapshot.h"
#include "stream.h"

#define EXIT_VMM_ERROR 125
#define EXIT_CRASHED   126
#define CTL_LINE_MAX   (64 * 1024)
#define CTL_CLIENTS_MAX 16

struct ctl_client {
	ev_io io;
	struct vm *vm;
	char buf[CTL_LINE_MAX];
	size_t len;
	bool in_use;
	bool waiting; /* a deferred reply (migrate) is due: read no more */
	unsigned gen; /* bumped per connection, to spot a reused slot */
};

/* A client waiting for the deferred reply of a long command (migrate,
 * protect), with the progress events it asked for; the loop's only. */
struct ctl_waiter {
	struct ctl_client *cl; /* NULL: nobody waits */
	unsigned gen;	       /* cl->gen when it asked: a reused slot is not it */
	json_t *id;	       /* the request's "id", echoed in every line */
	bool progress;
};

/* TLS settings of a migration, with room for the strings. */
struct mig_tls {
	struct chan_tls_cfg cfg;
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], peer[256];
};

enum mig_phase { MIG_NONE, MIG_ACTIVE, MIG_DONE };

/* A migration on its worker thread, either direction. */
struct mig_job {
	struct vm *vm;
	pthread_t thread;
	ev_async async;
	pthread_mutex_t lock; /* the fields below */
	enum mig_phase phase;
	struct mig_progress prog;
	bool prog_new;
	bool cancel;
	int err;
	struct mig_stats st;
	/* source: request */
	char to[256];
	struct mig_tls tls;
	struct mig_params p;
	struct ctl_waiter w; /* the migrate command's client */
	/* destination */
	int lfd;
	unsigned timeout_ms;
	const void *cfg;
	const char *disk, *disk_tmp;
	char msg[512];
	uint64_t bytes_in;
	struct chan *chan; /* while receiving, for bytes_in */
};

/* Checkpoint protection of this VM (the primary), on a worker thread. */
struct prot_job {
	struct vm *vm;
	pthread_t thread;
	bool running; /* the worker exists: join it */
	ev_async async;
	struct ckpt *ck; /* while protected, syncing or holding output */
	struct ckpt_params p;
	char to[256];
	struct mig_tls tls;
	bool hold_on_loss; /* else continue unprotected */
	pthread_mutex_t lock; /* the fields below */
	struct chan *chan;
	struct mig_progress prog;
	bool prog_new, protected_ev, done;
	int err;
	char msg[320];
	/* the protect command's client, until the first epoch commits */
	struct ctl_waiter w;
	uint64_t t0;
};

/* The backup's receiver (ftvm backup), on a worker thread. */
struct backup_job {
	struct vm *vm;
	pthread_t thread;
	bool running;
	ev_async async;
	int lfd, stop_efd;
	struct mig_tls tls;
	unsigned io_timeout_ms;
	const struct kvm_cfg *cfg;
	const char *disk, *disk_tmp;
	bool auto_failover;
	struct ckpt_replica rp;
	pthread_mutex_t lock; /* the fields below */
	struct chan *chan;
	bool done, ended, lost;
	uint64_t lost_ns;
	char peer[300];
};

struct vm {
	const struct hv_ops *ops;
	struct hv_domain *dom;
	struct ev_loop *loop;
	ev_io event_w;
	ev_io listen_w;
	ev_signal sigint_w, sigterm_w;
	const char *ctl_path;
	int listen_fd;
	int exit_code;
	bool paused;          /* paused by a control command */
	bool in_doubt;        /* a migration left the VM paused: resolve */
	bool incoming;        /* ftvm incoming, before the VM runs */
	bool backup;          /* ftvm backup, before a failover */
	bool fenced;          /* protection fenced the VM: paused for good */
	const char *tap;      /* the NIC's TAP, for netbuf backends */
	char listen_addr[300];
	uint64_t started_ns;
	struct mig_job mig;
	json_t *last_mig;     /* the last migration's outcome, for status */
	struct prot_job prot;
	struct backup_job bk;
	json_t *failover;     /* this copy took over: when, from which epoch */
	struct ctl_client clients[CTL_CLIENTS_MAX];
};

static void vm_attach(struct vm *vm);
static void vm_watch(struct vm *vm);

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static const char *state_name(enum hv_run_state s)
{
	switch (s) {
	case HV_STATE_PAUSED: return "paused";
	case HV_STATE_RUNNING: return "running";
	case HV_STATE_EXITED: return "exited";
	case HV_STATE_CRASHED: return "crashed";
	}
	return "unknown";
}

static void vm_stop(struct vm *vm, int code)
{
	vm->exit_code = code;
	ev_break(vm->loop, EVBREAK_ALL);
}

/* ---- control commands ------------------------------------------------- */

static json_t *reply_err(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static json_t *reply_err(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

static json_t *mig_progress_json(const struct mig_progress *pr)
{
	uint64_t eta = pr->rate ? pr->remaining * 1000 / pr->rate : 0;

	return json_pack("{s:i, s:b, s:I, s:I, s:I, s:I, s:I, s:i}", "round",
			 (int)pr->round, "paused", pr->paused, "sent",
			 (json_int_t)pr->sent, "remaining",
			 (json_int_t)pr->remaining, "rate",
			 (json_int_t)pr->rate, "eta_ms", (json_int_t)eta,
			 "elapsed_ms", (json_int_t)(pr->elapsed_ns / 1000000),
			 "throttle", (int)pr->throttle);
}

static json_t *prot_status(struct vm *vm);
static json_t *backup_status(struct vm *vm);
static json_t *cmd_failover(struct vm *vm, json_t *req, struct ctl_client *cl);

static json_t *cmd_status(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	struct hv_status st;
	struct hv_dom_info info;
	json_t *rep;

	if (vm->backup)
		return backup_status(vm);
	if (vm->incoming) {
		pthread_mutex_lock(&vm->mig.lock);
		rep = json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "state",
				"incoming", "listen", vm->listen_addr,
				"bytes_in",
				(json_int_t)(vm->mig.chan
						     ? vm->mig.chan->bytes_in
						     : vm->mig.bytes_in));
		pthread_mutex_unlock(&vm->mig.lock);
		return rep;
	}
	vm->ops->status(vm->dom, &st);
	vm->ops->info(vm->dom, &info);
	rep = json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:s}", "ok", 1,
			"state",
			vm->mig.phase == MIG_ACTIVE ? "migrating"
			: vm->in_doubt		    ? "in-doubt"
						    : state_name(st.state),
			"mem", (json_int_t)info.mem_size, "exits",
			(json_int_t)st.exits, "hypercalls",
			(json_int_t)st.hypercalls, "uptime_ms",
			(json_int_t)((now_ns() - vm->started_ns) / 1000000),
			"reason", st.reason);
	if (vm->mig.phase == MIG_ACTIVE) {
		pthread_mutex_lock(&vm->mig.lock);
		json_object_set_new(rep, "migration",
				    mig_progress_json(&vm->mig.prog));
		pthread_mutex_unlock(&vm->mig.lock);
	}
	if (vm->last_mig)
		json_object_set(rep, "last_migration", vm->last_mig);
	if (vm->prot.ck) {
		json_t *p = prot_status(vm);

		if (p)
			json_object_set_new(rep, "protection", p);
	}
	if (vm->fenced)
		json_object_set_new(rep, "state", json_string("fenced"));
	if (vm->failover)
		json_object_set(rep, "failover", vm->failover);
	return rep;
}

/* Commands that change the VM are refused while it is moving. */
static json_t *busy(struct vm *vm)
{
	if (vm->mig.phase == MIG_ACTIVE)
		return reply_err("a migration is in progress");
	if (vm->in_doubt)
		return reply_err("a migration is in doubt: the VM may run on "
				 "the destination; use \"resolve\" first");
	if (vm->fenced)
		return reply_err("the VM is fenced (its protection was lost "
				 "and another copy may run): only \"quit\"");
	return NULL;
}

static json_t *cmd_pause(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	json_t *b = busy(vm);

	if (b)
		return b;
	if (vm->paused)
		return reply_err("already paused");
	vm->ops->pause(vm->dom);
	vm->paused = true;
	return json_pack("{s:b, s:s}", "ok", 1, "state", "paused");
}

static json_t *cmd_resume(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	json_t *b = busy(vm);

	if (b)
		return b;
	if (!vm->paused)
		return reply_err("not paused");
	vm->ops->unpause(vm->dom);
	vm->paused = false;
	return json_pack("{s:b, s:s}", "ok", 1, "state", "running");
}

static const char *req_file(json_t *req)
{
	const char *f = json_string_value(json_object_get(req, "file"));

	return f && *f && strlen(f) < PATH_MAX ? f : NULL;
}

/* Save to FILE.tmp, then rename: a failed save never clobbers FILE. */
static json_t *cmd_save(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	const char *file = req_file(req);
	json_t *stop_j = json_object_get(req, "stop");
	bool stop = json_is_true(stop_j);
	char tmp[PATH_MAX + 8];
	struct snap_stats stats;
	struct chan *c;
	uint64_t t0 = now_ns(), t1;
	int err;

	json_t *b = busy(vm);

	if (b)
		return b;
	if (!file)
		return reply_err("save needs \"file\": a path");
	if (stop_j && !json_is_boolean(stop_j))
		return reply_err("\"stop\" must be true or false");
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	err = chan_open_file(&c, tmp, O_WRONLY | O_CREAT | O_TRUNC);
	if (err)
		return reply_err("save to %s failed: %s: %s; the VM keeps "
				 "running", file, tmp, strerror(-err));
	vm->ops->pause(vm->dom);
	err = snap_save(vm->ops, vm->dom, c, &stats);
	if (!err)
		err = chan_flush(c, true);
	chan_close(c);
	if (!err && rename(tmp, file) < 0)
		err = -errno;
	if (err) {
		unlink(tmp);
		vm->ops->unpause(vm->dom);
		return reply_err("save to %s failed: %s; the VM keeps running",
				 file, strerror(-err));
	}
	t1 = now_ns();
	if (stop) {
		log_info("saved to %s; stopping as asked", file);
		vm_stop(vm, 0);
	} else {
		vm->ops->unpause(vm->dom);
	}
	return json_pack("{s:b, s:s, s:I, s:I, s:I, s:f}", "ok", 1, "file",
			 file, "bytes", (json_int_t)stats.bytes, "pages",
			 (json_int_t)stats.pages, "zero_pages",
			 (json_int_t)stats.zero_pages, "seconds",
			 (double)(t1 - t0) / 1e9);
}

static json_t *cmd_dump(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	const char *file = req_file(req);
	int fd, err;

	json_t *b = busy(vm);

	if (b)
		return b;
	if (!file)
		return reply_err("dump needs \"file\": a path");
	fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return reply_err("%s: %s", file, strerror(errno));
	vm->ops->pause(vm->dom);
	err = kvm_dump_ram(vm->dom, fd);
	vm->ops->unpause(vm->dom);
	close(fd);
	if (err)
		return reply_err("dump to %s failed: %s", file,
				 strerror(-err));
	return json_pack("{s:b, s:s}", "ok", 1, "file", file);
}

static json_t *cmd_quit(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	if (vm->mig.phase == MIG_ACTIVE)
		return reply_err("a migration is in progress (migrate-cancel "
				 "ends it)");
	vm_stop(vm, 0);
	return json_pack("{s:b}", "ok", 1);
}


/* ---- live migration: source ------------------------------------------ */

static void client_reply(struct ctl_client *cl, json_t *rep);
static void client_resume(struct ctl_client *cl);

/* mig_send's progress callback (worker thread). */
static int mig_progress_cb(void *ctx, const struct mig_progress *pr)
{
	struct mig_job *j = ctx;
	bool cancel;

	pthread_mutex_lock(&j->lock);
	j->prog = *pr;
	j->prog_new = true;
	cancel = j->cancel;
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return cancel ? -ECANCELED : 0;
}

static void *mig_send_main(void *arg)
{
	struct mig_job *j = arg;
	struct chan *c = NULL;
	int err;

	err = chan_net_connect(j->to, &j->tls.cfg, (int)j->p.timeout_ms, &c);
	if (err) {
		/* chan_net logged the cause in words; pass it on. */
		snprintf(j->st.error, sizeof(j->st.error),
			 "cannot connect to %.100s: %s", j->to,
			 *log_last_err() ? log_last_err() : strerror(-err));
	} else {
		err = mig_send(j->vm->ops, j->vm->dom, c, &j->p, &j->st);
		chan_close(c);
	}
	pthread_mutex_lock(&j->lock);
	j->err = err;
	j->phase = MIG_DONE;
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return NULL;
}

static void waiter_set(struct ctl_waiter *w, struct ctl_client *cl,
		       json_t *req, bool progress)
{
	w->cl = cl;
	w->gen = cl->gen;
	w->id = json_incref(json_object_get(req, "id"));
	w->progress = progress;
	cl->waiting = true;
}

/* The waiting client, if it is still connected. */
static struct ctl_client *waiter_client(const struct ctl_waiter *w)
{
	struct ctl_client *cl = w->cl;

	return cl && cl->in_use && cl->gen == w->gen ? cl : NULL;
}

/* A progress event, if the client wants them. */
static void waiter_progress(struct ctl_waiter *w, const struct mig_progress *pr)
{
	struct ctl_client *cl = waiter_client(w);
	json_t *ev;

	if (!cl || !w->progress)
		return;
	ev = mig_progress_json(pr);
	json_object_set_new(ev, "event", json_string("progress"));
	if (w->id)
		json_object_set(ev, "id", w->id);
	client_reply(cl, ev);
}

/* The final reply (taken); the client reads requests again. */
static void waiter_reply(struct ctl_waiter *w, json_t *rep)
{
	struct ctl_client *cl = waiter_client(w);

	if (w->id)
		json_object_set(rep, "id", w->id);
	json_decref(w->id);
	*w = (struct ctl_waiter){0};
	if (cl) {
		client_reply(cl, rep);
		client_resume(cl);
	} else {
		json_decref(rep);
	}
}

/* The command failed to start: nobody waits after all. */
static void waiter_drop(struct ctl_waiter *w)
{
	if (w->cl)
		w->cl->waiting = false;
	json_decref(w->id);
	*w = (struct ctl_waiter){0};
}

static json_t *mig_summary(const struct mig_stats *st)
{
	json_t *j = json_pack("{s:b, s:f, s:f, s:f, s:I, s:i, s:I, s:I, s:I, "
			      "s:i}",
			      "ok", 1, "total_ms", (double)st->total_ns / 1e6,
			      "downtime_ms", (double)st->downtime_ns / 1e6,
			      "stop_copy_ms", (double)st->stop_copy_ns / 1e6,
			      "bytes", (json_int_t)st->bytes, "rounds",
			      (int)st->rounds, "pages", (json_int_t)st->pages,
			      "final_pages", (json_int_t)st->final_pages,
			      "disk_blocks", (json_int_t)st->disk_blocks,
			      "throttle", (int)st->throttle);

	json_object_set_new(j, "lz4_pages", json_integer((json_int_t)st->pages_lz4));
	json_object_set_new(j, "xor_pages", json_integer((json_int_t)st->pages_xor));
	json_object_set_new(j, "page_bytes",
			    json_integer((json_int_t)st->page_bytes));
	json_object_set_new(j, "cache_hits",
			    json_integer((json_int_t)st->cache_hits));
	json_object_set_new(j, "cache_misses",
			    json_integer((json_int_t)st->cache_misses));
	return j;
}

/* The loop's side of the source worker: progress events, the end. */
static void mig_send_async(struct vm *vm)
{
	struct mig_job *j = &vm->mig;
	struct mig_progress pr;
	bool prog_new, done;
	json_t *rep;

	pthread_mutex_lock(&j->lock);
	pr = j->prog;
	prog_new = j->prog_new;
	j->prog_new = false;
	done = j->phase == MIG_DONE;
	pthread_mutex_unlock(&j->lock);
	if (prog_new && !done)
		waiter_progress(&j->w, &pr);
	if (!done)
		return;
	pthread_join(j->thread, NULL);
	j->phase = MIG_NONE;
	if (!j->err) {
		rep = mig_summary(&j->st);
		log_info("migrated to %s in %.0f ms (downtime %.1f ms); this "
			 "copy stops",
			 j->to, (double)j->st.total_ns / 1e6,
			 (double)j->st.downtime_ns / 1e6);
		vm_stop(vm, 0);
	} else if (j->err == -EINPROGRESS) {
		vm->in_doubt = true;
		rep = json_pack("{s:b, s:s, s:s}", "ok", 0, "error",
				j->st.error, "state", "in-doubt");
	} else {
		rep = json_pack("{s:b, s:s, s:s}", "ok", 0, "error",
				j->st.error, "state", "running");
		log_err("migration to %s failed: %s; the VM keeps running "
			"here",
			j->to, j->st.error);
	}
	json_decref(vm->last_mig);
	vm->last_mig = json_deep_copy(rep);
	json_object_set_new(vm->last_mig, "to", json_string(j->to));
	waiter_reply(&j->w, rep);
}

/* Copy an optional string member into dst; false if it is not a string
 * or too long. */
static bool req_str(json_t *req, const char *key, char *dst, size_t len)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return true;
	if (!json_is_string(v) || json_string_length(v) >= len)
		return false;
	memcpy(dst, json_string_value(v), json_string_length(v) + 1);
	return true;
}

/* An optional non-negative integer member. */
static bool req_uint(json_t *req, const char *key, uint64_t max,
		     uint64_t *out)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) > max)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static bool req_bool(json_t *req, const char *key, bool *out)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return true;
	if (!json_is_boolean(v))
		return false;
	*out = json_is_true(v);
	return true;
}

/* The TLS members of a request ("ca", "cert", "key", "peer_name",
 * "insecure") into *t; NULL, or the error reply. */
static json_t *req_tls(json_t *req, const char *cmd, struct mig_tls *t)
{
	bool insecure = false;

	memset(t, 0, sizeof(*t));
	if (!req_bool(req, "insecure", &insecure))
		return reply_err("\"insecure\" must be true or false");
	if (!req_str(req, "ca", t->ca, sizeof(t->ca)) ||
	    !req_str(req, "cert", t->cert, sizeof(t->cert)) ||
	    !req_str(req, "key", t->key, sizeof(t->key)) ||
	    !req_str(req, "peer_name", t->peer, sizeof(t->peer)))
		return reply_err("\"ca\", \"cert\", \"key\" and \"peer_name\" "
				 "must be strings");
	if (!insecure && (!t->ca[0] || !t->cert[0] || !t->key[0]))
		return reply_err("%s needs \"ca\", \"cert\" and \"key\" (TLS "
				 "with certificates), or \"insecure\": true for "
				 "plain TCP (benchmarks only)",
				 cmd);
	t->cfg = (struct chan_tls_cfg){
		.ca_file = t->ca[0] ? t->ca : NULL,
		.cert_file = t->cert[0] ? t->cert : NULL,
		.key_file = t->key[0] ? t->key : NULL,
		.peer_name = t->peer[0] ? t->peer : NULL,
		.insecure = insecure,
	};
	return NULL;
}

static json_t *cmd_migrate(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	struct mig_job *j = &vm->mig;
	uint64_t downtime = MIG_DEFAULT_DOWNTIME_NS / 1000000, bw = 0,
		 timeout = MIG_DEFAULT_TIMEOUT_MS;
	bool insecure = false, abort_busy = false, autoconv = true,
	     progress = false;
	char compress[8] = "auto";
	uint64_t xbzrle = 0;
	json_t *b = busy(vm);
	int err;

	if (b)
		return b;
	if (vm->paused)
		return reply_err("the VM is paused by a command; resume it "
				 "first");
	if (vm->prot.ck)
		return reply_err("the VM is protected: \"unprotect\" it "
				 "first");
	memset(j->to, 0, sizeof(j->to));
	memset(&j->tls, 0, sizeof(j->tls));
	if (!req_str(req, "to", j->to, sizeof(j->to)) || !j->to[0])
		return reply_err("migrate needs \"to\": \"HOST:PORT\"");
	if (!req_uint(req, "downtime_ms", 60000, &downtime) || !downtime)
		return reply_err("\"downtime_ms\" must be 1..60000");
	if (!req_uint(req, "bandwidth", UINT64_MAX >> 1, &bw))
		return reply_err("\"bandwidth\" must be bytes per second "
				 "(0: unlimited)");
	if (!req_uint(req, "timeout_ms", 600000, &timeout) || timeout < 100)
		return reply_err("\"timeout_ms\" must be 100..600000");
	if (!req_bool(req, "abort_if_busy", &abort_busy) ||
	    !req_bool(req, "auto_converge", &autoconv) ||
	    !req_bool(req, "progress", &progress))
		return reply_err("\"abort_if_busy\", \"auto_converge\" and "
				 "\"progress\" must be true or false");
	if (!req_str(req, "compress", compress, sizeof(compress)) ||
	    (strcmp(compress, "none") && strcmp(compress, "lz4") &&
	     strcmp(compress, "auto")))
		return reply_err("\"compress\" must be \"none\", \"lz4\" or "
				 "\"auto\"");
	if (!req_uint(req, "xbzrle_cache", 64ULL << 30, &xbzrle) ||
	    (xbzrle && xbzrle < 2 * 4096))
		return reply_err("\"xbzrle_cache\" must be 0 (off) or 8192 .. "
				 "64 GiB bytes");
	b = req_tls(req, "migrate", &j->tls);
	if (b)
		return b;
	insecure = j->tls.cfg.insecure;
	mig_params_init(&j->p);
	j->p.downtime_ns = downtime * 1000000;
	j->p.max_rate = bw;
	j->p.abort_if_busy = abort_busy;
	j->p.auto_converge = autoconv;
	j->p.timeout_ms = (unsigned)timeout;
	j->p.compress = !strcmp(compress, "none")  ? STREAM_COMP_NONE
			: !strcmp(compress, "lz4") ? STREAM_COMP_LZ4
						   : STREAM_COMP_AUTO;
	j->p.xbzrle_bytes = xbzrle;
	j->p.progress = mig_progress_cb;
	j->p.progress_ctx = j;
	memset(&j->st, 0, sizeof(j->st));
	j->cancel = j->prog_new = false;
	memset(&j->prog, 0, sizeof(j->prog));
	waiter_set(&j->w, cl, req, progress);
	j->phase = MIG_ACTIVE;
	err = -pthread_create(&j->thread, NULL, mig_send_main, j);
	if (err) {
		j->phase = MIG_NONE;
		waiter_drop(&j->w);
		return reply_err("cannot start the migration: %s",
				 strerror(-err));
	}
	log_info("migrating to %s%s", j->to,
		 insecure ? " (insecure: plain TCP)" : "");
	return NULL; /* the reply comes when it ends */
}

static json_t *cmd_migrate_cancel(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	if (vm->mig.phase != MIG_ACTIVE)
		return reply_err("no migration in progress");
	pthread_mutex_lock(&vm->mig.lock);
	vm->mig.cancel = true;
	pthread_mutex_unlock(&vm->mig.lock);
	return json_pack("{s:b}", "ok", 1);
}

static json_t *cmd_resolve(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	json_t *moved = json_object_get(req, "moved");

	if (!vm->in_doubt)
		return reply_err("no migration is in doubt");
	if (!json_is_boolean(moved))
		return reply_err("resolve needs \"moved\": true (the "
				 "destination runs the VM: stop here) or "
				 "false (it does not: resume here)");
	vm->in_doubt = false;
	if (json_is_true(moved)) {
		log_info("resolved: the VM runs on the destination; this copy "
			 "stops");
		vm_stop(vm, 0);
		return json_pack("{s:b, s:s}", "ok", 1, "state", "moved");
	}
	log_info("resolved: the VM did not move; resuming it here");
	vm->ops->unpause(vm->dom);
	return json_pack("{s:b, s:s}", "ok", 1, "state", "running");
}

/* ---- checkpoint protection: backup ------------------------------------- */

/* ckpt_recv's create: a new replica on a zeroed disk image. */
static int bk_create(void *ctx, const struct hv_dom_info *info,
		     struct hv_domain **out)
{
	struct backup_job *j = ctx;

	if (j->disk_tmp && unlink(j->disk_tmp) < 0 && errno != ENOENT) {
		log_err("%s: %s", j->disk_tmp, strerror(errno));
		return -errno;
	}
	return j->vm->ops->create(info, j->cfg, out);
}

static void *bk_main(void *arg)
{
	struct backup_job *j = arg;
	struct chan *c;
	int err;

	for (;;) {
		struct pollfd pfd[2] = {{.fd = j->stop_efd, .events = POLLIN},
					{.fd = j->lfd, .events = POLLIN}};

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents)
			break;
		/* A refused peer (certificate, plain TCP) is logged; the
		 * right primary may still come. */
		if (chan_net_accept(j->lfd, &j->tls.cfg, 5000, &c))
			continue;
		pthread_mutex_lock(&j->lock);
		j->chan = c;
		j->lost = false;
		snprintf(j->peer, sizeof(j->peer), "%s", c->name);
		pthread_mutex_unlock(&j->lock);
		log_info("replication stream from %s", c->name);
		err = ckpt_recv(j->vm->ops, c, j->io_timeout_ms, bk_create, j,
				&j->rp);
		pthread_mutex_lock(&j->lock);
		j->chan = NULL;
		if (!err)
			j->ended = true;
		else {
			j->lost = true;
			j->lost_ns = now_ns();
		}
		pthread_mutex_unlock(&j->lock);
		chan_close(c);
		ev_async_send(j->vm->loop, &j->async);
		if (!err)
			break;
	}
	pthread_mutex_lock(&j->lock);
	j->done = true;
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return NULL;
}

static int bk_start(struct vm *vm)
{
	struct backup_job *j = &vm->bk;
	int err;

	pthread_mutex_lock(&j->lock);
	j->done = j->ended = false;
	pthread_mutex_unlock(&j->lock);
	err = -pthread_create(&j->thread, NULL, bk_main, j);
	if (err) {
		log_err("cannot start the backup's receiver: %s",
			strerror(-err));
		return err;
	}
	j->running = true;
	return 0;
}

static void bk_join(struct backup_job *j)
{
	uint64_t one = 1;

	if (!j->running)
		return;
	if (write(j->stop_efd, &one, sizeof(one)) < 0)
		log_err("backup: stop: %s", strerror(errno));
	pthread_mutex_lock(&j->lock);
	chan_shutdown(j->chan);
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->thread, NULL);
	j->running = false;
	if (read(j->stop_efd, &one, sizeof(one)) < 0)
		log_warn("backup: stop: %s", strerror(errno));
}

/* Run the last committed epoch here.  Returns the reply. */
static json_t *bk_failover(struct vm *vm, const char *why)
{
	struct backup_job *j = &vm->bk;
	uint64_t t0 = now_ns(), lost_ns, epoch;
	struct hv_domain *d;
	bool complete;
	int err;

	pthread_mutex_lock(&j->rp.lock);
	complete = j->rp.complete;
	pthread_mutex_unlock(&j->rp.lock);
	if (!complete)
		return reply_err("no complete replica to fail over to (%s)",
				 j->rp.d ? "the initial synchronisation has not "
					   "finished"
					 : "no primary has synchronised yet");
	bk_join(j); /* a commit in progress finishes first */
	pthread_mutex_lock(&j->rp.lock);
	complete = j->rp.complete;
	d = complete ? j->rp.d : NULL;
	if (d)
		j->rp.d = NULL;
	epoch = j->rp.epoch;
	pthread_mutex_unlock(&j->rp.lock);
	if (!d) {
		bk_start(vm);
		return reply_err("the replica became unusable (%s); still "
				 "waiting for a primary",
				 j->rp.msg);
	}
	if (j->disk_tmp && rename(j->disk_tmp, j->disk) < 0) {
		err = errno;
		log_err("failover: disk %s: cannot rename to %s: %s",
			j->disk_tmp, j->disk, strerror(err));
		vm->ops->destroy(d);
		vm_stop(vm, EXIT_VMM_ERROR);
		return reply_err("failover failed: cannot put the disk image "
				 "in place: %s",
				 strerror(err));
	}
	vm->dom = d;
	vm->backup = false;
	close(j->lfd);
	j->lfd = -1;
	err = vm->ops->unpause(d);
	if (err) {
		vm_stop(vm, EXIT_VMM_ERROR);
		return reply_err("failover failed: cannot start the VM: %s",
				 strerror(-err));
	}
	kvm_net_announce(d); /* clients' switches learn the new place */
	vm_watch(vm);
	pthread_mutex_lock(&j->lock);
	lost_ns = j->lost ? j->lost_ns : 0;
	pthread_mutex_unlock(&j->lock);
	json_decref(vm->failover);
	vm->failover = json_pack("{s:s, s:I, s:f, s:f, s:s}", "role",
				 "primary", "epoch", (json_int_t)epoch,
				 "failover_ms", (double)(now_ns() - t0) / 1e6,
				 "since_primary_lost_ms",
				 lost_ns ? (double)(now_ns() - lost_ns) / 1e6
					 : 0.0,
				 "why", why);
	log_info("FAILOVER (%s): the VM runs here from epoch %llu, started "
		 "in %.1f ms",
		 why, (unsigned long long)epoch,
		 (double)(now_ns() - t0) / 1e6);
	{
		json_t *rep = json_deep_copy(vm->failover);

		json_object_set_new(rep, "ok", json_true());
		json_object_set_new(rep, "state", json_string("running"));
		return rep;
	}
}

static json_t *cmd_failover(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	if (!vm->backup)
		return reply_err("this VM is not a backup");
	return bk_failover(vm, "asked");
}

static void bk_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct vm *vm = w->data;
	struct backup_job *j = &vm->bk;
	bool done, ended, lost, complete;
	uint64_t epoch;

	if (!vm->backup)
		return;
	pthread_mutex_lock(&j->lock);
	done = j->done;
	ended = j->ended;
	lost = j->lost;
	pthread_mutex_unlock(&j->lock);
	pthread_mutex_lock(&j->rp.lock);
	complete = j->rp.complete;
	epoch = j->rp.epoch;
	pthread_mutex_unlock(&j->rp.lock);
	if (ended && done) {
		bk_join(j);
		log_info("protection ended by the primary; the replica is "
			 "dropped and this backup stops");
		vm_stop(vm, 0);
		return;
	}
	if (!lost)
		return;
	if (complete && j->auto_failover) {
		json_decref(bk_failover(vm, "primary lost, --auto-failover"));
		return;
	}
	log_err("PRIMARY LOST (%s); the replica stays at epoch %llu%s",
		j->rp.msg, (unsigned long long)epoch,
		complete ? ": \"failover\" runs it here" : " (incomplete)");
}

static json_t *backup_status(struct vm *vm)
{
	struct backup_job *j = &vm->bk;
	struct ckpt_replica *rp = &j->rp;
	const char *state;
	bool connected, lost;
	json_t *o;

	pthread_mutex_lock(&j->lock);
	connected = j->chan != NULL;
	lost = j->lost;
	pthread_mutex_unlock(&j->lock);
	pthread_mutex_lock(&rp->lock);
	state = connected ? (rp->complete ? "replica" : "syncing")
		: lost	  ? (rp->complete ? "primary-lost" : "waiting")
			  : "waiting";
	o = json_pack("{s:b, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "ok", 1,
		      "state", "backup", "listen", vm->listen_addr, "replica",
		      state, "epoch", (json_int_t)rp->epoch, "epochs",
		      (json_int_t)rp->epochs, "streams",
		      (json_int_t)rp->streams, "bytes_in",
		      (json_int_t)rp->bytes, "discarded",
		      (json_int_t)rp->discarded);
	json_object_set_new(o, "complete", json_boolean(rp->complete));
	json_object_set_new(o, "since_commit_ms",
			    json_real(rp->commit_ns ? (double)(now_ns() -
							       rp->commit_ns) /
							      1e6
						    : 0.0));
	json_object_set_new(o, "apply_last_ms",
			    json_real((double)rp->apply_last_ns / 1e6));
	json_object_set_new(o, "apply_max_ms",
			    json_real((double)rp->apply_max_ns / 1e6));
	if (rp->msg[0])
		json_object_set_new(o, "last_error", json_string(rp->msg));
	pthread_mutex_unlock(&rp->lock);
	pthread_mutex_lock(&j->lock);
	if (j->peer[0])
		json_object_set_new(o, "primary", json_string(j->peer));
	pthread_mutex_unlock(&j->lock);
	return o;
}

/* ---- checkpoint protection: primary ------------------------------------ */

static int prot_event(void *ctx, enum ckpt_event ev,
		      const struct mig_progress *pr)
{
	struct prot_job *j = ctx;

	pthread_mutex_lock(&j->lock);
	if (ev == CKPT_EV_SYNC) {
		j->prog = *pr;
		j->prog_new = true;
	} else {
		j->protected_ev = true;
	}
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return 0;
}

static void *prot_main(void *arg)
{
	struct prot_job *j = arg;
	struct chan *c = NULL;
	int err;

	err = chan_net_connect(j->to, &j->tls.cfg, (int)j->p.timeout_ms, &c);
	if (err) {
		pthread_mutex_lock(&j->lock);
		snprintf(j->msg, sizeof(j->msg),
			 "cannot connect to the backup %.100s: %s", j->to,
			 *log_last_err() ? log_last_err() : strerror(-err));
		pthread_mutex_unlock(&j->lock);
	} else {
		pthread_mutex_lock(&j->lock);
		j->chan = c;
		pthread_mutex_unlock(&j->lock);
		err = ckpt_run(j->ck, c);
		pthread_mutex_lock(&j->lock);
		j->chan = NULL;
		pthread_mutex_unlock(&j->lock);
		chan_close(c);
	}
	pthread_mutex_lock(&j->lock);
	j->err = err;
	j->done = true;
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return NULL;
}

/* Stop the worker and wait for it (the loop blocks at most an ack
 * timeout); with `now`, cut the connection instead of ending cleanly. */
static void prot_join(struct prot_job *j, bool now)
{
	if (!j->running)
		return;
	if (now) {
		pthread_mutex_lock(&j->lock);
		chan_shutdown(j->chan);
		pthread_mutex_unlock(&j->lock);
	}
	ckpt_stop(j->ck);
	pthread_join(j->thread, NULL);
	j->running = false;
	pthread_mutex_lock(&j->lock);
	j->done = j->protected_ev = j->prog_new = false;
	pthread_mutex_unlock(&j->lock);
	if (j->w.cl)
		waiter_reply(&j->w, reply_err("protection was stopped before "
					      "it began"));
}

/* The loop's side of the protection worker. */
static void prot_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct vm *vm = w->data;
	struct prot_job *j = &vm->prot;
	struct ckpt_stats *st;
	struct mig_progress pr;
	bool prog_new, prot, done;
	char msg[sizeof(j->msg)];
	int err;

	pthread_mutex_lock(&j->lock);
	pr = j->prog;
	prog_new = j->prog_new;
	prot = j->protected_ev;
	done = j->done;
	err = j->err;
	snprintf(msg, sizeof(msg), "%s", j->msg);
	j->prog_new = j->protected_ev = j->done = false;
	pthread_mutex_unlock(&j->lock);
	if (!j->running)
		return;
	st = malloc(sizeof(*st));
	if (!st)
		return;
	ckpt_get_stats(j->ck, st);
	if (prog_new && !prot && !done)
		waiter_progress(&j->w, &pr);
	if (prot && j->w.cl) {
		json_t *rep = mig_summary(&st->sync);

		json_object_set_new(rep, "state", json_string("protected"));
		json_object_set_new(rep, "epoch",
				    json_integer((json_int_t)st->epoch));
		json_object_set_new(rep, "backup", json_string(j->to));
		json_object_set_new(rep, "sync_ms",
				    json_real((double)(now_ns() - j->t0) / 1e6));
		waiter_reply(&j->w, rep);
	}
	if (!done)
		goto out;
	pthread_join(j->thread, NULL);
	j->running = false;
	if (!msg[0])
		snprintf(msg, sizeof(msg), "%s", st->error);
	if (!err) {
		ckpt_close(j->ck);
		j->ck = NULL;
	} else if (j->w.cl) {
		/* The initial synchronisation failed. */
		waiter_reply(&j->w,
			     json_pack("{s:b, s:s, s:s}", "ok", 0, "error", msg,
				       "state", ckpt_state_name(st->state)));
		if (st->state == CKPT_IDLE) {
			ckpt_close(j->ck);
			j->ck = NULL;
		}
	} else if (!j->hold_on_loss) {
		log_err("PROTECTION LOST: %s; continuing UNPROTECTED (on-loss "
			"continue): the held output is released",
			msg);
		ckpt_close(j->ck);
		j->ck = NULL;
	} else {
		log_err("PROTECTION LOST: %s; the VM's network output is HELD "
			"(it stalls once the buffer is full) until \"protect\" "
			"(resync), \"unprotect\" (run unprotected) or \"fence\"",
			msg);
	}
out:
	free(st);
}

static json_t *cmd_protect(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	struct prot_job *j = &vm->prot;
	uint64_t interval = CKPT_DEFAULT_INTERVAL_MS,
		 timeout = CKPT_DEFAULT_TIMEOUT_MS, nbytes = 0;
	char netbuf[16] = "in-process", on_loss[16] = "hold";
	bool delta = true, progress = false;
	enum netbuf_backend nb;
	struct mig_tls tls;
	json_t *b = busy(vm);
	int err;

	if (b)
		return b;
	if (j->running)
		return reply_err("already protecting (to %s)", j->to);
	if (vm->paused)
		return reply_err("the VM is paused by a command; resume it "
				 "first");
	if (!req_str(req, "to", j->to, sizeof(j->to)) || !j->to[0])
		return reply_err("protect needs \"to\": \"HOST:PORT\" (an "
				 "`ftvm backup`)");
	if (!req_uint(req, "interval_ms", CKPT_MAX_INTERVAL_MS, &interval) ||
	    interval < CKPT_MIN_INTERVAL_MS)
		return reply_err("\"interval_ms\" must be %u..%u",
				 CKPT_MIN_INTERVAL_MS, CKPT_MAX_INTERVAL_MS);
	if (!req_uint(req, "timeout_ms", 600000, &timeout) || timeout < 100)
		return reply_err("\"timeout_ms\" must be 100..600000");
	if (!req_uint(req, "netbuf_bytes", 1ULL << 30, &nbytes) ||
	    (nbytes && nbytes < 65536))
		return reply_err("\"netbuf_bytes\" must be 65536 .. 1 GiB (0: "
				 "the default)");
	if (!req_str(req, "netbuf", netbuf, sizeof(netbuf)) ||
	    netbuf_backend_parse(netbuf, &nb))
		return reply_err("\"netbuf\" must be \"in-process\", "
				 "\"nfqueue\" or \"plug\"");
	if (!req_str(req, "on_loss", on_loss, sizeof(on_loss)) ||
	    (strcmp(on_loss, "hold") && strcmp(on_loss, "continue")))
		return reply_err("\"on_loss\" must be \"hold\" or \"continue\"");
	if (!req_bool(req, "delta", &delta) ||
	    !req_bool(req, "progress", &progress))
		return reply_err("\"delta\" and \"progress\" must be true or "
				 "false");
	b = req_tls(req, "protect", &tls);
	if (b)
		return b;
	if (nb != NETBUF_INPROC && !vm->tap)
		return reply_err("netbuf %s needs the VM's TAP (--net)", netbuf);
	j->tls = tls;
	j->tls.cfg.ca_file = tls.ca[0] ? j->tls.ca : NULL;
	j->tls.cfg.cert_file = tls.cert[0] ? j->tls.cert : NULL;
	j->tls.cfg.key_file = tls.key[0] ? j->tls.key : NULL;
	j->tls.cfg.peer_name = tls.peer[0] ? j->tls.peer : NULL;
	j->hold_on_loss = !strcmp(on_loss, "hold");
	if (!j->ck) {
		ckpt_params_init(&j->p);
		j->p.interval_ms = (unsigned)interval;
		j->p.timeout_ms = (unsigned)timeout;
		j->p.no_delta = !delta;
		j->p.netbuf.backend = nb;
		j->p.netbuf.max_bytes = nbytes;
		j->p.netbuf.ifname = vm->tap;
		j->p.event = prot_event;
		j->p.event_ctx = j;
		err = ckpt_open(vm->ops, vm->dom, &j->p, &j->ck);
		if (err)
			return reply_err("cannot prepare protection: %s",
					 strerror(-err));
	}
	pthread_mutex_lock(&j->lock);
	j->done = j->protected_ev = j->prog_new = false;
	j->msg[0] = 0;
	pthread_mutex_unlock(&j->lock);
	waiter_set(&j->w, cl, req, progress);
	j->t0 = now_ns();
	err = -pthread_create(&j->thread, NULL, prot_main, j);
	if (err) {
		waiter_drop(&j->w);
		return reply_err("cannot start protection: %s",
				 strerror(-err));
	}
	j->running = true;
	log_info("protecting: backup %s, epochs every %llu ms%s", j->to,
		 (unsigned long long)interval,
		 tls.cfg.insecure ? " (insecure: plain TCP)" : "");
	return NULL; /* the reply comes with the first committed epoch */
}

static json_t *cmd_unprotect(struct vm *vm, json_t *req,
			     struct ctl_client *cl)
{
	struct prot_job *j = &vm->prot;
	int err;

	if (!j->ck)
		return reply_err("the VM is not protected");
	prot_join(j, false); /* END after the epoch in flight */
	err = ckpt_unprotect(j->ck);
	ckpt_close(j->ck);
	j->ck = NULL;
	log_warn("unprotected: the VM runs WITHOUT a backup now");
	if (err)
		return reply_err("unprotected, but releasing the held output "
				 "failed: %s",
				 strerror(-err));
	return json_pack("{s:b, s:s}", "ok", 1, "state", "unprotected");
}

static json_t *cmd_fence(struct vm *vm, json_t *req, struct ctl_client *cl)
{
	struct prot_job *j = &vm->prot;

	if (!j->ck)
		return reply_err("the VM is not protected: nothing to fence");
	prot_join(j, true);
	ckpt_fence(j->ck);
	ckpt_close(j->ck);
	j->ck = NULL;
	vm->fenced = true;
	log_err("FENCED: held output discarded, the VM is paused for good "
		"(another copy may run); quit this one");
	return json_pack("{s:b, s:s}", "ok", 1, "state", "fenced");
}

static json_t *prot_status(struct vm *vm)
{
	struct prot_job *j = &vm->prot;
	struct ckpt_stats *st = malloc(sizeof(*st));
	json_t *o;

	if (!st)
		return NULL;
	ckpt_get_stats(j->ck, st);
	o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:i}", "role", "primary",
		      "state", ckpt_state_name(st->state), "backup", j->to,
		      "epoch", (json_int_t)st->epoch, "epochs",
		      (json_int_t)st->epochs, "resyncs",
		      (json_int_t)st->resyncs, "interval_ms",
		      (int)j->p.interval_ms);
	json_object_set_new(o, "pause_p50_us",
			    json_real((double)st->pause_p50_ns / 1e3));
	json_object_set_new(o, "pause_p99_us",
			    json_real((double)st->pause_p99_ns / 1e3));
	json_object_set_new(o, "pause_max_us",
			    json_real((double)st->pause_max_ns / 1e3));
	json_object_set_new(o, "ack_p50_ms",
			    json_real((double)st->ack_p50_ns / 1e6));
	json_object_set_new(o, "ack_p99_ms",
			    json_real((double)st->ack_p99_ns / 1e6));
	json_object_set_new(o, "since_ack_ms",
			    json_real((double)st->since_ack_ns / 1e6));
	json_object_set_new(o, "stretched",
			    json_integer((json_int_t)st->stretched));
	json_object_set_new(o, "early", json_integer((json_int_t)st->early));
	json_object_set_new(o, "pages", json_integer((json_int_t)st->pages));
	json_object_set_new(o, "bytes", json_integer((json_int_t)st->bytes));
	json_object_set_new(o, "page_bytes",
			    json_integer((json_int_t)st->page_bytes));
	json_object_set_new(o, "xor_pages",
			    json_integer((json_int_t)st->pages_xor));
	json_object_set_new(o, "lz4_pages",
			    json_integer((json_int_t)st->pages_lz4));
	json_object_set_new(o, "net_held_frames",
			    json_integer((json_int_t)st->net.frames_held));
	json_object_set_new(o, "net_held_bytes",
			    json_integer((json_int_t)st->net.bytes_held));
	json_object_set_new(o, "net_released_frames",
			    json_integer((json_int_t)st->net.frames_released));
	json_object_set_new(o, "net_stalls",
			    json_integer((json_int_t)st->net.stalls));
	json_object_set_new(o, "net_dropped",
			    json_integer((json_int_t)st->net.dropped));
	json_object_set_new(o, "disk_writes",
			    json_integer((json_int_t)st->disk.writes));
	json_object_set_new(o, "disk_stalls",
			    json_integer((json_int_t)st->disk.stalls));
	json_object_set_new(o, "netbuf",
			    json_string(netbuf_backend_name(
				    j->p.netbuf.backend)));
	if (st->error[0])
		json_object_set_new(o, "error", json_string(st->error));
	free(st);
	return o;
}

/* Teardown: no worker, no hooks, no held output left behind.  Output
 * that never committed is discarded, not released: the backup may be
 * about to take over without it. */
static void prot_abandon(struct vm *vm)
{
	struct prot_job *j = &vm->prot;

	if (!j->ck)
		return;
	/* Protected: end it cleanly, so that the backup drops its replica
	 * instead of taking over a VM that was stopped on purpose. */
	prot_join(j, false);
	ckpt_fence(j->ck);
	ckpt_close(j->ck);
	j->ck = NULL;
}

static void mig_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct vm *vm = w->data;

	if (vm->incoming)
		vm_attach(vm);
	else
		mig_send_async(vm);
}

/* Run on a signal while a migration is in progress: make it end soon and
 * wait for it, so that the VM is not torn down under the worker. */
static void mig_abandon(struct vm *vm)
{
	if (vm->mig.phase == MIG_NONE)
		return;
	pthread_mutex_lock(&vm->mig.lock);
	vm->mig.cancel = true;
	pthread_mutex_unlock(&vm->mig.lock);
	log_info("waiting for the migration to end");
	pthread_join(vm->mig.thread, NULL);
	vm->mig.phase = MIG_NONE;
	if (vm->mig.err == -EINPROGRESS || (!vm->mig.err && !vm->incoming))
		log_err("the migration completed or is in doubt: this copy "
			"must not run; stopping it");
}

static const struct {
	const char *name;
	/* NULL from fn: the reply is deferred (cl->waiting) */
	json_t *(*fn)(struct vm *vm, json_t *req, struct ctl_client *cl);
	const char *help;
} commands[] = {
	{ "status", cmd_status, "state, memory, exit counters" },
	{ "pause", cmd_pause, "stop the vCPU" },
	{ "resume", cmd_resume, "continue after pause" },
	{ "save", cmd_save, "{\"file\": PATH, \"stop\": BOOL} save the VM" },
	{ "dump", cmd_dump, "{\"file\": PATH} raw guest RAM image" },
	{ "quit", cmd_quit, "stop the VM and ftvm" },
	{ "migrate", cmd_migrate, "{\"to\": HOST:PORT, ...} live migration" },
	{ "migrate-cancel", cmd_migrate_cancel, "end a migration in progress" },
	{ "resolve", cmd_resolve, "{\"moved\": BOOL} after an in-doubt migration" },
	{ "protect", cmd_protect, "{\"to\": HOST:PORT, ...} keep a hot backup" },
	{ "unprotect", cmd_unprotect, "end protection (release held output)" },
	{ "fence", cmd_fence, "after a lost backup: discard output, pause for good" },
	{ "failover", cmd_failover, "backup: run the replica here now" },
};

static json_t *ctl_handle(struct vm *vm, const char *line,
			  struct ctl_client *cl)
{
	json_error_t jerr;
	json_t *req, *rep, *id;
	const char *cmd;
	size_t i;

	req = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	if (!req)
		return reply_err("bad JSON at column %d: %s", jerr.column,
				 jerr.text);
	if (!json_is_object(req)) {
		json_decref(req);
		return reply_err("request must be a JSON object");
	}
	cmd = json_string_value(json_object_get(req, "cmd"));
	rep = NULL;
	if (vm->incoming && cmd && strcmp(cmd, "status")) {
		rep = reply_err("an incoming migration is in progress: only "
				"\"status\" works");
	} else if (vm->backup && cmd && strcmp(cmd, "status") &&
		   strcmp(cmd, "failover") && strcmp(cmd, "quit")) {
		rep = reply_err("this is a backup: only \"status\", "
				"\"failover\" and \"quit\" work until it "
				"fails over");
	} else {
		for (i = 0; cmd && i < sizeof(commands) / sizeof(commands[0]);
		     i++)
			if (!strcmp(cmd, commands[i].name))
				rep = commands[i].fn(vm, req, cl);
		if (!rep && cl->waiting) {
			json_decref(req);
			return NULL;
		}
	}
	if (!rep)
		rep = cmd ? reply_err("unknown command \"%s\"", cmd)
			  : reply_err("request has no \"cmd\" string");
	id = json_object_get(req, "id");
	if (id)
		json_object_set(rep, "id", id);
	json_decref(req);
	return rep;
}

static void client_close(struct ctl_client *cl)
{
	ev_io_stop(cl->vm->loop, &cl->io);
	close(cl->io.fd);
	cl->in_use = false;
}

static void client_reply(struct ctl_client *cl, json_t *rep)
{
	char *s = json_dumps(rep, JSON_COMPACT);
	size_t len, off = 0;
	ssize_t n;

	json_decref(rep);
	if (!s)
		return;
	len = strlen(s);
	s[len++] = '\n'; /* overwrite the NUL; s is not used as a string */
	while (off < len) {
		n = send(cl->io.fd, s + off, len - off, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	free(s);
}

/* Answer the complete lines in cl->buf, stopping at a deferred reply. */
static void client_process(struct ctl_client *cl)
{
	char *nl;
	json_t *rep;

	while (!cl->waiting && (nl = memchr(cl->buf, '\n', cl->len))) {
		*nl = '\0';
		if (nl > cl->buf) {
			rep = ctl_handle(cl->vm, cl->buf, cl);
			if (rep)
				client_reply(cl, rep);
		}
		if (!cl->in_use)
			return;
		cl->len -= (size_t)(nl + 1 - cl->buf);
		memmove(cl->buf, nl + 1, cl->len);
		cl->buf[cl->len] = '\0';
	}
	if (cl->waiting)
		ev_io_stop(cl->vm->loop, &cl->io);
}

/* The deferred reply went out: read on. */
static void client_resume(struct ctl_client *cl)
{
	cl->waiting = false;
	if (!cl->in_use)
		return;
	ev_io_start(cl->vm->loop, &cl->io);
	client_process(cl);
}

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *cl = (struct ctl_client *)w;
	ssize_t n;

	n = recv(w->fd, cl->buf + cl->len, sizeof(cl->buf) - 1 - cl->len, 0);
	if (n <= 0) {
		client_close(cl);
		return;
	}
	cl->len += (size_t)n;
	cl->buf[cl->len] = '\0';
	client_process(cl);
	if (cl->in_use && !cl->waiting && cl->len == sizeof(cl->buf) - 1) {
		client_reply(cl, reply_err("request longer than %d bytes",
					   CTL_LINE_MAX - 1));
		client_close(cl);
	}
}

static void listen_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vm *vm = w->data;
	int fd = accept4(w->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	unsigned i;

	if (fd < 0)
		return;
	for (i = 0; i < CTL_CLIENTS_MAX; i++) {
		struct ctl_client *cl = &vm->clients[i];

		if (cl->in_use)
			continue;
		cl->in_use = true;
		cl->waiting = false;
		cl->gen++;
		cl->vm = vm;
		cl->len = 0;
		ev_io_init(&cl->io, client_cb, fd, EV_READ);
		ev_io_start(loop, &cl->io);
		return;
	}
	log_warn("control: more than %d clients; refusing one",
		 CTL_CLIENTS_MAX);
	close(fd);
}

/* ---- live migration: destination ------------------------------------ */

/* mig_recv's start: commit the disk image, run, announce the NIC. */
static int incoming_start(void *ctx, struct hv_domain *d)
{
	struct mig_job *j = ctx;
	int err;

	if (j->disk_tmp && rename(j->disk_tmp, j->disk) < 0) {
		err = -errno;
		log_err("disk %s: cannot rename to %s: %s", j->disk_tmp,
			j->disk, strerror(errno));
		return err;
	}
	err = j->vm->ops->unpause(d);
	if (err)
		return err;
	kvm_net_announce(d); /* peers learn where the guest lives now */
	return 0;
}

static void *mig_recv_main(void *arg)
{
	struct mig_job *j = arg;
	struct hv_domain *d = NULL;
	uint64_t deadline = now_ns() + (uint64_t)j->timeout_ms * 1000000;
	struct chan *c = NULL;
	int err;

	/* A refused peer (wrong certificate, plain TCP) does not end the
	 * wait: the right source may still come. */
	do {
		uint64_t now = now_ns();

		err = now >= deadline
			      ? -ETIMEDOUT
			      : chan_net_accept(j->lfd, &j->tls.cfg,
						(int)((deadline - now) / 1000000) +
							1,
						&c);
	} while (err && err != -ETIMEDOUT && now_ns() < deadline);
	if (err) {
		snprintf(j->msg, sizeof(j->msg),
			 err == -ETIMEDOUT ? "no source connected within %u s"
					   : "accept failed (%u s)",
			 j->timeout_ms / 1000);
	} else {
		pthread_mutex_lock(&j->lock);
		j->chan = c;
		pthread_mutex_unlock(&j->lock);
		err = mig_recv(j->vm->ops, j->cfg, c, j->p.timeout_ms,
			       incoming_start, j, &d, j->msg, sizeof(j->msg));
		pthread_mutex_lock(&j->lock);
		j->bytes_in = c->bytes_in;
		j->chan = NULL;
		pthread_mutex_unlock(&j->lock);
		chan_close(c);
	}
	pthread_mutex_lock(&j->lock);
	j->err = err;
	j->vm->dom = d;
	j->phase = MIG_DONE;
	pthread_mutex_unlock(&j->lock);
	ev_async_send(j->vm->loop, &j->async);
	return NULL;
}

static int vm_incoming_start(struct vm *vm)
{
	struct mig_job *j = &vm->mig;
	int err;

	printf("incoming: listening on %s\n", vm->listen_addr);
	fflush(stdout);
	log_info("waiting up to %u s for the migration on %s",
		 j->timeout_ms / 1000, vm->listen_addr);
	j->phase = MIG_ACTIVE;
	err = -pthread_create(&j->thread, NULL, mig_recv_main, j);
	if (err) {
		j->phase = MIG_NONE;
		log_err("cannot start the receiver: %s", strerror(-err));
	}
	return err;
}

/* The loop's side of the receiver: run the VM, or give up. */
static void vm_attach(struct vm *vm)
{
	struct mig_job *j = &vm->mig;

	pthread_mutex_lock(&j->lock);
	if (j->phase != MIG_DONE) {
		pthread_mutex_unlock(&j->lock);
		return;
	}
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->thread, NULL);
	j->phase = MIG_NONE;
	close(j->lfd);
	j->lfd = -1;
	vm->incoming = false;
	if (j->err) {
		log_err("incoming migration failed: %s; nothing runs here",
			j->msg[0] ? j->msg : strerror(-j->err));
		vm_stop(vm, EXIT_VMM_ERROR);
		return;
	}
	log_info("incoming migration done: %llu MiB received; the VM runs "
		 "here",
		 (unsigned long long)j->bytes_in >> 20);
	vm_watch(vm);
}

/* ---- run / restore ----------------------------------------------------- */

static void event_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vm *vm = w->data;
	struct hv_status st;
	uint64_t junk;

	if (read(w->fd, &junk, sizeof(junk)) < 0)
		return;
	vm->ops->status(vm->dom, &st);
	if (st.state == HV_STATE_EXITED) {
		log_info("%s", st.reason);
		vm_stop(vm, (int)(st.exit_status & 0xff));
	} else if (st.state == HV_STATE_CRASHED) {
		log_err("%s", st.reason);
		vm_stop(vm, EXIT_CRASHED);
	}
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct vm *vm = w->data;

	log_info("signal %d: stopping the VM", w->signum);
	if (!vm->incoming)
		mig_abandon(vm);
	vm_stop(vm, 128 + w->signum);
}

/* The running VM joins the loop: its state changes end ftvm. */
static void vm_watch(struct vm *vm)
{
	ev_io_init(&vm->event_w, event_cb, vm->ops->event_fd(vm->dom),
		   EV_READ);
	vm->event_w.data = vm;
	ev_io_start(vm->loop, &vm->event_w);
	vm->started_ns = now_ns();
}

static int vm_serve(struct vm *vm)
{
	vm->loop = EV_DEFAULT;
	vm->started_ns = now_ns();
	pthread_mutex_init(&vm->mig.lock, NULL);
	vm->mig.vm = vm;
	ev_async_init(&vm->mig.async, mig_async_cb);
	vm->mig.async.data = vm;
	ev_async_start(vm->loop, &vm->mig.async);
	pthread_mutex_init(&vm->prot.lock, NULL);
	vm->prot.vm = vm;
	ev_async_init(&vm->prot.async, prot_async_cb);
	vm->prot.async.data = vm;
	ev_async_start(vm->loop, &vm->prot.async);
	vm->bk.vm = vm;
	ev_async_init(&vm->bk.async, bk_async_cb);
	vm->bk.async.data = vm;
	ev_async_start(vm->loop, &vm->bk.async);
	ev_signal_init(&vm->sigint_w, signal_cb, SIGINT);
	ev_signal_init(&vm->sigterm_w, signal_cb, SIGTERM);
	vm->sigint_w.data = vm->sigterm_w.data = vm;
	ev_signal_start(vm->loop, &vm->sigint_w);
	ev_signal_start(vm->loop, &vm->sigterm_w);
	if (vm->ctl_path) {
		vm->listen_fd = cli_listen_unix(vm->ctl_path, "ftvm", 8);
		if (vm->listen_fd < 0)
			return EXIT_VMM_ERROR;
		ev_io_init(&vm->listen_w, listen_cb, vm->listen_fd, EV_READ);
		vm->listen_w.data = vm;
		ev_io_start(vm->loop, &vm->listen_w);
	}
	if (vm->backup) {
		printf("backup: listening on %s\n", vm->listen_addr);
		fflush(stdout);
		if (bk_start(vm))
			return EXIT_VMM_ERROR;
	} else if (vm->incoming) {
		if (vm_incoming_start(vm))
			return EXIT_VMM_ERROR;
	} else {
		vm_watch(vm);
		vm->ops->unpause(vm->dom);
	}
	ev_run(vm->loop, 0);
	return vm->exit_code;
}

/* Destroy the VM, then remove the control socket: once the socket is gone,
 * the VM's TAP and disk are free for a restore to take. */
static void vm_teardown(struct vm *vm)
{
	unsigned i;

	prot_abandon(vm);
	bk_join(&vm->bk);
	json_decref(vm->failover);

	if (vm->dom)
		vm->ops->destroy(vm->dom);
	vm->dom = NULL;
	json_decref(vm->last_mig);
	if (!vm->ctl_path || vm->listen_fd < 0)
		return;
	for (i = 0; i < CTL_CLIENTS_MAX; i++)
		if (vm->clients[i].in_use)
			client_close(&vm->clients[i]);
	close(vm->listen_fd);
	unlink(vm->ctl_path);
}

static int open_console(const char *path)
{
	int fd;

	if (!path || !strcmp(path, "-"))
		return STDOUT_FILENO;
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		log_err("console %s: %s", path, strerror(errno));
	return fd;
}

static void usage(FILE *f)
{
	fputs("usage:\n"
	      "  ftvm run --image FILE [--mem SIZE] [--cmdline ARGS] [options]\n"
	      "  ftvm restore --from FILE [options]\n"
	      "  ftvm incoming --listen ADDR (--ca F --cert F --key F | --insecure)\n"
	      "                [--peer-name NAME] [--timeout SEC] [options]\n"
	      "  ftvm backup --listen ADDR (--ca F --cert F --key F | --insecure)\n"
	      "              [--peer-name NAME] [--auto-failover] [options]\n"
	      "  ftvm ctl --control SOCKET COMMAND [ARGS]\n"
	      "\n"
	      "run, restore, incoming and backup options:\n"
	      "  --console FILE   guest console output (default: stdout)\n"
	      "  --control PATH   serve the JSON-lines control socket at PATH\n"
	      "  --net SPEC       NIC: tap=NAME,mac=MAC[,ip=A.B.C.D/N][,gw=A.B.C.D]\n"
	      "                   [,bridge=BR][,host-ip=A.B.C.D/N]\n"
	      "  --disk FILE      raw disk image (size a multiple of 512 bytes)\n"
	      "  --disk-size SIZE create a missing disk image this size; refuse an\n"
	      "                   existing one of another size (default: its size)\n"
	      "  --verbose        debug logging\n"
	      "run options:\n"
	      "  --image FILE     static ELF guest (guest/*.elf)\n"
	      "  --mem SIZE       guest RAM, 16M..64G in 2M steps (default 64M)\n"
	      "  --cmdline ARGS   the guest's command line\n"
	      "incoming options (receive one live migration, then run the VM):\n"
	      "  --listen ADDR    HOST:PORT, [V6]:PORT or :PORT; port 0 picks one;\n"
	      "                   prints \"incoming: listening on HOST:PORT\"\n"
	      "  --ca F --cert F --key F  TLS 1.3: trusted CA, our certificate and\n"
	      "                   key (tools/ft-certs makes test ones)\n"
	      "  --peer-name NAME accept only a peer certificate for NAME\n"
	      "  --insecure       plain TCP, no authentication (benchmarks only)\n"
	      "  --timeout SEC    wait this long for the source (default 60)\n"
	      "  --io-timeout MS  a silent peer fails the migration (default 10000)\n"
	      "  --disk FILE --disk-size SIZE  receive the disk into a new image\n"
	      "                   at FILE (replaced only when the migration commits)\n"
	      "backup options (keep a replica of a protected VM; run it on\n"
	      "failover): --listen, TLS, --io-timeout, --disk/--disk-size as for\n"
	      "incoming (the replica's image is FILE.replica until a failover)\n"
	      "  --auto-failover  take over as soon as the primary's stream breaks\n"
	      "                   (no arbiter: a partition gives two copies; for\n"
	      "                   tests and demos, ftd decides otherwise)\n"
	      "ctl commands:\n"
	      "  status | pause | resume | quit\n"
	      "  save FILE [--stop]   save the VM (keeps running unless --stop)\n"
	      "  dump FILE            write guest RAM as a raw image\n"
	      "  migrate HOST:PORT [--downtime MS] [--bandwidth RATE] [--abort-if-busy]\n"
	      "          [--no-auto-converge] [--compress none|lz4|auto]\n"
	      "          [--xbzrle SIZE] [--io-timeout MS]\n"
	      "          (--ca F --cert F --key F [--peer-name N] | --insecure)\n"
	      "                       live-migrate to an `ftvm incoming`; progress on\n"
	      "                       stderr, the summary (JSON) on stdout\n"
	      "  migrate-cancel       end a migration in progress (the VM stays)\n"
	      "  resolve moved|stay   after an in-doubt migration: the destination\n"
	      "                       runs the VM (stop here) / does not (resume)\n"
	      "  protect HOST:PORT [--interval MS] [--io-timeout MS]\n"
	      "          [--netbuf in-process|nfqueue|plug] [--netbuf-bytes SIZE]\n"
	      "          [--on-loss hold|continue] [--no-delta] (TLS | --insecure)\n"
	      "                       keep a hot backup on an `ftvm backup`\n"
	      "                       (checkpoints every 25 ms by default)\n"
	      "  unprotect            end protection (the backup drops its replica)\n"
	      "  fence                after a lost backup: discard held output and\n"
	      "                       pause the VM for good\n"
	      "  failover             on a backup: run the replica here now\n"
	      "\n"
	      "exit status: the guest's status; 125 ftvm error; 126 guest crashed\n"
	      "see docs/operators-guide.md\n",
	      f);
}

enum { OPT_IMAGE = 1, OPT_MEM, OPT_CMDLINE, OPT_CONSOLE, OPT_CONTROL,
       OPT_FROM, OPT_VERBOSE, OPT_HELP, OPT_STOP, OPT_NET, OPT_DISK,
       OPT_DISK_SIZE, OPT_LISTEN, OPT_CA, OPT_CERT, OPT_KEY, OPT_PEER_NAME,
       OPT_INSECURE, OPT_TIMEOUT, OPT_DOWNTIME, OPT_BANDWIDTH,
       OPT_ABORT_IF_BUSY, OPT_NO_AUTO_CONVERGE, OPT_COMPRESS,
       OPT_IO_TIMEOUT, OPT_XBZRLE, OPT_INTERVAL, OPT_NETBUF, OPT_ON_LOSS,
       OPT_NO_DELTA, OPT_AUTO_FAILOVER, OPT_NETBUF_BYTES };

static const struct option long_opts[] = {
	{ "image", required_argument, NULL, OPT_IMAGE },
	{ "mem", required_argument, NULL, OPT_MEM },
	{ "cmdline", required_argument, NULL, OPT_CMDLINE },
	{ "console", required_argument, NULL, OPT_CONSOLE },
	{ "control", required_argument, NULL, OPT_CONTROL },
	{ "from", required_argument, NULL, OPT_FROM },
	{ "verbose", no_argument, NULL, OPT_VERBOSE },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "stop", no_argument, NULL, OPT_STOP },
	{ "net", required_argument, NULL, OPT_NET },
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "disk-size", required_argument, NULL, OPT_DISK_SIZE },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "ca", required_argument, NULL, OPT_CA },
	{ "cert", required_argument, NULL, OPT_CERT },
	{ "key", required_argument, NULL, OPT_KEY },
	{ "peer-name", required_argument, NULL, OPT_PEER_NAME },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "io-timeout", required_argument, NULL, OPT_IO_TIMEOUT },
	{ "downtime", required_argument, NULL, OPT_DOWNTIME },
	{ "bandwidth", required_argument, NULL, OPT_BANDWIDTH },
	{ "abort-if-busy", no_argument, NULL, OPT_ABORT_IF_BUSY },
	{ "no-auto-converge", no_argument, NULL, OPT_NO_AUTO_CONVERGE },
	{ "compress", required_argument, NULL, OPT_COMPRESS },
	{ "xbzrle", required_argument, NULL, OPT_XBZRLE },
	{ "interval", required_argument, NULL, OPT_INTERVAL },
	{ "netbuf", required_argument, NULL, OPT_NETBUF },
	{ "netbuf-bytes", required_argument, NULL, OPT_NETBUF_BYTES },
	{ "on-loss", required_argument, NULL, OPT_ON_LOSS },
	{ "no-delta", no_argument, NULL, OPT_NO_DELTA },
	{ "auto-failover", no_argument, NULL, OPT_AUTO_FAILOVER },
	{ NULL, 0, NULL, 0 },
};

struct opts {
	const char *image, *cmdline, *console, *control, *from, *disk;
	const char *listen, *ca, *cert, *key, *peer_name, *compress;
	struct kvm_net_cfg net;
	uint64_t mem, disk_size, timeout_s, io_timeout_ms, downtime_ms,
		bandwidth;
	bool stop, insecure, abort_if_busy, no_auto_converge;
	uint64_t xbzrle;
	bool have_downtime, have_io_timeout;
	uint64_t interval_ms, netbuf_bytes;
	const char *netbuf, *on_loss;
	bool no_delta, auto_failover;
};

/* A whole number in [min, max]. */
static int parse_uint(const char *opt, const char *s, uint64_t min,
		      uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < min || v > max) {
		log_err("%s %s: not a whole number in %llu..%llu", opt, s,
			(unsigned long long)min, (unsigned long long)max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	int c;

	o->mem = 64ULL << 20;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_IMAGE: o->image = optarg; break;
		case OPT_CMDLINE: o->cmdline = optarg; break;
		case OPT_CONSOLE: o->console = optarg; break;
		case OPT_CONTROL: o->control = optarg; break;
		case OPT_FROM: o->from = optarg; break;
		case OPT_STOP: o->stop = true; break;
		case OPT_DISK: o->disk = optarg; break;
		case OPT_DISK_SIZE:
			if (cli_parse_size(optarg, &o->disk_size) ||
			    !o->disk_size) {
				log_err("--disk-size %s: not a size (try 64M)",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_NET:
			if (kvm_net_parse(optarg, &o->net))
				return -EINVAL;
			break;
		case OPT_LISTEN: o->listen = optarg; break;
		case OPT_CA: o->ca = optarg; break;
		case OPT_CERT: o->cert = optarg; break;
		case OPT_KEY: o->key = optarg; break;
		case OPT_PEER_NAME: o->peer_name = optarg; break;
		case OPT_INSECURE: o->insecure = true; break;
		case OPT_ABORT_IF_BUSY: o->abort_if_busy = true; break;
		case OPT_NO_AUTO_CONVERGE: o->no_auto_converge = true; break;
		case OPT_COMPRESS:
			if (strcmp(optarg, "none") && strcmp(optarg, "lz4") &&
			    strcmp(optarg, "auto")) {
				log_err("--compress %s: none, lz4 or auto",
					optarg);
				return -EINVAL;
			}
			o->compress = optarg;
			break;
		case OPT_XBZRLE:
			if (cli_parse_size(optarg, &o->xbzrle) ||
			    (o->xbzrle && o->xbzrle < 8192)) {
				log_err("--xbzrle %s: a cache size (try 256M; 0: "
					"off)",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_TIMEOUT:
			if (parse_uint("--timeout", optarg, 1, 86400,
				       &o->timeout_s))
				return -EINVAL;
			break;
		case OPT_IO_TIMEOUT:
			if (parse_uint("--io-timeout", optarg, 100, 600000,
				       &o->io_timeout_ms))
				return -EINVAL;
			o->have_io_timeout = true;
			break;
		case OPT_DOWNTIME:
			if (parse_uint("--downtime", optarg, 1, 60000,
				       &o->downtime_ms))
				return -EINVAL;
			o->have_downtime = true;
			break;
		case OPT_BANDWIDTH:
			/* bytes per second, with K/M/G suffixes */
			if (cli_parse_size(optarg, &o->bandwidth)) {
				log_err("--bandwidth %s: not a rate (try 100M "
					"for 100 MiB/s, 0 for unlimited)",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_INTERVAL:
			if (parse_uint("--interval", optarg,
				       CKPT_MIN_INTERVAL_MS,
				       CKPT_MAX_INTERVAL_MS, &o->interval_ms))
				return -EINVAL;
			break;
		case OPT_NETBUF: {
			enum netbuf_backend nb;

			if (netbuf_backend_parse(optarg, &nb)) {
				log_err("--netbuf %s: in-process, nfqueue or "
					"plug",
					optarg);
				return -EINVAL;
			}
			o->netbuf = optarg;
			break;
		}
		case OPT_NETBUF_BYTES:
			if (cli_parse_size(optarg, &o->netbuf_bytes) ||
			    o->netbuf_bytes < 65536 ||
			    o->netbuf_bytes > (1ULL << 30)) {
				log_err("--netbuf-bytes %s: a size, 64K..1G",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_ON_LOSS:
			if (strcmp(optarg, "hold") && strcmp(optarg, "continue")) {
				log_err("--on-loss %s: hold or continue",
					optarg);
				return -EINVAL;
			}
			o->on_loss = optarg;
			break;
		case OPT_NO_DELTA: o->no_delta = true; break;
		case OPT_AUTO_FAILOVER: o->auto_failover = true; break;
		case OPT_VERBOSE: log_set_level(LOG_DEBUG); break;
		case OPT_MEM:
			if (cli_parse_size(optarg, &o->mem)) {
				log_err("--mem %s: not a size (try 256M or 1G)",
					optarg);
				return -EINVAL;
			}
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	return 0;
}

static int do_run(int argc, char **argv)
{
	struct opts o = { 0 };
	struct vm vm = { .ops = &kvm_hv_ops, .listen_fd = -1 };
	struct kvm_cfg cfg;
	struct hv_dom_info info;
	int err, code;

	if (parse_opts(argc, argv, &o))
		return EXIT_VMM_ERROR;
	if (!o.image || optind != argc) {
		log_err(o.image ? "unexpected argument '%s'"
				: "run needs --image FILE%s",
			o.image ? argv[optind] : "");
		return EXIT_VMM_ERROR;
	}
	info = (struct hv_dom_info){ .mem_size = o.mem, .nr_vcpus = 1,
				     .page_size = HV_PAGE_SIZE };
	cfg = (struct kvm_cfg){ .net = o.net, .disk = o.disk,
			       .disk_size = o.disk_size };
	cfg.console_fd = open_console(o.console);
	if (cfg.console_fd < 0 || kvm_probe())
		return EXIT_VMM_ERROR;
	err = vm.ops->create(&info, &cfg, &vm.dom);
	if (err)
		return EXIT_VMM_ERROR;
	err = kvm_boot(vm.dom, o.image, o.cmdline);
	if (err) {
		vm.ops->destroy(vm.dom);
		return EXIT_VMM_ERROR;
	}
	vm.ctl_path = o.control;
	vm.tap = o.net.present ? o.net.tap : NULL;
	code = vm_serve(&vm);
	vm_teardown(&vm);
	return code;
}

static int do_restore(int argc, char **argv)
{
	struct opts o = { 0 };
	struct vm vm = { .ops = &kvm_hv_ops, .listen_fd = -1 };
	struct kvm_cfg cfg;
	struct chan *c;
	int err, code;

	if (parse_opts(argc, argv, &o))
		return EXIT_VMM_ERROR;
	if (!o.from || optind != argc) {
		log_err("restore needs --from FILE");
		return EXIT_VMM_ERROR;
	}
	cfg = (struct kvm_cfg){ .net = o.net, .disk = o.disk,
			       .disk_size = o.disk_size };
	cfg.console_fd = open_console(o.console);
	if (cfg.console_fd < 0 || kvm_probe())
		return EXIT_VMM_ERROR;
	err = chan_open_file(&c, o.from, O_RDONLY);
	if (err) {
		log_err("%s: %s", o.from, strerror(-err));
		return EXIT_VMM_ERROR;
	}
	err = snap_restore(vm.ops, &cfg, c, true, &vm.dom);
	chan_close(c);
	if (err) {
		log_err("restore from %s failed; nothing was started", o.from);
		return EXIT_VMM_ERROR;
	}
	log_info("restored from %s", o.from);
	kvm_net_announce(vm.dom); /* peers learn where the guest lives now */
	vm.ctl_path = o.control;
	vm.tap = o.net.present ? o.net.tap : NULL;
	code = vm_serve(&vm);
	vm_teardown(&vm);
	return code;
}

/* "a.b.c.d:port" or "[v6]:port" of a bound socket. */
static void sock_name(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
			port = ntohs(a->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
			port = ntohs(a->sin6_port);
			snprintf(buf, len, "[%s]:%u", host, port);
			return;
		}
	}
	snprintf(buf, len, "%s:%u", host, port);
}

/* TLS options into `t`; false (logged) if they are incomplete. */
static bool tls_from_opts(const struct opts *o, struct mig_tls *t)
{
	memset(t, 0, sizeof(*t));
	if (o->insecure && (o->ca || o->cert || o->key)) {
		log_err("--insecure and --ca/--cert/--key exclude each other");
		return false;
	}
	if (!o->insecure && (!o->ca || !o->cert || !o->key)) {
		log_err("give --ca, --cert and --key (TLS with certificates), "
			"or --insecure for plain TCP (benchmarks only)");
		return false;
	}
	t->cfg = (struct chan_tls_cfg){ .ca_file = o->ca,
					.cert_file = o->cert,
					.key_file = o->key,
					.peer_name = o->peer_name,
					.insecure = o->insecure };
	return true;
}

static int do_incoming(int argc, char **argv)
{
	struct opts o = { 0 };
	struct vm vm = { .ops = &kvm_hv_ops, .listen_fd = -1 };
	struct kvm_cfg cfg;
	char disk_tmp[PATH_MAX];
	int lfd, code;

	if (parse_opts(argc, argv, &o))
		return EXIT_VMM_ERROR;
	if (!o.listen || optind != argc) {
		log_err(o.listen ? "unexpected argument '%s'"
				 : "incoming needs --listen ADDR%s",
			o.listen ? argv[optind] : "");
		return EXIT_VMM_ERROR;
	}
	if (!tls_from_opts(&o, &vm.mig.tls))
		return EXIT_VMM_ERROR;
	if (o.disk && !o.disk_size) {
		log_err("incoming with --disk needs --disk-size (the size of "
			"the source's disk)");
		return EXIT_VMM_ERROR;
	}
	cfg = (struct kvm_cfg){ .net = o.net, .disk_size = o.disk_size };
	if (o.disk) {
		/* A fresh image; FILE itself is replaced only on commit. */
		if (snprintf(disk_tmp, sizeof(disk_tmp), "%s.incoming",
			     o.disk) >= (int)sizeof(disk_tmp)) {
			log_err("--disk %s: path too long", o.disk);
			return EXIT_VMM_ERROR;
		}
		if (unlink(disk_tmp) < 0 && errno != ENOENT) {
			log_err("%s: %s", disk_tmp, strerror(errno));
			return EXIT_VMM_ERROR;
		}
		cfg.disk = disk_tmp;
		vm.mig.disk = o.disk;
		vm.mig.disk_tmp = disk_tmp;
	}
	cfg.console_fd = open_console(o.console);
	if (cfg.console_fd < 0 || kvm_probe())
		return EXIT_VMM_ERROR;
	if (chan_net_listen(o.listen, &lfd))
		return EXIT_VMM_ERROR;
	sock_name(lfd, vm.listen_addr, sizeof(vm.listen_addr));
	vm.incoming = true;
	vm.mig.lfd = lfd;
	vm.mig.cfg = &cfg;
	vm.mig.timeout_ms = (unsigned)(o.timeout_s ? o.timeout_s : 60) * 1000;
	mig_params_init(&vm.mig.p);
	if (o.have_io_timeout)
		vm.mig.p.timeout_ms = (unsigned)o.io_timeout_ms;
	vm.ctl_path = o.control;
	vm.tap = o.net.present ? o.net.tap : NULL;
	code = vm_serve(&vm);
	if (vm.mig.phase != MIG_NONE) {
		/* Stopped (signal) while receiving: drop the half copy. */
		if (vm.mig.disk_tmp)
			unlink(vm.mig.disk_tmp);
		if (vm.ctl_path && vm.listen_fd >= 0)
			unlink(vm.ctl_path);
		log_err("incoming migration abandoned; nothing runs here");
		_exit(code ? code : EXIT_VMM_ERROR);
	}
	if (vm.mig.lfd >= 0)
		close(vm.mig.lfd);
	if (vm.mig.disk_tmp)
		unlink(vm.mig.disk_tmp); /* renamed on success: gone already */
	vm_teardown(&vm);
	return code;
}

static int do_backup(int argc, char **argv)
{
	struct opts o = { 0 };
	struct vm vm = { .ops = &kvm_hv_ops, .listen_fd = -1 };
	struct backup_job *j = &vm.bk;
	struct kvm_cfg cfg;
	char disk_tmp[PATH_MAX];
	int lfd, code;

	if (parse_opts(argc, argv, &o))
		return EXIT_VMM_ERROR;
	if (!o.listen || optind != argc) {
		log_err(o.listen ? "unexpected argument '%s'"
				 : "backup needs --listen ADDR%s",
			o.listen ? argv[optind] : "");
		return EXIT_VMM_ERROR;
	}
	if (!tls_from_opts(&o, &j->tls))
		return EXIT_VMM_ERROR;
	if (o.disk && !o.disk_size) {
		log_err("backup with --disk needs --disk-size (the size of the "
			"primary's disk)");
		return EXIT_VMM_ERROR;
	}
	cfg = (struct kvm_cfg){ .net = o.net, .disk_size = o.disk_size };
	if (o.disk) {
		/* The replica's image; FILE itself only on failover. */
		if (snprintf(disk_tmp, sizeof(disk_tmp), "%s.replica",
			     o.disk) >= (int)sizeof(disk_tmp)) {
			log_err("--disk %s: path too long", o.disk);
			return EXIT_VMM_ERROR;
		}
		cfg.disk = disk_tmp;
		j->disk = o.disk;
		j->disk_tmp = disk_tmp;
	}
	cfg.console_fd = open_console(o.console);
	if (cfg.console_fd < 0 || kvm_probe())
		return EXIT_VMM_ERROR;
	if (chan_net_listen(o.listen, &lfd))
		return EXIT_VMM_ERROR;
	sock_name(lfd, vm.listen_addr, sizeof(vm.listen_addr));
	j->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (j->stop_efd < 0) {
		log_err("eventfd: %s", strerror(errno));
		return EXIT_VMM_ERROR;
	}
	pthread_mutex_init(&j->lock, NULL);
	ckpt_replica_init(&j->rp);
	j->lfd = lfd;
	j->cfg = &cfg;
	j->io_timeout_ms = o.have_io_timeout ? (unsigned)o.io_timeout_ms
					     : CKPT_DEFAULT_TIMEOUT_MS;
	j->auto_failover = o.auto_failover;
	if (o.auto_failover)
		log_warn("--auto-failover: this backup takes over whenever the "
			 "primary's stream breaks, a network partition "
			 "included; without an arbiter two copies may run");
	vm.backup = true;
	vm.tap = o.net.present ? o.net.tap : NULL;
	vm.ctl_path = o.control;
	vm.tap = o.net.present ? o.net.tap : NULL;
	code = vm_serve(&vm);
	if (vm.backup) {
		/* Never failed over: the replica goes with this process. */
		bk_join(j);
		ckpt_replica_fini(&j->rp, vm.ops);
		if (j->disk_tmp)
			unlink(j->disk_tmp);
	}
	if (j->lfd >= 0)
		close(j->lfd);
	j->lfd = -1;
	vm_teardown(&vm);
	close(j->stop_efd);
	return code;
}

/* Print a progress event as one line on stderr. */
static void print_progress(const char *cmd, json_t *ev)
{
	double mib = 1 << 20;

	fprintf(stderr,
		"%s: %s %lld: sent %.1f MiB, remaining %.1f MiB, "
		"%.1f MiB/s, ETA %.1f s, throttle %lld%%\n",
		!strcmp(cmd, "protect") ? "initial sync" : "migrate",
		json_is_true(json_object_get(ev, "paused")) ? "final round"
							     : "round",
		(long long)json_integer_value(json_object_get(ev, "round")),
		(double)json_integer_value(json_object_get(ev, "sent")) / mib,
		(double)json_integer_value(json_object_get(ev, "remaining")) /
			mib,
		(double)json_integer_value(json_object_get(ev, "rate")) / mib,
		(double)json_integer_value(json_object_get(ev, "eta_ms")) /
			1000,
		(long long)json_integer_value(json_object_get(ev, "throttle")));
}

/* The TLS options of `ftvm ctl migrate|protect` into the request. */
static void ctl_tls(json_t *req, const struct opts *o)
{
	if (o->insecure)
		json_object_set_new(req, "insecure", json_true());
	if (o->ca)
		json_object_set_new(req, "ca", json_string(o->ca));
	if (o->cert)
		json_object_set_new(req, "cert", json_string(o->cert));
	if (o->key)
		json_object_set_new(req, "key", json_string(o->key));
	if (o->peer_name)
		json_object_set_new(req, "peer_name",
				    json_string(o->peer_name));
}

/* The request `ftvm ctl` sends for argv[optind..]. */
static json_t *ctl_request(int argc, char **argv, const struct opts *o)
{
	const char *cmd = argv[optind], *arg = optind + 1 < argc
						       ? argv[optind + 1]
						       : NULL;
	json_t *req = json_pack("{s:s}", "cmd", cmd);

	if (!strcmp(cmd, "protect")) {
		if (!arg) {
			log_err("protect needs HOST:PORT (an `ftvm backup`)");
			json_decref(req);
			return NULL;
		}
		json_object_set_new(req, "to", json_string(arg));
		json_object_set_new(req, "progress", json_true());
		if (o->interval_ms)
			json_object_set_new(req, "interval_ms",
					    json_integer((json_int_t)o->interval_ms));
		if (o->have_io_timeout)
			json_object_set_new(req, "timeout_ms",
					    json_integer((json_int_t)o->io_timeout_ms));
		if (o->netbuf)
			json_object_set_new(req, "netbuf",
					    json_string(o->netbuf));
		if (o->netbuf_bytes)
			json_object_set_new(req, "netbuf_bytes",
					    json_integer((json_int_t)o->netbuf_bytes));
		if (o->on_loss)
			json_object_set_new(req, "on_loss",
					    json_string(o->on_loss));
		if (o->no_delta)
			json_object_set_new(req, "delta", json_false());
		ctl_tls(req, o);
	} else if (!strcmp(cmd, "migrate")) {
		if (!arg) {
			log_err("migrate needs HOST:PORT");
			json_decref(req);
			return NULL;
		}
		json_object_set_new(req, "to", json_string(arg));
		json_object_set_new(req, "progress", json_true());
		if (o->have_downtime)
			json_object_set_new(req, "downtime_ms",
					    json_integer((json_int_t)o->downtime_ms));
		if (o->bandwidth)
			json_object_set_new(req, "bandwidth",
					    json_integer((json_int_t)o->bandwidth));
		if (o->have_io_timeout)
			json_object_set_new(req, "timeout_ms",
					    json_integer((json_int_t)o->io_timeout_ms));
		if (o->abort_if_busy)
			json_object_set_new(req, "abort_if_busy", json_true());
		if (o->no_auto_converge)
			json_object_set_new(req, "auto_converge", json_false());
		if (o->compress)
			json_object_set_new(req, "compress",
					    json_string(o->compress));
		if (o->xbzrle)
			json_object_set_new(req, "xbzrle_cache",
					    json_integer((json_int_t)o->xbzrle));
		ctl_tls(req, o);
	} else if (!strcmp(cmd, "resolve")) {
		if (!arg || (strcmp(arg, "moved") && strcmp(arg, "stay"))) {
			log_err("resolve needs 'moved' or 'stay'");
			json_decref(req);
			return NULL;
		}
		json_object_set_new(req, "moved",
				    json_boolean(!strcmp(arg, "moved")));
	} else if (arg) {
		json_object_set_new(req, "file", json_string(arg));
	}
	if (o->stop)
		json_object_set_new(req, "stop", json_true());
	return req;
}

/* ftvm ctl: send one request, print the reply, exit 0 if "ok"; progress
 * events before it go to stderr. */
static int do_ctl(int argc, char **argv)
{
	struct opts o = { 0 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	json_t *req, *rep;
	char buf[CTL_LINE_MAX];
	char *line;
	size_t len = 0;
	ssize_t n;
	int fd, ok;

	if (parse_opts(argc, argv, &o))
		return 2;
	if (!o.control || optind >= argc) {
		log_err("ctl needs --control SOCKET and a command");
		return 2;
	}
	req = ctl_request(argc, argv, &o);
	if (!req)
		return 2;
	if (strlen(o.control) >= sizeof(sa.sun_path)) {
		log_err("socket path too long");
		return 2;
	}
	strcpy(sa.sun_path, o.control);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		log_err("%s: %s", o.control, strerror(errno));
		return 1;
	}
	line = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (write(fd, line, strlen(line)) < 0 || write(fd, "\n", 1) < 0) {
		log_err("send: %s", strerror(errno));
		return 1;
	}
	free(line);
	/* Lines until the reply: events first (migrate). */
	for (;;) {
		char *nl;

		while (!(nl = memchr(buf, '\n', len)) && len < sizeof(buf) - 1 &&
		       (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
			len += (size_t)n;
		if (!nl) {
			buf[len] = '\0';
			fputs(buf, stdout);
			if (!len)
				log_err("%s: no reply (ftvm stopped?)",
					o.control);
			close(fd);
			return 1;
		}
		*nl = '\0';
		rep = json_loads(buf, 0, NULL);
		if (rep && json_object_get(rep, "event")) {
			print_progress(argv[optind], rep);
			json_decref(rep);
			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len);
			continue;
		}
		puts(buf);
		break;
	}
	close(fd);
	ok = rep && json_is_true(json_object_get(rep, "ok"));
	if (rep && !ok && json_string_value(json_object_get(rep, "error")))
		log_err("%s", json_string_value(json_object_get(rep, "error")));
	json_decref(rep);
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	log_set_prog("ftvm");
	/* A vanished peer (migration, control client) is an EPIPE error,
	 * not the end of the VM. */
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "run"))
		return do_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "restore"))
		return do_restore(argc - 1, argv + 1);
	if (!strcmp(argv[1], "incoming"))
		return do_incoming(argc - 1, argv + 1);
	if (!strcmp(argv[1], "backup"))
		return do_backup(argc - 1, argv + 1);
	if (!strcmp(argv[1], "ctl"))
		return do_ctl(argc - 1, argv + 1);
	log_err("unknown command '%s' (see ftvm --help)", argv[1]);
	return 2;
}
