/* SPDX-License-Identifier: MIT */
/*
 * ftd.h - the host daemon's shared state (docs/ftd.md).
 *
 * ftd is one process per host.  One thread, the loop thread, owns every
 * structure in this header: the VM table, the control clients, the
 * children, the calls on ftvm control sockets.  Peer channels (TLS, which
 * block) run in short-lived threads that touch none of it: they hand
 * their results to the loop with ftd_post() (ftd_peer.c).
 *
 * Modules:
 *   ftd.c          main, options, the control socket and its commands
 *   ftd_vm.c       VM definitions in the state directory, ftvm children,
 *                  calls on an ftvm's control socket
 *   ftd_peer.c     the TLS listener, calls to other ftd, the peers file
 *   ftd_migrate.c  live migration: the source's driver and the
 *                  destination's handlers
 */
#ifndef FTD_H
#define FTD_RT_PRIO 10 /* SCHED_RR priority of ftd's threads */
#define FTD_H

#include <ev.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define FTD_LINE_MAX (64 * 1024) /* a JSON line, its newline included */
#define FTD_NAME_MAX 32		 /* VM and host names */
#define FTD_ADDR_MAX 300	 /* "host:port" */
#define FTD_REASON_MAX 512
#define FTD_PEER_PORT "7480"
#define FTD_EXIT_VMM_ERROR 125 /* ftvm's own exit statuses */
#define FTD_EXIT_CRASHED 126

struct ftd;
struct ftd_vm;
struct ha;
struct ha_host;
struct ctl_req;
struct vmcall;
struct peer_req;

enum vm_state {
	VM_STOPPED,   /* defined, no ftvm */
	VM_STARTING,  /* ftvm run spawned, control socket not up yet */
	VM_RUNNING,   /* ftvm runs the VM */
	VM_STOPPING,  /* asked to quit, waiting for the child's exit */
	VM_INCOMING,  /* destination: ftvm incoming, not known to run */
	VM_MIGRATING, /* source: a migration is under way */
	VM_IN_DOUBT,  /* source: the go was sent, outcome unknown */
	VM_MOVED,     /* source: the destination runs it; cleaning up */
	VM_BACKUP,    /* ftvm backup keeps a replica of another host's VM */
};

/* A VM definition: STATE/vms/NAME/vm.json. */
struct vm_def {
	char name[FTD_NAME_MAX + 1];
	char *image;	  /* absolute path of the guest ELF */
	char *cmdline;	  /* "" when none */
	char *net;	  /* ftvm --net SPEC, NULL when none */
	char *console;	  /* relative to the VM's directory, or absolute */
	uint64_t mem;	  /* bytes */
	uint64_t disk_size; /* bytes; 0 = no disk */
};

struct ftd_vm {
	struct ftd_vm *next;
	struct ftd *d;
	int refs;  /* the table's reference plus one per pending user */
	bool gone; /* removed from the table; freed at the last put */
	struct vm_def def;
	char *dir;  /* STATE/vms/NAME */
	char *sock; /* DIR/ftvm.sock */
	enum vm_state state;
	pid_t pid; /* > 0 while an ftvm child lives */
	ev_child child_w;
	ev_timer timer_w; /* start poll, stop escalation */
	int stop_stage;
	double started; /* ev_now() at spawn */
	int exit_code;	/* last exit status; -1: none yet */
	char reason[FTD_REASON_MAX]; /* why it is in its state */
	struct ctl_req *start_req; /* replied when the socket is up */
	struct ctl_req *stop_req;  /* replied at the child's exit */
	/* destination of a migration */
	char from[FTD_NAME_MAX + 1];
	int out_fd; /* ftvm incoming's stdout */
	ev_io out_w;
	char out[256];
	size_t out_len;
	struct peer_req *prep;	  /* "prepare": answered with the port */
	struct peer_req *finish;  /* "finish" ok:false: answered at exit */
	double finish_t;
	struct vmcall *probe;	  /* status query while incoming */
	/* source of a migration */
	struct migration *mig;
	/* protection, primary or backup (ftd_ha.c) */
	struct ha *ha;
};

