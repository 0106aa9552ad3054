// SPDX-License-Identifier: MIT
/*
 * netbuf_plug.c - the sch_plug backend, as Xen's Remus does it: the TAP's
 * ingress (what the guest sends) is redirected to an IFB device whose
 * root qdisc is a plug; each seal inserts a barrier (TCQ_PLUG_BUFFER),
 * each release lets the packets before the oldest barrier go
 * (TCQ_PLUG_RELEASE_ONE), release_all and close unplug it
 * (TCQ_PLUG_RELEASE_INDEFINITE).  All through libnl-route.
 *
 *   TAP ingress qdisc --u32 match-all, mirred redirect--> ftnb<ifindex>
 *   (IFB, up) root qdisc plug 1: limit max_bytes
 *
 * sch_plug counts one sealed epoch only (a second BUFFER before the
 * RELEASE_ONE would merge the two counts and could release the younger
 * epoch's packets early).  So one barrier is in the kernel at a time: an
 * epoch sealed while the previous one is unreleased is merged into the
 * next barrier, and its packets wait for the next seal and release
 * (later, never earlier).  The kernel drops what passes max_bytes (the
 * qdisc's drops are `dropped`); a monitor thread reads the qdisc's
 * backlog every 10 ms for the event fd.
 *
 * A crashed VMM leaves only an idle IFB: its TAP, and with it the
 * ingress redirect, is gone.  netbuf_open deletes a stale IFB of the same
 * name.  Whether the kernel has sch_plug is probed on lo of a throwaway
 * network namespace (a thread that unshares its own).
 */
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/tc_act/tc_mirred.h>
#include <netlink/netlink.h>
#include <netlink/route/act/mirred.h>
#include <netlink/route/classifier.h>
#include <netlink/route/cls/u32.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/plug.h>
#include <netlink/route/tc.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "netbuf_priv.h"

#define PLUG_HANDLE TC_HANDLE(1, 0)
#define INGRESS_HANDLE TC_HANDLE(0xffff, 0)
#define MONITOR_MS 10
#define DRAIN_WAIT_MS 200 /* close(release): let the IFB empty */

struct plug {
	struct nl_sock *sk;	 /* lock */
	int tap, ifb;		 /* ifindexes */
	char ifb_name[IF_NAMESIZE];
	bool ifb_made, ingress_made;
	bool barrier;		 /* lock: a BUFFER not yet released */
	uint64_t barrier_epoch;	 /* lock */
	uint64_t merged;	 /* lock: epochs merged into a later barrier */
	int stop_fd;
	pthread_t monitor;
	bool monitor_started;
};

struct qstats {
	uint64_t qlen, backlog, drops, packets, bytes;
};

/* ---- libnl helpers ------------------------------------------------------ */

static struct rtnl_qdisc *plug_qdisc(int ifindex)
{
	struct rtnl_qdisc *q = rtnl_qdisc_alloc();

	if (!q)
		return NULL;
	rtnl_tc_set_ifindex(TC_CAST(q), ifindex);
	rtnl_tc_set_parent(TC_CAST(q), TC_H_ROOT);
	rtnl_tc_set_handle(TC_CAST(q), PLUG_HANDLE);
	if (rtnl_tc_set_kind(TC_CAST(q), "plug") < 0) {
		rtnl_qdisc_put(q);
		return NULL;
	}
	return q;
}

/* Add a plug qdisc of `limit` bytes at the root of `ifindex`. */
static int plug_add(struct nl_sock *sk, int ifindex, int limit)
{
	struct rtnl_qdisc *q = plug_qdisc(ifindex);
	int err;

	if (!q)
		return -NLE_NOMEM;
	rtnl_qdisc_plug_set_limit(q, limit);
	err = rtnl_qdisc_add(sk, q, NLM_F_CREATE | NLM_F_EXCL);
	rtnl_qdisc_put(q);
	return err;
}

/* One plug action: a change of the existing qdisc. */
static int plug_op(struct netbuf *nb, int (*op)(struct rtnl_qdisc *),
		   const char *what)
{
	struct plug *p = nb->priv;
	struct rtnl_qdisc *q = plug_qdisc(p->ifb);
	int err = -NLE_NOMEM;

	if (q) {
		op(q);
		err = rtnl_qdisc_add(p->sk, q, 0);
		rtnl_qdisc_put(q);
	}
	if (err < 0) {
		log_err("netbuf plug: %s on %s: %s", what, p->ifb_name,
			nl_geterror(err));
		return -EIO;
	}
	return 0;
}

