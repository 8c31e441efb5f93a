// SPDX-License-Identifier: GPL-2.0-only
/*
 * Async page faults for userfault exits (kernel/patches/0004-): a tiny 64-bit
 * guest per case, in the manner of KVM's selftests. Every ioctl result is
 * checked; a failed check prints the expression, file and line and exits 1.
 * Exit 0 when every case passed, 77 when the kernel has no
 * KVM_CAP_ASYNC_PF_USERFAULT (stock KVM).
 *
 * The guest (guest_start..guest_end below, copied to GUEST_CODE) runs in long
 * mode with 2 MiB identity pages, x2APIC on, and PV async page faults enabled
 * by a command (MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_EN with ENABLED |
 * DELIVERY_AS_INT | SEND_ALWAYS). Its #PF handler reads the "page not present"
 * reason from the async PF data and the token from CR2; its page-ready handler
 * reads the token, EOIs and ACKs (MSR_KVM_ASYNC_PF_ACK). Both count and log
 * what they took in the mailbox page, which is the evidence checked here: not
 * the test's word. The guest takes commands from the mailbox and says "done"
 * with an OUT to PORT_DONE; in WAIT mode its #PF handler says "not present
 * taken" with an OUT to PORT_NP, then halts until the ready for its token.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvm_test.h"
#include "lazyvm/compat.h"

#ifndef KVM_CAP_USERFAULT
#define KVM_CAP_USERFAULT 245
#endif
#ifndef KVM_CAP_ASYNC_PF_USERFAULT
#define KVM_CAP_ASYNC_PF_USERFAULT 246
#endif
#ifndef KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD
#define KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD 247
#endif
#ifndef KVM_MEMORY_EXIT_FLAG_APF
#define KVM_MEMORY_EXIT_FLAG_APF (1ull << 5)
#endif
#ifndef KVM_ASYNC_PF
struct kvm_async_pf_req {
	__u64 gpa;
	__u32 op;
	__u32 flags;
	__u64 reserved[2];
};
#define KVM_ASYNC_PF      _IOW(KVMIO, 0xd6, struct kvm_async_pf_req)
#define KVM_APF_OP_ACCEPT 1
#define KVM_APF_OP_READY  2
#endif
#ifndef KVM_SET_APF_EVENTFD
struct kvm_apf_eventfd {
	__s32 fd;
	__s32 complete_fd;
	__u32 flags;
	__u32 padding;
	__u64 reserved[2];
};
#define KVM_SET_APF_EVENTFD _IOW(KVMIO, 0xd9, struct kvm_apf_eventfd)
#endif
#define APF_PAGE_OFFSET 3

/* The ring page, as a VMM sees it (the uAPI's struct kvm_apf_rings). */
struct ring_entry {
	uint64_t gpa, flags; /* flags bits 31:0: the token */
};
struct ring {
	_Atomic uint32_t head;
	uint32_t pad0[15];
	_Atomic uint32_t tail;
	uint32_t pad1[15];
	struct ring_entry e[64];
};
struct rings {
	uint32_t version, ring_size, entry_size;
	_Atomic uint32_t flags;
	uint64_t reserved[6];
	struct ring notify, complete;
};
_Static_assert(__builtin_offsetof(struct rings, notify) == 64, "rings layout");
_Static_assert(__builtin_offsetof(struct ring, tail) == 64, "ring layout");
_Static_assert(__builtin_offsetof(struct ring, e) == 128, "ring layout");
_Static_assert(sizeof(struct rings) == 64 + 2 * (128 + 64 * 16), "rings layout");

/* Guest physical layout: slot 0, 4 MiB at 0; the userfault pages from 2 MiB. */
#define MEM_SIZE     (4ul << 20)
#define GUEST_PML4   0x1000ul
#define GUEST_PDPT   0x2000ul
#define GUEST_PD     0x3000ul
#define GUEST_GDT    0x4000ul
#define GUEST_IDT    0x5000ul
#define GUEST_APF    0x6000ul /* struct kvm_vcpu_pv_apf_data */
#define GUEST_MBOX   0x7000ul
#define GUEST_STACK  0x10000ul /* top; grows down to 0x8000 */
#define GUEST_CODE   0x10000ul
#define DATA_GPA     0x200000ul /* page i at DATA_GPA + i * 4096 */
#define DATA_PAGES   128u
#define APF_VECTOR   0xec
#define PORT_DONE    0x10
#define PORT_NP      0x11
#define PORT_BAD     0x1e
#define MSR_APF_EN   0x4b564d02
#define MSR_APF_INT  0x4b564d06
#define APF_EN_BITS  (1u | 2u | 8u) /* ENABLED | SEND_ALWAYS | DELIVERY_AS_INT */
#define PF_MODE_WAIT 0
#define PF_MODE_SKIP 1
#define CMD_TOUCH    1 /* arg0 first gpa, arg1 pages: read a byte of each */
#define CMD_WAIT     2 /* until ready >= arg0 */
#define CMD_APF_MSRS 3 /* MSR_KVM_ASYNC_PF_INT = arg0, MSR_KVM_ASYNC_PF_EN = arg1 */
#define RING_ENTRIES 64u
#define NOTIFY_ARMED 1u

