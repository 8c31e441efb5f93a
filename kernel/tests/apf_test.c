// SPDX-License-Identifier: GPL-2.0-only
/*
 * Async page faults for userfault exits (kernel/patches/0004-): a tiny 64-bit
 * guest per case, in the manner of KVM's selftests. Every ioctl result is
 * checked; a failed check prints the expression, file and line and exits 1.
 * Exit 0 when every case passed, 77 when the kernel has no
 * KVM_CAP_ASYNC_PF_USERFAULT (stock KVM). This file: main and the helpers that
 * drive the vCPU; the guest and its VM are in apf_guest.c, the cases in
 * apf_exitful.c and apf_exitless.c (one binary, tests/hw/hw.mk).
 *
 * The guest (guest_start..guest_end, copied to GUEST_CODE) runs in long
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
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "apf_test.h"

const char *current_case = "setup";
int passed;
int kvm_fd = -1;

static void on_alarm(int sig)
{
	(void)sig;
	dprintf(2, "apf_test: FAILED: case '%s' timed out\n", current_case);
	_exit(1);
}

/* KVM_RUN until an exit that is not PORT_DONE's "I am here" of a command not
 * yet given: returns the port of an IO exit, or -1 for a userfault exit. */
int run_once(struct vm *vm, const char *what)
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

void run_port(struct vm *vm, int port, const char *what)
{
	int p = run_once(vm, what);

	TEST_ASSERT(p == port, "%s: exit %s %d, want port 0x%x", what, p < 0 ? "userfault" : "port",
	            p < 0 ? 0 : p, port);
}

/* A userfault exit at gpa with exactly these flags. */
void run_userfault(struct vm *vm, uint64_t gpa, uint64_t flags, const char *what)
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
void command(struct vm *vm, uint64_t cmd, uint64_t arg0, uint64_t arg1)
{
	vm->mb->arg0 = arg0;
	vm->mb->arg1 = arg1;
	vm->mb->cmd = cmd;
}

/* The guest's first exit (PORT_DONE), then async PF on with its MSRs. */
void guest_apf_on(struct vm *vm)
{
	run_port(vm, PORT_DONE, "boot");
	command(vm, CMD_APF_MSRS, APF_VECTOR, GUEST_APF | APF_EN_BITS);
	run_port(vm, PORT_DONE, "async PF MSRs");
	/* enabling queues a wake-all "page ready" (token ~0); let it land */
	command(vm, 0, 0, 0);
	run_port(vm, PORT_DONE, "after enabling");
}

int apf_req(struct vm *vm, uint64_t gpa, uint32_t op, uint32_t flags, uint64_t r0, uint64_t r1)
{
	struct kvm_async_pf_req req = {.gpa = gpa, .op = op, .flags = flags, .reserved = {r0, r1}};

	return ioctl(vm->vcpu, KVM_ASYNC_PF, &req) < 0 ? -errno : 0;
}

int enable_cap(struct vm *vm, uint32_t cap, uint64_t a0, uint64_t a1)
{
	struct kvm_enable_cap c = {.cap = cap, .args = {a0, a1}};

	return ioctl(vm->vcpu, KVM_ENABLE_CAP, &c) < 0 ? -errno : 0;
}

double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The vCPU thread of a struct runner: one KVM_RUN, timed. */
static void *runner_main(void *arg)
{
	struct runner *r = arg;

	atomic_store(&r->in_run, 1);
	r->port = run_once(r->vm, "KVM_RUN on the vCPU thread");
	r->returned_ms = now_ms();
	atomic_store(&r->in_run, 0);
	return NULL;
}

void runner_start(struct runner *r, struct vm *vm)
{
	memset(r, 0, sizeof(*r));
	r->vm = vm;
	TEST_ASSERT(pthread_create(&r->t, NULL, runner_main, r) == 0, "pthread_create");
}

void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

/* What the guest says it did: pages read and their bytes' sum in the last
 * CMD_TOUCH, "page not present" and "page ready" taken so far. */
void expect_guest(struct vm *vm, uint64_t touched, uint64_t sum, uint64_t np, uint64_t ready,
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
