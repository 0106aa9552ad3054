// SPDX-License-Identifier: MIT
/*
 * ftd_migrate.c - live migration between hosts, on top of ftvm.
 *
 * Source (control command "migrate"):
 *   1. prepare: ask the destination ftd to receive the VM (definition and
 *      disk size); it spawns `ftvm incoming` and answers the port it
 *      listens on;
 *   2. stream: send "migrate" to our ftvm's control socket (to the
 *      destination's address and that port, with this host's certificate)
 *      and forward its progress events to ftctl;
 *   3. success: tell the destination ("finish", ok), wait for our ftvm to
 *      exit, remove the VM from the state directory (disk too);
 *      failure: tell the destination ("finish", not ok: it kills its ftvm
 *      and removes the half-created VM); the VM keeps running here;
 *      in doubt (our ftvm sent the go but never heard that the
 *      destination runs the VM; the VM is paused here): ask the
 *      destination every second, for up to --doubt-limit seconds, whether
 *      it runs the VM, and resolve our ftvm accordingly (moved: it exits;
 *      not moved: it resumes).
 *
 * Destination (peer requests): "prepare", "finish", "vm-state".  A VM
 * being received is VM_INCOMING until the source says "finish" or its
 * ftvm says it runs (polled every second); if its ftvm exits before
 * that, the migration failed and the half-created VM is removed.
 *
 * The VM never runs on both hosts, and never on none because of ftd: the
 * commit point is ftvm's (the destination's confirmation), and only
 * ftvm's answers or the destination's word decide.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ftd.h"
#include "log.h"

#define PREPARE_TIMEOUT_MS 30000
#define FINISH_TIMEOUT_MS 15000
#define STATE_TIMEOUT_MS 3000
#define LISTEN_TIMEOUT 15.0  /* for ftvm incoming's "listening" line */
#define INCOMING_TIMEOUT 30  /* ftvm incoming --timeout (seconds) */
#define EXIT_WAIT 10.0	     /* for the source's ftvm after success */
#define FINISH_KILL_AFTER 5.0 /* SIGTERM, then SIGKILL */
#define LISTEN_PREFIX "incoming: listening on "

enum mig_phase {
	MIG_PREPARE, /* waiting for the destination's port */
	MIG_STREAM,  /* our ftvm streams */
	MIG_DOUBT,   /* asking the destination whether it runs the VM */
	MIG_GAVE_UP, /* in doubt, not asking any more: resolve by hand */
	MIG_FAILING, /* telling the destination to drop its copy */
	MIG_MOVED,   /* success: finish, our ftvm's exit, cleanup */
};

struct migration {
	struct ftd_vm *vm; /* a reference */
	struct ctl_req *req; /* ftctl's request; NULL once answered */
	enum mig_phase phase;
	char to[FTD_NAME_MAX + 1];
	char addr[FTD_ADDR_MAX]; /* the destination ftd's */
	char host[FTD_ADDR_MAX]; /* its host part */
	json_t *opts;		 /* downtime_ms, bandwidth, ... */
	bool insecure;
	bool prepared; /* the destination created the VM */
	bool ftvm_lost; /* our ftvm's connection ended without an answer */
	bool finish_done, child_gone;
	bool resolve_moved_sent;
	bool manual; /* resolved by hand: the answer is the resolve's */
	struct vmcall *call;
	json_t *result;	  /* ftvm's success reply */
	json_t *progress; /* the last progress event */
	ev_timer timer_w; /* in-doubt retries; exit wait after success */
	double t0, doubt_t0;
	char error[FTD_REASON_MAX];
};

/* ---- helpers ---- */

