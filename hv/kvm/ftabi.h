/* SPDX-License-Identifier: MIT */
/*
 * ftabi.h - the guest ABI of the built-in micro-VMM (hv/kvm).
 *
 * This header is shared by the VMM and by freestanding guests, so it
 * depends on nothing but C99 <stdint.h>.  docs/guest-abi.md is the
 * normative description; this file is its machine-readable half.
 *
 * A hypercall is one 32-bit port write:
 *
 *      outl %eax, %dx      with dx  = FT_HC_PORT_BASE + call number
 *                               eax = guest-physical address of the call's
 *                                     argument block (below 4 GiB, aligned
 *                                     to 8, entirely inside guest RAM)
 *
 * The VMM validates the block, performs the call synchronously and writes
 * the result into the block's `ret` field (0 or a negative FT_E* code).
 * If the block address itself is unusable (out of RAM, misaligned, crosses
 * the end of RAM) the VMM cannot write `ret`; it then replaces the guest's
 * %rax with the (negative) error instead.  A guest therefore checks, after
 * the `out`, that %rax still holds the address it passed; if it does not,
 * %rax is the error.
 *
 * All structures are little-endian, naturally aligned and have no implicit
 * padding; reserved fields must be zero and are checked.
 */
#ifndef FTABI_H
#define FTABI_H

#include <stdint.h>

#define FT_ABI_VERSION 1

/* Layout of guest-physical memory fixed by the VMM (see guest-abi.md). */
#define FT_GPA_BOOTINFO   0x8000ULL   /* struct ft_boot_info, user R/W   */
#define FT_GPA_CMDLINE    0x9000ULL   /* NUL-terminated, FT_CMDLINE_MAX  */
#define FT_CMDLINE_MAX    4096
#define FT_GPA_STACK_LO   0x100000ULL /* guest stack: [LO, TOP)           */
#define FT_GPA_STACK_TOP  0x200000ULL
#define FT_GPA_IMAGE_MIN  0x200000ULL /* lowest address an ELF may load  */
#define FT_GPA_ARG_LIMIT  0x100000000ULL /* argument blocks lie below    */

#define FT_HC_PORT_BASE 0x500

/* Hypercall numbers.  Numbers are never reused; reserved ones answer
 * FT_ENOSYS until their device exists. */
enum ft_hc {
	FT_HC_INVALID       = 0,
	FT_HC_CONSOLE_WRITE = 1,  /* struct ft_hc_console          */
	FT_HC_CLOCK_MONO    = 2,  /* struct ft_hc_clock            */
	FT_HC_CLOCK_WALL    = 3,  /* struct ft_hc_clock            */
	FT_HC_POLL          = 4,  /* struct ft_hc_poll             */
	FT_HC_EXIT          = 5,  /* struct ft_hc_exit (no return) */
	FT_HC_NET_INFO      = 6,  /* struct ft_hc_net_info         */
	FT_HC_NET_SEND      = 7,  /* struct ft_hc_net_batch        */
	FT_HC_NET_RECV      = 8,  /* struct ft_hc_net_batch        */
	FT_HC_BLOCK_INFO    = 9,  /* struct ft_hc_block_info       */
	FT_HC_BLOCK_READ    = 10, /* struct ft_hc_block_io         */
	FT_HC_BLOCK_WRITE   = 11, /* struct ft_hc_block_io         */
	FT_HC_BLOCK_FLUSH   = 12, /* struct ft_hc_block_flush      */
	FT_HC_NR            = 16  /* ports BASE..BASE+NR-1 belong to the ABI */
};

/* Error codes returned in `ret` (negated). */
enum ft_err {
	FT_EOK     = 0,
	FT_EFAULT  = 1,  /* a pointer/length lies outside guest RAM or overflows */
	FT_EINVAL  = 2,  /* a field is out of range, or a reserved field is set  */
	FT_ENOSYS  = 3,  /* unknown or not (yet) provided call                  */
	FT_EAGAIN  = 4,  /* no room now, retry later: NET_SEND (partial:
			  * done = frames taken), BLOCK_WRITE (nothing
			  * written), while the host holds the VM's
			  * output; an empty receive is done = 0 instead */
	FT_EIO     = 5,  /* host-side I/O error                                 */
	FT_E2BIG   = 6,  /* request larger than the call's limit                */
};

/* Boot information, at FT_GPA_BOOTINFO; its address is also in %rdi at
 * entry.  The guest may overwrite it; the VMM never reads it back. */
#define FT_BOOT_MAGIC 0x746f6f6274667466ULL /* "ftftboot" */
struct ft_boot_info {
	uint64_t magic;
	uint32_t abi_version;
	uint32_t page_size;
	uint64_t mem_size;     /* bytes of guest RAM, from GPA 0             */
	uint64_t heap_start;   /* first free byte after the loaded image     */
	uint64_t heap_end;     /* end of RAM usable as heap (== mem_size)    */
	uint64_t cmdline;      /* GPA of the command line (FT_GPA_CMDLINE)   */
	uint64_t cmdline_len;  /* bytes, without the NUL                     */
	uint64_t reserved[8];
};

/* FT_HC_CONSOLE_WRITE: write `len` bytes at GPA `buf` to the console.
 * len <= FT_CONSOLE_MAX. */
