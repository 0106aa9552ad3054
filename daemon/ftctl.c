// SPDX-License-Identifier: MIT
/*
 * ftctl - steer the host daemon ftd through its control socket (JSON
 * lines, docs/control-protocol.md; usage in docs/ftd.md).
 *
 *   ftctl [--socket SOCK] [--json] vm create NAME --image FILE [...]
 *   ftctl [--socket SOCK] [--json] vm start|stop|delete|status NAME
 *   ftctl [--socket SOCK] [--json] vm list
 *   ftctl [--socket SOCK] [--json] vm resolve NAME moved|stayed
 *   ftctl [--socket SOCK] [--json] migrate NAME HOST [options]
 *   ftctl [--socket SOCK] [--json] host
 *
 * Exit status: 0 done, 1 failed (the reason is printed), 2 bad usage.
 */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define LINE_MAX_BYTES (64 * 1024)
#define DEFAULT_SOCKET "/run/ftengine/ftd.sock"
#define EXIT_FAILED 1
#define EXIT_USAGE 2

static const char *sock_path;
static bool opt_json;
static const char *prog = "ftctl";

static void die_usage(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static void die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see ftctl --help)\n");
	exit(EXIT_USAGE);
}

static void usage(FILE *f)
{
	fputs("usage: ftctl [--socket SOCK] [--json] COMMAND [ARGS]\n"
	      "\n"
	      "commands:\n"
	      "  vm create NAME --image FILE [--mem SIZE] [--cmdline ARGS]\n"
	      "            [--net SPEC] [--disk-size SIZE] [--console FILE]\n"
	      "  vm start NAME          boot it (ftvm run)\n"
	      "  vm stop NAME           stop it (quit, then signals)\n"
	      "  vm delete NAME         remove a stopped VM, disk included\n"
	      "  vm status NAME         its definition and state\n"
	      "  vm list                every VM of this host\n"
	      "  vm resolve NAME moved|stayed\n"
	      "                         settle a migration left in doubt\n"
	      "  migrate NAME HOST [--downtime MS] [--bandwidth RATE]\n"
	      "            [--abort-if-busy] [--no-auto-converge] "
	      "[--compress MODE]\n"
	      "            [--xbzrle SIZE] [--io-timeout MS] [--insecure]\n"
	      "                         move a running VM to HOST, live\n"
	      "  protect NAME HOST (--witness HOST | --no-arbiter) "
	      "[--interval MS]\n"
	      "            [--grace MS] [--io-timeout MS] [--no-delta] "
	      "[--insecure]\n"
	      "                         keep a hot backup of NAME on HOST\n"
	      "  unprotect NAME         end it (the backup drops its "
	      "replica)\n"
	      "  failover NAME [--force]  on the backup: run the replica "
	      "here now\n"
	      "  status [NAME]          VMs with their protection "
	      "(role, state, peer)\n"
	      "  leases                 a witness's records\n"
	      "  host                   this host's name, address, peers\n"
	      "  peers                  which peers answer (TLS, as a "
	      "migration would)\n"
	      "\n"
	      "options:\n"
	      "  --socket SOCK   ftd's control socket (default $FTD_SOCKET or\n"
	      "                  " DEFAULT_SOCKET ")\n"
	      "  --json          print ftd's replies as JSON\n"
	      "  --help          this text; 'ftctl COMMAND --help' for one "
	      "command\n"
	      "\n"
	      "SIZE and RATE: a number with an optional K, M or G suffix "
	      "(powers of 2;\n"
	      "RATE is per second).  Exit status: 0 done, 1 failed, 2 bad "
	      "usage.\n"
	      "see docs/ftd.md\n",
	      f);
}

/* ---- talking to ftd ---- */

struct conn {
	int fd;
	size_t len;
	char buf[LINE_MAX_BYTES + 1];
};

static int conn_open(struct conn *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(sock_path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "%s: socket path too long: %s\n", prog,
			sock_path);
		return -1;
	}
	strcpy(sa.sun_path, sock_path);
	c->len = 0;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 ||
	    connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr,
			"%s: cannot connect to ftd at %s: %s (is ftd running? "
			"see --socket)\n",
			prog, sock_path, strerror(errno));
		return -1;
	}
	return 0;
}

static int conn_send(struct conn *c, json_t *req)
{
	char *s = json_dumps(req, JSON_COMPACT);
	size_t len, off = 0;
	ssize_t n;

	json_decref(req);
	if (!s)
		return -1;
	len = strlen(s);
	s[len++] = '\n';
	while (off < len) {
		n = send(c->fd, s + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "%s: sending to ftd: %s\n", prog,
				strerror(errno));
			free(s);
			return -1;
		}
		off += (size_t)n;
	}
	free(s);
	return 0;
}

/* The next JSON object from ftd, or NULL (connection closed: message
 * printed). */
static json_t *conn_recv(struct conn *c)
{
	char *nl;
	ssize_t n;
	json_t *j;

	for (;;) {
		nl = memchr(c->buf, '\n', c->len);
		if (nl) {
			size_t used = (size_t)(nl + 1 - c->buf);

			*nl = '\0';
			j = json_loads(c->buf, 0, NULL);
			c->len -= used;
			memmove(c->buf, c->buf + used, c->len);
			if (json_is_object(j))
				return j;
			json_decref(j);
			fprintf(stderr, "%s: ftd sent a line that is not a "
					"JSON object\n",
				prog);
			return NULL;
		}
		if (c->len >= LINE_MAX_BYTES) {
			fprintf(stderr, "%s: ftd sent a line over %d bytes\n",
				prog, LINE_MAX_BYTES);
			return NULL;
		}
		n = read(c->fd, c->buf + c->len, LINE_MAX_BYTES - c->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "%s: ftd closed the connection without "
					"an answer%s%s\n",
				prog, n < 0 ? ": " : "",
				n < 0 ? strerror(errno) : "");
			return NULL;
		}
		c->len += (size_t)n;
	}
}

