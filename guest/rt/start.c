// SPDX-License-Identifier: MIT
/*
 * start.c - from the VMM's entry state to main(argc, argv).
 */
#include "ft.h"
#include "rt.h"

#define MAX_ARGS 64

static const struct ft_boot_info *boot;
static char cmdline[FT_CMDLINE_MAX];
static char *argv[MAX_ARGS + 1];

const struct ft_boot_info *ft_boot_info(void)
{
	return boot;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Copy the command line out of the VMM's page and split it at blanks into
 * argv[1..]; no quoting.  Returns argc. */
static int split_cmdline(const struct ft_boot_info *bi)
{
	size_t len = bi->cmdline_len;
	char *p = cmdline;
	int argc = 1;

	if (len >= sizeof(cmdline))
		ft_panic("command line of %zu bytes exceeds %zu", len,
			 sizeof(cmdline) - 1);
	memcpy(cmdline, (const char *)(uintptr_t)bi->cmdline, len);
	cmdline[len] = '\0';
	argv[0] = (char *)ft_prog_name;
	for (;;) {
		while (is_blank(*p))
			*p++ = '\0';
		if (!*p)
			break;
		if (argc == MAX_ARGS)
			ft_panic("more than %d command-line words",
				 MAX_ARGS - 1);
		argv[argc++] = p;
		while (*p && !is_blank(*p))
			p++;
	}
	argv[argc] = NULL;
	return argc;
}

void ft_start(const struct ft_boot_info *bi)
{
	int argc;

	if (bi->magic != FT_BOOT_MAGIC || bi->abi_version != FT_ABI_VERSION)
		ft_panic("boot info magic 0x%lx abi %u, want 0x%llx abi %d",
			 bi->magic, bi->abi_version, FT_BOOT_MAGIC,
			 FT_ABI_VERSION);
	boot = bi;
	rt_heap_init(bi);
	argc = split_cmdline(bi);
	ft_exit(main(argc, argv));
}