static int read_qdisc(struct nl_sock *sk, int ifindex, struct qstats *s)
{
	struct nl_cache *cache = NULL;
	struct rtnl_qdisc *q;
	int err = rtnl_qdisc_alloc_cache(sk, &cache);

	if (err < 0)
		return err;
	q = rtnl_qdisc_get(cache, ifindex, PLUG_HANDLE);
	if (q) {
		s->qlen = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_QLEN);
		s->backlog = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_BACKLOG);
		s->drops = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_DROPS);
		s->packets = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_PACKETS);
		s->bytes = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_BYTES);
		rtnl_qdisc_put(q);
	} else {
		err = -NLE_OBJ_NOTFOUND;
	}
	nl_cache_free(cache);
	return err;
}

/* Copy the qdisc's counters into nb->st (lock held). */
static void apply_stats(struct netbuf *nb, const struct qstats *s)
{
	nb->st.frames_held = s->qlen;
	nb->st.bytes_held = s->backlog;
	nb->st.dropped = s->drops;
	nb->st.frames_released = s->packets;
	nb->st.bytes_released = s->bytes;
	nb_held_changed(nb);
}

static struct nl_sock *route_socket(void)
{
	struct nl_sock *sk = nl_socket_alloc();

	if (sk && nl_connect(sk, NETLINK_ROUTE)) {
		nl_socket_free(sk);
		sk = NULL;
	}
	return sk;
}

/* ---- detection ---------------------------------------------------------- */

struct probe {
	bool ok;
	char why[256];
};

/* In a network namespace of its own (this thread's only), add a plug to
 * lo; the namespace, and the qdisc, go away with the thread. */
static void *probe_thread(void *arg)
{
	struct probe *pr = arg;
	struct nl_sock *sk;
	int err;

	if (unshare(CLONE_NEWNET) < 0) {
		snprintf(pr->why, sizeof(pr->why),
			 "cannot probe for sch_plug: unshare(CLONE_NEWNET): "
			 "%s", strerror(errno));
		return NULL;
	}
	sk = route_socket();
	if (!sk) {
		snprintf(pr->why, sizeof(pr->why),
			 "cannot probe for sch_plug: no netlink socket");
		return NULL;
	}
	err = plug_add(sk, 1 /* lo */, 1 << 20);
	if (!err)
		pr->ok = true;
	else if (err == -NLE_OBJ_NOTFOUND || err == -NLE_OPNOTSUPP)
		snprintf(pr->why, sizeof(pr->why),
			 "this kernel has no sch_plug qdisc (adding one: %s)",
			 nl_geterror(err));
	else
		snprintf(pr->why, sizeof(pr->why),
			 "cannot probe for sch_plug: adding one to lo: %s",
			 nl_geterror(err));
	nl_socket_free(sk);
	return NULL;
}

static bool plug_available(char *why, size_t len)
{
	struct probe pr = { 0 };
	pthread_t t;
	int err = pthread_create(&t, NULL, probe_thread, &pr);

	if (err) {
		snprintf(why, len, "cannot probe for sch_plug: thread: %s",
			 strerror(err));
		return false;
	}
	pthread_join(t, NULL);
	if (!pr.ok)
		snprintf(why, len, "%s", pr.why);
	return pr.ok;
}

/* ---- setup and teardown ------------------------------------------------- */

static int make_ifb(struct netbuf *nb)
{
	struct plug *p = nb->priv;
	struct rtnl_link *link = rtnl_link_alloc(), *old = NULL;
	int err;

	if (!link)
		return -NLE_NOMEM;
	if (!rtnl_link_get_kernel(p->sk, 0, p->ifb_name, &old)) {
		log_warn("netbuf plug: deleting stale %s (a VMM died without "
			 "closing)", p->ifb_name);
		rtnl_link_delete(p->sk, old);
		rtnl_link_put(old);
	}
	rtnl_link_set_name(link, p->ifb_name);
	err = rtnl_link_set_type(link, "ifb");
	if (!err) {
		rtnl_link_set_flags(link, IFF_UP);
		err = rtnl_link_add(p->sk, link, NLM_F_CREATE | NLM_F_EXCL);
	}
	rtnl_link_put(link);
	if (err)
		return err;
	p->ifb_made = true;
	p->ifb = (int)if_nametoindex(p->ifb_name);
	return p->ifb ? 0 : -NLE_OBJ_NOTFOUND;
}

