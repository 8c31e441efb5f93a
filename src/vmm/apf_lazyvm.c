/* lazyvm's async page faults (apf.h, impl lazyvm): the PV async PF MSRs
 * through an MSR filter, "page not present" through the vCPU events, "page
 * ready" as an MSI or through an irqfd once the guest has ACKed the last. */
#include "apf_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lazyvm/log.h"

#ifndef KVM_MSR_FILTER_DEFAULT_ALLOW
#define KVM_MSR_FILTER_DEFAULT_ALLOW (0 << 0)
#endif

/* Guest accesses to the three APF MSRs exit to us; every other MSR stays with
 * KVM (bits set = allowed). */
static int install_msr_filter(struct vm *vm, char *why, size_t whylen)
{
	static uint8_t bitmap[1] = {0x0e}; /* 0x..02 EN deny, 03-05 allow, 06 INT, 07 ACK deny */
	struct kvm_enable_cap cap = {.cap = KVM_CAP_X86_USER_SPACE_MSR,
	                             .args = {KVM_MSR_EXIT_REASON_FILTER}};
	struct kvm_msr_filter f = {.flags = KVM_MSR_FILTER_DEFAULT_ALLOW};

	f.ranges[0] =
	    (struct kvm_msr_filter_range){.flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE,
	                                  .nmsrs = 6,
	                                  .base = MSR_KVM_ASYNC_PF_EN,
	                                  .bitmap = bitmap};
	if (ioctl(vm->fd, KVM_ENABLE_CAP, &cap) < 0) {
		snprintf(why, whylen, "KVM_CAP_X86_USER_SPACE_MSR: %s", strerror(errno));
		return -errno;
	}
	if (ioctl(vm->fd, KVM_X86_SET_MSR_FILTER, &f) < 0) {
		snprintf(why, whylen, "KVM_X86_SET_MSR_FILTER: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

#define APF_GSI_BASE 32u

int apf_route_irqfds(struct apf *a)
{
	struct {
		struct kvm_irq_routing hdr;
		struct kvm_irq_routing_entry e[16 * 2 + 8 + VMM_MAX_VCPUS];
	} rt = {0};
	unsigned n = 0;

	if (a->mode != APF_EXITLESS || a->impl != APF_IMPL_LAZYVM)
		return 0;
	/* KVM_SET_GSI_ROUTING replaces the whole table: first KVM's default
	 * irqchip routes (GSI 0-15 to a PIC pin and the IOAPIC pin of the same
	 * number, 16-23 to the IOAPIC only), which a guest's devices interrupt
	 * through (a Linux guest's UART, the PIT); the bundled guest uses
	 * neither chip. */
	for (unsigned gsi = 0; gsi < 24; gsi++) {
		rt.e[n++] = (struct kvm_irq_routing_entry){
		    .gsi = gsi,
		    .type = KVM_IRQ_ROUTING_IRQCHIP,
		    .u.irqchip = {.irqchip = KVM_IRQCHIP_IOAPIC, .pin = gsi}};
		if (gsi < 16)
			rt.e[n++] = (struct kvm_irq_routing_entry){
			    .gsi = gsi,
			    .type = KVM_IRQ_ROUTING_IRQCHIP,
			    .u.irqchip = {.irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER
			                                     : KVM_IRQCHIP_PIC_SLAVE,
			                  .pin = gsi % 8}};
	}
	for (unsigned i = 0; i < a->vm->nvcpus; i++) {
		if (!a->vcpus[i].vector)
			continue;
		rt.e[n++] = (struct kvm_irq_routing_entry){
		    .gsi = APF_GSI_BASE + i,
		    .type = KVM_IRQ_ROUTING_MSI,
		    .u.msi = {.address_lo = 0xfee00000u | (i << 12), .data = a->vcpus[i].vector}};
	}
	rt.hdr.nr = n;
	if (ioctl(a->vm->fd, KVM_SET_GSI_ROUTING, &rt) < 0)
		return -errno;
	for (unsigned i = 0; i < a->vm->nvcpus && !a->irqfds_bound; i++) {
		struct kvm_irqfd fd = {.fd = (uint32_t)a->vcpus[i].complete_efd,
		                       .gsi = APF_GSI_BASE + i};
		if (a->vcpus[i].vector && ioctl(a->vm->fd, KVM_IRQFD, &fd) < 0)
			return -errno;
	}
	a->irqfds_bound = true;
	return 0;
}

int apf_capture_msrs(struct vm *vm, char *why, size_t whylen)
{
	return install_msr_filter(vm, why, whylen);
}

/* The guest's shared async PF area, inside the memory gate (vm_mem_get):
 * NULL when it is not RAM or its page is not in (and `who` may not fetch). */
static uint8_t *area_of(struct vm *vm, unsigned who, struct apf_vcpu *av)
{
	void *p;

	return vm_mem_get(vm, who, av->msr_en & KVM_ASYNC_PF_GPA_MASK, 64, &p) < 0 ? NULL : p;
}

/* Delivers the next "page ready" of vCPU i if the guest has ACKed the last one:
 * the token goes in the shared area, then the guest's vector, as an MSI
 * (user) or through the vCPU's irqfd (exitless: no ioctl, KVM raises it).
 * Caller holds the vCPU's apf lock (the complete ring's consumer side). */
static void deliver_next(struct apf *a, unsigned i)
{
	struct apf_vcpu *av = &a->vcpus[i];
	struct apf_ring_entry e;
	uint8_t *area;

	if (av->ready_in_flight || !vm_mem_enter(a->vm))
		return;
	/* The area was in when the fault went async (may_go_async), and pages
	 * of a restore never leave: no fetch from an I/O worker's thread. */
	area = area_of(a->vm, VM_MEM_NO_FETCH, av);
	if (!area || !apf_ring_pop(&av->rings->complete, &e)) {
		vm_mem_exit(a->vm);
		return;
	}
	__atomic_store_n((uint32_t *)(area + 4), (uint32_t)e.flags, __ATOMIC_RELEASE);
	vm_mem_exit(a->vm);
	av->ready_in_flight = true;
	av->ready_token = (uint32_t)e.flags;
	if (a->mode == APF_EXITLESS) {
		uint64_t one = 1;
		if (write(av->complete_efd, &one, sizeof(one)) < 0)
			lv_warn("vCPU %u: page-ready eventfd: %s", i, strerror(errno));
	} else {
		struct kvm_msi msi = {.address_lo = 0xfee00000u | (i << 12), .data = av->vector};
		if (ioctl(a->vm->fd, KVM_SIGNAL_MSI, &msi) < 0)
			lv_warn("vCPU %u: KVM_SIGNAL_MSI for page ready (vector 0x%x): %s", i,
			        av->vector, strerror(errno));
	}
	atomic_fetch_add(&a->st.ready, 1);
}

void apf_lazyvm_page_in(struct apf *a, unsigned i, uint64_t gpa, uint32_t token)
{
	struct apf_vcpu *av = &a->vcpus[i];
	struct apf_ring_entry e = {.gpa = gpa, .flags = token};

	if (!atomic_load(&av->reentered))
		atomic_fetch_add(&a->st.spurious, 1); /* ready before the guest even resumed */
	pthread_mutex_lock(&av->lock);
	/* Cannot be full: a vCPU has at most APF_RING_ENTRIES faults outstanding. */
	if (!apf_ring_push(&av->rings->complete, &e))
		vm_fail(a->vm, "vCPU %u: complete ring full", i);
	deliver_next(a, i);
	pthread_mutex_unlock(&av->lock);
}

/* Exitless I/O task: one thread serving every vCPU's notify ring. */
int apf_msr_exit(struct vcpu *v)
{
	struct vm *vm = v->vm;
	struct apf *a = vm->apf;
	struct kvm_run *run = v->run;
	bool wr = run->exit_reason == KVM_EXIT_X86_WRMSR;

	if (!a)
		return 0;
	struct apf_vcpu *av = &a->vcpus[v->index];
	pthread_mutex_lock(&av->lock);
	run->msr.error = 0;
	switch (run->msr.index) {
	case MSR_KVM_ASYNC_PF_EN:
		if (!wr) {
			run->msr.data = av->msr_en;
		} else if ((run->msr.data & KVM_ASYNC_PF_ENABLED) &&
		           !guest_mem_ptr(&vm->mem, run->msr.data & KVM_ASYNC_PF_GPA_MASK, 64)) {
			run->msr.error = 1; /* an area outside RAM: #GP, as KVM does */
		} else {
			av->msr_en = run->msr.data;
		}
		break;
	case MSR_KVM_ASYNC_PF_INT:
		if (!wr)
			run->msr.data = av->vector;
		else if (run->msr.data < 32 || run->msr.data > 255)
			run->msr.error = 1;
		else {
			av->vector = (uint8_t)run->msr.data;
			if (a->mode == APF_EXITLESS && apf_route_irqfds(a) < 0)
				run->msr.error = 1;
		}
		break;
	case MSR_KVM_ASYNC_PF_ACK:
		if (!wr) {
			run->msr.data = 0;
		} else if (run->msr.data & 1) {
			/* The guest consumed the last "page ready": recycle its token and
			 * deliver the next one. */
			if (av->ready_in_flight) {
				av->ready_in_flight = false;
				if (av->ready_token != KVM_ASYNC_PF_READY_ALL_TOKEN) {
					apf_token_put(a, av->ready_token);
					atomic_fetch_sub(&av->outstanding, 1);
				}
			}
			deliver_next(a, v->index);
		}
		break;
	default: pthread_mutex_unlock(&av->lock); return 0;
	}
	pthread_mutex_unlock(&av->lock);
	return 1;
}

bool apf_cpl_allows_async(uint64_t msr_en, unsigned cpl)
{
	return cpl == 3 || (msr_en & KVM_ASYNC_PF_SEND_ALWAYS);
}

/* Whether vCPU v may take an async page fault now; *regs gets its registers.
 * Policy first (cheap), then the guest's state. */
static bool may_go_async(struct vcpu *v, struct apf *a, struct kvm_regs *regs,
                         struct kvm_sregs *sregs)
{
	struct apf_vcpu *av = &a->vcpus[v->index];
	struct kvm_vcpu_events ev;

	if (a->impl != APF_IMPL_LAZYVM || !apf_policy_async(a))
		return false;
	if (!(av->msr_en & KVM_ASYNC_PF_ENABLED) || !(av->msr_en & KVM_ASYNC_PF_DELIVERY_AS_INT) ||
	    !av->vector)
		return false;
	if (ioctl(v->fd, KVM_GET_REGS, regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, sregs) < 0 ||
	    ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return false;
	/* The CPL is SS.DPL (what KVM itself reads, on VMX and SVM alike). */
	av->fault_cpl = sregs->ss.dpl & 3;
	if (!apf_cpl_allows_async(av->msr_en, av->fault_cpl)) {
		atomic_fetch_add(&a->st.kernel_sync, 1);
		return false;
	}
	/* Only where the guest can take it now: interrupts on, nothing being
	 * delivered. */
	if (!(regs->rflags & (1u << 9)) || ev.exception.pending || ev.exception.injected ||
	    ev.interrupt.injected || ev.nmi.injected || ev.nmi.pending) {
		atomic_fetch_add(&a->st.refused_state, 1);
		lv_debug("vCPU %u: no async PF now: rflags 0x%llx, exception %u/%u, interrupt %u, "
		         "nmi %u/%u, CPL %u",
		         v->index, (unsigned long long)regs->rflags, ev.exception.pending,
		         ev.exception.injected, ev.interrupt.injected, ev.nmi.pending,
		         ev.nmi.injected, av->fault_cpl);
		return false;
	}
	/* The area must be in, and room for one more outstanding fault. */
	if (!guest_mem_ptr(&v->vm->mem, av->msr_en & KVM_ASYNC_PF_GPA_MASK, 64) ||
	    (a->pages && uf_pages_missing(a->pages, av->msr_en & KVM_ASYNC_PF_GPA_MASK)) ||
	    atomic_load(&av->outstanding) >= APF_RING_ENTRIES)
		return false;
	return true;
}

/* "Page not present" for gpa: the area's flags, #PF with CR2 = token (an
 * exception payload), and the fault handed to the I/O side. The vCPU's
 * instruction must be un-retired (RIP at it) when this is called. */
int apf_commit(struct vcpu *v, uint64_t gpa, uint32_t token)
{
	struct apf *a = v->vm->apf;
	struct apf_vcpu *av = &a->vcpus[v->index];
	struct kvm_vcpu_events ev;
	uint8_t *area;

	if (!vm_mem_enter(v->vm)) {
		apf_token_put(a, token);
		return -1;
	}
	area = area_of(v->vm, v->index, av);
	if (!area) {
		vm_mem_exit(v->vm);
		apf_token_put(a, token);
		return -1;
	}
	__atomic_store_n((uint32_t *)area, KVM_PV_REASON_PAGE_NOT_PRESENT, __ATOMIC_RELEASE);
	vm_mem_exit(v->vm);
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		goto fail;
	ev.exception.pending = 1;
	ev.exception.injected = 0;
	ev.exception.nr = 14;
	ev.exception.has_error_code = 1;
	ev.exception.error_code = 0;
	ev.exception_has_payload = 1;
	ev.exception_payload = token;
	ev.flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
		goto fail;
	atomic_store(&av->reentered, false);
	atomic_fetch_add(&a->st.not_present, 1);
	atomic_fetch_add(av->fault_cpl == 3 ? &a->st.user_async : &a->st.kernel_async, 1);
	atomic_fetch_add(&av->outstanding, 1);
	if (a->mode == APF_EXITLESS) {
		/* The fault goes on this vCPU's notify ring; the I/O task is woken
		 * only if it had armed the ring (found nothing and went to sleep). */
		struct apf_ring_entry e = {.gpa = gpa, .flags = token};
		uint64_t one = 1;

		apf_ring_push(&av->rings->notify, &e); /* room: outstanding < ring size */
		if (apf_rings_need_wakeup(av->rings)) {
			atomic_fetch_add(&a->st.notify_signals, 1);
			if (write(a->notify_efd, &one, sizeof(one)) < 0)
				(void)0; /* the counter cannot overflow */
		}
		return 1;
	}
	apf_queue(a, v->index, gpa, token);
	return 1;
fail:
	apf_token_put(a, token);
	vm_fail(v->vm, "vCPU %u: injecting an async page fault: %s", v->index, strerror(errno));
	return -1;
}

uint32_t apf_begin(struct vcpu *v, struct kvm_regs *regs, struct kvm_sregs *sregs)
{
	struct apf *a = v->vm->apf;

	if (!a || !may_go_async(v, a, regs, sregs))
		return 0;
	return apf_token_get(a);
}

void apf_abort(struct vcpu *v, uint32_t token, bool unsafe)
{
	struct apf *a = v->vm->apf;

	apf_token_put(a, token);
	if (unsafe)
		atomic_fetch_add(&a->st.refused_unsafe, 1);
}

int apf_try_unretired(struct vcpu *v, uint64_t gpa)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint32_t token = apf_begin(v, &regs, &sregs);

	/* Nothing has retired (the fault was still waiting, or KVM checked the
	 * bitmap before the access): nothing to undo, whatever the instruction. */
	return token ? apf_commit(v, gpa, token) : 0;
}
