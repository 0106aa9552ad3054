// SPDX-License-Identifier: MIT
/*
 * ftd_vm.c - VM definitions in the state directory, the ftvm children
 * that run them, and asynchronous calls on an ftvm's control socket.
 *
 * STATE/vms/NAME/ holds vm.json (the definition, written atomically),
 * state.json (the last state and why, so that a restarted ftd can say
 * what became of a VM), ftvm.log (ftvm's stdout and stderr), console.log
 * and disk.img.  Only the loop thread calls in here.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ftd.h"
#include "log.h"

#define MEM_MIN (16ULL << 20)
#define MEM_MAX (64ULL << 30)
#define MEM_STEP (2ULL << 20)
#define DISK_MAX (16ULL << 40)
#define CMDLINE_MAX 4095
#define NET_MAX 255
#define START_TIMEOUT 15.0 /* seconds for ftvm to open its socket */
#define STOP_TERM_AFTER 10.0
#define STOP_KILL_AFTER 10.0

const char *vm_state_name(enum vm_state s)
{
	switch (s) {
	case VM_STOPPED: return "stopped";
	case VM_STARTING: return "starting";
	case VM_RUNNING: return "running";
	case VM_STOPPING: return "stopping";
	case VM_INCOMING: return "incoming";
	case VM_MIGRATING: return "migrating";
	case VM_IN_DOUBT: return "in-doubt";
	case VM_MOVED: return "moved";
	case VM_BACKUP: return "backup";
	}
	return "unknown";
}

bool name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > FTD_NAME_MAX || *s == '.' || *s == '-' || *s == '_')
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyz"
			 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* ---- definitions ---- */

void vm_def_free(struct vm_def *def)
{
	free(def->image);
	free(def->cmdline);
	free(def->net);
	free(def->console);
	memset(def, 0, sizeof(*def));
}