struct ftd {
	struct ev_loop *loop;
	/* options (read-only after startup) */
	const char *config_dir, *state_dir, *control, *listen, *ftvm;
	const char *peers_file;
	char name[FTD_NAME_MAX + 1];
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
	char listen_host[FTD_ADDR_MAX]; /* host part of --listen, maybe "" */
	bool insecure_peers, peering, peers_explicit;
	bool no_realtime; /* --no-realtime */
	int doubt_limit; /* seconds of asking about an in-doubt migration */
	bool witness;	 /* --witness: grant leases to protected VMs */
	unsigned hb_interval_ms, hb_misses; /* heartbeats (ftd_ha.c) */
	struct ha_host *ha;
	/* state */
	struct ftd_vm *vms;
	int ctl_fd, lock_fd, peer_fd;
	ev_io ctl_w;
	ev_signal sigint_w, sigterm_w, sighup_w;
	ev_timer shutdown_w;
	bool stopping;
	int nclients;
	/* mailbox from threads (ftd_peer.c) */
	ev_async async_w;
	void *posts; /* struct post *, guarded by ftd_peer.c's mutex */
};

/* ---- ftd.c: control requests ---- */

/*
 * A control request whose reply is not ready yet: a command returns NULL
 * after keeping `r` (see ctl_cmd_fn).  The owner sends any number of
 * events, then exactly one reply.  Works (and discards) when the client
 * has gone meanwhile.
 */
void ctl_req_event(struct ctl_req *r, json_t *ev); /* takes ev */
void ctl_req_done(struct ctl_req *r, json_t *rep); /* takes rep, frees r */

/* {"ok":false,"error":...}, printf-style. */
json_t *reply_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
json_t *reply_ok(void);

/* ---- ftd_vm.c ---- */

const char *vm_state_name(enum vm_state s);
/* Name rules (also for hosts): [A-Za-z0-9][A-Za-z0-9_.-]{0,31}. */
bool name_ok(const char *s);
/* Check a definition in `j` and fill `def` (strings allocated; on error
 * `def` is left empty).  `check_image`: the image file must exist here.
 * Return 0, or -EINVAL with the problem in err[0..errlen). */
int vm_def_from_json(json_t *j, bool check_image, struct vm_def *def,
		     char *err, size_t errlen);
json_t *vm_def_to_json(const struct vm_def *def);
/* A definition from a peer (a migration's or a protection's): as
 * vm_def_from_json without the image check, and its console goes to the
 * VM's directory, never where the peer says. */
int vm_def_from_peer(json_t *j, struct vm_def *def, char *err,
		     size_t errlen);
void vm_def_free(struct vm_def *def);

/* Load every STATE/vms/NAME; skip (and log) broken ones.  0 or -errno. */
int vms_load(struct ftd *d);
struct ftd_vm *vm_find(struct ftd *d, const char *name);
/* The VM another definition shares a TAP name with, or NULL. */
struct ftd_vm *vm_tap_user(struct ftd *d, const char *net,
			   const struct ftd_vm *except);
/* Create STATE/vms/NAME with vm.json and add the VM (state `st`).  Takes
 * `def`'s strings.  Return 0 or -errno with err filled. */
int vm_create(struct ftd *d, struct vm_def *def, enum vm_state st,
	      struct ftd_vm **out, char *err, size_t errlen);
