// SPDX-License-Identifier: MIT
/*
 * kvm_net.c - the NIC: a TAP device, batch send/receive hypercalls, and its
 * saved state.
 *
 * The TAP is created through /dev/net/tun (the only way the kernel offers)
 * and then configured with libnl-route: brought up, optionally enslaved to
 * a bridge and given a host-side address.  It is not persistent: it goes
 * away with the VMM.
 *
 * Received frames are read from the TAP on demand (FT_HC_NET_RECV).  A
 * small queue in the VMM holds frames that were taken off the TAP but not
 * yet given to the guest: the frames drained at save time, which are part
 * of the device state so that a restored VM receives them.
 *
 * Output hook (hv_ops net_tx_hook, for netbuf/): while one is installed,
 * the frames of a send hypercall go to it instead of the TAP; it may
 * refuse one for lack of room, and the call then ends there with
 * FT_EAGAIN and `done` = the frames taken (docs/guest-abi.md, section 8).
 * The hook runs on the vCPU thread inside the hypercall, under hook_lock:
 * installing or removing it takes the lock, so it waits for a call in
 * progress, and a paused domain (its vCPU thread parked, which happens
 * only between hypercalls) is never inside one.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

/* ---- configuration ---------------------------------------------------- */

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	char end;

	if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &end) != 6)
		return -EINVAL;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)v[i];
	if (mac[0] & 1) /* multicast bit: not a station address */
		return -EINVAL;
	return 0;
}

/* "A.B.C.D" or "A.B.C.D/N" (prefix optional if `prefix` is NULL). */
static int parse_ip(const char *s, uint32_t *ip, uint8_t *prefix)
{
	char buf[32], *slash, *end;
	struct in_addr a;
	long n;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	slash = strchr(buf, '/');
	if (slash) {
		if (!prefix)
			return -EINVAL;
		*slash++ = '\0';
		n = strtol(slash, &end, 10);
		if (*slash == '\0' || *end || n < 1 || n > 32)
			return -EINVAL;
		*prefix = (uint8_t)n;
	} else if (prefix) {
		*prefix = 24;
	}
	if (inet_pton(AF_INET, buf, &a) != 1)
		return -EINVAL;
	*ip = a.s_addr;
	return 0;
}

static int copy_ifname(char dst[KVM_IFNAMSIZ], const char *v)
{
	size_t n = strlen(v);

	if (!n || n >= KVM_IFNAMSIZ || strpbrk(v, "/ \t"))
		return -EINVAL;
	memcpy(dst, v, n + 1);
	return 0;
}

int kvm_net_parse(const char *spec, struct kvm_net_cfg *net)
{
	char *dup = strdup(spec), *save = NULL, *item;
	bool have_mac = false;
	uint8_t prefix;
	int err = 0;

	if (!dup)
		return -ENOMEM;
	memset(net, 0, sizeof(*net));
	for (item = strtok_r(dup, ",", &save); item && !err;
	     item = strtok_r(NULL, ",", &save)) {
		char *v = strchr(item, '=');

		if (!v) {
			err = -EINVAL;
			break;
		}
		*v++ = '\0';
		if (!strcmp(item, "tap")) {
			err = copy_ifname(net->tap, v);
		} else if (!strcmp(item, "bridge")) {
			err = copy_ifname(net->bridge, v);
		} else if (!strcmp(item, "mac")) {
			err = parse_mac(v, net->mac);
			have_mac = !err;
		} else if (!strcmp(item, "ip")) {
			err = parse_ip(v, &net->ip, &prefix);
			if (!err)
				net->netmask = htonl(prefix == 32 ? ~0U :
						     ~(~0U >> prefix));
		} else if (!strcmp(item, "gw")) {
			err = parse_ip(v, &net->gw, NULL);
		} else if (!strcmp(item, "host-ip")) {
			err = parse_ip(v, &net->host_ip, &net->host_prefix);
		} else {
			log_err("--net: unknown item '%s' (tap, mac, ip, gw, "
				"bridge, host-ip)", item);
			err = -EINVAL;
			break;
		}
		if (err)
			log_err("--net: bad value '%s' for %s", v, item);
	}
	if (!err && (!net->tap[0] || !have_mac)) {
		log_err("--net needs at least tap=NAME and mac=MAC");
		err = -EINVAL;
	}
	free(dup);
	net->present = !err;
	return err;
}