/* A JSON string, printf-style. */
static json_t *json_pack_str(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static json_t *json_pack_str(const char *fmt, ...)
{
	char buf[FTD_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return json_string(buf);
}

/* The "error" of a reply, never NULL. */
static const char *rep_error(json_t *rep)
{
	const char *e = json_string_value(json_object_get(rep, "error"));

	return e ? e : "no reason given";
}

static void host_port(char *buf, size_t len, const char *host, int port)
{
	if (strchr(host, ':'))
		snprintf(buf, len, "[%s]:%d", host, port);
	else
		snprintf(buf, len, "%s:%d", host, port);
}

static void mig_event(struct migration *m, const char *phase, const char *fmt,
		      ...) __attribute__((format(printf, 3, 4)));
static void mig_event(struct migration *m, const char *phase,
		      const char *fmt, ...)
{
	char msg[FTD_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_info("vm %s: %s", m->vm->def.name, msg);
	if (m->req)
		ctl_req_event(m->req, json_pack("{s:s, s:s, s:s}", "event",
						"phase", "phase", phase,
						"message", msg));
}

static void mig_free(struct migration *m)
{
	struct ftd *d = m->vm->d;

	ev_timer_stop(d->loop, &m->timer_w);
	vmcall_cancel(m->call);
	if (m->vm->mig == m)
		m->vm->mig = NULL;
	json_decref(m->opts);
	json_decref(m->result);
	json_decref(m->progress);
	vm_put(m->vm);
	free(m);
}

static void mig_answer(struct migration *m, json_t *rep)
{
	struct ctl_req *r = m->req;

	m->req = NULL;
	if (r)
		ctl_req_done(r, rep);
	else
		json_decref(rep);
}

json_t *mig_status(struct ftd_vm *vm)
{
	struct migration *m = vm->mig;
	static const char *const names[] = {
		[MIG_PREPARE] = "prepare", [MIG_STREAM] = "stream",
		[MIG_DOUBT] = "in-doubt",  [MIG_GAVE_UP] = "in-doubt",
		[MIG_FAILING] = "failing", [MIG_MOVED] = "moved",
	};
	json_t *j;

	if (vm->state == VM_INCOMING)
		return json_pack("{s:s}", "from", vm->from);
	if (!m)
		return NULL;
	j = json_pack("{s:s, s:s, s:f}", "to", m->to, "phase",
		      names[m->phase], "elapsed_s",
		      ev_now(vm->d->loop) - m->t0);
	if (m->progress)
		json_object_set(j, "progress", m->progress);
	return j;
}

/* ---- source: the end of a migration ---- */

/* The VM stays here.  Answer ftctl with m->error and free m. */
static void mig_complete_fail(struct migration *m)
{
	struct ftd_vm *vm = m->vm;
	struct ftd *d = vm->d;
	char where[2 * FTD_REASON_MAX];

	if (vm->pid > 0) {
		vm_set_state(vm, VM_RUNNING, "migration to %s failed: %s",
			     m->to, m->error);
		snprintf(where, sizeof(where), "%s keeps running on %s",
			 vm->def.name, d->name);
	} else {
		char why[FTD_REASON_MAX];

		snprintf(why, sizeof(why), "%s", vm->reason);
		vm_set_state(vm, VM_STOPPED,
			     "its ftvm stopped during a migration to %s: %s",
			     m->to, why);
		snprintf(where, sizeof(where), "%s is stopped on %s: %s",
			 vm->def.name, d->name, why);
	}
	if (m->manual) {
		mig_answer(m, json_pack("{s:b, s:s, s:s}", "ok", 1, "state",
					vm_state_name(vm->state), "message",
					where));
		mig_free(m);
		return;
	}
	log_warn("vm %s: migration to %s failed: %s; %s", vm->def.name, m->to,
		 m->error, where);
	mig_answer(m, reply_err("migration of %s to %s failed: %s; %s",
				vm->def.name, m->to, m->error, where));
	mig_free(m);
}

static void fail_finish_cb(struct ftd *d, void *arg, json_t *rep,
			   const char *err)
{
	struct migration *m = arg;

	if (!rep)
		log_warn("vm %s: could not tell %s to drop its copy: %s",
			 m->vm->def.name, m->to, err);
	else if (!json_is_true(json_object_get(rep, "ok")))
		log_warn("vm %s: %s did not drop its copy: %s",
			 m->vm->def.name, m->to,
			 rep_error(rep));
	json_decref(rep);
	mig_complete_fail(m);
}

/* Fail the migration: the destination drops its copy, the VM stays. */
static void mig_fail(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void mig_fail(struct migration *m, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m->error, sizeof(m->error), fmt, ap);
	va_end(ap);
	vmcall_cancel(m->call);
	m->call = NULL;
	ev_timer_stop(m->vm->d->loop, &m->timer_w);
	if (!m->prepared) {
		mig_complete_fail(m);
		return;
	}
	m->phase = MIG_FAILING;
	peer_call(m->vm->d, m->to, m->addr,
		  json_pack("{s:s, s:s, s:b}", "cmd", "finish", "name",
			    m->vm->def.name, "ok", 0),
		  FINISH_TIMEOUT_MS, fail_finish_cb, m);
}

static void mig_maybe_done(struct migration *m)
{
	struct ftd_vm *vm = m->vm;
	struct ftd *d = vm->d;
	json_t *rep, *r = m->result;

	if (!m->finish_done || !m->child_gone)
		return;
	log_info("vm %s: now runs on %s; removing it here", vm->def.name,
		 m->to);
	vm_destroy(vm); /* m keeps a reference */
	rep = json_pack("{s:b, s:s, s:s, s:s, s:f}", "ok", 1, "name",
			vm->def.name, "from", d->name, "to", m->to,
			"elapsed_s", ev_now(d->loop) - m->t0);
	if (r) {
		static const char *const keys[] = {
			"total_ms", "downtime_ms", "bytes",    "rounds",
			"pages",    "final_pages", "throttle", NULL
		};
		const char *const *k;

		for (k = keys; *k; k++)
			if (json_object_get(r, *k))
				json_object_set(rep, *k,
						json_object_get(r, *k));
	} else if (m->manual) {
		json_object_set_new(rep, "note",
				    json_string("resolved by hand"));
		json_object_set_new(rep, "message",
				    json_pack_str("%s runs on %s; removed from "
						  "%s",
						  vm->def.name, m->to,
						  d->name));
	} else {
		json_object_set_new(rep, "note",
				    json_string("the outcome was in doubt; "
						"the destination confirmed "
						"it runs the VM"));
	}
	mig_answer(m, rep);
	mig_free(m);
}

static void ok_finish_cb(struct ftd *d, void *arg, json_t *rep,
			 const char *err)
{
	struct migration *m = arg;

	if (!rep || !json_is_true(json_object_get(rep, "ok")))
		log_warn("vm %s: %s was not told the migration finished "
			 "(%s); it finds out by itself",
			 m->vm->def.name, m->to,
			 rep ? rep_error(rep)
			     : err);
	json_decref(rep);
	m->finish_done = true;
	mig_maybe_done(m);
}

static void mig_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* The destination runs the VM: clean up here, then answer. */
static void mig_moved(struct migration *m)
{
	struct ftd_vm *vm = m->vm;
	struct ftd *d = vm->d;

	m->phase = MIG_MOVED;
	ev_timer_stop(d->loop, &m->timer_w);
	vm_set_state(vm, VM_MOVED, "moved to %s", m->to);
	m->child_gone = vm->pid <= 0;
	if (!m->child_gone) {
		/* ftvm exits by itself after a migration; insist if not. */
		ev_timer_set(&m->timer_w, EXIT_WAIT, 0);
		ev_timer_start(d->loop, &m->timer_w);
	}
	peer_call(d, m->to, m->addr,
		  json_pack("{s:s, s:s, s:b}", "cmd", "finish", "name",
			    vm->def.name, "ok", 1),
		  FINISH_TIMEOUT_MS, ok_finish_cb, m);
}

/* ---- source: in doubt ---- */

static void mig_ask(struct migration *m);

static void resolve_cb(void *arg, int err, json_t *rep)
{
	struct migration *m = arg;

	m->call = NULL;
	if (m->resolve_moved_sent) {
		/* Our ftvm exits; mig_moved() waits for it. */
		json_decref(rep);
		return;
	}
	if (err || !json_is_true(json_object_get(rep, "ok")))
		log_err("vm %s: resolve (stayed) failed: %s", m->vm->def.name,
			err ? strerror(-err)
			    : rep_error(rep));
	json_decref(rep);
	m->prepared = false; /* the destination has no copy */
	mig_complete_fail(m);
}

/* Tell our ftvm how it ended: moved (it exits) or not (it resumes). */
static void mig_resolve(struct migration *m, bool moved)
{
	struct ftd_vm *vm = m->vm;

	m->resolve_moved_sent = moved;
	if (vm->pid > 0)
		m->call = vmcall_start(vm->d, vm->sock,
				       json_pack("{s:s, s:b}", "cmd",
						 "resolve", "moved", moved),
				       10.0, NULL, resolve_cb, m);
	if (moved) {
		if (!m->call && vm->pid > 0) /* cannot tell it: stop it */
			vm_kill(vm, SIGTERM);
		mig_moved(m);
	} else if (!m->call) {
		mig_complete_fail(m);
	}
}

static void mig_give_up(struct migration *m, const char *why)
{
	struct ftd_vm *vm = m->vm;
	struct ftd *d = vm->d;

	m->phase = MIG_GAVE_UP;
	vm_set_state(vm, VM_IN_DOUBT,
		     "migration to %s in doubt: %s; resolve with 'ftctl vm "
		     "resolve %s moved|stayed'",
		     m->to, why, vm->def.name);
	log_err("vm %s: %s", vm->def.name, vm->reason);
	mig_answer(m, reply_err(
			      "migration of %s to %s is in doubt: %s; %s did "
			      "not answer whether it runs %s for %d s "
			      "(last: %s). %s stays paused on %s. When you "
			      "know where it runs: 'ftctl vm resolve %s "
			      "moved' (it runs on %s) or 'ftctl vm resolve %s "
			      "stayed' (resume it here)",
			      vm->def.name, m->to, m->error, m->to,
			      vm->def.name, d->doubt_limit, why, vm->def.name,
			      d->name, vm->def.name, m->to, vm->def.name));
}

static void ask_cb(struct ftd *d, void *arg, json_t *rep, const char *err)
{
	struct migration *m = arg;
	const char *st = rep ? json_string_value(json_object_get(rep, "state"))
			     : NULL;
	char why[FTD_REASON_MAX];

	if (m->phase != MIG_DOUBT) { /* resolved by hand meanwhile */
		json_decref(rep);
		return;
	}
	if (rep && json_is_true(json_object_get(rep, "ok")) && st &&
	    !strcmp(st, "running")) {
		json_decref(rep);
		mig_event(m, "resolve", "%s runs %s: the migration succeeded",
			  m->to, m->vm->def.name);
		mig_resolve(m, true);
		return;
	}
	if (rep && json_is_true(json_object_get(rep, "ok")) && st &&
	    strcmp(st, "incoming")) {
		mig_event(m, "resolve", "%s does not run %s (%s): %s", m->to,
			  m->vm->def.name, st,
			  m->vm->pid > 0 ? "resuming it here"
					 : "and its ftvm here has stopped");
		json_decref(rep);
		m->prepared = false; /* nothing to drop there */
		mig_resolve(m, false);
		return;
	}
	/* Unreachable, or still receiving: ask again in a second. */
	if (!rep)
		snprintf(why, sizeof(why), "%s", err);
	else if (st && !strcmp(st, "incoming"))
		snprintf(why, sizeof(why), "%s is still receiving it", m->to);
	else
		snprintf(why, sizeof(why), "%s: %s", m->to,
			 rep_error(rep));
	json_decref(rep);
	if (ev_now(d->loop) - m->doubt_t0 >= d->doubt_limit) {
		mig_give_up(m, why);
		return;
	}
	log_info("vm %s: in doubt, asking %s again (%s)", m->vm->def.name,
		 m->to, why);
	ev_timer_set(&m->timer_w, 1.0, 0);
	ev_timer_start(d->loop, &m->timer_w);
}

static void mig_ask(struct migration *m)
{
	peer_call(m->vm->d, m->to, m->addr,
		  json_pack("{s:s, s:s}", "cmd", "vm-state", "name",
			    m->vm->def.name),
		  STATE_TIMEOUT_MS, ask_cb, m);
}

static void mig_doubt(struct migration *m, const char *why)
{
	struct ftd_vm *vm = m->vm;

	snprintf(m->error, sizeof(m->error), "%s", why);
	m->phase = MIG_DOUBT;
	m->doubt_t0 = ev_now(vm->d->loop);
	vm_set_state(vm, VM_IN_DOUBT, "migration to %s in doubt: %s", m->to,
		     why);
	mig_event(m, "in-doubt", "in doubt (%s); asking %s whether it runs %s",
		  why, m->to, vm->def.name);
	mig_ask(m);
}

static void mig_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct migration *m = w->data;

	if (m->phase == MIG_DOUBT) {
		mig_ask(m);
	} else if (m->phase == MIG_MOVED && m->vm->pid > 0) {
		log_warn("vm %s: ftvm still runs after the VM moved; "
			 "stopping it",
			 m->vm->def.name);
		vm_kill(m->vm, SIGTERM);
	}
}

/* ---- source: the stream ---- */

static void stream_event(void *arg, json_t *ev)
{
	struct migration *m = arg;
	const char *kind = json_string_value(json_object_get(ev, "event"));

	if (!kind || strcmp(kind, "progress"))
		return;
	json_decref(m->progress);
	m->progress = json_deep_copy(ev);
	json_object_del(m->progress, "id");
	if (m->req)
		ctl_req_event(m->req, json_deep_copy(m->progress));
}

static void stream_reply(void *arg, int err, json_t *rep)
{
	struct migration *m = arg;
	const char *st, *e;

	m->call = NULL;
	if (err) {
		char why[FTD_REASON_MAX];

		snprintf(why, sizeof(why),
			 "%s's ftvm ended the migration without an answer "
			 "(%s)",
			 m->vm->def.name,
			 err == -ECONNRESET ? "connection closed"
					    : strerror(-err));
		m->ftvm_lost = true;
		mig_doubt(m, why);
		return;
	}
	if (json_is_true(json_object_get(rep, "ok"))) {
		m->result = rep;
		mig_event(m, "done", "%s runs %s now", m->to, m->vm->def.name);
		mig_moved(m);
		return;
	}
	st = json_string_value(json_object_get(rep, "state"));
	e = rep_error(rep);
	if (st && !strcmp(st, "in-doubt")) {
		mig_doubt(m, e ? e : "the destination's confirmation never "
				     "came");
		json_decref(rep);
		return;
	}
	mig_fail(m, "%s", e ? e : "ftvm gave no reason");
	json_decref(rep);
}

static void prepared_cb(struct ftd *d, void *arg, json_t *rep,
			const char *err)
{
	struct migration *m = arg;
	struct ftd_vm *vm = m->vm;
	json_t *req, *v;
	const char *key;
	char to[FTD_ADDR_MAX + 8];
	int port;

	if (!rep) {
		mig_fail(m, "%s", err);
		return;
	}
	if (!json_is_true(json_object_get(rep, "ok"))) {
		const char *e =
			rep_error(rep);

		mig_fail(m, "%s refused: %s", m->to, e ? e : "no reason given");
		json_decref(rep);
		return;
	}
	m->prepared = true;
	port = (int)json_integer_value(json_object_get(rep, "port"));
	json_decref(rep);
	if (port <= 0 || port > 65535) {
		mig_fail(m, "%s answered no usable port", m->to);
		return;
	}
	if (vm->pid <= 0) {
		mig_fail(m, "its ftvm stopped before the stream began");
		return;
	}
	host_port(to, sizeof(to), m->host, port);
	req = json_pack("{s:s, s:s, s:s, s:b, s:b}", "cmd", "migrate", "to",
			to, "peer_name", m->to, "insecure", m->insecure,
			"progress", 1);
	json_object_foreach(m->opts, key, v)
		json_object_set(req, key, v);
	if (!m->insecure) {
		json_object_set_new(req, "ca", json_string(d->ca));
		json_object_set_new(req, "cert", json_string(d->cert));
		json_object_set_new(req, "key", json_string(d->key));
	}
	m->phase = MIG_STREAM;
	mig_event(m, "stream", "streaming %s to %s (%s)", vm->def.name, m->to,
		  to);
	m->call = vmcall_start(d, vm->sock, req, 0, stream_event,
			       stream_reply, m);
	if (!m->call)
		mig_fail(m, "cannot reach its ftvm's control socket: %s",
			 strerror(errno));
}

/*
 * The options ftd passes on to ftvm's "migrate", checked here as ftvm
 * would, so that a bad one fails before the destination is involved.
 */
static const struct mig_opt {
	const char *key;
	enum { OPT_BOOL, OPT_UINT, OPT_COMPRESS } type;
	json_int_t min, max; /* OPT_UINT: min..max, or 0 if zero_ok */
	bool zero_ok;
	const char *what;
} mig_opt_table[] = {
	{ "downtime_ms", OPT_UINT, 1, 60000, false,
	  "an integer 1..60000 (milliseconds)" },
	{ "bandwidth", OPT_UINT, 1, INT64_MAX, true,
	  "a non-negative integer (bytes per second; 0: unlimited)" },
	{ "xbzrle_cache", OPT_UINT, 8192, 64LL << 30, true,
	  "0 (off) or 8192 .. 64 GiB (bytes)" },
	{ "timeout_ms", OPT_UINT, 100, 600000, false,
	  "an integer 100..600000 (milliseconds)" },
	{ "abort_if_busy", OPT_BOOL, 0, 0, false, "true or false" },
	{ "auto_converge", OPT_BOOL, 0, 0, false, "true or false" },
	{ "compress", OPT_COMPRESS, 0, 0, false,
	  "\"none\", \"lz4\" or \"auto\"" },
};

/* Copy the migration options of `req` to `opts`; an error reply if one
 * is wrong. */
static json_t *mig_opts(json_t *req, json_t *opts)
{
	size_t i;

	for (i = 0; i < sizeof(mig_opt_table) / sizeof(*mig_opt_table); i++) {
		const struct mig_opt *o = &mig_opt_table[i];
		json_t *v = json_object_get(req, o->key);
		const char *s = json_string_value(v);
		json_int_t n = json_integer_value(v);
		bool ok;

		if (!v)
			continue;
		switch (o->type) {
		case OPT_BOOL: ok = json_is_boolean(v); break;
		case OPT_UINT:
			ok = json_is_integer(v) &&
			     ((n == 0 && o->zero_ok) ||
			      (n >= o->min && n <= o->max));
			break;
		default:
			ok = s && (!strcmp(s, "none") || !strcmp(s, "lz4") ||
				   !strcmp(s, "auto"));
		}
		if (!ok)
			return reply_err("\"%s\" must be %s", o->key, o->what);
		json_object_set(opts, o->key, v);
	}
	return NULL;
}

json_t *mig_start(struct ftd *d, json_t *req, struct ctl_req *r)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	const char *to = json_string_value(json_object_get(req, "to"));
	char addr[FTD_ADDR_MAX], host[FTD_ADDR_MAX], err[FTD_REASON_MAX];
	struct ftd_vm *vm;
	struct migration *m;
	json_t *opts, *v, *rep;
	int port;

	if (!name)
		return reply_err("\"name\" must be a string: the VM's name");
	if (!to || !*to)
		return reply_err("\"to\" must be a string: the destination "
				 "host's name");
	vm = vm_find(d, name);
	if (!vm)
		return reply_err("no VM named \"%s\" on %s", name, d->name);
	opts = json_object();
	rep = mig_opts(req, opts);
	if (rep) {
		json_decref(opts);
		return rep;
	}
	v = json_object_get(req, "insecure");
	if (v && !json_is_boolean(v)) {
		json_decref(opts);
		return reply_err("\"insecure\" must be true or false");
	}
	if (!strcmp(to, d->name)) {
		json_decref(opts);
		return reply_err("%s already runs on %s: nothing to move", name,
				 d->name);
	}
	/* Every check that can fail before anything starts. */
	*err = '\0';
	if (!d->peering)
		snprintf(err, sizeof(err),
			 "%s does not peer (ftd runs with --listen none)",
			 d->name);
	else if (vm->state != VM_RUNNING)
		snprintf(err, sizeof(err), "%s is %s, not running", name,
			 vm_state_name(vm->state));
	else if (vm->ha)
		snprintf(err, sizeof(err),
			 "%s is protected or a backup here: `ftctl unprotect` "
			 "it first",
			 name);
	else if (peers_lookup(d, to, addr, sizeof(addr), err, sizeof(err)))
		; /* err says why */
	else if (!json_is_true(v) && cert_check(d, err, sizeof(err)))
		; /* err says why */
	else if (addr_split(addr, host, sizeof(host), &port))
		snprintf(err, sizeof(err), "bad address %s for %s", addr, to);
	if (*err) {
		json_decref(opts);
		return reply_err("migration of %s to %s failed: %s; %s %s on "
				 "%s",
				 name, to, err, name,
				 vm->state == VM_RUNNING ? "keeps running"
							 : "stays",
				 d->name);
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		json_decref(opts);
		return reply_err("out of memory");
	}
	m->vm = vm;
	vm_get(vm);
	m->req = r;
	m->opts = opts;
	m->insecure = json_is_true(v);
	snprintf(m->to, sizeof(m->to), "%s", to);
	snprintf(m->addr, sizeof(m->addr), "%s", addr);
	snprintf(m->host, sizeof(m->host), "%s", host);
	m->t0 = ev_now(d->loop);
	ev_init(&m->timer_w, mig_timer_cb);
	m->timer_w.data = m;
	vm->mig = m;
	vm_set_state(vm, VM_MIGRATING, "migrating to %s", to);
	m->phase = MIG_PREPARE;
	mig_event(m, "prepare", "asking %s (%s) to receive %s", to, addr,
		  name);
	peer_call(d, to, addr,
		  json_pack("{s:s, s:o, s:b}", "cmd", "prepare", "vm",
			    vm_def_to_json(&vm->def), "insecure",
			    m->insecure),
		  PREPARE_TIMEOUT_MS, prepared_cb, m);
	return NULL;
}

/* ---- source: resolve by hand ---- */

json_t *mig_resolve_cmd(struct ftd *d, json_t *req, struct ctl_req *r)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	json_t *moved = json_object_get(req, "moved");
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;
	struct migration *m;

	if (!name)
		return reply_err("\"name\" must be a string: the VM's name");
	if (!json_is_boolean(moved))
		return reply_err("\"moved\" must be true (it runs on the "
				 "destination) or false (resume it here)");
	if (!vm)
		return reply_err("no VM named \"%s\" on %s", name, d->name);
	m = vm->mig;
	if (vm->state != VM_IN_DOUBT || !m || m->phase != MIG_GAVE_UP)
		return reply_err("%s is %s%s; only a migration left in doubt "
				 "is resolved by hand",
				 name, vm_state_name(vm->state),
				 vm->state == VM_IN_DOUBT
					 ? " and ftd is still asking the "
					   "destination"
					 : "");
	m->req = r;
	m->manual = true;
	m->prepared = false; /* whatever the destination has, it keeps */
	snprintf(m->error, sizeof(m->error), "resolved by hand: not moved");
	log_info("vm %s: resolved by hand: %s", name,
		 json_is_true(moved) ? "moved" : "stayed");
	if (json_is_true(moved)) {
		mig_resolve(m, true);
	} else {
		m->phase = MIG_FAILING;
		mig_resolve(m, false);
	}
	return NULL;
}

