// SPDX-License-Identifier: MIT
/*
 * ftd_ha.c - high availability: protection of a VM by a backup host,
 * heartbeats, the witness, failover (docs/ftd.md, "Protection").
 *
 * ftvm does the checkpointing (`protect` on the primary's ftvm, `ftvm
 * backup` on the backup host, `failover` there); this module decides
 * when.  Three kinds of host take part:
 *
 *   primary  runs the VM; its ftvm sends epochs to the backup's ftvm and
 *            releases the VM's output only once the backup acknowledged
 *            it; holds a *lease* from the witness, renewed by heartbeat;
 *   backup   runs `ftvm backup` (a paused replica); takes over only with
 *            the witness's *grant*, which the witness gives only once the
 *            primary's lease has run out;
 *   witness  an ftd started with --witness: keeps one record per
 *            protected VM (owner, backup, generation, lease) and decides.
 *
 * Every pair of hosts that cooperate keeps a heartbeat link
 * (ftd_peer.c's peer_link) in each direction: a beat every --heartbeat
 * ms, a peer is lost after --heartbeat-misses missed answers.  The
 * primary's beats to the witness carry its leases.
 *
 * The rules that keep one live copy:
 *   - the primary releases output only for epochs the backup
 *     acknowledged (ftvm), or after the witness recorded that it goes on
 *     alone (after which the witness never grants the backup);
 *   - the backup runs the replica only with the witness's grant; the
 *     grant moves the ownership (generation + 1), so the old primary is
 *     told it is deposed at its next renewal and stops;
 *   - a primary that has lost its backup and whose lease ran out fences
 *     its VM (discards the held output, pauses it for good).
 * With --no-arbiter there is no witness: the backup takes over when the
 * primary is silent, the primary goes on alone after the grace period -
 * a partition between them then leaves two live copies (protect warns).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "ftd.h"
#include "log.h"

#define HA_PREPARE_TIMEOUT_MS 30000
#define HA_CALL_TIMEOUT_MS 5000
#define HA_CLAIM_TIMEOUT_MS 10000
#define HA_LISTEN_TIMEOUT 15.0 /* for ftvm backup's "listening" line */
#define HA_RESYNC_EVERY 2.0    /* seconds between resync attempts */
#define HA_GRACE_MS 1000       /* default: lost backup -> go on alone */
#define HA_BACKUP_PREFIX "backup: listening on "
#define HA_FILE "ha.json"

enum ha_role { HA_PRIMARY, HA_BACKUP };

enum ha_state {
	/* primary */
	HA_PREPARE,   /* registering with the witness, asking the backup */
	HA_SYNC,      /* the initial synchronisation runs */
	HA_PROTECTED, /* epochs are acknowledged */
	HA_LOST,      /* the backup is lost; output held */
	HA_ALONE,     /* running without a backup, by decision */
	HA_FENCED,    /* neither backup nor lease: output discarded */
	/* backup */
	HA_WAITING,   /* ftvm backup starts or waits for the stream */
	HA_REPLICA,   /* a replica is kept */
	HA_CLAIMING,  /* the primary is lost; asking the witness */
	HA_TAKEOVER,  /* granted; ftvm fails over */
};

struct ha {
	struct ftd_vm *vm; /* a reference while the ha lives */
	int refs;	   /* one for vm->ha, one per pending callback */
	bool dead;	   /* detached from the VM */
	enum ha_role role;
	enum ha_state state;
	char peer[FTD_NAME_MAX + 1]; /* the backup, or the primary */
	char peer_addr[FTD_ADDR_MAX], peer_host[FTD_ADDR_MAX];
	char witness[FTD_NAME_MAX + 1]; /* "" with no_arbiter */
	char witness_addr[FTD_ADDR_MAX];
	bool no_arbiter, insecure;
	uint64_t gen;
	unsigned grace_ms;
	json_t *opts;	   /* ftvm protect options (primary) */
	struct hlink *plink, *wlink;
	double t_state;	   /* ftd_mono() when the state was entered */
	double lost_at;	   /* backup/primary lost */
	double lease_until; /* primary: ftd_mono(); 0: none */
	double next_try;   /* resync / claim / alone pacing */
	enum ha_state back; /* where a failed (re)start returns; 0: end */
	bool busy;	   /* a call that changes the state is in flight */
	bool polling;	   /* a status call is in flight */
	bool ftvm_lost;	   /* ftvm says the protection was lost */
	bool complete;	   /* backup: the replica is complete */
	bool loss_logged;  /* backup: this loss of the primary was logged */
	bool refusal_logged; /* ... and the witness's first refusal */
	uint64_t epoch;	   /* last known committed epoch */
	int resyncs;
	int port;	   /* backup: where its ftvm backup listens */
	struct ctl_req *req;   /* protect / failover from ftctl */
	struct peer_req *prep; /* backup: "ha-prepare", answered with port */
	json_t *failover;      /* after a failover: what happened */
	char msg[2 * FTD_REASON_MAX];
};

/* A heartbeat link to one host, shared by every VM that needs it. */
struct hlink {
	struct hlink *next;
	struct ftd *d;
	char name[FTD_NAME_MAX + 1];
	char addr[FTD_ADDR_MAX];
	struct peer_link *pl;
	int users;
	bool up, was_up;
	double last_ok; /* ftd_mono() of the last answer */
	double down_at;
	char err[FTD_REASON_MAX];
};

/* The witness's record of one protected VM. */
struct wrec {
	struct wrec *next;
	char vm[FTD_NAME_MAX + 1];
	char owner[FTD_NAME_MAX + 1];
	char backup[FTD_NAME_MAX + 1]; /* "" once there is none */
	uint64_t gen;
	unsigned lease_ms;
	double expires; /* ftd_mono() */
	bool alone;	/* the owner went on without its backup */
};

/* A claim the witness answers when the owner's lease runs out. */
struct wclaim {
	struct wclaim *next;
	struct ftd *d;
	struct peer_req *pr;
	char vm[FTD_NAME_MAX + 1];
	char from[FTD_NAME_MAX + 1];
	uint64_t gen;
	ev_timer w;
};

struct ha_host {
	struct hlink *links;
	ev_timer tick_w;
	struct wrec *recs;	/* witness */
	struct wclaim *claims;	/* witness */
	unsigned timeout_ms;	/* heartbeat * misses: loss, and the lease */
};

static const char *ha_state_name(enum ha_state s)
{
	switch (s) {
	case HA_PREPARE: return "preparing";
	case HA_SYNC: return "syncing";
	case HA_PROTECTED: return "protected";
	case HA_LOST: return "backup-lost";
	case HA_ALONE: return "unprotected";
	case HA_FENCED: return "fenced";
	case HA_WAITING: return "waiting";
	case HA_REPLICA: return "replica";
	case HA_CLAIMING: return "primary-lost";
	case HA_TAKEOVER: return "taking-over";
	}
	return "unknown";
}

static void ha_set(struct ha *ha, enum ha_state st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void ha_set(struct ha *ha, enum ha_state st, const char *fmt, ...)
{
	va_list ap;

	if (ha->state != st)
		ha->t_state = ftd_mono();
	ha->state = st;
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(ha->msg, sizeof(ha->msg), fmt, ap);
		va_end(ap);
	}
}

static const char *rep_err(json_t *rep)
{
	const char *e = json_string_value(json_object_get(rep, "error"));

	return e ? e : "no reason given";
}

static bool rep_ok(json_t *rep)
{
	return json_is_true(json_object_get(rep, "ok"));
}

/* ---- references ---- */

static void ha_get(struct ha *ha)
{
	ha->refs++;
}

static void link_put(struct ftd *d, struct hlink *l);

static void ha_put(struct ha *ha)
{
	if (--ha->refs)
		return;
	json_decref(ha->opts);
	json_decref(ha->failover);
	vm_put(ha->vm);
	free(ha);
}

/* The persistent note that a VM is (or was) protected here: a VM that
 * has one is not started by `vm start` (another host may run it). */
static void ha_note(struct ha *ha, bool keep)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", ha->vm->dir, HA_FILE);
	if (!keep) {
		unlink(path);
		return;
	}
	f = fopen(path, "we");
	if (!f) {
		log_warn("vm %s: %s: %s", ha->vm->def.name, path,
			 strerror(errno));
		return;
	}
	fprintf(f,
		"{\"role\":\"%s\",\"peer\":\"%s\",\"witness\":\"%s\","
		"\"generation\":%llu}\n",
		ha->role == HA_PRIMARY ? "primary" : "backup", ha->peer,
		ha->witness, (unsigned long long)ha->gen);
	fclose(f);
}

/* Detach from the VM: no more decisions, links released. */
static void ha_end(struct ha *ha, bool keep_note)
{
	struct ftd *d = ha->vm->d;

	if (ha->dead)
		return;
	ha->dead = true;
	if (ha->req) {
		ctl_req_done(ha->req, reply_err("%s: protection ended: %s",
						ha->vm->def.name, ha->msg));
		ha->req = NULL;
	}
	if (ha->prep) {
		peer_req_reply(ha->prep, reply_err("%s", ha->msg));
		ha->prep = NULL;
	}
	if (!keep_note && !ha->vm->gone)
		ha_note(ha, false);
	link_put(d, ha->plink);
	link_put(d, ha->wlink);
	ha->plink = ha->wlink = NULL;
	if (ha->vm->ha == ha)
		ha->vm->ha = NULL;
	ha_put(ha);
}

/* ---- heartbeat links ---- */

static void ha_payloads(struct ftd *d);
static void ha_link_event(struct ftd *d, struct hlink *l, json_t *rep,
			  double sent);

static void hlink_cb(struct ftd *d, void *arg, json_t *rep, double sent,
		    const char *err)
{
	struct hlink *l = arg;

	if (rep) {
		l->last_ok = ftd_mono();
		if (!l->up) {
			if (l->was_up)
				log_info("heartbeat: %s is back (was silent "
					 "%.0f ms)",
					 l->name,
					 (l->last_ok - l->down_at) * 1e3);
			l->up = l->was_up = true;
		}
		ha_link_event(d, l, rep, sent);
		json_decref(rep);
		return;
	}
	snprintf(l->err, sizeof(l->err), "%s", err);
	if (l->up) {
		l->up = false;
		l->down_at = ftd_mono();
		log_warn("heartbeat: %s lost: %s", l->name, err);
		ha_link_event(d, l, NULL, 0);
	}
}