/* The mailbox page (GUEST_MBOX), as the guest's code below uses it. */
struct mbox {
	uint64_t cmd, arg0, arg1, touched, sum;    /* 0x00 .. 0x20 */
	uint64_t np, ready, last_np, last_ready;   /* 0x28 .. 0x40 */
	uint64_t pf_mode, fixup, bad_vec, bad_cr2; /* 0x48 .. 0x60 */
	uint64_t dropped, wakeall, pad[3];         /* 0x68 .. 0x88 */
	uint64_t np_tokens[64], ready_tokens[64];  /* 0x90, 0x290 */
};
_Static_assert(__builtin_offsetof(struct mbox, np) == 0x28, "mbox layout");
_Static_assert(__builtin_offsetof(struct mbox, pf_mode) == 0x48, "mbox layout");
_Static_assert(__builtin_offsetof(struct mbox, dropped) == 0x68, "mbox layout");
_Static_assert(__builtin_offsetof(struct mbox, np_tokens) == 0x90, "mbox layout");
_Static_assert(__builtin_offsetof(struct mbox, ready_tokens) == 0x290, "mbox layout");

/*
 * The guest. Absolute addresses are the constants above (the mailbox at
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

struct vm {
	int kvm, fd, vcpu;
	struct kvm_run *run;
	uint8_t *mem;
	unsigned long *bitmap; /* MEM_SIZE / 4096 bits */
	volatile struct mbox *mb;
};

static const char *current_case = "setup";
static int kvm_fd = -1;

static void on_alarm(int sig)
{
	(void)sig;
	dprintf(2, "apf_test: FAILED: case '%s' timed out\n", current_case);
	_exit(1);
}

static uint64_t page(unsigned i)
{
	return DATA_GPA + (uint64_t)i * 4096;
}

static void set_bit_(unsigned long *b, uint64_t gfn)
{
	__atomic_or_fetch(&b[gfn / 64], 1ul << (gfn % 64), __ATOMIC_RELEASE);
}

static void clear_bit_(unsigned long *b, uint64_t gfn)
{
	__atomic_and_fetch(&b[gfn / 64], ~(1ul << (gfn % 64)), __ATOMIC_RELEASE);
}

/* "Install" page i (its byte is i + 1) and clear its bit, as a VMM would. */
static void fill_page(struct vm *vm, unsigned i)
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

static void vm_create(struct vm *vm)
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