/* ---- the TAP device ---------------------------------------------------- */

static int link_setup(const struct kvm_net_cfg *c)
{
	struct nl_sock *sk = nl_socket_alloc();
	struct rtnl_link *link = NULL, *change = NULL, *br = NULL;
	struct rtnl_addr *addr = NULL;
	struct nl_addr *local = NULL;
	const char *what = "netlink socket";
	int err;

	if (!sk)
		return -ENOMEM;
	err = nl_connect(sk, NETLINK_ROUTE);
	if (err)
		goto out;
	what = "looking up the TAP";
	err = rtnl_link_get_kernel(sk, 0, c->tap, &link);
	if (err)
		goto out;
	what = "bringing the TAP up";
	change = rtnl_link_alloc();
	if (!change) {
		err = -NLE_NOMEM;
		goto out;
	}
	rtnl_link_set_flags(change, IFF_UP);
	err = rtnl_link_change(sk, link, change, 0);
	if (err)
		goto out;
	if (c->bridge[0]) {
		what = "finding the bridge";
		err = rtnl_link_get_kernel(sk, 0, c->bridge, &br);
		if (!err) {
			what = "adding the TAP to the bridge";
			err = rtnl_link_enslave(sk, br, link);
		}
		if (err)
			goto out;
	}
	if (c->host_ip) {
		what = "adding the host-side address";
		addr = rtnl_addr_alloc();
		local = nl_addr_build(AF_INET, &c->host_ip, 4);
		if (!addr || !local) {
			err = -NLE_NOMEM;
			goto out;
		}
		nl_addr_set_prefixlen(local, c->host_prefix);
		rtnl_addr_set_ifindex(addr, rtnl_link_get_ifindex(link));
		rtnl_addr_set_local(addr, local);
		err = rtnl_addr_add(sk, addr, 0);
	}
out:
	if (err)
		log_err("TAP %s: %s: %s", c->tap, what, nl_geterror(err));
	nl_addr_put(local);
	if (addr)
		rtnl_addr_put(addr);
	if (br)
		rtnl_link_put(br);
	if (change)
		rtnl_link_put(change);
	if (link)
		rtnl_link_put(link);
	nl_socket_free(sk);
	return err ? -EIO : 0;
}

int kvm_net_init(struct hv_domain *d, const struct kvm_net_cfg *c)
{
	struct kvm_net *n = &d->net;
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
	int err;

	n->fd = -1;
	if (!c->present)
		return 0;
	n->cfg = *c;
	n->rxq = calloc(KVM_NET_RXQ, sizeof(*n->rxq));
	if (!n->rxq)
		return -ENOMEM;
	n->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (n->fd < 0) {
		err = -errno;
		log_err("/dev/net/tun: %s", strerror(errno));
		return err;
	}
	memcpy(ifr.ifr_name, c->tap, strlen(c->tap) + 1);
	if (ioctl(n->fd, TUNSETIFF, &ifr) < 0) {
		err = -errno;
		log_err("creating TAP %s: %s%s", c->tap, strerror(errno),
			errno == EBUSY ? " (in use by another process)" : "");
		return err;
	}
	return link_setup(c);
}

void kvm_net_fini(struct hv_domain *d)
{
	if (d->net.fd >= 0)
		close(d->net.fd);
	free(d->net.rxq);
}

int kvm_net_fd(const struct hv_domain *d)
{
	return d->net.fd;
}

bool kvm_net_pending(const struct hv_domain *d)
{
	return d->net.rxq_len > 0;
}

/* ---- hypercalls -------------------------------------------------------- */

int64_t kvm_net_info(struct hv_domain *d, struct ft_hc_net_info *a)
{
	const struct kvm_net_cfg *c = &d->net.cfg;

	if (d->net.fd < 0)
		return -FT_ENOSYS;
	memset(a, 0, sizeof(*a) - sizeof(a->ret));
	memcpy(a->mac, c->mac, 6);
	a->mtu = FT_NET_FRAME_MAX - 14;
	a->ipv4_addr = c->ip;
	a->ipv4_netmask = c->netmask;
	a->ipv4_gateway = c->gw;
	return 0;
}

