/* The local APIC in x2APIC mode (MSRs, no MMIO mapping): the periodic timer
 * that preempts tasks.
 *
 * The in-kernel LAPIC handles these MSRs without a trip to the VMM, and the
 * snapshot saves its state with the vCPU, so after a restore the timer keeps
 * ticking with no help from the guest.
 */
#include "guest.h"

#define MSR_APIC_BASE  0x1b
#define APIC_BASE_EXTD (1ull << 10) /* x2APIC mode */
#define APIC_BASE_EN   (1ull << 11)

#define MSR_X2APIC_TPR        0x808
#define MSR_X2APIC_EOI        0x80b
#define MSR_X2APIC_SVR        0x80f
#define MSR_X2APIC_LVT_TIMER  0x832
#define MSR_X2APIC_TIMER_INIT 0x838
#define MSR_X2APIC_TIMER_DIV  0x83e

#define SVR_APIC_ENABLE    (1u << 8)
#define LVT_TIMER_PERIODIC (1u << 17)
#define TIMER_DIV_BY_1     0xb

#define CPUID1_ECX_X2APIC (1u << 21)

bool apic_has_x2apic(void)
{
	uint32_t a, b, c, d;

	cpuid(1, &a, &b, &c, &d);
	return c & CPUID1_ECX_X2APIC;
}

uint32_t apic_init(uint32_t timeslice_us, uint32_t ns_per_tick)
{
	uint64_t base = rdmsr(MSR_APIC_BASE);
	uint64_t count = (uint64_t)timeslice_us * 1000 / ns_per_tick;

	/* x2APIC can only be entered from the enabled xAPIC state (SDM
	 * "x2APIC State Transitions"): disabled -> x2APIC is a #GP. */
	if (!(base & APIC_BASE_EN))
		wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN);
	wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);

	wrmsr(MSR_X2APIC_TPR, 0);
	wrmsr(MSR_X2APIC_SVR, SVR_APIC_ENABLE | VEC_SPURIOUS);
	wrmsr(MSR_X2APIC_TIMER_DIV, TIMER_DIV_BY_1);
	wrmsr(MSR_X2APIC_LVT_TIMER, LVT_TIMER_PERIODIC | VEC_TIMER);
	if (count < 1)
		count = 1;
	if (count > UINT32_MAX)
		count = UINT32_MAX;
	/* Writing the initial count starts the timer. */
	wrmsr(MSR_X2APIC_TIMER_INIT, count);
	return (uint32_t)count;
}

void apic_eoi(void)
{
	wrmsr(MSR_X2APIC_EOI, 0);
}
