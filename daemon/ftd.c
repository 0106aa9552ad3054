// SPDX-License-Identifier: MIT
/*
 * ftd - the host daemon: one per host.  Keeps VM definitions in a state
 * directory, runs each VM as an ftvm child and supervises it, peers with
 * the ftd of other hosts over TLS, and moves VMs between hosts (live
 * migration on top of ftvm).  Steered by ftctl through a JSON-lines
 * control socket (docs/control-protocol.md, docs/ftd.md).
 *
 * This file: options, startup and shutdown, the control socket and its
 * commands.  See ftd.h for the other modules.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "chan_net.h"
#include "cli.h"
#include "ftd.h"
#include "log.h"

#define CTL_CLIENTS_MAX 16
#define CTL_OUT_MAX (1024 * 1024) /* unsent output before a client is cut */
#define SHUTDOWN_GRACE 10.0	  /* seconds before SIGKILL at shutdown */

struct ctl_client {
	ev_io io;    /* reads */
	ev_io out_w; /* writes that did not fit the socket at once */
	struct ftd *d;
	int refs;
	bool closed; /* fd closed; pending replies are dropped */
	bool eof;    /* the client sent all it will send */
	bool busy;   /* a request awaits its reply: replies stay in order */
	char *out;
	size_t out_len;
	size_t len;
	char buf[FTD_LINE_MAX + 1];
};

struct ctl_req {
	struct ctl_client *cl;
	json_t *id;
};

json_t *reply_err(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

json_t *reply_ok(void)
{
	return json_pack("{s:b}", "ok", 1);
}

/* ---- control clients ---- */

static void client_put(struct ctl_client *cl)
{
	if (--cl->refs > 0)
		return;
	free(cl->out);
	free(cl);
}

static void client_close(struct ctl_client *cl)
{
	if (cl->closed)
		return;
	ev_io_stop(cl->d->loop, &cl->io);
	ev_io_stop(cl->d->loop, &cl->out_w);
	close(cl->io.fd);
	cl->closed = true;
	cl->d->nclients--;
	client_put(cl);
}

static void client_out_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *cl = w->data;
	ssize_t n = send(cl->io.fd, cl->out, cl->out_len, MSG_NOSIGNAL);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		client_close(cl);
		return;
	}
	cl->out_len -= (size_t)n;
	memmove(cl->out, cl->out + n, cl->out_len);
	if (cl->out_len)
		return;
	ev_io_stop(loop, w);
	if (cl->eof && !cl->busy)
		client_close(cl);
}

/* Send one JSON line (takes j); what does not fit is queued. */
static void client_send(struct ctl_client *cl, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);
	size_t len, off = 0;
	ssize_t n;

	json_decref(j);
	if (!s || cl->closed) {
		free(s);
		return;
	}
	len = strlen(s);
	s[len++] = '\n'; /* overwrites the NUL: s is not a string now */
	while (!cl->out_len && off < len) {
		n = send(cl->io.fd, s + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			free(s);
			client_close(cl);
			return;
		}
		off += (size_t)n;
	}
	if (off < len) {
		char *p;

		if (cl->out_len + len - off > CTL_OUT_MAX) {
			log_warn("control: a client reads too slowly; "
				 "dropping it");
			free(s);
			client_close(cl);
			return;
		}
		p = realloc(cl->out, cl->out_len + len - off);
		if (!p) {
			free(s);
			client_close(cl);
			return;
		}
		memcpy(p + cl->out_len, s + off, len - off);
		cl->out = p;
		cl->out_len += len - off;
		ev_io_start(cl->d->loop, &cl->out_w);
	}
	free(s);
}

static void client_process(struct ctl_client *cl);

void ctl_req_event(struct ctl_req *r, json_t *ev)
{
	if (r->id)
		json_object_set(ev, "id", r->id);
	client_send(r->cl, ev);
}

void ctl_req_done(struct ctl_req *r, json_t *rep)
{
	struct ctl_client *cl = r->cl;

	if (r->id)
		json_object_set(rep, "id", r->id);
	client_send(cl, rep);
	json_decref(r->id);
	free(r);
	cl->busy = false;
	if (!cl->closed) {
		if (!cl->eof)
			ev_io_start(cl->d->loop, &cl->io);
		client_process(cl);
	}
	client_put(cl);
}

