// SPDX-License-Identifier: MIT
/*
 * mbdirty - a tiny 32-bit multiboot guest for QEMU that dirties guest
 * memory at a given rate: the QEMU half of bench/bench_migrate.sh, the
 * counterpart of guest/dirtier for ftvm.
 *
 *   qemu-system-x86_64 -kernel mbdirty.elf -append "wss=MiB rate=MiB/s"
 *                      -serial file:LOG ...
 *
 * wss   MiB of RAM dirtied, starting at 16 MiB (default 0: idle, halted;
 *       so is rate=0)
 * rate  MiB/s (default 64; more than the guest can do: as fast as it
 *       can, the PIT then loses ticks and t= runs slow)
 *
 * The guest never reads or fills its RAM: the benchmark sets the contents
 * (zeros or random bytes) through the memory-backend file before boot.
 * It sweeps the pages of the working set in order, again and again, and
 * writes one 32-bit counter at the start of each page (so a random page
 * stays incompressible).  The PIT interrupts at 1 kHz; each tick dirties
 * rate * 256 / 1000 pages and then halts until the next, so the guest
 * does not spin (like guest/dirtier).  Ticks missed while the VM was
 * stopped are not caught up (at most 50 per wake-up).
 *
 * Serial lines (COM1):
 *   mbdirty: ready wss=<MiB> rate=<MiB/s> mem=<KiB>
 *   mbdirty: t=<s> dirtied=<MiB>          (every second while dirtying)
 *
 * Build (as bench_migrate.sh does): gcc -m32 -O2 -ffreestanding -fno-pic
 *        -fno-pie -no-pie -fno-stack-protector -nostdlib -static
 *        -Wl,-T,mbdirty.ld -o mbdirty.elf mbdirty.c
 */
#include <stdint.h>

#define MB_MAGIC 0x1BADB002u
#define MB_FLAGS 0x00000002u /* want mem_lower / mem_upper */
#define MB_BOOT_MAGIC 0x2BADB002u
#define WSS_BASE (16u << 20)
#define PIT_HZ 1193182u
#define TICK_HZ 1000u
#define MAX_CATCHUP 50u

static const uint32_t mb_header[3]
	__attribute__((section(".multiboot"), used, aligned(4))) = {
		MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)};

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

struct idt_entry {
	uint16_t off_lo, sel;
	uint8_t zero, type;
	uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];
/* Named from the assembly below, hence not static. */
volatile uint32_t ticks;
uint8_t stack[16384] __attribute__((aligned(16)));

void mbdirty_main(uint32_t magic, const struct mb_info *mbi);

/*
 * Interrupts are enabled only inside wait_tick()'s "sti; hlt", so a
 * handler knows where it interrupted and returns there by dropping its
 * frame and jumping, not with iret: the PVM flavour of KVM on the
 * development machine cannot emulate a CPL0 iret ("emulation failure").
 * The interrupt gate clears IF, which is what wait_tick() wants after.
 */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov $stack + 16384, %esp\n"
	"	push %ebx\n"
	"	push %eax\n"
	"	call mbdirty_main\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n"
	"irq0:\n"
	"	incl ticks\n"
	"	push %eax\n"
	"	mov $0x20, %al\n"
	"	outb %al, $0x20\n"
	"	pop %eax\n"
	"spurious:\n"
	"	add $12, %esp\n"
	"	jmp hlt_resume\n");

extern char irq0[], spurious[];

static __attribute__((noinline)) void wait_tick(void)
{
	__asm__ volatile("sti\n\thlt\nhlt_resume:" : : : "memory", "cc");
}

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void putc_serial(char c)
{
	while (!(inb(0x3fd) & 0x20))
		;
	outb(0x3f8, (uint8_t)c);
}

static void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void putu(uint32_t v)
{
	char b[11];
	int i = 10;

	b[i] = 0;
	do
		b[--i] = (char)('0' + v % 10);
	while (v /= 10);
	puts_serial(b + i);
}

