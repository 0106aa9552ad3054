// SPDX-License-Identifier: MIT
/*
 * ftvm - one process per VM: boots a guest image or restores a saved VM on
 * the built-in micro-VMM, and serves a control socket (JSON lines,
 * docs/control-protocol.md).
 *
 *   ftvm run --image FILE [--mem SIZE] [--cmdline ARGS] [options]
 *   ftvm restore --from FILE [options]
 *   ftvm ctl --control SOCKET COMMAND [ARGS]
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
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "kvm/kvm.h"
#include "log.h"
#include "migrate/snapshot.h"

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
	uint64_t started_ns;
	struct ctl_client clients[CTL_CLIENTS_MAX];
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Parse "256M", "1G", "65536K", "16777216". */
static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case '\0': break;
	default: return -EINVAL;
	}
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B' && shift)
		end++;
	if (*end || v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
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

static json_t *cmd_status(struct vm *vm, json_t *req)
{
	struct hv_status st;
	struct hv_dom_info info;

	vm->ops->status(vm->dom, &st);
	vm->ops->info(vm->dom, &info);
	return json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:s}", "ok", 1,
			 "state", state_name(st.state), "mem",
			 (json_int_t)info.mem_size, "exits",
			 (json_int_t)st.exits, "hypercalls",
			 (json_int_t)st.hypercalls, "uptime_ms",
			 (json_int_t)((now_ns() - vm->started_ns) / 1000000),
			 "reason", st.reason);
}

static json_t *cmd_pause(struct vm *vm, json_t *req)
{
	if (vm->paused)
		return reply_err("already paused");
	vm->ops->pause(vm->dom);
	vm->paused = true;
	return json_pack("{s:b, s:s}", "ok", 1, "state", "paused");
}

