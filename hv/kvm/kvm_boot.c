// SPDX-License-Identifier: MIT
/*
 * kvm_boot.c - load a static ELF guest and build the machine it runs on:
 * identity page tables, GDT, TSS with an all-permitting I/O bitmap, an IDT
 * whose stubs report exceptions, boot info, and the vCPU at the entry point.
 *
 * This PVM host only lets CPL3 code use port I/O through the TSS bitmap
 * (IOPL=3 alone faults), and swallows port I/O done by emulated CPL0 code
 * but reports `hlt`: so exception stubs push the vector and halt.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvm_priv.h"
#include "log.h"

#define PTE_P   0x001ULL
#define PTE_W   0x002ULL
#define PTE_U   0x004ULL
#define PTE_PS  0x080ULL
#define PTE_NX  (1ULL << 63)

#define ELF_MAX_SIZE (256ULL << 20)
#define ELF_MAX_PHDRS 64

static int elf_fail(const char *image, const char *what)
{
	log_err("%s: not a usable guest image: %s", image, what);
	return -ENOEXEC;
}

/* Is [a, a+len) inside [lo, hi) without overflow? */
static bool range_ok(uint64_t a, uint64_t len, uint64_t lo, uint64_t hi)
{
	return a >= lo && len <= hi - lo && a - lo <= hi - lo - len;
}

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
	struct stat sb;
	ssize_t n;
	size_t got = 0;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		log_err("%s: %s", path, strerror(errno));
		return err;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		log_err("%s: not a regular file", path);
		return -EINVAL;
	}
	if ((uint64_t)sb.st_size > ELF_MAX_SIZE) {
		close(fd);
		log_err("%s: %lld bytes, larger than the %llu MiB limit", path,
			(long long)sb.st_size, ELF_MAX_SIZE >> 20);
		return -EFBIG;
	}
	*len = (size_t)sb.st_size;
	*buf = malloc(*len ? *len : 1);
	if (!*buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < *len) {
		n = read(fd, *buf + got, *len - got);
		if (n <= 0) {
			err = n < 0 ? -errno : -EIO;
			log_err("%s: read failed", path);
			free(*buf);
			close(fd);
			return err;
		}
		got += (size_t)n;
	}
	close(fd);
	return 0;
}

/* Validate the ELF and copy its PT_LOAD segments into guest RAM. */
static int load_elf(struct hv_domain *d, const char *image, uint64_t *entry,
		    uint64_t *image_end)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	const Elf64_Ehdr *eh;
	const Elf64_Phdr *ph;
	bool entry_ok = false;
	unsigned i, loads = 0;
	uint64_t end = 0;
	int err;

	err = read_file(image, &buf, &len);
	if (err)
		return err;
	eh = (const Elf64_Ehdr *)buf;
	err = -ENOEXEC;
	if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG)) {
		elf_fail(image, "no ELF magic");
		goto out;
	}
	if (eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_ident[EI_DATA] != ELFDATA2LSB) {
		elf_fail(image, "not a 64-bit little-endian ELF");
		goto out;
	}
	if (eh->e_machine != EM_X86_64) {
		elf_fail(image, "e_machine is not x86-64");
		goto out;
	}
	if (eh->e_type != ET_EXEC) {
		elf_fail(image, "not a static executable (e_type != ET_EXEC)");
		goto out;
	}
	if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 ||
	    eh->e_phnum > ELF_MAX_PHDRS ||
	    !range_ok(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(*ph), 0,
		      len)) {
		elf_fail(image, "program header table out of the file");
		goto out;
	}
	ph = (const Elf64_Phdr *)(buf + eh->e_phoff);
	for (i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		if (ph[i].p_filesz > ph[i].p_memsz ||
		    !range_ok(ph[i].p_offset, ph[i].p_filesz, 0, len)) {
			log_err("%s: segment %u: file range 0x%llx+0x%llx out "
				"of the %zu-byte file", image, i,
				(unsigned long long)ph[i].p_offset,
				(unsigned long long)ph[i].p_filesz, len);
			goto out;
		}
		if (!range_ok(ph[i].p_paddr, ph[i].p_memsz, FT_GPA_IMAGE_MIN,
			      d->mem_size)) {
			log_err("%s: segment %u: [0x%llx, +0x%llx) outside "
				"guest RAM [0x%llx, 0x%llx)", image, i,
				(unsigned long long)ph[i].p_paddr,
				(unsigned long long)ph[i].p_memsz,
				FT_GPA_IMAGE_MIN,
				(unsigned long long)d->mem_size);
			goto out;
		}
		memcpy(d->mem + ph[i].p_paddr, buf + ph[i].p_offset,
		       ph[i].p_filesz);
		memset(d->mem + ph[i].p_paddr + ph[i].p_filesz, 0,
		       ph[i].p_memsz - ph[i].p_filesz);
		if (ph[i].p_paddr + ph[i].p_memsz > end)
			end = ph[i].p_paddr + ph[i].p_memsz;
		if ((ph[i].p_flags & PF_X) && eh->e_entry >= ph[i].p_paddr &&
		    eh->e_entry - ph[i].p_paddr < ph[i].p_memsz)
			entry_ok = true;
		loads++;
	}
	if (!loads) {
		elf_fail(image, "no PT_LOAD segment");
		goto out;
	}
	if (!entry_ok) {
		log_err("%s: entry point 0x%llx is not in an executable segment",
			image, (unsigned long long)eh->e_entry);
		goto out;
	}
	*entry = eh->e_entry;
	*image_end = end;
	err = 0;
