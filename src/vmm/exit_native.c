/* The native exit backend (exit.h): KVM_MEM_USERFAULT memslots, whose
 * userfaults come back from KVM_RUN as EFAULT with a KVM_EXIT_MEMORY_FAULT
 * exit. With lazyvm's KVM patches such an exit may carry the APF flag: KVM
 * could make it an async page fault, and apf_kvm.c decides. */
#include "exit_backend.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "apf.h"

static int native_probe(struct kvm_sys *sys, struct exit_probe *p, char *why, size_t whylen)
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
			/* async page faults for userfault exits (our patches) */
			p->apf_exitful = kvm_cap(vm, KVM_CAP_ASYNC_PF_USERFAULT) > 0;
			p->apf_exitless = kvm_cap(vm, KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD) > 0;
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

static int native_attach(struct userfault *uf, struct vm *vm)
{
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		uint64_t first = s->gpa >> 12;
		struct kvm_userspace_memory_region2 reg = {
		    .slot = i,
		    .flags = KVM_MEM_USERFAULT,
		    .guest_phys_addr = s->gpa,
		    .memory_size = s->size,
		    .userspace_addr = (uint64_t)(uintptr_t)s->host,
		    .userfault_bitmap =
		        (uint64_t)(uintptr_t)&uf->pages.bm.bits[first / UF_BITS_PER_WORD]};

		/* KVM reads the slot's bits from its first gfn on, a word at a time:
		 * the slot must start on a word of the VM-wide bitmap. */
		if (first % UF_BITS_PER_WORD || first + s->size / 4096 > uf->pages.bm.nbits) {
			lv_err("native userfault: slot %u at gpa 0x%" PRIx64
			       " does not start on a bitmap word or ends past the bitmap",
			       i, s->gpa);
			return -EINVAL;
		}
		/* A flags-only change of the existing slot: KVM zaps what it had
		 * mapped (the VMM's own setup may have faulted pages in). */
		if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION2, &reg) < 0) {
			int r = -errno;

			lv_err("native userfault: KVM_SET_USER_MEMORY_REGION2 slot %u [0x%" PRIx64
			       ", +0x%" PRIx64 ") with KVM_MEM_USERFAULT: %s",
			       i, s->gpa, s->size, strerror(errno));
			return r;
		}
	}
	return 0;
}

static enum exit_verdict native_on_exit(struct userfault *uf, struct vcpu *v)
{
	const struct lv_kvm_memory_fault *mf = kvm_run_memory_fault(v->run);
	uint64_t t0 = lv_now_ns();

	if (v->run->exit_reason != KVM_EXIT_MEMORY_FAULT)
		return exit_retired(uf, v);
	if (!(mf->flags & KVM_MEMORY_EXIT_FLAG_USERFAULT))
		return EXIT_NOT_MINE;
	/* KVM could deliver an async page fault for it (only once asked to:
	 * apf_kvm_attach): ACCEPT it, or resolve it like any other. */
	if (mf->flags & KVM_MEMORY_EXIT_FLAG_APF) {
		int r = apf_kvm_fault(v, mf->gpa);

		if (r) {
			apf_account(v, r > 0, lv_now_ns() - t0);
			return r > 0 ? EXIT_ASYNC : EXIT_FAILED;
		}
	}
	return exit_unretired(v, mf->gpa, &uf->exits_data);
}

const struct exit_backend_ops exit_native_ops = {
    .id = EXIT_BACKEND_NATIVE,
    .uffd_features = UFFD_FEATURE_THREAD_ID,
    /* KVM's own accesses to guest memory still come as UFFD faults, which
     * one handler thread serves */
    .uffd_threads = 1,
    /* the guest's core in first: its idle task and scheduler run there with
     * interrupts on and cannot be parked, so a fault of theirs must never
     * become async (patched tier: the bundled guest panicked "not in a task"
     * at 2 vCPUs when KVM made one async) */
    .needs_core = true,
    .probe = native_probe,
    .attach = native_attach,
    .on_exit = native_on_exit,
};