/* An optional non-negative integer member; -EINVAL if mistyped. */
static int get_u64(json_t *j, const char *key, uint64_t dflt, uint64_t *out)
{
	json_t *v = json_object_get(j, key);

	if (!v || json_is_null(v)) {
		*out = dflt;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -EINVAL;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* An optional string member: *out NULL when absent; -EINVAL if mistyped. */
static int get_str(json_t *j, const char *key, const char **out)
{
	json_t *v = json_object_get(j, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -EINVAL;
	*out = json_string_value(v);
	return 0;
}

/* The TAP name of a --net spec ("tap=NAME,..."), in buf; false if none. */
static bool net_tap(const char *net, char *buf, size_t len)
{
	const char *p = net;

	while (p && *p) {
		if (!strncmp(p, "tap=", 4)) {
			size_t n = strcspn(p + 4, ",");

			if (!n || n >= len)
				return false;
			memcpy(buf, p + 4, n);
			buf[n] = '\0';
			return true;
		}
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return false;
}

int vm_def_from_json(json_t *j, bool check_image, struct vm_def *def,
		     char *err, size_t errlen)
{
	const char *name, *image, *cmdline, *net, *console;
	char tap[64];
	struct stat st;

	memset(def, 0, sizeof(*def));
	if (get_str(j, "name", &name) || !name) {
		snprintf(err, errlen, "\"name\" must be a string: the VM's "
				      "name");
		return -EINVAL;
	}
	if (!name_ok(name)) {
		snprintf(err, errlen,
			 "VM name '%.64s%s': use 1..%d letters, digits, '_', "
			 "'.' or '-', starting with a letter or digit",
			 name, strlen(name) > 64 ? "..." : "", FTD_NAME_MAX);
		return -EINVAL;
	}
	if (get_str(j, "image", &image) || !image || image[0] != '/' ||
	    strlen(image) >= PATH_MAX) {
		snprintf(err, errlen,
			 "\"image\" must be the absolute path of a guest "
			 "image");
		return -EINVAL;
	}
	if (check_image) {
		const char *why = NULL;

		if (stat(image, &st) < 0)
			why = strerror(errno);
		else if (!S_ISREG(st.st_mode))
			why = "not a regular file";
		else if (access(image, R_OK) < 0)
			why = strerror(errno);
		if (why) {
			snprintf(err, errlen, "image %s: %s", image, why);
			return -EINVAL;
		}
	}
	if (get_u64(j, "mem", 64ULL << 20, &def->mem)) {
		snprintf(err, errlen,
			 "\"mem\" must be a non-negative integer (bytes)");
		return -EINVAL;
	}
	if (def->mem < MEM_MIN || def->mem > MEM_MAX || def->mem % MEM_STEP) {
		snprintf(err, errlen,
			 "memory size %llu bytes: must be 16 MiB..64 GiB in "
			 "multiples of 2 MiB",
			 (unsigned long long)def->mem);
		return -EINVAL;
	}
	if (get_u64(j, "disk_size", 0, &def->disk_size)) {
		snprintf(
			err, errlen,
			"\"disk_size\" must be a non-negative integer (bytes)");
		return -EINVAL;
	}
	if (def->disk_size % 512 || def->disk_size > DISK_MAX) {
		snprintf(err, errlen,
			 "disk size %llu bytes: must be a multiple of 512 "
			 "bytes, at most 16 TiB",
			 (unsigned long long)def->disk_size);
		return -EINVAL;
	}
	if (get_str(j, "cmdline", &cmdline) ||
	    (cmdline && (strlen(cmdline) > CMDLINE_MAX ||
			 strpbrk(cmdline, "\n\r")))) {
		snprintf(err, errlen,
			 "guest command line: at most %d bytes on one line",
			 CMDLINE_MAX);
		return -EINVAL;
	}
	if (get_str(j, "net", &net) ||
	    (net && (!*net || strlen(net) > NET_MAX ||
		     strspn(net, "abcdefghijklmnopqrstuvwxyz"
				 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
				 "=,:./_-") != strlen(net) ||
		     !net_tap(net, tap, sizeof(tap)) ||
		     !strstr(net, "mac=")))) {
		snprintf(err, errlen,
			 "NIC spec '%.100s': not an ftvm --net spec "
			 "tap=NAME,mac=MAC[,ip=A.B.C.D/N][,gw=A.B.C.D]"
			 "[,bridge=BR][,host-ip=A.B.C.D/N]",
			 json_is_string(json_object_get(j, "net"))
				 ? json_string_value(json_object_get(j, "net"))
				 : "?");
		return -EINVAL;
	}
	if (get_str(j, "console", &console) ||
	    (console && (!*console || strlen(console) >= PATH_MAX ||
			 (console[0] != '/' &&
			  (strchr(console, '/') || console[0] == '.'))))) {
		snprintf(err, errlen,
			 "console '%.100s': give an absolute path or a file "
			 "name (kept in the VM's directory)",
			 json_is_string(json_object_get(j, "console"))
				 ? json_string_value(
					   json_object_get(j, "console"))
				 : "?");
		return -EINVAL;
	}
	strcpy(def->name, name);
	def->image = strdup(image);
	def->cmdline = strdup(cmdline ? cmdline : "");
	def->net = net ? strdup(net) : NULL;
	def->console = strdup(console ? console : "console.log");
	if (!def->image || !def->cmdline || (net && !def->net) ||
	    !def->console) {
		vm_def_free(def);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

int vm_def_from_peer(json_t *j, struct vm_def *def, char *err,
		     size_t errlen)
{
	char *c;
	int rc = vm_def_from_json(j, false, def, err, errlen);

	if (rc || def->console[0] != '/')
		return rc;
	c = strdup("console.log");
	if (!c) {
		vm_def_free(def);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	free(def->console);
	def->console = c;
	return 0;
}

json_t *vm_def_to_json(const struct vm_def *def)
{
	json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:I, s:s}", "name",
			      def->name, "image", def->image, "mem",
			      (json_int_t)def->mem, "cmdline", def->cmdline,
			      "disk_size", (json_int_t)def->disk_size,
			      "console", def->console);

	json_object_set_new(j, "net",
			    def->net ? json_string(def->net) : json_null());
	return j;
}

/* Write `j` to DIR/FILE atomically (FILE.tmp, fsync, rename). */
static int write_json(const char *dir, const char *file, json_t *j)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	int fd, err = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (json_dumpfd(j, fd, JSON_INDENT(1) | JSON_SORT_KEYS) < 0 ||
	    write(fd, "\n", 1) != 1)
		err = errno ? -errno : -EIO;
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err) {
		unlink(tmp);
		log_err("%s: cannot write: %s", path, strerror(-err));
	}
	return err;
}

static json_t *read_json(const char *dir, const char *file, char *err,
			 size_t errlen)
{
	char path[PATH_MAX];
	json_error_t jerr;
	json_t *j;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!j)
		snprintf(err, errlen, "%.300s: %.150s (line %d)", path,
			 jerr.text, jerr.line);
	else if (!json_is_object(j)) {
		snprintf(err, errlen, "%.300s: not a JSON object", path);
		json_decref(j);
		j = NULL;
	}
	return j;
}

/* ---- the VM table ---- */

struct ftd_vm *vm_find(struct ftd *d, const char *name)
{
	struct ftd_vm *vm;

	for (vm = d->vms; vm; vm = vm->next)
		if (!strcmp(vm->def.name, name))
			return vm;
	return NULL;
}

struct ftd_vm *vm_tap_user(struct ftd *d, const char *net,
			   const struct ftd_vm *except)
{
	char tap[64], other[64];
	struct ftd_vm *vm;

	if (!net_tap(net, tap, sizeof(tap)))
		return NULL;
	for (vm = d->vms; vm; vm = vm->next)
		if (vm != except && vm->def.net &&
		    net_tap(vm->def.net, other, sizeof(other)) &&
		    !strcmp(tap, other))
			return vm;
	return NULL;
}

void vm_get(struct ftd_vm *vm)
{
	vm->refs++;
}

void vm_put(struct ftd_vm *vm)
{
	if (--vm->refs > 0)
		return;
	vm_def_free(&vm->def);
	free(vm->dir);
	free(vm->sock);
	free(vm);
}

static void vm_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* A new table entry for `def` (taken) in directory STATE/vms/NAME. */
static struct ftd_vm *vm_new(struct ftd *d, struct vm_def *def)
{
	struct ftd_vm *vm = calloc(1, sizeof(*vm));

	if (!vm)
		return NULL;
	if (asprintf(&vm->dir, "%s/vms/%s", d->state_dir, def->name) < 0 ||
	    asprintf(&vm->sock, "%s/ftvm.sock", vm->dir) < 0) {
		free(vm->dir);
		free(vm);
		return NULL;
	}
	vm->d = d;
	vm->refs = 1;
	vm->def = *def;
	memset(def, 0, sizeof(*def));
	vm->exit_code = -1;
	vm->out_fd = -1;
	ev_init(&vm->timer_w, vm_timer_cb);
	vm->timer_w.data = vm;
	vm->next = d->vms;
	d->vms = vm;
	return vm;
}

static bool sock_path_ok(const char *path)
{
	struct sockaddr_un sa;

	return strlen(path) < sizeof(sa.sun_path);
}

int vm_create(struct ftd *d, struct vm_def *def, enum vm_state st,
	      struct ftd_vm **out, char *err, size_t errlen)
{
	struct ftd_vm *vm;
	json_t *j;
	int rc;

	vm = vm_new(d, def);
	if (!vm) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* From here on, a failure undoes vm_new (the table entry). */
	if (!sock_path_ok(vm->sock)) {
		snprintf(err, errlen,
			 "the VM's control socket %s would be longer than "
			 "107 bytes: use a shorter --state-dir or VM name",
			 vm->sock);
		rc = -ENAMETOOLONG;
		goto fail_entry;
	}
	if (mkdir(vm->dir, 0700) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot create %s: %s", vm->dir,
			 strerror(errno));
		goto fail_entry;
	}
	j = vm_def_to_json(&vm->def);
	rc = write_json(vm->dir, "vm.json", j);
	json_decref(j);
	if (rc) {
		snprintf(err, errlen, "cannot write %s/vm.json: %s", vm->dir,
			 strerror(-rc));
		rmdir(vm->dir);
		goto fail_entry;
	}
	vm->state = st;
	*out = vm;
	return 0;
fail_entry:
	*def = vm->def; /* the caller still owns the definition */
	memset(&vm->def, 0, sizeof(vm->def));
	d->vms = vm->next;
	vm_put(vm);
	return rc;
}

void vm_destroy(struct ftd_vm *vm)
{
	struct ftd_vm **pp;
	struct dirent *e;
	DIR *dir;

	dir = opendir(vm->dir);
	if (dir) {
		while ((e = readdir(dir)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				unlinkat(dirfd(dir), e->d_name, 0);
		closedir(dir);
	}
	if (rmdir(vm->dir) < 0 && errno != ENOENT)
		log_warn("vm %s: cannot remove %s: %s", vm->def.name, vm->dir,
			 strerror(errno));
	for (pp = &vm->d->vms; *pp; pp = &(*pp)->next)
		if (*pp == vm) {
			*pp = vm->next;
			break;
		}
	ev_timer_stop(vm->d->loop, &vm->timer_w);
	ha_vm_gone(vm);
	vm->gone = true;
	vm_put(vm);
}

void vm_set_state(struct ftd_vm *vm, enum vm_state st, const char *fmt, ...)
{
	json_t *j;
	va_list ap;

	vm->state = st;
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(vm->reason, sizeof(vm->reason), fmt, ap);
		va_end(ap);
	}
	if (vm->gone)
		return;
	j = json_pack("{s:s, s:s, s:i, s:i, s:I}", "state", vm_state_name(st),
		      "reason", vm->reason, "exit_code", vm->exit_code, "pid",
		      (int)vm->pid, "time", (json_int_t)time(NULL));
	if (*vm->from)
		json_object_set_new(j, "from", json_string(vm->from));
	write_json(vm->dir, "state.json", j);
	json_decref(j);
}

/* Load one STATE/vms/NAME; 0 or -errno (logged, the VM is skipped). */
static int vm_load(struct ftd *d, const char *name)
{
	char dir[PATH_MAX], err[FTD_REASON_MAX];
	struct vm_def def;
	struct ftd_vm *vm;
	json_t *j, *s;
	const char *old = NULL, *why = NULL;

	snprintf(dir, sizeof(dir), "%s/vms/%s", d->state_dir, name);
	j = read_json(dir, "vm.json", err, sizeof(err));
	if (!j) {
		log_err("skipping VM %s: %s", name, err);
		return -EINVAL;
	}
	if (vm_def_from_json(j, false, &def, err, sizeof(err)) ||
	    strcmp(def.name, name)) {
		log_err("skipping VM %s: %s/vm.json: %s", name, dir,
			def.image ? "its name differs from its directory's"
				  : err);
		vm_def_free(&def);
		json_decref(j);
		return -EINVAL;
	}
	json_decref(j);
	vm = vm_new(d, &def);
	if (!vm)
		return -ENOMEM;
	s = read_json(dir, "state.json", err, sizeof(err));
	if (s) {
		old = json_string_value(json_object_get(s, "state"));
		why = json_string_value(json_object_get(s, "reason"));
		if (json_is_integer(json_object_get(s, "exit_code")))
			vm->exit_code = (int)json_integer_value(
				json_object_get(s, "exit_code"));
		if (json_is_string(json_object_get(s, "from")))
			snprintf(vm->from, sizeof(vm->from), "%s",
				 json_string_value(json_object_get(s, "from")));
	}
	if (!old || !strcmp(old, "stopped"))
		vm_set_state(vm, VM_STOPPED, "%s", why ? why : "stopped");
	else if (!strcmp(old, "incoming"))
		vm_set_state(vm, VM_STOPPED,
			     "ftd stopped during an incoming migration from "
			     "%s; if %s still runs the VM, delete this copy",
			     *vm->from ? vm->from : "another host",
			     *vm->from ? vm->from : "that host");
	else if (!strcmp(old, "in-doubt") || !strcmp(old, "migrating") ||
		 !strcmp(old, "moved"))
		vm_set_state(vm, VM_STOPPED,
			     "ftd stopped during a migration (%s); check "
			     "whether the destination runs the VM before "
			     "starting it here",
			     old);
	else
		vm_set_state(vm, VM_STOPPED,
			     "ftd stopped while the VM was %s; its ftvm "
			     "stopped with it",
			     old);
	json_decref(s);
	log_info("vm %s: %s (%s)", name, vm_state_name(vm->state),
		 vm->reason);
	return 0;
}

int vms_load(struct ftd *d)
{
	char path[PATH_MAX];
	struct dirent *e;
	DIR *dir;

	snprintf(path, sizeof(path), "%s/vms", d->state_dir);
	dir = opendir(path);
	if (!dir) {
		log_err("%s: %s", path, strerror(errno));
		return -errno;
	}
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		if (!name_ok(e->d_name)) {
			log_warn("%s/%s: not a VM name; ignored", path,
				 e->d_name);
			continue;
		}
		vm_load(d, e->d_name);
	}
	closedir(dir);
	return 0;
}

void vm_console_path(const struct ftd_vm *vm, char *buf, size_t len)
{
	if (vm->def.console[0] == '/')
		snprintf(buf, len, "%s", vm->def.console);
	else
		snprintf(buf, len, "%s/%s", vm->dir, vm->def.console);
}

json_t *vm_summary(const struct ftd_vm *vm)
{
	char console[PATH_MAX];
	json_t *j = vm_def_to_json(&vm->def);
	json_t *m;

	vm_console_path(vm, console, sizeof(console));
	json_object_set_new(j, "state", json_string(vm_state_name(vm->state)));
	json_object_set_new(j, "reason", json_string(vm->reason));
	json_object_set_new(j, "console", json_string(console));
	json_object_set_new(j, "dir", json_string(vm->dir));
	if (vm->pid > 0) {
		json_object_set_new(j, "pid", json_integer(vm->pid));
		json_object_set_new(
			j, "uptime_s",
			json_real(ev_now(vm->d->loop) - vm->started));
	}
	if (vm->exit_code >= 0)
		json_object_set_new(j, "exit_code",
				    json_integer(vm->exit_code));
	m = mig_status((struct ftd_vm *)vm);
	if (m)
		json_object_set_new(j, "migration", m);
	m = ha_status((struct ftd_vm *)vm);
	if (m)
		json_object_set_new(j, "protection", m);
	return j;
}

/* ---- children ---- */

void vm_kill(struct ftd_vm *vm, int sig)
{
	if (vm->pid > 0)
		kill(vm->pid, sig);
}

/* The last "error:" line of DIR/ftvm.log, without its prefix. */
static void last_error(const struct ftd_vm *vm, char *buf, size_t len)
{
	char path[PATH_MAX], tail[4096 + 1];
	char *line, *p, *best = NULL;
	ssize_t n;
	off_t size;
	int fd;

	*buf = '\0';
	snprintf(path, sizeof(path), "%s/ftvm.log", vm->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size > (off_t)(sizeof(tail) - 1))
		lseek(fd, size - (off_t)(sizeof(tail) - 1), SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	n = read(fd, tail, sizeof(tail) - 1);
	close(fd);
	if (n <= 0)
		return;
	tail[n] = '\0';
	for (line = strtok_r(tail, "\n", &p); line;
	     line = strtok_r(NULL, "\n", &p))
		if (strstr(line, ": error: "))
			best = line;
	if (best)
		snprintf(buf, len, "%s", strstr(best, ": error: ") + 9);
}

/* Record why the child stopped in vm->exit_code and vm->reason. */
static void record_exit(struct ftd_vm *vm, int status)
{
	char err[300];
	int code;

	last_error(vm, err, sizeof(err));
	if (WIFSIGNALED(status)) {
		code = 128 + WTERMSIG(status);
		snprintf(vm->reason, sizeof(vm->reason),
			 "ftvm was killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	} else {
		code = WEXITSTATUS(status);
		if (code == FTD_EXIT_VMM_ERROR)
			snprintf(vm->reason, sizeof(vm->reason),
				 "ftvm failed (exit 125): %s",
				 *err ? err : "see ftvm.log");
		else if (code == FTD_EXIT_CRASHED)
			snprintf(vm->reason, sizeof(vm->reason),
				 "the guest crashed (exit 126): %s",
				 *err ? err : "see ftvm.log");
		else if (code > 128)
			snprintf(vm->reason, sizeof(vm->reason),
				 "ftvm stopped on signal %d (%s)", code - 128,
				 strsignal(code - 128));
		else if (code == 0 && (vm->state == VM_MIGRATING ||
				       vm->state == VM_IN_DOUBT ||
				       vm->state == VM_MOVED))
			snprintf(vm->reason, sizeof(vm->reason),
				 "ftvm exited 0 during a migration (it does "
				 "once the destination runs the VM)");
		else if (vm->stop_req || vm->state == VM_STOPPING)
			snprintf(vm->reason, sizeof(vm->reason),
				 "stopped on request (exit %d)", code);
		else
			snprintf(vm->reason, sizeof(vm->reason),
				 "the guest exited with status %d", code);
	}
	vm->exit_code = code;
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
	struct ftd_vm *vm = w->data;
	struct ftd *d = vm->d;
	struct ctl_req *r;

	bool backup = vm->state == VM_BACKUP, ha = vm->ha || backup;

	ev_child_stop(loop, w);
	vm->pid = 0;
	ev_timer_stop(loop, &vm->timer_w);
	record_exit(vm, w->rstatus);
	log_info("vm %s: %s", vm->def.name, vm->reason);
	if (vm->state == VM_INCOMING || vm->state == VM_MIGRATING ||
	    vm->state == VM_IN_DOUBT || vm->state == VM_MOVED) {
		mig_child_exited(vm);
		return;
	}
	if (d->stopping) {
		char why[FTD_REASON_MAX];

		snprintf(why, sizeof(why), "%s", vm->reason);
		vm_set_state(vm, VM_STOPPED, "ftd shut down: %s", why);
	} else {
		vm_set_state(vm, VM_STOPPED, NULL);
	}
	r = vm->start_req;
	vm->start_req = NULL;
	/* ftvm's own failure is a failed start; a guest that ran and
	 * stopped (exit, crash) was started. */
	if (r && (vm->exit_code == FTD_EXIT_VMM_ERROR || vm->exit_code > 128))
		ctl_req_done(r, reply_err("%s failed to start on %s: %s",
					  vm->def.name, d->name, vm->reason));
	else if (r)
		ctl_req_done(r, json_pack("{s:b, s:s, s:i, s:s}", "ok", 1,
					  "state", "stopped", "exit_code",
					  vm->exit_code, "reason",
					  vm->reason));
	r = vm->stop_req;
	vm->stop_req = NULL;
	if (r)
		ctl_req_done(r, json_pack("{s:b, s:s, s:i, s:s}", "ok", 1,
					  "state", "stopped", "exit_code",
					  vm->exit_code, "reason",
					  vm->reason));
	if (ha)
		ha_child_exited(vm, backup); /* may destroy it */
}

static void out_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	mig_incoming_out(w->data);
}

int vm_spawn(struct ftd_vm *vm, char **argv, bool want_stdout)
{
	struct ftd *d = vm->d;
	char path[PATH_MAX], stamp[64];
	int logfd, pfd[2] = { -1, -1 }, nullfd, err, i;
	time_t now = time(NULL);
	pid_t pid, parent = getpid();
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t none;
	FILE *f;

	argv[0] = (char *)d->ftvm;
	snprintf(path, sizeof(path), "%s/ftvm.log", vm->dir);
	logfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0) {
		err = -errno;
		log_err("vm %s: %s: %s", vm->def.name, path, strerror(errno));
		return err;
	}
	/* A header in the log: which ftvm ran, when, with what. */
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S%z", localtime(&now));
	f = fdopen(dup(logfd), "a");
	if (f) {
		fprintf(f, "---- %s ftd: ", stamp);
		for (i = 0; argv[i]; i++)
			fprintf(f, "%s%s", i ? " " : "", argv[i]);
		fputc('\n', f);
		fclose(f);
	}
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (want_stdout && pipe2(pfd, O_CLOEXEC) < 0) {
		err = -errno;
		goto fail;
	}
	sigemptyset(&none);
	pid = fork();
	if (pid < 0) {
		err = -errno;
		goto fail;
	}
	if (pid == 0) {
		/* The child: async-signal-safe calls only, then exec.
		 * SIGPIPE stays ignored, as systemd starts services: a peer
		 * that vanishes mid-write must be an error, never the death
		 * of a running VM. */
		sigaction(SIGINT, &dfl, NULL);
		sigaction(SIGTERM, &dfl, NULL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setpgid(0, 0); /* a ^C at ftd's terminal is ftd's alone */
		/* ftvm does not outlive ftd: no orphan owns a VM.  It dies
		 * as in a host crash, without a word: a protected VM's
		 * backup takes over (a clean quit would end the
		 * protection and drop the replica). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* ftd's real-time priority is for its heartbeats: a VM's
		 * vCPUs run at normal priority (ftd.c, set_realtime). */
		sched_setscheduler(0, SCHED_OTHER,
				   &(struct sched_param){ .sched_priority = 0 });
		if (getppid() != parent)
			_exit(FTD_EXIT_VMM_ERROR);
		if (nullfd >= 0)
			dup2(nullfd, STDIN_FILENO);
		dup2(want_stdout ? pfd[1] : logfd, STDOUT_FILENO);
		dup2(logfd, STDERR_FILENO);
		execv(d->ftvm, argv);
		{
			static const char msg[] = "ftd: error: cannot execute "
						  "ftvm\n";
			ssize_t r = write(STDERR_FILENO, msg, sizeof(msg) - 1);

			(void)r;
		}
		_exit(FTD_EXIT_VMM_ERROR);
	}
	close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	vm->pid = pid;
	vm->started = ev_now(d->loop);
	vm->stop_stage = 0;
	ev_child_init(&vm->child_w, child_cb, pid, 0);
	vm->child_w.data = vm;
	ev_child_start(d->loop, &vm->child_w);
	if (want_stdout) {
		close(pfd[1]);
		fcntl(pfd[0], F_SETFL, O_NONBLOCK);
		vm->out_fd = pfd[0];
		vm->out_len = 0;
		ev_io_init(&vm->out_w, out_cb, pfd[0], EV_READ);
		vm->out_w.data = vm;
		ev_io_start(d->loop, &vm->out_w);
	}
	log_info("vm %s: ftvm %s started (pid %d)", vm->def.name, argv[1],
		 (int)pid);
	return 0;
fail:
	log_err("vm %s: cannot start ftvm: %s", vm->def.name, strerror(-err));
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	if (nullfd >= 0)
		close(nullfd);
	close(logfd);
	return err;
}

/* Does a live process serve the UNIX socket at `path`? */
static bool sock_alive(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;
	bool ok;

	if (strlen(path) >= sizeof(sa.sun_path))
		return false;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* STARTING: poll for the socket.  STOPPING: escalate to signals. */
static void vm_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ftd_vm *vm = w->data;
	struct ctl_req *r;

	if (vm->state == VM_INCOMING) {
		mig_incoming_tick(vm);
		return;
	}
	if (vm->state == VM_STARTING) {
		if (sock_alive(vm->sock)) {
			ev_timer_stop(loop, w);
			vm_set_state(vm, VM_RUNNING, "started");
			r = vm->start_req;
			vm->start_req = NULL;
			if (r)
				ctl_req_done(r, json_pack("{s:b, s:s, s:i}",
							  "ok", 1, "state",
							  "running", "pid",
							  (int)vm->pid));
		} else if (ev_now(loop) - vm->started > START_TIMEOUT) {
			ev_timer_stop(loop, w);
			log_err("vm %s: ftvm opened no control socket in "
				"%.0f s; killing it",
				vm->def.name, START_TIMEOUT);
			vm_kill(vm, SIGKILL); /* child_cb answers */
		}
		return;
	}
	if (vm->state == VM_STOPPING && vm->pid > 0) {
		vm->stop_stage++;
		log_warn("vm %s: ftvm (pid %d) still runs; sending %s",
			 vm->def.name, (int)vm->pid,
			 vm->stop_stage == 1 ? "SIGTERM" : "SIGKILL");
		vm_kill(vm, vm->stop_stage == 1 ? SIGTERM : SIGKILL);
		ev_timer_set(w, STOP_KILL_AFTER, 0);
		if (vm->stop_stage == 1)
			ev_timer_start(loop, w);
	}
}

int vm_dev_args(const struct ftd_vm *vm, struct vm_argbuf *b, char **argv,
		int n)
{
	vm_console_path(vm, b->console, sizeof(b->console));
	argv[n++] = "--control";
	argv[n++] = vm->sock;
	argv[n++] = "--console";
	argv[n++] = b->console;
	if (vm->def.net) {
		argv[n++] = "--net";
		argv[n++] = vm->def.net;
	}
	if (vm->def.disk_size) {
		snprintf(b->disk, sizeof(b->disk), "%s/disk.img", vm->dir);
		snprintf(b->size, sizeof(b->size), "%llu",
			 (unsigned long long)vm->def.disk_size);
		argv[n++] = "--disk";
		argv[n++] = b->disk;
		argv[n++] = "--disk-size";
		argv[n++] = b->size;
	}
	return n;
}

int vm_listen_args(const struct ftd *d, struct vm_argbuf *b, bool insecure,
		   const char *peer, char **argv, int n)
{
	if (strchr(d->listen_host, ':'))
		snprintf(b->listen, sizeof(b->listen), "[%s]:0", d->listen_host);
	else
		snprintf(b->listen, sizeof(b->listen), "%s:0", d->listen_host);
	argv[n++] = "--listen";
	argv[n++] = b->listen;
	if (insecure) {
		argv[n++] = "--insecure";
		return n;
	}
	argv[n++] = "--ca";
	argv[n++] = (char *)d->ca;
	argv[n++] = "--cert";
	argv[n++] = (char *)d->cert;
	argv[n++] = "--key";
	argv[n++] = (char *)d->key;
	argv[n++] = "--peer-name";
	argv[n++] = (char *)peer;
	return n;
}

json_t *vm_start(struct ftd_vm *vm, struct ctl_req *r)
{
	struct vm_argbuf ab;
	char mem[32];
	char *argv[24];
	int n = 0, err;

	if (vm->state != VM_STOPPED || vm->pid > 0)
		return reply_err("%s is already %s on %s", vm->def.name,
				 vm_state_name(vm->state), vm->d->name);
	if (access(vm->def.image, R_OK) < 0)
		return reply_err("%s cannot start: image %s: %s", vm->def.name,
				 vm->def.image, strerror(errno));
	{
		char why[FTD_REASON_MAX];

		if (!ha_vm_startable(vm, why, sizeof(why)))
			return reply_err("%s cannot start: %s", vm->def.name,
					 why);
	}
	snprintf(mem, sizeof(mem), "%llu",
		 (unsigned long long)vm->def.mem);
	argv[n++] = NULL; /* ftvm */
	argv[n++] = "run";
	argv[n++] = "--image";
	argv[n++] = vm->def.image;
	argv[n++] = "--mem";
	argv[n++] = mem;
	if (*vm->def.cmdline) {
		argv[n++] = "--cmdline";
		argv[n++] = vm->def.cmdline;
	}
	n = vm_dev_args(vm, &ab, argv, n);
	argv[n] = NULL;
	vm->exit_code = -1;
	vm->stop_req = NULL;
	*vm->from = '\0';
	err = vm_spawn(vm, argv, false);
	if (err)
		return reply_err("%s cannot start: %s", vm->def.name,
				 strerror(-err));
	vm->start_req = r;
	vm_set_state(vm, VM_STARTING, "starting");
	ev_timer_set(&vm->timer_w, 0.05, 0.05);
	ev_timer_start(vm->d->loop, &vm->timer_w);
	return NULL;
}

static void quit_cb(void *arg, int err, json_t *rep)
{
	struct ftd_vm *vm = arg;

	if (err && vm->pid > 0 && vm->state == VM_STOPPING) {
		log_warn("vm %s: quit got no answer (%s); sending SIGTERM",
			 vm->def.name, strerror(-err));
		vm_kill(vm, SIGTERM);
	}
	json_decref(rep);
	vm_put(vm);
}

json_t *vm_stop(struct ftd_vm *vm, struct ctl_req *r)
{
	struct ftd *d = vm->d;

	switch (vm->state) {
	case VM_STOPPED:
		return reply_err("%s is not running on %s (stopped: %s)",
				 vm->def.name, d->name, vm->reason);
	case VM_STOPPING:
		return reply_err("%s is already stopping", vm->def.name);
	case VM_INCOMING:
	case VM_MIGRATING:
	case VM_IN_DOUBT:
	case VM_MOVED:
		return reply_err("%s is in a migration (%s); wait for it to "
				 "end",
				 vm->def.name, vm_state_name(vm->state));
	case VM_STARTING:
	case VM_RUNNING:
	case VM_BACKUP: /* drops the replica */
		break;
	}
	if (vm->start_req) {
		ctl_req_done(vm->start_req,
			     reply_err("%s was stopped while starting",
				       vm->def.name));
		vm->start_req = NULL;
	}
	vm->stop_req = r;
	vm->state = VM_STOPPING;
	vm_get(vm);
	if (!vmcall_start(d, vm->sock, json_pack("{s:s}", "cmd", "quit"), 5.0,
			  NULL, quit_cb, vm)) {
		vm_put(vm);
		vm_kill(vm, SIGTERM);
	}
	vm->stop_stage = 0;
	ev_timer_stop(d->loop, &vm->timer_w);
	ev_timer_set(&vm->timer_w, STOP_TERM_AFTER, 0);
	ev_timer_start(d->loop, &vm->timer_w);
	return NULL;
}

/* ---- calls on an ftvm's control socket ---- */

struct vmcall {
	ev_io io;
	ev_timer tmo;
	struct ftd *d;
	char *out;
	size_t out_len, out_off;
	void (*on_event)(void *arg, json_t *ev);
	void (*on_reply)(void *arg, int err, json_t *rep);
	void *arg;
	size_t in_len;
	char in[FTD_LINE_MAX + 1];
};

static void vmcall_free(struct vmcall *c)
{
	ev_io_stop(c->d->loop, &c->io);
	ev_timer_stop(c->d->loop, &c->tmo);
	close(c->io.fd);
	free(c->out);
	free(c);
}

void vmcall_cancel(struct vmcall *c)
{
	if (c)
		vmcall_free(c);
}

static void vmcall_end(struct vmcall *c, int err, json_t *rep)
{
	void (*fn)(void *, int, json_t *) = c->on_reply;
	void *arg = c->arg;

	vmcall_free(c);
	fn(arg, err, rep);
}

static void vmcall_tmo_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	vmcall_end(w->data, -ETIMEDOUT, NULL);
}

static void vmcall_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct vmcall *c = (struct vmcall *)w;
	ssize_t n;
	char *nl;

	if (c->out_off < c->out_len) {
		n = send(w->fd, c->out + c->out_off, c->out_len - c->out_off,
			 MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			vmcall_end(c, n < 0 ? -errno : -EPIPE, NULL);
			return;
		}
		c->out_off += (size_t)n;
		if (c->out_off == c->out_len) {
			ev_io_stop(loop, w);
			ev_io_set(w, w->fd, EV_READ);
			ev_io_start(loop, w);
		}
		return;
	}
	n = recv(w->fd, c->in + c->in_len, FTD_LINE_MAX - c->in_len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		vmcall_end(c, n < 0 ? -errno : -ECONNRESET, NULL);
		return;
	}
	c->in_len += (size_t)n;
	while ((nl = memchr(c->in, '\n', c->in_len))) {
		size_t used = (size_t)(nl + 1 - c->in);
		json_t *j;

		*nl = '\0';
		j = json_loads(c->in, 0, NULL);
		c->in_len -= used;
		memmove(c->in, c->in + used, c->in_len);
		if (!json_is_object(j)) {
			json_decref(j);
			log_warn("ftvm sent a line that is not a JSON "
				 "object; ignored");
			continue;
		}
		if (json_object_get(j, "event")) {
			if (c->on_event)
				c->on_event(c->arg, j);
			json_decref(j);
			continue;
		}
		vmcall_end(c, 0, j);
		return;
	}
	if (c->in_len >= FTD_LINE_MAX)
		vmcall_end(c, -EMSGSIZE, NULL);
}