static struct hlink *link_get(struct ftd *d, const char *name,
			      const char *addr)
{
	struct ha_host *h = d->ha;
	struct hlink *l;

	for (l = h->links; l; l = l->next)
		if (!strcmp(l->name, name)) {
			l->users++;
			return l;
		}
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->d = d;
	snprintf(l->name, sizeof(l->name), "%s", name);
	snprintf(l->addr, sizeof(l->addr), "%s", addr);
	snprintf(l->err, sizeof(l->err), "no answer yet");
	l->down_at = ftd_mono();
	l->pl = peer_link_start(d, name, addr, d->hb_interval_ms,
				h->timeout_ms, hlink_cb, l);
	if (!l->pl) {
		free(l);
		return NULL;
	}
	l->users = 1;
	l->next = h->links;
	h->links = l;
	return l;
}

static void link_put(struct ftd *d, struct hlink *l)
{
	struct hlink **pp;

	if (!l || --l->users)
		return;
	for (pp = &d->ha->links; *pp; pp = &(*pp)->next)
		if (*pp == l) {
			*pp = l->next;
			break;
		}
	peer_link_stop(l->pl); /* no callback after this */
	free(l);
}

static json_t *link_json(struct hlink *l)
{
	double now = ftd_mono();

	if (!l)
		return json_null();
	if (l->up)
		return json_pack("{s:s, s:b, s:f}", "host", l->name, "up", 1,
				 "last_answer_ms", (now - l->last_ok) * 1e3);
	return json_pack("{s:s, s:b, s:f, s:s}", "host", l->name, "up", 0,
			 "down_ms", (now - l->down_at) * 1e3, "error", l->err);
}

/* ---- witness: the records ---- */

static struct wrec *wrec_find(struct ftd *d, const char *vm)
{
	struct wrec *r;

	for (r = d->ha->recs; r; r = r->next)
		if (!strcmp(r->vm, vm))
			return r;
	return NULL;
}

/* STATE/witness.json: generations and owners survive a restart (leases
 * do not: a restarted witness waits one lease time before any grant). */
static void wrec_save(struct ftd *d)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	json_t *a = json_array();
	struct wrec *r;
	int rc;

	for (r = d->ha->recs; r; r = r->next)
		json_array_append_new(
			a, json_pack("{s:s, s:s, s:s, s:I, s:i, s:b}", "vm",
				     r->vm, "owner", r->owner, "backup",
				     r->backup, "generation",
				     (json_int_t)r->gen, "lease_ms",
				     (int)r->lease_ms, "alone", r->alone));
	snprintf(path, sizeof(path), "%s/witness.json", d->state_dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	rc = json_dump_file(a, tmp, JSON_INDENT(1));
	json_decref(a);
	if (rc || rename(tmp, path) < 0)
		log_err("witness: cannot write %s: %s", path, strerror(errno));
}

static void wrec_load(struct ftd *d)
{
	char path[PATH_MAX];
	json_error_t jerr;
	json_t *a, *o;
	size_t i;

	snprintf(path, sizeof(path), "%s/witness.json", d->state_dir);
	a = json_load_file(path, 0, &jerr);
	if (!a) {
		if (access(path, F_OK) == 0)
			log_err("witness: %s: %s (line %d); starting with no "
				"records",
				path, jerr.text, jerr.line);
		return;
	}
	json_array_foreach(a, i, o) {
		const char *vm = json_string_value(json_object_get(o, "vm"));
		const char *ow = json_string_value(json_object_get(o, "owner"));
		const char *bk = json_string_value(json_object_get(o, "backup"));
		struct wrec *r;

		if (!vm || !ow || !bk || !name_ok(vm))
			continue;
		r = calloc(1, sizeof(*r));
		if (!r)
			break;
		snprintf(r->vm, sizeof(r->vm), "%s", vm);
		snprintf(r->owner, sizeof(r->owner), "%s", ow);
		snprintf(r->backup, sizeof(r->backup), "%s", bk);
		r->gen = (uint64_t)json_integer_value(
			json_object_get(o, "generation"));
		r->lease_ms = (unsigned)json_integer_value(
			json_object_get(o, "lease_ms"));
		if (r->lease_ms < 10 || r->lease_ms > 60000)
			r->lease_ms = d->ha->timeout_ms;
		r->alone = json_is_true(json_object_get(o, "alone"));
		/* Whoever held a lease before the restart may still think
		 * it does until it runs out. */
		r->expires = ftd_mono() + r->lease_ms / 1e3;
		r->next = d->ha->recs;
		d->ha->recs = r;
	}
	log_info("witness: %zu record(s) from %s", json_array_size(a), path);
	json_decref(a);
}

static bool wrec_live(const struct wrec *r)
{
	return ftd_mono() < r->expires;
}

static json_t *wrec_json(const struct wrec *r)
{
	double left = (r->expires - ftd_mono()) * 1e3;

	return json_pack("{s:s, s:s, s:s, s:I, s:b, s:f, s:b}", "vm", r->vm,
			 "owner", r->owner, "backup", r->backup, "generation",
			 (json_int_t)r->gen, "lease_live", left > 0,
			 "lease_left_ms", left > 0 ? left : 0.0, "alone",
			 r->alone);
}

/* ---- witness: requests ---- */

static bool witness_only(struct ftd *d, struct peer_req *pr)
{
	if (d->witness)
		return true;
	peer_req_reply(pr, reply_err("%s is not a witness (its ftd runs "
				     "without --witness)",
				     d->name));
	return false;
}

static unsigned lease_ms_of(struct ftd *d, json_t *req)
{
	json_int_t ms = json_integer_value(json_object_get(req, "lease_ms"));

	return ms >= 10 && ms <= 60000 ? (unsigned)ms : d->ha->timeout_ms;
}

/* "ha-register" {vm, backup, lease_ms}: `from` protects vm with backup. */
static void w_register(struct ftd *d, struct peer_req *pr, json_t *req,
		       const char *from)
{
	const char *vm = json_string_value(json_object_get(req, "vm"));
	const char *bk = json_string_value(json_object_get(req, "backup"));
	struct wrec *r;

	if (!vm || !name_ok(vm) || !bk || !name_ok(bk)) {
		peer_req_reply(pr, reply_err("ha-register needs \"vm\" and "
					     "\"backup\" names"));
		return;
	}
	r = wrec_find(d, vm);
	if (r && strcmp(r->owner, from)) {
		peer_req_reply(pr, reply_err(
			"witness %s: %s belongs to %s (generation %llu%s), "
			"not to %s",
			d->name, vm, r->owner, (unsigned long long)r->gen,
			wrec_live(r) ? ", lease live" : ", lease expired",
			from));
		return;
	}
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r) {
			peer_req_reply(pr, reply_err("out of memory"));
			return;
		}
		snprintf(r->vm, sizeof(r->vm), "%s", vm);
		r->next = d->ha->recs;
		d->ha->recs = r;
	}
	snprintf(r->owner, sizeof(r->owner), "%s", from);
	snprintf(r->backup, sizeof(r->backup), "%s", bk);
	r->gen++;
	r->alone = false;
	r->lease_ms = lease_ms_of(d, req);
	r->expires = ftd_mono() + r->lease_ms / 1e3;
	wrec_save(d);
	log_info("witness: %s owned by %s, backup %s, generation %llu", vm,
		 from, bk, (unsigned long long)r->gen);
	peer_req_reply(pr, json_pack("{s:b, s:I, s:i}", "ok", 1, "generation",
				     (json_int_t)r->gen, "lease_ms",
				     (int)r->lease_ms));
}

/* Answer a claim now: granted, or refused with the reason. */
static json_t *w_claim_answer(struct ftd *d, const char *vm,
			      const char *from, uint64_t gen, bool *defer)
{
	struct wrec *r = wrec_find(d, vm);

	*defer = false;
	if (!r)
		return reply_err("witness %s knows no protection of %s", d->name,
				 vm);
	if (r->gen != gen || strcmp(r->backup, from))
		return json_pack("{s:b, s:b, s:s, s:b}", "ok", 0, "granted", 0,
				 "error", "not the backup of the current "
					  "generation",
				 "stale", 1);
	if (r->alone)
		return json_pack("{s:b, s:b, s:s, s:b}", "ok", 0, "granted", 0,
				 "error", "the primary went on without its "
					  "backup: this replica is stale",
				 "stale", 1);
	if (wrec_live(r)) {
		*defer = true;
		return NULL;
	}
	snprintf(r->owner, sizeof(r->owner), "%s", from);
	r->backup[0] = '\0';
	r->gen++;
	r->alone = false;
	r->expires = ftd_mono() + r->lease_ms / 1e3;
	wrec_save(d);
	log_warn("witness: %s granted to %s (generation %llu): its primary's "
		 "lease ran out",
		 vm, from, (unsigned long long)r->gen);
	return json_pack("{s:b, s:b, s:I}", "ok", 1, "granted", 1,
			 "generation", (json_int_t)r->gen);
}

static void wclaim_free(struct ftd *d, struct wclaim *c)
{
	struct wclaim **pp;

	for (pp = &d->ha->claims; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	ev_timer_stop(d->loop, &c->w);
	free(c);
}

/* The lease a deferred claim waited for ran out, or was renewed. */
static void wclaim_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct wclaim *c = w->data;
	struct ftd *d = c->d;
	struct wrec *r = wrec_find(d, c->vm);
	json_t *rep;
	bool defer;

	if (r && wrec_live(r))
		rep = json_pack("{s:b, s:b, s:s}", "ok", 0, "granted", 0,
				"error", "the primary renewed its lease: it is "
					 "alive");
	else
		rep = w_claim_answer(d, c->vm, c->from, c->gen, &defer);
	peer_req_reply(c->pr, rep ? rep : reply_err("lease still live"));
	wclaim_free(d, c);
}

