/* SPDX-License-Identifier: MIT */
/*
 * ckpt_recv.c - checkpoint replication, backup side (see ckpt.h).
 *
 * The replica is a real domain of the backend, created paused and never
 * run until a failover.  The pre-copy writes straight into it; an epoch
 * goes to staging (pages, disk writes, vCPU states, device blobs) and is
 * applied when its CKPT_END has been read and checked by the stream
 * reader (counts, every vCPU) - so nothing of a partial, truncated or
 * corrupt epoch ever reaches the replica.
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt.h"
#include "migrate/snapshot.h"
#include "log.h"
#include "stream.h"
#include "stream_state.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void ckpt_replica_init(struct ckpt_replica *rp)
{
	pthread_mutex_init(&rp->lock, NULL);
}

void ckpt_replica_fini(struct ckpt_replica *rp, const struct hv_ops *ops)
{
	pthread_mutex_lock(&rp->lock);
	if (rp->d)
		ops->destroy(rp->d);
	rp->d = NULL;
	rp->complete = false;
	pthread_mutex_unlock(&rp->lock);
}

struct dev_stage {
	struct hv_dev_rec rec;
	unsigned char *data;
};

struct recv_ctx {
	const struct hv_ops *ops;
	struct snap_pages sp; /* rp->d, the domain being fed: pre-copy pages
			       * and the XOR bases (its committed frames) */
	struct stream_reader r;
	uint64_t nr_pfns;
	/* the epoch in progress */
	uint64_t *pfns;
	unsigned char *pages;
	uint64_t n, cap;
	struct hv_vcpu_state *vcpus;
	unsigned nr_vcpus;
	struct dev_stage *devs;
	unsigned nr_devs, devs_cap;
	struct diskrep_stage disk;
	bool disk_dirty; /* the replica's images were written since the
			  * last write-back was started */
};

/* Pre-copy page: straight into the replica. */
static int direct_page(void *ctx, uint64_t pfn, const void *page)
{
	return snap_pages_store(&((struct recv_ctx *)ctx)->sp, pfn, page);
}

/* XOR base: the replica's committed copy (or a pre-copy page). */
static const void *recv_base(void *ctx, uint64_t pfn)
{
	return snap_pages_base(&((struct recv_ctx *)ctx)->sp, pfn);
}

/* Epoch page: into staging. */
static int stage_page(void *ctx, uint64_t pfn, const void *page)
{
	struct recv_ctx *rc = ctx;

	snap_pages_release(&rc->sp);
	if (rc->n == rc->cap) {
		uint64_t cap = rc->cap ? rc->cap * 2 : 1024;
		unsigned char *pages;
		uint64_t *pfns;

		if (cap > rc->nr_pfns)
			cap = rc->nr_pfns;
		if (cap <= rc->n)
			return -E2BIG; /* more pages than RAM: the reader
					* would have refused the count */
		pfns = realloc(rc->pfns, cap * sizeof(*pfns));
		if (!pfns)
			return -ENOMEM;
		rc->pfns = pfns;
		pages = realloc(rc->pages, cap * HV_PAGE_SIZE);
		if (!pages)
			return -ENOMEM;
		rc->pages = pages;
		rc->cap = cap;
	}
	rc->pfns[rc->n] = pfn;
	memcpy(rc->pages + rc->n * HV_PAGE_SIZE, page, HV_PAGE_SIZE);
	rc->n++;
	return 0;
}

static void stage_clear(struct recv_ctx *rc)
{
	rc->n = 0;
	for (unsigned i = 0; i < rc->nr_devs; i++)
		free(rc->devs[i].data);
	rc->nr_devs = 0;
	diskrep_stage_clear(&rc->disk);
}

static int stage_dev(struct recv_ctx *rc, const struct hv_dev_rec *dev)
{
	struct dev_stage *ds;

	if (rc->nr_devs == rc->devs_cap) {
		unsigned cap = rc->devs_cap ? rc->devs_cap * 2 : 8;

		ds = realloc(rc->devs, cap * sizeof(*ds));
		if (!ds)
			return -ENOMEM;
		rc->devs = ds;
		rc->devs_cap = cap;
	}
	ds = &rc->devs[rc->nr_devs];
	ds->rec = *dev;
	ds->data = malloc(dev->len ? dev->len : 1);
	if (!ds->data)
		return -ENOMEM;
	memcpy(ds->data, dev->data, dev->len);
	ds->rec.data = ds->data;
	rc->nr_devs++;
	return 0;
}

/* A DISK_WRITE: decode (against the replica's disk size), then apply
 * (pre-copy) or stage (epoch). */