/* ---- the child of a VM in a migration state exited ---- */

static void dest_child_exited(struct ftd_vm *vm);

void mig_child_exited(struct ftd_vm *vm)
{
	struct migration *m = vm->mig;

	if (vm->state == VM_INCOMING) {
		dest_child_exited(vm);
		return;
	}
	if (!m) {
		/* In doubt, given up, and now the paused copy is gone. */
		char why[FTD_REASON_MAX];

		snprintf(why, sizeof(why), "%s", vm->reason);
		vm_set_state(vm, VM_STOPPED,
			     "its ftvm stopped while a migration was in "
			     "doubt: %s",
			     why);
		return;
	}
	switch (m->phase) {
	case MIG_MOVED:
		ev_timer_stop(vm->d->loop, &m->timer_w);
		m->child_gone = true;
		mig_maybe_done(m);
		break;
	case MIG_GAVE_UP: {
		char why[FTD_REASON_MAX];

		snprintf(why, sizeof(why), "%s", vm->reason);
		vm_set_state(vm, VM_STOPPED,
			     "its ftvm stopped while the migration to %s was "
			     "in doubt: %s; check whether %s runs it",
			     m->to, why, m->to);
		mig_free(m);
		break;
	}
	default:
		/* The stream call sees the connection close; the prepare
		 * and doubt paths check vm->pid. */
		break;
	}
}

