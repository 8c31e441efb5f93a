// SPDX-License-Identifier: GPL-2.0-only
/*
 * apf_test's guest and its VM: the 64-bit guest (the comment at the top of
 * apf_test.c says what it does) and a VM that runs it, with one userfault
 * memslot whose data pages are all missing at the start.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "apf_test.h"

/*
 * The guest. Absolute addresses are the constants of apf_test.h (the mailbox at
 * 0x7000, the async PF data at 0x6000); everything else is RIP-relative, so
 * the blob runs wherever it is copied.
 */
extern const uint8_t guest_start[], guest_pf[], guest_ready[], guest_other[], guest_end[];
asm(".pushsection .rodata.apf_guest, \"a\"\n"
    ".intel_syntax noprefix\n"
    ".globl guest_start, guest_pf, guest_ready, guest_other, guest_end\n"
    "guest_start:\n"
    /* x2APIC on, software-enabled with spurious vector 0xff */
    "	mov ecx, 0x1b\n"
    "	rdmsr\n"
    "	or eax, 0xc00\n"
    "	wrmsr\n"
    "	mov ecx, 0x80f\n"
    "	mov eax, 0x1ff\n"
    "	xor edx, edx\n"
    "	wrmsr\n"
    "	sti\n"
    "1:	out 0x10, al\n" /* PORT_DONE: ready for a command */
    "	mov rax, qword ptr [0x7000]\n"
    "	cmp rax, 1\n"
    "	je 10f\n"
    "	cmp rax, 2\n"
    "	je 20f\n"
    "	cmp rax, 3\n"
    "	je 30f\n"
    "	jmp 1b\n"
    /* CMD_TOUCH: in SKIP mode the #PF handler resumes at 12f */
    "10:	mov rsi, qword ptr [0x7008]\n"
    "	mov rcx, qword ptr [0x7010]\n"
    "	xor edx, edx\n"
    "	xor r8d, r8d\n"
    "	lea rax, [rip + 12f]\n"
    "	mov qword ptr [0x7050], rax\n"
    "11:	movzx eax, byte ptr [rsi]\n"
    "	add r8, rax\n"
    "	inc rdx\n"
    "12:	add rsi, 0x1000\n"
    "	dec rcx\n"
    "	jnz 11b\n"
    "	mov qword ptr [0x7050], 0\n"
    "	mov qword ptr [0x7018], rdx\n"
    "	mov qword ptr [0x7020], r8\n"
    "	jmp 1b\n"
    /* CMD_WAIT: cli; check; sti; hlt (no wake-up lost between check and hlt) */
    "20:	cli\n"
    "	mov rax, qword ptr [0x7030]\n"
    "	cmp rax, qword ptr [0x7008]\n"
    "	jae 21f\n"
    "	sti\n"
    "	hlt\n"
    "	jmp 20b\n"
    "21:	sti\n"
    "	jmp 1b\n"
    /* CMD_APF_MSRS */
    "30:	mov ecx, 0x4b564d06\n"
    "	mov eax, dword ptr [0x7008]\n"
    "	xor edx, edx\n"
    "	wrmsr\n"
    "	mov ecx, 0x4b564d02\n"
    "	mov eax, dword ptr [0x7010]\n"
    "	wrmsr\n"
    "	jmp 1b\n"
    /* #PF: error code on the stack; an async "page not present" or a bug */
    "guest_pf:\n"
    "	push rax\n"
    "	push rbx\n"
    "	push rcx\n"
    "	mov eax, dword ptr [0x6000]\n"
    "	test eax, eax\n"
    "	jz 49f\n"
    "	mov dword ptr [0x6000], 0\n"
    "	mov rbx, cr2\n"
    "	mov rcx, qword ptr [0x7028]\n"
    "	and ecx, 63\n"
    "	mov qword ptr [0x7090 + rcx * 8], rbx\n"
    "	inc qword ptr [0x7028]\n"
    "	mov qword ptr [0x7038], rbx\n"
    "	cmp qword ptr [0x7048], 1\n"
    "	je 45f\n"
    "	out 0x11, al\n" /* PORT_NP, then wait for this token's ready */
    "41:	cmp qword ptr [0x7040], rbx\n"
    "	je 42f\n"
    "	sti\n"
    "	hlt\n"
    "	cli\n"
    "	jmp 41b\n"
    "42:	pop rcx\n"
    "	pop rbx\n"
    "	pop rax\n"
    "	add rsp, 8\n"
    "	iretq\n"
    "45:	mov rax, qword ptr [0x7050]\n" /* SKIP: resume after the access */
    "	mov qword ptr [rsp + 32], rax\n"
    "	jmp 42b\n"
    "49:	mov qword ptr [0x7058], 14\n"
    "	mov rax, cr2\n"
    "	mov qword ptr [0x7060], rax\n"
    "	out 0x1e, al\n"
    "	jmp 49b\n"
    /* page ready (APF_VECTOR). A frame with IF clear was not raised by the
     * LAPIC: a second delivery by QEMU's TCG SVM model (tests/hw/README.md),
     * dropped with no EOI. */
    "guest_ready:\n"
    "	push rax\n"
    "	push rcx\n"
    "	push rdx\n"
    "	test qword ptr [rsp + 40], 0x200\n"
    "	jz 59f\n"
    "	mov ecx, 0x80b\n" /* EOI */
    "	xor eax, eax\n"
    "	xor edx, edx\n"
    "	wrmsr\n"
    "	mov eax, dword ptr [0x6004]\n"
    "	mov dword ptr [0x6004], 0\n"
    "	cmp eax, 0xffffffff\n"
    "	je 55f\n"
    "	mov rcx, qword ptr [0x7030]\n"
    "	and ecx, 63\n"
    "	mov qword ptr [0x7290 + rcx * 8], rax\n"
    "	mov qword ptr [0x7040], rax\n"
    "	inc qword ptr [0x7030]\n"
    "	jmp 56f\n"
    "55:	inc qword ptr [0x7070]\n"
    "56:	mov ecx, 0x4b564d07\n" /* MSR_KVM_ASYNC_PF_ACK */
    "	mov eax, 1\n"
    "	xor edx, edx\n"
    "	wrmsr\n"
    "57:	pop rdx\n"
    "	pop rcx\n"
    "	pop rax\n"
    "	iretq\n"
    "59:	inc qword ptr [0x7068]\n"
    "	jmp 57b\n"
    /* any other vector: stop and say so */
    "guest_other:\n"
    "	mov qword ptr [0x7058], 255\n"
    "	out 0x1e, al\n"
    "	cli\n"
    "	hlt\n"
    "	jmp guest_other\n"
    "guest_end:\n"
    ".att_syntax prefix\n"
    ".popsection\n");