/* "ha-claim" {vm, generation}: the backup asks to take over. */
static void w_claim(struct ftd *d, struct peer_req *pr, json_t *req,
		    const char *from)
{
	const char *vm = json_string_value(json_object_get(req, "vm"));
	uint64_t gen =
		(uint64_t)json_integer_value(json_object_get(req, "generation"));
	struct wclaim *c;
	struct wrec *r;
	json_t *rep;
	bool defer;

	if (!vm) {
		peer_req_reply(pr, reply_err("ha-claim needs \"vm\""));
		return;
	}
	rep = w_claim_answer(d, vm, from, gen, &defer);
	if (rep) {
		peer_req_reply(pr, rep);
		return;
	}
	/* The owner's lease is live: answer when it runs out (or is
	 * renewed, which proves the owner alive). */
	r = wrec_find(d, vm);
	c = calloc(1, sizeof(*c));
	if (!c) {
		peer_req_reply(pr, reply_err("out of memory"));
		return;
	}
	c->d = d;
	c->pr = pr;
	c->gen = gen;
	snprintf(c->vm, sizeof(c->vm), "%s", vm);
	snprintf(c->from, sizeof(c->from), "%s", from);
	ev_timer_init(&c->w, wclaim_timer_cb,
		      r->expires - ftd_mono() + 0.001, 0);
	c->w.data = c;
	ev_timer_start(d->loop, &c->w);
	c->next = d->ha->claims;
	d->ha->claims = c;
	log_info("witness: %s claims %s; %s's lease runs %.0f ms more", from,
		 vm, r->owner, (r->expires - ftd_mono()) * 1e3);
}

/* "ha-alone" / "ha-yield" / "ha-unregister" {vm, generation}: the owner
 * goes on without its backup / gives its lease up at once / ends the
 * protection. */
static void w_owner_op(struct ftd *d, struct peer_req *pr, json_t *req,
		       const char *from, const char *op)
{
	const char *vm = json_string_value(json_object_get(req, "vm"));
	uint64_t gen =
		(uint64_t)json_integer_value(json_object_get(req, "generation"));
	struct wrec *r = vm ? wrec_find(d, vm) : NULL, **pp;

	if (!r || strcmp(r->owner, from) || r->gen != gen) {
		peer_req_reply(pr, r ? json_pack("{s:b, s:s, s:s, s:I}", "ok",
						 0, "error",
						 "not the owner of this "
						 "generation",
						 "owner", r->owner,
						 "generation",
						 (json_int_t)r->gen)
				     : reply_err("witness %s has no record of "
						 "%s",
						 d->name, vm ? vm : "that VM"));
		return;
	}
	if (!strcmp(op, "ha-alone")) {
		if (!wrec_live(r)) {
			peer_req_reply(pr, reply_err("the lease of %s ran "
						     "out; it may be granted "
						     "to %s",
						     from, r->backup));
			return;
		}
		r->alone = true;
		log_warn("witness: %s goes on with %s WITHOUT its backup %s",
			 from, vm, r->backup);
	} else if (!strcmp(op, "ha-yield")) {
		r->expires = 0;
		log_info("witness: %s gives its lease on %s up", from, vm);
	} else {
		for (pp = &d->ha->recs; *pp; pp = &(*pp)->next)
			if (*pp == r) {
				*pp = r->next;
				break;
			}
		log_info("witness: %s no longer protects %s", from, vm);
		free(r);
		r = NULL;
	}
	wrec_save(d);
	peer_req_reply(pr, reply_ok());
	/* A yield lets a waiting claim through now. */
	if (r && r->expires == 0) {
		struct wclaim *c;

		for (c = d->ha->claims; c; c = c->next)
			if (!strcmp(c->vm, r->vm)) {
				ev_timer_stop(d->loop, &c->w);
				ev_timer_set(&c->w, 0, 0);
				ev_timer_start(d->loop, &c->w);
			}
	}
}

/* "hb" with "leases": [{vm, generation, lease_ms}] renews them. */
static json_t *w_renew(struct ftd *d, json_t *leases, const char *from)
{
	json_t *out = json_object(), *o;
	size_t i;

	json_array_foreach(leases, i, o) {
		const char *vm = json_string_value(json_object_get(o, "vm"));
		uint64_t gen = (uint64_t)json_integer_value(
			json_object_get(o, "generation"));
		struct wrec *r = vm ? wrec_find(d, vm) : NULL;

		if (!vm)
			continue;
		if (r && !strcmp(r->owner, from) && r->gen == gen &&
		    json_is_false(json_object_get(o, "renew"))) {
			/* A fenced owner only asks who owns it now. */
			json_object_set_new(out, vm,
					    json_pack("{s:b, s:b}", "ok", 1,
						      "renewed", 0));
		} else if (r && !strcmp(r->owner, from) && r->gen == gen) {
			r->lease_ms = lease_ms_of(d, o);
			r->expires = ftd_mono() + r->lease_ms / 1e3;
			json_object_set_new(out, vm, json_pack("{s:b}", "ok", 1));
		} else {
			json_object_set_new(
				out, vm,
				r ? json_pack("{s:b, s:s, s:I}", "ok", 0,
					      "owner", r->owner, "generation",
					      (json_int_t)r->gen)
				  : json_pack("{s:b, s:s}", "ok", 0, "owner",
					      ""));
		}
	}
	return out;
}

/* ---- calls on the VM's ftvm ---- */

static void ha_tick_vm(struct ha *ha);

struct hcall {
	struct ha *ha;
	void (*fn)(struct ha *ha, int err, json_t *rep);
};

static void hcall_reply(void *arg, int err, json_t *rep)
{
	struct hcall *c = arg;
	struct ha *ha = c->ha;

	if (!ha->dead)
		c->fn(ha, err, rep);
	json_decref(rep);
	ha_put(ha);
	free(c);
}

static void hcall_event(void *arg, json_t *ev)
{
	struct hcall *c = arg;
	struct ha *ha = c->ha;
	const char *kind = json_string_value(json_object_get(ev, "event"));

	if (ha->dead || !ha->req || !kind || strcmp(kind, "progress"))
		return;
	ev = json_deep_copy(ev);
	json_object_del(ev, "id");
	ctl_req_event(ha->req, ev);
}

/* Call the VM's ftvm; fn(ha, err, rep) on the loop later (rep borrowed).
 * false if the socket cannot be reached (fn is not called). */
static bool ha_vmcall(struct ha *ha, json_t *req, double timeout,
		      void (*fn)(struct ha *ha, int err, json_t *rep))
{
	struct hcall *c = malloc(sizeof(*c));

	if (!c || ha->vm->pid <= 0) {
		json_decref(req);
		free(c);
		return false;
	}
	c->ha = ha;
	c->fn = fn;
	ha_get(ha);
	if (!vmcall_start(ha->vm->d, ha->vm->sock, req, timeout, hcall_event,
			  hcall_reply, c)) {
		ha_put(ha);
		free(c);
		return false;
	}
	return true;
}

/* And on a peer (fn(ha, rep, err) with rep borrowed, NULL on failure). */
struct pcallc {
	struct ha *ha;
	void (*fn)(struct ha *ha, json_t *rep, const char *err);
};

static void pcallc_cb(struct ftd *d, void *arg, json_t *rep, const char *err)
{
	struct pcallc *c = arg;

	if (!c->ha->dead)
		c->fn(c->ha, rep, err);
	json_decref(rep);
	ha_put(c->ha);
	free(c);
}

static void ha_peer_call(struct ha *ha, const char *name, const char *addr,
			 json_t *req, int timeout_ms,
			 void (*fn)(struct ha *ha, json_t *rep,
				    const char *err))
{
	struct pcallc *c = malloc(sizeof(*c));

	if (!c) {
		json_decref(req);
		fn(ha, NULL, "out of memory");
		return;
	}
	c->ha = ha;
	c->fn = fn;
	ha_get(ha);
	peer_call(ha->vm->d, name, addr, req, timeout_ms, pcallc_cb, c);
}

/* Best effort, nobody waits: tell a peer something. */
static void tell_cb(struct ftd *d, void *arg, json_t *rep, const char *err)
{
	char *what = arg;

	if (!rep)
		log_warn("%s: %s", what, err);
	else if (!rep_ok(rep))
		log_warn("%s: %s", what, rep_err(rep));
	json_decref(rep);
	free(what);
}

static void tell(struct ftd *d, const char *name, const char *addr,
		 json_t *req, const char *what)
{
	peer_call(d, name, addr, req, HA_CALL_TIMEOUT_MS, tell_cb,
		  strdup(what));
}

/* ---- primary ---- */

static void p_sync(struct ha *ha);
static void p_register(struct ha *ha);

/* Fail the protect request (if any) and, before protection ever
 * started, drop the whole thing. */