#define FT_CONSOLE_MAX 4096
struct ft_hc_console {
	uint64_t buf;
	uint64_t len;
	int64_t ret;           /* bytes written, or -FT_E*                    */
};

/* FT_HC_CLOCK_MONO / FT_HC_CLOCK_WALL.  The monotonic clock counts
 * nanoseconds since the VM first booted and continues across save,
 * restore, migration and failover; it never goes backwards.  The wall
 * clock is nanoseconds since the Unix epoch and is clamped to never go
 * backwards either. */
struct ft_hc_clock {
	uint64_t ns;
	int64_t ret;
};

/* FT_HC_POLL: block until an input is ready or the monotonic clock reaches
 * `deadline_ns`.  `ready` is a bit set of FT_POLL_* (0 at a timeout).
 * Without devices this is a sleep.  FT_POLL_MOVED: the VM was resumed
 * elsewhere (restored, migrated, or failed over to a backup) since a poll
 * last reported it; peers may have sent packets the VM never saw, and a
 * TCP stack should prompt them to retransmit now (guest-abi.md, 4). */
#define FT_POLL_NET 0x1ULL
#define FT_POLL_MOVED 0x2ULL
struct ft_hc_poll {
	uint64_t deadline_ns;
	uint64_t ready;
	int64_t ret;
};

/* FT_HC_EXIT: stop the VM; `status` is reported by the VMM. */
struct ft_hc_exit {
	int64_t status;
	int64_t ret;           /* never written: the call does not return    */
};

/*
 * Network.  One NIC per VM, backed on the host by a TAP device.  Frames are
 * Ethernet frames without FCS, FT_NET_FRAME_MIN..FT_NET_FRAME_MAX bytes.
 * A VM without a NIC answers FT_ENOSYS to every net call.
 */
#define FT_NET_FRAME_MIN   14
#define FT_NET_FRAME_MAX   1514  /* MTU 1500 + Ethernet header */
#define FT_NET_BATCH_MAX   64    /* frames per send/receive call */

/* FT_HC_NET_INFO: the NIC's configuration (from the VM's definition).
 * IPv4 addresses in network byte order; 0 when not configured. */
struct ft_hc_net_info {
	uint8_t mac[6];
	uint16_t mtu;          /* 1500 */
	uint32_t ipv4_addr;
	uint32_t ipv4_netmask;
	uint32_t ipv4_gateway;
	uint64_t reserved[2];  /* written 0 */
	int64_t ret;
};

/* One frame of a batch.  Send: `len` bytes at `buf`.  Receive: `buf` has
 * room for `len` bytes on the way in (>= FT_NET_FRAME_MAX), and `len` is
 * the frame's length on the way out. */
struct ft_net_frame {
	uint64_t buf;
	uint32_t len;
	uint32_t reserved;     /* must be 0 */
};

/* FT_HC_NET_SEND / FT_HC_NET_RECV: `frames` is the GPA of an array of
 * `count` (1..FT_NET_BATCH_MAX) struct ft_net_frame.  Send transmits them
 * in order; `done` is how many were sent (all, unless ret < 0).  Send may
 * answer -FT_EAGAIN when the VMM holds the VM's output and has no room:
 * the first `done` frames were taken, the rest were not, and the guest
 * sends those again after a short wait (e.g. a 1 ms FT_HC_POLL).  Receive
 * fills up to `count` of them with pending frames in arrival order and
 * sets `done` (0 when nothing is pending: not an error).  Every frame
 * descriptor is checked before any frame moves: one bad descriptor fails
 * the whole call with nothing sent or consumed. */
struct ft_hc_net_batch {
	uint64_t frames;
	uint32_t count;
	uint32_t reserved;     /* must be 0 */
	uint64_t done;
	int64_t ret;
};

/*
 * Block.  One disk per VM, backed by a raw image file, in 512-byte sectors.
 * A VM without a disk answers FT_ENOSYS.
 */
#define FT_BLOCK_SECTOR     512
#define FT_BLOCK_IO_MAX     (1u << 20)   /* bytes per read/write call */
#define FT_BLOCK_F_FLUSH    0x1u         /* write: flush after writing */

/* FT_HC_BLOCK_INFO */
struct ft_hc_block_info {
	uint64_t sectors;      /* capacity */
	uint32_t sector_size;  /* FT_BLOCK_SECTOR */
	uint32_t max_io;       /* FT_BLOCK_IO_MAX */
	uint64_t reserved[2];  /* written 0 */
	int64_t ret;
};

/* FT_HC_BLOCK_READ / FT_HC_BLOCK_WRITE: `count` sectors (1 ..
 * FT_BLOCK_IO_MAX / FT_BLOCK_SECTOR) from sector `sector` to/from `buf`.
 * A write with FT_BLOCK_F_FLUSH returns only once the data is durable
 * (the write then a flush, in one exit).  ret: 0 or -FT_E*.  A write may
 * answer -FT_EAGAIN (nothing written): the guest issues it again after a
 * short wait. */
struct ft_hc_block_io {
	uint64_t sector;
	uint64_t buf;
	uint32_t count;
	uint32_t flags;        /* FT_BLOCK_F_*; read: must be 0 */
	int64_t ret;
};

/* FT_HC_BLOCK_FLUSH: make every completed write durable (fdatasync). */
struct ft_hc_block_flush {
	uint64_t reserved;     /* must be 0 */
	int64_t ret;
};

#endif /* FTABI_H */
