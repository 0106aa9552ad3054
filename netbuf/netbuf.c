// SPDX-License-Identifier: MIT
/*
 * netbuf.c - output commit, the generic part: backend names, argument
 * checks, the epoch order every backend obeys, the event fd, statistics.
 * The backends are operation tables (netbuf_priv.h): netbuf_inproc.c,
 * netbuf_nfq.c, netbuf_plug.c.  docs/networking.md, "netbuf: output
 * commit", describes them.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "netbuf_priv.h"

static const char *const names[] = {
	[NETBUF_INPROC] = "in-process",
	[NETBUF_NFQUEUE] = "nfqueue",
	[NETBUF_PLUG] = "plug",
};

static const struct nb_backend *const backends[] = {
	[NETBUF_INPROC] = &nb_inproc,
	[NETBUF_NFQUEUE] = &nb_nfqueue,
	[NETBUF_PLUG] = &nb_plug,
};

const char *netbuf_backend_name(enum netbuf_backend b)
{
	return (unsigned)b < sizeof(names) / sizeof(names[0]) ? names[b] : "?";
}

int netbuf_backend_parse(const char *s, enum netbuf_backend *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (s && !strcmp(s, names[i])) {
			*out = (enum netbuf_backend)i;
			return 0;
		}
	}
	return -EINVAL;
}

bool netbuf_available(enum netbuf_backend b, char *why, size_t len)
{
	if ((unsigned)b >= sizeof(backends) / sizeof(backends[0])) {
		snprintf(why, len, "no netbuf backend %d", (int)b);
		return false;
	}
	if (len)
		why[0] = '\0';
	return backends[b]->available(why, len);
}

/* ---- epochs ------------------------------------------------------------- */