/* ---- destination ---- */

static void reply_prep(struct ftd_vm *vm, json_t *rep)
{
	struct peer_req *pr = vm->prep;

	vm->prep = NULL;
	if (pr)
		peer_req_reply(pr, rep);
	else
		json_decref(rep);
}

void vm_out_close(struct ftd_vm *vm)
{
	if (vm->out_fd < 0)
		return;
	ev_io_stop(vm->d->loop, &vm->out_w);
	close(vm->out_fd);
	vm->out_fd = -1;
}

void mig_incoming_out(struct ftd_vm *vm)
{
	ssize_t n;
	char *nl;

	n = read(vm->out_fd, vm->out + vm->out_len,
		 sizeof(vm->out) - 1 - vm->out_len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		vm_out_close(vm);
		return;
	}
	vm->out_len += (size_t)n;
	vm->out[vm->out_len] = '\0';
	while ((nl = memchr(vm->out, '\n', vm->out_len))) {
		size_t used = (size_t)(nl + 1 - vm->out);

		*nl = '\0';
		if (vm->state == VM_BACKUP) {
			ha_backup_line(vm, vm->out);
		} else if (!strncmp(vm->out, LISTEN_PREFIX, strlen(LISTEN_PREFIX)) &&
		    vm->prep) {
			const char *a = vm->out + strlen(LISTEN_PREFIX);
			const char *colon = strrchr(a, ':');
			int port = colon ? atoi(colon + 1) : 0;

			if (port > 0 && port <= 65535) {
				log_info("vm %s: ftvm incoming listens on %s",
					 vm->def.name, a);
				reply_prep(vm, json_pack("{s:b, s:i, s:s}",
							 "ok", 1, "port", port,
							 "listen", a));
			}
		} else if (*vm->out) {
			log_info("vm %s: ftvm: %s", vm->def.name, vm->out);
		}
		vm->out_len -= used;
		memmove(vm->out, vm->out + used, vm->out_len);
	}
	if (vm->out_len == sizeof(vm->out) - 1)
		vm->out_len = 0; /* a line this long is not ours: drop it */
}