static bool reply_ok(json_t *rep)
{
	return json_is_true(json_object_get(rep, "ok"));
}

static const char *jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

static double jnum(json_t *o, const char *key)
{
	return json_number_value(json_object_get(o, key));
}

static void print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	if (s)
		puts(s);
	free(s);
	fflush(stdout);
}

/* Print the error of a failed reply.  Return EXIT_FAILED. */
static int print_failure(json_t *rep)
{
	if (opt_json)
		print_json(rep);
	fprintf(stderr, "%s: %s\n", prog,
		*jstr(rep, "error") ? jstr(rep, "error") : "failed");
	return EXIT_FAILED;
}

/* One request, one reply; NULL when there is none (message printed). */
static json_t *call(json_t *req)
{
	struct conn *c = malloc(sizeof(*c));
	json_t *rep = NULL;

	if (!c) {
		json_decref(req);
		return NULL;
	}
	if (conn_open(c) == 0) {
		if (conn_send(c, req) == 0)
			rep = conn_recv(c);
		close(c->fd);
	} else {
		json_decref(req);
	}
	free(c);
	return rep;
}

/* call(), keeping only a successful reply: a failure is printed and
 * NULL returned (the exit status is then EXIT_FAILED). */
static json_t *call_ok(json_t *req)
{
	json_t *rep = call(req);

	if (rep && !reply_ok(rep)) {
		print_failure(rep);
		json_decref(rep);
		rep = NULL;
	}
	return rep;
}

/* ---- sizes and values ---- */

static void fmt_size(char *buf, size_t len, double bytes)
{
	if (bytes >= 1024.0 * 1024 * 1024)
		snprintf(buf, len, "%.1f GiB", bytes / (1024.0 * 1024 * 1024));
	else if (bytes >= 1024.0 * 1024)
		snprintf(buf, len, "%.1f MiB", bytes / (1024.0 * 1024));
	else if (bytes >= 1024.0)
		snprintf(buf, len, "%.1f KiB", bytes / 1024.0);
	else
		snprintf(buf, len, "%.0f B", bytes);
}

static bool name_arg_ok(const char *s)
{
	return *s && *s != '-';
}

/* ---- vm commands ---- */

static int vm_help(FILE *f)
{
	fputs("usage:\n"
	      "  ftctl vm create NAME --image FILE [--mem SIZE] "
	      "[--cmdline ARGS]\n"
	      "                 [--net SPEC] [--disk-size SIZE] "
	      "[--console FILE]\n"
	      "  ftctl vm start|stop|delete|status NAME\n"
	      "  ftctl vm list\n"
	      "  ftctl vm resolve NAME moved|stayed\n"
	      "\n"
	      "create options:\n"
	      "  --image FILE      the guest image (a static ELF; its absolute "
	      "path is kept)\n"
	      "  --mem SIZE        guest RAM, 16M..64G in 2M steps (default "
	      "64M)\n"
	      "  --cmdline ARGS    the guest's command line\n"
	      "  --net SPEC        NIC: tap=NAME,mac=MAC[,ip=A.B.C.D/N]"
	      "[,gw=A.B.C.D]\n"
	      "                    [,bridge=BR][,host-ip=A.B.C.D/N]\n"
	      "  --disk-size SIZE  give it a disk of this size "
	      "(STATE/vms/NAME/disk.img)\n"
	      "  --console FILE    console output (default "
	      "STATE/vms/NAME/console.log)\n",
	      f);
	return f == stdout ? 0 : EXIT_USAGE;
}

static int vm_create(int argc, char **argv)
{
	enum { O_IMAGE = 1, O_MEM, O_CMDLINE, O_NET, O_DISK, O_CONSOLE,
	       O_HELP };
	static const struct option opts[] = {
		{ "image", required_argument, NULL, O_IMAGE },
		{ "mem", required_argument, NULL, O_MEM },
		{ "cmdline", required_argument, NULL, O_CMDLINE },
		{ "net", required_argument, NULL, O_NET },
		{ "disk-size", required_argument, NULL, O_DISK },
		{ "console", required_argument, NULL, O_CONSOLE },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	json_t *req = json_object(), *rep;
	char image[PATH_MAX], console[PATH_MAX];
	const char *img = NULL;
	uint64_t v;
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_IMAGE: img = optarg; break;
		case O_MEM:
			if (cli_parse_size(optarg, &v))
				die_usage("--mem %s: not a size (try 256M or "
					  "1G)",
					  optarg);
			json_object_set_new(req, "mem",
					    json_integer((json_int_t)v));
			break;
		case O_CMDLINE:
			json_object_set_new(req, "cmdline",
					    json_string(optarg));
			break;
		case O_NET:
			json_object_set_new(req, "net", json_string(optarg));
			break;
		case O_DISK:
			if (cli_parse_size(optarg, &v) || !v)
				die_usage("--disk-size %s: not a size (try "
					  "64M)",
					  optarg);
			json_object_set_new(req, "disk_size",
					    json_integer((json_int_t)v));
			break;
		case O_CONSOLE:
			/* ftd runs elsewhere: make the path absolute. */
			if (optarg[0] != '/' && strchr(optarg, '/')) {
				if (!realpath(".", console) ||
				    strlen(console) + strlen(optarg) + 2 >
					    sizeof(console))
					die_usage(
						"--console %s: cannot make it "
						"absolute",
						optarg);
				strcat(console, "/");
				strcat(console, optarg);
				json_object_set_new(req, "console",
						    json_string(console));
			} else {
				json_object_set_new(req, "console",
						    json_string(optarg));
			}
			break;
		case 'h':
		case O_HELP: json_decref(req); return vm_help(stdout);
		default: json_decref(req); return vm_help(stderr);
		}
	}
	if (optind != argc - 1 || !name_arg_ok(argv[optind]))
		die_usage("vm create needs exactly one NAME");
	if (!img)
		die_usage("vm create needs --image FILE");
	if (!realpath(img, image)) {
		fprintf(stderr, "%s: --image %s: %s\n", prog, img,
			strerror(errno));
		json_decref(req);
		return EXIT_FAILED;
	}
	json_object_set_new(req, "cmd", json_string("create"));
	json_object_set_new(req, "name", json_string(argv[optind]));
	json_object_set_new(req, "image", json_string(image));
	rep = call_ok(req);
	if (!rep)
		return EXIT_FAILED;
	if (opt_json)
		print_json(rep);
	else
		printf("created %s\n", argv[optind]);
	json_decref(rep);
	return 0;
}

