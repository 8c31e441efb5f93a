/* The first byte of the image: every vCPU starts here, together.
 *
 * Entry state (guest_abi.h): long mode, interrupts off, RSP = 0,
 * RDI = vCPU index, RSI = boot info GPA, CS/DS from the VMM's boot GDT.
 * We take a boot stack by vCPU index, load our own GDT (the VMM's page at
 * 0x8000 is not ours to rely on after boot), reload every segment register
 * and call guest_main(vcpu, boot_info).
 */
#include "layout.h"

	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	cmpq $LAYOUT_MAX_VCPUS, %rdi
	jae 2f				/* no stack for it: halt quietly */
	leaq 1(%rdi), %rax
	shlq $LAYOUT_BOOT_STACK_SHIFT, %rax
	leaq boot_stacks(%rax), %rsp	/* top of this vCPU's stack */

	lgdt gdt_pointer(%rip)
	movw $LAYOUT_KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs			/* zeroes GS base; guest_main sets it */
	pushq $LAYOUT_KERNEL_CS		/* CS can only be reloaded by a far transfer */
	leaq 1f(%rip), %rax
	pushq %rax
	lretq
1:
	xorl %ebp, %ebp			/* the end of every backtrace */
	call guest_main			/* RDI, RSI untouched since entry */
2:
	cli
	hlt
	jmp 2b

	.section .data
	.balign 16
gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* 0x08: 64-bit code, DPL 0, accessed */
	.quad 0x00cf93000000ffff	/* 0x10: data, writable, accessed */
gdt_end:
	.balign 8
	.word 0				/* aligns the base below */
gdt_pointer:
	.word gdt_end - gdt - 1
	.quad gdt

	.section .bss
	.balign 4096
boot_stacks:
	.skip LAYOUT_MAX_VCPUS * LAYOUT_BOOT_STACK_SIZE

	.section .note.GNU-stack, "", @progbits
