// SPDX-License-Identifier: MIT
/*
 * kvlog.c - the kvstore's write-ahead log (kvlog.h, docs/kvstore.md).
 *
 * Entry layout (little-endian, 8-aligned in the region):
 *
 *	0  u32 magic  KVLOG_ENTRY_MAGIC     16 u64 seq
 *	4  u16 type   KVLOG_SET/DEL         24 u64 epoch
 *	6  u16 flags  0                     32 payload, zero-padded to 8
 *	8  u32 len    payload bytes         .. u64 XXH64 of all bytes before
 *	12 u32 reserved 0
 *
 * The memory buffer mirrors the disk from buf_sector on: buf[0..head) are
 * the durable bytes of the sector the log ends in, buf[head..len) the
 * entries appended since the last commit.  A commit writes
 * buf[0..len) rounded up to whole sectors (zero-padded), then keeps the
 * last partial sector as the new head.  Sector writes are assumed
 * atomic, as the VMM's are (one pwrite per call).
 */
#include "kvlog.h"

#include "kvhash.h"

#define SECTOR KVLOG_SECTOR
#define SB_CSUM_LEN offsetof(struct kvlog_sb, checksum)

static uint64_t region_start(const struct kvlog_sb *sb)
{
	return 2 + sb->region * sb->region_sectors;
}

static uint64_t region_bytes(const struct kvlog *l)
{
	return l->sb.region_sectors * SECTOR;
}

/* Byte offset of the log's end (pending entries included). */
static uint64_t tail(const struct kvlog *l)
{
	return (l->buf_sector - region_start(&l->sb)) * SECTOR + l->len;
}

static bool is_zero(const uint8_t *p, size_t n)
{
	while (n--)
		if (*p++)
			return false;
	return true;
}

static int dev_read(struct kvlog *l, uint64_t sector, uint8_t *buf,
		    uint64_t count)
{
	while (count) {
		uint32_t n = count < l->dev.max_io ? count : l->dev.max_io;
		int r = l->dev.read(l->dev.ctx, sector, buf, n);

		if (r)
			return l->err = r < 0 ? r : -EIO;
		sector += n;
		buf += (size_t)n * SECTOR;
		count -= n;
	}
	return 0;
}

/* Write `count` sectors; with `flush`, the last call flushes. */
static int dev_write(struct kvlog *l, uint64_t sector, const uint8_t *buf,
		     uint64_t count, bool flush)
{
	while (count) {
		uint32_t n = count < l->dev.max_io ? count : l->dev.max_io;
		int r = l->dev.write(l->dev.ctx, sector, buf, n,
				     flush && n == count);

		if (r)
			return l->err = r < 0 ? r : -EIO;
		sector += n;
		buf += (size_t)n * SECTOR;
		count -= n;
	}
	return 0;
}

/* Decode and check one superblock copy. */
static bool sb_decode(const uint8_t *sec, struct kvlog_sb *sb)
{
	memcpy(sb, sec, sizeof(*sb));
	return sb->magic == KVLOG_SB_MAGIC && sb->version == KVLOG_VERSION &&
	       sb->checksum == kv_xxh64(sec, SB_CSUM_LEN, 0) &&
	       sb->region <= 1 && sb->region_sectors >= KVLOG_MIN_REGION &&
	       sb->region_sectors <= UINT64_MAX / 4 / SECTOR &&
	       sb->start_epoch <= sb->epoch &&
	       is_zero(sb->reserved, sizeof(sb->reserved));
}

/* Write the superblock into the slot of its epoch's parity, durably: the
 * other slot keeps the previous one in case this write is torn. */
static int write_sb(struct kvlog *l)
{
	int r;

	l->sb.checksum = 0;
	memcpy(l->sbuf, &l->sb, sizeof(l->sb));
	l->sb.checksum = kv_xxh64(l->sbuf, SB_CSUM_LEN, 0);
	kv_put64(l->sbuf + SB_CSUM_LEN, l->sb.checksum);
	r = dev_write(l, l->sb.epoch & 1, l->sbuf, 1, true);
	if (!r)
		l->sb_dirty = false;
	return r;
}