static void print_status(json_t *vm)
{
	char mem[32], disk[32];
	json_t *f = json_object_get(vm, "ftvm");
	json_t *m = json_object_get(vm, "migration");

	fmt_size(mem, sizeof(mem), jnum(vm, "mem"));
	printf("name:      %s\n", jstr(vm, "name"));
	printf("state:     %s\n", jstr(vm, "state"));
	if (*jstr(vm, "reason"))
		printf("reason:    %s\n", jstr(vm, "reason"));
	if (json_object_get(vm, "pid"))
		printf("pid:       %lld (up %.1f s)\n",
		       (long long)json_integer_value(
			       json_object_get(vm, "pid")),
		       jnum(vm, "uptime_s"));
	if (json_object_get(vm, "exit_code"))
		printf("last exit: %lld\n",
		       (long long)json_integer_value(
			       json_object_get(vm, "exit_code")));
	printf("image:     %s\n", jstr(vm, "image"));
	printf("mem:       %s\n", mem);
	if (*jstr(vm, "cmdline"))
		printf("cmdline:   %s\n", jstr(vm, "cmdline"));
	if (*jstr(vm, "net"))
		printf("net:       %s\n", jstr(vm, "net"));
	if (jnum(vm, "disk_size") > 0) {
		fmt_size(disk, sizeof(disk), jnum(vm, "disk_size"));
		printf("disk:      %s (%s/disk.img)\n", disk, jstr(vm, "dir"));
	}
	printf("console:   %s\n", jstr(vm, "console"));
	if (json_object_get(vm, "protection")) {
		json_t *p = json_object_get(vm, "protection");
		json_t *hb = json_object_get(p, "heartbeat");
		json_t *fo = json_object_get(p, "failover");
		bool primary = !strcmp(jstr(p, "role"), "primary");

		printf("protection: %s, %s (%s %s, witness %s, generation "
		       "%lld)\n",
		       jstr(p, "role"), jstr(p, "state"),
		       primary ? "backup" : "primary",
		       jstr(p, primary ? "backup" : "primary"),
		       jstr(p, "witness"), (long long)jnum(p, "generation"));
		if (*jstr(p, "reason"))
			printf("            %s\n", jstr(p, "reason"));
		if (json_is_object(hb))
			printf("heartbeat:  %s %s\n", jstr(hb, "host"),
			       json_is_true(json_object_get(hb, "up"))
				       ? "up"
				       : jstr(hb, "error"));
		if (*jstr(p, "warning"))
			printf("WARNING:    %s\n", jstr(p, "warning"));
		if (json_is_object(fo))
			printf("failover:   from %s at epoch %lld: running "
			       "%.1f ms after the primary was lost (ftvm "
			       "%.1f ms)\n",
			       jstr(fo, "from"), (long long)jnum(fo, "epoch"),
			       jnum(fo, "since_primary_lost_ms"),
			       jnum(fo, "failover_ms"));
	}
	if (f && json_is_object(json_object_get(f, "protection"))) {
		json_t *p = json_object_get(f, "protection");

		printf("epochs:     %lld (every %lld ms), pause p50 %.0f us "
		       "p99 %.0f us, ack p99 %.1f ms\n",
		       (long long)jnum(p, "epochs"),
		       (long long)jnum(p, "interval_ms"),
		       jnum(p, "pause_p50_us"), jnum(p, "pause_p99_us"),
		       jnum(p, "ack_p99_ms"));
	}
	if (m && *jstr(m, "to"))
		printf("migration: to %s, %s, %.1f s\n", jstr(m, "to"),
		       jstr(m, "phase"), jnum(m, "elapsed_s"));
	else if (m && *jstr(m, "from"))
		printf("migration: incoming from %s\n", jstr(m, "from"));
	if (f)
		printf("ftvm:      %s, %lld exits, %lld hypercalls\n",
		       jstr(f, "state"),
		       (long long)json_integer_value(
			       json_object_get(f, "exits")),
		       (long long)json_integer_value(
			       json_object_get(f, "hypercalls")));
}

static void print_list(json_t *vms)
{
	size_t i;
	json_t *vm;
	char mem[32];

	if (!json_array_size(vms)) {
		printf("no VMs\n");
		return;
	}
	printf("%-20s %-10s %-10s %-8s %s\n", "NAME", "STATE", "MEM", "PID",
	       "REASON");
	json_array_foreach(vms, i, vm) {
		char pid[16] = "-";

		if (json_object_get(vm, "pid"))
			snprintf(pid, sizeof(pid), "%lld",
				 (long long)json_integer_value(
					 json_object_get(vm, "pid")));
		fmt_size(mem, sizeof(mem), jnum(vm, "mem"));
		printf("%-20s %-10s %-10s %-8s %s\n", jstr(vm, "name"),
		       jstr(vm, "state"), mem, pid, jstr(vm, "reason"));
	}
}

