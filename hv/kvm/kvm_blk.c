// SPDX-License-Identifier: MIT
/*
 * kvm_blk.c - the disk: a raw image file in 512-byte sectors.
 *
 * Reads and writes are synchronous pread/pwrite on the vCPU thread; flush
 * is fdatasync, so a write the guest saw flushed is on stable storage.  The
 * image is locked (flock) so that two VMs cannot share it by mistake.
 *
 * Write hook (hv_ops disk_write_hook, for disk replication): called with
 * each valid guest write before the pwrite, on the vCPU thread, under
 * hook_lock (see kvm_net.c for why that makes install/remove and pause
 * exact); -EAGAIN from it answers FT_EAGAIN with nothing written.  While
 * a hook is installed, a write or flush lets a pause through while the
 * host does the I/O (io_park).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

int kvm_blk_init(struct hv_domain *d, const char *path, uint64_t size)
{
	struct kvm_blk *b = &d->blk;
	struct stat sb;
	int err;

	b->fd = -1;
	if (!path)
		return 0;
	if (size % FT_BLOCK_SECTOR) {
		log_err("disk size %llu is not a multiple of %d",
			(unsigned long long)size, FT_BLOCK_SECTOR);
		return -EINVAL;
	}
	b->fd = open(path, O_RDWR | O_CLOEXEC | (size ? O_CREAT : 0), 0600);
	if (b->fd < 0) {
		err = -errno;
		log_err("disk %s: %s", path, strerror(errno));
		return err;
	}
	if (fstat(b->fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		log_err("disk %s: not a regular file", path);
		return -EINVAL;
	}
	/* A new image (empty, under our lock) gets the configured size; an
	 * existing one is never resized behind its owner's back. */
	if (size && (uint64_t)sb.st_size != size) {
		if (sb.st_size == 0 && flock(b->fd, LOCK_EX | LOCK_NB) == 0 &&
		    ftruncate(b->fd, (off_t)size) == 0) {
			sb.st_size = (off_t)size;
		} else {
			log_err("disk %s is %lld bytes, but its configured size "
				"is %llu", path, (long long)sb.st_size,
				(unsigned long long)size);
			return -EINVAL;
		}
	}
	if (sb.st_size <= 0 || sb.st_size % FT_BLOCK_SECTOR) {
		log_err("disk %s: %lld bytes, not a positive multiple of %d",
			path, (long long)sb.st_size, FT_BLOCK_SECTOR);
		return -EINVAL;
	}
	if (flock(b->fd, LOCK_EX | LOCK_NB) < 0) {
		err = -errno;
		log_err("disk %s: %s", path,
			errno == EWOULDBLOCK ? "in use by another VM"
					     : strerror(errno));
		return err;
	}
	b->sectors = (uint64_t)sb.st_size / FT_BLOCK_SECTOR;
	b->nr_blocks = ((uint64_t)sb.st_size + HV_DISK_BLOCK - 1) / HV_DISK_BLOCK;
	b->dirty = calloc((b->nr_blocks + 63) / 64, sizeof(uint64_t));
	if (!b->dirty)
		return -ENOMEM;
	return 0;
}

void kvm_blk_fini(struct hv_domain *d)
{
	if (d->blk.fd >= 0)
		close(d->blk.fd);
	free(d->blk.dirty);
}

void kvm_blk_log(struct hv_domain *d, bool on)
{
	struct kvm_blk *b = &d->blk;
	uint64_t i;

	if (b->fd < 0)
		return;
	/* Start from an empty set: the caller copies everything once. */
	for (i = 0; on && i < (b->nr_blocks + 63) / 64; i++)
		__atomic_store_n(&b->dirty[i], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&b->logging, on, __ATOMIC_SEQ_CST);
}