/* ---- commands ---- */

typedef json_t *(*ctl_cmd_fn)(struct ftd *d, json_t *req, struct ctl_req *r);

/* Reject members other than cmd, id and those in `allowed` (NULL-ended). */
static json_t *check_members(json_t *req, const char *const *allowed)
{
	const char *key;
	json_t *v;

	json_object_foreach(req, key, v) {
		const char *const *a;

		if (!strcmp(key, "cmd") || !strcmp(key, "id"))
			continue;
		for (a = allowed; *a; a++)
			if (!strcmp(key, *a))
				break;
		if (!*a)
			return reply_err("unknown member \"%s\" for \"%s\"",
					 key,
					 json_string_value(
						 json_object_get(req, "cmd")));
	}
	return NULL;
}

/* The VM named by req's "name"; NULL with *err set when there is none. */
static struct ftd_vm *req_vm(struct ftd *d, json_t *req, json_t **err)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	struct ftd_vm *vm;

	if (!name) {
		*err = reply_err("\"name\" must be a string: the VM's name");
		return NULL;
	}
	vm = vm_find(d, name);
	if (!vm)
		*err = reply_err("no VM named \"%s\" on %s", name, d->name);
	return vm;
}

static json_t *cmd_create(struct ftd *d, json_t *req, struct ctl_req *r)
{
	struct vm_def def;
	struct ftd_vm *vm, *other;
	char err[FTD_REASON_MAX];

	if (vm_def_from_json(req, true, &def, err, sizeof(err)))
		return reply_err("%s", err);
	vm = vm_find(d, def.name);
	if (vm) {
		vm_def_free(&def);
		return reply_err("a VM named \"%s\" already exists on %s (%s)",
				 vm->def.name, d->name,
				 vm_state_name(vm->state));
	}
	other = def.net ? vm_tap_user(d, def.net, NULL) : NULL;
	if (other) {
		vm_def_free(&def);
		return reply_err("the TAP device in --net is already used by "
				 "VM \"%s\"",
				 other->def.name);
	}
	if (vm_create(d, &def, VM_STOPPED, &vm, err, sizeof(err))) {
		vm_def_free(&def);
		return reply_err("%s", err);
	}
	vm_set_state(vm, VM_STOPPED, "created");
	log_info("vm %s: created", vm->def.name);
	return json_pack("{s:b, s:o}", "ok", 1, "vm", vm_summary(vm));
}

static json_t *cmd_start(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *rep = NULL;
	struct ftd_vm *vm;

	vm = req_vm(d, req, &rep);
	return vm ? vm_start(vm, r) : rep;
}

static json_t *cmd_stop(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *rep = NULL;
	struct ftd_vm *vm;

	vm = req_vm(d, req, &rep);
	return vm ? vm_stop(vm, r) : rep;
}

static json_t *cmd_delete(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *rep = NULL;
	struct ftd_vm *vm;

	vm = req_vm(d, req, &rep);
	if (!vm)
		return rep;
	if (vm->state != VM_STOPPED || vm->pid > 0)
		return reply_err("%s is %s; stop it first (ftctl vm stop %s)",
				 vm->def.name, vm_state_name(vm->state),
				 vm->def.name);
	log_info("vm %s: deleted", vm->def.name);
	vm_destroy(vm);
	return reply_ok();
}

struct status_q {
	struct ctl_req *r;
	struct ftd_vm *vm;
};

static void status_live_cb(void *arg, int err, json_t *live)
{
	struct status_q *q = arg;
	json_t *s = vm_summary(q->vm);

	if (live) {
		json_object_del(live, "ok");
		json_object_set_new(s, "ftvm", live);
	}
	ctl_req_done(q->r, json_pack("{s:b, s:o}", "ok", 1, "vm", s));
	vm_put(q->vm);
	free(q);
}

