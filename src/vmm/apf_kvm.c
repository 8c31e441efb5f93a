/* KVM's async page faults for userfault exits (apf.h, impl kvm; the uAPI of
 * lazyvm's KVM patches, docs/KERNEL.md). KVM owns the guest's PV async PF
 * MSRs and injects both halves itself; lazyvm decides per fault (exitful:
 * ACCEPT or resolve) and installs the pages (READY, or the complete ring). */
#include "apf_internal.h"

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

int apf_kvm_attach(struct apf *a, char *why, size_t whylen)
{
	for (unsigned i = 0; i < a->vm->nvcpus; i++) {
		struct apf_vcpu *av = &a->vcpus[i];
		int fd = a->vm->vcpus[i].fd;
		struct kvm_enable_cap cap = {.cap = KVM_CAP_ASYNC_PF_USERFAULT, .args = {1}};

		if (ioctl(fd, KVM_ENABLE_CAP, &cap) < 0) {
			snprintf(why, whylen,
			         "vCPU %u: KVM_ENABLE_CAP(KVM_CAP_ASYNC_PF_USERFAULT): %s", i,
			         strerror(errno));
			return -errno;
		}
		if (a->mode != APF_EXITLESS || !apf_policy_async(a))
			continue;
		struct kvm_apf_eventfd ef = {.fd = a->notify_efd, .complete_fd = av->complete_efd};
		if (ioctl(fd, KVM_SET_APF_EVENTFD, &ef) < 0) {
			snprintf(why, whylen, "vCPU %u: KVM_SET_APF_EVENTFD: %s", i,
			         strerror(errno));
			return -errno;
		}
		void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		               KVM_APF_PAGE_OFFSET * 4096L);
		if (p == MAP_FAILED) {
			snprintf(why, whylen, "vCPU %u: mapping KVM's async PF ring page: %s", i,
			         strerror(errno));
			return -errno;
		}
		av->rings = p;
		av->rings_from_kvm = true;
		if (av->rings->version != APF_RINGS_VERSION ||
		    av->rings->ring_size != APF_RING_ENTRIES ||
		    av->rings->entry_size != sizeof(struct apf_ring_entry)) {
			snprintf(
			    why, whylen,
			    "vCPU %u: KVM's async PF ring page has version %u, %u entries of %u "
			    "bytes (lazyvm knows version %u, %u of %zu)",
			    i, av->rings->version, av->rings->ring_size, av->rings->entry_size,
			    APF_RINGS_VERSION, APF_RING_ENTRIES, sizeof(struct apf_ring_entry));
			return -EPROTO;
		}
		a->kvm_exitless = true;
	}
	return 0;
}

int apf_kvm_fault(struct vcpu *v, uint64_t gpa)
{
	struct apf *a = v->vm->apf;
	struct kvm_async_pf_req req = {.gpa = gpa & ~4095ull, .op = KVM_APF_OP_ACCEPT};

	if (!a || a->impl != APF_IMPL_KVM)
		return 0;
	atomic_fetch_add(&a->st.kvm_apf_exits, 1);
	/* A short fault stays sync: resolved and re-entered, nothing injected.
	 * So does a page another vCPU brought in meanwhile. */
	if (!apf_policy_async(a) || !uf_pages_missing(a->pages, req.gpa))
		return 0;
	if (ioctl(v->fd, KVM_ASYNC_PF, &req) < 0) {
		atomic_fetch_add(&a->st.kvm_accept_refused, 1);
		lv_debug("vCPU %u: KVM_ASYNC_PF ACCEPT 0x%" PRIx64 ": %s: resolved synchronously",
		         v->index, (uint64_t)req.gpa, strerror(errno));
		return 0;
	}
	atomic_fetch_add(&a->st.kvm_accepted, 1);
	atomic_fetch_add(&a->st.not_present, 1);
	apf_queue(a, v->index, req.gpa, 0);
	return 1;
}

void apf_kvm_ready(struct apf *a, unsigned vcpu, uint64_t gpa)
{
	struct kvm_async_pf_req req = {.gpa = gpa & ~4095ull, .op = KVM_APF_OP_READY};

	/* From this thread while the vCPU may be in KVM_RUN: KVM takes it
	 * without the vCPU's mutex. */
	if (ioctl(a->vm->vcpus[vcpu].fd, KVM_ASYNC_PF, &req) == 0) {
		atomic_fetch_add(&a->st.kvm_ready, 1);
		atomic_fetch_add(&a->st.ready, 1);
		return;
	}
	atomic_fetch_add(&a->st.kvm_ready_refused, 1);
	/* ENOENT: the guest turned async PF off or reset; nobody waits for it. */
	if (errno != ENOENT)
		vm_fail(a->vm, "vCPU %u: KVM_ASYNC_PF READY for gpa 0x%" PRIx64 ": %s", vcpu,
		        (uint64_t)req.gpa, strerror(errno));
}

void apf_kvm_complete(struct apf *a, unsigned vcpu, uint64_t gpa, uint32_t token)
{
	struct apf_vcpu *av = &a->vcpus[vcpu];
	struct apf_ring_entry e = {.gpa = gpa & ~4095ull, .flags = token};
	uint64_t one = 1;

	/* The ring holds as many entries as a vCPU can have async faults, so it
	 * is never full while KVM drains it; a KVM that stops draining fails the
	 * VM rather than losing a page ready. */
	for (unsigned tries = 0; !apf_ring_push(&av->rings->complete, &e); tries++) {
		if (tries == 1000) {
			vm_fail(a->vm, "vCPU %u: KVM's complete ring stayed full for 1 s", vcpu);
			return;
		}
		if (write(av->complete_efd, &one, sizeof(one)) < 0)
			(void)0; /* full counter: KVM has a wake-up pending anyway */
		lv_sleep_ns(1000 * 1000);
	}
	atomic_fetch_add(&a->st.kvm_ring_completed, 1);
	atomic_fetch_add(&a->st.ready, 1);
	if (write(av->complete_efd, &one, sizeof(one)) < 0)
		(void)0;
}