static int vm_simple(const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	json_t *req, *rep;
	const char *cmd = verb;
	int c;
	bool need_name = strcmp(verb, "list") != 0;
	bool is_resolve = !strcmp(verb, "resolve");

	optind = 0;
	c = getopt_long(argc, argv, "h", opts, NULL);
	if (c != -1)
		return vm_help(c == 'h' ? stdout : stderr);
	if (is_resolve && argc - optind != 2)
		die_usage("vm resolve needs NAME and moved|stayed");
	if (!is_resolve && argc - optind != (need_name ? 1 : 0))
		die_usage("vm %s %s", verb,
			  need_name ? "needs exactly one NAME"
				    : "takes no arguments");
	if (need_name && !name_arg_ok(argv[optind]))
		die_usage("bad VM name '%s'", argv[optind]);
	req = json_pack("{s:s}", "cmd", cmd);
	if (need_name)
		json_object_set_new(req, "name", json_string(argv[optind]));
	if (is_resolve) {
		const char *how = argv[optind + 1];

		if (strcmp(how, "moved") && strcmp(how, "stayed"))
			die_usage("vm resolve: say 'moved' (it runs on the "
				  "destination) or 'stayed' (resume it here), "
				  "not '%s'",
				  how);
		json_object_set_new(req, "moved",
				    json_boolean(!strcmp(how, "moved")));
	}
	rep = call_ok(req);
	if (!rep)
		return EXIT_FAILED;
	if (opt_json)
		print_json(rep);
	else if (!strcmp(verb, "start") &&
		 !strcmp(jstr(rep, "state"), "stopped"))
		printf("%s started, and has stopped already: %s\n",
		       argv[optind], jstr(rep, "reason"));
	else if (!strcmp(verb, "start"))
		printf("%s started (pid %lld)\n", argv[optind],
		       (long long)json_integer_value(
			       json_object_get(rep, "pid")));
	else if (!strcmp(verb, "stop"))
		printf("%s stopped: %s\n", argv[optind], jstr(rep, "reason"));
	else if (!strcmp(verb, "delete"))
		printf("deleted %s\n", argv[optind]);
	else if (!strcmp(verb, "status"))
		print_status(json_object_get(rep, "vm"));
	else if (!strcmp(verb, "list"))
		print_list(json_object_get(rep, "vms"));
	else if (is_resolve)
		printf("%s\n", *jstr(rep, "message") ? jstr(rep, "message")
						     : "resolved");
	json_decref(rep);
	return 0;
}

/* Is `arg` a request for a command's help text? */
static bool is_help(const char *arg)
{
	return !strcmp(arg, "--help") || !strcmp(arg, "-h");
}

static int cmd_vm(int argc, char **argv)
{
	static const char *const verbs[] = { "start", "stop",	 "delete",
					     "status", "list",	 "resolve",
					     NULL };
	const char *const *v;

	if (argc < 2)
		return vm_help(stderr);
	if (is_help(argv[1]) || !strcmp(argv[1], "help"))
		return vm_help(stdout);
	if (!strcmp(argv[1], "create"))
		return vm_create(argc - 1, argv + 1);
	for (v = verbs; *v; v++)
		if (!strcmp(argv[1], *v))
			return vm_simple(*v, argc - 1, argv + 1);
	die_usage("unknown vm command '%s'", argv[1]);
	return EXIT_USAGE;
}

/* ---- migrate ---- */

static int migrate_help(FILE *f)
{
	fputs("usage: ftctl migrate NAME HOST [--downtime MS] "
	      "[--bandwidth RATE]\n"
	      "                     [--abort-if-busy] [--no-auto-converge]\n"
	      "                     [--compress none|lz4|auto] "
	      "[--xbzrle SIZE] [--io-timeout MS]\n"
	      "                     [--insecure]\n"
	      "\n"
	      "Move the running VM NAME to HOST (a name in ftd's peers file) "
	      "while it runs.\n"
	      "If anything fails, NAME keeps running here.\n"
	      "\n"
	      "  --downtime MS     longest pause of the VM at the switch "
	      "(default: ftvm's, 30)\n"
	      "  --bandwidth RATE  cap the stream, e.g. 100M = 100 MiB/s "
	      "(default: none)\n"
	      "  --abort-if-busy   give up instead of throttling a VM that "
	      "dirties memory\n"
	      "                    faster than it can be sent\n"
	      "  --no-auto-converge  never throttle the vCPU to converge\n"
	      "  --compress MODE   none, lz4 (pages where it pays) or auto "
	      "(LZ4 while it\n"
	      "                    pays at the link's rate; ftvm's default)\n"
	      "  --xbzrle SIZE     cache for xor-delta pages from round 1 on "
	      "(e.g. 256M)\n"
	      "  --io-timeout MS   a destination silent this long fails "
	      "the migration\n"
	      "                    (default: ftvm's, 10000)\n"
	      "  --insecure        plain TCP for the VM's memory (no TLS): "
	      "benchmarks only\n"
	      "\n"
	      "Progress goes to stderr (one updating line on a terminal); "
	      "the summary to\n"
	      "stdout.  Exit status 0: NAME runs on HOST; 1: it did not "
	      "move.\n",
	      f);
	return f == stdout ? 0 : EXIT_USAGE;
}

