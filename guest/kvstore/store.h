/* SPDX-License-Identifier: MIT */
/*
 * store.h - the kvstore's in-memory key-value table.
 *
 * A chained hash table: a fixed power-of-two bucket array given by the
 * caller, entries (key and value in one block) allocated from a kvmem
 * allocator.  Keys and values are byte strings of 0..KV_BULK_MAX bytes.
 * The hash is XXH64 with a per-boot seed, so clients cannot aim keys at
 * one bucket.  Writes are two-phase (prepare, then put or discard) so the
 * caller can log a change between allocating it and making it visible.
 * Single-threaded.
 */
#ifndef KV_STORE_H
#define KV_STORE_H

#include "kvmem.h"

struct kv_entry {
	struct kv_entry *next; /* bucket chain */
	uint32_t hash;	       /* high half of the key's hash */
	uint32_t klen;
	uint32_t vlen;
	uint8_t data[]; /* klen key bytes, then vlen value bytes */
};

struct kv_store {
	/* Read-only for users. */
	size_t count; /* keys */
	size_t bytes; /* key and value bytes of all keys */
	/* Private. */
	struct kvmem *mem;
	struct kv_entry **bucket;
	size_t mask;
	uint64_t seed;
};

static inline const uint8_t *kv_entry_key(const struct kv_entry *e)
{
	return e->data;
}

static inline uint8_t *kv_entry_val(struct kv_entry *e)
{
	return e->data + e->klen;
}

/*
 * Set up an empty store over `nbuckets` (a power of two) zeroed bucket
 * pointers at `buckets`, with entries from `mem` and hash seed `seed`.
 * Both stay the caller's and must outlive the store.  Returns 0 or
 * -EINVAL (nbuckets not a power of two).
 */
int kv_store_init(struct kv_store *s, struct kvmem *mem, void *buckets,
		  size_t nbuckets, uint64_t seed);

/* The entry for key[0..klen), or NULL. */
struct kv_entry *kv_store_get(const struct kv_store *s, const void *key,
			      size_t klen);

/*
 * Allocate an entry for key[0..klen) with room for a value of `vlen`
 * bytes (which the caller fills); it is not in the table yet.  Returns
 * NULL if memory is short.  Pass the entry to kv_store_put or
 * kv_store_discard, exactly once.
 */
struct kv_entry *kv_store_prepare(struct kv_store *s, const void *key,
				  size_t klen, size_t vlen);

/* Insert a prepared entry, replacing (and freeing) the key's old one. */
void kv_store_put(struct kv_store *s, struct kv_entry *e);

/* Free a prepared entry that will not be inserted. */
void kv_store_discard(struct kv_store *s, struct kv_entry *e);

/* Remove key[0..klen); true if it was there. */
bool kv_store_del(struct kv_store *s, const void *key, size_t klen);

/* Remove every key. */
void kv_store_clear(struct kv_store *s);

/*
 * Call fn(ctx, e) for each entry, in bucket order, until it returns
 * non-zero; returns that value, or 0.  fn must not change the store.
 */
int kv_store_foreach(const struct kv_store *s,
		     int (*fn)(void *ctx, const struct kv_entry *e), void *ctx);

#endif /* KV_STORE_H */
