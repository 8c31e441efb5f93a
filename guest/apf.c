/* Asynchronous page faults, the guest side of the Linux PV async PF ABI.
 *
 * Both events are taken in trap context with interrupts off, on the vCPU the
 * host sends them to, so a "page ready" never runs in the middle of a "page
 * not present" of the same vCPU: each vCPU's state here (area, ready set,
 * counters) is touched only by that vCPU and needs no lock. The one
 * exception is `diag.parked` (and its token list), which a "ready all" on
 * another vCPU lowers.
 *
 * Waking a task too early is harmless: it re-runs the faulting instruction,
 * and if the page is still missing the host faults again (synchronously or
 * with a new token). Parking a task that nothing will wake is a hang. Hence
 * the ready set: a "page ready" that finds no task parked on its token (it
 * came first, or the task has not parked yet) is kept there, and a "page not
 * present" whose token is in it does not park at all.
 */
#include "apf.h"

#define READY_SET_SIZE 16

struct apf_cpu {
	/* First: the host writes it; 64-byte aligned per the ABI. */
	volatile struct kvm_vcpu_pv_apf_data area __attribute__((aligned(64)));
	/* Right after it, where a host's stall report looks (guest_abi.h):
	 * the counters of the end-of-run report and what parked tasks wait
	 * for. diag.parked is atomic, see above. */
	struct guest_apf_diag diag;
	bool enabled;
	/* Tokens made ready with no task parked on them; unordered. */
	uint32_t ready_set[READY_SET_SIZE];
	uint32_t nready, evict_next;
	uint64_t evicted;
	uint32_t parked_max;
};

_Static_assert(__builtin_offsetof(struct apf_cpu, diag) == sizeof(struct kvm_vcpu_pv_apf_data),
               "guest_apf_diag must follow the area");

/* In .bss, inside the core the VMM installs before the guest runs. */
static struct apf_cpu apf_cpus[GUEST_MAX_VCPUS];

static struct apf_cpu *this_apf(void)
{
	return &apf_cpus[this_cpu()->index];
}

/* A set that is full loses an arbitrary token: only a host that sends
 * "page ready" with no "page not present" fills it, and such tokens are
 * probably never waited for. Counted, and reported at the end. */
static void ready_set_add(struct apf_cpu *a, uint32_t token)
{
	if (a->nready < READY_SET_SIZE) {
		a->ready_set[a->nready++] = token;
		return;
	}
	a->ready_set[a->evict_next++ % READY_SET_SIZE] = token;
	a->evicted++;
}

static bool ready_set_take(struct apf_cpu *a, uint32_t token)
{
	for (uint32_t i = 0; i < a->nready; i++) {
		if (a->ready_set[i] == token) {
			a->ready_set[i] = a->ready_set[--a->nready];
			return true;
		}
	}
	return false;
}

/* After vCPU v's parked tasks changed: the tokens they wait for, for a stall
 * report. Taken under the run queue's lock, so a wake from another vCPU and
 * the owner's own update never interleave their lists. */
static void diag_parked_tokens(uint32_t v)
{
	struct guest_apf_diag *d = &apf_cpus[v].diag;

	sched_blocked_keys(v, 0, WAIT_KEY_APF_LAST, d->parked_tokens, GUEST_APF_DIAG_TOKENS,
	                   &d->nparked_tokens);
}

static void parked_sub(uint32_t v, unsigned n)
{
	if (!n)
		return;
	__atomic_sub_fetch(&apf_cpus[v].diag.parked, n, __ATOMIC_RELAXED);
	diag_parked_tokens(v);
}

void apf_init(void)
{
	struct cpu *c = this_cpu();
	struct apf_cpu *a = &apf_cpus[c->index];
	const uint32_t need = 1u << KVM_FEATURE_ASYNC_PF | 1u << KVM_FEATURE_ASYNC_PF_INT;
	uint32_t eax, ebx, ecx, edx, features;
	char sig[12];
	bool offered;

	cpuid(KVM_CPUID_SIGNATURE, &eax, &ebx, &ecx, &edx);
	memcpy(sig, &ebx, 4);
	memcpy(sig + 4, &ecx, 4);
	memcpy(sig + 8, &edx, 4);
	if (memcmp(sig, KVM_SIGNATURE, sizeof(sig)) != 0) {
		msg_log("apf vcpu%u: off: no KVM signature at CPUID 0x%x", c->index,
		        KVM_CPUID_SIGNATURE);
		return;
	}
	cpuid(KVM_CPUID_FEATURES, &features, &ebx, &ecx, &edx);
	offered = (features & need) == need;
	if (!(boot.flags & GUEST_BOOT_APF)) {
		msg_log("apf vcpu%u: off: not asked (GUEST_BOOT_APF clear; host %s it)", c->index,
		        offered ? "offers" : "does not offer");
		return;
	}
	if (!offered) {
		msg_log("apf vcpu%u: off: no ASYNC_PF and ASYNC_PF_INT (CPUID 0x%x eax 0x%x)",
		        c->index, KVM_CPUID_FEATURES, features);
		return;
	}
	/* The vector first: KVM refuses DELIVERY_AS_INT without one. Enabled
	 * before the MSR that turns it on, since KVM answers that write with a
	 * "ready all" (taken once this vCPU enables interrupts). */
	wrmsr(MSR_KVM_ASYNC_PF_INT, GUEST_APF_VECTOR);
	a->diag.magic = GUEST_APF_DIAG_MAGIC;
	a->enabled = true;
	wrmsr(MSR_KVM_ASYNC_PF_EN, ((uint64_t)(uintptr_t)&a->area & KVM_ASYNC_PF_GPA_MASK) |
	                               KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_SEND_ALWAYS |
	                               KVM_ASYNC_PF_DELIVERY_AS_INT);
	msg_log("apf vcpu%u: on: vector 0x%x, area 0x%lx", c->index, GUEST_APF_VECTOR,
	        (uint64_t)(uintptr_t)&a->area);
}