static void p_fail(struct ha *ha, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void p_fail(struct ha *ha, const char *fmt, ...)
{
	struct ftd_vm *vm = ha->vm;
	struct ftd *d = vm->d;
	char why[FTD_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	ha->busy = false;
	if (ha->req) {
		ctl_req_done(ha->req,
			     reply_err("protection of %s by %s failed: %s; %s "
				       "runs on %s %s",
				       vm->def.name, ha->peer, why,
				       vm->def.name, d->name,
				       ha->resyncs ? "as before"
						   : "unprotected"));
		ha->req = NULL;
	}
	if (ha->back != HA_LOST && ha->back != HA_ALONE) {
		/* Nothing was protected yet: undo what was started. */
		tell(d, ha->peer, ha->peer_addr,
		     json_pack("{s:s, s:s, s:I}", "cmd", "ha-end", "vm",
			       vm->def.name, "generation", (json_int_t)ha->gen),
		     "backup: drop the replica");
		if (*ha->witness && ha->gen)
			tell(d, ha->witness, ha->witness_addr,
			     json_pack("{s:s, s:s, s:I}", "cmd",
				       "ha-unregister", "vm", vm->def.name,
				       "generation", (json_int_t)ha->gen),
			     "witness: unregister");
		snprintf(ha->msg, sizeof(ha->msg), "%s", why);
		log_err("vm %s: protection by %s failed: %s", vm->def.name,
			ha->peer, why);
		ha_end(ha, false);
		ha_payloads(d);
		return;
	}
	/* A resync failed: still lost (or alone), try again later. */
	log_warn("vm %s: resync with %s failed: %s", vm->def.name, ha->peer,
		 why);
	ha->next_try = ftd_mono() + HA_RESYNC_EVERY;
	ha_set(ha, ha->back, "resync with %s failed: %s", ha->peer, why);
	ha_payloads(d);
}

static void p_protected(struct ha *ha, json_t *rep)
{
	struct ftd_vm *vm = ha->vm;

	ha->busy = false;
	ha->ftvm_lost = false;
	ha->back = HA_LOST; /* from now on a failure is a loss */
	ha_set(ha, HA_PROTECTED, "protected by %s%s%s", ha->peer,
	       *ha->witness ? ", witness " : " (no arbiter)", ha->witness);
	ha_note(ha, true);
	log_info("vm %s: %s (generation %llu)", vm->def.name, ha->msg,
		 (unsigned long long)ha->gen);
	if (ha->req) {
		json_t *r = json_deep_copy(rep);

		json_object_del(r, "id");
		json_object_set_new(r, "backup", json_string(ha->peer));
		json_object_set_new(r, "witness",
				    *ha->witness ? json_string(ha->witness)
						 : json_null());
		json_object_set_new(r, "generation",
				    json_integer((json_int_t)ha->gen));
		if (ha->no_arbiter)
			json_object_set_new(
				r, "warning",
				json_string("no arbiter: a partition between "
					    "the two hosts leaves two live "
					    "copies"));
		ctl_req_done(ha->req, r);
		ha->req = NULL;
	}
	ha_payloads(vm->d);
}

static void protect_reply(struct ha *ha, int err, json_t *rep)
{
	if (err) {
		p_fail(ha, "its ftvm ended without an answer (%s)",
		       strerror(-err));
		return;
	}
	if (!rep_ok(rep)) {
		p_fail(ha, "%s", rep_err(rep));
		/* The backup's ftvm may hold a half replica: it is the
		 * backup's to drop, or to reuse at the next resync. */
		return;
	}
	p_protected(ha, rep);
}

static void prepared(struct ha *ha, json_t *rep, const char *err)
{
	struct ftd_vm *vm = ha->vm;
	struct ftd *d = vm->d;
	char to[FTD_ADDR_MAX + 8];
	json_t *req, *v;
	const char *key;
	int port;

	if (!rep) {
		p_fail(ha, "%s", err);
		return;
	}
	if (!rep_ok(rep)) {
		p_fail(ha, "%s refused: %s", ha->peer, rep_err(rep));
		return;
	}
	port = (int)json_integer_value(json_object_get(rep, "port"));
	if (port <= 0 || port > 65535) {
		p_fail(ha, "%s answered no usable port", ha->peer);
		return;
	}
	if (vm->pid <= 0) {
		p_fail(ha, "its ftvm stopped");
		return;
	}
	if (strchr(ha->peer_host, ':'))
		snprintf(to, sizeof(to), "[%s]:%d", ha->peer_host, port);
	else
		snprintf(to, sizeof(to), "%s:%d", ha->peer_host, port);
	req = json_pack("{s:s, s:s, s:s, s:b, s:b, s:s}", "cmd", "protect",
			"to", to, "peer_name", ha->peer, "insecure",
			ha->insecure, "progress", 1, "on_loss", "hold");
	/* Only the checkpoint options: a backup that protects back passes
	 * on what its primary sent. */
	json_object_foreach(ha->opts, key, v)
		if (!strcmp(key, "interval_ms") || !strcmp(key, "timeout_ms") ||
		    !strcmp(key, "delta"))
			json_object_set(req, key, v);
	if (!ha->insecure) {
		json_object_set_new(req, "ca", json_string(d->ca));
		json_object_set_new(req, "cert", json_string(d->cert));
		json_object_set_new(req, "key", json_string(d->key));
	}
	ha_set(ha, HA_SYNC, "initial synchronisation with %s (%s)", ha->peer,
	       to);
	if (ha->req)
		ctl_req_event(ha->req,
			      json_pack("{s:s, s:s, s:s}", "event", "phase",
					"phase", "sync", "message", ha->msg));
	if (!ha_vmcall(ha, req, 0, protect_reply))
		p_fail(ha, "cannot reach its ftvm's control socket");
}

static void p_prepare(struct ha *ha)
{
	struct ftd_vm *vm = ha->vm;
	json_t *req;

	req = json_pack("{s:s, s:o, s:I, s:s, s:b, s:b, s:o, s:i}", "cmd",
			"ha-prepare", "vm", vm_def_to_json(&vm->def),
			"generation", (json_int_t)ha->gen, "witness",
			ha->witness, "no_arbiter", ha->no_arbiter, "insecure",
			ha->insecure, "opts",
			ha->opts ? json_incref(ha->opts) : json_object(), "grace_ms",
			(int)ha->grace_ms);
	if (ha->req)
		ctl_req_event(ha->req,
			      json_pack("{s:s, s:s, s:s}", "event", "phase",
					"phase", "prepare", "message",
					"asking the backup to keep a replica"));
	ha_peer_call(ha, ha->peer, ha->peer_addr, req, HA_PREPARE_TIMEOUT_MS,
		     prepared);
}

static void registered(struct ha *ha, json_t *rep, const char *err)
{
	if (!rep) {
		p_fail(ha, "the witness: %s", err);
		return;
	}
	if (!rep_ok(rep)) {
		p_fail(ha, "the witness %s refused: %s", ha->witness,
		       rep_err(rep));
		return;
	}
	ha->gen = (uint64_t)json_integer_value(
		json_object_get(rep, "generation"));
	/* The lease starts with the registration. */
	ha->lease_until = ftd_mono() + ha->vm->d->ha->timeout_ms / 1e3;
	ha_payloads(ha->vm->d);
	p_prepare(ha);
}

/* Start (or restart after a loss) protection from the beginning. */
static void p_register(struct ha *ha)
{
	ha->back = ha->state == HA_ALONE ? HA_ALONE : HA_PREPARE;
	ha->busy = true;
	ha_set(ha, HA_PREPARE, "preparing protection by %s", ha->peer);
	if (!*ha->witness) {
		ha->gen++;
		p_prepare(ha);
		return;
	}
	if (ha->req)
		ctl_req_event(ha->req,
			      json_pack("{s:s, s:s, s:s}", "event", "phase",
					"phase", "witness", "message",
					"registering with the witness"));
	ha_peer_call(ha, ha->witness, ha->witness_addr,
		     json_pack("{s:s, s:s, s:s, s:i}", "cmd", "ha-register",
			       "vm", ha->vm->def.name, "backup", ha->peer,
			       "lease_ms", (int)ha->vm->d->ha->timeout_ms),
		     HA_CALL_TIMEOUT_MS, registered);
}

/* A resync within the same generation (the backup is the same). */
static void p_sync(struct ha *ha)
{
	ha->busy = true;
	ha->back = HA_LOST;
	ha->resyncs++;
	log_info("vm %s: resynchronising with %s", ha->vm->def.name,
		 ha->peer);
	ha_set(ha, HA_PREPARE, "resynchronising with %s", ha->peer);
	p_prepare(ha);
}

static void fenced_reply(struct ha *ha, int err, json_t *rep)
{
	ha->busy = false;
	if (err || !rep_ok(rep))
		log_err("vm %s: fence failed (%s); stopping its ftvm",
			ha->vm->def.name,
			err ? strerror(-err) : rep_err(rep));
	if (err || !rep_ok(rep))
		vm_kill(ha->vm, SIGKILL);
	ha_payloads(ha->vm->d); /* no more renewals: the backup may claim */
}

static void p_fence(struct ha *ha, const char *why)
{
	ha_set(ha, HA_FENCED, "fenced: %s", why);
	log_err("vm %s: FENCED: %s; its held output is discarded and it is "
		"paused for good (its backup %s may take over)",
		ha->vm->def.name, why, ha->peer);
	ha->busy = true;
	if (!ha_vmcall(ha, json_pack("{s:s}", "cmd", "fence"), 5.0,
		       fenced_reply)) {
		ha->busy = false;
		vm_kill(ha->vm, SIGKILL);
	}
}

static void alone_unprotected(struct ha *ha, int err, json_t *rep)
{
	ha->busy = false;
	if (err || !rep_ok(rep)) {
		log_err("vm %s: unprotect failed: %s", ha->vm->def.name,
			err ? strerror(-err) : rep_err(rep));
		ha->next_try = ftd_mono() + 1.0;
		return;
	}
	ha_set(ha, HA_ALONE, "running WITHOUT a backup since %s was lost%s",
	       ha->peer,
	       *ha->witness ? " (the witness agreed)" : " (no arbiter)");
	log_err("vm %s: UNPROTECTED: %s; it resyncs when %s is back",
		ha->vm->def.name, ha->msg, ha->peer);
	ha->next_try = ftd_mono() + HA_RESYNC_EVERY;
}

static void p_go_alone(struct ha *ha)
{
	ha->busy = true;
	if (!ha_vmcall(ha, json_pack("{s:s}", "cmd", "unprotect"), 10.0,
		       alone_unprotected))
		ha->busy = false;
}

static void alone_granted(struct ha *ha, json_t *rep, const char *err)
{
	ha->busy = false;
	if (!rep) {
		log_warn("vm %s: the witness: %s", ha->vm->def.name, err);
		ha->next_try = ftd_mono() + ha->vm->d->hb_interval_ms / 1e3;
		return;
	}
	if (!rep_ok(rep)) {
		log_warn("vm %s: the witness refused to let it go on alone: %s",
			 ha->vm->def.name, rep_err(rep));
		ha->next_try = ftd_mono() + ha->vm->d->hb_interval_ms / 1e3;
		return;
	}
	p_go_alone(ha);
}

static void p_deposed(struct ha *ha, const char *owner, uint64_t gen)
{
	struct ftd_vm *vm = ha->vm;

	snprintf(ha->msg, sizeof(ha->msg),
		 "deposed: the witness %s says %s runs %s now (generation "
		 "%llu)",
		 ha->witness, *owner ? owner : "nobody", vm->def.name,
		 (unsigned long long)gen);
	log_err("vm %s: %s; stopping this copy", vm->def.name, ha->msg);
	if (vm->pid > 0) {
		vm_kill(vm, SIGKILL); /* never let it release anything */
		snprintf(vm->reason, sizeof(vm->reason), "%.500s", ha->msg);
	}
	ha_end(ha, true);
	ha_payloads(vm->d);
}

static void p_tick_status(struct ha *ha, int err, json_t *rep)
{
	json_t *p = json_object_get(rep, "protection");
	const char *st = json_string_value(json_object_get(p, "state"));

	ha->polling = false;
	if (err || !st)
		return;
	ha->epoch = (uint64_t)json_integer_value(json_object_get(p, "epoch"));
	if (!strcmp(st, "backup-lost") && ha->state == HA_PROTECTED) {
		const char *e = json_string_value(json_object_get(p, "error"));

		ha->ftvm_lost = true;
		ha->lost_at = ftd_mono();
		ha_set(ha, HA_LOST, "the checkpoint stream to %s broke: %s",
		       ha->peer, e ? e : "no reason given");
		log_err("vm %s: %s; its output is held", ha->vm->def.name,
			ha->msg);
		ha_tick_vm(ha);
	}
}

static void p_tick(struct ha *ha)
{
	double now = ftd_mono();
	bool peer_up = ha->plink && ha->plink->up;
	bool lease = !*ha->witness || now < ha->lease_until;

	if (ha->state == HA_PROTECTED && !ha->polling) {
		ha->polling = ha_vmcall(ha, json_pack("{s:s}", "cmd", "status"),
					2.0, p_tick_status);
	}
	if (ha->state == HA_PROTECTED && !peer_up && ha->plink->was_up) {
		ha->lost_at = now;
		ha_set(ha, HA_LOST, "heartbeats from %s stopped: %s", ha->peer,
		       ha->plink->err);
		log_err("vm %s: %s; its output is held", ha->vm->def.name,
			ha->msg);
	}
	if (ha->busy)
		return;
	switch (ha->state) {
	case HA_LOST:
		if (peer_up && now >= ha->next_try) {
			/* Same backup, same generation: resync.  The
			 * backup sees this host: it claims nothing. */
			p_sync(ha);
			return;
		}
		if (*ha->witness && !lease && !peer_up) {
			p_fence(ha, "its backup is lost and the witness is "
				    "unreachable (lease expired)");
			return;
		}
		if ((now - ha->lost_at) * 1e3 < ha->grace_ms ||
		    now < ha->next_try)
			return;
		if (!*ha->witness) {
			log_err("vm %s: no arbiter: going on alone after %u "
				"ms without %s",
				ha->vm->def.name, ha->grace_ms, ha->peer);
			p_go_alone(ha);
			return;
		}
		ha->busy = true;
		ha_peer_call(ha, ha->witness, ha->witness_addr,
			     json_pack("{s:s, s:s, s:I}", "cmd", "ha-alone",
				       "vm", ha->vm->def.name, "generation",
				       (json_int_t)ha->gen),
			     HA_CALL_TIMEOUT_MS, alone_granted);
		return;
	case HA_ALONE:
		if (peer_up && now >= ha->next_try)
			p_register(ha); /* a new generation with the backup */
		return;
	default:
		return;
	}
}

/* ---- backup ---- */

static void b_failover_reply(struct ha *ha, int err, json_t *rep)
{
	struct ftd_vm *vm = ha->vm;
	double took = (ftd_mono() - ha->lost_at) * 1e3;

	ha->busy = false;
	if (err || !rep_ok(rep)) {
		snprintf(ha->msg, sizeof(ha->msg), "failover failed: %s",
			 err ? strerror(-err) : rep_err(rep));
		log_err("vm %s: %s", vm->def.name, ha->msg);
		if (ha->req) {
			ctl_req_done(ha->req, reply_err("%s", ha->msg));
			ha->req = NULL;
		}
		ha_set(ha, HA_REPLICA, NULL);
		return;
	}
	json_decref(ha->failover);
	ha->failover = json_pack(
		"{s:s, s:I, s:I, s:f, s:f, s:I}", "from", ha->peer,
		"generation", (json_int_t)ha->gen, "epoch",
		json_integer_value(json_object_get(rep, "epoch")),
		"failover_ms",
		json_real_value(json_object_get(rep, "failover_ms")),
		"since_primary_lost_ms", took, "time", (json_int_t)time(NULL));
	log_warn("vm %s: FAILED OVER from %s: runs here from epoch %lld, "
		 "%.1f ms after the primary was lost",
		 vm->def.name, ha->peer,
		 (long long)json_integer_value(json_object_get(rep, "epoch")),
		 took);
	vm_set_state(vm, VM_RUNNING, "failed over from %s (generation %llu)",
		     ha->peer, (unsigned long long)ha->gen);
	ha->role = HA_PRIMARY;
	ha->lease_until = ftd_mono() + vm->d->ha->timeout_ms / 1e3;
	ha_set(ha, HA_ALONE, "running WITHOUT a backup: failed over from %s",
	       ha->peer);
	ha->next_try = ftd_mono() + HA_RESYNC_EVERY;
	ha_note(ha, true);
	if (ha->req) {
		json_t *r = json_deep_copy(ha->failover);

		json_object_set_new(r, "ok", json_true());
		ctl_req_done(ha->req, r);
		ha->req = NULL;
	}
	ha_payloads(vm->d);
}

static void b_failover(struct ha *ha)
{
	ha_set(ha, HA_TAKEOVER, "taking over from %s", ha->peer);
	ha->busy = true;
	if (!ha_vmcall(ha, json_pack("{s:s}", "cmd", "failover"), 10.0,
		       b_failover_reply)) {
		ha->busy = false;
		snprintf(ha->msg, sizeof(ha->msg),
			 "failover failed: its ftvm cannot be reached");
	}
}

static void b_drop(struct ha *ha, const char *why)
{
	struct ftd_vm *vm = ha->vm;

	log_warn("vm %s: dropping the replica: %s", vm->def.name, why);
	snprintf(ha->msg, sizeof(ha->msg), "%s", why);
	ha_end(ha, false);
	if (vm->pid > 0)
		vm_kill(vm, SIGTERM); /* ha_child_exited removes the VM */
	else
		vm_destroy(vm);
}

static void claimed(struct ha *ha, json_t *rep, const char *err)
{
	ha->busy = false;
	if (!rep || !rep_ok(rep)) {
		const char *why = rep ? rep_err(rep) : err;

		if (rep && json_is_true(json_object_get(rep, "stale"))) {
			if (ha->req) {
				ctl_req_done(ha->req,
					     reply_err("the witness refused: "
						       "%s",
						       why));
				ha->req = NULL;
			}
			b_drop(ha, why);
			return;
		}
		if (!ha->refusal_logged)
			log_warn("vm %s: no grant from the witness %s: %s",
				 ha->vm->def.name, ha->witness, why);
		if (ha->req) {
			ctl_req_done(ha->req, reply_err("the witness %s did not "
							"grant the failover: "
							"%s",
							ha->witness, why));
			ha->req = NULL;
		}
		ha->refusal_logged = true;
		ha_set(ha, HA_REPLICA, "no grant: %s", why);
		/* Alive, says the witness: ask again in a while. */
		ha->next_try = ftd_mono() + (rep ? 1.0 : 0.2);
		return;
	}
	ha->gen = (uint64_t)json_integer_value(
		json_object_get(rep, "generation"));
	b_failover(ha);
}

static void b_claim(struct ha *ha)
{
	ha_set(ha, HA_CLAIMING, "%s is lost; %s", ha->peer,
	       *ha->witness ? "asking the witness" : "no arbiter");
	if (!*ha->witness) {
		b_failover(ha);
		return;
	}
	ha->busy = true;
	ha_peer_call(ha, ha->witness, ha->witness_addr,
		     json_pack("{s:s, s:s, s:I}", "cmd", "ha-claim", "vm",
			       ha->vm->def.name, "generation",
			       (json_int_t)ha->gen),
		     HA_CLAIM_TIMEOUT_MS, claimed);
}

static void b_tick_status(struct ha *ha, int err, json_t *rep)
{
	const char *rs = json_string_value(json_object_get(rep, "replica"));

	ha->polling = false;
	if (err || !rs)
		return;
	ha->complete = json_is_true(json_object_get(rep, "complete"));
	ha->epoch = (uint64_t)json_integer_value(json_object_get(rep, "epoch"));
	if (ha->state == HA_WAITING && ha->complete)
		ha_set(ha, HA_REPLICA, "replica of %s's %s", ha->peer,
		       ha->vm->def.name);
}

static void b_tick(struct ha *ha)
{
	double now = ftd_mono();
	bool peer_up = ha->plink && ha->plink->up;

	if (ha->prep && now - ha->t_state > HA_LISTEN_TIMEOUT) {
		log_err("vm %s: ftvm backup did not say where it listens in "
			"%.0f s; stopping it",
			ha->vm->def.name, HA_LISTEN_TIMEOUT);
		vm_kill(ha->vm, SIGKILL);
		return;
	}
	if (!ha->prep && !ha->polling && ha->vm->pid > 0 &&
	    (ha->state == HA_WAITING || ha->state == HA_REPLICA))
		ha->polling = ha_vmcall(ha, json_pack("{s:s}", "cmd", "status"),
					2.0, b_tick_status);
	if (peer_up)
		ha->loss_logged = ha->refusal_logged = false;
	if (ha->busy || ha->state != HA_REPLICA || peer_up ||
	    !ha->plink->was_up || now < ha->next_try)
		return;
	if (!ha->complete) {
		snprintf(ha->msg, sizeof(ha->msg),
			 "%s was lost before the replica was complete: "
			 "nothing to take over",
			 ha->peer);
		return;
	}
	if (ha->lost_at < ha->plink->down_at)
		ha->lost_at = ha->plink->down_at;
	if (!ha->loss_logged)
		log_err("vm %s: PRIMARY %s LOST (%s); replica at epoch %llu",
			ha->vm->def.name, ha->peer, ha->plink->err,
			(unsigned long long)ha->epoch);
	ha->loss_logged = true;
	b_claim(ha);
}

/* ---- the tick and the links' news ---- */

static void ha_tick_vm(struct ha *ha)
{
	if (ha->dead)
		return;
	if (ha->role == HA_PRIMARY)
		p_tick(ha);
	else
		b_tick(ha);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ftd *d = w->data;
	struct ftd_vm *vm, *next;
	struct hlink *l;
	double now = ftd_mono();

	/* A link whose thread is stuck in a read is as lost as a closed
	 * one. */
	for (l = d->ha->links; l; l = l->next)
		if (l->up && (now - l->last_ok) * 1e3 > d->ha->timeout_ms) {
			l->up = false;
			l->down_at = l->last_ok + d->ha->timeout_ms / 1e3;
			snprintf(l->err, sizeof(l->err),
				 "%u heartbeats unanswered", d->hb_misses);
			log_warn("heartbeat: %s lost: %s", l->name, l->err);
		}
	for (vm = d->vms; vm; vm = next) {
		next = vm->next;
		if (vm->ha) {
			struct ha *ha = vm->ha;

			ha_get(ha);
			ha_tick_vm(ha);
			ha_put(ha);
		}
	}
}

/* What the beats carry: to a witness, the leases of the VMs this host
 * owns with it; a fenced one without renewal (letting it lapse lets the
 * backup in), only to learn whether it was deposed. */
static void ha_payloads(struct ftd *d)
{
	struct hlink *l;
	struct ftd_vm *vm;

	for (l = d->ha->links; l; l = l->next) {
		json_t *leases = json_array();

		for (vm = d->vms; vm; vm = vm->next) {
			struct ha *ha = vm->ha;

			if (!ha || ha->dead || ha->role != HA_PRIMARY ||
			    ha->wlink != l || !ha->gen)
				continue;
			json_array_append_new(
				leases,
				json_pack("{s:s, s:I, s:i, s:b}", "vm",
					  vm->def.name, "generation",
					  (json_int_t)ha->gen, "lease_ms",
					  (int)d->ha->timeout_ms, "renew",
					  ha->state != HA_FENCED));
		}
		peer_link_payload(l->pl,
				  json_pack("{s:o}", "leases", leases), false);
	}
}

static void ha_link_event(struct ftd *d, struct hlink *l, json_t *rep,
			  double sent)
{
	json_t *leases = json_object_get(rep, "leases");
	struct ftd_vm *vm, *next;

	for (vm = d->vms; vm; vm = next) {
		struct ha *ha = vm->ha;
		json_t *o;

		next = vm->next;
		if (!ha || ha->dead)
			continue;
		if (!rep) {
			/* Lost: act now rather than at the next tick. */
			if (ha->plink == l) {
				ha_get(ha);
				ha_tick_vm(ha);
				ha_put(ha);
			}
			continue;
		}
		if (ha->wlink != l || ha->role != HA_PRIMARY)
			continue;
		o = json_object_get(leases, vm->def.name);
		if (!o)
			continue;
		if (rep_ok(o) && json_is_false(json_object_get(o, "renewed"))) {
			continue;
		} else if (rep_ok(o)) {
			double until = sent + d->ha->timeout_ms / 1e3;

			if (until > ha->lease_until)
				ha->lease_until = until;
		} else if (ha->state != HA_PREPARE) {
			const char *ow =
				json_string_value(json_object_get(o, "owner"));

			ha_get(ha);
			p_deposed(ha, ow ? ow : "",
				  (uint64_t)json_integer_value(
					  json_object_get(o, "generation")));
			ha_put(ha);
		}
	}
}

/* ---- entry points ---- */

int ha_init(struct ftd *d)
{
	struct ha_host *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	d->ha = h;
	h->timeout_ms = d->hb_interval_ms * d->hb_misses;
	ev_timer_init(&h->tick_w, tick_cb, d->hb_interval_ms / 1e3,
		      d->hb_interval_ms / 1e3);
	h->tick_w.data = d;
	ev_timer_start(d->loop, &h->tick_w);
	if (d->witness)
		wrec_load(d);
	return 0;
}

/* Look `name` up as a peer: its address and host part.  0, or an error
 * reply. */
static json_t *peer_addr(struct ftd *d, const char *what, const char *name,
			 char *addr, char *host)
{
	char err[FTD_REASON_MAX];
	int port;

	if (!name_ok(name))
		return reply_err("%s \"%s\" is not a host name", what, name);
	if (!strcmp(name, d->name))
		return reply_err("the %s cannot be this host (%s)", what,
				 d->name);
	if (peers_lookup(d, name, addr, FTD_ADDR_MAX, err, sizeof(err)))
		return reply_err("%s", err);
	if (addr_split(addr, host, FTD_ADDR_MAX, &port))
		return reply_err("bad address %s for %s", addr, name);
	return NULL;
}

json_t *ha_protect_cmd(struct ftd *d, json_t *req, struct ctl_req *r)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	const char *peer = json_string_value(json_object_get(req, "peer"));
	const char *wit = json_string_value(json_object_get(req, "witness"));
	json_t *noarb = json_object_get(req, "no_arbiter");
	json_t *ins = json_object_get(req, "insecure");
	json_t *grace = json_object_get(req, "grace_ms");
	json_t *opts, *err;
	struct ftd_vm *vm;
	struct ha *ha;
	char e[2 * FTD_REASON_MAX];
	static const struct {
		const char *key;
		json_int_t min, max;
	} nums[] = { { "interval_ms", 5, 1000 }, { "timeout_ms", 100, 600000 } };
	size_t i;

	if (!name)
		return reply_err("\"name\" must be a string: the VM's name");
	if (!peer)
		return reply_err("\"peer\" must be a string: the backup host");
	if ((noarb && !json_is_boolean(noarb)) || (ins && !json_is_boolean(ins)))
		return reply_err("\"no_arbiter\" and \"insecure\" must be true "
				 "or false");
	if (wit && json_is_true(noarb))
		return reply_err("give either \"witness\" or \"no_arbiter\", "
				 "not both");
	if (!wit && !json_is_true(noarb))
		return reply_err("protect needs a witness (\"witness\": a third "
				 "host's ftd --witness) to decide when the "
				 "backup may take over; \"no_arbiter\": true "
				 "runs without one, at the risk of two live "
				 "copies after a partition");
	if (grace && (!json_is_integer(grace) ||
		      json_integer_value(grace) < 0 ||
		      json_integer_value(grace) > 600000))
		return reply_err("\"grace_ms\" must be 0..600000");
	opts = json_object();
	for (i = 0; i < sizeof(nums) / sizeof(*nums); i++) {
		json_t *v = json_object_get(req, nums[i].key);

		if (!v)
			continue;
		if (!json_is_integer(v) || json_integer_value(v) < nums[i].min ||
		    json_integer_value(v) > nums[i].max) {
			json_decref(opts);
			return reply_err("\"%s\" must be %lld..%lld",
					 nums[i].key, (long long)nums[i].min,
					 (long long)nums[i].max);
		}
		json_object_set(opts, nums[i].key, v);
	}
	if (json_object_get(req, "delta")) {
		if (!json_is_boolean(json_object_get(req, "delta"))) {
			json_decref(opts);
			return reply_err("\"delta\" must be true or false");
		}
		json_object_set(opts, "delta", json_object_get(req, "delta"));
	}
	vm = vm_find(d, name);
	*e = '\0';
	if (!vm)
		snprintf(e, sizeof(e), "no VM named \"%s\" on %s", name,
			 d->name);
	else if (!d->peering)
		snprintf(e, sizeof(e), "%s does not peer (ftd runs with "
				       "--listen none)",
			 d->name);
	else if (vm->ha && vm->ha->state != HA_ALONE)
		snprintf(e, sizeof(e), "%s is already %s (%.900s)", name,
			 vm->ha->role == HA_BACKUP ? "a backup here"
						   : ha_state_name(vm->ha->state),
			 vm->ha->msg);
	else if (vm->state != VM_RUNNING)
		snprintf(e, sizeof(e), "%s is %s, not running", name,
			 vm_state_name(vm->state));
	else if (!json_is_true(ins))
		cert_check(d, e, sizeof(e)); /* e says why, if bad */
	if (*e) {
		json_decref(opts);
		return reply_err("cannot protect %s: %s", name, e);
	}
	{
		char paddr[FTD_ADDR_MAX], phost[FTD_ADDR_MAX];
		char waddr[FTD_ADDR_MAX] = "", whost[FTD_ADDR_MAX];

		err = peer_addr(d, "backup", peer, paddr, phost);
		if (!err && wit)
			err = peer_addr(d, "witness", wit, waddr, whost);
		if (!err && wit && !strcmp(wit, peer))
			err = reply_err("the witness must be a third host, not "
					"the backup %s",
					peer);
		if (err) {
			json_decref(opts);
			return err;
		}
		ha = vm->ha;
		if (ha) { /* running alone: protect anew, maybe elsewhere */
			json_decref(ha->opts);
			link_put(d, ha->plink);
			link_put(d, ha->wlink);
			ha->plink = ha->wlink = NULL;
		} else {
			ha = calloc(1, sizeof(*ha));
			if (!ha) {
				json_decref(opts);
				return reply_err("out of memory");
			}
			ha->vm = vm;
			vm_get(vm);
			ha->refs = 1;
			ha->role = HA_PRIMARY;
			vm->ha = ha;
		}
		snprintf(ha->peer_addr, sizeof(ha->peer_addr), "%s", paddr);
		snprintf(ha->peer_host, sizeof(ha->peer_host), "%s", phost);
		snprintf(ha->witness_addr, sizeof(ha->witness_addr), "%s",
			 waddr);
	}
	ha->opts = opts;
	snprintf(ha->peer, sizeof(ha->peer), "%s", peer);
	snprintf(ha->witness, sizeof(ha->witness), "%s", wit ? wit : "");
	ha->no_arbiter = json_is_true(noarb);
	ha->insecure = json_is_true(ins);
	ha->grace_ms = grace ? (unsigned)json_integer_value(grace)
			     : HA_GRACE_MS;
	ha->resyncs = 0;
	ha->plink = link_get(d, ha->peer, ha->peer_addr);
	ha->wlink = wit ? link_get(d, ha->witness, ha->witness_addr) : NULL;
	if (!ha->plink || (wit && !ha->wlink)) {
		snprintf(ha->msg, sizeof(ha->msg),
			 "cannot start the heartbeat links");
		ha_end(ha, true);
		return reply_err("cannot protect %s: cannot start the "
				 "heartbeat links",
				 name);
	}
	ha->req = r;
	if (ha->no_arbiter)
		log_warn("vm %s: protected with NO ARBITER: if %s and %s lose "
			 "sight of each other, both may run it",
			 name, d->name, peer);
	p_register(ha);
	return NULL;
}

static void unprotected(struct ha *ha, int err, json_t *rep)
{
	struct ftd_vm *vm = ha->vm;
	struct ftd *d = vm->d;
	struct ctl_req *r = ha->req;

	ha->req = NULL;
	ha->busy = false;
	if (err || !rep_ok(rep)) {
		if (r)
			ctl_req_done(r, reply_err("unprotect failed: %s",
						  err ? strerror(-err)
						      : rep_err(rep)));
		return;
	}
	tell(d, ha->peer, ha->peer_addr,
	     json_pack("{s:s, s:s, s:I}", "cmd", "ha-end", "vm", vm->def.name,
		       "generation", (json_int_t)ha->gen),
	     "backup: end of protection");
	if (*ha->witness)
		tell(d, ha->witness, ha->witness_addr,
		     json_pack("{s:s, s:s, s:I}", "cmd", "ha-unregister", "vm",
			       vm->def.name, "generation", (json_int_t)ha->gen),
		     "witness: unregister");
	log_warn("vm %s: unprotected: it runs WITHOUT a backup now",
		 vm->def.name);
	snprintf(ha->msg, sizeof(ha->msg), "unprotected on request");
	ha_end(ha, false);
	ha_payloads(d);
	if (r)
		ctl_req_done(r, json_pack("{s:b, s:s}", "ok", 1, "state",
					  "unprotected"));
}

json_t *ha_unprotect_cmd(struct ftd *d, json_t *req, struct ctl_req *r)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;
	struct ha *ha = vm ? vm->ha : NULL;

	if (!name)
		return reply_err("\"name\" must be a string: the VM's name");
	if (!vm)
		return reply_err("no VM named \"%s\" on %s", name, d->name);
	if (!ha)
		return reply_err("%s is not protected", name);
	if (ha->role == HA_BACKUP)
		return reply_err("%s is a backup here; unprotect it on its "
				 "primary %s (or `vm stop` drops this replica)",
				 name, ha->peer);
	if (ha->busy || ha->req)
		return reply_err("%s is busy (%s); try again", name,
				 ha_state_name(ha->state));
	if (ha->state == HA_ALONE || ha->state == HA_FENCED) {
		unprotected(ha, 0, json_pack("{s:b}", "ok", 1));
		return json_pack("{s:b, s:s}", "ok", 1, "state", "unprotected");
	}
	ha->req = r;
	ha->busy = true;
	if (!ha_vmcall(ha, json_pack("{s:s}", "cmd", "unprotect"), 30.0,
		       unprotected)) {
		ha->req = NULL;
		ha->busy = false;
		return reply_err("cannot reach %s's ftvm", name);
	}
	return NULL;
}

