/* User async page faults: see apf.h. */
#include "apf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "userfault.h"
#include "vcpu.h"
#include "x86_64/decode.h"

#ifndef KVM_MSR_FILTER_DEFAULT_ALLOW
#define KVM_MSR_FILTER_DEFAULT_ALLOW (0 << 0)
#endif

const char *apf_mode_name(enum apf_mode m)
{
	static const char *const names[] = {"off", "user", "exitless", "kernel"};

	return names[m];
}

const char *apf_policy_name(enum apf_policy p)
{
	static const char *const names[] = {"sync", "async", "hybrid"};

	return names[p];
}

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

int apf_init(struct apf *a, struct vm *vm, enum apf_mode mode, enum apf_policy policy,
             uint64_t source_latency_ns, char *why, size_t whylen)
{
	memset(a, 0, sizeof(*a));
	a->mode = mode;
	a->policy = policy;
	a->slow_ns = 100 * 1000;
	a->source_latency_ns = source_latency_ns;
	a->vm = vm;
	pthread_mutex_init(&a->token_lock, NULL);
	pthread_mutex_init(&a->work_lock, NULL);
	pthread_cond_init(&a->work_cond, NULL);
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		pthread_mutex_init(&a->vcpus[i].lock, NULL);
	/* Tokens 1..APF_MAX_TOKENS: never 0, never the wake-all token. */
	for (unsigned i = 0; i < APF_MAX_TOKENS; i++)
		a->free_tokens[a->nfree++] = APF_MAX_TOKENS - i;
	a->notify_efd = -1;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		a->vcpus[i].complete_efd = -1;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct apf_vcpu *av = &a->vcpus[i];

		av->rings =
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (av->rings == MAP_FAILED) {
			av->rings = NULL;
			snprintf(why, whylen, "ring page: %s", strerror(errno));
			return -ENOMEM;
		}
		apf_rings_init(av->rings);
		if (mode == APF_EXITLESS &&
		    (av->complete_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
			snprintf(why, whylen, "eventfd: %s", strerror(errno));
			return -errno;
		}
	}
	if (mode == APF_EXITLESS && (a->notify_efd = eventfd(0, EFD_CLOEXEC)) < 0) {
		snprintf(why, whylen, "eventfd: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

#define APF_GSI_BASE 32u

int apf_route_irqfds(struct apf *a)
{
	struct {
		struct kvm_irq_routing hdr;
		struct kvm_irq_routing_entry e[VMM_MAX_VCPUS];
	} rt = {0};
	unsigned n = 0;

	if (a->mode != APF_EXITLESS)
		return 0;
	/* The guest uses neither PIC nor IOAPIC: the table holds only these. */
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

void apf_destroy(struct apf *a)
{
	apf_stop(a);
	if (a->vm && a->vm->apf == a)
		a->vm->apf = NULL;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++) {
		pthread_mutex_destroy(&a->vcpus[i].lock);
		if (a->vcpus[i].rings)
			munmap(a->vcpus[i].rings, 4096);
		if (a->vcpus[i].complete_efd >= 0)
			close(a->vcpus[i].complete_efd);
	}
	if (a->notify_efd >= 0)
		close(a->notify_efd);
	pthread_mutex_destroy(&a->token_lock);
	pthread_mutex_destroy(&a->work_lock);
	pthread_cond_destroy(&a->work_cond);
}

static uint32_t token_get(struct apf *a)
{
	uint32_t t = 0;

	pthread_mutex_lock(&a->token_lock);
	if (a->nfree)
		t = a->free_tokens[--a->nfree];
	pthread_mutex_unlock(&a->token_lock);
	return t;
}

static void token_put(struct apf *a, uint32_t t)
{
	pthread_mutex_lock(&a->token_lock);
	a->free_tokens[a->nfree++] = t;
	pthread_mutex_unlock(&a->token_lock);
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

static void page_is_in(struct apf *a, unsigned i, uint64_t gpa, uint32_t token)
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
static void *ring_worker(void *arg)
{
	struct apf *a = arg;
	unsigned slot = a->vm->nvcpus, nv = a->vm->nvcpus;

	while (!__atomic_load_n(&a->stopping, __ATOMIC_ACQUIRE)) {
		bool any = false;

		for (unsigned i = 0; i < nv; i++) {
			struct apf_ring_entry e;

			while (apf_ring_pop(&a->vcpus[i].rings->notify, &e)) {
				any = true;
				if (userfault_resolve_gpa(a->vm, slot, e.gpa) >= 0)
					page_is_in(a, i, e.gpa, (uint32_t)e.flags);
			}
		}
		if (any)
			continue;
		/* Nothing to do: arm every ring, look once more, then sleep. */
		for (unsigned i = 0; i < nv; i++)
			atomic_fetch_or(&a->vcpus[i].rings->flags, APF_RINGS_NOTIFY_ARMED);
		atomic_thread_fence(memory_order_seq_cst);
		for (unsigned i = 0; i < nv && !any; i++)
			any = !apf_ring_empty(&a->vcpus[i].rings->notify);
		if (!any && !__atomic_load_n(&a->stopping, __ATOMIC_ACQUIRE)) {
			uint64_t v;
			if (read(a->notify_efd, &v, sizeof(v)) > 0)
				atomic_fetch_add(&a->st.io_wakeups, 1);
		}
		for (unsigned i = 0; i < nv; i++)
			atomic_fetch_and(&a->vcpus[i].rings->flags, ~APF_RINGS_NOTIFY_ARMED);
	}
	return NULL;
}

static void *io_worker(void *arg)
{
	struct apf *a = arg;
	unsigned slot;

	pthread_mutex_lock(&a->work_lock);
	slot = a->vm->nvcpus + a->nworkers++; /* resolver slots after the vCPUs' */
	for (;;) {
		if (!a->jlen && !a->stopping) {
			while (!a->jlen && !a->stopping)
				pthread_cond_wait(&a->work_cond, &a->work_lock);
			atomic_fetch_add(&a->st.io_wakeups, 1);
		}
		if (a->stopping)
			break;
		struct apf_job job = a->jobs[a->jhead];
		a->jhead = (a->jhead + 1) % APF_MAX_TOKENS;
		a->jlen--;
		pthread_mutex_unlock(&a->work_lock);
		if (userfault_resolve_gpa(a->vm, slot, job.gpa) >= 0)
			page_is_in(a, job.vcpu, job.gpa, job.token);
		pthread_mutex_lock(&a->work_lock);
	}
	pthread_mutex_unlock(&a->work_lock);
	return NULL;
}

int apf_start(struct apf *a)
{
	if (a->mode != APF_USER && a->mode != APF_EXITLESS)
		return 0;
	/* Exitless: one I/O task for every vCPU (the point of the wake-up rule). */
	for (unsigned i = 0; i < (a->mode == APF_EXITLESS ? 1 : APF_IO_WORKERS); i++) {
		int r = -pthread_create(&a->workers[i], NULL,
		                        a->mode == APF_EXITLESS ? ring_worker : io_worker, a);
		if (r < 0) {
			apf_stop(a);
			return r;
		}
		a->started++;
	}
	return 0;
}

void apf_stop(struct apf *a)
{
	pthread_mutex_lock(&a->work_lock);
	__atomic_store_n(&a->stopping, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&a->work_cond);
	pthread_mutex_unlock(&a->work_lock);
	if (a->notify_efd >= 0) {
		uint64_t one = 1;
		if (write(a->notify_efd, &one, sizeof(one)) < 0)
			(void)0; /* a fresh eventfd cannot be full */
	}
	for (unsigned i = 0; i < a->started; i++)
		pthread_join(a->workers[i], NULL);
	a->started = 0;
}

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
					token_put(a, av->ready_token);
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

void apf_account(struct vcpu *v, bool async, uint64_t ns)
{
	struct apf *a = v->vm->apf;

	if (!a)
		return;
	if (!async)
		atomic_fetch_add(&a->st.sync_faults, 1);
	atomic_fetch_add(async ? &a->st.async_ns : &a->st.sync_ns, ns);
}

void apf_entering(struct vcpu *v)
{
	if (v->vm->apf)
		atomic_store(&v->vm->apf->vcpus[v->index].reentered, true);
}

/* Up to 15 instruction bytes at the guest's RIP (through its page tables). */
static size_t fetch_insn(struct vcpu *v, const struct kvm_regs *regs, const struct kvm_sregs *sregs,
                         uint8_t *out)
{
	size_t got = 0;

	while (got < 15) {
		uint64_t va = sregs->cs.base + regs->rip + got, gpa;
		size_t chunk = 4096 - (va & 4095);
		const uint8_t *p;

		if (userfault_translate(v, sregs->cr3, va, &gpa) < 0)
			break;
		if (chunk > 15 - got)
			chunk = 15 - got;
		if (vm_mem_get(v->vm, v->index, gpa, chunk, (void **)&p) < 0)
			break;
		memcpy(out + got, p, chunk);
		got += chunk;
	}
	return got;
}

/* Whether vCPU v may take an async page fault now; *regs gets its registers.
 * Policy first (cheap), then the guest's state. */
static bool may_go_async(struct vcpu *v, struct apf *a, struct kvm_regs *regs,
                         struct kvm_sregs *sregs)
{
	struct apf_vcpu *av = &a->vcpus[v->index];
	struct kvm_vcpu_events ev;

	if ((a->mode != APF_USER && a->mode != APF_EXITLESS) || a->policy == APF_POLICY_SYNC)
		return false;
	if (a->policy == APF_POLICY_HYBRID && a->source_latency_ns < a->slow_ns)
		return false; /* the page is local and quick: an APF pair would cost more */
	if (!(av->msr_en & KVM_ASYNC_PF_ENABLED) || !(av->msr_en & KVM_ASYNC_PF_DELIVERY_AS_INT) ||
	    !av->vector)
		return false;
	if (ioctl(v->fd, KVM_GET_REGS, regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, sregs) < 0 ||
	    ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return false;
	/* Only where the guest can take it now: interrupts on, nothing being
	 * delivered, and CPL 3 unless the guest asked for SEND_ALWAYS. */
	if (!(regs->rflags & (1u << 9)) || ev.exception.pending || ev.exception.injected ||
	    ev.interrupt.injected || ev.nmi.injected || ev.nmi.pending ||
	    (!(av->msr_en & KVM_ASYNC_PF_SEND_ALWAYS) && (sregs->cs.selector & 3) != 3)) {
		atomic_fetch_add(&a->st.refused_state, 1);
		lv_debug("vCPU %u: no async PF now: rflags 0x%llx, exception %u/%u, interrupt %u, "
		         "nmi %u/%u, cs 0x%x",
		         v->index, (unsigned long long)regs->rflags, ev.exception.pending,
		         ev.exception.injected, ev.interrupt.injected, ev.nmi.pending,
		         ev.nmi.injected, sregs->cs.selector);
		return false;
	}
	/* The area must be in, and room for one more outstanding fault. */
	if (!guest_mem_ptr(&v->vm->mem, av->msr_en & KVM_ASYNC_PF_GPA_MASK, 64) ||
	    uf_bitmap_test(&v->vm->uf->bm, (av->msr_en & KVM_ASYNC_PF_GPA_MASK) / 4096) ||
	    atomic_load(&av->outstanding) >= APF_RING_ENTRIES)
		return false;
	return true;
}

/* "Page not present" for gpa: the area's flags, #PF with CR2 = token (an
 * exception payload), and the fault handed to the I/O side. The vCPU's
 * instruction must be un-retired (RIP at it) when this is called. */
static int inject_not_present(struct vcpu *v, struct apf *a, uint64_t gpa, uint32_t token)
{
	struct apf_vcpu *av = &a->vcpus[v->index];
	struct kvm_vcpu_events ev;
	uint8_t *area;

	if (!vm_mem_enter(v->vm)) {
		token_put(a, token);
		return -1;
	}
	area = area_of(v->vm, v->index, av);
	if (!area) {
		vm_mem_exit(v->vm);
		token_put(a, token);
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
	pthread_mutex_lock(&a->work_lock);
	a->jobs[(a->jhead + a->jlen++) % APF_MAX_TOKENS] =
	    (struct apf_job){.vcpu = v->index, .gpa = gpa, .token = token};
	pthread_cond_signal(&a->work_cond);
	pthread_mutex_unlock(&a->work_lock);
	return 1;
fail:
	token_put(a, token);
	vm_fail(v->vm, "vCPU %u: injecting an async page fault: %s", v->index, strerror(errno));
	return -1;
}

int apf_try_async(struct vcpu *v, uint64_t gpa)
{
	struct apf *a = v->vm->apf;
	struct kvm_run *run = v->run;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint8_t insn[15];
	uint32_t token;
	int r;

	if (!a || run->exit_reason != KVM_EXIT_MMIO || run->mmio.is_write ||
	    !may_go_async(v, a, &regs, &sregs))
		return 0;
	size_t n = fetch_insn(v, &regs, &sregs, insn);
	if (!insn_undoable_read(insn, n)) {
		atomic_fetch_add(&a->st.refused_unsafe, 1);
		return 0;
	}
	token = token_get(a);
	if (!token)
		return 0;
	/* The read has not retired: complete it with placeholder bytes, then put
	 * the registers back, so the instruction is undone exactly (it is one
	 * that changes only registers and flags: checked above). */
	memset(run->mmio.data, 0, sizeof(run->mmio.data));
	r = vcpu_complete_exit(v);
	if (r < 0 || ioctl(v->fd, KVM_SET_REGS, &regs) < 0) {
		token_put(a, token);
		vm_fail(v->vm, "vCPU %u: undoing a read for an async page fault: %s", v->index,
		        strerror(r < 0 ? -r : errno));
		return -1;
	}
	return inject_not_present(v, a, gpa, token);
}

int apf_try_async_kicked(struct vcpu *v, uint64_t gpa)
{
	struct apf *a = v->vm->apf;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint32_t token;

	/* A kicked vCPU stopped *before* its access (the fault was still waiting):
	 * nothing to undo, whatever the instruction. */
	if (!a || !may_go_async(v, a, &regs, &sregs) || !(token = token_get(a)))
		return 0;
	return inject_not_present(v, a, gpa, token);
}