static json_t *cmd_status(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *rep = NULL;
	struct status_q *q;
	struct ftd_vm *vm;

	vm = req_vm(d, req, &rep);
	if (!vm)
		return rep;
	/* A live VM adds what its ftvm says; a silent ftvm adds nothing. */
	q = vm->pid > 0 && vm->state != VM_STARTING ? malloc(sizeof(*q))
						     : NULL;
	if (q) {
		q->r = r;
		q->vm = vm;
		vm_get(vm);
		if (vmcall_start(d, vm->sock, json_pack("{s:s}", "cmd",
							 "status"),
				 2.0, NULL, status_live_cb, q))
			return NULL;
		vm_put(vm);
		free(q);
	}
	return json_pack("{s:b, s:o}", "ok", 1, "vm", vm_summary(vm));
}

static json_t *cmd_list(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *a;
	struct ftd_vm *vm;

	a = json_array();
	for (vm = d->vms; vm; vm = vm->next)
		json_array_append_new(a, vm_summary(vm));
	return json_pack("{s:b, s:o}", "ok", 1, "vms", a);
}

static json_t *cmd_host(struct ftd *d, json_t *req, struct ctl_req *r)
{
	struct ftd_vm *vm;
	int n = 0;

	for (vm = d->vms; vm; vm = vm->next)
		n++;
	return json_pack("{s:b, s:s, s:s, s:s, s:s, s:b, s:i, s:o}", "ok", 1,
			 "name", d->name, "listen",
			 d->peering ? d->listen : "none", "state_dir",
			 d->state_dir, "config_dir", d->config_dir,
			 "insecure_peers", d->insecure_peers, "vms", n,
			 "peers", peers_list(d));
}

/* "peers": say hello to every peer, report who answers. */
struct peers_q {
	struct ctl_req *r;
	json_t *list; /* [{name, addr}], filled in with the answers */
	int pending;
};

struct peer_ping {
	struct peers_q *q;
	json_t *entry;
};

static void peer_ping_cb(struct ftd *d, void *arg, json_t *rep,
			 const char *err)
{
	struct peer_ping *p = arg;
	struct peers_q *q = p->q;
	const char *name = json_string_value(json_object_get(rep, "name"));
	const char *want = json_string_value(json_object_get(p->entry, "name"));

	if (rep && json_is_true(json_object_get(rep, "ok")) && name &&
	    !strcmp(name, want))
		json_object_set_new(p->entry, "ok", json_true());
	else {
		char why[FTD_REASON_MAX];

		if (!rep)
			snprintf(why, sizeof(why), "%s", err);
		else if (json_is_true(json_object_get(rep, "ok")))
			snprintf(why, sizeof(why),
				 "it answers as %s, not %s",
				 name ? name : "nobody", want);
		else
			snprintf(why, sizeof(why), "it refuses: %s",
				 json_string_value(json_object_get(rep,
								   "error")) ?:
					 "no reason given");
		json_object_set_new(p->entry, "ok", json_false());
		json_object_set_new(p->entry, "error", json_string(why));
	}
	json_decref(rep);
	free(p);
	if (--q->pending)
		return;
	ctl_req_done(q->r, json_pack("{s:b, s:o}", "ok", 1, "peers", q->list));
	free(q);
}

static json_t *cmd_peers(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *e;
	struct peers_q *q;
	size_t i;

	if (!d->peering)
		return reply_err("%s does not peer (ftd runs with --listen "
				 "none)",
				 d->name);
	q = calloc(1, sizeof(*q));
	if (!q)
		return reply_err("out of memory");
	q->list = peers_list(d);
	if (!json_array_size(q->list)) {
		json_decref(q->list);
		free(q);
		return reply_err("%s has no peers: its peers file %s is "
				 "missing or empty",
				 d->name, d->peers_file);
	}
	q->r = r;
	q->pending = (int)json_array_size(q->list);
	json_array_foreach(q->list, i, e) {
		struct peer_ping *p = malloc(sizeof(*p));

		if (!p) { /* answer for it at once, as a failure */
			json_object_set_new(e, "ok", json_false());
			if (--q->pending == 0) {
				json_t *list = q->list;

				free(q);
				return json_pack("{s:b, s:o}", "ok", 1,
						 "peers", list);
			}
			continue;
		}
		p->q = q;
		p->entry = e;
		peer_call(d, json_string_value(json_object_get(e, "name")),
			  json_string_value(json_object_get(e, "addr")),
			  json_pack("{s:s}", "cmd", "hello"), 5000,
			  peer_ping_cb, p);
	}
	return NULL;
}