static int redirect_ingress(struct netbuf *nb)
{
	struct plug *p = nb->priv;
	struct rtnl_qdisc *ing = rtnl_qdisc_alloc();
	struct rtnl_cls *cls = NULL;
	struct rtnl_act *act = NULL;
	int err = -NLE_NOMEM;

	if (!ing)
		return err;
	rtnl_tc_set_ifindex(TC_CAST(ing), p->tap);
	rtnl_tc_set_parent(TC_CAST(ing), TC_H_INGRESS);
	rtnl_tc_set_handle(TC_CAST(ing), INGRESS_HANDLE);
	err = rtnl_tc_set_kind(TC_CAST(ing), "ingress");
	if (!err)
		err = rtnl_qdisc_add(p->sk, ing, NLM_F_CREATE | NLM_F_EXCL);
	rtnl_qdisc_put(ing);
	if (err)
		return err;
	p->ingress_made = true;

	err = -NLE_NOMEM;
	cls = rtnl_cls_alloc();
	act = rtnl_act_alloc();
	if (!cls || !act)
		goto out;
	rtnl_tc_set_ifindex(TC_CAST(cls), p->tap);
	rtnl_tc_set_parent(TC_CAST(cls), INGRESS_HANDLE);
	rtnl_cls_set_prio(cls, 1);
	rtnl_cls_set_protocol(cls, ETH_P_ALL);
	err = rtnl_tc_set_kind(TC_CAST(cls), "u32");
	if (err)
		goto out;
	/* Match everything; terminal: only then does u32 run actions. */
	rtnl_u32_add_key_uint32(cls, 0, 0, 0, 0);
	rtnl_u32_set_cls_terminal(cls);
	err = rtnl_tc_set_kind(TC_CAST(act), "mirred");
	if (err)
		goto out;
	rtnl_mirred_set_action(act, TCA_EGRESS_REDIR);
	rtnl_mirred_set_policy(act, TC_ACT_STOLEN);
	rtnl_mirred_set_ifindex(act, (uint32_t)p->ifb);
	err = rtnl_u32_add_action(cls, act);
	if (!err)
		err = rtnl_cls_add(p->sk, cls, NLM_F_CREATE | NLM_F_EXCL);
out:
	if (act)
		rtnl_act_put(act);
	if (cls)
		rtnl_cls_put(cls);
	return err;
}

static void *monitor_thread(void *arg)
{
	struct netbuf *nb = arg;
	struct plug *p = nb->priv;
	struct nl_sock *sk = route_socket();
	struct pollfd pfd = { .fd = p->stop_fd, .events = POLLIN };
	struct qstats s;

	if (!sk) {
		log_warn("netbuf plug: no monitor socket: the event fd stays "
			 "quiet");
		return NULL;
	}
	for (;;) {
		int r = poll(&pfd, 1, MONITOR_MS);

		if (r > 0 || (r < 0 && errno != EINTR))
			break;
		if (read_qdisc(sk, p->ifb, &s))
			continue;
		pthread_mutex_lock(&nb->lock);
		apply_stats(nb, &s);
		pthread_mutex_unlock(&nb->lock);
	}
	nl_socket_free(sk);
	return NULL;
}

static void teardown(struct netbuf *nb)
{
	struct plug *p = nb->priv;

	if (p->monitor_started) {
		if (write(p->stop_fd, &(uint64_t){ 1 }, 8) != 8)
			log_warn("netbuf plug: stopping the monitor: %s",
				 strerror(errno));
		pthread_join(p->monitor, NULL);
	}
	if (p->stop_fd >= 0)
		close(p->stop_fd);
	if (p->ingress_made) { /* takes the redirect with it */
		struct rtnl_qdisc *ing = rtnl_qdisc_alloc();

		if (ing) {
			rtnl_tc_set_ifindex(TC_CAST(ing), p->tap);
			rtnl_tc_set_parent(TC_CAST(ing), TC_H_INGRESS);
			rtnl_tc_set_handle(TC_CAST(ing), INGRESS_HANDLE);
			rtnl_tc_set_kind(TC_CAST(ing), "ingress");
			if (rtnl_qdisc_delete(p->sk, ing) < 0)
				log_warn("netbuf plug: cannot remove the "
					 "ingress redirect of %s", nb->ifname);
			rtnl_qdisc_put(ing);
		}
	}
	if (p->ifb_made) { /* takes the plug and what it holds with it */
		struct rtnl_link *link = rtnl_link_alloc();

		if (link) {
			rtnl_link_set_name(link, p->ifb_name);
			if (rtnl_link_delete(p->sk, link) < 0)
				log_warn("netbuf plug: cannot delete %s",
					 p->ifb_name);
			rtnl_link_put(link);
		}
	}
	if (p->sk)
		nl_socket_free(p->sk);
	free(p);
	nb->priv = NULL;
}