struct progress {
	bool tty;
	bool line_open; /* a \r line is on the terminal */
	int last_round;
	double last_print;
	const char *name, *host;
	const char *verb; /* "migrating %s to %s" */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void progress_clear(struct progress *p)
{
	if (p->line_open) {
		fputs("\r\033[K", stderr);
		p->line_open = false;
	}
}

static void progress_event(struct progress *p, json_t *ev)
{
	const char *kind = jstr(ev, "event");
	char rem[32], sent[32], rate[32], line[256];
	double eta, t = now_s();
	int round;

	if (!strcmp(kind, "phase")) {
		progress_clear(p);
		fprintf(stderr, "%s\n", jstr(ev, "message"));
		return;
	}
	if (strcmp(kind, "progress"))
		return;
	round = (int)jnum(ev, "round");
	fmt_size(rem, sizeof(rem), jnum(ev, "remaining"));
	fmt_size(sent, sizeof(sent), jnum(ev, "sent"));
	fmt_size(rate, sizeof(rate), jnum(ev, "rate"));
	eta = jnum(ev, "eta_ms") / 1000.0;
	snprintf(line, sizeof(line),
		 "%s %s to %s: %s %d, %s dirty, %s/s, ETA %.1f s, "
		 "%s sent%s",
		 p->verb ? p->verb : "migrating", p->name, p->host,
		 json_is_true(json_object_get(ev, "paused")) ? "final round"
							     : "round",
		 round, rem, rate, eta, sent,
		 jnum(ev, "throttle") > 0 ? ", vCPU throttled" : "");
	if (p->tty) {
		fprintf(stderr, "\r\033[K%s", line);
		p->line_open = true;
	} else if (round != p->last_round || t - p->last_print >= 1.0) {
		/* Plain lines: one per round or per second at most. */
		fprintf(stderr, "%s\n", line);
		p->last_print = t;
	}
	p->last_round = round;
	fflush(stderr);
}

static void print_summary(json_t *rep, const struct progress *p)
{
	char bytes[32];
	double total = json_object_get(rep, "total_ms")
			       ? jnum(rep, "total_ms") / 1000.0
			       : jnum(rep, "elapsed_s");

	printf("%s moved from %s to %s", jstr(rep, "name"), jstr(rep, "from"),
	       jstr(rep, "to"));
	if (json_object_get(rep, "bytes")) {
		fmt_size(bytes, sizeof(bytes), jnum(rep, "bytes"));
		printf(": total %.2f s, downtime %.1f ms, %s sent in %lld "
		       "round%s",
		       total, jnum(rep, "downtime_ms"), bytes,
		       (long long)jnum(rep, "rounds"),
		       jnum(rep, "rounds") == 1 ? "" : "s");
	} else {
		printf(" in %.2f s", total);
	}
	if (*jstr(rep, "note"))
		printf(" (%s)", jstr(rep, "note"));
	printf("\n");
}

/*
 * Send `req` (taken), show its progress events until the reply; print a
 * success with done(rep, p) (or as JSON), a failure with print_failure.
 * A connection that ends first leaves `what` unknown to ftctl.
 */
static int call_progress(json_t *req, struct progress *p,
			 void (*done)(json_t *rep, const struct progress *p),
			 const char *what)
{
	struct conn *c = malloc(sizeof(*c));
	int rc = EXIT_FAILED;
	json_t *j;

	if (!c || conn_open(c)) {
		free(c);
		json_decref(req);
		return EXIT_FAILED;
	}
	if (conn_send(c, req))
		goto out;
	while ((j = conn_recv(c))) {
		if (json_object_get(j, "event")) {
			if (opt_json)
				print_json(j);
			progress_event(p, j);
			json_decref(j);
			continue;
		}
		progress_clear(p);
		if (!reply_ok(j)) {
			rc = print_failure(j);
		} else {
			if (opt_json)
				print_json(j);
			else
				done(j, p);
			rc = 0;
		}
		json_decref(j);
		goto out;
	}
	progress_clear(p);
	fprintf(stderr,
		"%s: ftd closed the connection: %s of %s is unknown to ftctl; "
		"see 'ftctl status %s'\n",
		prog, what, p->name, p->name);
out:
	close(c->fd);
	free(c);
	return rc;
}

static int cmd_migrate(int argc, char **argv)
{
	enum { O_DOWNTIME = 1, O_BW, O_BUSY, O_INSECURE, O_COMPRESS, O_XBZRLE,
	       O_NO_AUTOCONV, O_IO_TIMEOUT, O_HELP };
	static const struct option opts[] = {
		{ "downtime", required_argument, NULL, O_DOWNTIME },
		{ "bandwidth", required_argument, NULL, O_BW },
		{ "abort-if-busy", no_argument, NULL, O_BUSY },
		{ "insecure", no_argument, NULL, O_INSECURE },
		{ "compress", required_argument, NULL, O_COMPRESS },
		{ "xbzrle", required_argument, NULL, O_XBZRLE },
		{ "no-auto-converge", no_argument, NULL, O_NO_AUTOCONV },
		{ "io-timeout", required_argument, NULL, O_IO_TIMEOUT },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	struct progress p = { .last_round = -1 };
	json_t *req = json_object();
	char *end;
	uint64_t v;
	long ms;
	int o;

	optind = 0;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case O_DOWNTIME:
			errno = 0;
			ms = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || ms < 1 ||
			    ms > 60000)
				die_usage("--downtime %s: milliseconds, "
					  "1..60000",
					  optarg);
			json_object_set_new(req, "downtime_ms",
					    json_integer(ms));
			break;
		case O_BW:
			if (cli_parse_size(optarg, &v) || v > INT64_MAX)
				die_usage("--bandwidth %s: bytes per second "
					  "(try 100M); 0: unlimited",
					  optarg);
			json_object_set_new(req, "bandwidth",
					    json_integer((json_int_t)v));
			break;
		case O_BUSY:
			json_object_set_new(req, "abort_if_busy", json_true());
			break;
		case O_INSECURE:
			json_object_set_new(req, "insecure", json_true());
			break;
		case O_COMPRESS:
			if (strcmp(optarg, "none") && strcmp(optarg, "lz4") &&
			    strcmp(optarg, "auto"))
				die_usage("--compress %s: none, lz4 or auto",
					  optarg);
			json_object_set_new(req, "compress",
					    json_string(optarg));
			break;
		case O_XBZRLE:
			if (cli_parse_size(optarg, &v) || (v && v < 8192) ||
			    v > (64ULL << 30))
				die_usage("--xbzrle %s: a cache size, 8K..64G "
					  "(try 256M); 0: off",
					  optarg);
			json_object_set_new(req, "xbzrle_cache",
					    json_integer((json_int_t)v));
			break;
		case O_IO_TIMEOUT:
			errno = 0;
			ms = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || ms < 100 ||
			    ms > 600000)
				die_usage("--io-timeout %s: milliseconds, "
					  "100..600000",
					  optarg);
			json_object_set_new(req, "timeout_ms",
					    json_integer(ms));
			break;
		case O_NO_AUTOCONV:
			json_object_set_new(req, "auto_converge", json_false());
			break;
		case 'h':
		case O_HELP: json_decref(req); return migrate_help(stdout);
		default: json_decref(req); return migrate_help(stderr);
		}
	}
	if (argc - optind != 2 || !name_arg_ok(argv[optind]) ||
	    !name_arg_ok(argv[optind + 1]))
		die_usage("migrate needs NAME and HOST");
	p.name = argv[optind];
	p.host = argv[optind + 1];
	p.tty = isatty(STDERR_FILENO);
	json_object_set_new(req, "cmd", json_string("migrate"));
	json_object_set_new(req, "name", json_string(p.name));
	json_object_set_new(req, "to", json_string(p.host));
	return call_progress(req, &p, print_summary,
			     "the outcome of the migration");
}