json_t *ha_failover_cmd(struct ftd *d, json_t *req, struct ctl_req *r)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	json_t *force = json_object_get(req, "force");
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;
	struct ha *ha = vm ? vm->ha : NULL;

	if (!name)
		return reply_err("\"name\" must be a string: the VM's name");
	if (force && !json_is_boolean(force))
		return reply_err("\"force\" must be true or false");
	if (!vm)
		return reply_err("no VM named \"%s\" on %s", name, d->name);
	if (!ha || ha->role != HA_BACKUP)
		return reply_err("%s is not a backup here%s%s", name,
				 ha ? "; it runs here, protected by " : "",
				 ha ? ha->peer : "");
	if (ha->busy || ha->req)
		return reply_err("%s is busy (%s); try again", name,
				 ha_state_name(ha->state));
	if (!ha->complete)
		return reply_err("%s has no complete replica here yet (%s)",
				 name, ha_state_name(ha->state));
	ha->req = r;
	ha->lost_at = ftd_mono();
	if (json_is_true(force)) {
		log_warn("vm %s: failover FORCED by hand, without the "
			 "witness",
			 name);
		b_failover(ha);
	} else {
		b_claim(ha);
	}
	return NULL;
}

json_t *ha_leases_cmd(struct ftd *d, json_t *req, struct ctl_req *r)
{
	json_t *a = json_array();
	struct wrec *rec;

	if (!d->witness) {
		json_decref(a);
		return reply_err("%s is not a witness (ftd runs without "
				 "--witness)",
				 d->name);
	}
	for (rec = d->ha->recs; rec; rec = rec->next)
		json_array_append_new(a, wrec_json(rec));
	return json_pack("{s:b, s:o}", "ok", 1, "leases", a);
}

