/* SPDX-License-Identifier: MIT */
/*
 * crt0.S - guest entry point.
 *
 * The VMM enters here at CPL3 with %rsp = FT_GPA_STACK_TOP and %rdi =
 * FT_GPA_BOOTINFO (docs/guest-abi.md, section 4).  Clear the frame
 * pointer so debuggers see the end of the call chain, keep the ABI's
 * 16-byte stack alignment at the call, and hand over to C.  ft_start
 * never returns; ud2 turns a return into a reported crash.
 */
	.section .text.start, "ax"
	.globl	_start
	.type	_start, @function
_start:
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	call	ft_start
	ud2
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
