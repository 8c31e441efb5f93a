/* Probing the exit backends with tiny VMs: 2 pages of RAM, real-mode code in
 * page 0 that reads page 1, which is missing. What KVM_RUN does then tells
 * which backend works on this host (the results differ between KVM flavours,
 * see docs/USERFAULT.md). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/compat.h"
#include "lazyvm/vmm.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "userfault.h"

#define PROBE_GPA 0x1000u

struct probe_vm {
	int vm, vcpu, uffd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem; /* 2 pages */
};

static void probe_vm_close(struct probe_vm *p)
{
	if (p->run)
		munmap(p->run, p->run_size);
	if (p->vcpu >= 0)
		close(p->vcpu);
	if (p->vm >= 0)
		close(p->vm);
	if (p->uffd >= 0)
		close(p->uffd);
	if (p->mem)
		munmap(p->mem, 8192);
}

/* A VM whose page 1 is registered MISSING with a UFFD of `features`. */
static int probe_vm_open(struct kvm_sys *sys, struct probe_vm *p, uint64_t features, char *why,
                         size_t whylen)
{
	/* mov al, [0x1000]; hlt */
	static const uint8_t code[] = {0xa0, 0x00, 0x10, 0xf4};
	struct kvm_userspace_memory_region reg = {.slot = 0, .memory_size = 8192};
	struct kvm_sregs sregs;
	struct kvm_regs regs = {.rip = 0, .rflags = 2};
	char names[128];
	int r;

	*p = (struct probe_vm){.vm = -1, .vcpu = -1, .uffd = -1};
	p->mem = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p->mem == MAP_FAILED) {
		p->mem = NULL;
		return -ENOMEM;
	}
	memcpy(p->mem, code, sizeof(code));
	p->uffd = uffd_open(features, NULL, names, sizeof(names));
	if (p->uffd < 0) {
		snprintf(why, whylen, "userfaultfd: %s", names[0] ? names : strerror(-p->uffd));
		return p->uffd;
	}
	r = uffd_register(p->uffd, (uint64_t)(uintptr_t)p->mem + 4096, 4096,
	                  UFFDIO_REGISTER_MODE_MISSING, 1ull << _UFFDIO_COPY, names, sizeof(names));
	if (r < 0) {
		snprintf(why, whylen, "UFFDIO_REGISTER: %s", strerror(-r));
		return r;
	}
	p->vm = ioctl(sys->fd, KVM_CREATE_VM, 0);
	reg.userspace_addr = (uint64_t)(uintptr_t)p->mem;
	if (p->vm < 0 || ioctl(p->vm, KVM_SET_USER_MEMORY_REGION, &reg) < 0 ||
	    (p->vcpu = ioctl(p->vm, KVM_CREATE_VCPU, 0)) < 0) {
		snprintf(why, whylen, "creating a probe VM: %s", strerror(errno));
		return -errno;
	}
	p->run_size = (size_t)sys->vcpu_mmap_size;
	p->run = mmap(NULL, p->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, p->vcpu, 0);
	if (p->run == MAP_FAILED) {
		p->run = NULL;
		return -errno;
	}
	if (ioctl(p->vcpu, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	if (ioctl(p->vcpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(p->vcpu, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}

static int probe_sigbus(struct kvm_sys *sys, char *why, size_t whylen)
{
	struct probe_vm p;
	int r = probe_vm_open(sys, &p, UFFD_FEATURE_SIGBUS, why, whylen);

	if (r == 0) {
		r = ioctl(p.vcpu, KVM_RUN, 0);
		int err = errno;
		uint32_t reason = p.run->exit_reason;

		if (r == 0 && reason == KVM_EXIT_MMIO && p.run->mmio.phys_addr == PROBE_GPA) {
			snprintf(why, whylen, "a missing page exits as KVM_EXIT_MMIO with its gpa");
			r = 1;
		} else if (r < 0 && err == EFAULT && reason == KVM_EXIT_MEMORY_FAULT &&
		           kvm_run_memory_fault(p.run)->gpa == PROBE_GPA) {
			snprintf(why, whylen,
			         "a missing page exits as KVM_EXIT_MEMORY_FAULT with its gpa");
			r = 1;
		} else {
			snprintf(why, whylen,
			         "a missing page gives KVM_RUN %d (%s), exit reason %u, no gpa: "
			         "unusable",
			         r, r < 0 ? strerror(err) : "ok", reason);
			r = 0;
		}
	}
	probe_vm_close(&p);
	return r;
}

struct kick_thread {
	struct probe_vm *p;
	_Atomic int done;
	int ret, err;
};

static void *kick_vcpu(void *arg)
{
	struct kick_thread *k = arg;

	k->ret = ioctl(k->p->vcpu, KVM_RUN, 0);
	k->err = errno;
	atomic_store(&k->done, 1);
	return NULL;
}

static void kick_signal_handler(int sig)
{
	(void)sig;
}

/* Blocking UFFD: the vCPU waits in the kernel; does a signal get it out? */
static int probe_kick(struct kvm_sys *sys, char *why, size_t whylen)
{
	struct sigaction sa = {.sa_handler = kick_signal_handler};
	struct kick_thread k = {0};
	struct probe_vm p;
	struct uffd_msg msg;
	pthread_t th;
	int r = probe_vm_open(sys, &p, 0, why, whylen);

	if (r < 0)
		goto out;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGRTMIN + 1, &sa, NULL);
	k.p = &p;
	if ((r = -pthread_create(&th, NULL, kick_vcpu, &k)) < 0)
		goto out;
	/* Wait (bounded) for the vCPU's fault to reach the UFFD. */
	r = 0;
	for (int i = 0; i < 1000 && (r = uffd_read_events(p.uffd, &msg, 1)) == 0; i++)
		lv_sleep_ns(1000000);
	if (r <= 0) {
		snprintf(why, whylen, "the probe vCPU's fault never reached the userfaultfd");
		r = 0;
	} else {
		pthread_kill(th, SIGRTMIN + 1);
		for (int i = 0; i < 50 && !atomic_load(&k.done); i++)
			lv_sleep_ns(1000000);
		if (atomic_load(&k.done) && k.ret < 0 && k.err == EINTR) {
			snprintf(why, whylen,
			         "a signal makes KVM_RUN return EINTR while the fault waits");
			r = 1;
		} else {
			snprintf(why, whylen,
			         "the signal was ignored until the page was installed");
			r = 0;
		}
	}
	/* Let the vCPU finish in any case. */
	static uint8_t page[4096];
	uffd_copy(p.uffd, (uint64_t)(uintptr_t)p.mem + 4096, page, 4096);
	pthread_join(th, NULL);
out:
	probe_vm_close(&p);
	return r < 0 ? 0 : r;
}

static int probe_native(struct kvm_sys *sys, char *why, size_t whylen)
{
	struct kvm_userspace_memory_region2 reg = {
	    .slot = 0, .flags = KVM_MEM_USERFAULT, .memory_size = 4096};
	static unsigned long bitmap[1];
	void *mem;
	int vm, r = 0;

	if (!kvm_cap(sys->fd, KVM_CAP_USER_MEMORY2)) {
		snprintf(why, whylen, "no KVM_CAP_USER_MEMORY2");
		return 0;
	}
	vm = ioctl(sys->fd, KVM_CREATE_VM, 0);
	mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm >= 0 && mem != MAP_FAILED) {
		reg.userspace_addr = (uint64_t)(uintptr_t)mem;
		reg.userfault_bitmap = (uint64_t)(uintptr_t)bitmap;
		if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &reg) == 0) {
			snprintf(why, whylen, "memslots accept KVM_MEM_USERFAULT");
			r = 1;
		} else {
			snprintf(why, whylen,
			         "KVM_SET_USER_MEMORY_REGION2 rejects KVM_MEM_USERFAULT (%s)",
			         strerror(errno));
		}
	}
	if (mem != MAP_FAILED)
		munmap(mem, 4096);
	if (vm >= 0)
		close(vm);
	return r;
}