static void set_bit_(unsigned long *b, uint64_t gfn)
{
	__atomic_or_fetch(&b[gfn / 64], 1ul << (gfn % 64), __ATOMIC_RELEASE);
}

static void clear_bit_(unsigned long *b, uint64_t gfn)
{
	__atomic_and_fetch(&b[gfn / 64], ~(1ul << (gfn % 64)), __ATOMIC_RELEASE);
}

void fill_page(struct vm *vm, unsigned i)
{
	vm->mem[page(i)] = (uint8_t)(i + 1);
	clear_bit_(vm->bitmap, page(i) >> 12);
}

static void set_gate(uint8_t *idt, unsigned vec, uint64_t addr)
{
	uint64_t lo =
	    (addr & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | (((addr >> 16) & 0xffff) << 48);
	uint64_t hi = addr >> 32;

	memcpy(idt + vec * 16, &lo, 8);
	memcpy(idt + vec * 16 + 8, &hi, 8);
}

static void vcpu_setup(struct vm *vm)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = {.rip = GUEST_CODE, .rsp = GUEST_STACK, .rflags = 2};
	struct kvm_segment code = {.limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1};
	struct kvm_segment data;
	int n = 100;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(cpuid->entries[0]));

	TEST_ASSERT(cpuid, "calloc");
	cpuid->nent = n;
	TEST_ASSERT(ioctl(vm->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0, "KVM_GET_SUPPORTED_CPUID");
	TEST_ASSERT(ioctl(vm->vcpu, KVM_SET_CPUID2, cpuid) == 0, "KVM_SET_CPUID2");
	free(cpuid);
	TEST_ASSERT(ioctl(vm->vcpu, KVM_GET_SREGS, &sregs) == 0, "KVM_GET_SREGS");
	code.s = code.l = code.g = 1;
	data = code;
	data.selector = 0x10;
	data.type = 3;
	data.l = 0;
	data.db = 1;
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.gdt.base = GUEST_GDT;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.idt.base = GUEST_IDT;
	sregs.idt.limit = 256 * 16 - 1;
	sregs.cr0 = 0x80000031; /* PG | NE | ET | PE */
	sregs.cr3 = GUEST_PML4;
	sregs.cr4 = 0x20;   /* PAE */
	sregs.efer = 0x500; /* LMA | LME */
	TEST_ASSERT(ioctl(vm->vcpu, KVM_SET_SREGS, &sregs) == 0, "KVM_SET_SREGS");
	TEST_ASSERT(ioctl(vm->vcpu, KVM_SET_REGS, &regs) == 0, "KVM_SET_REGS");
}