/* Check a batch: count, reserved fields, the descriptor array and every
 * frame buffer.  Nothing moves unless all of it is valid. */
static int64_t check_batch(struct hv_domain *d, const struct ft_hc_net_batch *a,
			   struct ft_net_frame **fr, bool rx)
{
	uint32_t i;

	if (d->net.fd < 0)
		return -FT_ENOSYS;
	if (a->reserved)
		return -FT_EINVAL;
	if (a->count == 0 || a->count > FT_NET_BATCH_MAX)
		return -FT_E2BIG;
	*fr = kvm_guest_ptr(d, a->frames,
			    (uint64_t)a->count * sizeof(**fr));
	if (!*fr || (a->frames & 7))
		return -FT_EFAULT;
	for (i = 0; i < a->count; i++) {
		const struct ft_net_frame *f = &(*fr)[i];

		if (f->reserved)
			return -FT_EINVAL;
		if (rx ? f->len < FT_NET_FRAME_MAX
		       : f->len < FT_NET_FRAME_MIN || f->len > FT_NET_FRAME_MAX)
			return -FT_EINVAL;
		if (!kvm_guest_ptr(d, f->buf, f->len))
			return -FT_EFAULT;
	}
	return 0;
}

int64_t kvm_net_send(struct hv_domain *d, struct ft_hc_net_batch *a)
{
	struct kvm_net *n = &d->net;
	struct ft_net_frame *fr;
	int64_t err = check_batch(d, a, &fr, false);
	uint32_t i;

	a->done = 0;
	if (err)
		return err;
	pthread_mutex_lock(&n->hook_lock);
	for (i = 0; i < a->count; i++) {
		uint32_t len = fr[i].len;
		const void *buf = kvm_guest_ptr(d, fr[i].buf, len);

		if (n->hook) {
			int r = n->hook(n->hook_ctx, 0, buf, len);

			if (r == -EAGAIN) {
				/* No room: the guest retries the rest. */
				err = -FT_EAGAIN;
				break;
			}
			if (r < 0) { /* outside the hook's contract */
				n->stats.tx_dropped++;
				continue;
			}
		} else if (write(n->fd, buf, len) != (ssize_t)len) {
			/* A full TAP queue drops the frame, as a wire would. */
			n->stats.tx_dropped++;
			continue;
		}
		n->stats.tx_frames++;
		n->stats.tx_bytes += len;
	}
	pthread_mutex_unlock(&n->hook_lock);
	a->done = i;
	return err;
}

int kvm_net_tx_hook(struct hv_domain *d, hv_net_tx_fn fn, void *ctx)
{
	struct kvm_net *n = &d->net;

	if (fn && n->fd < 0)
		return -ENOENT; /* no NIC: the caller decides if that is bad */
	pthread_mutex_lock(&n->hook_lock);
	n->hook = fn;
	n->hook_ctx = fn ? ctx : NULL;
	pthread_mutex_unlock(&n->hook_lock);
	return 0;
}

int kvm_net_tx(struct hv_domain *d, unsigned nic, const void *frame,
	       size_t len)
{
	ssize_t w;

	if (nic || d->net.fd < 0)
		return -ENOENT;
	if (len < FT_NET_FRAME_MIN || len > FT_NET_FRAME_MAX)
		return -EINVAL;
	do
		w = write(d->net.fd, frame, len);
	while (w < 0 && errno == EINTR);
	if (w == (ssize_t)len)
		return 0;
	if (w < 0 && (errno == EAGAIN || errno == ENOBUFS))
		return -EAGAIN;
	return w < 0 ? -errno : -EIO;
}