int exit_backends_probe(struct kvm_sys *sys, bool probe_all, struct exit_probe *p,
                        enum exit_backend *best)
{
	memset(p, 0, sizeof(*p));
	p->native = probe_native(sys, p->native_why, sizeof(p->native_why));
	p->sigbus = probe_sigbus(sys, p->sigbus_why, sizeof(p->sigbus_why));
	if (probe_all || !p->sigbus) {
		p->kick_probed = true;
		p->kick = probe_kick(sys, p->kick_why, sizeof(p->kick_why));
	} else {
		snprintf(p->kick_why, sizeof(p->kick_why), "sigbus works; `lazyvm probe --all` probes it");
	}
	/* native first: the kernel's own interface, no signal, no intake
	 * thread. sigbus before kick: where both work, sigbus costs no signal
	 * and no intake thread. */
	*best = p->native   ? EXIT_BACKEND_NATIVE
	        : p->sigbus ? EXIT_BACKEND_SIGBUS
	        : p->kick   ? EXIT_BACKEND_KICK
	                    : EXIT_BACKEND_NONE;
	return 0;
}

int vmm_probe_exits(bool all, char *buf, size_t len)
{
	struct kvm_sys sys;
	struct exit_probe p;
	enum exit_backend best;
	char why[256];
	int r = kvm_sys_open(&sys, why, sizeof(why));

	if (r < 0) {
		snprintf(buf, len, "KVM unusable: %s\n", why);
		return r;
	}
	exit_backends_probe(&sys, all, &p, &best);
	snprintf(buf, len,
	         "exit backend native: %s (%s)\n"
	         "exit backend sigbus: %s (%s)\n"
	         "exit backend kick:   %s (%s)\n"
	         "exit backend in use for --intake exit: %s\n",
	         p.native ? "works" : "unavailable", p.native_why,
	         p.sigbus ? "works" : "unavailable", p.sigbus_why,
	         !p.kick_probed ? "not probed"
	         : p.kick       ? "works"
	                        : "unavailable",
	         p.kick_why, exit_backend_name(best));
	kvm_sys_close(&sys);
	return 0;
}