static int recv_disk(struct recv_ctx *rc, const struct stream_rec *rec)
{
	struct stream_disk_write dw;
	int err;

	err = snap_disk_record(rc->ops, rc->sp.d, &rc->r, rec, &dw);
	if (err)
		return err;
	if (rc->r.in_epoch) {
		err = diskrep_stage_add(&rc->disk, dw.disk, dw.offset, dw.len,
					dw.data);
		return err ? stream_rec_fail(&rc->r, rec, err,
					     "cannot stage the write: %s",
					     strerror(-err))
			   : 0;
	}
	err = snap_disk_write(rc->ops, rc->sp.d, dw.disk, dw.offset, dw.len,
			      dw.data);
	rc->disk_dirty = true;
	if (err)
		return stream_rec_fail(&rc->r, rec, err,
				       "disk %u: writing %u bytes at %llu: %s",
				       dw.disk, dw.len,
				       (unsigned long long)dw.offset,
				       strerror(-err));
	return 0;
}

/* CKPT_END validated: apply the epoch to the replica. */
static int commit(struct recv_ctx *rc, const struct stream_rec *rec)
{
	int err = 0;

	for (uint64_t i = 0; !err && i < rc->n; i++)
		err = snap_pages_store(&rc->sp, rc->pfns[i],
				       rc->pages + i * HV_PAGE_SIZE);
	if (!err && rc->disk.count) {
		rc->disk_dirty = true;
		err = diskrep_stage_apply(&rc->disk, rc->ops, rc->sp.d);
	}
	for (unsigned v = 0; !err && v < rc->nr_vcpus; v++)
		err = rc->ops->vcpu_load(rc->sp.d, v, &rc->vcpus[v]);
	for (unsigned i = 0; !err && i < rc->nr_devs; i++)
		err = rc->ops->dev_load(rc->sp.d, &rc->devs[i].rec);
	if (err)
		return stream_rec_fail(&rc->r, rec, err,
				       "applying epoch %llu: %s (the replica "
				       "is now unusable)",
				       (unsigned long long)rc->r.epoch,
				       strerror(-err));
	return 0;
}

static int send_ack(struct chan *c, uint64_t epoch)
{
	struct ckpt_ack a;
	int err;

	memcpy(a.magic, CKPT_MSG_ACK, sizeof(a.magic));
	a.epoch = htole64(epoch);
	err = chan_write(c, &a, sizeof(a));
	return err ? err : chan_flush(c, false);
}