int64_t kvm_net_recv(struct hv_domain *d, struct ft_hc_net_batch *a)
{
	struct kvm_net *n = &d->net;
	struct ft_net_frame *fr;
	int64_t err = check_batch(d, a, &fr, true);
	uint32_t i = 0;
	ssize_t len;

	a->done = 0;
	if (err)
		return err;
	/* Frames saved with the device first, in order. */
	while (i < a->count && n->rxq_len) {
		struct kvm_net_frame *q = &n->rxq[n->rxq_head];
		uint8_t *dst = kvm_guest_ptr(d, fr[i].buf, q->len);

		memcpy(dst, q->data, q->len);
		fr[i].len = q->len;
		kvm_dirty_mark(d, fr[i].buf, q->len);
		n->rxq_head = (n->rxq_head + 1) % KVM_NET_RXQ;
		n->rxq_len--;
		n->stats.rx_frames++;
		n->stats.rx_bytes += fr[i].len;
		i++;
	}
	while (i < a->count) {
		len = read(n->fd, kvm_guest_ptr(d, fr[i].buf, fr[i].len),
			   FT_NET_FRAME_MAX);
		if (len < 0 && errno == EINTR)
			continue;
		if (len <= 0)
			break;
		if (len < FT_NET_FRAME_MIN) {
			n->stats.rx_dropped++;
			continue;
		}
		fr[i].len = (uint32_t)len;
		kvm_dirty_mark(d, fr[i].buf, (uint64_t)len);
		n->stats.rx_frames++;
		n->stats.rx_bytes += (uint64_t)len;
		i++;
	}
	a->done = i;
	kvm_dirty_mark(d, a->frames, (uint64_t)a->count * sizeof(*fr));
	return 0;
}

/* ---- saved state -------------------------------------------------------- */

/* Blob, version 1: this header, then nr_pending frames as {u32 len, data,
 * zero padding to 4}. */
struct net_blob {
	uint8_t mac[6];
	uint16_t mtu;
	uint32_t ip, netmask, gw;
	uint32_t nr_pending;
	struct kvm_net_stats stats;
};
_Static_assert(sizeof(struct net_blob) == 72, "net_blob");

/* Take frames waiting on the TAP into the queue, so they are saved. */
static void drain_tap(struct kvm_net *n)
{
	while (n->rxq_len < KVM_NET_RXQ) {
		struct kvm_net_frame *q =
			&n->rxq[(n->rxq_head + n->rxq_len) % KVM_NET_RXQ];
		ssize_t len = read(n->fd, q->data, sizeof(q->data));

		if (len < 0 && errno == EINTR)
			continue;
		if (len <= 0)
			return;
		if (len < FT_NET_FRAME_MIN) {
			n->stats.rx_dropped++;
			continue;
		}
		q->len = (uint32_t)len;
		n->rxq_len++;
	}
}

int kvm_net_save(struct hv_domain *d, hv_dev_cb cb, void *ctx)
{
	struct kvm_net *n = &d->net;
	struct net_blob b = { .mtu = FT_NET_FRAME_MAX - 14,
			      .ip = n->cfg.ip, .netmask = n->cfg.netmask,
			      .gw = n->cfg.gw };
	struct hv_dev_rec rec = { .type = HV_DEV_NET, .version = 1 };
	uint8_t *buf, *p;
	uint32_t i;
	int err;

	if (n->fd < 0)
		return 0;
	drain_tap(n);
	memcpy(b.mac, n->cfg.mac, 6);
	b.nr_pending = n->rxq_len;
	b.stats = n->stats;
	buf = malloc(sizeof(b) + (size_t)n->rxq_len * (4 + FT_NET_FRAME_MAX + 3));
	if (!buf)
		return -ENOMEM;
	memcpy(buf, &b, sizeof(b));
	p = buf + sizeof(b);
	for (i = 0; i < n->rxq_len; i++) {
		const struct kvm_net_frame *q =
			&n->rxq[(n->rxq_head + i) % KVM_NET_RXQ];

		memcpy(p, &q->len, 4);
		memcpy(p + 4, q->data, q->len);
		memset(p + 4 + q->len, 0, (4 - q->len % 4) % 4);
		p += 4 + q->len + (4 - q->len % 4) % 4;
	}
	rec.len = (uint32_t)(p - buf);
	rec.data = buf;
	err = cb(ctx, &rec);
	free(buf);
	return err;
}