static void dest_child_exited(struct ftd_vm *vm)
{
	struct ftd *d = vm->d;
	struct peer_req *fin = vm->finish;
	char why[FTD_REASON_MAX];

	if (vm->out_fd >= 0) {
		mig_incoming_out(vm); /* the last words, if any */
		vm_out_close(vm);
	}
	/* A probe in flight ends by itself: probe_cb sees vm->gone. */
	snprintf(why, sizeof(why), "%s", vm->reason);
	reply_prep(vm, reply_err("%s could not receive %s: %s", d->name,
				 vm->def.name, why));
	vm->finish = NULL;
	if (d->stopping) {
		vm_set_state(vm, VM_STOPPED,
			     "ftd shut down during an incoming migration "
			     "from %s: %s",
			     vm->from, why);
	} else {
		log_warn("vm %s: incoming migration from %s failed: %s; "
			 "removing it",
			 vm->def.name, vm->from, why);
		vm_destroy(vm);
	}
	if (fin)
		peer_req_reply(fin, json_pack("{s:b, s:s}", "ok", 1, "state",
					      "absent"));
}

static void dest_promote(struct ftd_vm *vm, const char *how)
{
	ev_timer_stop(vm->d->loop, &vm->timer_w);
	vm_set_state(vm, VM_RUNNING, "migrated from %s (%s)", vm->from, how);
	log_info("vm %s: %s", vm->def.name, vm->reason);
}