bool apf_enabled(void)
{
	return this_apf()->enabled;
}

static __attribute__((noreturn)) void bad_fault(struct trap_frame *f, uint64_t cr2, const char *why)
{
	char text[MSG_TEXT_MAX];

	fmt_format(text, sizeof(text), "async #PF, token 0x%lx, at 0x%lx: %s", cr2, f->rip, why);
	msg_panic(f->vector, f->error, f->rip, cr2, text);
}

struct trap_frame *apf_page_fault(struct trap_frame *f, uint64_t cr2)
{
	struct cpu *c = this_cpu();
	struct apf_cpu *a = &apf_cpus[c->index];
	uint32_t token = (uint32_t)cr2, flags;
	uint32_t now;

	if (!a->enabled || !(flags = a->area.flags))
		return NULL;
	a->area.flags = 0;
	a->diag.not_present++;
	a->diag.last_not_present = token;
	if (flags != KVM_PV_REASON_PAGE_NOT_PRESENT)
		bad_fault(f, cr2, "unknown apf flags");
	/* The host checks both; the code that runs with interrupts off (the
	 * scheduler, messages, the idle task) must never be parked. */
	if (!(f->rflags & RFLAGS_IF))
		bad_fault(f, cr2, "interrupts were off");
	if (!c->current || c->current == &c->idle)
		bad_fault(f, cr2, "not in a task");

	if (ready_set_take(a, token)) {
		a->diag.ready_before_wait++;
		return f; /* re-run the instruction: the page is there */
	}
	sched_block_current(token);
	now = __atomic_add_fetch(&a->diag.parked, 1, __ATOMIC_RELAXED);
	if (now > a->parked_max)
		a->parked_max = now;
	diag_parked_tokens(c->index);
	return sched_switch(f);
}

/* "Ready all": the host forgot every token it gave. KVM means this vCPU's;
 * we wake the parked tasks of every vCPU, which is never wrong (see the top
 * of the file) and also right for a host that means the whole VM. Tasks
 * blocked on other keys (the run phase) stay blocked. */
static unsigned wake_all_parked(void)
{
	unsigned total = 0;

	for (uint32_t v = 0; v < boot.nr_vcpus; v++) {
		unsigned n = sched_wake_cpu(v, 0, WAIT_KEY_APF_LAST);

		parked_sub(v, n);
		total += n;
	}
	return total;
}

struct trap_frame *apf_page_ready(struct trap_frame *f)
{
	struct cpu *c = this_cpu();
	struct apf_cpu *a = &apf_cpus[c->index];
	uint32_t token = a->area.token;
	unsigned woken;

	/* Free the slot before the ACK: KVM only writes the next token into a
	 * slot that holds 0. */
	a->area.token = 0;
	a->diag.ready++;
	a->diag.last_ready = token;
	if (token == KVM_ASYNC_PF_READY_ALL_TOKEN) {
		a->diag.wake_all++;
		woken = wake_all_parked();
	} else {
		woken = sched_wake_cpu(c->index, token, token);
		parked_sub(c->index, woken);
		if (!woken)
			ready_set_add(a, token);
	}
	wrmsr(MSR_KVM_ASYNC_PF_ACK, 1);
	apic_eoi();
	/* An idle vCPU runs what it woke now, not at its next timer tick. */
	if (woken && c->current == &c->idle)
		return sched_switch(f);
	return f;
}

uint32_t apf_parked(void)
{
	uint32_t n = 0;

	for (uint32_t v = 0; v < GUEST_MAX_VCPUS; v++)
		n += __atomic_load_n(&apf_cpus[v].diag.parked, __ATOMIC_RELAXED);
	return n;
}

void apf_report(uint64_t *not_present, uint64_t *ready)
{
	*not_present = *ready = 0;
	for (uint32_t v = 0; v < boot.nr_vcpus; v++) {
		const struct apf_cpu *a = &apf_cpus[v];

		if (!a->enabled)
			continue;
		msg_log(
		    "apf vcpu%u: not-present %lu, ready %lu, ready-before-wait %lu, wake-all %lu, "
		    "parked %u (max %u)",
		    v, a->diag.not_present, a->diag.ready, a->diag.ready_before_wait,
		    a->diag.wake_all, __atomic_load_n(&a->diag.parked, __ATOMIC_RELAXED),
		    a->parked_max);
		if (a->evicted || a->nready)
			msg_log("apf vcpu%u: %u ready token(s) never waited for, %lu dropped from "
			        "a full set",
			        v, a->nready, a->evicted);
		*not_present += a->diag.not_present;
		*ready += a->diag.ready;
	}
}
