/* The IDT and the C side of every interrupt and exception.
 *
 * All 256 vectors have a stub in isr.S that saves the interrupted context as a
 * struct trap_frame on the current stack and calls trap_dispatch(), which
 * returns the frame to resume: a context switch is returning another task's
 * frame. All gates are interrupt gates (IF cleared on entry), so C handlers
 * run with interrupts off and nest only for exceptions they cause.
 */
#include "apf.h"

#define VEC_PF         14
#define GATE_INTERRUPT 0x8e /* present, DPL 0, 64-bit interrupt gate */

struct idt_entry {
	uint16_t offset_lo;
	uint16_t selector;
	uint8_t ist;
	uint8_t type_attr;
	uint16_t offset_mid;
	uint32_t offset_hi;
	uint32_t zero;
} __attribute__((packed));

struct idt_pointer {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

_Static_assert(sizeof(struct idt_entry) == 16, "IDT entry layout");
_Static_assert(sizeof(struct trap_frame) == 22 * 8, "isr.S pushes 22 qwords");

extern const uint64_t isr_table[LAYOUT_NR_VECTORS]; /* isr.S: each stub's address */

static struct idt_entry idt[LAYOUT_NR_VECTORS] __attribute__((aligned(16)));

static const char *const exception_names[32] = {
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound",
    "#UD invalid opcode",
    "#NM no FPU",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "vector 15",
    "#MF x87 error",
    "#AC alignment",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
};

void idt_build(void)
{
	for (unsigned v = 0; v < LAYOUT_NR_VECTORS; v++) {
		uint64_t h = isr_table[v];

		idt[v] = (struct idt_entry){
		    .offset_lo = (uint16_t)h,
		    .selector = GUEST_CS_SELECTOR,
		    .type_attr = GATE_INTERRUPT,
		    .offset_mid = (uint16_t)(h >> 16),
		    .offset_hi = (uint32_t)(h >> 32),
		};
	}
}

void idt_load(void)
{
	struct idt_pointer p = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};

	asm volatile("lidt %0" : : "m"(p));
}

/* An exception is a guest bug or a crash:KIND workload (or an async page
 * fault, which page_fault() takes first): report and stop this vCPU. */
static __attribute__((noreturn)) void exception(struct trap_frame *f, uint64_t cr2)
{
	const char *name = exception_names[f->vector];
	struct task *t = this_cpu()->current;
	char text[MSG_TEXT_MAX];

	if (!name)
		name = "reserved exception";
	/* The numbers travel in the args; the text names the fault and task. */
	fmt_format(text, sizeof(text), "%s at 0x%lx (cr2 0x%lx) in task %s", name, f->rip, cr2,
	           t && t->name ? t->name : "boot");
	msg_panic(f->vector, f->error, f->rip, cr2, text);
}

static struct trap_frame *page_fault(struct trap_frame *f)
{
	/* First: for an async fault CR2 is the token, and any fault on the way
	 * here would overwrite it. */
	uint64_t cr2 = read_cr2();
	struct trap_frame *next = apf_page_fault(f, cr2);

	if (next)
		return next;
	exception(f, cr2);
}

/* A maskable interrupt only ever arrives while interrupts are on, so one whose
 * frame has IF clear was not raised by the LAPIC: it is a second delivery of
 * one this vCPU has already taken, and is dropped, with no EOI (nothing is in
 * service for it) and no ACK. Handling it would run a handler inside itself,
 * at any point before that handler's first exit: a "page ready" would spin
 * for ever on the run queue's lock its first copy holds, or take the token
 * its first copy is about to consume. Seen on the hardware-model tier (QEMU
 * 7.2's TCG model of SVM under kvm-amd): KVM injects the vector once (one
 * kvm_inj_virq in its trace), the guest takes it twice, the second time
 * inside the first handler with IF clear, and the #VMEXIT after it reports
 * the vector as an exception. QEMU's VMRUN delivers an injected interrupt
 * itself but leaves it in exception_index, so a request for its CPU loop to
 * stop before the next #VMEXIT delivers it again, as an exception, whatever
 * IF says. Before this check 4 of 80 restores hung and about one in five
 * took a second "page ready"; with it, 79 of 80 dropped 1 to 14 copies
 * (of either vector) and none hung. */
static struct trap_frame *masked_interrupt(struct trap_frame *f)
{
	this_cpu()->masked_irqs++;
	return f;
}

struct trap_frame *trap_dispatch(struct trap_frame *f)
{
	char text[MSG_TEXT_MAX];

	/* VEC_YIELD is ours (isr.S), with the caller's IF in its frame. */
	if (f->vector >= 32 && f->vector != VEC_YIELD && !(f->rflags & RFLAGS_IF))
		return masked_interrupt(f);
	switch (f->vector) {
	case VEC_PF: return page_fault(f);
	case VEC_TIMER: apic_eoi(); return sched_switch(f);
	case VEC_YIELD: return sched_switch(f);
	case VEC_SPURIOUS: return f; /* no EOI for a spurious interrupt */
	case GUEST_APF_VECTOR:
		if (apf_enabled())
			return apf_page_ready(f);
		break;
	}
	if (f->vector < 32)
		exception(f, read_cr2());
	/* Nothing else is programmed to fire: a stray vector is a VMM bug
	 * worth stopping on rather than a silent EOI. */
	fmt_format(text, sizeof(text), "unexpected interrupt vector %lu at rip 0x%lx", f->vector,
	           f->rip);
	msg_panic(f->vector, 0, f->rip, 0, text);
}