out:
	free(buf);
	return err;
}

static uint64_t seg_desc(uint64_t flags)
{
	return 0xffffULL | (0xfULL << 48) | flags;
}

/* GDT, TSS, IDT and exception stubs, all supervisor-only. */
static void build_system(struct hv_domain *d)
{
	uint64_t *gdt = (uint64_t *)(d->mem + SYS_GDT);
	uint64_t *idt = (uint64_t *)(d->mem + SYS_IDT);
	uint8_t *tss = d->mem + SYS_TSS;
	unsigned v;

	gdt[0] = 0;
	gdt[1] = seg_desc(0x00a09b0000000000ULL); /* kernel code, L */
	gdt[2] = seg_desc(0x00c0930000000000ULL); /* kernel data */
	gdt[3] = seg_desc(0x00c0f30000000000ULL); /* user data, DPL3 */
	gdt[4] = seg_desc(0x00a0fb0000000000ULL); /* user code, L, DPL3 */
	gdt[5] = TSS_LIMIT | ((SYS_TSS & 0xffffff) << 16) | (0x89ULL << 40) |
		 (((SYS_TSS >> 24) & 0xff) << 56);
	gdt[6] = SYS_TSS >> 32;

	memset(tss, 0, TSS_LIMIT + 1);
	/* RSP0 at offset 4 is not 8-byte aligned: the TSS is packed. */
	memcpy(tss + 4, &(uint64_t){ SYS_XSTACK_TOP }, 8);
	memcpy(tss + 102, &(uint16_t){ TSS_IOMAP }, 2); /* all ports allowed */
	tss[TSS_LIMIT] = 0xff;

	for (v = 0; v < 32; v++) {
		uint8_t *s = d->mem + SYS_STUBS + v * 16;
		uint64_t a = SYS_STUBS + v * 16;
		bool has_err = v == 8 || (v >= 10 && v <= 14) || v == 17 ||
			       v == 21;
		unsigned n = 0;

		if (!has_err) {
			s[n++] = 0x6a; /* push $0 */
			s[n++] = 0;
		}
		s[n++] = 0x6a; /* push $v */
		s[n++] = (uint8_t)v;
		s[n++] = 0xf4; /* hlt: the VMM reads the frame */
		s[n++] = 0xeb; /* jmp back to hlt */
		s[n++] = 0xfd;
		idt[v * 2] = (a & 0xffff) | ((uint64_t)SEL_KCODE << 16) |
			     (0x8eULL << 40) | (((a >> 16) & 0xffff) << 48);
		idt[v * 2 + 1] = a >> 32;
	}
}

/* Identity map all RAM: 4 KiB pages for the first 2 MiB (page 0 absent,
 * everything below the stack but boot info and command line supervisor-
 * only), 2 MiB pages above. */