int nb_epochs_push(struct nb_epochs *q, const struct nb_epoch *e)
{
	if (q->len == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 16, i;
		struct nb_epoch *v = malloc(cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		for (i = 0; i < q->len; i++)
			v[i] = q->v[(q->head + i) % q->cap];
		free(q->v);
		q->v = v;
		q->cap = cap;
		q->head = 0;
	}
	q->v[(q->head + q->len) % q->cap] = *e;
	q->len++;
	return 0;
}

size_t nb_epochs_pop(struct nb_epochs *q, uint64_t epoch,
		     struct nb_epoch *sum)
{
	size_t n = 0;

	memset(sum, 0, sizeof(*sum));
	while (q->len && q->v[q->head].epoch <= epoch) {
		const struct nb_epoch *e = &q->v[q->head];

		sum->epoch = e->epoch;
		sum->mark = e->mark;
		sum->frames += e->frames;
		sum->bytes += e->bytes;
		q->head = (q->head + 1) % q->cap;
		q->len--;
		n++;
	}
	return n;
}

void nb_epochs_free(struct nb_epochs *q)
{
	free(q->v);
	memset(q, 0, sizeof(*q));
}

int nb_epochs_check(const struct nb_epochs *q, const char *who)
{
	for (size_t i = 1; i < q->len; i++) {
		const struct nb_epoch *a = &q->v[(q->head + i - 1) % q->cap];
		const struct nb_epoch *b = &q->v[(q->head + i) % q->cap];

		if (b->epoch <= a->epoch || b->mark < a->mark) {
			log_err("netbuf %s: invariant: sealed epoch %llu (mark "
				"%llu) follows epoch %llu (mark %llu)",
				who, (unsigned long long)b->epoch,
				(unsigned long long)b->mark,
				(unsigned long long)a->epoch,
				(unsigned long long)a->mark);
			return -EINVAL;
		}
	}
	return 0;
}

void nb_lock(struct netbuf *nb)
{
	__atomic_add_fetch(&nb->waiters, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&nb->lock);
	__atomic_sub_fetch(&nb->waiters, 1, __ATOMIC_SEQ_CST);
}

void nb_lock_yield(struct netbuf *nb)
{
	while (__atomic_load_n(&nb->waiters, __ATOMIC_SEQ_CST))
		sched_yield();
}

void nb_held_changed(struct netbuf *nb)
{
	if (nb->st.bytes_held > nb->st.max_bytes_held)
		nb->st.max_bytes_held = nb->st.bytes_held;
	if (nb->st.bytes_held > nb->max_bytes / 2) {
		if (!nb->event_sent &&
		    write(nb->event_fd, &(uint64_t){ 1 }, 8) == 8)
			nb->event_sent = true;
	} else {
		nb->event_sent = false;
	}
}

/* ---- the API ------------------------------------------------------------ */

int netbuf_open(const struct netbuf_cfg *cfg, const struct hv_ops *ops,
		struct hv_domain *d, struct netbuf **out)
{
	struct netbuf *nb;
	size_t max = cfg->max_bytes ? cfg->max_bytes : NETBUF_DEFAULT_BYTES;
	const char *env;
	int err;

	if ((unsigned)cfg->backend >= sizeof(backends) / sizeof(backends[0])) {
		log_err("netbuf: no backend %d", (int)cfg->backend);
		return -EINVAL;
	}
	if (max < NB_MIN_BYTES || max > NB_MAX_BYTES) {
		log_err("netbuf: a bound of %zu bytes is out of range (%u.."
			"%u)", max, NB_MIN_BYTES, NB_MAX_BYTES);
		return -EINVAL;
	}
	if (cfg->backend != NETBUF_INPROC &&
	    (!cfg->ifname || !cfg->ifname[0] ||
	     strlen(cfg->ifname) >= IF_NAMESIZE ||
	     strspn(cfg->ifname, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
				 "OPQRSTUVWXYZ0123456789_.-") !=
		     strlen(cfg->ifname))) {
		log_err("netbuf %s: needs the TAP's interface name, not '%s'",
			names[cfg->backend], cfg->ifname ? cfg->ifname : "");
		return -EINVAL;
	}
	if (cfg->backend == NETBUF_INPROC && (!ops || !d)) {
		log_err("netbuf in-process: needs the domain");
		return -EINVAL;
	}
	nb = calloc(1, sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	nb->be = backends[cfg->backend];
	nb->kind = cfg->backend;
	nb->max_bytes = max;
	if (cfg->ifname)
		snprintf(nb->ifname, sizeof(nb->ifname), "%s", cfg->ifname);
	nb->queue_num = cfg->queue_num;
	nb->ops = ops;
	nb->d = d;
	env = getenv("FT_NETBUF_CHECK");
	nb->check = env && *env && strcmp(env, "0");
	pthread_mutex_init(&nb->lock, NULL);
	nb->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (nb->event_fd < 0) {
		err = -errno;
		log_err("netbuf: eventfd: %s", strerror(errno));
		goto free_nb;
	}
	err = nb->be->open(nb);
	if (err)
		goto close_fd;
	log_info("netbuf: holding output (%s%s%s, bound %zu bytes)",
		 names[cfg->backend], nb->ifname[0] ? " on " : "", nb->ifname,
		 max);
	*out = nb;
	return 0;
close_fd:
	close(nb->event_fd);
free_nb:
	pthread_mutex_destroy(&nb->lock);
	free(nb);
	return err;
}

int netbuf_seal(struct netbuf *nb, uint64_t epoch)
{
	int err;

	if (nb->sealed_any && epoch <= nb->last_sealed) {
		log_err("netbuf: seal of epoch %llu after epoch %llu: epochs "
			"must increase", (unsigned long long)epoch,
			(unsigned long long)nb->last_sealed);
		return -EINVAL;
	}
	err = nb->be->seal(nb, epoch);
	if (err)
		return err;
	nb->sealed_any = true;
	nb->last_sealed = epoch;
	return 0;
}

int netbuf_release(struct netbuf *nb, uint64_t epoch)
{
	return nb->be->release(nb, epoch);
}

int netbuf_release_all(struct netbuf *nb)
{
	return nb->be->release_all(nb);
}

int netbuf_event_fd(struct netbuf *nb)
{
	return nb->event_fd;
}

void netbuf_get_stats(struct netbuf *nb, struct netbuf_stats *st)
{
	nb_lock(nb);
	if (nb->be->stats)
		nb->be->stats(nb);
	*st = nb->st;
	pthread_mutex_unlock(&nb->lock);
}

void netbuf_close(struct netbuf *nb, bool release)
{
	struct netbuf_stats st;

	if (!nb)
		return;
	nb->be->close(nb, release);
	st = nb->st;
	log_info("netbuf: closed (%s): %llu frames released, %llu dropped, "
		 "%llu discarded, %llu stalls, high-water %llu bytes",
		 names[nb->kind], (unsigned long long)st.frames_released,
		 (unsigned long long)st.dropped,
		 (unsigned long long)st.discarded,
		 (unsigned long long)st.stalls,
		 (unsigned long long)st.max_bytes_held);
	close(nb->event_fd);
	pthread_mutex_destroy(&nb->lock);
	free(nb);
}