void vm_create(struct vm *vm)
{
	uint64_t *pml4, *pdpt, *pd, *gdt;
	size_t guest_len = (size_t)(guest_end - guest_start);

	memset(vm, 0, sizeof(*vm));
	vm->kvm = kvm_fd;
	vm->fd = ioctl(vm->kvm, KVM_CREATE_VM, 0);
	TEST_ASSERT(vm->fd >= 0, "KVM_CREATE_VM");
	TEST_ASSERT(ioctl(vm->fd, KVM_CREATE_IRQCHIP, 0) == 0, "KVM_CREATE_IRQCHIP");
	vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TEST_ASSERT(vm->mem != MAP_FAILED, "mmap guest memory");
	pml4 = (uint64_t *)(vm->mem + GUEST_PML4);
	pdpt = (uint64_t *)(vm->mem + GUEST_PDPT);
	pd = (uint64_t *)(vm->mem + GUEST_PD);
	gdt = (uint64_t *)(vm->mem + GUEST_GDT);
	pml4[0] = GUEST_PDPT | 3;
	pdpt[0] = GUEST_PD | 3;
	pd[0] = 0x000000 | 0x83; /* 2 MiB, present, writable */
	pd[1] = 0x200000 | 0x83;
	gdt[1] = 0x00209a0000000000ull; /* 64-bit code */
	gdt[2] = 0x0000920000000000ull; /* data */
	for (unsigned v = 0; v < 256; v++)
		set_gate(vm->mem + GUEST_IDT, v,
		         GUEST_CODE + (uint64_t)(guest_other - guest_start));
	set_gate(vm->mem + GUEST_IDT, 14, GUEST_CODE + (uint64_t)(guest_pf - guest_start));
	set_gate(vm->mem + GUEST_IDT, APF_VECTOR,
	         GUEST_CODE + (uint64_t)(guest_ready - guest_start));
	TEST_ASSERT(guest_len < 0x10000, "guest code %zu bytes", guest_len);
	memcpy(vm->mem + GUEST_CODE, guest_start, guest_len);
	vm->mb = (volatile struct mbox *)(vm->mem + GUEST_MBOX);
	/* every data page missing */
	vm->bitmap = calloc(MEM_SIZE / 4096 / 64, sizeof(unsigned long));
	TEST_ASSERT(vm->bitmap, "calloc bitmap");
	for (unsigned i = 0; i < DATA_PAGES; i++)
		set_bit_(vm->bitmap, page(i) >> 12);

	struct kvm_userspace_memory_region2 r = {.slot = 0,
	                                         .flags = KVM_MEM_USERFAULT,
	                                         .guest_phys_addr = 0,
	                                         .memory_size = MEM_SIZE,
	                                         .userspace_addr = (uint64_t)(uintptr_t)vm->mem,
	                                         .userfault_bitmap =
	                                             (uint64_t)(uintptr_t)vm->bitmap};
	TEST_ASSERT(ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION2, &r) == 0, "userfault slot");
	vm->vcpu = vcpu_create_mapped(vm->kvm, vm->fd, &vm->run);
	vcpu_setup(vm);
}

void vm_destroy(struct vm *vm)
{
	/* the mapping holds the vCPU fd's file: unmapped, the VM goes now */
	munmap(vm->run, (size_t)ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
	close(vm->vcpu);
	close(vm->fd);
	munmap(vm->mem, MEM_SIZE);
	free(vm->bitmap);
}