/* Log a guest write of [off, off + len) (len > 0). */
static void blk_mark(struct kvm_blk *b, uint64_t off, uint64_t len)
{
	uint64_t i, last = (off + len - 1) / HV_DISK_BLOCK;

	if (!__atomic_load_n(&b->logging, __ATOMIC_SEQ_CST))
		return;
	for (i = off / HV_DISK_BLOCK; i <= last; i++)
		__atomic_fetch_or(&b->dirty[i / 64], 1ULL << (i % 64),
				  __ATOMIC_SEQ_CST);
}

int kvm_disk_info(struct hv_domain *d, unsigned idx, uint64_t *size)
{
	if (idx || d->blk.fd < 0)
		return -ENOENT;
	*size = d->blk.sectors * FT_BLOCK_SECTOR;
	return 0;
}

int kvm_disk_dirty_fetch(struct hv_domain *d, unsigned idx, uint64_t *bitmap,
			 uint64_t nr_blocks)
{
	struct kvm_blk *b = &d->blk;
	uint64_t i;

	if (idx || b->fd < 0)
		return -ENOENT;
	if (nr_blocks != b->nr_blocks)
		return -EINVAL;
	for (i = 0; i < (nr_blocks + 63) / 64; i++)
		bitmap[i] |= __atomic_exchange_n(&b->dirty[i], 0,
						 __ATOMIC_SEQ_CST);
	return 0;
}