/* Each command, and the members it takes beside "cmd" and "id": any
 * other is refused before the command runs (check_members). */
#define CMD_MEMBERS_MAX 12
static const struct {
	const char *name;
	ctl_cmd_fn fn;
	const char *members[CMD_MEMBERS_MAX]; /* at most MAX - 1: NULL-ended */
} commands[] = {
	{ "create", cmd_create,
	  { "name", "image", "mem", "cmdline", "net", "disk_size", "console" } },
	{ "start", cmd_start, { "name" } },
	{ "stop", cmd_stop, { "name" } },
	{ "delete", cmd_delete, { "name" } },
	{ "status", cmd_status, { "name" } },
	{ "list", cmd_list, { NULL } },
	{ "host", cmd_host, { NULL } },
	{ "migrate", mig_start,
	  { "name", "to", "downtime_ms", "bandwidth", "abort_if_busy",
	    "auto_converge", "compress", "xbzrle_cache", "timeout_ms",
	    "insecure" } },
	{ "resolve", mig_resolve_cmd, { "name", "moved" } },
	{ "peers", cmd_peers, { NULL } },
	{ "protect", ha_protect_cmd,
	  { "name", "peer", "witness", "no_arbiter", "insecure", "interval_ms",
	    "timeout_ms", "grace_ms", "delta" } },
	{ "unprotect", ha_unprotect_cmd, { "name" } },
	{ "failover", ha_failover_cmd, { "name", "force" } },
	{ "leases", ha_leases_cmd, { NULL } },
};

/* Handle one request line; the reply is sent now or later (busy). */
static void client_handle(struct ctl_client *cl, const char *line)
{
	struct ftd *d = cl->d;
	json_error_t jerr;
	json_t *req, *rep = NULL, *id = NULL;
	struct ctl_req *r;
	const char *cmd;
	size_t i;

	req = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		rep = reply_err("bad JSON at column %d: %s", jerr.column,
				jerr.text);
	} else if (!json_is_object(req)) {
		rep = reply_err("request must be a JSON object");
	} else {
		id = json_object_get(req, "id");
		cmd = json_string_value(json_object_get(req, "cmd"));
		if (!cmd)
			rep = reply_err("request has no \"cmd\" string");
		else if (d->stopping)
			rep = reply_err("ftd on %s is shutting down", d->name);
		for (i = 0; !rep && i < sizeof(commands) / sizeof(*commands);
		     i++)
			if (!strcmp(cmd, commands[i].name))
				break;
		if (!rep && i == sizeof(commands) / sizeof(*commands))
			rep = reply_err("unknown command \"%s\"", cmd);
		if (!rep)
			rep = check_members(req, commands[i].members);
		if (!rep) {
			r = calloc(1, sizeof(*r));
			if (!r) {
				rep = reply_err("out of memory");
			} else {
				r->cl = cl;
				r->id = json_incref(id);
				cl->refs++;
				cl->busy = true;
				rep = commands[i].fn(d, req, r);
				if (!rep) { /* async: r is the command's */
					json_decref(req);
					return;
				}
				json_decref(r->id);
				free(r);
				cl->busy = false;
				cl->refs--;
			}
		}
	}
	if (id)
		json_object_set(rep, "id", id);
	json_decref(req);
	client_send(cl, rep);
}

/* Answer the complete lines in the buffer, in order, while not busy. */
static void client_process(struct ctl_client *cl)
{
	char *nl;

	cl->refs++;
	while (!cl->closed && !cl->busy &&
	       (nl = memchr(cl->buf, '\n', cl->len))) {
		size_t used = (size_t)(nl + 1 - cl->buf);

		*nl = '\0';
		if (nl > cl->buf)
			client_handle(cl, cl->buf);
		cl->len -= used;
		memmove(cl->buf, cl->buf + used, cl->len);
	}
	if (!cl->closed && !cl->busy) {
		if (cl->len >= FTD_LINE_MAX) {
			client_send(cl, reply_err("request longer than %d "
						  "bytes",
						  FTD_LINE_MAX - 1));
			client_close(cl);
		} else if (cl->eof && !cl->out_len) {
			client_close(cl);
		}
	}
	client_put(cl);
}

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *cl = (struct ctl_client *)w;
	ssize_t n;

	if (cl->len >= FTD_LINE_MAX) { /* busy with a full buffer: wait */
		ev_io_stop(loop, w);
		return;
	}
	n = recv(w->fd, cl->buf + cl->len, FTD_LINE_MAX - cl->len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* Answer what was sent before the end, then close. */
		cl->eof = true;
		ev_io_stop(loop, w);
		client_process(cl); /* closes once all is answered and sent */
		return;
	}
	cl->len += (size_t)n;
	client_process(cl);
}