static int cmd_host(int argc, char **argv)
{
	json_t *rep, *peers, *pe;
	size_t i;

	if (argc > 1 && is_help(argv[1])) {
		puts("usage: ftctl host\n\nThis host's name, peer address, "
		     "directories and peers.");
		return 0;
	}
	if (argc > 1)
		die_usage("host takes no arguments");
	rep = call_ok(json_pack("{s:s}", "cmd", "host"));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json) {
		print_json(rep);
	} else {
		printf("name:      %s\n", jstr(rep, "name"));
		printf("listen:    %s%s\n", jstr(rep, "listen"),
		       json_is_true(json_object_get(rep, "insecure_peers"))
			       ? " (insecure: plain TCP)"
			       : "");
		printf("state dir: %s\n", jstr(rep, "state_dir"));
		printf("config:    %s\n", jstr(rep, "config_dir"));
		printf("vms:       %lld\n",
		       (long long)json_integer_value(
			       json_object_get(rep, "vms")));
		peers = json_object_get(rep, "peers");
		json_array_foreach(peers, i, pe)
			printf("peer:      %s %s\n", jstr(pe, "name"),
			       jstr(pe, "addr"));
	}
	json_decref(rep);
	return 0;
}

static int cmd_peers(int argc, char **argv)
{
	json_t *rep, *pe;
	size_t i;
	int rc = 0;

	if (argc > 1 && is_help(argv[1])) {
		puts("usage: ftctl peers\n\nConnect to every host in ftd's "
		     "peers file (TLS, as a migration\nwould) and say which "
		     "answer.  Exit status 1 if one does not.");
		return 0;
	}
	if (argc > 1)
		die_usage("peers takes no arguments");
	rep = call_ok(json_pack("{s:s}", "cmd", "peers"));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json)
		print_json(rep);
	json_array_foreach(json_object_get(rep, "peers"), i, pe) {
		bool up = json_is_true(json_object_get(pe, "ok"));

		if (!up)
			rc = EXIT_FAILED;
		if (!opt_json)
			printf("%-20s %-24s %s\n", jstr(pe, "name"),
			       jstr(pe, "addr"), up ? "ok" : jstr(pe, "error"));
	}
	json_decref(rep);
	return rc;
}

/* ---- protection ---- */

static int protect_help(FILE *f)
{
	fputs("usage: ftctl protect NAME HOST (--witness HOST | --no-arbiter)\n"
	      "                     [--interval MS] [--grace MS] "
	      "[--io-timeout MS]\n"
	      "                     [--no-delta] [--insecure]\n"
	      "\n"
	      "Keep a hot backup of the running VM NAME on HOST: a full copy "
	      "first\n"
	      "(progress on stderr), then a checkpoint every interval.  The "
	      "VM's network\n"
	      "output leaves this host only once the backup has the state "
	      "that produced\n"
	      "it.  If this host dies, HOST runs NAME from the last "
	      "checkpoint.\n"
	      "\n"
	      "  --witness HOST  a third host (ftd --witness) that decides "
	      "who runs NAME\n"
	      "                  when the two lose sight of each other\n"
	      "  --no-arbiter    no witness: HOST takes over whenever it "
	      "stops hearing\n"
	      "                  from this host - a partition leaves two "
	      "live copies\n"
	      "  --interval MS   checkpoint interval, 5..1000 (default 25)\n"
	      "  --grace MS      how long a lost backup may come back before "
	      "NAME goes\n"
	      "                  on alone, unprotected (default 1000; output "
	      "held meanwhile)\n"
	      "  --io-timeout MS a backup silent this long is lost "
	      "(default 3000)\n"
	      "  --no-delta      send whole pages, not xor deltas\n"
	      "  --insecure      plain TCP for the checkpoints (no TLS): "
	      "benchmarks only\n"
	      "\n"
	      "Exit status 0: NAME is protected (its first checkpoint "
	      "committed); 1: it\n"
	      "is not, and runs on here as before.\n",
	      f);
	return f == stdout ? 0 : EXIT_USAGE;
}