/* pread or pwrite all of [off, off + len) of the image. */
static int blk_rw(struct kvm_blk *b, uint64_t off, void *buf, size_t len,
		  bool write)
{
	size_t done = 0;
	ssize_t n;

	if (off % FT_BLOCK_SECTOR || len % FT_BLOCK_SECTOR ||
	    off > b->sectors * FT_BLOCK_SECTOR ||
	    len > b->sectors * FT_BLOCK_SECTOR - off)
		return -EINVAL;
	while (done < len) {
		n = write ? pwrite(b->fd, (char *)buf + done, len - done,
				   (off_t)(off + done))
			  : pread(b->fd, (char *)buf + done, len - done,
				  (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? -errno : -EIO;

			log_err("disk image %s at byte %llu: %s",
				write ? "write" : "read",
				(unsigned long long)(off + done),
				strerror(-err));
			return err;
		}
		done += (size_t)n;
	}
	return 0;
}

int kvm_disk_read(struct hv_domain *d, unsigned idx, uint64_t off, void *buf,
		  size_t len)
{
	if (idx || d->blk.fd < 0)
		return -ENOENT;
	return blk_rw(&d->blk, off, buf, len, false);
}

int kvm_disk_write(struct hv_domain *d, unsigned idx, uint64_t off,
		   const void *buf, size_t len)
{
	if (idx || d->blk.fd < 0)
		return -ENOENT;
	return blk_rw(&d->blk, off, (void *)buf, len, true);
}

int kvm_disk_writeback(struct hv_domain *d, unsigned idx)
{
	if (idx || d->blk.fd < 0)
		return -ENOENT;
	/* Whole file; pages already under write-out are left alone. */
	if (sync_file_range(d->blk.fd, 0, 0, SYNC_FILE_RANGE_WRITE) < 0)
		return -errno;
	return 0;
}

int64_t kvm_blk_info(struct hv_domain *d, struct ft_hc_block_info *a)
{
	if (d->blk.fd < 0)
		return -FT_ENOSYS;
	memset(a, 0, sizeof(*a) - sizeof(a->ret));
	a->sectors = d->blk.sectors;
	a->sector_size = FT_BLOCK_SECTOR;
	a->max_io = FT_BLOCK_IO_MAX;
	return 0;
}

/*
 * Protected (a write hook is installed), a write or flush can take the
 * host milliseconds (fdatasync), and a checkpoint's pause must not wait for
 * it.  The hook has already taken the write for the backup, where it is
 * applied with the epoch: so the call may be recorded there as having
 * returned 0 - the backup's image has the data, and it acknowledges an
 * epoch once that is in its page cache, which is all any write or flush of
 * a committed epoch gets there (docs/checkpoint.md, Disk replication).  So
 * before the host I/O we write that result, complete the port I/O and let
 * the vCPU count as parked (kvm_vcpu_block_begin); after it we wait out a
 * pause and write the real result, which is what the guest sees here.
 * Unprotected, or before the hook is installed, the vCPU stays busy as
 * before and a pause waits.  Returns whether the vCPU parked.
 */
static bool io_park(struct hv_domain *d, void *blk, size_t size,
		    int64_t *ret)
{
	*ret = 0;
	kvm_dirty_mark(d, (uint64_t)((uint8_t *)blk - d->mem), size);
	return kvm_vcpu_block_begin(d);
}

/* The guest's write of [off, off + len) from buf, with fdatasync if
 * `flush`.  0 or -FT_EIO (logged); *wrote: all of it reached the image
 * (the flush may still have failed). */
static int64_t blk_pwrite(struct kvm_blk *b, const uint8_t *buf, off_t off,
			  uint64_t len, bool flush, uint64_t sector,
			  bool *wrote)
{
	uint64_t done = 0;
	ssize_t n;

	*wrote = false;
	while (done < len) {
		n = pwrite(b->fd, buf + done, len - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_err("disk write at sector %llu: %s",
				(unsigned long long)sector,
				n < 0 ? strerror(errno) : "unexpected end");
			return -FT_EIO;
		}
		done += (uint64_t)n;
	}
	*wrote = true;
	if (flush && fdatasync(b->fd) < 0) {
		log_err("disk flush: %s", strerror(errno));
		return -FT_EIO;
	}
	return 0;
}

int64_t kvm_blk_io(struct hv_domain *d, struct ft_hc_block_io *a, bool write)
{
	struct kvm_blk *b = &d->blk;
	uint64_t len = (uint64_t)a->count * FT_BLOCK_SECTOR, done = 0;
	off_t off = (off_t)(a->sector * FT_BLOCK_SECTOR);
	bool flush = a->flags & FT_BLOCK_F_FLUSH, hooked = false, wrote;
	uint64_t sector = a->sector;
	int64_t rc;
	uint8_t *buf;
	ssize_t n;

	if (b->fd < 0)
		return -FT_ENOSYS;
	if (a->flags & ~(write ? FT_BLOCK_F_FLUSH : 0))
		return -FT_EINVAL;
	if (a->count == 0 || len > FT_BLOCK_IO_MAX)
		return -FT_E2BIG;
	if (a->sector >= b->sectors || a->count > b->sectors - a->sector)
		return -FT_EINVAL;
	buf = kvm_guest_ptr(d, a->buf, len);
	if (!buf)
		return -FT_EFAULT;
	if (write) {
		int r = 0;

		pthread_mutex_lock(&b->hook_lock);
		if (b->hook) {
			r = b->hook(b->hook_ctx, 0, (uint64_t)off, buf, len);
			hooked = !r;
		}
		pthread_mutex_unlock(&b->hook_lock);
		if (r == -EAGAIN)
			return -FT_EAGAIN; /* nothing written; guest retries */
		if (r < 0) {
			log_err("disk write at sector %llu: refused by the "
				"write hook: %s",
				(unsigned long long)a->sector, strerror(-r));
			return -FT_EIO;
		}
		/* Counted before a pause may save them (see io_park). */
		b->stats.writes++;
		b->stats.bytes_written += len;
		if (flush)
			b->stats.flushes++;
		if (hooked && io_park(d, a, sizeof(*a), &a->ret)) {
			/* Parked: `a` and the guest's buffer are only read
			 * until kvm_vcpu_block_end. */
			rc = blk_pwrite(b, buf, off, len, flush, sector,
					&wrote);
			kvm_vcpu_block_end(d);
		} else {
			rc = blk_pwrite(b, buf, off, len, flush, sector,
					&wrote);
		}
		/* Even a failed write may have changed the image. */
		blk_mark(b, (uint64_t)off, len);
		if (rc && !wrote) {
			b->stats.writes--;
			b->stats.bytes_written -= len;
		}
		if (rc && flush)
			b->stats.flushes--;
		return rc;
	}
	while (done < len) {
		n = pread(b->fd, buf + done, len - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_err("disk read at sector %llu: %s",
				(unsigned long long)a->sector,
				n < 0 ? strerror(errno) : "unexpected end");
			return -FT_EIO;
		}
		done += (uint64_t)n;
	}
	b->stats.reads++;
	b->stats.bytes_read += len;
	kvm_dirty_mark(d, a->buf, len);
	return 0;
}

int kvm_disk_write_hook(struct hv_domain *d, hv_disk_wr_fn fn, void *ctx)
{
	struct kvm_blk *b = &d->blk;

	if (fn && b->fd < 0)
		return -ENOENT; /* no disk: the caller decides if that is bad */
	pthread_mutex_lock(&b->hook_lock);
	b->hook = fn;
	b->hook_ctx = fn ? ctx : NULL;
	pthread_mutex_unlock(&b->hook_lock);
	return 0;
}

int64_t kvm_blk_flush(struct hv_domain *d, struct ft_hc_block_flush *a)
{
	struct kvm_blk *b = &d->blk;
	bool hooked;
	int r;

	if (b->fd < 0)
		return -FT_ENOSYS;
	if (a->reserved)
		return -FT_EINVAL;
	pthread_mutex_lock(&b->hook_lock);
	hooked = b->hook != NULL;
	pthread_mutex_unlock(&b->hook_lock);
	b->stats.flushes++; /* before a pause may save it (see io_park) */
	if (hooked && io_park(d, a, sizeof(*a), &a->ret)) {
		r = fdatasync(b->fd);
		kvm_vcpu_block_end(d);
	} else {
		r = fdatasync(b->fd);
	}
	if (r < 0) {
		log_err("disk flush: %s", strerror(errno));
		b->stats.flushes--;
		return -FT_EIO;
	}
	return 0;
}

/* Blob, version 1: geometry and counters.  The data itself lives in the
 * image file, which the restoring side must have (same size). */
struct blk_blob {
	uint64_t sectors;
	uint32_t sector_size;
	uint32_t reserved;
	struct kvm_blk_stats stats;
};
_Static_assert(sizeof(struct blk_blob) == 56, "blk_blob");

int kvm_blk_save(struct hv_domain *d, hv_dev_cb cb, void *ctx)
{
	struct kvm_blk *b = &d->blk;
	struct blk_blob bl = { .sectors = b->sectors,
			       .sector_size = FT_BLOCK_SECTOR,
			       .stats = b->stats };
	struct hv_dev_rec rec = { .type = HV_DEV_BLOCK, .version = 1,
				  .len = sizeof(bl), .data = &bl };

	if (b->fd < 0)
		return 0;
	return cb(ctx, &rec);
}

int kvm_blk_load(struct hv_domain *d, const struct hv_dev_rec *rec)
{
	struct kvm_blk *b = &d->blk;
	struct blk_blob bl;

	if (b->fd < 0) {
		log_err("device load: the saved VM has a disk; give it its "
			"image with --disk");
		return -EINVAL;
	}
	if (rec->version != 1 || rec->len != sizeof(bl)) {
		log_err("device load: disk state version %u, %u bytes; "
			"expected version 1, %zu bytes", rec->version, rec->len,
			sizeof(bl));
		return -EINVAL;
	}
	memcpy(&bl, rec->data, sizeof(bl));
	if (bl.sector_size != FT_BLOCK_SECTOR || bl.reserved ||
	    bl.sectors != b->sectors) {
		log_err("device load: the saved disk has %llu sectors of %u "
			"bytes; --disk has %llu of %d",
			(unsigned long long)bl.sectors, bl.sector_size,
			(unsigned long long)b->sectors, FT_BLOCK_SECTOR);
		return -EINVAL;
	}
	b->stats = bl.stats;
	return 0;
}