static void ctl_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ftd *d = w->data;
	struct ctl_client *cl;
	int fd = accept4(w->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;
	if (d->nclients >= CTL_CLIENTS_MAX) {
		log_warn("control: more than %d clients; refusing one",
			 CTL_CLIENTS_MAX);
		close(fd);
		return;
	}
	cl = calloc(1, sizeof(*cl));
	if (!cl) {
		close(fd);
		return;
	}
	cl->d = d;
	cl->refs = 1; /* dropped by client_close */
	d->nclients++;
	ev_io_init(&cl->io, client_cb, fd, EV_READ);
	ev_io_init(&cl->out_w, client_out_cb, fd, EV_WRITE);
	cl->out_w.data = cl;
	ev_io_start(loop, &cl->io);
}

/* mkdir -p for the directory part of `path` (mode for new ones). */
static int mkdir_parents(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	char *p;

	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

static int ctl_listen(const char *path)
{
	size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
	int err;

	/* Checked before mkdir_parents creates anything for it. */
	if (strlen(path) > max) {
		log_err("--control %s: longer than %zu bytes", path, max);
		return -ENAMETOOLONG;
	}
	err = mkdir_parents(path, 0755);
	if (err) {
		log_err("--control %s: cannot create its directory: %s", path,
			strerror(-err));
		return err;
	}
	return cli_listen_unix(path, "ftd", 16);
}

/* ---- startup and shutdown ---- */

static void shutdown_check(struct ftd *d)
{
	struct ftd_vm *vm;

	for (vm = d->vms; vm; vm = vm->next)
		if (vm->pid > 0)
			return;
	ev_break(d->loop, EVBREAK_ALL);
}

static void shutdown_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ftd *d = w->data;
	struct ftd_vm *vm;

	for (vm = d->vms; vm; vm = vm->next)
		if (vm->pid > 0) {
			log_warn("vm %s: ftvm (pid %d) ignores SIGTERM; "
				 "killing it",
				 vm->def.name, (int)vm->pid);
			vm_kill(vm, SIGKILL);
		}
}

static void shutdown_poll_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	shutdown_check(w->data);
}