/*
 * Write the superblock if it changed, then buf[0..len) rounded up to
 * sectors; keep the last partial sector.  Only kvlog_reserve writes
 * without `flush`, and it appends right after, so the next flushing
 * write covers every unflushed one.
 */
static int write_pending(struct kvlog *l, bool flush)
{
	size_t n, full;
	int r;

	if (l->err)
		return l->err;
	if (l->sb_dirty) {
		r = write_sb(l);
		if (r)
			return r;
	}
	if (l->len == l->head)
		return 0;
	n = (l->len + SECTOR - 1) / SECTOR;
	memset(l->buf + l->len, 0, n * SECTOR - l->len);
	r = dev_write(l, l->buf_sector, l->buf, n, flush);
	if (r)
		return r;
	full = l->len / SECTOR * SECTOR;
	memmove(l->buf, l->buf + full, l->len - full);
	l->buf_sector += full / SECTOR;
	l->head = l->len = l->sealed = l->len - full;
	return 0;
}

/* ---- Open and replay -------------------------------------------------- */

/* A window of the region in the buffer: bytes [start, start + len). */
struct window {
	uint64_t start, len;
};

/* Make bytes [pos, pos + n) of the region (pos + n <= region size,
 * n + SECTOR <= cap) present in the window, reading whole sectors. */
static int window_get(struct kvlog *l, struct window *w, uint64_t pos,
		      uint64_t n)
{
	uint64_t keep = pos / SECTOR * SECTOR, end, more;

	if (pos >= w->start && pos + n <= w->start + w->len)
		return 0;
	if (keep >= w->start && keep < w->start + w->len) {
		size_t skip = keep - w->start;

		memmove(l->buf, l->buf + skip, w->len - skip);
		w->len -= skip;
	} else {
		w->len = 0;
	}
	w->start = keep;
	end = w->start + w->len;
	more = l->cap - w->len;
	if (more > region_bytes(l) - end)
		more = region_bytes(l) - end;
	more = more / SECTOR * SECTOR;
	if (dev_read(l, region_start(&l->sb) + end / SECTOR, l->buf + w->len,
		     more / SECTOR))
		return l->err;
	w->len += more;
	return 0;
}

/*
 * Apply the active log's entries in order; stop quietly at a zero magic
 * (never written) or at an entry of an older epoch than its predecessor
 * (left over from an earlier boot or log generation); stop with `why` at
 * anything else that is not the log's intact continuation.
 */
static int replay(struct kvlog *l, kvlog_apply_fn apply, void *ctx,
		  struct kvlog_report *rep)
{
	uint64_t rbytes = region_bytes(l), pos = 0, seq = l->sb.base_seq;
	uint64_t prev_epoch = l->sb.start_epoch, count = 0, head;
	struct window w = {0, 0};
	const char *why = NULL;
	int r;

	while (rbytes - pos >= KVLOG_HDR + KVLOG_TRAILER) {
		uint64_t esize, epoch;
		uint32_t len;
		const uint8_t *p;

		r = window_get(l, &w, pos, KVLOG_HDR);
		if (r)
			return r;
		p = l->buf + (pos - w.start);
		if (kv_get32(p) == 0)
			break;
		if (kv_get32(p) != KVLOG_ENTRY_MAGIC) {
			why = "bad magic";
			break;
		}
		len = kv_get32(p + 8);
		esize = kvlog_entry_size(len);
		if (len > KVLOG_PAYLOAD_MAX || esize > rbytes - pos) {
			why = "bad length";
			break;
		}
		r = window_get(l, &w, pos, esize);
		if (r)
			return r;
		p = l->buf + (pos - w.start);
		if (kv_get64(p + esize - KVLOG_TRAILER) !=
		    kv_xxh64(p, esize - KVLOG_TRAILER, 0)) {
			why = "bad checksum";
			break;
		}
		epoch = kv_get64(p + 24);
		if (epoch < prev_epoch)
			break;
		if (epoch > l->sb.epoch) {
			why = "epoch from the future";
			break;
		}
		if (kv_get64(p + 16) != seq) {
			why = "out-of-sequence entry";
			break;
		}
		if (kv_get16(p + 6) || kv_get32(p + 12) ||
		    !is_zero(p + KVLOG_HDR + len,
			     esize - KVLOG_HDR - KVLOG_TRAILER - len)) {
			why = "reserved bits set";
			break;
		}
		if (kv_get16(p + 4) != KVLOG_SET &&
		    kv_get16(p + 4) != KVLOG_DEL) {
			why = "unknown entry type";
			break;
		}
		r = apply(ctx, kv_get16(p + 4), p + KVLOG_HDR, len);
		if (r == -EBADMSG) {
			why = "bad payload";
			break;
		}
		if (r)
			return r;
		pos += esize;
		seq++;
		prev_epoch = epoch;
		count++;
	}

