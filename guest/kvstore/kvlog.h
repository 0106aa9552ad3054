/* SPDX-License-Identifier: MIT */
/*
 * kvlog.h - the kvstore's write-ahead log on a block device.
 *
 * docs/kvstore.md is the normative description of the on-disk format;
 * this is its machine-readable half.  In short: sectors 0 and 1 hold two
 * copies of a superblock (the valid one with the higher epoch wins); the
 * rest of the disk is two equal regions, one of them the active log: a
 * run of checksummed entries, each tagged with a sequence number and the
 * epoch (boot or log generation) that wrote it.  Replay accepts entries
 * while each is intact, carries the next sequence number and an epoch in
 * [start_epoch, sb epoch] that never decreases; so leftovers of a crashed
 * commit, of an earlier boot or of an older log generation are never
 * mistaken for the log's continuation.
 *
 * Group commit: kvlog_reserve/kvlog_seal append entries to a memory
 * buffer that also holds the durable bytes of the log's partially filled
 * last sector; kvlog_commit writes buffer and superblock with as few
 * block writes as the device allows, the last one with flush, and only
 * then may the caller acknowledge what it logged.
 *
 * The block device is a pair of functions (struct kvlog_dev), so the unit
 * tests run the same code over a memory buffer.  Single-threaded.
 */
#ifndef KVLOG_H
#define KVLOG_H

#include "kvplat.h"

#define KVLOG_SECTOR 512
#define KVLOG_SB_MAGIC 0x31474f4c5453564bULL /* "KVSTLOG1" */
#define KVLOG_VERSION 1
#define KVLOG_ENTRY_MAGIC 0x454c564bu /* "KVLE" */
#define KVLOG_HDR 32		      /* entry header bytes */
#define KVLOG_TRAILER 8		      /* entry checksum bytes */
#define KVLOG_PAYLOAD_MAX ((2u << 20) - 64)
/* The smallest region and the smallest memory buffer kvlog_open takes. */
#define KVLOG_MIN_REGION 16 /* sectors */
#define KVLOG_BUF_MIN (4u << 20)

/* Entry types (the payload formats are the caller's, see kv.c). */
enum kvlog_type {
	KVLOG_SET = 1,
	KVLOG_DEL = 2,
};

/* The superblock, little-endian, at sectors 0 and 1. */
struct kvlog_sb {
	uint64_t magic;		 /* KVLOG_SB_MAGIC */
	uint32_t version;	 /* KVLOG_VERSION */
	uint32_t region;	 /* active region: 0 or 1 */
	uint64_t region_sectors; /* sectors per region */
	uint64_t epoch;		 /* bumped at every boot and new log */
	uint64_t start_epoch;	 /* oldest epoch of the active log */
	uint64_t base_seq;	 /* sequence number of its first entry */
	uint8_t reserved[456];	 /* zero */
	uint64_t checksum;	 /* XXH64, seed 0, of bytes 0..503 */
};
_Static_assert(sizeof(struct kvlog_sb) == KVLOG_SECTOR, "superblock size");

struct kvlog_dev {
	/* Read / write `count` (1..max_io) sectors at `sector` from / to
	 * `buf`; a write with `flush` returns once everything written so
	 * far is durable.  Return 0 or -errno. */
	int (*read)(void *ctx, uint64_t sector, void *buf, uint32_t count);
	int (*write)(void *ctx, uint64_t sector, const void *buf,
		     uint32_t count, bool flush);
	void *ctx;
	uint64_t sectors; /* capacity */
	uint32_t max_io;  /* sectors per call, at least 1 */
};

/*
 * Replay: apply one entry's payload (valid for the call only).  Returns 0,
 * -EBADMSG if the payload is malformed (the log is then cut before the
 * entry, as if it were corrupt), or another -errno to fail kvlog_open.
 */
typedef int (*kvlog_apply_fn)(void *ctx, unsigned int type,
			      const uint8_t *payload, uint32_t len);

/* What kvlog_open found. */
struct kvlog_report {
	bool formatted;	  /* the disk was blank (or format forced) */
	bool truncated;	  /* a corrupt tail was cut off at `end` */
	const char *why;  /* if truncated: what was wrong (static text) */
	uint64_t entries; /* entries replayed */
	uint64_t end;	  /* byte offset of the log's end in its region */
	uint64_t epoch;	  /* the epoch of this boot */
};