static ev_prepare shutdown_prep_w;

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct ftd *d = w->data;
	struct ftd_vm *vm;

	if (w->signum == SIGHUP) {
		log_info("SIGHUP: the peers file is read at each use; "
			 "nothing to reload");
		return;
	}
	if (d->stopping)
		return;
	log_info("signal %d: stopping every VM, then ftd", w->signum);
	d->stopping = true;
	ev_io_stop(loop, &d->ctl_w);
	close(d->ctl_fd);
	unlink(d->control);
	for (vm = d->vms; vm; vm = vm->next)
		if (vm->pid > 0)
			vm_kill(vm, SIGTERM);
	ev_timer_init(&d->shutdown_w, shutdown_timer_cb, SHUTDOWN_GRACE, 0);
	d->shutdown_w.data = d;
	ev_timer_start(loop, &d->shutdown_w);
	ev_prepare_init(&shutdown_prep_w, shutdown_poll_cb);
	shutdown_prep_w.data = d;
	ev_prepare_start(loop, &shutdown_prep_w);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: ftd [options]\n"
	      "\n"
	      "  --config-dir DIR   certificates and peers (default "
	      "/etc/ftengine):\n"
	      "                     DIR/ca.crt, DIR/NAME.crt, DIR/NAME.key, "
	      "DIR/peers\n"
	      "  --state-dir DIR    VM definitions and disks (default "
	      "/var/lib/ftengine)\n"
	      "  --control SOCK     control socket (default "
	      "/run/ftengine/ftd.sock)\n"
	      "  --listen ADDR      peer TLS address HOST:PORT, :PORT or "
	      "[V6]:PORT\n"
	      "                     (default :7480); 'none': no peering\n"
	      "  --name HOST        this host's name (default: the hostname)\n"
	      "  --ftvm PATH        the ftvm program (default: next to ftd)\n"
	      "  --peers FILE       lines \"NAME ADDR:PORT\" (default "
	      "CONFIG/peers)\n"
	      "  --insecure-peers   plain TCP between ftd: no TLS, no "
	      "authentication\n"
	      "  --doubt-limit SEC  ask a peer about an in-doubt migration "
	      "this long\n"
	      "                     before leaving it to the operator "
	      "(default 30)\n"
	      "  --witness          also be a witness: grant leases to "
	      "protected VMs\n"
	      "                     of other hosts, decide their failovers\n"
	      "  --heartbeat MS     heartbeat interval between peers "
	      "(default 50)\n"
	      "  --heartbeat-misses N  a peer is lost after N unanswered "
	      "beats\n"
	      "                     (default 3); N x MS is also the "
	      "witness's lease\n"
	      "  --no-realtime      run at normal priority (default: "
	      "SCHED_RR %d, so that\n"
	      "                     heartbeats keep time on a busy host)\n"
	      "  --verbose          debug logging\n"
	      "  --help             this text\n"
	      "\n"
	      "exit status: 0 after SIGTERM/SIGINT, 1 on a startup error, "
	      "2 on a usage error\n"
	      "see docs/ftd.md\n",
	      FTD_RT_PRIO);
}

enum { OPT_CONFIG = 1, OPT_STATE, OPT_CONTROL, OPT_LISTEN, OPT_NAME,
       OPT_FTVM, OPT_PEERS, OPT_INSECURE, OPT_DOUBT, OPT_VERBOSE, OPT_HELP,
       OPT_WITNESS, OPT_HB, OPT_HB_MISSES, OPT_NO_RT };

static const struct option long_opts[] = {
	{ "config-dir", required_argument, NULL, OPT_CONFIG },
	{ "state-dir", required_argument, NULL, OPT_STATE },
	{ "control", required_argument, NULL, OPT_CONTROL },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "ftvm", required_argument, NULL, OPT_FTVM },
	{ "peers", required_argument, NULL, OPT_PEERS },
	{ "insecure-peers", no_argument, NULL, OPT_INSECURE },
	{ "doubt-limit", required_argument, NULL, OPT_DOUBT },
	{ "verbose", no_argument, NULL, OPT_VERBOSE },
	{ "witness", no_argument, NULL, OPT_WITNESS },
	{ "heartbeat", required_argument, NULL, OPT_HB },
	{ "heartbeat-misses", required_argument, NULL, OPT_HB_MISSES },
	{ "no-realtime", no_argument, NULL, OPT_NO_RT },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

/* ftvm next to our own executable. */
static const char *default_ftvm(void)
{
	static char path[PATH_MAX + 8];
	char self[PATH_MAX], *slash;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return NULL;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return NULL;
	*slash = '\0';
	snprintf(path, sizeof(path), "%s/ftvm", self);
	return path;
}

static bool host_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > FTD_NAME_MAX || !strcmp(s, "ca") || *s == '-' ||
	    *s == '.')
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyz"
			 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == n;
}