int ckpt_recv(const struct hv_ops *ops, struct chan *c, unsigned timeout_ms,
	      ckpt_create_fn create, void *create_ctx, struct ckpt_replica *rp)
{
	struct recv_ctx rc = {.ops = ops, .sp = {.ops = ops}};
	struct ft_stream_hdr hdr;
	struct stream_rec rec;
	struct hv_vcpu_state *vs = NULL;
	struct hv_dev_rec dev;
	char why[256] = "";
	uint64_t t0;
	uint32_t id;
	int err;

	diskrep_stage_init(&rc.disk);
	pthread_mutex_lock(&rp->lock);
	rp->streams++;
	rp->epochs = 0;
	rp->bytes = 0;
	rp->msg[0] = 0;
	pthread_mutex_unlock(&rp->lock);
	err = chan_set_timeout(c, timeout_ms ? timeout_ms
					     : CKPT_DEFAULT_TIMEOUT_MS);
	if (!err)
		err = stream_reader_init(&rc.r, c);
	if (err) {
		snprintf(rp->msg, sizeof(rp->msg), "%s", strerror(-err));
		return err;
	}
	err = stream_read_header(&rc.r, &hdr);
	if (!err && !(hdr.flags & FT_STREAM_F_CHECKPOINT)) {
		err = -EINVAL;
		snprintf(why, sizeof(why),
			 "header: not a checkpoint stream (flags 0x%x)",
			 hdr.flags);
	}
	while (!err) {
		err = stream_next(&rc.r, &rec);
		if (err)
			break;
		pthread_mutex_lock(&rp->lock);
		rp->bytes = c->bytes_in;
		pthread_mutex_unlock(&rp->lock);
		switch (rec.type) {
		case REC_DOMAIN: {
			const struct ft_rec_domain *dm = rec.body;
			struct hv_dom_info info = {.mem_size = dm->mem_size,
						   .nr_vcpus = dm->nr_vcpus,
						   .page_size = dm->page_size};
			struct hv_domain *d = NULL;

			/* The previous replica goes first: the new one
			 * takes its devices (TAP, disk image). */
			ckpt_replica_fini(rp, ops);
			rc.nr_pfns = dm->mem_size / HV_PAGE_SIZE;
			rc.nr_vcpus = dm->nr_vcpus;
			rc.sp.received = calloc((rc.nr_pfns + 63) / 64,
						sizeof(uint64_t));
			rc.vcpus = calloc(rc.nr_vcpus, sizeof(*rc.vcpus));
			vs = malloc(sizeof(*vs));
			err = rc.sp.received && rc.vcpus && vs
				      ? create(create_ctx, &info, &d)
				      : -ENOMEM;
			if (err) {
				stream_rec_fail(&rc.r, &rec, err,
						"creating the replica: %s",
						*log_last_err()
							? log_last_err()
							: strerror(-err));
				break;
			}
			pthread_mutex_lock(&rp->lock);
			rp->d = rc.sp.d = d;
			pthread_mutex_unlock(&rp->lock);
			break;
		}
		case REC_PAGE_BATCH:
			err = stream_decode_pages2(&rc.r, &rec,
						   rc.r.in_epoch ? stage_page
								 : direct_page,
						   &rc, recv_base);
			snap_pages_release(&rc.sp);
			if (err > 0)
				err = -EINVAL;
			if (err && !*stream_reader_error(&rc.r))
				stream_rec_fail(&rc.r, &rec, err,
						"staging pages: %s",
						strerror(-err));
			break;
		case REC_DISK_WRITE:
			err = recv_disk(&rc, &rec);
			break;
		case REC_VCPU_X86:
			/* Only inside epochs (the reader saw to it). */
			err = stream_decode_vcpu(&rc.r, &rec, &id, vs);
			if (!err)
				rc.vcpus[id] = *vs;
			break;
		case REC_DEVICE:
			err = stream_decode_device(&rc.r, &rec, &dev);
			if (!err)
				err = stage_dev(&rc, &dev);
			break;
		case REC_CKPT_BEGIN:
			stage_clear(&rc);
			break;
		case REC_CKPT_END:
			t0 = now_ns();
			err = commit(&rc, &rec);
			stage_clear(&rc);
			pthread_mutex_lock(&rp->lock);
			if (err) {
				rp->complete = false;
			} else {
				uint64_t ns = now_ns() - t0;

				rp->complete = true;
				rp->epoch = rc.r.epoch;
				rp->epochs++;
				rp->commit_ns = now_ns();
				rp->apply_last_ns = ns;
				if (ns > rp->apply_max_ns)
					rp->apply_max_ns = ns;
			}
			pthread_mutex_unlock(&rp->lock);
			if (!err)
				err = send_ack(c, rc.r.epoch);
			/* After the ack, off the epoch's critical path: keep
			 * the replica's images from piling up dirty page
			 * cache that a failed-over guest's first flush would
			 * have to write (docs/checkpoint.md). */
			if (!err && rc.disk_dirty) {
				diskrep_writeback(ops, rc.sp.d);
				rc.disk_dirty = false;
			}
			if (err && !*stream_reader_error(&rc.r))
				snprintf(why, sizeof(why),
					 "cannot acknowledge epoch %llu: %s",
					 (unsigned long long)rc.r.epoch,
					 strerror(-err));
			break;
		case REC_SYNC:
			err = mig_msg_send(c, MIG_MSG_SYNC, 0, NULL);
			break;
		case REC_END:
			log_info("replication ended by the primary after "
				 "epoch %llu; the replica is dropped",
				 (unsigned long long)rc.r.epoch);
			ckpt_replica_fini(rp, ops);
			goto out;
		default:
			break; /* optional, skipped */
		}
	}
	if (err > 0)
		err = -EINVAL;
	pthread_mutex_lock(&rp->lock);
	snprintf(rp->msg, sizeof(rp->msg), "%s",
		 *stream_reader_error(&rc.r) ? stream_reader_error(&rc.r)
		 : why[0]		     ? why
					     : strerror(-err));
	if (rc.r.in_epoch)
		rp->discarded++;
	pthread_mutex_unlock(&rp->lock);
	if (rc.r.in_epoch)
		log_warn("replication: epoch %llu was cut short and is "
			 "discarded",
			 (unsigned long long)rc.r.epoch);
	/* Tell the primary why, if it still listens; then it resyncs. */
	if (!mig_msg_send(c, MIG_MSG_ERR, err, rp->msg))
		mig_drain(c);
	log_err("replication stream failed: %s; the replica stays at epoch "
		"%llu%s",
		rp->msg, (unsigned long long)rp->epoch,
		rp->complete ? "" : " (none complete: nothing to fail over to)");
out:
	snap_pages_release(&rc.sp);
	stage_clear(&rc);
	diskrep_stage_fini(&rc.disk);
	stream_reader_fini(&rc.r);
	free(rc.sp.received);
	free(rc.vcpus);
	free(rc.pfns);
	free(rc.pages);
	free(rc.devs);
	free(vs);
	return err;
}
