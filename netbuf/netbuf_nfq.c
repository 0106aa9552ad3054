// SPDX-License-Identifier: MIT
/*
 * netbuf_nfq.c - the NFQUEUE backend: the guest's frames leave the VMM as
 * usual, and iptables rules on its TAP send them to a netfilter queue
 * bound here (libnl-nf); releasing an epoch is one batch verdict, ACCEPT
 * for every packet id up to the epoch's last, which the kernel reinjects
 * in queue order.
 *
 * Rules (iptables, and ip6tables when installed), inserted first in the
 * filter table's FORWARD and INPUT chains, tagged "ftnetbuf:TAP":
 *   -i TAP                     traffic the host routes or receives
 *   -m physdev --physdev-in TAP  when the TAP is a bridge port (needs
 *                              br_netfilter and net.bridge.bridge-nf-call-
 *                              iptables = 1, which is set if it is 0)
 * Without --queue-bypass: with nobody bound, queued packets are dropped,
 * never let through unchecked.  A crashed VMM leaves its rules behind, but
 * its TAP dies with it, so they match nothing until that name is reused;
 * netbuf_open removes stale "ftnetbuf:TAP" rules before adding its own.
 * Non-IP frames (ARP) are not queued: they carry no state that a failover
 * could contradict (the backup has the same MAC and address).
 *
 * Epochs are ranges of packet ids: the kernel numbers the queue's packets
 * as it queues them, in the sender's write() on the TAP, so when the
 * domain is paused every packet it sent has an id up to the queue's
 * id_sequence (/proc/net/netfilter/nfnetlink_queue), which seal reads:
 * O(1), whatever the receiver has read so far.  A receiver thread reads
 * the queue's messages (64 bytes of each packet, enough for its IP
 * length) into a FIFO of held (id, length) for the accounting; a packet
 * beyond the bound gets an NF_DROP verdict (counted: the guest cannot be
 * stalled from here).  Every use of the socket and of the state is under
 * nb->lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netlink/netfilter/nfnl.h>
#include <netlink/netfilter/queue.h>
#include <netlink/netfilter/queue_msg.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
/* The kernel's headers after glibc's (netinet/in.h, via libnl). */
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "netbuf_priv.h"

#define COPY_RANGE 64		 /* bytes of each packet sent to us */
#define QUEUE_BASE 20000	 /* auto-picked queue numbers start here */
#define QUEUE_TRIES 64
#define RCVBUF (64 << 20)	 /* socket buffer: ~1 KiB per message */
#define HELD_MAX (1u << 20)	 /* packets held at most */
#define TAG_PREFIX "ftnetbuf:"
#define CMD_OUT 8192

extern char **environ;

enum { FAM_V4, FAM_V6, NR_FAM };
static const char *const fam_prog[NR_FAM] = { "iptables", "ip6tables" };
static const char *const fam_sysctl[NR_FAM] = {
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
};
static const char *const chains[] = { "FORWARD", "INPUT" };

/* A packet in the queue whose message we have: its id and frame bytes. */
struct pkt {
	uint64_t id, len;
};

struct nfq {
	struct nl_sock *sk;	   /* lock */
	struct nl_cb *cb;
	unsigned qnum;
	bool bound;
	bool bridged;
	char prog[NR_FAM][PATH_MAX]; /* "" if not installed */
	char tag[sizeof(TAG_PREFIX) + IF_NAMESIZE];
	bool rule_on[NR_FAM][2][2];  /* [fam][chain][physdev]: installed */
	uint64_t last_id;	   /* lock: highest id known, 64-bit */
	uint64_t verdicted;	   /* lock: ids <= this have a verdict */
	struct pkt *held;	   /* lock: FIFO of held packets, ids rising */
	size_t held_cap, held_head, held_len;
	uint64_t own_drops;	   /* lock: over the bound, not yet in st */
	bool warned_bound;	   /* lock: said so once */
	uint64_t overruns;	   /* lock: socket overruns seen */
	uint64_t kernel_drops;	   /* lock: last read from /proc */
	struct nb_epochs epochs;   /* lock: marks are packet ids */
	int stop_fd;
	pthread_t thread;
	bool thread_started;
};

/* ---- running iptables --------------------------------------------------- */

/* Find `name` in $PATH, then in the sbin directories a non-root PATH
 * lacks.  Returns false if it is nowhere. */