static bool is_dir(const char *p)
{
	struct stat st;

	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int check_readable(const char *what, const char *path)
{
	if (access(path, R_OK) == 0)
		return 0;
	log_err("%s %s: %s", what, path, strerror(errno));
	return -1;
}

/* Parse and check every option.  0, or the exit status. */
static int parse_opts(struct ftd *d, int argc, char **argv)
{
	char host[256];
	const char *name = NULL;
	int c, port;

	d->config_dir = "/etc/ftengine";
	d->state_dir = "/var/lib/ftengine";
	d->control = "/run/ftengine/ftd.sock";
	d->listen = ":" FTD_PEER_PORT;
	d->doubt_limit = 30;
	d->hb_interval_ms = 50;
	d->hb_misses = 3;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG: d->config_dir = optarg; break;
		case OPT_STATE: d->state_dir = optarg; break;
		case OPT_CONTROL: d->control = optarg; break;
		case OPT_LISTEN: d->listen = optarg; break;
		case OPT_NAME: name = optarg; break;
		case OPT_FTVM: d->ftvm = optarg; break;
		case OPT_PEERS:
			d->peers_file = optarg;
			d->peers_explicit = true;
			break;
		case OPT_INSECURE: d->insecure_peers = true; break;
		case OPT_DOUBT: {
			char *end;
			long v;

			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < 1 ||
			    v > 3600) {
				log_err("--doubt-limit %s: seconds, 1..3600",
					optarg);
				return 2;
			}
			d->doubt_limit = (int)v;
			break;
		}
		case OPT_VERBOSE: log_set_level(LOG_DEBUG); break;
		case OPT_WITNESS: d->witness = true; break;
		case OPT_NO_RT: d->no_realtime = true; break;
		case OPT_HB:
		case OPT_HB_MISSES: {
			char *end;
			long v, lo = c == OPT_HB ? 10 : 2,
				hi = c == OPT_HB ? 10000 : 100;

			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < lo ||
			    v > hi) {
				log_err("--%s %s: %s, %ld..%ld",
					c == OPT_HB ? "heartbeat"
						    : "heartbeat-misses",
					optarg,
					c == OPT_HB ? "milliseconds" : "a count",
					lo, hi);
				return 2;
			}
			if (c == OPT_HB)
				d->hb_interval_ms = (unsigned)v;
			else
				d->hb_misses = (unsigned)v;
			break;
		}
		case 'h':
		case OPT_HELP: usage(stdout); exit(0);
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		log_err("unexpected argument '%s' (see ftd --help)",
			argv[optind]);
		return 2;
	}
	if (!name) {
		if (gethostname(host, sizeof(host)) < 0) {
			log_err("gethostname: %s; give --name",
				strerror(errno));
			return 1;
		}
		host[sizeof(host) - 1] = '\0';
		name = host;
	}
	if (!host_name_ok(name)) {
		log_err("host name '%s': use 1..%d letters, digits, '.' and "
			"'-' (not 'ca'); give --name",
			name, FTD_NAME_MAX);
		return name == host ? 1 : 2;
	}
	strcpy(d->name, name);
	if (!*d->state_dir || !*d->config_dir || !*d->control) {
		log_err("--state-dir, --config-dir and --control must not be "
			"empty");
		return 2;
	}
	d->peering = strcmp(d->listen, "none") != 0;
	if (d->peering) {
		if (addr_split(d->listen, d->listen_host,
			       sizeof(d->listen_host), &port) ||
		    port <= 0) {
			log_err("--listen %s: not HOST:PORT, :PORT or "
				"[V6]:PORT with a port 1..65535 (or 'none')",
				d->listen);
			return 2;
		}
	}
	if (!d->peers_file) {
		static char peers[PATH_MAX + 8];

		snprintf(peers, sizeof(peers), "%s/peers", d->config_dir);
		d->peers_file = peers;
	}
	if (!d->ftvm) {
		d->ftvm = default_ftvm();
		if (!d->ftvm) {
			log_err("cannot find ftvm next to ftd; give --ftvm");
			return 1;
		}
	}
	if (access(d->ftvm, X_OK) < 0) {
		log_err("--ftvm %s: %s (give the path of the ftvm program)",
			d->ftvm, strerror(errno));
		return 1;
	}
	snprintf(d->ca, sizeof(d->ca), "%s/ca.crt", d->config_dir);
	snprintf(d->cert, sizeof(d->cert), "%s/%s.crt", d->config_dir,
		 d->name);
	snprintf(d->key, sizeof(d->key), "%s/%s.key", d->config_dir, d->name);
	if (d->peering && !d->insecure_peers) {
		if (!is_dir(d->config_dir)) {
			log_err("--config-dir %s: not a directory (it holds "
				"ca.crt, %s.crt and %s.key: see "
				"tools/ft-certs)",
				d->config_dir, d->name, d->name);
			return 1;
		}
		if (check_readable("CA certificate", d->ca) ||
		    check_readable("host certificate", d->cert) ||
		    check_readable("host key", d->key)) {
			log_err("peering over TLS needs them (tools/ft-certs "
				"host %s %s); or run with --listen none or "
				"--insecure-peers",
				d->config_dir, d->name);
			return 1;
		}
	}
	if (d->peering && peers_check(d))
		return 1;
	return 0;
}