struct kvlog_stats {
	uint64_t entries;     /* entries in the active log, pending included */
	uint64_t bytes;	      /* bytes of entries in the active log */
	uint64_t capacity;    /* bytes of the active region */
	uint64_t epoch;	      /* current epoch */
	uint64_t commits;     /* kvlog_commit calls that wrote something */
	uint64_t compactions; /* successful kvlog_compact calls */
};

/* Private; the fields are kvlog.c's. */
struct kvlog {
	struct kvlog_dev dev;
	struct kvlog_sb sb;
	uint8_t *buf;	     /* pending bytes, for disk at buf_sector */
	size_t cap;	     /* buffer size */
	size_t head;	     /* buf[0..head): durable start of the sector */
	size_t len;	     /* buf[0..len): to write */
	uint64_t buf_sector; /* absolute sector of buf[0] */
	uint64_t next_seq;
	uint64_t entries; /* in the active log */
	uint64_t commits, compactions;
	size_t sealed; /* buf[0..sealed) is complete entries */
	bool sb_dirty; /* sb changed: write it before any entry */
	int err;       /* sticky device error */
	uint8_t sbuf[KVLOG_SECTOR];
};

/*
 * Open the log on `dev`: read the superblock, replay every valid entry
 * through apply(ctx, ...), cut off (and zero on disk) a corrupt tail,
 * start a new epoch and write the superblock, durably.  A blank disk
 * (both superblock sectors zero), or any disk if `format` is set, gets a
 * fresh empty log.  `buf` (cap bytes, a multiple of KVLOG_SECTOR, at
 * least KVLOG_BUF_MIN) is the log's from now on.  *rep says what was
 * found.  Returns 0, -EINVAL (bad dev or buffer, disk too small),
 * -EUCLEAN (no valid superblock on a disk that is not blank, or a
 * superblock that does not fit the disk), the device's error, or apply's.
 */
int kvlog_open(struct kvlog *l, const struct kvlog_dev *dev, void *buf,
	       size_t cap, bool format, kvlog_apply_fn apply, void *ctx,
	       struct kvlog_report *rep);

/*
 * Append an entry of `type` with a payload of `len` bytes: *payload
 * points at the room for it, which the caller fills and then seals with
 * kvlog_seal before any other call on the log.  May write (not flush)
 * earlier pending entries to make room.  Returns 0, -E2BIG (len over
 * KVLOG_PAYLOAD_MAX), -ENOSPC (the active region is full: nothing was
 * appended; see kvlog_compact) or a device error (sticky).
 */
int kvlog_reserve(struct kvlog *l, unsigned int type, size_t len,
		  uint8_t **payload);

/* Complete the entry kvlog_reserve began (computes its checksum). */
void kvlog_seal(struct kvlog *l);

/*
 * Start a new, empty log in the active region (FLUSHALL): entries before
 * it, pending or durable, are gone once the next commit is durable.
 * Cannot fail; a later commit writes the superblock first.
 */
void kvlog_reset(struct kvlog *l);

/*
 * Make every entry appended so far (and a reset) durable: one write per
 * dev->max_io sectors, the last with flush; the superblock first if it
 * changed.  Returns 0 or a device error, which sticks: after it, every
 * call fails and nothing logged since the last commit may be
 * acknowledged.
 */
int kvlog_commit(struct kvlog *l);

/*
 * Compact: commit, then write a fresh log into the other region through
 * emit(ctx, l), which appends (kvlog_reserve/kvlog_seal) one entry per
 * live key and returns 0 or -errno; then switch the superblock to it,
 * durably.  If emit fails, or the snapshot does not fit (-ENOSPC), the
 * old log stays active and unchanged.  Returns 0, emit's error, -ENOSPC
 * or a device error (sticky).
 */
int kvlog_compact(struct kvlog *l, int (*emit)(void *ctx, struct kvlog *l),
		  void *ctx);

/* The counters. */
void kvlog_stats(const struct kvlog *l, struct kvlog_stats *st);

/* Bytes an entry with a payload of `len` bytes takes in the log. */
static inline uint64_t kvlog_entry_size(uint64_t len)
{
	return KVLOG_HDR + ((len + 7) & ~7ULL) + KVLOG_TRAILER;
}

#endif /* KVLOG_H */
