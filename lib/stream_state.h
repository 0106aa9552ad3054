/* SPDX-License-Identifier: MIT */
/*
 * stream_state.h - VCPU_X86 and DEVICE records to and from the hv layer's
 * structs (hv/hv.h), field by field.
 *
 * The writers refuse state no reader would accept; the decoders check
 * what stream_next leaves to them (reserved fields, segment attribute
 * ranges) and fail the reader with a message naming the record.
 */
#ifndef STREAM_STATE_H
#define STREAM_STATE_H

#include <stdint.h>

#include "hv.h"
#include "stream.h"

/*
 * Write vCPU `id`'s state `st` as a VCPU_X86 record (st->xsave_len bytes
 * of XSAVE area).  Return 0, -EINVAL (id >= FT_MAX_VCPUS, xsave_len over
 * FT_XSAVE_MAX, a segment attribute out of range) or the writer's error.
 */
int stream_write_vcpu(struct stream_writer *w, uint32_t id,
		      const struct hv_vcpu_state *st);

/*
 * Decode the VCPU_X86 record `rec` (from stream_next on `r`) into *id and
 * *st.  Return 0 or -EINVAL (non-zero reserved field, segment attribute
 * out of range), failing `r`.
 */
int stream_decode_vcpu(struct stream_reader *r, const struct stream_rec *rec,
		       uint32_t *id, struct hv_vcpu_state *st);

/*
 * Write the device state `dev` as a DEVICE record.  Return 0, -E2BIG
 * (dev->len over FT_DEVICE_BLOB_MAX) or the writer's error.
 */
int stream_write_device(struct stream_writer *w, const struct hv_dev_rec *dev);

/*
 * Decode the DEVICE record `rec` (from stream_next on `r`) into *dev;
 * dev->data points into the record body and lives as long as it does.
 * Return 0 or -EINVAL (not a well-formed DEVICE record), failing `r`.
 */
int stream_decode_device(struct stream_reader *r, const struct stream_rec *rec,
			 struct hv_dev_rec *dev);

/* A decoded DISK_WRITE record; data NULL for a zeroed range. */
struct stream_disk_write {
	uint32_t disk;
	uint64_t offset, epoch;
	uint32_t len;
	const void *data; /* into the record body; NULL: zeros */
};

/*
 * Write a DISK_WRITE record: `len` bytes at `offset` of disk `disk`, from
 * `data`, or as a zeroed range if data is NULL.  Return 0, -EINVAL
 * (alignment, length 0 or over FT_DISK_WRITE_MAX, disk index) or the
 * writer's error.
 */
int stream_write_disk(struct stream_writer *w, uint32_t disk, uint64_t offset,
		      uint32_t len, const void *data, uint64_t epoch);

/*
 * Decode the DISK_WRITE record `rec` into *dw and check it: flags,
 * reserved field, alignment, length (also against the body), the range
 * below `disk_size` bytes (the receiver's disk of that index; 0: no such
 * disk, always an error).  Return 0 or -EINVAL, failing `r`.
 */
int stream_decode_disk(struct stream_reader *r, const struct stream_rec *rec,
		       uint64_t disk_size, struct stream_disk_write *dw);

#endif /* STREAM_STATE_H */