json_t *ha_status(struct ftd_vm *vm)
{
	struct ha *ha = vm->ha;
	json_t *o;
	double now = ftd_mono();

	if (!ha)
		return NULL;
	o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:f, s:s, s:o}", "role",
		      ha->role == HA_PRIMARY ? "primary" : "backup", "state",
		      ha_state_name(ha->state),
		      ha->role == HA_PRIMARY ? "backup" : "primary", ha->peer,
		      "witness", *ha->witness ? ha->witness : "none",
		      "generation", (json_int_t)ha->gen, "since_s",
		      now - ha->t_state, "reason", ha->msg, "heartbeat",
		      link_json(ha->plink));
	json_object_set_new(o, "witness_link", link_json(ha->wlink));
	if (ha->role == HA_PRIMARY && *ha->witness)
		json_object_set_new(o, "lease_left_ms",
				    json_real(ha->lease_until > now
						      ? (ha->lease_until - now) *
								1e3
						      : 0.0));
	if (ha->role == HA_BACKUP) {
		json_object_set_new(o, "complete", json_boolean(ha->complete));
		json_object_set_new(o, "epoch",
				    json_integer((json_int_t)ha->epoch));
	}
	if (ha->resyncs)
		json_object_set_new(o, "resyncs", json_integer(ha->resyncs));
	if (ha->no_arbiter)
		json_object_set_new(o, "warning",
				    json_string("no arbiter: a partition may "
						"leave two live copies"));
	if (ha->failover)
		json_object_set(o, "failover", ha->failover);
	return o;
}

