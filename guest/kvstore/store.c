// SPDX-License-Identifier: MIT
/*
 * store.c - the chained hash table of store.h.
 */
#include "store.h"

#include "kvhash.h"

static size_t entry_size(size_t klen, size_t vlen)
{
	return offsetof(struct kv_entry, data) + klen + vlen;
}

int kv_store_init(struct kv_store *s, struct kvmem *mem, void *buckets,
		  size_t nbuckets, uint64_t seed)
{
	if (!nbuckets || nbuckets & (nbuckets - 1))
		return -EINVAL;
	*s = (struct kv_store){
		.mem = mem,
		.bucket = buckets,
		.mask = nbuckets - 1,
		.seed = seed,
	};
	return 0;
}

/* The bucket of key[0..klen), and the high half of its hash in *tag. */
static struct kv_entry **slot(const struct kv_store *s, const void *key,
			      size_t klen, uint32_t *tag)
{
	uint64_t h = kv_xxh64(key, klen, s->seed);

	*tag = (uint32_t)(h >> 32);
	return &s->bucket[h & s->mask];
}

/* The link that points at key's entry (or at the chain's NULL end). */
static struct kv_entry **find(const struct kv_store *s, const void *key,
			      size_t klen, uint32_t *tag)
{
	struct kv_entry **pp = slot(s, key, klen, tag);

	for (; *pp; pp = &(*pp)->next) {
		const struct kv_entry *e = *pp;

		if (e->hash == *tag && e->klen == klen &&
		    !memcmp(e->data, key, klen))
			break;
	}
	return pp;
}

struct kv_entry *kv_store_get(const struct kv_store *s, const void *key,
			      size_t klen)
{
	uint32_t tag;

	return *find(s, key, klen, &tag);
}

struct kv_entry *kv_store_prepare(struct kv_store *s, const void *key,
				  size_t klen, size_t vlen)
{
	struct kv_entry *e;

	if (klen > UINT32_MAX || vlen > UINT32_MAX)
		return NULL;
	e = kvmem_alloc(s->mem, entry_size(klen, vlen));
	if (!e)
		return NULL;
	e->next = NULL;
	e->klen = (uint32_t)klen;
	e->vlen = (uint32_t)vlen;
	memcpy(e->data, key, klen);
	return e;
}

static void free_entry(struct kv_store *s, struct kv_entry *e)
{
	kvmem_free(s->mem, e, entry_size(e->klen, e->vlen));
}

void kv_store_put(struct kv_store *s, struct kv_entry *e)
{
	struct kv_entry **pp = find(s, e->data, e->klen, &e->hash), *old = *pp;

	if (old) {
		e->next = old->next;
		s->bytes -= old->klen + old->vlen;
		free_entry(s, old);
	} else {
		e->next = NULL;
		s->count++;
	}
	*pp = e;
	s->bytes += e->klen + e->vlen;
}

void kv_store_discard(struct kv_store *s, struct kv_entry *e)
{
	free_entry(s, e);
}

bool kv_store_del(struct kv_store *s, const void *key, size_t klen)
{
	uint32_t tag;
	struct kv_entry **pp = find(s, key, klen, &tag), *e = *pp;

	if (!e)
		return false;
	*pp = e->next;
	s->count--;
	s->bytes -= e->klen + e->vlen;
	free_entry(s, e);
	return true;
}

void kv_store_clear(struct kv_store *s)
{
	size_t i;

	for (i = 0; i <= s->mask && s->count; i++) {
		struct kv_entry *e = s->bucket[i], *next;

		for (; e; e = next) {
			next = e->next;
			free_entry(s, e);
			s->count--;
		}
		s->bucket[i] = NULL;
	}
	s->bytes = 0;
}

int kv_store_foreach(const struct kv_store *s,
		     int (*fn)(void *ctx, const struct kv_entry *e), void *ctx)
{
	size_t i;
	int r;

	for (i = 0; i <= s->mask; i++) {
		const struct kv_entry *e;

		for (e = s->bucket[i]; e; e = e->next) {
			r = fn(ctx, e);
			if (r)
				return r;
		}
	}
	return 0;
}