/* Remove the VM's directory (all files) and drop it from the table. */
void vm_destroy(struct ftd_vm *vm);
void vm_get(struct ftd_vm *vm);
void vm_put(struct ftd_vm *vm);
/* Set state and reason, persist state.json.  fmt may be NULL: keep. */
void vm_set_state(struct ftd_vm *vm, enum vm_state st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Spawn ftvm with argv (argv[0] ignored); stdout to a pipe in vm->out_fd
 * when `want_stdout`, else to DIR/ftvm.log like stderr.  Return 0 or
 * -errno. */
int vm_spawn(struct ftd_vm *vm, char **argv, bool want_stdout);
/* The path of the VM's console file. */
void vm_console_path(const struct ftd_vm *vm, char *buf, size_t len);
/* The ftvm options `run` and `incoming` share (control socket, console,
 * NIC, disk), appended at argv[n]; returns the new n.  The strings live
 * in *b. */
struct vm_argbuf {
	char console[PATH_MAX], disk[PATH_MAX], size[32];
	char listen[FTD_ADDR_MAX + 8];
};
int vm_dev_args(const struct ftd_vm *vm, struct vm_argbuf *b, char **argv,
		int n);
/* The options of an ftvm that waits for peer `peer`'s stream (incoming,
 * backup): --listen LISTENHOST:0, then this host's TLS files and
 * --peer-name PEER, or --insecure; at argv[n], returns the new n. */
int vm_listen_args(const struct ftd *d, struct vm_argbuf *b, bool insecure,
		   const char *peer, char **argv, int n);
json_t *vm_summary(const struct ftd_vm *vm);
/* Start and stop from a control request (replies through r). */
json_t *vm_start(struct ftd_vm *vm, struct ctl_req *r);
json_t *vm_stop(struct ftd_vm *vm, struct ctl_req *r);
/* Send signal `sig` to the child's process group, if any. */
void vm_kill(struct ftd_vm *vm, int sig);

/*
 * An asynchronous request on an ftvm control socket: connect, send `req`
 * (taken), read event lines (given to on_event, if set) until the reply,
 * given to on_reply with err 0; or on_reply(err < 0, NULL) when the
 * socket fails, closes or `timeout` seconds (0: none) pass without a
 * reply.  on_reply runs exactly once, after which the call is freed,
 * unless vmcall_cancel() came first.  Return NULL on an immediate
 * failure (on_reply is then not called; errno says why).
 */
struct vmcall *vmcall_start(struct ftd *d, const char *sock, json_t *req,
			    double timeout,
			    void (*on_event)(void *arg, json_t *ev),
			    void (*on_reply)(void *arg, int err, json_t *rep),
			    void *arg);
void vmcall_cancel(struct vmcall *c);

/* ---- ftd_peer.c ---- */

/* Run fn(d, arg) on the loop thread soon.  Thread-safe. */
void ftd_post(struct ftd *d, void (*fn)(struct ftd *d, void *arg),
	      void *arg);
/* Install the log tee that lets a thread read back its last error. */
void peer_log_init(void);
/* Set up ftd_post(); with peering, start the listener threads on
 * d->peer_fd.  0 or -errno. */
int peer_listen_start(struct ftd *d);
/* Look NAME up in the peers file: its address in addr.  Return 0,
 * -ENOENT (unknown host; err says so) or -errno (err says why). */
int peers_lookup(struct ftd *d, const char *name, char *addr, size_t alen,
		 char *err, size_t errlen);
/* Check the peers file's syntax (startup). */
int peers_check(struct ftd *d);
json_t *peers_list(struct ftd *d);
/* Split "host:port" / "[v6]:port" / ":port".  0 or -EINVAL. */
int addr_split(const char *addr, char *host, size_t hlen, int *port);
/*
 * Call peer `name` at `addr`: one request (taken), one reply, over TLS
 * (or plain TCP with --insecure-peers).  cb(d, arg, rep, err) runs on the
 * loop thread: rep is the reply (cb owns it) or NULL with `err` a
 * sentence saying why there is none.  `timeout_ms` bounds the connection
 * and each later wait.
 */
typedef void (*peer_cb)(struct ftd *d, void *arg, json_t *rep,
			const char *err);
void peer_call(struct ftd *d, const char *name, const char *addr,
	       json_t *req, int timeout_ms, peer_cb cb, void *arg);
/* Answer a peer request (takes rep).  Called exactly once per request. */
void peer_req_reply(struct peer_req *pr, json_t *rep);
/* Is this host's certificate usable now (readable, in its validity
 * period, issued for d->name)?  0, or -errno with the problem in err. */
int cert_check(struct ftd *d, char *err, size_t errlen);

/*
 * A heartbeat link to peer `name`: a thread keeps a channel to it open
 * and, every interval_ms, sends {"cmd":"hb","from","seq"} plus the
 * members of the current payload, and reads the answer (waiting at most
 * timeout_ms).  Each answer goes to cb(d, arg, rep, sent, NULL) on the
 * loop thread (cb owns rep; `sent` is the ftd_mono() time the beat
 * left); each failure to cb(d, arg, NULL, 0, why), after which the link
 * reconnects by itself (at once, then at most once a second).  Nothing
 * is logged by the link: cb decides.  NULL if no thread could start.
 */
struct peer_link;
typedef void (*link_cb)(struct ftd *d, void *arg, json_t *rep, double sent,
			const char *err);
struct peer_link *peer_link_start(struct ftd *d, const char *name,
				  const char *addr, unsigned interval_ms,
				  unsigned timeout_ms, link_cb cb, void *arg);
/* Replace the payload (taken); `now`: send a beat at once. */
void peer_link_payload(struct peer_link *l, json_t *payload, bool now);
/* End the link: cb is not called any more; it frees itself. */
void peer_link_stop(struct peer_link *l);
/* At exit: end every peer connection, call and link (waiting for their
 * threads, answering what they ask the loop) for at most `timeout` s. */
void peer_shutdown(struct ftd *d, double timeout);
/* CLOCK_MONOTONIC in seconds. */
double ftd_mono(void);

/* ---- ftd_ha.c ---- */

int ha_init(struct ftd *d);
/* Control commands "protect", "unprotect", "failover", "leases". */
json_t *ha_protect_cmd(struct ftd *d, json_t *req, struct ctl_req *r);
json_t *ha_unprotect_cmd(struct ftd *d, json_t *req, struct ctl_req *r);
json_t *ha_failover_cmd(struct ftd *d, json_t *req, struct ctl_req *r);
json_t *ha_leases_cmd(struct ftd *d, json_t *req, struct ctl_req *r);
/* Peer requests of protection ("hb", "ha-*"); false: not one of them. */
bool ha_peer_dispatch(struct ftd *d, struct peer_req *pr, const char *cmd,
		      json_t *req, const char *from);
/* The ftvm of a VM with vm->ha, or in VM_BACKUP, exited (after ftd_vm.c
 * recorded why).  May destroy the VM. */
void ha_child_exited(struct ftd_vm *vm, bool was_backup);
/* A line ftvm backup printed on its stdout. */
void ha_backup_line(struct ftd_vm *vm, const char *line);
/* The VM's protection for status, or NULL. */
json_t *ha_status(struct ftd_vm *vm);
/* May `vm start` run this VM?  Not if it was protected when its ftd
 * died: another host may run it (err says so). */
bool ha_vm_startable(struct ftd_vm *vm, char *err, size_t len);
/* The VM leaves the table. */
void ha_vm_gone(struct ftd_vm *vm);

/* ---- ftd_migrate.c ---- */

/* Control command "migrate" (source). */
json_t *mig_start(struct ftd *d, json_t *req, struct ctl_req *r);
/* Control command "resolve" (an in-doubt VM, by hand). */
json_t *mig_resolve_cmd(struct ftd *d, json_t *req, struct ctl_req *r);
/* Peer requests (destination); each ends in peer_req_reply(). */
void peer_dispatch(struct ftd *d, struct peer_req *pr, json_t *req);
/* The child of a VM in a migration state exited (status already
 * recorded in vm->exit_code / vm->reason). */
void mig_child_exited(struct ftd_vm *vm);
/* ftvm incoming's (or backup's) stdout is readable. */
void mig_incoming_out(struct ftd_vm *vm);
/* Stop reading it and close it. */
void vm_out_close(struct ftd_vm *vm);
/* Once a second while the VM is VM_INCOMING (vm->timer_w). */
void mig_incoming_tick(struct ftd_vm *vm);
/* Migration state to show in status, or NULL. */
json_t *mig_status(struct ftd_vm *vm);

#endif /* FTD_H */