static void vm_destroy(struct vm *vm)
{
	/* the mapping holds the vCPU fd's file: unmapped, the VM goes now */
	munmap(vm->run, (size_t)ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
	close(vm->vcpu);
	close(vm->fd);
	munmap(vm->mem, MEM_SIZE);
	free(vm->bitmap);
}

/* KVM_RUN until an exit that is not PORT_DONE's "I am here" of a command not
 * yet given: returns the port of an IO exit, or -1 for a userfault exit. */
static int run_once(struct vm *vm, const char *what)
{
	int r = ioctl(vm->vcpu, KVM_RUN, 0);

	if (r == -1 && errno == EFAULT && vm->run->exit_reason == KVM_EXIT_MEMORY_FAULT)
		return -1;
	TEST_ASSERT(r == 0, "%s: KVM_RUN returned %d, exit reason %u", what, r,
	            vm->run->exit_reason);
	TEST_ASSERT(vm->run->exit_reason == KVM_EXIT_IO, "%s: exit reason %u, want IO", what,
	            vm->run->exit_reason);
	if (vm->run->io.port == PORT_BAD)
		TEST_ASSERT(0, "%s: the guest took vector %llu (cr2 0x%llx)", what,
		            (unsigned long long)vm->mb->bad_vec,
		            (unsigned long long)vm->mb->bad_cr2);
	return vm->run->io.port;
}

static void run_port(struct vm *vm, int port, const char *what)
{
	int p = run_once(vm, what);

	TEST_ASSERT(p == port, "%s: exit %s %d, want port 0x%x", what, p < 0 ? "userfault" : "port",
	            p < 0 ? 0 : p, port);
}

/* A userfault exit at gpa with exactly these flags. */
static void run_userfault(struct vm *vm, uint64_t gpa, uint64_t flags, const char *what)
{
	const struct lv_kvm_memory_fault *mf = kvm_run_memory_fault(vm->run);
	int p = run_once(vm, what);

	TEST_ASSERT(p == -1, "%s: port 0x%x, want a userfault exit", what, p);
	TEST_ASSERT(mf->flags == flags && mf->gpa == gpa && mf->size == 4096,
	            "%s: flags 0x%llx gpa 0x%llx size %llu, want flags 0x%llx gpa 0x%llx", what,
	            (unsigned long long)mf->flags, (unsigned long long)mf->gpa,
	            (unsigned long long)mf->size, (unsigned long long)flags,
	            (unsigned long long)gpa);
}

/* Give the guest a command; it is at PORT_DONE (start, or the last one done). */
static void command(struct vm *vm, uint64_t cmd, uint64_t arg0, uint64_t arg1)
{
	vm->mb->arg0 = arg0;
	vm->mb->arg1 = arg1;
	vm->mb->cmd = cmd;
}

/* The guest's first exit (PORT_DONE), then async PF on with its MSRs. */
static void guest_apf_on(struct vm *vm)
{
	run_port(vm, PORT_DONE, "boot");
	command(vm, CMD_APF_MSRS, APF_VECTOR, GUEST_APF | APF_EN_BITS);
	run_port(vm, PORT_DONE, "async PF MSRs");
	/* enabling queues a wake-all "page ready" (token ~0); let it land */
	command(vm, 0, 0, 0);
	run_port(vm, PORT_DONE, "after enabling");
}

static int apf_req(struct vm *vm, uint64_t gpa, uint32_t op, uint32_t flags, uint64_t r0,
                   uint64_t r1)
{
	struct kvm_async_pf_req req = {.gpa = gpa, .op = op, .flags = flags, .reserved = {r0, r1}};

	return ioctl(vm->vcpu, KVM_ASYNC_PF, &req) < 0 ? -errno : 0;
}

static int enable_cap(struct vm *vm, uint32_t cap, uint64_t a0, uint64_t a1)
{
	struct kvm_enable_cap c = {.cap = cap, .args = {a0, a1}};

	return ioctl(vm->vcpu, KVM_ENABLE_CAP, &c) < 0 ? -errno : 0;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A KVM_RUN on another thread, to see what READY does while it runs. */
struct runner {
	struct vm *vm;
	pthread_t t;
	atomic_int in_run; /* 1 from just before the ioctl until it returned */
	int port;
	double returned_ms;
};

static void *runner_main(void *arg)
{
	struct runner *r = arg;

	atomic_store(&r->in_run, 1);
	r->port = run_once(r->vm, "KVM_RUN on the vCPU thread");
	r->returned_ms = now_ms();
	atomic_store(&r->in_run, 0);
	return NULL;
}

static void runner_start(struct runner *r, struct vm *vm)
{
	memset(r, 0, sizeof(*r));
	r->vm = vm;
	TEST_ASSERT(pthread_create(&r->t, NULL, runner_main, r) == 0, "pthread_create");
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

/* What the guest says it did: pages read and their bytes' sum in the last
 * CMD_TOUCH, "page not present" and "page ready" taken so far. */
static void expect_guest(struct vm *vm, uint64_t touched, uint64_t sum, uint64_t np, uint64_t ready,
                         const char *what)
{
	volatile struct mbox *mb = vm->mb;

	TEST_ASSERT(mb->touched == touched && mb->sum == sum && mb->np == np && mb->ready == ready,
	            "%s: guest read %llu pages (sum %llu), took np %llu ready %llu; want %llu "
	            "(%llu), %llu, %llu",
	            what, (unsigned long long)mb->touched, (unsigned long long)mb->sum,
	            (unsigned long long)mb->np, (unsigned long long)mb->ready,
	            (unsigned long long)touched, (unsigned long long)sum, (unsigned long long)np,
	            (unsigned long long)ready);
}

static int passed;
#define CASE(name) (current_case = (name), printf("apf_test: case %s\n", name))
#define OK()       (passed++, printf("apf_test: ok\n"))

static void case_exitful(void)
{
	struct vm vm;
	struct runner rn;
	uint64_t token;
	double t0, t1;

	CASE("cap off: a plain userfault exit, no APF flag; the guest runs once the page is in");
	vm_create(&vm);
	guest_apf_on(&vm);
	command(&vm, CMD_TOUCH, page(0), 1);
	run_userfault(&vm, page(0), KVM_MEMORY_EXIT_FLAG_USERFAULT, "cap off");
	fill_page(&vm, 0);
	run_port(&vm, PORT_DONE, "page 0 in");
	expect_guest(&vm, 1, 1, 0, 0, "cap off");
	TEST_ASSERT(vm.mb->wakeall == 1, "guest took %llu wake-all ready, want 1 (from enabling)",
	            (unsigned long long)vm.mb->wakeall);
	TEST_ASSERT(apf_req(&vm, page(0), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT after a plain exit");
	OK();

	CASE("KVM_ENABLE_CAP(246) arguments");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 2, 0) == -EINVAL, "args[0] = 2");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 1) == -EINVAL, "args[1] = 1");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 0) == 0, "on");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 0, 0) == 0, "off");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 0) == 0, "on again");
	OK();

	CASE("cap on: USERFAULT|APF; resolve and re-enter injects nothing");
	command(&vm, CMD_TOUCH, page(1), 1);
	run_userfault(&vm, page(1), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "cap on");
	fill_page(&vm, 1);
	run_port(&vm, PORT_DONE, "page 1 in");
	expect_guest(&vm, 1, 2, 0, 0, "resolved and re-entered");
	TEST_ASSERT(apf_req(&vm, page(1), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT after re-entry");
	OK();

	CASE("bad requests: EINVAL / ENOENT, and nothing changes");
	command(&vm, CMD_TOUCH, page(2), 1);
	run_userfault(&vm, page(2), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "page 2");
	TEST_ASSERT(apf_req(&vm, page(3), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT for a gpa that did not fault");
	TEST_ASSERT(apf_req(&vm, page(2) + 8, KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "gpa not page aligned");
	TEST_ASSERT(apf_req(&vm, page(2), 0, 0, 0, 0) == -EINVAL, "op 0");
	TEST_ASSERT(apf_req(&vm, page(2), 3, 0, 0, 0) == -EINVAL, "op 3");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 1, 0, 0) == -EINVAL, "flags 1");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 1, 0) == -EINVAL, "reserved[0]");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 1) == -EINVAL, "reserved[1]");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY before ACCEPT");
	TEST_ASSERT(apf_req(&vm, page(7), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY for an unknown gpa");
	OK();

	CASE("ACCEPT: the guest takes 'not present' and runs on; READY from another thread "
	     "during KVM_RUN returns at once; the guest takes 'page ready' with the same token");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL, "ACCEPT twice");
	run_port(&vm, PORT_NP, "after ACCEPT");
	token = vm.mb->last_np;
	TEST_ASSERT(vm.mb->np == 1 && token != 0 && token <= 0xffffffffu,
	            "guest took np %llu, token 0x%llx", (unsigned long long)vm.mb->np,
	            (unsigned long long)token);
	runner_start(&rn, &vm);
	sleep_ms(200); /* the guest halts in its #PF handler: KVM_RUN does not return */
	TEST_ASSERT(atomic_load(&rn.in_run) == 1, "KVM_RUN returned (port 0x%x) before READY",
	            rn.port);
	fill_page(&vm, 2);
	t0 = now_ms();
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	t1 = now_ms();
	TEST_ASSERT(pthread_join(rn.t, NULL) == 0, "pthread_join");
	TEST_ASSERT(rn.port == PORT_DONE, "vCPU thread: port 0x%x", rn.port);
	printf("apf_test: READY took %.3f ms while the vCPU was in KVM_RUN; KVM_RUN returned "
	       "(the guest done) %.3f ms after READY was called\n",
	       t1 - t0, rn.returned_ms - t0);
	TEST_ASSERT(t1 - t0 < 100, "READY took %.1f ms", t1 - t0);
	TEST_ASSERT(vm.mb->ready == 1 && vm.mb->last_ready == token,
	            "guest took ready %llu, token 0x%llx, want 0x%llx",
	            (unsigned long long)vm.mb->ready, (unsigned long long)vm.mb->last_ready,
	            (unsigned long long)token);
	TEST_ASSERT(vm.mb->touched == 1 && vm.mb->sum == 3, "guest read %llu pages, sum %llu",
	            (unsigned long long)vm.mb->touched, (unsigned long long)vm.mb->sum);
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT, "READY twice");
	printf("apf_test: token 0x%llx, guest np %llu ready %llu dropped %llu\n",
	       (unsigned long long)token, (unsigned long long)vm.mb->np,
	       (unsigned long long)vm.mb->ready, (unsigned long long)vm.mb->dropped);
	OK();

	CASE("64 outstanding (the guest skips each page): the 65th exit has no APF flag; "
	     "64 READYs, 64 'page ready' with the 64 tokens");
	{
		uint64_t np0 = vm.mb->np, rd0 = vm.mb->ready;
		const unsigned base = 10, n = 64;

		vm.mb->pf_mode = PF_MODE_SKIP;
		command(&vm, CMD_TOUCH, page(base), n + 1);
		for (unsigned i = 0; i < n; i++) {
			run_userfault(&vm, page(base + i),
			              KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
			              "outstanding");
			TEST_ASSERT(apf_req(&vm, page(base + i), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0,
			            "ACCEPT %u", i);
		}
		run_userfault(&vm, page(base + n), KVM_MEMORY_EXIT_FLAG_USERFAULT, "65th");
		TEST_ASSERT(apf_req(&vm, page(base + n), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
		            "ACCEPT of the plain 65th exit");
		fill_page(&vm, base + n);
		run_port(&vm, PORT_DONE, "65 touched");
		TEST_ASSERT(vm.mb->np - np0 == n && vm.mb->touched == 1,
		            "guest took np %llu, read %llu pages",
		            (unsigned long long)(vm.mb->np - np0),
		            (unsigned long long)vm.mb->touched);
		for (unsigned i = 0; i < n; i++) {
			fill_page(&vm, base + i);
			TEST_ASSERT(apf_req(&vm, page(base + i), KVM_APF_OP_READY, 0, 0, 0) == 0,
			            "READY %u", i);
		}
		command(&vm, CMD_WAIT, rd0 + n, 0);
		run_port(&vm, PORT_DONE, "wait for 64 ready");
		for (unsigned i = 0; i < n; i++) {
			uint64_t t = vm.mb->np_tokens[(np0 + i) % 64];
			unsigned found = 0;

			for (unsigned j = 0; j < n; j++)
				found += vm.mb->ready_tokens[(rd0 + j) % 64] == t;
			TEST_ASSERT(found == 1, "token 0x%llx readied %u times",
			            (unsigned long long)t, found);
		}
		vm.mb->pf_mode = PF_MODE_WAIT;
	}
	OK();

	CASE("the guest disables async PF with one outstanding: dropped, READY gives ENOENT");
	vm.mb->pf_mode = PF_MODE_SKIP;
	command(&vm, CMD_TOUCH, page(80), 1);
	run_userfault(&vm, page(80), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "page 80");
	TEST_ASSERT(apf_req(&vm, page(80), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	run_port(&vm, PORT_DONE, "skipped page 80");
	command(&vm, CMD_APF_MSRS, APF_VECTOR, 0);
	run_port(&vm, PORT_DONE, "async PF off");
	TEST_ASSERT(apf_req(&vm, page(80), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY after the guest disabled async PF");
	command(&vm, CMD_TOUCH, page(81), 1);
	run_userfault(&vm, page(81), KVM_MEMORY_EXIT_FLAG_USERFAULT,
	              "async PF off in the guest: no APF flag");
	fill_page(&vm, 81);
	run_port(&vm, PORT_DONE, "page 81 in");
	OK();

	CASE("VM destroyed with accepted async PFs outstanding");
	command(&vm, CMD_APF_MSRS, APF_VECTOR, GUEST_APF | APF_EN_BITS);
	run_port(&vm, PORT_DONE, "async PF on again");
	command(&vm, CMD_TOUCH, page(90), 4);
	for (unsigned i = 0; i < 4; i++) {
		run_userfault(&vm, page(90 + i),
		              KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
		              "outstanding at destroy");
		TEST_ASSERT(apf_req(&vm, page(90 + i), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	}
	run_port(&vm, PORT_DONE, "4 skipped");
	/* two of them ready but never delivered, two still waiting */
	fill_page(&vm, 90);
	fill_page(&vm, 91);
	TEST_ASSERT(apf_req(&vm, page(90), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	TEST_ASSERT(apf_req(&vm, page(91), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	vm_destroy(&vm);
	OK();
}

/* ---- exitless (KVM_SET_APF_EVENTFD) ------------------------------------- */

static int set_apf_eventfd(struct vm *vm, int fd, int complete_fd, uint32_t flags, uint32_t padding,
                           uint64_t r0)
{
	struct kvm_apf_eventfd a = {.fd = fd,
	                            .complete_fd = complete_fd,
	                            .flags = flags,
	                            .padding = padding,
	                            .reserved = {r0, 0}};

	return ioctl(vm->vcpu, KVM_SET_APF_EVENTFD, &a) < 0 ? -errno : 0;
}

static struct rings *map_rings(struct vm *vm)
{
	struct rings *r =
	    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, APF_PAGE_OFFSET * 4096);

	TEST_ASSERT(r != MAP_FAILED, "mmap the ring page");
	return r;
}

static bool ring_pop(struct ring *r, struct ring_entry *e)
{
	uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);

	if (head == atomic_load_explicit(&r->tail, memory_order_acquire))
		return false;
	*e = r->e[head % RING_ENTRIES];
	atomic_store_explicit(&r->head, head + 1, memory_order_release);
	return true;
}

static void ring_push(struct ring *r, uint64_t gpa, uint64_t token)
{
	uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);

	TEST_ASSERT(tail - atomic_load_explicit(&r->head, memory_order_acquire) < RING_ENTRIES,
	            "complete ring full");
	r->e[tail % RING_ENTRIES] = (struct ring_entry){.gpa = gpa, .flags = token};
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
}

/* The eventfd's count, 0 when it was not signalled (EFD_NONBLOCK). */
static uint64_t efd_take(int fd)
{
	uint64_t n = 0;

	if (read(fd, &n, 8) != 8) {
		TEST_ASSERT(errno == EAGAIN, "read eventfd");
		return 0;
	}
	return n;
}

static void efd_signal(int fd)
{
	uint64_t one = 1;

	TEST_ASSERT(write(fd, &one, 8) == 8, "write eventfd");
}

static sigjmp_buf sigbus_jmp;

static void on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(sigbus_jmp, 1);
}

/* Whether reading the first word of p raises SIGBUS. */
static bool read_sigbus(volatile uint32_t *p)
{
	struct sigaction sa = {.sa_handler = on_sigbus}, old;
	bool bus = false;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(sigbus_jmp, 1) == 0)
		(void)*p;
	else
		bus = true;
	sigaction(SIGBUS, &old, NULL);
	return bus;
}

struct exitless {
	int nfd, cfd;
	struct rings *r;
};

static void exitless_on(struct vm *vm, struct exitless *x)
{
	x->nfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	x->cfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	TEST_ASSERT(x->nfd >= 0 && x->cfd >= 0, "eventfd");
	TEST_ASSERT(set_apf_eventfd(vm, x->nfd, x->cfd, 0, 0, 0) == 0, "KVM_SET_APF_EVENTFD");
	x->r = map_rings(vm);
	TEST_ASSERT(x->r->version == 1 && x->r->ring_size == 64 && x->r->entry_size == 16,
	            "ring header version %u ring_size %u entry_size %u", x->r->version,
	            x->r->ring_size, x->r->entry_size);
}

/* The guest's token of the notify entry for gpa, popped from the ring. */
static uint64_t notify_pop(struct exitless *x, uint64_t gpa, const char *what)
{
	struct ring_entry e;

	TEST_ASSERT(ring_pop(&x->r->notify, &e), "%s: notify ring empty", what);
	TEST_ASSERT(e.gpa == gpa && (e.flags >> 32) == 0 && e.flags != 0,
	            "%s: notify entry gpa 0x%llx flags 0x%llx, want gpa 0x%llx", what,
	            (unsigned long long)e.gpa, (unsigned long long)e.flags,
	            (unsigned long long)gpa);
	return e.flags;
}

static void case_exitless(void)
{
	struct vm vm;
	struct exitless x;
	struct runner rn;
	uint64_t token, np, rd;
	double t0;

	CASE("KVM_SET_APF_EVENTFD: bad arguments refused; the page SIGBUSes before the first");
	vm_create(&vm);
	{
		int efd = eventfd(0, EFD_NONBLOCK), pipefd[2];
		struct rings *early = map_rings(&vm);

		TEST_ASSERT(efd >= 0 && pipe(pipefd) == 0, "eventfd, pipe");
		TEST_ASSERT(read_sigbus(&early->version), "the ring page before it exists");
		munmap(early, 4096);
		TEST_ASSERT(set_apf_eventfd(&vm, efd, efd, 1, 0, 0) == -EINVAL, "flags");
		TEST_ASSERT(set_apf_eventfd(&vm, efd, efd, 0, 1, 0) == -EINVAL, "padding");
		TEST_ASSERT(set_apf_eventfd(&vm, efd, efd, 0, 0, 1) == -EINVAL, "reserved");
		TEST_ASSERT(set_apf_eventfd(&vm, 1000, efd, 0, 0, 0) == -EBADF,
		            "notify fd not open");
		TEST_ASSERT(set_apf_eventfd(&vm, efd, 1000, 0, 0, 0) == -EBADF,
		            "complete fd not open");
		TEST_ASSERT(set_apf_eventfd(&vm, pipefd[0], efd, 0, 0, 0) == -EINVAL,
		            "notify fd a pipe");
		TEST_ASSERT(set_apf_eventfd(&vm, efd, pipefd[0], 0, 0, 0) == -EINVAL,
		            "complete fd a pipe");
		TEST_ASSERT(set_apf_eventfd(&vm, -1, efd, 0, 0, 0) == -EBADF, "notify fd -1 alone");
		TEST_ASSERT(set_apf_eventfd(&vm, -1, -1, 0, 0, 0) == 0, "off while off");
		close(pipefd[0]);
		close(pipefd[1]);
		close(efd);
	}
	exitless_on(&vm, &x);
	TEST_ASSERT(set_apf_eventfd(&vm, x.nfd, x.cfd, 0, 0, 0) == -EBUSY, "on twice");
	OK();

	CASE("exitless: no exit; a notify entry with gpa and the guest's token; the eventfd "
	     "signalled when ARMED; a complete entry plus its eventfd wake the halted vCPU with "
	     "'page ready'");
	guest_apf_on(&vm);
	atomic_store(&x.r->flags, NOTIFY_ARMED);
	command(&vm, CMD_TOUCH, page(0), 1);
	run_port(&vm, PORT_NP, "exitless fault"); /* a userfault exit here fails the case */
	token = notify_pop(&x, page(0), "page 0");
	TEST_ASSERT(token == vm.mb->last_np && vm.mb->np == 1, "notify token 0x%llx, guest 0x%llx",
	            (unsigned long long)token, (unsigned long long)vm.mb->last_np);
	TEST_ASSERT(efd_take(x.nfd) == 1, "notify eventfd not signalled though ARMED");
	TEST_ASSERT((atomic_load(&x.r->flags) & NOTIFY_ARMED) == 0, "ARMED not cleared");
	runner_start(&rn, &vm);
	sleep_ms(200);
	TEST_ASSERT(atomic_load(&rn.in_run) == 1, "KVM_RUN returned (port 0x%x)", rn.port);
	fill_page(&vm, 0);
	ring_push(&x.r->complete, page(0), token);
	t0 = now_ms();
	efd_signal(x.cfd);
	TEST_ASSERT(pthread_join(rn.t, NULL) == 0, "pthread_join");
	TEST_ASSERT(rn.port == PORT_DONE, "vCPU thread: port 0x%x", rn.port);
	printf("apf_test: complete eventfd to the guest done (KVM_RUN returned): %.3f ms\n",
	       rn.returned_ms - t0);
	expect_guest(&vm, 1, 1, 1, 1, "exitless");
	TEST_ASSERT(vm.mb->last_ready == token, "ready token 0x%llx, want 0x%llx",
	            (unsigned long long)vm.mb->last_ready, (unsigned long long)token);
	TEST_ASSERT(atomic_load(&x.r->complete.head) == 1, "complete head %u",
	            atomic_load(&x.r->complete.head));
	OK();

	CASE("not ARMED: no signal; a complete entry with no eventfd write is drained at entry");
	command(&vm, CMD_TOUCH, page(1), 1);
	run_port(&vm, PORT_NP, "exitless fault");
	token = notify_pop(&x, page(1), "page 1");
	TEST_ASSERT(efd_take(x.nfd) == 0, "notify eventfd signalled though not ARMED");
	fill_page(&vm, 1);
	ring_push(&x.r->complete, page(1), token);
	run_port(&vm, PORT_DONE, "drained at entry");
	expect_guest(&vm, 1, 2, 2, 2, "drained at entry");
	OK();

	CASE("complete entries that match nothing are dropped, never injected");
	ring_push(&x.r->complete, page(5), 0x1234);
	ring_push(&x.r->complete, page(1), token); /* completed already */
	efd_signal(x.cfd);
	sleep_ms(50);
	command(&vm, 0, 0, 0);
	run_port(&vm, PORT_DONE, "no-op");
	TEST_ASSERT(atomic_load(&x.r->complete.head) == 4, "complete head %u, want 4",
	            atomic_load(&x.r->complete.head));
	expect_guest(&vm, 1, 2, 2, 2, "after unmatched entries");
	OK();

	CASE("64 exitless outstanding with no exit; the 65th a plain exit; a full ring with 63 "
	     "outstanding falls back to an APF exit (exitful and exitless on one vCPU)");
	{
		const unsigned base = 10, n = 64;
		uint64_t tokens[64];
		struct ring_entry e;

		np = vm.mb->np;
		rd = vm.mb->ready;
		vm.mb->pf_mode = PF_MODE_SKIP;
		command(&vm, CMD_TOUCH, page(base), n);
		run_port(&vm, PORT_DONE, "64 touched, no exit");
		TEST_ASSERT(vm.mb->np - np == n && vm.mb->touched == 0,
		            "guest took np %llu, read %llu", (unsigned long long)(vm.mb->np - np),
		            (unsigned long long)vm.mb->touched);
		TEST_ASSERT(atomic_load(&x.r->notify.tail) - atomic_load(&x.r->notify.head) == n,
		            "notify ring holds %u",
		            atomic_load(&x.r->notify.tail) - atomic_load(&x.r->notify.head));
		/* peek at the entries without consuming them: the ring stays full */
		for (unsigned i = 0; i < n; i++) {
			e = x.r->notify.e[(atomic_load(&x.r->notify.head) + i) % RING_ENTRIES];
			TEST_ASSERT(e.gpa == page(base + i) &&
			                e.flags == vm.mb->np_tokens[(np + i) % 64],
			            "notify entry %u: gpa 0x%llx token 0x%llx", i,
			            (unsigned long long)e.gpa, (unsigned long long)e.flags);
			tokens[i] = e.flags;
		}
		command(&vm, CMD_TOUCH, page(base + n), 1);
		run_userfault(&vm, page(base + n), KVM_MEMORY_EXIT_FLAG_USERFAULT,
		              "65th: 64 outstanding");
		fill_page(&vm, base + n);
		run_port(&vm, PORT_DONE, "65th in");
		/* complete the first through the complete ring, notify.head left alone */
		fill_page(&vm, base);
		ring_push(&x.r->complete, page(base), tokens[0]);
		command(&vm, CMD_WAIT, rd + 1, 0);
		run_port(&vm, PORT_DONE, "first ready");
		command(&vm, CMD_TOUCH, page(base + n + 1), 1);
		run_userfault(&vm, page(base + n + 1),
		              KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
		              "notify ring full, 63 outstanding");
		TEST_ASSERT(apf_req(&vm, page(base + n + 1), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0,
		            "ACCEPT the fallback exit");
		run_port(&vm, PORT_DONE, "accepted, skipped");
		TEST_ASSERT(vm.mb->np - np == n + 1, "guest took np %llu",
		            (unsigned long long)(vm.mb->np - np));
		/* now drain the notify ring and complete the rest both ways */
		for (unsigned i = 0; i < n; i++)
			TEST_ASSERT(notify_pop(&x, page(base + i), "drain") == tokens[i],
			            "token %u", i);
		for (unsigned i = 1; i < n; i++) {
			fill_page(&vm, base + i);
			ring_push(&x.r->complete, page(base + i), tokens[i]);
		}
		efd_signal(x.cfd);
		fill_page(&vm, base + n + 1);
		TEST_ASSERT(apf_req(&vm, page(base + n + 1), KVM_APF_OP_READY, 0, 0, 0) == 0,
		            "READY");
		command(&vm, CMD_WAIT, rd + n + 1, 0);
		run_port(&vm, PORT_DONE, "all ready");
		TEST_ASSERT(vm.mb->ready - rd == n + 1, "guest took ready %llu",
		            (unsigned long long)(vm.mb->ready - rd));
		printf("apf_test: %u exitless async PFs without an exit, %u exitful beside them\n",
		       n, 1);
	}
	OK();

	CASE("eventfds closed and the page unmapped mid-run: exitless goes on, no crash; off, "
	     "then READY completes what was outstanding; off means plain exits");
	np = vm.mb->np;
	rd = vm.mb->ready;
	command(&vm, CMD_TOUCH, page(100), 2);
	run_port(&vm, PORT_DONE, "2 exitless");
	close(x.nfd);
	close(x.cfd);
	munmap(x.r, 4096);
	command(&vm, CMD_TOUCH, page(102), 1);
	run_port(&vm, PORT_DONE, "1 more with the fds closed and the page unmapped");
	TEST_ASSERT(vm.mb->np - np == 3, "guest took np %llu",
	            (unsigned long long)(vm.mb->np - np));
	TEST_ASSERT(set_apf_eventfd(&vm, -1, -1, 0, 0, 0) == 0, "exitless off");
	for (unsigned i = 100; i < 103; i++) {
		fill_page(&vm, i);
		TEST_ASSERT(apf_req(&vm, page(i), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY %u", i);
	}
	command(&vm, CMD_WAIT, rd + 3, 0);
	run_port(&vm, PORT_DONE, "3 ready");
	command(&vm, CMD_TOUCH, page(103), 1);
	run_userfault(&vm, page(103), KVM_MEMORY_EXIT_FLAG_USERFAULT, "exitless off, 246 never on");
	fill_page(&vm, 103);
	run_port(&vm, PORT_DONE, "page 103 in");
	vm_destroy(&vm);
	OK();

	CASE("VM destroyed with exitless async PFs outstanding, a complete entry pending");
	vm_create(&vm);
	exitless_on(&vm, &x);
	guest_apf_on(&vm);
	vm.mb->pf_mode = PF_MODE_SKIP;
	command(&vm, CMD_TOUCH, page(0), 3);
	run_port(&vm, PORT_DONE, "3 exitless");
	TEST_ASSERT(vm.mb->np == 3, "guest took np %llu", (unsigned long long)vm.mb->np);
	fill_page(&vm, 0);
	ring_push(&x.r->complete, page(0), x.r->notify.e[0].flags);
	efd_signal(x.cfd);
	vm_destroy(&vm);
	munmap(x.r, 4096); /* the page outlives the vCPU until here */
	close(x.nfd);
	close(x.cfd);
	OK();
}

int main(void)
{
	double start = now_ms();

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
	alarm(25);
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	TEST_ASSERT(kvm_fd >= 0, "open /dev/kvm");
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_USERFAULT) <= 0 ||
	    ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ASYNC_PF_USERFAULT) <= 0) {
		printf("apf_test: SKIP: no KVM_CAP_ASYNC_PF_USERFAULT (%d): stock KVM\n",
		       KVM_CAP_ASYNC_PF_USERFAULT);
		return 77;
	}
	case_exitful();
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD) <= 0) {
		printf("apf_test: FAIL: KVM_CAP_ASYNC_PF_USERFAULT but no "
		       "KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD (%d)\n",
		       KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD);
		return 1;
	}
	case_exitless();
	printf("apf_test: PASS %d cases in %.0f ms\n", passed, now_ms() - start);
	return 0;
}
