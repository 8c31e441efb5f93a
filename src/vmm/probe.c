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
#include "exit_backend.h"

void probe_vm_close(struct probe_vm *p)
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

int probe_vm_open(struct kvm_sys *sys, struct probe_vm *p, uint64_t features, char *why,
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

int exit_backends_probe(struct kvm_sys *sys, bool probe_all, struct exit_probe *p,
                        enum exit_backend *best)
{
	/* native first: the kernel's own interface, no signal, no intake
	 * thread. sigbus before kick: where both work, sigbus costs no signal
	 * and no intake thread. */
	static const enum exit_backend order[] = {EXIT_BACKEND_NATIVE, EXIT_BACKEND_SIGBUS,
	                                          EXIT_BACKEND_KICK};
	enum exit_backend prev = EXIT_BACKEND_NONE;

	memset(p, 0, sizeof(*p));
	*best = EXIT_BACKEND_NONE;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		enum exit_backend b = order[i];
		const struct exit_backend_ops *ops = exit_backend_ops(b);

		if (ops->costly && !probe_all && prev != EXIT_BACKEND_NONE && p->works[prev]) {
			snprintf(p->why[b], sizeof(p->why[b]),
			         "%s works; `lazyvm probe --all` probes it",
			         exit_backend_name(prev));
		} else {
			p->probed[b] = true;
			p->works[b] = ops->probe(sys, p, p->why[b], sizeof(p->why[b])) > 0;
		}
		if (p->works[b] && *best == EXIT_BACKEND_NONE)
			*best = b;
		prev = b;
	}
	return 0;
}

static const char *probed(const struct exit_probe *p, enum exit_backend b)
{
	return !p->probed[b] ? "not probed" : p->works[b] ? "works" : "unavailable";
}

static const char *apf_cap(const struct exit_probe *p, bool has)
{
	if (!p->works[EXIT_BACKEND_NATIVE])
		return "not probed (no native exits)";
	return has ? "available (--apf user|exitless with native exits: KVM's)"
	           : "unavailable (--apf user|exitless with native exits: lazyvm's)";
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
	         "exit backend in use for --intake exit: %s\n"
	         "async PF for userfault exits, exitful (KVM_CAP_ASYNC_PF_USERFAULT): %s\n"
	         "async PF for userfault exits, exitless (KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD): "
	         "%s\n",
	         probed(&p, EXIT_BACKEND_NATIVE), p.why[EXIT_BACKEND_NATIVE],
	         probed(&p, EXIT_BACKEND_SIGBUS), p.why[EXIT_BACKEND_SIGBUS],
	         probed(&p, EXIT_BACKEND_KICK), p.why[EXIT_BACKEND_KICK], exit_backend_name(best),
	         apf_cap(&p, p.apf_exitful), apf_cap(&p, p.apf_exitless));
	kvm_sys_close(&sys);
	return 0;
}