int kvm_net_load(struct hv_domain *d, const struct hv_dev_rec *rec)
{
	struct kvm_net *n = &d->net;
	struct net_blob b;
	const uint8_t *p, *end;
	uint32_t i, len;

	if (n->fd < 0) {
		log_err("device load: the saved VM has a NIC; give it one with "
			"--net");
		return -EINVAL;
	}
	if (rec->version != 1 || rec->len < sizeof(b)) {
		log_err("device load: NIC state version %u, %u bytes; expected "
			"version 1, at least %zu bytes", rec->version, rec->len,
			sizeof(b));
		return -EINVAL;
	}
	memcpy(&b, rec->data, sizeof(b));
	if (memcmp(b.mac, n->cfg.mac, 6) || b.ip != n->cfg.ip) {
		log_err("device load: the saved NIC has MAC "
			"%02x:%02x:%02x:%02x:%02x:%02x and another identity "
			"than --net gives; use the saved MAC and IP",
			b.mac[0], b.mac[1], b.mac[2], b.mac[3], b.mac[4],
			b.mac[5]);
		return -EINVAL;
	}
	if (b.nr_pending > KVM_NET_RXQ) {
		log_err("device load: %u pending frames, more than %d",
			b.nr_pending, KVM_NET_RXQ);
		return -EINVAL;
	}
	/* Check every frame before taking any. */
	p = (const uint8_t *)rec->data + sizeof(b);
	end = (const uint8_t *)rec->data + rec->len;
	for (i = 0; i < b.nr_pending; i++) {
		if (end - p < 4)
			goto bad;
		memcpy(&len, p, 4);
		if (len < FT_NET_FRAME_MIN || len > FT_NET_FRAME_MAX ||
		    (size_t)(end - p - 4) < len + (4 - len % 4) % 4)
			goto bad;
		p += 4 + len + (4 - len % 4) % 4;
	}
	if (p != end)
		goto bad;
	p = (const uint8_t *)rec->data + sizeof(b);
	n->rxq_head = 0;
	n->rxq_len = b.nr_pending;
	for (i = 0; i < b.nr_pending; i++) {
		memcpy(&n->rxq[i].len, p, 4);
		memcpy(n->rxq[i].data, p + 4, n->rxq[i].len);
		p += 4 + n->rxq[i].len + (4 - n->rxq[i].len % 4) % 4;
	}
	n->stats = b.stats;
	return 0;
bad:
	log_err("device load: NIC state: malformed pending frame %u", i);
	return -EINVAL;
}

/* ---- announcing the guest ----------------------------------------------- */

int kvm_net_announce(struct hv_domain *d)
{
	const struct kvm_net_cfg *c = &d->net.cfg;
	uint8_t f[60] = { 0 };
	int err = 0;

	if (d->net.fd < 0)
		return 0;
	/* Gratuitous ARP request: sender and target IP both the guest's. */
	memset(f, 0xff, 6);
	memcpy(f + 6, c->mac, 6);
	f[12] = 0x08, f[13] = 0x06;         /* ARP */
	f[14] = 0, f[15] = 1;               /* Ethernet */
	f[16] = 0x08, f[17] = 0;            /* IPv4 */
	f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1; /* request */
	memcpy(f + 22, c->mac, 6);
	memcpy(f + 28, &c->ip, 4);
	memcpy(f + 38, &c->ip, 4);
	if (c->ip && write(d->net.fd, f, sizeof(f)) != sizeof(f))
		err = -errno;
	/* RARP request, as QEMU announces: for switches without IP. */
	f[12] = 0x80, f[13] = 0x35;
	f[21] = 3;
	memset(f + 28, 0, 4);
	memcpy(f + 32, c->mac, 6);
	memset(f + 38, 0, 4);
	if (write(d->net.fd, f, sizeof(f)) != sizeof(f))
		err = -errno;
	if (err)
		log_warn("announcing %s on %s: %s", "the guest", c->tap,
			 strerror(-err));
	/* And tell the guest, so that its TCP asks its peers for what the
	 * old place took and never answered (a failed primary's last
	 * epoch): its next poll returns FT_POLL_MOVED at once. */
	atomic_store(&d->net.moved, true);
	if (d->wake_fd >= 0 && write(d->wake_fd, &(uint64_t){ 1 }, 8) < 0)
		log_warn("wake: %s", strerror(errno));
	return err;
}