/* Create the state directory and lock it against a second ftd. */
static int state_dir_open(struct ftd *d)
{
	char path[PATH_MAX];
	int err;

	snprintf(path, sizeof(path), "%s/vms/", d->state_dir);
	err = mkdir_parents(path, 0700);
	if (err) {
		log_err("--state-dir %s: cannot create %s: %s", d->state_dir,
			path, strerror(-err));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/ftd.lock", d->state_dir);
	d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->lock_fd < 0) {
		log_err("--state-dir %s: %s: %s", d->state_dir, path,
			strerror(errno));
		return -1;
	}
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		log_err("--state-dir %s is in use by another ftd (%s is "
			"locked)",
			d->state_dir, path);
		return -1;
	}
	return 0;
}

/*
 * A peer is declared lost after --heartbeat-misses beats (150 ms by
 * default), and on a host whose CPUs are busy with guests a daemon at
 * normal priority can wait that long for a CPU: a failover nobody asked
 * for.  So, like corosync, ftd runs its threads (the heartbeat links, the
 * loop that judges them, the peer connections) at a low real-time
 * priority.  It is idle nearly all the time; ftvm is reset to normal
 * priority before it runs (ftd_vm.c).  Threads inherit the policy, so
 * this runs before any thread starts.
 */
static void set_realtime(struct ftd *d)
{
	struct sched_param sp = { .sched_priority = FTD_RT_PRIO };

	if (d->no_realtime)
		return;
	if (sched_setscheduler(0, SCHED_RR, &sp) < 0)
		log_warn("cannot run at real-time priority (SCHED_RR %d): "
			 "%s; on a busy host late heartbeats may cause "
			 "failovers (see docs/ftd.md, --no-realtime)",
			 FTD_RT_PRIO, strerror(errno));
}

int main(int argc, char **argv)
{
	struct ftd d = { .ctl_fd = -1, .lock_fd = -1, .peer_fd = -1 };
	int rc, err;

	log_set_prog("ftd");
	peer_log_init();
	signal(SIGPIPE, SIG_IGN);
	rc = parse_opts(&d, argc, argv);
	if (rc)
		return rc;
	set_realtime(&d);
	if (state_dir_open(&d))
		return 1;
	d.loop = EV_DEFAULT;
	if (vms_load(&d) || ha_init(&d))
		return 1;
	d.ctl_fd = ctl_listen(d.control);
	if (d.ctl_fd < 0)
		return 1;
	err = d.peering ? chan_net_listen(d.listen, &d.peer_fd) : 0;
	if (err || peer_listen_start(&d)) {
		log_err("--listen %s: cannot listen for peers", d.listen);
		unlink(d.control);
		return 1;
	}
	ev_io_init(&d.ctl_w, ctl_accept_cb, d.ctl_fd, EV_READ);
	d.ctl_w.data = &d;
	ev_io_start(d.loop, &d.ctl_w);
	ev_signal_init(&d.sigint_w, signal_cb, SIGINT);
	ev_signal_init(&d.sigterm_w, signal_cb, SIGTERM);
	ev_signal_init(&d.sighup_w, signal_cb, SIGHUP);
	d.sigint_w.data = d.sigterm_w.data = d.sighup_w.data = &d;
	ev_signal_start(d.loop, &d.sigint_w);
	ev_signal_start(d.loop, &d.sigterm_w);
	ev_signal_start(d.loop, &d.sighup_w);
	if (d.peering && !d.insecure_peers) {
		char why[FTD_REASON_MAX];

		if (cert_check(&d, why, sizeof(why)))
			log_warn("%s: migrations will fail until it is "
				 "replaced",
				 why);
	}
	log_info("%s ready: control %s, peers %s%s, state %s", d.name,
		 d.control, d.peering ? d.listen : "none",
		 d.insecure_peers ? " (insecure: plain TCP)" : "",
		 d.state_dir);
	ev_run(d.loop, 0);
	peer_shutdown(&d, 3.0);
	log_info("stopped");
	return 0;
}