static json_t *cmd_resume(struct vm *vm, json_t *req)
{
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
static json_t *cmd_save(struct vm *vm, json_t *req)
{
	const char *file = req_file(req);
	json_t *stop_j = json_object_get(req, "stop");
	bool stop = json_is_true(stop_j);
	char tmp[PATH_MAX + 8];
	struct snap_stats stats;
	struct chan *c;
	uint64_t t0 = now_ns(), t1;
	int err;

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

static json_t *cmd_dump(struct vm *vm, json_t *req)
{
	const char *file = req_file(req);
	int fd, err;

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

static json_t *cmd_quit(struct vm *vm, json_t *req)
{
	vm_stop(vm, 0);
	return json_pack("{s:b}", "ok", 1);
}

static const struct {
	const char *name;
	json_t *(*fn)(struct vm *vm, json_t *req);
	const char *help;
} commands[] = {
	{ "status", cmd_status, "state, memory, exit counters" },
	{ "pause", cmd_pause, "stop the vCPU" },
	{ "resume", cmd_resume, "continue after pause" },
	{ "save", cmd_save, "{\"file\": PATH, \"stop\": BOOL} save the VM" },
	{ "dump", cmd_dump, "{\"file\": PATH} raw guest RAM image" },
	{ "quit", cmd_quit, "stop the VM and ftvm" },
};

static json_t *ctl_handle(struct vm *vm, const char *line)
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
	for (i = 0; cmd && i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(cmd, commands[i].name))
			rep = commands[i].fn(vm, req);
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

static void client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *cl = (struct ctl_client *)w;
	char *nl;
	ssize_t n;

	n = recv(w->fd, cl->buf + cl->len, sizeof(cl->buf) - 1 - cl->len, 0);
	if (n <= 0) {
		client_close(cl);
		return;
	}
	cl->len += (size_t)n;
	cl->buf[cl->len] = '\0';
	while ((nl = memchr(cl->buf, '\n', cl->len))) {
		*nl = '\0';
		if (nl > cl->buf)
			client_reply(cl, ctl_handle(cl->vm, cl->buf));
		if (!cl->in_use)
			return;
		cl->len -= (size_t)(nl + 1 - cl->buf);
		memmove(cl->buf, nl + 1, cl->len);
		cl->buf[cl->len] = '\0';
	}
	if (cl->len == sizeof(cl->buf) - 1) {
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

static int ctl_listen(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, probe;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("control socket path longer than %zu bytes: %s",
			sizeof(sa.sun_path) - 1, path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	/* Refuse to steal a live socket; remove a stale one. */
	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sa,
				  sizeof(sa)) == 0) {
		close(probe);
		log_err("control socket %s is in use by another ftvm", path);
		return -EADDRINUSE;
	}
	if (probe >= 0)
		close(probe);
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(path, 0600) < 0 || listen(fd, 8) < 0) {
		int err = -errno;

		log_err("control socket %s: %s", path, strerror(errno));
		close(fd);
		return err;
	}
	return fd;
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
	vm_stop(vm, 128 + w->signum);
}

static int vm_serve(struct vm *vm)
{
	int efd = vm->ops->event_fd(vm->dom);

	vm->loop = EV_DEFAULT;
	vm->started_ns = now_ns();
	ev_io_init(&vm->event_w, event_cb, efd, EV_READ);
	vm->event_w.data = vm;
	ev_io_start(vm->loop, &vm->event_w);
	ev_signal_init(&vm->sigint_w, signal_cb, SIGINT);
	ev_signal_init(&vm->sigterm_w, signal_cb, SIGTERM);
	vm->sigint_w.data = vm->sigterm_w.data = vm;
	ev_signal_start(vm->loop, &vm->sigint_w);
	ev_signal_start(vm->loop, &vm->sigterm_w);
	if (vm->ctl_path) {
		vm->listen_fd = ctl_listen(vm->ctl_path);
		if (vm->listen_fd < 0)
			return EXIT_VMM_ERROR;
		ev_io_init(&vm->listen_w, listen_cb, vm->listen_fd, EV_READ);
		vm->listen_w.data = vm;
		ev_io_start(vm->loop, &vm->listen_w);
	}
	vm->ops->unpause(vm->dom);
	ev_run(vm->loop, 0);
	return vm->exit_code;
}

/* Destroy the VM, then remove the control socket: once the socket is gone,
 * the VM's TAP and disk are free for a restore to take. */
static void vm_teardown(struct vm *vm)
{
	unsigned i;

	vm->ops->destroy(vm->dom);
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
	      "  ftvm ctl --control SOCKET COMMAND [ARGS]\n"
	      "\n"
	      "run and restore options:\n"
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
	      "ctl commands:\n"
	      "  status | pause | resume | quit\n"
	      "  save FILE [--stop]   save the VM (keeps running unless --stop)\n"
	      "  dump FILE            write guest RAM as a raw image\n"
	      "\n"
	      "exit status: the guest's status; 125 ftvm error; 126 guest crashed\n"
	      "see docs/operators-guide.md\n",
	      f);
}

enum { OPT_IMAGE = 1, OPT_MEM, OPT_CMDLINE, OPT_CONSOLE, OPT_CONTROL,
       OPT_FROM, OPT_VERBOSE, OPT_HELP, OPT_STOP, OPT_NET, OPT_DISK,
       OPT_DISK_SIZE };

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
	{ NULL, 0, NULL, 0 },
};

struct opts {
	const char *image, *cmdline, *console, *control, *from, *disk;
	struct kvm_net_cfg net;
	uint64_t mem, disk_size;
	bool stop;
};

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
			if (parse_size(optarg, &o->disk_size) ||
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
		case OPT_VERBOSE: log_set_level(LOG_DEBUG); break;
		case OPT_MEM:
			if (parse_size(optarg, &o->mem)) {
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
	code = vm_serve(&vm);
	vm_teardown(&vm);
	return code;
}

/* ftvm ctl: send one request, print the reply, exit 0 if "ok". */
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
	req = json_pack("{s:s}", "cmd", argv[optind]);
	if (optind + 1 < argc)
		json_object_set_new(req, "file", json_string(argv[optind + 1]));
	if (o.stop)
		json_object_set_new(req, "stop", json_true());
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
	while (len < sizeof(buf) - 1 &&
	       (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) {
		len += (size_t)n;
		if (memchr(buf, '\n', len))
			break;
	}
	close(fd);
	buf[len] = '\0';
	fputs(buf, stdout);
	rep = json_loads(buf, JSON_DISABLE_EOF_CHECK, NULL);
	ok = rep && json_is_true(json_object_get(rep, "ok"));
	json_decref(rep);
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	log_set_prog("ftvm");
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "run"))
		return do_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "restore"))
		return do_restore(argc - 1, argv + 1);
	if (!strcmp(argv[1], "ctl"))
		return do_ctl(argc - 1, argv + 1);
	log_err("unknown command '%s' (see ftvm --help)", argv[1]);
	return 2;
}
