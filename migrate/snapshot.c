// SPDX-License-Identifier: MIT
/*
 * snapshot.c - save a paused domain to a stream; build a domain from one.
 *
 * Save order (docs/stream-format.md): header, DOMAIN, page batches of every
 * non-zero frame, one VCPU_X86 per vCPU, one DEVICE per device, END.  The
 * restore side creates the domain from DOMAIN, then applies records as
 * they come; it trusts nothing the stream says that the reader has not
 * validated, and destroys the half-built domain on any error.
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "migrate/snapshot.h"
#include "stream.h"
#include "stream_state.h"

#define SAVE_BATCH FT_PAGE_BATCH_MAX

static int save_pages(const struct hv_ops *ops, struct hv_domain *d,
		      struct stream_writer *w, uint64_t nr_pfns,
		      struct snap_stats *stats)
{
	uint64_t pfns[SAVE_BATCH], sel[SAVE_BATCH];
	void *ptrs[SAVE_BATCH], *selp[SAVE_BATCH];
	uint64_t base;
	unsigned i, n, k;
	int err;

	for (base = 0; base < nr_pfns; base += n) {
		n = nr_pfns - base < SAVE_BATCH ? (unsigned)(nr_pfns - base)
						: SAVE_BATCH;
		for (i = 0; i < n; i++)
			pfns[i] = base + i;
		err = ops->map(d, pfns, n, ptrs);
		if (err)
			return err;
		for (i = 0, k = 0; i < n; i++) {
			if (stream_page_is_zero(ptrs[i])) {
				stats->zero_pages++;
				continue;
			}
			sel[k] = pfns[i];
			selp[k++] = ptrs[i];
		}
		err = k ? stream_write_pages(w, sel, selp, k) : 0;
		ops->unmap(d, ptrs, n);
		if (err)
			return err;
		stats->pages += k;
	}
	return 0;
}

struct dev_ctx {
	struct stream_writer *w;
	struct snap_stats *stats;
};

static int save_device(void *ctx, const struct hv_dev_rec *rec)
{
	struct dev_ctx *dc = ctx;

	dc->stats->records++;
	return stream_write_device(dc->w, rec);
}

int snap_save(const struct hv_ops *ops, struct hv_domain *d, struct chan *c,
	      struct snap_stats *stats)
{
	struct stream_writer w;
	struct hv_dom_info info;
	struct hv_vcpu_state *vs;
	struct dev_ctx dc = { .w = &w, .stats = stats };
	uint64_t bytes0 = c->bytes_out;
	unsigned v;
	int err;

	memset(stats, 0, sizeof(*stats));
	err = ops->info(d, &info);
	if (err)
		return err;
	vs = malloc(sizeof(*vs));
	if (!vs)
		return -ENOMEM;
	err = stream_writer_init(&w, c, 0, STREAM_COMP_NONE);
	if (err)
		goto out_free;
	err = stream_write_header(&w);
	if (!err)
		err = stream_write_domain(&w, info.mem_size, info.nr_vcpus);
	if (!err)
		err = save_pages(ops, d, &w, info.mem_size / info.page_size,
				 stats);
	for (v = 0; !err && v < info.nr_vcpus; v++) {
		err = ops->vcpu_save(d, v, vs);
		if (!err)
			err = stream_write_vcpu(&w, v, vs);
	}
	if (!err)
		err = ops->dev_save(d, save_device, &dc);
	if (!err)
		err = stream_write_end(&w);
	if (!err)
		err = chan_flush(c, false);
	stats->bytes = c->bytes_out - bytes0;
	stream_writer_fini(&w);
out_free:
	free(vs);
	if (err)
		log_err("save failed: %s", strerror(-err));
	return err;
}

void snap_pages_release(struct snap_pages *sp)
{
	if (sp->base)
		sp->ops->unmap(sp->d, &sp->base, 1);
	sp->base = NULL;
}

const void *snap_pages_base(void *ctx, uint64_t pfn)
{
	struct snap_pages *sp = ctx;

	snap_pages_release(sp);
	if (!(sp->received[pfn / 64] >> (pfn % 64) & 1))
		return NULL;
	if (sp->ops->map(sp->d, &pfn, 1, &sp->base))
		sp->base = NULL;
	return sp->base;
}

int snap_pages_store(void *ctx, uint64_t pfn, const void *page)
{
	struct snap_pages *sp = ctx;
	void *dst;
	int err;

	snap_pages_release(sp);
	err = sp->ops->map(sp->d, &pfn, 1, &dst);
	if (err)
		return err;
	memcpy(dst, page, HV_PAGE_SIZE);
	sp->ops->unmap(sp->d, &dst, 1);
	sp->received[pfn / 64] |= 1ULL << (pfn % 64);
	return 0;
}

int snap_disk_write(const struct hv_ops *ops, struct hv_domain *d,
		    uint32_t disk, uint64_t off, uint32_t len, const void *data)
{
	static const unsigned char zeros[HV_DISK_BLOCK];
	int err = 0;

	if (data)
		return ops->disk_write(d, disk, off, data, len);
	for (uint32_t done = 0; !err && done < len;) {
		uint32_t n = len - done < sizeof(zeros) ? len - done
						       : sizeof(zeros);

		err = ops->disk_write(d, disk, off + done, zeros, n);
		done += n;
	}
	return err;
}

int snap_disk_record(const struct hv_ops *ops, struct hv_domain *d,
		     struct stream_reader *r, const struct stream_rec *rec,
		     struct stream_disk_write *dw)
{
	uint64_t size = 0;
	uint32_t idx;

	/* stream_next enforced the header's length; the decoder checks the
	 * rest, with the size of the disk the record names (0: none). */
	memcpy(&idx, rec->body, sizeof(idx));
	if (ops->disk_info && ops->disk_info(d, le32toh(idx), &size))
		size = 0;
	return stream_decode_disk(r, rec, size, dw);
}