struct probe {
	struct ftd_vm *vm;
	struct peer_req *pr; /* a "vm-state" to answer, or NULL */
};

static bool ftvm_runs(json_t *st)
{
	const char *s = json_string_value(json_object_get(st, "state"));

	return s && (!strcmp(s, "running") || !strcmp(s, "paused"));
}

static void probe_cb(void *arg, int err, json_t *rep)
{
	struct probe *p = arg;
	struct ftd_vm *vm = p->vm;

	if (vm->probe && !p->pr)
		vm->probe = NULL;
	if (!vm->gone && vm->state == VM_INCOMING && !err && ftvm_runs(rep))
		dest_promote(vm, "its ftvm runs it");
	if (p->pr)
		peer_req_reply(p->pr,
			       json_pack("{s:b, s:s}", "ok", 1, "state",
					 vm->gone ? "absent"
						  : vm_state_name(vm->state)));
	json_decref(rep);
	vm_put(vm);
	free(p);
}

/* Ask an incoming VM's ftvm whether it runs the VM yet. */
static bool probe_start(struct ftd_vm *vm, struct peer_req *pr)
{
	struct probe *p = malloc(sizeof(*p));
	struct vmcall *c;

	if (!p)
		return false;
	p->vm = vm;
	p->pr = pr;
	vm_get(vm);
	c = vmcall_start(vm->d, vm->sock, json_pack("{s:s}", "cmd", "status"),
			 2.0, NULL, probe_cb, p);
	if (!c) {
		vm_put(vm);
		free(p);
		return false;
	}
	if (!pr)
		vm->probe = c;
	return true;
}

