/* SPDX-License-Identifier: MIT */
/*
 * rt.h - the runtime's internal interfaces (not for guest programs).
 */
#ifndef FT_RT_H
#define FT_RT_H

#include "ft.h"

/* The program's name, argv[0]: defined by guest.mk for each program. */
extern const char ft_prog_name[];

/* Called by crt0 with %rdi = FT_GPA_BOOTINFO: check the boot information,
 * set up the heap and argv, run main and exit with its status. */
__attribute__((noreturn)) void ft_start(const struct ft_boot_info *bi);

/* Set up the heap from the boot information; called once before main. */
void rt_heap_init(const struct ft_boot_info *bi);

#endif /* FT_RT_H */
