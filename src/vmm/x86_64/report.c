/* A vCPU's state for a stall report: what an operator needs to tell "the guest
 * waits for an event that never comes" from "the guest spins" or "the host
 * never delivers". Read once the vCPU thread is out of KVM_RUN, so the
 * registers, events and LAPIC are KVM's final word, not a moving target. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lazyvm/log.h"
#include "../apf.h"
#include "../vmm.h"

#define RFLAGS_IF (1ull << 9)

/* The in-service and requested vectors: eight 32-bit registers 16 bytes apart
 * from 0x100 (ISR) and 0x200 (IRR) in the LAPIC register page. */
#define LAPIC_ISR 0x100
#define LAPIC_IRR 0x200
#define LAPIC_PPR 0x0a0

static uint32_t lapic_reg(const struct kvm_lapic_state *l, unsigned off)
{
	uint32_t v;

	memcpy(&v, l->regs + off, sizeof(v));
	return v;
}

/* " 0x20 0xec" for every bit set; "-" when none. */
static void lapic_vectors(const struct kvm_lapic_state *l, unsigned base, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (unsigned vec = 0; vec < 256 && n < len; vec++)
		if (lapic_reg(l, base + (vec / 32) * 16) & (1u << (vec % 32)))
			n += (size_t)snprintf(buf + n, len - n, "%s0x%02x", n ? " " : "", vec);
	if (!n)
		snprintf(buf, len, "-");
}

static const char *mp_state_name(uint32_t s)
{
	switch (s) {
	case KVM_MP_STATE_RUNNABLE: return "runnable";
	case KVM_MP_STATE_HALTED: return "halted";
	case KVM_MP_STATE_UNINITIALIZED: return "uninitialized";
	case KVM_MP_STATE_INIT_RECEIVED: return "init-received";
	default: return "other";
	}
}

/* The PV async PF set-up as the guest wrote it: the VMM's copy when it owns
 * the MSRs (user, exitless, and boots that capture them), KVM's otherwise. */
static int apf_msrs(struct vcpu *v, uint64_t *en, uint64_t *vec)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[2];
	} m = {.hdr.nmsrs = 2,
	       .e = {{.index = MSR_KVM_ASYNC_PF_EN}, {.index = MSR_KVM_ASYNC_PF_INT}}};

	if (v->vm->apf) {
		*en = v->vm->apf->vcpus[v->index].msr_en;
		*vec = v->vm->apf->vcpus[v->index].vector;
		return 0;
	}
	if (ioctl(v->fd, KVM_GET_MSRS, &m) != 2)
		return -EINVAL;
	*en = m.e[0].data;
	*vec = m.e[1].data;
	return 0;
}

/* The guest's area and, when it keeps one, its bookkeeping right after it.
 * Only pages already in: a report must never wait for guest memory. */
static void report_apf(struct vcpu *v)
{
	struct vm *vm = v->vm;
	uint64_t en, vec, gpa;
	const struct kvm_vcpu_pv_apf_data *area;
	const struct guest_apf_diag *d;
	char tokens[8 * 12] = "";
	size_t n = 0;

	if (apf_msrs(v, &en, &vec) < 0) {
		lv_err("vCPU %u at the stall: async PF MSRs unreadable", v->index);
		return;
	}
	if (!(en & KVM_ASYNC_PF_ENABLED)) {
		lv_err("vCPU %u at the stall: async PF off (MSR_KVM_ASYNC_PF_EN 0x%" PRIx64 ")",
		       v->index, en);
		return;
	}
	gpa = en & KVM_ASYNC_PF_GPA_MASK;
	if (!vm_mem_enter(vm))
		return;
	if (vm_mem_get(vm, VM_MEM_NO_FETCH, gpa, sizeof(*area) + sizeof(*d), (void **)&area) < 0) {
		vm_mem_exit(vm);
		lv_err("vCPU %u at the stall: async PF area at 0x%" PRIx64 " (vector 0x%" PRIx64
		       ") not in memory",
		       v->index, gpa, vec);
		return;
	}
	d = (const struct guest_apf_diag *)(area + 1);
	lv_err("vCPU %u at the stall: async PF on (MSR 0x%" PRIx64 ", vector 0x%" PRIx64
	       "), area 0x%" PRIx64 ": flags 0x%x, token 0x%x",
	       v->index, en, vec, gpa, area->flags, area->token);
	if (d->magic == GUEST_APF_DIAG_MAGIC) {
		uint32_t np = d->nparked_tokens < GUEST_APF_DIAG_TOKENS ? d->nparked_tokens
		                                                        : GUEST_APF_DIAG_TOKENS;

		for (uint32_t i = 0; i < np && n < sizeof(tokens); i++)
			n += (size_t)snprintf(tokens + n, sizeof(tokens) - n, " 0x%x",
			                      d->parked_tokens[i]);
		lv_err("vCPU %u at the stall: guest async PF: not-present %" PRIu64
		       ", ready %" PRIu64 ", ready-before-wait %" PRIu64 ", wake-all %" PRIu64
		       "; last not-present 0x%x, last ready 0x%x; parked %u, on tokens (%u):%s",
		       v->index, d->not_present, d->ready, d->ready_before_wait, d->wake_all,
		       d->last_not_present, d->last_ready, d->parked, d->nparked_tokens,
		       n ? tokens : " -");
	}
	vm_mem_exit(vm);
}

void arch_vcpu_report(struct vcpu *v)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_vcpu_events ev;
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	char isr[128], irr[128], exc[64], irq[32];

	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0 ||
	    ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0 || ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0 ||
	    ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0) {
		lv_err("vCPU %u at the stall: its state is unreadable: %s", v->index,
		       strerror(errno));
		return;
	}
	lapic_vectors(&lapic, LAPIC_ISR, isr, sizeof(isr));
	lapic_vectors(&lapic, LAPIC_IRR, irr, sizeof(irr));
	if (ev.exception.pending || ev.exception.injected)
		snprintf(exc, sizeof(exc), "vector %u %s, payload 0x%llx", ev.exception.nr,
		         ev.exception.pending ? "pending" : "injected",
		         ev.exception_has_payload ? (unsigned long long)ev.exception_payload
		                                  : 0ull);
	else
		snprintf(exc, sizeof(exc), "none");
	if (ev.interrupt.injected)
		snprintf(irq, sizeof(irq), "vector 0x%x injected", ev.interrupt.nr);
	else
		snprintf(irq, sizeof(irq), "none");
	lv_err("vCPU %u at the stall: RIP 0x%llx, RSP 0x%llx, RFLAGS 0x%llx (IF %d), CR2 0x%llx, "
	       "%s, %" PRIu64 " exits; exception %s; interrupt %s; NMI %s; shadow 0x%x; "
	       "LAPIC ISR %s, IRR %s, PPR 0x%x",
	       v->index, regs.rip, regs.rsp, regs.rflags, !!(regs.rflags & RFLAGS_IF), sregs.cr2,
	       mp_state_name(mp.mp_state), v->exits, exc, irq,
	       ev.nmi.pending || ev.nmi.injected ? "pending" : "none", ev.interrupt.shadow, isr,
	       irr, lapic_reg(&lapic, LAPIC_PPR));
	report_apf(v);
}