static long ms_arg(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die_usage("--%s %s: milliseconds, %ld..%ld", opt, s, lo, hi);
	return v;
}

static void print_protected(json_t *j, const struct progress *p)
{
	char bytes[32];

	fmt_size(bytes, sizeof(bytes), jnum(j, "bytes"));
	printf("%s is protected by %s (witness %s, generation %lld): initial "
	       "sync %.2f s, %s sent\n",
	       p->name, p->host,
	       json_is_string(json_object_get(j, "witness")) ? jstr(j, "witness")
							     : "none",
	       (long long)jnum(j, "generation"), jnum(j, "sync_ms") / 1000.0,
	       bytes);
	if (*jstr(j, "warning"))
		printf("WARNING: %s\n", jstr(j, "warning"));
}

static int cmd_protect(int argc, char **argv)
{
	enum { O_WITNESS = 1, O_NOARB, O_INTERVAL, O_GRACE, O_IOTMO, O_NODELTA,
	       O_INSECURE, O_HELP };
	static const struct option opts[] = {
		{ "witness", required_argument, NULL, O_WITNESS },
		{ "no-arbiter", no_argument, NULL, O_NOARB },
		{ "interval", required_argument, NULL, O_INTERVAL },
		{ "grace", required_argument, NULL, O_GRACE },
		{ "io-timeout", required_argument, NULL, O_IOTMO },
		{ "no-delta", no_argument, NULL, O_NODELTA },
		{ "insecure", no_argument, NULL, O_INSECURE },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	struct progress p = { .last_round = -1,
			      .verb = "initial sync of" };
	json_t *req = json_object();
	int o;

	optind = 0;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case O_WITNESS:
			if (!name_arg_ok(optarg))
				die_usage("--witness %s: not a host name",
					  optarg);
			json_object_set_new(req, "witness",
					    json_string(optarg));
			break;
		case O_NOARB:
			json_object_set_new(req, "no_arbiter", json_true());
			break;
		case O_INTERVAL:
			json_object_set_new(req, "interval_ms",
					    json_integer(ms_arg("interval",
								optarg, 5,
								1000)));
			break;
		case O_GRACE:
			json_object_set_new(req, "grace_ms",
					    json_integer(ms_arg("grace", optarg,
								0, 600000)));
			break;
		case O_IOTMO:
			json_object_set_new(req, "timeout_ms",
					    json_integer(ms_arg("io-timeout",
								optarg, 100,
								600000)));
			break;
		case O_NODELTA:
			json_object_set_new(req, "delta", json_false());
			break;
		case O_INSECURE:
			json_object_set_new(req, "insecure", json_true());
			break;
		case 'h':
		case O_HELP: json_decref(req); return protect_help(stdout);
		default: json_decref(req); return protect_help(stderr);
		}
	}
	if (argc - optind != 2 || !name_arg_ok(argv[optind]) ||
	    !name_arg_ok(argv[optind + 1]))
		die_usage("protect needs NAME and HOST (the backup)");
	if (!json_object_get(req, "witness") &&
	    !json_object_get(req, "no_arbiter"))
		die_usage("protect needs --witness HOST (a third host that "
			  "decides failovers), or --no-arbiter to run without "
			  "one at the risk of two live copies after a "
			  "partition");
	if (json_object_get(req, "witness") &&
	    json_object_get(req, "no_arbiter"))
		die_usage("give --witness or --no-arbiter, not both");
	p.name = argv[optind];
	p.host = argv[optind + 1];
	p.tty = isatty(STDERR_FILENO);
	json_object_set_new(req, "cmd", json_string("protect"));
	json_object_set_new(req, "name", json_string(p.name));
	json_object_set_new(req, "peer", json_string(p.host));
	if (json_object_get(req, "no_arbiter"))
		fprintf(stderr,
			"%s: WARNING: no arbiter: if this host and %s lose "
			"sight of each other, both may run %s\n",
			prog, p.host, p.name);
	return call_progress(req, &p, print_protected,
			     "the outcome of the protection");
}

static int cmd_unprotect(int argc, char **argv)
{
	json_t *rep;

	if (argc > 1 && is_help(argv[1])) {
		puts("usage: ftctl unprotect NAME\n\nEnd the protection of "
		     "NAME: it runs on here without a backup; the\nbackup "
		     "drops its replica.");
		return 0;
	}
	if (argc != 2 || !name_arg_ok(argv[1]))
		die_usage("unprotect needs exactly one NAME");
	rep = call_ok(json_pack("{s:s, s:s}", "cmd", "unprotect", "name",
				argv[1]));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json)
		print_json(rep);
	else
		printf("%s is unprotected: it runs without a backup\n",
		       argv[1]);
	json_decref(rep);
	return 0;
}

