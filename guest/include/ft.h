/* SPDX-License-Identifier: MIT */
/*
 * ft.h - the ftengine guest runtime: everything a guest program may use.
 *
 * Guests are freestanding (no libc): this header provides the hypercall
 * wrappers of docs/guest-abi.md, a small libc subset and a few helpers.
 * The runtime's entry point parses the command line and calls
 *
 *	int main(int argc, char **argv);
 *
 * with argv[0] the program's name (fixed at build time) and argv[1..] the
 * blank-separated words of the command line; main's return value becomes
 * the VM's exit status.  Single-threaded; nothing here is reentrant.
 */
#ifndef FT_H
#define FT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ftabi.h"

#define FT_PAGE_SIZE 4096UL
#define FT_NSEC_PER_SEC 1000000000ULL

int main(int argc, char **argv);

/* ---- Boot ------------------------------------------------------------- */

/* The boot information the VMM passed at entry (validated by the runtime
 * before main runs). */
const struct ft_boot_info *ft_boot_info(void);

/* ---- Hypercalls ------------------------------------------------------- */

/*
 * Issue hypercall `nr` with the argument block at guest-physical address
 * `block` (identity-mapped: a pointer cast to uint64_t).  Returns 0 if the
 * VMM accepted the block (the call's result is then in the block's `ret`),
 * or the negative FT_E* error the VMM left in %rax when it could not use
 * the block.  Raw access, for tests of the ABI; programs use the wrappers.
 */
static inline int64_t ft_hypercall(unsigned int nr, uint64_t block)
{
	uint64_t rax = block;

	__asm__ volatile("outl %%eax, %%dx"
			 : "+a"(rax)
			 : "d"((uint16_t)(FT_HC_PORT_BASE + nr))
			 : "memory");
	return rax == block ? 0 : (int64_t)rax;
}

/* Write `len` bytes to the console, in FT_CONSOLE_MAX pieces.  Returns 0
 * or -FT_E* from the first piece that failed.  Does not flush printf's
 * buffer: mixing the two is the caller's business (see ft_flush). */
int ft_console_write(const void *buf, size_t len);

/* Monotonic clock, ns since first boot; never goes backwards.  Costs an
 * exit (~25 us): do not call it per item of a tight loop. */
uint64_t ft_clock_mono(void);

/* Wall clock, ns since the Unix epoch, clamped monotonic by the VMM. */
uint64_t ft_clock_wall(void);

/* Block until an input is ready or the monotonic clock reaches
 * `deadline_ns`; may return early.  Returns the FT_POLL_* ready set (0 at
 * a timeout or an early return). */
uint64_t ft_poll(uint64_t deadline_ns);

/* Sleep until the monotonic clock reaches `deadline_ns`, ignoring inputs
 * and early returns. */
void ft_sleep_until(uint64_t deadline_ns);

/* Sleep for at least `ns` nanoseconds. */
void ft_sleep_ns(uint64_t ns);

/* ---- Devices (docs/guest-abi.md, section 8) ---------------------------- */

/*
 * While the host holds the VM's output (checkpointing), FT_HC_NET_SEND and
 * FT_HC_BLOCK_WRITE may answer -FT_EAGAIN: no room now.  The wrappers
 * below then wait FT_EAGAIN_WAIT_NS in FT_HC_POLL (an input that arrives
 * ends the wait early) and retry the rest, for as long as it takes: a
 * stalled guest waits, it never loses a frame or a write.
 */
#define FT_EAGAIN_WAIT_NS 1000000ULL /* 1 ms */

/* The wait between two attempts after -FT_EAGAIN. */
void ft_eagain_wait(void);

/* Send frames[0..count) (count 1..FT_NET_BATCH_MAX; the array 8-aligned
 * in guest memory) in order.  Returns 0 once every frame was taken, or
 * the first other -FT_E* (-FT_ENOSYS without a NIC).  If `waits` is not
 * NULL, the number of FT_EAGAIN waits is added to it. */
int ft_net_send(const struct ft_net_frame *frames, uint32_t count,
		uint64_t *waits);

