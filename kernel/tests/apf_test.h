/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What apf_test's files share (apf_test.c: main and the vCPU driving;
 * apf_guest.c: the guest and the VM; apf_exitful.c, apf_exitless.c: the
 * cases): the uAPI of kernel/patches/0004- and later where the installed
 * headers lack it, the guest's physical layout, the mailbox and the calls.
 */
#ifndef LAZYVM_APF_TEST_H
#define LAZYVM_APF_TEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

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

/* The mailbox page (GUEST_MBOX), as the guest's code (apf_guest.c) uses it. */
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

struct vm {
	int kvm, fd, vcpu;
	struct kvm_run *run;
	uint8_t *mem;
	unsigned long *bitmap; /* MEM_SIZE / 4096 bits */
	volatile struct mbox *mb;
};

/* A KVM_RUN on another thread, to see what READY does while it runs. */
struct runner {
	struct vm *vm;
	pthread_t t;
	atomic_int in_run; /* 1 from just before the ioctl until it returned */
	int port;
	double returned_ms;
};

/* The case running now (the alarm names it), the cases passed, /dev/kvm. */
extern const char *current_case;
extern int passed;
extern int kvm_fd;
#define CASE(name) (current_case = (name), printf("apf_test: case %s\n", name))
#define OK()       (passed++, printf("apf_test: ok\n"))

static inline uint64_t page(unsigned i)
{
	return DATA_GPA + (uint64_t)i * 4096;
}

/* apf_guest.c: a VM with the guest loaded, every data page missing (its bit
 * set in the userfault bitmap), one vCPU at the guest's first instruction. */
void vm_create(struct vm *vm);
void vm_destroy(struct vm *vm);
/* "Install" page i (its byte is i + 1) and clear its bit, as a VMM would. */
void fill_page(struct vm *vm, unsigned i);

/* apf_test.c: driving the vCPU and the guest; each checks what it got. */
int run_once(struct vm *vm, const char *what);
void run_port(struct vm *vm, int port, const char *what);
void run_userfault(struct vm *vm, uint64_t gpa, uint64_t flags, const char *what);
void command(struct vm *vm, uint64_t cmd, uint64_t arg0, uint64_t arg1);
void guest_apf_on(struct vm *vm);
int apf_req(struct vm *vm, uint64_t gpa, uint32_t op, uint32_t flags, uint64_t r0, uint64_t r1);
int enable_cap(struct vm *vm, uint32_t cap, uint64_t a0, uint64_t a1);
void expect_guest(struct vm *vm, uint64_t touched, uint64_t sum, uint64_t np, uint64_t ready,
                  const char *what);
void runner_start(struct runner *r, struct vm *vm);
double now_ms(void);
void sleep_ms(int ms);

/* The cases: KVM_ASYNC_PF (apf_exitful.c), KVM_SET_APF_EVENTFD (apf_exitless.c). */
void case_exitful(void);
void case_exitless(void);

#endif