static void build_page_tables(struct hv_domain *d)
{
	uint64_t *pml4 = (uint64_t *)(d->mem + SYS_PML4);
	uint64_t *pdpt = (uint64_t *)(d->mem + SYS_PDPT);
	uint64_t *pt0 = (uint64_t *)(d->mem + SYS_PT0);
	uint64_t gib = (d->mem_size + (1ULL << 30) - 1) >> 30;
	uint64_t a, i;

	pml4[0] = SYS_PDPT | PTE_P | PTE_W | PTE_U;
	for (i = 0; i < gib; i++)
		pdpt[i] = (SYS_PD + i * 0x1000) | PTE_P | PTE_W | PTE_U;
	for (a = 0; a < d->mem_size; a += 2ULL << 20) {
		uint64_t *pd = (uint64_t *)(d->mem + SYS_PD) + (a >> 21);

		*pd = a | PTE_P | PTE_W | PTE_U | PTE_PS;
	}
	*(uint64_t *)(d->mem + SYS_PD) = SYS_PT0 | PTE_P | PTE_W | PTE_U;
	for (i = 1; i < 512; i++) {
		a = i << 12;
		/* Below the stack only boot info and command line are the
		 * guest's; a stack overflow faults instead of scribbling. */
		bool sys = a < FT_GPA_STACK_LO &&
			   !(a >= FT_GPA_BOOTINFO && a < FT_GPA_CMDLINE +
			     FT_CMDLINE_MAX);
		pt0[i] = a | PTE_P | PTE_W | (sys ? 0 : PTE_U);
	}
}

static int set_boot_cpu(struct hv_domain *d, uint64_t entry)
{
	struct kvm_sregs s;
	struct kvm_regs r = { .rip = entry, .rsp = FT_GPA_STACK_TOP,
			      .rdi = FT_GPA_BOOTINFO, .rflags = 0x2 };
	struct kvm_segment code = { .limit = 0xffffffff, .selector = SEL_UCODE,
				    .type = 11, .present = 1, .dpl = 3,
				    .s = 1, .l = 1, .g = 1 };
	struct kvm_segment data = { .limit = 0xffffffff, .selector = SEL_UDATA,
				    .type = 3, .present = 1, .dpl = 3,
				    .db = 1, .s = 1, .g = 1 };
	struct kvm_segment tr = { .base = SYS_TSS, .limit = TSS_LIMIT,
				  .selector = SEL_TSS, .type = 11,
				  .present = 1 };

	if (ioctl(d->vcpu_fd, KVM_GET_SREGS, &s) < 0)
		return -errno;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.tr = tr;
	s.gdt.base = SYS_GDT;
	s.gdt.limit = 7 * 8 - 1;
	s.idt.base = SYS_IDT;
	s.idt.limit = 32 * 16 - 1;
	s.cr3 = SYS_PML4;
	s.cr4 = (1 << 5) | (1 << 9) | (1 << 10); /* PAE OSFXSR OSXMMEXCPT */
	s.cr0 = 0x80050033; /* PG AM WP NE ET MP PE */
	s.efer = 0xd01;     /* NXE LMA LME SCE */
	if (ioctl(d->vcpu_fd, KVM_SET_SREGS, &s) < 0 ||
	    ioctl(d->vcpu_fd, KVM_SET_REGS, &r) < 0) {
		log_err("setting the boot vCPU state: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

int kvm_boot(struct hv_domain *d, const char *image, const char *cmdline)
{
	struct ft_boot_info *bi = (struct ft_boot_info *)(d->mem +
							  FT_GPA_BOOTINFO);
	size_t clen = cmdline ? strlen(cmdline) : 0;
	uint64_t entry, end;
	int err;

	if (clen >= FT_CMDLINE_MAX) {
		log_err("command line is %zu bytes; the limit is %d", clen,
			FT_CMDLINE_MAX - 1);
		return -E2BIG;
	}
	err = load_elf(d, image, &entry, &end);
	if (err)
		return err;
	build_system(d);
	build_page_tables(d);
	memset(bi, 0, sizeof(*bi));
	bi->magic = FT_BOOT_MAGIC;
	bi->abi_version = FT_ABI_VERSION;
	bi->page_size = HV_PAGE_SIZE;
	bi->mem_size = d->mem_size;
	bi->heap_start = (end + HV_PAGE_SIZE - 1) & ~(HV_PAGE_SIZE - 1);
	bi->heap_end = d->mem_size;
	bi->cmdline = FT_GPA_CMDLINE;
	bi->cmdline_len = clen;
	memcpy(d->mem + FT_GPA_CMDLINE, cmdline ? cmdline : "", clen + 1);
	return set_boot_cpu(d, entry);
}