static bool find_prog(const char *name, char *path, size_t len)
{
	const char *env = getenv("PATH");
	char dirs[4096];
	char *save = NULL, *dir;

	snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin:/usr/bin:/bin",
		 env ? env : "");
	for (dir = strtok_r(dirs, ":", &save); dir;
	     dir = strtok_r(NULL, ":", &save)) {
		if (!*dir)
			continue;
		snprintf(path, len, "%s/%s", dir, name);
		if (access(path, X_OK) == 0)
			return true;
	}
	path[0] = '\0';
	return false;
}

/* Run argv (argv[0] an absolute path) with stdout and stderr into out
 * (NUL-terminated, truncated).  0 if it exited 0, else -EIO (or the
 * spawn's -errno); out holds what it said. */
static int run(char *const argv[], char *out, size_t outlen)
{
	posix_spawn_file_actions_t fa;
	int pfd[2], status, err;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	out[0] = '\0';
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	err = -posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	if (err) {
		close(pfd[0]);
		snprintf(out, outlen, "cannot run %s: %s", argv[0],
			 strerror(-err));
		return err;
	}
	for (;;) {
		char junk[512];

		if (got + 1 < outlen)
			n = read(pfd[0], out + got, outlen - 1 - got);
		else
			n = read(pfd[0], junk, sizeof(junk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (got + 1 < outlen)
			got += (size_t)n;
	}
	out[got] = '\0';
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* `op` (-I or -D) our rule for `fam`, `chain`, physdev or -i. */
static int rule(struct nfq *q, const char *ifname, int fam, int chain,
		bool physdev, const char *op)
{
	char qnum[16], out[CMD_OUT], line[512] = "";
	char *argv[24];
	int n = 0, err;

	snprintf(qnum, sizeof(qnum), "%u", q->qnum);
	argv[n++] = q->prog[fam];
	argv[n++] = "-w";
	argv[n++] = "10";
	argv[n++] = (char *)op;
	argv[n++] = (char *)chains[chain];
	if (!strcmp(op, "-I"))
		argv[n++] = "1";
	if (physdev) {
		argv[n++] = "-m";
		argv[n++] = "physdev";
		argv[n++] = "--physdev-in";
	} else {
		argv[n++] = "-i";
	}
	argv[n++] = (char *)ifname;
	argv[n++] = "-m";
	argv[n++] = "comment";
	argv[n++] = "--comment";
	argv[n++] = q->tag;
	argv[n++] = "-j";
	argv[n++] = "NFQUEUE";
	argv[n++] = "--queue-num";
	argv[n++] = qnum;
	argv[n] = NULL;
	err = run(argv, out, sizeof(out));
	if (err) {
		for (int i = 0; i < n; i++)
			snprintf(line + strlen(line),
				 sizeof(line) - strlen(line), "%s%s",
				 i ? " " : "", argv[i]);
		log_err("netbuf nfqueue: '%s' failed: %s", line,
			out[0] ? out : strerror(-err));
	}
	return err;
}

/* Delete every rule tagged for our TAP in `fam`/`chain`: left by a VMM
 * that died without closing (its TAP had the same name). */
static void remove_stale(struct nfq *q, int fam, int chain)
{
	char out[CMD_OUT * 4], res[CMD_OUT];
	char *argv[] = { q->prog[fam], "-w", "10", "-S",
			 (char *)chains[chain], NULL };
	char *save = NULL, *line;

	if (run(argv, out, sizeof(out)))
		return;
	for (line = strtok_r(out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *tok[64], *s2 = NULL, *t;
		bool ours = false;
		int n = 0;

		tok[n++] = q->prog[fam];
		tok[n++] = "-w";
		tok[n++] = "10";
		for (t = strtok_r(line, " ", &s2); t && n < 63;
		     t = strtok_r(NULL, " ", &s2)) {
			size_t l = strlen(t);

			if (l >= 2 && t[0] == '"' && t[l - 1] == '"') {
				t[l - 1] = '\0';
				t++;
			}
			ours |= !strcmp(t, q->tag);
			tok[n++] = t;
		}
		tok[n] = NULL;
		if (!ours || n < 5 || strcmp(tok[3], "-A"))
			continue;
		tok[3] = "-D";
		if (run(tok, res, sizeof(res)))
			log_warn("netbuf nfqueue: cannot remove a stale rule "
				 "for %s: %s", q->tag, res);
		else
			log_warn("netbuf nfqueue: removed a stale %s rule in "
				 "%s (a VMM died without closing)", q->tag,
				 chains[chain]);
	}
}

static void remove_rules(struct netbuf *nb)
{
	struct nfq *q = nb->priv;

	for (int f = 0; f < NR_FAM; f++)
		for (int c = 0; c < 2; c++)
			for (int p = 0; p < 2; p++)
				if (q->rule_on[f][c][p] &&
				    !rule(q, nb->ifname, f, c, p, "-D"))
					q->rule_on[f][c][p] = false;
}

static int add_rules(struct netbuf *nb)
{
	struct nfq *q = nb->priv;
	int err;

	for (int f = 0; f < NR_FAM; f++) {
		if (!q->prog[f][0])
			continue;
		for (int c = 0; c < 2; c++) {
			remove_stale(q, f, c);
			for (int p = 0; p < 2; p++) {
				if (p && !q->bridged)
					continue;
				err = rule(q, nb->ifname, f, c, p, "-I");
				if (err) {
					remove_rules(nb);
					return err;
				}
				q->rule_on[f][c][p] = true;
			}
		}
	}
	return 0;
}

/* A bridged TAP's traffic reaches iptables only with br_netfilter and
 * its sysctl on. */
static int bridge_nf(struct nfq *q, const char *ifname)
{
	for (int f = 0; f < NR_FAM; f++) {
		char v = 0;
		int fd;

		if (!q->prog[f][0])
			continue;
		fd = open(fam_sysctl[f], O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			log_err("netbuf nfqueue: %s is a bridge port, but %s "
				"is missing: br_netfilter is not loaded "
				"(modprobe br_netfilter)", ifname,
				fam_sysctl[f]);
			return -EOPNOTSUPP;
		}
		if (pread(fd, &v, 1, 0) == 1 && v == '0') {
			if (pwrite(fd, "1\n", 2, 0) != 2) {
				log_err("netbuf nfqueue: cannot set %s to 1: "
					"%s", fam_sysctl[f], strerror(errno));
				close(fd);
				return -EPERM;
			}
			log_warn("netbuf nfqueue: set %s to 1 (was 0) so that "
				 "bridged traffic passes %s", fam_sysctl[f],
				 fam_prog[f]);
		}
		close(fd);
	}
	return 0;
}

/* Whether `ifname` is a port of a Linux bridge (netlink: /sys may show
 * another network namespace). */
static int bridge_port(const char *ifname, bool *bridged)
{
	struct nl_sock *sk = nl_socket_alloc();
	struct rtnl_link *link = NULL, *master = NULL;
	int err = -NLE_NOMEM;

	*bridged = false;
	if (sk)
		err = nl_connect(sk, NETLINK_ROUTE);
	if (!err)
		err = rtnl_link_get_kernel(sk, 0, ifname, &link);
	if (!err && rtnl_link_get_master(link) > 0 &&
	    !rtnl_link_get_kernel(sk, rtnl_link_get_master(link), NULL,
				  &master)) {
		const char *type = rtnl_link_get_type(master);

		*bridged = type && !strcmp(type, "bridge");
	}
	if (err)
		log_err("netbuf nfqueue: looking up %s: %s", ifname,
			nl_geterror(err));
	if (master)
		rtnl_link_put(master);
	if (link)
		rtnl_link_put(link);
	nl_socket_free(sk);
	return err ? -ENODEV : 0;
}

/* ---- the queue ---------------------------------------------------------- */

/* Our queue's line of /proc/net/netfilter/nfnetlink_queue: kernel-side
 * drops (queue full, our socket full) and the last packet id assigned.
 * False if the queue is not listed. */
static bool read_queue(unsigned qnum, uint64_t *drops, uint32_t *id_seq)
{
	FILE *f = fopen("/proc/thread-self/net/netfilter/nfnetlink_queue",
			"re");
	unsigned num, portid, total, mode, range, seq;
	unsigned long qd, ud;
	bool found = false;
	int one;

	if (!f)
		f = fopen("/proc/net/netfilter/nfnetlink_queue", "re");
	if (!f)
		return false;
	while (fscanf(f, "%u %u %u %u %u %lu %lu %u %d", &num, &portid,
		      &total, &mode, &range, &qd, &ud, &seq, &one) == 9) {
		if (num != qnum)
			continue;
		if (drops)
			*drops = qd + ud;
		if (id_seq)
			*id_seq = seq;
		found = true;
	}
	fclose(f);
	return found;
}

/* Packet ids are 32 bits per queue, counting up; make them 64-bit and
 * monotonic (an id up to 2^31 behind the highest is an older one). */
static uint64_t ext_id(struct nfq *q, uint32_t id)
{
	uint64_t e = (q->last_id & ~0xffffffffULL) | id;

	if (e + (1ULL << 31) < q->last_id)
		e += 1ULL << 32;
	else if (e > q->last_id + (1ULL << 31) && e >= 1ULL << 32)
		e -= 1ULL << 32;
	if (e > q->last_id)
		q->last_id = e;
	return e;
}

static int verdict(struct nfq *q, uint64_t id, unsigned v, bool batch)
{
	struct nfnl_queue_msg *m = nfnl_queue_msg_alloc();
	int err;

	if (!m)
		return -ENOMEM;
	nfnl_queue_msg_set_group(m, (uint16_t)q->qnum);
	nfnl_queue_msg_set_family(m, AF_UNSPEC);
	nfnl_queue_msg_set_packetid(m, (uint32_t)id);
	nfnl_queue_msg_set_verdict(m, v);
	err = batch ? nfnl_queue_msg_send_verdict_batch(q->sk, m)
		    : nfnl_queue_msg_send_verdict(q->sk, m);
	nfnl_queue_msg_put(m);
	if (err < 0) {
		log_err("netbuf nfqueue: %s verdict %s for packet %u of queue "
			"%u: %s", batch ? "batch" : "single",
			v == NF_ACCEPT ? "ACCEPT" : "DROP", (unsigned)id,
			q->qnum, nl_geterror(err));
		return -EIO;
	}
	return 0;
}

/* The frame length of an IPv4/IPv6 packet whose first bytes are `p`. */
static uint64_t frame_len(const uint8_t *p, int n)
{
	if (n >= 20 && p[0] >> 4 == 4)
		return 14 + (uint64_t)(p[2] << 8 | p[3]);
	if (n >= 40 && p[0] >> 4 == 6)
		return 14 + 40 + (uint64_t)(p[4] << 8 | p[5]);
	return 14 + (uint64_t)(n > 0 ? n : 0);
}

/* NL_CB_VALID, lock held: one queued packet. */
static int on_packet(struct nl_msg *m, void *arg)
{
	struct netbuf *nb = arg;
	struct nfq *q = nb->priv;
	struct nlmsghdr *h = nlmsg_hdr(m);
	struct nfnl_queue_msg *msg = NULL;
	const void *payload;
	uint64_t id, len;
	int plen = 0;

	if (NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_QUEUE ||
	    NFNL_MSG_TYPE(h->nlmsg_type) != NFQNL_MSG_PACKET ||
	    nfnlmsg_queue_msg_parse(h, &msg) < 0)
		return NL_OK;
	id = ext_id(q, nfnl_queue_msg_get_packetid(msg));
	payload = nfnl_queue_msg_get_payload(msg, &plen);
	len = frame_len(payload, payload ? plen : 0);
	nfnl_queue_msg_put(msg);
	if (id <= q->verdicted) {
		/* Its epoch was released before we read its message: the
		 * batch verdict let it go already. */
		nb->st.frames_released++;
		nb->st.bytes_released += len;
		return NL_OK;
	}
	if (nb->passthrough) {
		if (verdict(q, id, NF_ACCEPT, false)) {
			nb->st.dropped++;
		} else {
			nb->st.frames_released++;
			nb->st.bytes_released += len;
		}
		return NL_OK;
	}
	if ((nb->st.bytes_held && nb->st.bytes_held + len > nb->max_bytes) ||
	    q->held_len == q->held_cap) {
		if (!q->warned_bound)
			log_warn("netbuf nfqueue: %s: more than %zu bytes "
				 "held; dropping (take epochs more often)",
				 nb->ifname, nb->max_bytes);
		q->warned_bound = true;
		verdict(q, id, NF_DROP, false);
		q->own_drops++;
		return NL_OK;
	}
	q->held[(q->held_head + q->held_len++) % q->held_cap] =
		(struct pkt){ .id = id, .len = len };
	nb->st.frames_held++;
	nb->st.bytes_held += len;
	nb_held_changed(nb);
	return NL_OK;
}

/* NL_CB_ERR: an error answer to a verdict (a batch verdict that found
 * nothing: its packets were dropped over the bound) is not a reason to
 * stop reading. */
static int on_error(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
	struct netbuf *nb = arg;

	if (e->error != -ENOENT)
		log_warn("netbuf nfqueue: %s: the kernel refused a verdict: "
			 "%s", nb->ifname, strerror(-e->error));
	return NL_SKIP;
}

/* Read up to `max` messages waiting on the socket (lock held); returns
 * false once it is empty. */
static bool drain_some(struct netbuf *nb, unsigned max)
{
	struct nfq *q = nb->priv;

	for (unsigned i = 0; i < max; i++) {
		int n = nl_recvmsgs_report(q->sk, q->cb);

		if (n == -NLE_NOMEM) { /* ENOBUFS: the kernel dropped some */
			if (!q->overruns++)
				log_warn("netbuf nfqueue: %s: queue %u overran "
					 "our socket: the kernel drops packets "
					 "(counted)", nb->ifname, q->qnum);
			continue;
		}
		if (n == -NLE_INTR)
			continue;
		if (n < 0 && n != -NLE_AGAIN)
			log_warn("netbuf nfqueue: reading queue %u: %s",
				 q->qnum, nl_geterror(n));
		if (n <= 0)
			return false;
	}
	return true;
}

static void drain(struct netbuf *nb)
{
	while (drain_some(nb, UINT_MAX))
		;
}

static void *rx_thread(void *arg)
{
	struct netbuf *nb = arg;
	struct nfq *q = nb->priv;
	struct pollfd p[2] = { { .fd = nl_socket_get_fd(q->sk),
				 .events = POLLIN },
			       { .fd = q->stop_fd, .events = POLLIN } };

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_err("netbuf nfqueue: poll: %s", strerror(errno));
			break;
		}
		if (p[1].revents)
			break;
		/* In slices: a seal must not wait behind a long backlog. */
		for (bool more = true; more;) {
			pthread_mutex_lock(&nb->lock);
			more = drain_some(nb, 64);
			pthread_mutex_unlock(&nb->lock);
			nb_lock_yield(nb);
		}
	}
	return NULL;
}

/* Bind the queue: cfg's number, or the first free one from a base that
 * depends on the TAP. */
static int bind_queue(struct netbuf *nb, unsigned ifindex)
{
	struct nfq *q = nb->priv;
	struct nfnl_queue *nq = nfnl_queue_alloc();
	unsigned first = nb->queue_num ? nb->queue_num
				       : QUEUE_BASE + ifindex % 1000 * 16;
	int tries = nb->queue_num ? 1 : QUEUE_TRIES, err = -NLE_BUSY;
	uint32_t maxlen;

	if (!nq)
		return -ENOMEM;
	/* Room in the kernel for a bound's worth of minimal packets. */
	maxlen = (uint32_t)q->held_cap;
	nfnl_queue_set_copy_mode(nq, NFNL_QUEUE_COPY_PACKET);
	nfnl_queue_set_copy_range(nq, COPY_RANGE);
	nfnl_queue_set_maxlen(nq, maxlen);
	for (int i = 0; i < tries && first + i <= 65535; i++) {
		q->qnum = first + (unsigned)i;
		nfnl_queue_set_group(nq, (uint16_t)q->qnum);
		err = nfnl_queue_create(q->sk, nq);
		if (err != -NLE_BUSY && err != -NLE_PERM)
			break;
	}
	nfnl_queue_put(nq);
	if (err) {
		log_err("netbuf nfqueue: binding queue %u%s: %s", q->qnum,
			nb->queue_num ? "" : " (and those before it)",
			err == -NLE_BUSY || err == -NLE_PERM
				? "bound by another process"
				: nl_geterror(err));
		return -EBUSY;
	}
	q->bound = true;
	return 0;
}

static void nfq_free(struct netbuf *nb)
{
	struct nfq *q = nb->priv;

	if (q->thread_started) {
		if (write(q->stop_fd, &(uint64_t){ 1 }, 8) != 8)
			log_warn("netbuf nfqueue: stopping the receiver: %s",
				 strerror(errno));
		pthread_join(q->thread, NULL);
	}
	if (q->stop_fd >= 0)
		close(q->stop_fd);
	if (q->bound) {
		struct nfnl_queue *nq = nfnl_queue_alloc();

		if (nq) { /* closing the socket unbinds it anyway */
			nfnl_queue_set_group(nq, (uint16_t)q->qnum);
			nfnl_queue_delete(q->sk, nq);
			nfnl_queue_put(nq);
		}
	}
	if (q->cb)
		nl_cb_put(q->cb);
	if (q->sk)
		nl_socket_free(q->sk);
	nb_epochs_free(&q->epochs);
	free(q->held);
	free(q);
	nb->priv = NULL;
}

static int nfq_open(struct netbuf *nb)
{
	struct nfq *q = calloc(1, sizeof(*q));
	unsigned ifindex;
	int err, size = RCVBUF;

	if (!q)
		return -ENOMEM;
	q->stop_fd = -1;
	nb->priv = q;
	snprintf(q->tag, sizeof(q->tag), TAG_PREFIX "%s", nb->ifname);
	if (!find_prog(fam_prog[FAM_V4], q->prog[FAM_V4],
		       sizeof(q->prog[0]))) {
		log_err("netbuf nfqueue: iptables is not installed (not in "
			"$PATH, /usr/sbin or /sbin): apt-get install "
			"iptables");
		err = -ENOENT;
		goto fail;
	}
	if (!find_prog(fam_prog[FAM_V6], q->prog[FAM_V6], sizeof(q->prog[0])))
		log_warn("netbuf nfqueue: ip6tables is not installed: the "
			 "guest's IPv6 output is not held");
	ifindex = if_nametoindex(nb->ifname);
	if (!ifindex) {
		log_err("netbuf nfqueue: no interface %s", nb->ifname);
		err = -ENODEV;
		goto fail;
	}
	err = bridge_port(nb->ifname, &q->bridged);
	if (err)
		goto fail;
	if (q->bridged) {
		err = bridge_nf(q, nb->ifname);
		if (err)
			goto fail;
	}

	err = -ENOMEM;
	q->sk = nl_socket_alloc();
	q->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!q->sk || q->stop_fd < 0)
		goto fail;
	err = nl_connect(q->sk, NETLINK_NETFILTER);
	if (err) {
		log_err("netbuf nfqueue: netfilter netlink socket: %s",
			nl_geterror(err));
		err = -EIO;
		goto fail;
	}
	/* Packet messages carry sequence number 0. */
	nl_socket_disable_seq_check(q->sk);
	nl_socket_modify_cb(q->sk, NL_CB_VALID, NL_CB_CUSTOM, on_packet, nb);
	q->cb = nl_socket_get_cb(q->sk);
	if (setsockopt(nl_socket_get_fd(q->sk), SOL_SOCKET, SO_RCVBUFFORCE,
		       &size, sizeof(size)) < 0)
		nl_socket_set_buffer_size(q->sk, RCVBUF, 0);
	/* Bind with an acknowledgement (errors come back), then no more
	 * acknowledgements: verdicts must not wait for them. */
	/* The kernel queue's maxlen: a bound's worth of 60-byte packets. */
	q->held_cap = nb->max_bytes / 60 + 64;
	if (q->held_cap > HELD_MAX)
		q->held_cap = HELD_MAX;
	q->held = calloc(q->held_cap, sizeof(*q->held));
	if (!q->held) {
		err = -ENOMEM;
		goto fail;
	}
	err = bind_queue(nb, ifindex);
	if (err)
		goto fail;
	nl_socket_disable_auto_ack(q->sk);
	nl_socket_set_nonblocking(q->sk);
	nl_socket_modify_err_cb(q->sk, NL_CB_CUSTOM, on_error, nb);
	read_queue(q->qnum, &q->kernel_drops, NULL);

	err = add_rules(nb);
	if (err)
		goto fail;
	err = -pthread_create(&q->thread, NULL, rx_thread, nb);
	if (err) {
		log_err("netbuf nfqueue: receiver thread: %s", strerror(-err));
		remove_rules(nb);
		goto fail;
	}
	q->thread_started = true;
	log_info("netbuf nfqueue: %s%s -> queue %u", nb->ifname,
		 q->bridged ? " (bridge port)" : "", q->qnum);
	return 0;
fail:
	nfq_free(nb);
	return err;
}

/* The id of the last packet queued so far (lock held).  The kernel's
 * counter, so that a seal need not read the messages: the paused guest's
 * packets were queued while it sent them (the TAP's receive path runs in
 * the sender's write), so every one of them has an id up to this. */
static uint64_t last_queued(struct netbuf *nb)
{
	struct nfq *q = nb->priv;
	uint32_t seq;

	if (read_queue(q->qnum, NULL, &seq))
		return ext_id(q, seq);
	drain(nb);
	return q->last_id;
}

/* Give every packet with an id <= mark the verdict ACCEPT (or DROP), and
 * count the held ones (lock held). */
static int verdict_upto(struct netbuf *nb, uint64_t mark, bool drop)
{
	struct nfq *q = nb->priv;
	int err = 0;

	if (mark > q->verdicted) {
		err = verdict(q, mark, drop ? NF_DROP : NF_ACCEPT, true);
		q->verdicted = mark;
	}
	while (q->held_len && q->held[q->held_head].id <= mark) {
		const struct pkt *p = &q->held[q->held_head];

		if (drop) {
			nb->st.discarded++;
		} else if (err) {
			nb->st.dropped++;
		} else {
			nb->st.frames_released++;
			nb->st.bytes_released += p->len;
		}
		nb->st.frames_held--;
		nb->st.bytes_held -= p->len;
		q->held_head = (q->held_head + 1) % q->held_cap;
		q->held_len--;
	}
	nb_held_changed(nb);
	return err;
}

static int nfq_seal(struct netbuf *nb, uint64_t epoch)
{
	struct nfq *q = nb->priv;
	struct nb_epoch e = { .epoch = epoch };
	int err;

	nb_lock(nb);
	e.mark = last_queued(nb);
	err = nb_epochs_push(&q->epochs, &e);
	if (!err) {
		nb->passthrough = false;
		err = nb_epochs_check(&q->epochs, "nfqueue");
	}
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int nfq_release(struct netbuf *nb, uint64_t epoch)
{
	struct nfq *q = nb->priv;
	struct nb_epoch sum;
	int err = 0;

	nb_lock(nb);
	if (nb_epochs_pop(&q->epochs, epoch, &sum))
		err = verdict_upto(nb, sum.mark, false);
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int nfq_release_all(struct netbuf *nb)
{
	struct nfq *q = nb->priv;
	struct nb_epoch sum;
	int err;

	nb_lock(nb);
	nb_epochs_pop(&q->epochs, UINT64_MAX, &sum);
	err = verdict_upto(nb, last_queued(nb), false);
	nb->passthrough = true;
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static void nfq_stats(struct netbuf *nb)
{
	struct nfq *q = nb->priv;
	uint64_t k;

	/* Counters of a queue number start again when it is bound. */
	if (read_queue(q->qnum, &k, NULL)) {
		if (k >= q->kernel_drops)
			nb->st.dropped += k - q->kernel_drops;
		q->kernel_drops = k;
	}
	nb->st.dropped += q->own_drops;
	q->own_drops = 0;
}

static void nfq_close(struct netbuf *nb, bool release)
{
	struct nfq *q = nb->priv;
	bool paused = nb->ops && nb->ops->pause && nb->d &&
		      nb->ops->pause(nb->d) == 0;
	struct nb_epoch sum;
	uint64_t mark;

	/* No new packets into the queue, then a verdict for all in it. */
	remove_rules(nb);
	nb_lock(nb);
	drain(nb);
	nb_epochs_pop(&q->epochs, UINT64_MAX, &sum);
	mark = last_queued(nb);
	verdict_upto(nb, mark > q->last_id ? mark : q->last_id, !release);
	nfq_stats(nb);
	pthread_mutex_unlock(&nb->lock);
	if (paused)
		nb->ops->unpause(nb->d);
	nfq_free(nb);
}

static bool nfq_available(char *why, size_t len)
{
	char path[PATH_MAX];

	if (!find_prog("iptables", path, sizeof(path))) {
		snprintf(why, len, "iptables is not installed");
		return false;
	}
	/* nfnetlink_queue loads itself when a queue is bound. */
	return true;
}

const struct nb_backend nb_nfqueue = {
	.open = nfq_open,
	.seal = nfq_seal,
	.release = nfq_release,
	.release_all = nfq_release_all,
	.stats = nfq_stats,
	.close = nfq_close,
	.available = nfq_available,
};
