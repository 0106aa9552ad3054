/* SPDX-License-Identifier: MIT */
/*
 * diskrep.h - disk replication for checkpointing (Remus): every guest disk
 * write on the primary is captured, tagged with the epoch it belongs to
 * and sent with that epoch; the backup stages an epoch's writes and
 * applies them to its image only when the epoch commits.
 *
 * Primary (struct diskrep): diskrep_open installs hv_ops.disk_write_hook;
 * each guest write is copied (before it reaches the local image) into a
 * bounded log.  diskrep_seal(epoch), with the domain paused, closes the
 * log of `epoch`; diskrep_send writes its DISK_WRITE records; after the
 * backup acknowledged the epoch, diskrep_release frees them.  One sealed
 * epoch at a time (the checkpoint engine waits for each ack).  When the
 * log reaches its bound the guest's write is refused with -EAGAIN (the
 * guest retries: it is stalled, nothing is lost) and the event fd asks
 * for an early epoch.
 *
 * Backup (struct diskrep_stage): the DISK_WRITE records of the epoch being
 * received, copied; diskrep_stage_apply writes them to the replica's
 * disks in stream order when the epoch commits; diskrep_stage_clear
 * discards them (a partial epoch).
 */
#ifndef DISKREP_H
#define DISKREP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv.h"

struct stream_writer;

#define DISKREP_DEFAULT_BYTES (64u << 20)

struct diskrep_stats {
	uint64_t writes, bytes;	  /* captured so far */
	uint64_t held_bytes;	  /* in the log now, sealed or not */
	uint64_t max_held_bytes;  /* high-water mark */
	uint64_t stalls;	  /* guest writes refused for lack of room */
};

struct diskrep;

/* Capture `d`'s disk writes from now on; the log holds at most max_bytes
 * (0: DISKREP_DEFAULT_BYTES) of data, but always one write. */
int diskrep_open(const struct hv_ops *ops, struct hv_domain *d,
		 size_t max_bytes, struct diskrep **out);

/* The domain is paused: the writes captured so far belong to `epoch`.
 * -EBUSY if the previous sealed epoch was not released. */
int diskrep_seal(struct diskrep *dr, uint64_t epoch);

/* Write the sealed epoch's writes as DISK_WRITE records tagged with it. */
int diskrep_send(struct diskrep *dr, struct stream_writer *w);

/* The sealed epoch committed (or is abandoned): free its writes. */
void diskrep_release(struct diskrep *dr);

/* Readable (eventfd) when the log passes half its bound. */
int diskrep_event_fd(struct diskrep *dr);

void diskrep_get_stats(struct diskrep *dr, struct diskrep_stats *st);

/* Remove the hook and free everything.  NULL is a no-op. */
void diskrep_close(struct diskrep *dr);

/* ---- backup ---- */

struct diskrep_stage {
	unsigned char *buf; /* records: struct stage_hdr + data, in order */
	size_t len, cap;
	uint32_t count;
	uint64_t bytes;	    /* data bytes (zeroed ranges count their len) */
};

void diskrep_stage_init(struct diskrep_stage *st);
void diskrep_stage_fini(struct diskrep_stage *st);

/* Keep a copy of one validated write: `len` bytes at `off` of disk
 * `disk`, data NULL for a zeroed range.  0 or -ENOMEM. */
int diskrep_stage_add(struct diskrep_stage *st, uint32_t disk, uint64_t off,
		      uint32_t len, const void *data);

/* Write everything staged to `d`'s disks in order, then clear.  On error
 * (-errno, logged with the disk and offset) the image may hold a prefix
 * of the epoch's writes. */
int diskrep_stage_apply(struct diskrep_stage *st, const struct hv_ops *ops,
			struct hv_domain *d);

void diskrep_stage_clear(struct diskrep_stage *st);

/* Start writing `d`'s disk images back from the host's page cache
 * (hv_ops.disk_writeback, where the backend has it); does not wait.  A
 * failure is logged once and otherwise ignored: it only costs time at the
 * next flush. */
void diskrep_writeback(const struct hv_ops *ops, struct hv_domain *d);

/* Write what is staged as DISK_WRITE records tagged with `epoch` (the
 * primary's first epoch sends whole dirty blocks this way). */
int diskrep_stage_send(const struct diskrep_stage *st,
		       struct stream_writer *w, uint64_t epoch);

#endif /* DISKREP_H */