bool ha_vm_startable(struct ftd_vm *vm, char *err, size_t len)
{
	char path[PATH_MAX];
	json_t *j;

	snprintf(path, sizeof(path), "%s/%s", vm->dir, HA_FILE);
	j = json_load_file(path, 0, NULL);
	if (!j)
		return true;
	snprintf(err, len,
		 "%s was protected (%s of generation %lld, peer %s, witness "
		 "%s) when its ftd stopped: another host may run it now.  "
		 "Check there; then `vm delete` it here, or let that host "
		 "protect it onto this one",
		 vm->def.name,
		 json_string_value(json_object_get(j, "role")) ?: "?",
		 (long long)json_integer_value(json_object_get(j, "generation")),
		 json_string_value(json_object_get(j, "peer")) ?: "?",
		 json_string_value(json_object_get(j, "witness")) ?: "?");
	json_decref(j);
	return false;
}

/* ---- backup: requests from the primary ---- */

void ha_backup_line(struct ftd_vm *vm, const char *line)
{
	struct ha *ha = vm->ha;
	const char *a, *colon;
	int port;

	if (!ha || strncmp(line, HA_BACKUP_PREFIX, strlen(HA_BACKUP_PREFIX))) {
		if (*line)
			log_info("vm %s: ftvm: %s", vm->def.name, line);
		return;
	}
	a = line + strlen(HA_BACKUP_PREFIX);
	colon = strrchr(a, ':');
	port = colon ? atoi(colon + 1) : 0;
	if (port <= 0 || port > 65535 || !ha->prep)
		return;
	log_info("vm %s: ftvm backup listens on %s", vm->def.name, a);
	ha->port = port;
	peer_req_reply(ha->prep,
		       json_pack("{s:b, s:i, s:s}", "ok", 1, "port", port,
				 "listen", a));
	ha->prep = NULL;
}