	/* The buffer starts as the sector the log ends in. */
	head = pos % SECTOR;
	if (head) {
		r = window_get(l, &w, pos - head, head);
		if (r)
			return r;
		memmove(l->buf, l->buf + (pos - head - w.start), head);
	}
	memset(l->buf + head, 0, SECTOR - head);
	l->buf_sector = region_start(&l->sb) + pos / SECTOR;
	l->head = l->len = l->sealed = head;
	l->next_seq = seq;
	l->entries = count;
	rep->entries = count;
	rep->end = pos;
	rep->why = why;
	rep->truncated = why != NULL;
	return 0;
}

/* Invalidate both superblocks and both regions' first sectors, then set
 * up an empty log in region 0 (written by kvlog_open's epoch bump). */
static int format(struct kvlog *l)
{
	uint64_t h = (l->dev.sectors - 2) / 2;
	int r;

	memset(l->buf, 0, 2 * SECTOR);
	r = dev_write(l, 0, l->buf, 2, false);
	if (!r)
		r = dev_write(l, 2, l->buf, 1, false);
	if (!r)
		r = dev_write(l, 2 + h, l->buf, 1, true);
	if (r)
		return r;
	l->sb = (struct kvlog_sb){
		.magic = KVLOG_SB_MAGIC,
		.version = KVLOG_VERSION,
		.region_sectors = h,
		.epoch = 0,
		.start_epoch = 1,
		.base_seq = 1,
	};
	return 0;
}

int kvlog_open(struct kvlog *l, const struct kvlog_dev *dev, void *buf,
	       size_t cap, bool force_format, kvlog_apply_fn apply, void *ctx,
	       struct kvlog_report *rep)
{
	struct kvlog_sb sb0, sb1;
	bool ok0, ok1;
	int r;

	memset(l, 0, sizeof(*l));
	memset(rep, 0, sizeof(*rep));
	if (!dev->read || !dev->write || !dev->max_io || !buf ||
	    dev->sectors < 2 + 2 * KVLOG_MIN_REGION || cap < KVLOG_BUF_MIN ||
	    cap % SECTOR)
		return -EINVAL;
	l->dev = *dev;
	l->buf = buf;
	l->cap = cap;
	r = dev_read(l, 0, l->buf, 2);
	if (r)
		return r;
	ok0 = sb_decode(l->buf, &sb0);
	ok1 = sb_decode(l->buf + SECTOR, &sb1);
	if (force_format || (!ok0 && !ok1 && is_zero(l->buf, 2 * SECTOR))) {
		r = format(l);
		if (r)
			return r;
		rep->formatted = true;
	} else if (ok0 && (!ok1 || sb0.epoch >= sb1.epoch)) {
		l->sb = sb0;
	} else if (ok1) {
		l->sb = sb1;
	} else {
		return -EUCLEAN;
	}
	if (l->sb.region_sectors > (dev->sectors - 2) / 2)
		return -EUCLEAN;
	r = replay(l, apply, ctx, rep);
	if (r)
		return r;
	/* Zero the cut-off tail, durably with the superblock: from the cut
	 * on, as far as one commit writes (the buffer's size), so the junk
	 * of a torn commit is gone.  (Junk further on, or when these writes
	 * are lost, is never trusted anyway: its epoch is older.) */
	if (rep->truncated) {
		uint64_t end = region_start(&l->sb) + l->sb.region_sectors;
		uint64_t n = l->cap / SECTOR;

		if (n > end - l->buf_sector)
			n = end - l->buf_sector;
		memset(l->buf + l->head, 0, l->cap - l->head);
		r = dev_write(l, l->buf_sector, l->buf, n, false);
		if (r)
			return r;
	}
	l->sb.epoch++;
	r = write_sb(l);
	if (r)
		return r;
	rep->epoch = l->sb.epoch;
	return 0;
}