/* Every second while incoming (vm->timer_w, see ftd_vm.c). */
void mig_incoming_tick(struct ftd_vm *vm)
{
	struct ftd *d = vm->d;

	if (vm->prep && ev_now(d->loop) - vm->started > LISTEN_TIMEOUT) {
		log_err("vm %s: ftvm incoming did not say where it listens "
			"in %.0f s; stopping it",
			vm->def.name, LISTEN_TIMEOUT);
		vm_kill(vm, SIGKILL);
		return;
	}
	if (vm->finish) {
		if (ev_now(d->loop) - vm->finish_t > FINISH_KILL_AFTER)
			vm_kill(vm, SIGKILL); /* it ignored SIGTERM */
		return;
	}
	if (!vm->prep && !vm->probe)
		probe_start(vm, NULL);
}

static void dest_prepare(struct ftd *d, struct peer_req *pr, json_t *req,
			 const char *from)
{
	char err[FTD_REASON_MAX];
	struct vm_argbuf ab;
	char tmo[16];
	struct vm_def def;
	struct ftd_vm *vm;
	json_t *ins = json_object_get(req, "insecure");
	char *argv[32];
	int n = 0, rc;

	if (ins && !json_is_boolean(ins)) {
		peer_req_reply(pr, reply_err("\"insecure\" must be true or "
					     "false"));
		return;
	}
	if (vm_def_from_peer(json_object_get(req, "vm"), &def, err,
			     sizeof(err))) {
		peer_req_reply(pr, reply_err("bad VM definition: %s", err));
		return;
	}
	*err = '\0';
	vm = vm_find(d, def.name);
	if (vm)
		snprintf(err, sizeof(err),
			 "a VM named %s already exists on %s (%s)", def.name,
			 d->name, vm_state_name(vm->state));
	else if (def.net && (vm = vm_tap_user(d, def.net, NULL)))
		snprintf(err, sizeof(err),
			 "its TAP device is already used by VM %s on %s",
			 vm->def.name, d->name);
	else if (!json_is_true(ins))
		cert_check(d, err, sizeof(err)); /* err says why, if bad */
	if (*err) {
		vm_def_free(&def);
		peer_req_reply(pr, reply_err("%s", err));
		return;
	}
	if (vm_create(d, &def, VM_INCOMING, &vm, err, sizeof(err))) {
		vm_def_free(&def);
		peer_req_reply(pr, reply_err("%s", err));
		return;
	}
	snprintf(vm->from, sizeof(vm->from), "%s", from);
	snprintf(tmo, sizeof(tmo), "%d", INCOMING_TIMEOUT);
	argv[n++] = NULL;
	argv[n++] = "incoming";
	n = vm_listen_args(d, &ab, json_is_true(ins), from, argv, n);
	n = vm_dev_args(vm, &ab, argv, n);
	argv[n++] = "--timeout";
	argv[n++] = tmo;
	argv[n] = NULL;
	rc = vm_spawn(vm, argv, true);
	if (rc) {
		peer_req_reply(pr, reply_err("%s cannot start ftvm incoming: "
					     "%s",
					     d->name, strerror(-rc)));
		vm_destroy(vm);
		return;
	}
	vm->prep = pr;
	vm_set_state(vm, VM_INCOMING, "incoming migration from %s", from);
	ev_timer_set(&vm->timer_w, 1.0, 1.0);
	ev_timer_start(d->loop, &vm->timer_w);
}

