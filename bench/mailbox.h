/* SPDX-License-Identifier: MIT */
/*
 * mailbox.h - how bench_dirty asks the bench guest to dirty pages (and
 * test_netbuf asks it to send frames: `benchguest netsend`, where `first`
 * is the first sequence number and `count` the number of frames).
 *
 * Benchmark-only, outside the guest ABI: the guest (`benchguest dirty`)
 * allocates a page for this structure, prints its address, and spins on
 * `seq` (in guest mode, so the VM keeps running).  The host writes the
 * request fields straight into guest memory, then bumps `seq` with a
 * release store; the guest writes one word into each of `count` pages
 * from page `first` of its arena (wrapping), timing the writes with the
 * monotonic clock, then stores the time in `ns` and `seq` in `done`
 * (release).  Host writes to guest memory are not dirty-logged; the
 * guest's store to `done` dirties the mailbox page itself.
 *
 * This breaks the ABI's determinism rule (section 9: the VMM writes guest
 * memory only during hypercalls), which is fine for a benchmark and is why
 * no real guest may do this.
 */
#ifndef BENCH_MAILBOX_H
#define BENCH_MAILBOX_H

#include <stdint.h>

#define BENCH_MB_MAGIC 0x786f626c69616d62ULL /* "bmailbox" */

struct bench_mailbox {
	uint64_t magic; /* guest: BENCH_MB_MAGIC once it listens */
	uint64_t seq;   /* host: bumped to post a request */
	uint64_t first; /* host: first arena page to dirty */
	uint64_t count; /* host: pages to dirty (may exceed the arena: wraps) */
	uint64_t quit;  /* host: non-zero asks the guest to exit */
	uint64_t done;  /* guest: seq of the last request completed */
	uint64_t ns;    /* guest: its time for that request's writes */
	uint64_t aux;   /* guest: per-mode result (netsend: FT_EAGAIN waits
			 * so far) */
};

#endif /* BENCH_MAILBOX_H */
