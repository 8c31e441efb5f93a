/* Interrupt and exception entry: one stub per vector, one common path.
 *
 * Each stub makes the stack uniform (a 0 where the CPU pushes no error code,
 * then the vector) and jumps to trap_common, which pushes the GPRs (a struct
 * trap_frame, see guest.h), calls trap_dispatch(frame) and resumes from the
 * frame it returns: the same one, or another task's after a switch.
 *
 * Stack alignment at the call: the CPU aligns RSP to 16 and pushes 5 qwords,
 * the stub 2, trap_common 15: 22 qwords, so RSP is 16-aligned at `call`.
 */
#include "layout.h"

	.section .text
	.code64

trap_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	cld				/* the C ABI wants DF clear */
	movq %rsp, %rdi
	call trap_dispatch
	movq %rax, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp			/* vector, error code */
	iretq

/* void sched_yield(void): a software interrupt built by hand. `int $n` is not
 * an option: this KVM emulates every guest instruction and its emulator
 * refuses INT outside real mode (KVM_EXIT_INTERNAL_ERROR, suberror 1). So we
 * push what the CPU would (aligned like the CPU does), with the return address
 * as RIP and the caller's RSP after `ret` as RSP, and VEC_YIELD as vector;
 * iretq then resumes the caller as if this had returned, with its own IF. */
	.globl sched_yield
sched_yield:
	movq %rsp, %rax			/* -> the return address */
	andq $-16, %rsp
	pushq $LAYOUT_KERNEL_DS		/* SS */
	leaq 8(%rax), %rcx
	pushq %rcx			/* RSP as after `ret` */
	pushfq				/* RFLAGS, the caller's IF included */
	cli				/* the scheduler runs with interrupts off */
	pushq $LAYOUT_KERNEL_CS		/* CS */
	pushq (%rax)			/* RIP: the return address */
	pushq $0			/* error code */
	pushq $LAYOUT_VEC_YIELD
	jmp trap_common

/* The vectors for which the CPU pushes an error code. */
#define HAS_ERROR(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || (v) == 21 \
		      || (v) == 29 || (v) == 30)

	.section .rodata
	.balign 8
	.globl isr_table
isr_table:				/* filled below, one .quad per stub */

	.section .text
	.set .Lvec, 0
	.rept LAYOUT_NR_VECTORS
1:
	.if HAS_ERROR(.Lvec) == 0
	pushq $0
	.endif
	pushq $.Lvec
	jmp trap_common
	.pushsection .rodata
	.quad 1b
	.popsection
	.set .Lvec, .Lvec + 1
	.endr

	.section .note.GNU-stack, "", @progbits