static void dest_finish(struct ftd *d, struct peer_req *pr, json_t *req,
			const char *from)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	json_t *ok = json_object_get(req, "ok");
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;

	if (!name || !json_is_boolean(ok)) {
		peer_req_reply(pr, reply_err("finish needs \"name\" and "
					     "\"ok\""));
		return;
	}
	if (!vm) {
		peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "state",
					     "absent"));
		return;
	}
	if (vm->state != VM_INCOMING) {
		peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "state",
					     vm_state_name(vm->state)));
		return;
	}
	if (strcmp(vm->from, from)) {
		peer_req_reply(pr, reply_err("%s is coming from %s, not %s",
					     name, vm->from, from));
		return;
	}
	if (json_is_true(ok)) {
		dest_promote(vm, "the source confirmed");
		peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "state",
					     "running"));
		return;
	}
	log_info("vm %s: %s abandons the migration; stopping ftvm incoming",
		 name, from);
	if (vm->finish) /* a second "finish": answer the first now */
		peer_req_reply(vm->finish, reply_err("superseded"));
	vm->finish = pr;
	vm->finish_t = ev_now(d->loop);
	vm_kill(vm, SIGTERM); /* dest_child_exited answers */
}

static void dest_vm_state(struct ftd *d, struct peer_req *pr, json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;

	if (!name) {
		peer_req_reply(pr, reply_err("vm-state needs \"name\""));
		return;
	}
	if (vm && vm->state == VM_INCOMING && vm->pid > 0 && !vm->prep &&
	    probe_start(vm, pr))
		return; /* probe_cb answers */
	peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "state",
				     vm ? vm_state_name(vm->state)
					: "absent"));
}

void peer_dispatch(struct ftd *d, struct peer_req *pr, json_t *req)
{
	const char *cmd = json_string_value(json_object_get(req, "cmd"));
	const char *from = json_string_value(json_object_get(req, "from"));
	char addr[FTD_ADDR_MAX], err[FTD_REASON_MAX];

	if (d->stopping) {
		peer_req_reply(pr, reply_err("ftd on %s is shutting down",
					     d->name));
		return;
	}
	if (!from) {
		peer_req_reply(pr, reply_err("request has no \"from\" host"));
		return;
	}
	/* Only hosts this one knows may move VMs here. */
	if (peers_lookup(d, from, addr, sizeof(addr), err, sizeof(err))) {
		log_warn("peer request \"%s\" from %s refused: %s", cmd, from,
			 err);
		peer_req_reply(pr, reply_err("%s is not a peer of %s (not in "
					     "its peers file %s)",
					     from, d->name, d->peers_file));
		return;
	}
	if (!strcmp(cmd, "hello"))
		peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "name",
					     d->name));
	else if (!strcmp(cmd, "prepare"))
		dest_prepare(d, pr, req, from);
	else if (!strcmp(cmd, "finish"))
		dest_finish(d, pr, req, from);
	else if (!strcmp(cmd, "vm-state"))
		dest_vm_state(d, pr, req);
	else if (ha_peer_dispatch(d, pr, cmd, req, from))
		; /* answered */
	else
		peer_req_reply(pr, reply_err("unknown command \"%s\"", cmd));
}
