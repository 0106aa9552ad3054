// SPDX-License-Identifier: MIT
/*
 * malloc.c - a bump allocator over the heap the VMM describes.
 *
 * Guests allocate at start-up and keep what they allocate, so memory is
 * never reused: free() is a no-op, and fresh memory reads as zero because
 * the VMM hands over zeroed RAM.
 */
#include "ft.h"
#include "rt.h"

/* First byte after the image, from guest/link.ld. */
extern char ft_image_end[];

static uintptr_t heap_next, heap_end;

void rt_heap_init(const struct ft_boot_info *bi)
{
	if (bi->heap_start < (uintptr_t)ft_image_end ||
	    bi->heap_start > bi->heap_end || bi->heap_end > bi->mem_size)
		ft_panic("bad heap [0x%lx, 0x%lx): image ends at %p, RAM at "
			 "0x%lx",
			 bi->heap_start, bi->heap_end, ft_image_end,
			 bi->mem_size);
	heap_next = bi->heap_start;
	heap_end = bi->heap_end;
}

void *ft_alloc_aligned(size_t size, size_t align)
{
	uintptr_t p;

	FT_ASSERT(align && !(align & (align - 1)));
	p = (heap_next + align - 1) & ~(align - 1);
	if (p < heap_next || p > heap_end || size > heap_end - p)
		return NULL;
	heap_next = p + size;
	return (void *)p;
}

void *malloc(size_t size)
{
	return ft_alloc_aligned(size, 16);
}

void free(void *ptr)
{
	(void)ptr;
}

size_t ft_heap_free(void)
{
	return heap_end - heap_next;
}