/* Apply a DISK_WRITE record to the domain being built. */
static int restore_disk(struct snap_pages *rc, struct stream_reader *r,
			const struct stream_rec *rec)
{
	struct stream_disk_write dw;
	int err;

	err = snap_disk_record(rc->ops, rc->d, r, rec, &dw);
	if (err)
		return err;
	err = snap_disk_write(rc->ops, rc->d, dw.disk, dw.offset, dw.len,
			      dw.data);
	if (err)
		return stream_rec_fail(r, rec, err,
				       "disk %u: writing %u bytes at %llu: %s",
				       dw.disk, dw.len,
				       (unsigned long long)dw.offset,
				       strerror(-err));
	return 0;
}

int snap_restore(const struct hv_ops *ops, const void *cfg, struct chan *c,
		 bool whole, struct hv_domain **out)
{
	return snap_restore_msg(ops, cfg, c, whole, out, NULL, 0, NULL, NULL);
}

int snap_restore_msg(const struct hv_ops *ops, const void *cfg,
		     struct chan *c, bool whole, struct hv_domain **out,
		     char *msg, size_t len,
		     int (*on_sync)(void *ctx, uint64_t seq), void *ctx)
{
	struct stream_reader r;
	struct ft_stream_hdr hdr;
	struct stream_rec rec;
	struct snap_pages rc = { .ops = ops };
	struct hv_dom_info info;
	struct hv_vcpu_state *vs;
	struct hv_dev_rec dev;
	uint32_t id;
	int err;

	vs = malloc(sizeof(*vs));
	if (!vs)
		return -ENOMEM;
	err = stream_reader_init(&r, c);
	if (err)
		goto out_free;
	err = stream_read_header(&r, &hdr);
	while (!err) {
		err = stream_next(&r, &rec);
		if (err)
			break;
		switch (rec.type) {
		case REC_DOMAIN: {
			const struct ft_rec_domain *dm = rec.body;

			info = (struct hv_dom_info){
				.mem_size = dm->mem_size,
				.nr_vcpus = dm->nr_vcpus,
				.page_size = dm->page_size };
			rc.received = calloc((dm->mem_size / HV_PAGE_SIZE + 63) /
						     64,
					     sizeof(uint64_t));
			err = rc.received ? ops->create(&info, cfg, &rc.d)
					  : -ENOMEM;
			if (err)
				stream_rec_fail(&r, &rec, err,
						"creating the VM: %s",
						strerror(-err));
			break;
		}
		case REC_PAGE_BATCH:
			err = stream_decode_pages2(&r, &rec, snap_pages_store,
						   &rc, snap_pages_base);
			snap_pages_release(&rc);
			break;
		case REC_VCPU_X86:
			/* The reader rejects duplicate and out-of-range
			 * vCPU ids, and an END with vCPUs missing. */
			err = stream_decode_vcpu(&r, &rec, &id, vs);
			if (!err)
				err = ops->vcpu_load(rc.d, id, vs);
			break;
		case REC_DISK_WRITE:
			err = restore_disk(&rc, &r, &rec);
			break;
		case REC_DEVICE:
			err = stream_decode_device(&r, &rec, &dev);
			if (!err)
				err = ops->dev_load(rc.d, &dev);
			break;
		case REC_END:
			if (whole) {
				err = stream_expect_eof(&r);
				if (err)
					break;
			}
			*out = rc.d;
			rc.d = NULL;
			goto out_fini;
		case REC_SYNC:
			if (on_sync) {
				uint64_t seq;

				memcpy(&seq, rec.body, sizeof(seq));
				err = on_sync(ctx, le64toh(seq));
			}
			break;
		default:
			break; /* the reader passed it: optional, ignored */
		}
	}
	if (err > 0)
		err = -EINVAL;
	/* The reader logged its own failures where they happened. */
	if (!*stream_reader_error(&r))
		log_err("restore failed: %s", strerror(-err));
	if (msg && len)
		snprintf(msg, len, "%s",
			 *stream_reader_error(&r) ? stream_reader_error(&r)
						  : strerror(-err));
out_fini:
	stream_reader_fini(&r);
	if (rc.d)
		ops->destroy(rc.d);
	free(rc.received);
out_free:
	free(vs);
	return err;
}