/* Read or write `count` sectors (1..FT_BLOCK_IO_MAX / FT_BLOCK_SECTOR)
 * from sector `sector`; `flags` FT_BLOCK_F_* (write only).  Returns 0 or
 * -FT_E* (-FT_ENOSYS without a disk). */
int ft_block_read(uint64_t sector, void *buf, uint32_t count);
int ft_block_write(uint64_t sector, const void *buf, uint32_t count,
		   uint32_t flags);

/* Flush printf's buffer and stop the VM with `status`.  If the VMM refuses
 * the exit call the runtime executes ud2, so the VM stops as crashed. */
__attribute__((noreturn)) void ft_exit(int64_t status);

/* Print "panic: <message>" on a line of its own and exit with status 255. */
__attribute__((noreturn, format(printf, 1, 2))) void ft_panic(const char *fmt,
							      ...);

/* libc's abort: prints "panic: abort called" and exits with status 255. */
__attribute__((noreturn)) void abort(void);

/* Panic with the location if `cond` is false.  Always compiled in. */
#define FT_ASSERT(cond)                                                        \
	do {                                                                   \
		if (!(cond))                                                   \
			ft_panic("assertion '%s' failed at %s:%d", #cond,      \
				 __FILE__, __LINE__);                          \
	} while (0)

/* ---- Strings and memory (libc semantics) ------------------------------ */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);

/* errno, set only by strtoul/strtoull. */
extern int errno;
#define EINVAL 22
#define ERANGE 34

/* libc semantics: optional blanks and '+', base 0 (0x/0 prefixes), 2..36;
 * on overflow return ULONG_MAX with errno = ERANGE; no digits: return 0
 * and set *end to s.  A leading '-' is rejected as "no digits" (a guest
 * never wants -1 to mean 2^64-1). */
unsigned long strtoul(const char *s, char **end, int base);
unsigned long long strtoull(const char *s, char **end, int base);

/* Parse all of `s` as an unsigned decimal or 0x-hex number.  Returns 0, or
 * -EINVAL (empty, stray characters) or -ERANGE (overflow); *out is written
 * only on success. */
int ft_parse_u64(const char *s, uint64_t *out);

/* ---- Formatted output ------------------------------------------------- */

/*
 * Conversions: %d %i %u %x %X %c %s %p %%, length modifiers l, ll, z,
 * flags '-' and '0', a field width (digits or '*') and, for %s only, a
 * precision.  No floating point.  %p prints 0x and lower-case hex.
 */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) int snprintf(char *buf, size_t size,
						   const char *fmt, ...);

/* Format to the console.  Output is buffered and written when a '\n' is
 * printed, when the buffer (FT_CONSOLE_MAX bytes) fills, and by ft_flush,
 * ft_exit and ft_panic.  Returns the number of bytes formatted. */
__attribute__((format(printf, 1, 2))) int printf(const char *fmt, ...);
int vprintf(const char *fmt, va_list ap);

/* Write printf's buffered bytes, if any. */
void ft_flush(void);

/* ---- Heap ------------------------------------------------------------- */

/*
 * A bump allocator over [heap_start, heap_end): memory is never reused, so
 * every allocation reads as zero until written.  free() does nothing.
 */
void *malloc(size_t size); /* 16-byte aligned; NULL if it does not fit */
void free(void *ptr);
/* `align` must be a power of two; NULL if the request does not fit. */
void *ft_alloc_aligned(size_t size, size_t align);
/* Bytes left in the heap (before any alignment). */
size_t ft_heap_free(void);

/* ---- Pseudo-random numbers -------------------------------------------- */

/*
 * xorshift64* (Vigna 2016) seeded through splitmix64, so any seed,
 * including 0, gives a good nonzero state.  Deterministic and fast;
 * not cryptographic.  tools/dirtier-check.py reimplements it: keep both
 * in step.
 */
struct ft_rng {
	uint64_t s;
};

static inline void ft_rng_seed(struct ft_rng *r, uint64_t seed)
{
	uint64_t z = seed + 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	r->s = z ? z : 0x9e3779b97f4a7c15ULL;
}

static inline uint64_t ft_rng_next(struct ft_rng *r)
{
	uint64_t x = r->s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

#endif /* FT_H */