/* ---- Appending -------------------------------------------------------- */

int kvlog_reserve(struct kvlog *l, unsigned int type, size_t len,
		  uint8_t **payload)
{
	uint64_t esize;
	uint8_t *p;
	int r;

	if (l->err)
		return l->err;
	if (len > KVLOG_PAYLOAD_MAX)
		return -E2BIG;
	esize = kvlog_entry_size(len);
	if (esize > region_bytes(l) - tail(l))
		return -ENOSPC;
	if (esize > l->cap - l->len) {
		r = write_pending(l, false);
		if (r)
			return r;
	}
	p = l->buf + l->len;
	kv_put32(p, KVLOG_ENTRY_MAGIC);
	kv_put16(p + 4, (uint16_t)type);
	kv_put16(p + 6, 0);
	kv_put32(p + 8, (uint32_t)len);
	kv_put32(p + 12, 0);
	kv_put64(p + 16, l->next_seq);
	kv_put64(p + 24, l->sb.epoch);
	memset(p + KVLOG_HDR + len, 0, esize - KVLOG_HDR - KVLOG_TRAILER - len);
	*payload = p + KVLOG_HDR;
	l->len += esize;
	l->next_seq++;
	l->entries++;
	return 0;
}

void kvlog_seal(struct kvlog *l)
{
	uint8_t *p = l->buf + l->sealed;
	uint64_t esize = kvlog_entry_size(kv_get32(p + 8));

	kv_put64(p + esize - KVLOG_TRAILER,
		 kv_xxh64(p, esize - KVLOG_TRAILER, 0));
	l->sealed += esize;
}

void kvlog_reset(struct kvlog *l)
{
	l->sb.epoch++;
	l->sb.start_epoch = l->sb.epoch;
	l->sb.base_seq = l->next_seq;
	l->buf_sector = region_start(&l->sb);
	l->head = l->len = l->sealed = 0;
	l->entries = 0;
	l->sb_dirty = true;
}

/* True if a commit has something to write. */
static bool kvlog_dirty(const struct kvlog *l)
{
	return l->sb_dirty || l->len > l->head;
}

int kvlog_commit(struct kvlog *l)
{
	int r;

	if (l->err || !kvlog_dirty(l))
		return l->err;
	r = write_pending(l, true);
	if (!r)
		l->commits++;
	return r;
}

int kvlog_compact(struct kvlog *l, int (*emit)(void *ctx, struct kvlog *l),
		  void *ctx)
{
	uint8_t part[SECTOR];
	struct kvlog saved;
	int r;

	r = kvlog_commit(l);
	if (r)
		return r;
	saved = *l;
	memcpy(part, l->buf, l->head);
	l->sb.region ^= 1;
	l->sb.epoch++;
	l->sb.start_epoch = l->sb.epoch;
	l->sb.base_seq = l->next_seq;
	l->buf_sector = region_start(&l->sb);
	l->head = l->len = l->sealed = 0;
	l->entries = 0;
	r = emit(ctx, l);
	if (!r)
		r = write_pending(l, true);
	if (!r)
		r = write_sb(l);
	if (r && !l->err) {
		/* Back to the old log, but under a new epoch (written before
		 * its next entry): the failed snapshot's entries, and any
		 * later snapshot's leftovers, must never pass for a newer
		 * snapshot's continuation. */
		uint64_t epoch = l->sb.epoch;

		*l = saved;
		memcpy(l->buf, part, l->head);
		l->sb.epoch = epoch;
		l->sb_dirty = true;
		return r;
	}
	if (r)
		return r;
	l->compactions++;
	return 0;
}

void kvlog_stats(const struct kvlog *l, struct kvlog_stats *st)
{
	*st = (struct kvlog_stats){
		.entries = l->entries,
		.bytes = tail(l),
		.capacity = region_bytes(l),
		.epoch = l->sb.epoch,
		.commits = l->commits,
		.compactions = l->compactions,
	};
}