static int plug_open(struct netbuf *nb)
{
	struct plug *p;
	char why[256];
	const char *what;
	int err;

	if (!plug_available(why, sizeof(why))) {
		log_err("netbuf plug: %s", why);
		return -EOPNOTSUPP;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	nb->priv = p;
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	p->tap = (int)if_nametoindex(nb->ifname);
	if (!p->tap) {
		log_err("netbuf plug: no interface %s", nb->ifname);
		teardown(nb);
		return -ENODEV;
	}
	snprintf(p->ifb_name, sizeof(p->ifb_name), "ftnb%d", p->tap);
	what = "netlink socket";
	p->sk = route_socket();
	err = p->sk && p->stop_fd >= 0 ? 0 : -NLE_NOMEM;
	if (!err) {
		what = "creating the IFB device";
		err = make_ifb(nb);
	}
	if (!err) {
		/* sch_plug starts plugged: it holds from the first packet. */
		what = "adding the plug qdisc";
		err = plug_add(p->sk, p->ifb, (int)nb->max_bytes);
	}
	if (!err) {
		what = "redirecting the TAP's ingress";
		err = redirect_ingress(nb);
	}
	if (err) {
		log_err("netbuf plug: %s for %s: %s", what, nb->ifname,
			nl_geterror(err));
		teardown(nb);
		return -EIO;
	}
	err = -pthread_create(&p->monitor, NULL, monitor_thread, nb);
	if (err) {
		log_err("netbuf plug: monitor thread: %s", strerror(-err));
		teardown(nb);
		return err;
	}
	p->monitor_started = true;
	log_info("netbuf plug: %s -> %s (plug, %zu bytes)", nb->ifname,
		 p->ifb_name, nb->max_bytes);
	return 0;
}

static int plug_seal(struct netbuf *nb, uint64_t epoch)
{
	struct plug *p = nb->priv;
	int err = 0;

	pthread_mutex_lock(&nb->lock);
	if (!p->barrier) {
		err = plug_op(nb, rtnl_qdisc_plug_buffer, "barrier (buffer)");
		if (!err) {
			p->barrier = true;
			p->barrier_epoch = epoch;
		}
	} else {
		/* Held until the barrier after it is released. */
		if (!p->merged++)
			log_info("netbuf plug: epoch %llu sealed before epoch "
				 "%llu was released: it waits for the next "
				 "barrier", (unsigned long long)epoch,
				 (unsigned long long)p->barrier_epoch);
	}
	if (!err)
		nb->passthrough = false;
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int plug_release(struct netbuf *nb, uint64_t epoch)
{
	struct plug *p = nb->priv;
	int err = 0;

	pthread_mutex_lock(&nb->lock);
	if (p->barrier && p->barrier_epoch <= epoch) {
		err = plug_op(nb, rtnl_qdisc_plug_release_one, "release one");
		if (!err)
			p->barrier = false;
	}
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static int plug_release_all(struct netbuf *nb)
{
	struct plug *p = nb->priv;
	int err;

	pthread_mutex_lock(&nb->lock);
	err = plug_op(nb, rtnl_qdisc_plug_release_indefinite,
		      "release indefinitely");
	if (!err) {
		p->barrier = false;
		nb->passthrough = true;
	}
	pthread_mutex_unlock(&nb->lock);
	return err;
}

static void plug_stats(struct netbuf *nb)
{
	struct plug *p = nb->priv;
	struct qstats s;

	if (!read_qdisc(p->sk, p->ifb, &s))
		apply_stats(nb, &s);
}

static void plug_close(struct netbuf *nb, bool release)
{
	struct plug *p = nb->priv;
	bool paused = nb->ops && nb->ops->pause && nb->d &&
		      nb->ops->pause(nb->d) == 0;
	struct qstats s = { 0 };

	pthread_mutex_lock(&nb->lock);
	if (release &&
	    !plug_op(nb, rtnl_qdisc_plug_release_indefinite, "release")) {
		for (int i = 0; i < DRAIN_WAIT_MS; i++) {
			if (read_qdisc(p->sk, p->ifb, &s) || !s.qlen)
				break;
			usleep(1000);
		}
	}
	plug_stats(nb);
	if (!release)
		nb->st.discarded += nb->st.frames_held;
	pthread_mutex_unlock(&nb->lock);
	teardown(nb);
	if (paused)
		nb->ops->unpause(nb->d);
}

const struct nb_backend nb_plug = {
	.open = plug_open,
	.seal = plug_seal,
	.release = plug_release,
	.release_all = plug_release_all,
	.stats = plug_stats,
	.close = plug_close,
	.available = plug_available,
};