struct vmcall *vmcall_start(struct ftd *d, const char *sock, json_t *req,
			    double timeout,
			    void (*on_event)(void *arg, json_t *ev),
			    void (*on_reply)(void *arg, int err, json_t *rep),
			    void *arg)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct vmcall *c;
	char *s;
	int fd;

	s = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!s || strlen(sock) >= sizeof(sa.sun_path)) {
		free(s);
		errno = s ? ENAMETOOLONG : ENOMEM;
		return NULL;
	}
	strcpy(sa.sun_path, sock);
	c = malloc(sizeof(*c));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (!c || fd < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		log_debug("%s: %s", sock, strerror(e));
		if (fd >= 0)
			close(fd);
		free(c);
		free(s);
		errno = e;
		return NULL;
	}
	c->d = d;
	c->out = s;
	c->out_len = strlen(s);
	s[c->out_len++] = '\n';
	c->out_off = 0;
	c->in_len = 0;
	c->on_event = on_event;
	c->on_reply = on_reply;
	c->arg = arg;
	ev_io_init(&c->io, vmcall_io_cb, fd, EV_WRITE);
	ev_io_start(d->loop, &c->io);
	ev_timer_init(&c->tmo, vmcall_tmo_cb, timeout, 0);
	c->tmo.data = c;
	if (timeout > 0)
		ev_timer_start(d->loop, &c->tmo);
	return c;
}