static void b_prepare(struct ftd *d, struct peer_req *pr, json_t *req,
		      const char *from)
{
	json_t *ins = json_object_get(req, "insecure");
	const char *wit = json_string_value(json_object_get(req, "witness"));
	uint64_t gen =
		(uint64_t)json_integer_value(json_object_get(req, "generation"));
	char err[FTD_REASON_MAX], waddr[FTD_ADDR_MAX];
	char paddr[FTD_ADDR_MAX], whost[FTD_ADDR_MAX];
	struct vm_argbuf ab;
	struct vm_def def;
	struct ftd_vm *vm;
	struct statvfs sv;
	struct ftd_vm *other;
	struct ha *ha;
	char path[PATH_MAX];
	char *argv[32];
	int n = 0, rc, port;

	if ((ins && !json_is_boolean(ins)) || !wit || !gen) {
		peer_req_reply(pr, reply_err("ha-prepare needs \"generation\", "
					     "\"witness\" and a boolean "
					     "\"insecure\""));
		return;
	}
	if (vm_def_from_peer(json_object_get(req, "vm"), &def, err,
			     sizeof(err))) {
		peer_req_reply(pr, reply_err("bad VM definition: %s", err));
		return;
	}
	*err = '\0';
	vm = vm_find(d, def.name);
	if (vm && vm->ha && vm->ha->role == HA_BACKUP &&
	    !strcmp(vm->ha->peer, from) && vm->pid > 0 && vm->ha->port &&
	    !vm->ha->busy) {
		/* A resync: the same ftvm backup takes the new stream. */
		ha = vm->ha;
		ha->gen = gen;
		ha_set(ha, HA_WAITING, "resync from %s", from);
		ha->complete = false;
		vm_def_free(&def);
		peer_req_reply(pr, json_pack("{s:b, s:i}", "ok", 1, "port",
					     ha->port));
		return;
	}
	if (vm && (vm->state != VM_STOPPED || vm->pid > 0))
		snprintf(err, sizeof(err), "a VM named %s already exists on %s "
					   "(%s)",
			 def.name, d->name, vm_state_name(vm->state));
	else if (def.net && (other = vm_tap_user(d, def.net, vm)))
		snprintf(err, sizeof(err),
			 "its TAP device is already used by VM %s on %s",
			 other->def.name, d->name);
	else if (*wit && peer_addr(d, "witness", wit, waddr, whost))
		snprintf(err, sizeof(err),
			 "the witness %s is not a peer of %s (not in its "
			 "peers file)",
			 wit, d->name);
	else if (peers_lookup(d, from, paddr, sizeof(paddr), err,
			      sizeof(err)))
		; /* err says why */
	else if (!json_is_true(ins))
		cert_check(d, err, sizeof(err));
	snprintf(path, sizeof(path), "%s/vms", d->state_dir);
	if (!*err && statvfs(path, &sv) == 0) {
		uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
		uint64_t need = def.disk_size + (16ULL << 20);

		if (vm && vm->def.disk_size)
			avail += vm->def.disk_size; /* replaced below */
		if (avail < need)
			snprintf(err, sizeof(err),
				 "%s lacks disk space for the replica of %s: "
				 "it needs %.1f MiB, %.300s has %.1f MiB free",
				 d->name, def.name, need / 1048576.0,
				 path, avail / 1048576.0);
	}
	if (*err) {
		vm_def_free(&def);
		peer_req_reply(pr, reply_err("%s", err));
		return;
	}
	if (vm) {
		log_warn("vm %s: replacing its stopped copy here with a "
			 "replica from %s",
			 def.name, from);
		if (vm->ha)
			ha_end(vm->ha, false);
		vm_destroy(vm);
	}
	if (vm_create(d, &def, VM_BACKUP, &vm, err, sizeof(err))) {
		vm_def_free(&def);
		peer_req_reply(pr, reply_err("%s", err));
		return;
	}
	snprintf(vm->from, sizeof(vm->from), "%s", from);
	ha = calloc(1, sizeof(*ha));
	if (!ha) {
		peer_req_reply(pr, reply_err("out of memory"));
		vm_destroy(vm);
		return;
	}
	ha->vm = vm;
	vm_get(vm);
	ha->refs = 1;
	ha->role = HA_BACKUP;
	ha->gen = gen;
	ha->insecure = json_is_true(ins);
	ha->no_arbiter = !*wit;
	/* Kept for protecting it back after a failover. */
	ha->opts = json_is_object(json_object_get(req, "opts"))
			   ? json_deep_copy(json_object_get(req, "opts"))
			   : NULL;
	ha->grace_ms = (unsigned)json_integer_value(
		json_object_get(req, "grace_ms"));
	snprintf(ha->peer, sizeof(ha->peer), "%s", from);
	snprintf(ha->peer_addr, sizeof(ha->peer_addr), "%s", paddr);
	addr_split(paddr, ha->peer_host, sizeof(ha->peer_host), &port);
	snprintf(ha->witness, sizeof(ha->witness), "%s", wit);
	if (*wit)
		snprintf(ha->witness_addr, sizeof(ha->witness_addr), "%s",
			 waddr);
	vm->ha = ha;
	ha_set(ha, HA_WAITING, "waiting for %s's stream", from);
	ha->plink = link_get(d, from, paddr);
	ha->wlink = *wit ? link_get(d, wit, waddr) : NULL;
	if (!ha->plink || (*wit && !ha->wlink)) {
		peer_req_reply(pr, reply_err("%s cannot start its heartbeat "
					     "links",
					     d->name));
		ha_end(ha, false);
		vm_destroy(vm);
		return;
	}
	argv[n++] = NULL;
	argv[n++] = "backup";
	n = vm_listen_args(d, &ab, ha->insecure, ha->peer, argv, n);
	n = vm_dev_args(vm, &ab, argv, n);
	argv[n] = NULL;
	rc = vm_spawn(vm, argv, true);
	if (rc) {
		peer_req_reply(pr, reply_err("%s cannot start ftvm backup: %s",
					     d->name, strerror(-rc)));
		ha_end(ha, false);
		vm_destroy(vm);
		return;
	}
	ha->prep = pr;
	ha_note(ha, true);
	vm_set_state(vm, VM_BACKUP, "backup of %s (generation %llu)", from,
		     (unsigned long long)gen);
	log_info("vm %s: keeping a replica for %s (witness %s)", vm->def.name,
		 from, *wit ? wit : "none");
}

/* The backup's side of a request about one of its VMs. */
static struct ha *b_find(struct ftd *d, struct peer_req *pr, json_t *req,
			 const char *from)
{
	const char *name = json_string_value(json_object_get(req, "vm"));
	struct ftd_vm *vm = name ? vm_find(d, name) : NULL;

	if (!vm || !vm->ha || vm->ha->role != HA_BACKUP ||
	    strcmp(vm->ha->peer, from)) {
		peer_req_reply(pr, json_pack("{s:b, s:s}", "ok", 1, "state",
					     "absent"));
		return NULL;
	}
	return vm->ha;
}

bool ha_peer_dispatch(struct ftd *d, struct peer_req *pr, const char *cmd,
		      json_t *req, const char *from)
{
	struct ha *ha;

	if (!strcmp(cmd, "hb")) {
		json_t *leases = json_object_get(req, "leases");

		if (d->witness && json_is_array(leases))
			peer_req_reply(pr, json_pack("{s:b, s:o}", "ok", 1,
						     "leases",
						     w_renew(d, leases, from)));
		else
			peer_req_reply(pr, reply_ok());
	} else if (!strcmp(cmd, "ha-register")) {
		if (witness_only(d, pr))
			w_register(d, pr, req, from);
	} else if (!strcmp(cmd, "ha-claim")) {
		if (witness_only(d, pr))
			w_claim(d, pr, req, from);
	} else if (!strcmp(cmd, "ha-alone") || !strcmp(cmd, "ha-yield") ||
		   !strcmp(cmd, "ha-unregister")) {
		if (witness_only(d, pr))
			w_owner_op(d, pr, req, from, cmd);
	} else if (!strcmp(cmd, "ha-prepare")) {
		b_prepare(d, pr, req, from);
	} else if (!strcmp(cmd, "ha-end")) {
		ha = b_find(d, pr, req, from);
		if (ha) {
			peer_req_reply(pr, reply_ok());
			b_drop(ha, "the primary ended the protection");
		}
	} else if (!strcmp(cmd, "ha-takeover")) {
		ha = b_find(d, pr, req, from);
		if (!ha)
			return true;
		peer_req_reply(pr, reply_ok());
		if (!ha->busy && ha->complete &&
		    (ha->state == HA_REPLICA || ha->state == HA_WAITING)) {
			log_warn("vm %s: %s says its copy died; taking over",
				 ha->vm->def.name, from);
			ha->lost_at = ftd_mono();
			b_claim(ha);
		}
	} else {
		return false;
	}
	return true;
}

/* ---- children ---- */

static void takeover_yielded(struct ha *ha, json_t *rep, const char *err)
{
	struct ftd *d = ha->vm->d;

	tell(d, ha->peer, ha->peer_addr,
	     json_pack("{s:s, s:s, s:I}", "cmd", "ha-takeover", "vm",
		       ha->vm->def.name, "generation", (json_int_t)ha->gen),
	     "backup: take over");
	snprintf(ha->msg, sizeof(ha->msg), "its ftvm died; %s takes over",
		 ha->peer);
	ha_end(ha, true);
	ha_payloads(d);
}

void ha_child_exited(struct ftd_vm *vm, bool was_backup)
{
	struct ha *ha = vm->ha;
	struct ftd *d = vm->d;

	if (!ha) {
		if (vm->out_fd >= 0)
			vm_out_close(vm);
		if (was_backup) /* its replica was dropped */
			vm_destroy(vm);
		return;
	}
	if (ha->role == HA_BACKUP) {
		bool ended = vm->exit_code == 0;

		if (vm->out_fd >= 0)
			vm_out_close(vm);
		snprintf(ha->msg, sizeof(ha->msg), "ftvm backup stopped: %s",
			 vm->reason);
		log_info("vm %s: %s", vm->def.name,
			 ended ? "protection ended by the primary; replica "
				 "dropped"
			       : ha->msg);
		ha_end(ha, false);
		vm_destroy(vm);
		return;
	}
	/* The primary's ftvm: a crash of the VMM or a signal is a lost
	 * host for the VM: the backup takes over.  A guest that ended, or
	 * a stop on request, ends the protection (ftvm sent the end). */
	if (ha->state != HA_FENCED && ha->state != HA_ALONE &&
	    !d->stopping && vm->exit_code != FTD_EXIT_CRASHED &&
	    (vm->exit_code > 128 || vm->exit_code == FTD_EXIT_VMM_ERROR) &&
	    ha->gen) {
		log_err("vm %s: its ftvm died (%s); handing over to %s",
			vm->def.name, vm->reason, ha->peer);
		if (*ha->witness) {
			ha_peer_call(ha, ha->witness, ha->witness_addr,
				     json_pack("{s:s, s:s, s:I}", "cmd",
					       "ha-yield", "vm", vm->def.name,
					       "generation",
					       (json_int_t)ha->gen),
				     HA_CALL_TIMEOUT_MS, takeover_yielded);
			return;
		}
		takeover_yielded(ha, NULL, NULL);
		return;
	}
	snprintf(ha->msg, sizeof(ha->msg), "its ftvm stopped: %s", vm->reason);
	if (*ha->witness && ha->gen && !d->stopping)
		tell(d, ha->witness, ha->witness_addr,
		     json_pack("{s:s, s:s, s:I}", "cmd", "ha-unregister", "vm",
			       vm->def.name, "generation", (json_int_t)ha->gen),
		     "witness: unregister");
	ha_end(ha, false);
	ha_payloads(d);
}

void ha_vm_gone(struct ftd_vm *vm)
{
	if (vm->ha)
		ha_end(vm->ha, true);
}
