// SPDX-License-Identifier: GPL-2.0-only
/*
 * apf_test's exitless cases (KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD,
 * KVM_SET_APF_EVENTFD): bad arguments, the notify and complete rings with
 * their eventfds, entries that match nothing, a full ring falling back to an
 * exit, the fds closed mid-run, and a VM destroyed with entries pending.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "apf_test.h"

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
#define RING_ENTRIES 64u
#define NOTIFY_ARMED 1u

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

void case_exitless(void)
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