/* The number after "key=" in the command line, dflt when absent. */
static uint32_t arg(const char *cmd, const char *key, uint32_t dflt)
{
	for (const char *p = cmd; p && *p; p++) {
		const char *k = key, *q = p;
		uint32_t v = 0;

		if (p != cmd && p[-1] != ' ')
			continue;
		while (*k && *q == *k)
			k++, q++;
		if (*k || *q != '=')
			continue;
		for (q++; *q >= '0' && *q <= '9'; q++)
			v = v * 10 + (uint32_t)(*q - '0');
		return v;
	}
	return dflt;
}

static void set_gate(int vec, void *fn, uint16_t cs)
{
	uint32_t a = (uint32_t)fn;

	idt[vec] = (struct idt_entry){(uint16_t)a, cs, 0, 0x8e,
				      (uint16_t)(a >> 16)};
}

static void setup_interrupts(void)
{
	struct {
		uint16_t limit;
		uint32_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint32_t)idt};
	uint16_t cs;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (int v = 0; v < 256; v++)
		set_gate(v, spurious, cs);
	set_gate(0x20, irq0, cs);
	__asm__ volatile("lidt %0" : : "m"(idtr));
	/* 8259 PICs: IRQ 0-7 -> vectors 0x20-0x27, 8-15 -> 0x28-0x2f. */
	outb(0x20, 0x11), outb(0xa0, 0x11);
	outb(0x21, 0x20), outb(0xa1, 0x28);
	outb(0x21, 0x04), outb(0xa1, 0x02);
	outb(0x21, 0x01), outb(0xa1, 0x01);
	outb(0x21, 0xfe), outb(0xa1, 0xff); /* only IRQ 0 */
	/* PIT channel 0, mode 2 (rate generator), 1 kHz. */
	outb(0x43, 0x34);
	outb(0x40, (uint8_t)((PIT_HZ / TICK_HZ) & 0xff));
	outb(0x40, (uint8_t)((PIT_HZ / TICK_HZ) >> 8));
}

void mbdirty_main(uint32_t magic, const struct mb_info *mbi)
{
	const char *cmd = 0;
	uint32_t wss, rate, mem_kib = 0, pages, cursor = 0, counter = 1;
	uint32_t seen = 0, acc = 0, done_s = 0, dirtied = 0;

	if (magic == MB_BOOT_MAGIC && (mbi->flags & 4))
		cmd = (const char *)mbi->cmdline;
	if (magic == MB_BOOT_MAGIC && (mbi->flags & 1))
		mem_kib = 1024 + mbi->mem_upper;
	wss = arg(cmd, "wss", 0);
	rate = arg(cmd, "rate", 64);
	/* Stay below the top 1 MiB (firmware tables live there). */
	if (mem_kib && WSS_BASE + ((uint64_t)wss << 20) + (1u << 20) >
			       (uint64_t)mem_kib << 10)
		wss = ((mem_kib << 10) - WSS_BASE - (1u << 20)) >> 20;
	pages = wss * 256;
	puts_serial("mbdirty: ready wss=");
	putu(wss);
	puts_serial(" rate=");
	putu(rate);
	puts_serial(" mem=");
	putu(mem_kib);
	puts_serial("\n");
	if (!pages || !rate)
		return; /* idle: halted with interrupts off */
	setup_interrupts();
	for (;;) {
		uint32_t now, n = 0;

		wait_tick();
		now = ticks;
		if (now - seen > MAX_CATCHUP)
			seen = now - MAX_CATCHUP;
		for (; seen != now; seen++) {
			acc += rate * 256;
			n += acc / TICK_HZ;
			acc %= TICK_HZ;
		}
		for (uint32_t i = 0; i < n; i++) {
			*(volatile uint32_t *)(WSS_BASE + cursor * 4096u) =
				counter;
			if (++cursor == pages)
				cursor = 0, counter++;
		}
		dirtied += n;
		if (now / TICK_HZ != done_s) {
			done_s = now / TICK_HZ;
			puts_serial("mbdirty: t=");
			putu(done_s);
			puts_serial(" dirtied=");
			putu(dirtied / 256);
			puts_serial("\n");
		}
	}
}