static int cmd_failover(int argc, char **argv)
{
	bool force = false;
	json_t *rep;
	int i, n = 0;
	const char *name = NULL;

	for (i = 1; i < argc; i++) {
		if (is_help(argv[i])) {
			puts("usage: ftctl failover NAME [--force]\n\n"
			     "On NAME's backup host: run the replica here "
			     "now.  The witness must\ngrant it (it does once "
			     "the primary's lease has run out: a live "
			     "primary\nkeeps NAME).  --force skips the "
			     "witness: only when you know the\nprimary is "
			     "dead, or two copies will run.");
			return 0;
		}
		if (!strcmp(argv[i], "--force"))
			force = true;
		else if (n++ == 0)
			name = argv[i];
	}
	if (n != 1 || !name_arg_ok(name))
		die_usage("failover needs exactly one NAME");
	rep = call_ok(json_pack("{s:s, s:s, s:b}", "cmd", "failover", "name",
				name, "force", force));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json)
		print_json(rep);
	else
		printf("%s runs here now, from epoch %lld of %s (%.1f ms)\n",
		       name, (long long)jnum(rep, "epoch"), jstr(rep, "from"),
		       jnum(rep, "failover_ms"));
	json_decref(rep);
	return 0;
}

static int cmd_status(int argc, char **argv)
{
	json_t *rep, *vm;
	size_t i;

	if (argc > 1 && is_help(argv[1])) {
		puts("usage: ftctl status [NAME]\n\nNAME's state and "
		     "protection (role, state, peer, heartbeat, failover);\n"
		     "without NAME, one line per VM.");
		return 0;
	}
	if (argc > 2 || (argc == 2 && !name_arg_ok(argv[1])))
		die_usage("status takes at most one NAME");
	if (argc == 2) {
		rep = call_ok(json_pack("{s:s, s:s}", "cmd", "status", "name",
					argv[1]));
		if (!rep)
			return EXIT_FAILED;
		if (opt_json)
			print_json(rep);
		else
			print_status(json_object_get(rep, "vm"));
		json_decref(rep);
		return 0;
	}
	rep = call_ok(json_pack("{s:s}", "cmd", "list"));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json) {
		print_json(rep);
	} else if (!json_array_size(json_object_get(rep, "vms"))) {
		printf("no VMs\n");
	} else {
		printf("%-20s %-10s %-26s %s\n", "NAME", "STATE", "PROTECTION",
		       "PEER");
		json_array_foreach(json_object_get(rep, "vms"), i, vm) {
			json_t *p = json_object_get(vm, "protection");
			char prot[64] = "-";

			if (p)
				snprintf(prot, sizeof(prot), "%s %s",
					 jstr(p, "role"), jstr(p, "state"));
			printf("%-20s %-10s %-26s %s\n", jstr(vm, "name"),
			       jstr(vm, "state"), prot,
			       !p ? ""
			       : !strcmp(jstr(p, "role"), "primary")
				       ? jstr(p, "backup")
				       : jstr(p, "primary"));
		}
	}
	json_decref(rep);
	return 0;
}

static int cmd_leases(int argc, char **argv)
{
	json_t *rep, *l;
	size_t i;

	if (argc > 1 && is_help(argv[1])) {
		puts("usage: ftctl leases\n\nOn a witness (ftd --witness): "
		     "each protected VM it knows, its owner\n(the host that "
		     "may run it), backup, generation and lease.");
		return 0;
	}
	if (argc > 1)
		die_usage("leases takes no arguments");
	rep = call_ok(json_pack("{s:s}", "cmd", "leases"));
	if (!rep)
		return EXIT_FAILED;
	if (opt_json) {
		print_json(rep);
	} else if (!json_array_size(json_object_get(rep, "leases"))) {
		printf("no leases\n");
	} else {
		printf("%-20s %-16s %-16s %-6s %s\n", "VM", "OWNER", "BACKUP",
		       "GEN", "LEASE");
		json_array_foreach(json_object_get(rep, "leases"), i, l) {
			char lease[64];

			if (json_is_true(json_object_get(l, "lease_live")))
				snprintf(lease, sizeof(lease),
					 "live (%.0f ms left)",
					 jnum(l, "lease_left_ms"));
			else
				snprintf(lease, sizeof(lease), "expired");
			printf("%-20s %-16s %-16s %-6lld %s%s\n",
			       jstr(l, "vm"), jstr(l, "owner"),
			       *jstr(l, "backup") ? jstr(l, "backup") : "-",
			       (long long)jnum(l, "generation"), lease,
			       json_is_true(json_object_get(l, "alone"))
				       ? ", went on alone"
				       : "");
		}
	}
	json_decref(rep);
	return 0;
}

int main(int argc, char **argv)
{
	enum { O_SOCKET = 1, O_JSON, O_HELP };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, O_SOCKET },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd;
	int c;

	sock_path = getenv("FTD_SOCKET");
	if (!sock_path || !*sock_path)
		sock_path = DEFAULT_SOCKET;
	/* Global options come before the command ('+': stop there). */
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (c) {
		case O_SOCKET: sock_path = optarg; break;
		case O_JSON: opt_json = true; break;
		case 'h':
		case O_HELP: usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind];
	argc -= optind;
	argv += optind;
	if (!strcmp(cmd, "vm"))
		return cmd_vm(argc, argv);
	if (!strcmp(cmd, "migrate"))
		return cmd_migrate(argc, argv);
	if (!strcmp(cmd, "host"))
		return cmd_host(argc, argv);
	if (!strcmp(cmd, "protect"))
		return cmd_protect(argc, argv);
	if (!strcmp(cmd, "unprotect"))
		return cmd_unprotect(argc, argv);
	if (!strcmp(cmd, "failover"))
		return cmd_failover(argc, argv);
	if (!strcmp(cmd, "status"))
		return cmd_status(argc, argv);
	if (!strcmp(cmd, "leases"))
		return cmd_leases(argc, argv);
	if (!strcmp(cmd, "peers"))
		return cmd_peers(argc, argv);
	if (!strcmp(cmd, "help")) {
		usage(stdout);
		return 0;
	}
	die_usage("unknown command '%s'", cmd);
	return EXIT_USAGE;
}
