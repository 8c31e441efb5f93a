/* The guest side of asynchronous page faults: the Linux PV async PF ABI
 * (include/lazyvm/guest_abi.h), with "page ready" delivered as an interrupt
 * on GUEST_APF_VECTOR.
 *
 * A "page not present" parks the task that faulted on wait key = token (keys
 * below 2^32, see guest.h) and runs another; "page ready" makes it runnable
 * again, and it re-runs the faulting instruction. Tokens are per vCPU: a
 * "page ready" wakes only the tasks of the vCPU it arrives on, as KVM sends
 * both events of a token to the same vCPU.
 */
#ifndef GUEST_APF_H
#define GUEST_APF_H

#include "guest.h"

/* Once per vCPU, after idt_load() and sched_start_cpu(), interrupts off:
 * probes CPUID and enables the protocol if boot.flags has GUEST_BOOT_APF and
 * the host offers it. Sends one LOG line saying which, and why not. */
void apf_init(void);
/* Is the protocol on for this vCPU (is GUEST_APF_VECTOR ours)? */
bool apf_enabled(void);
/* #PF, trap context. `cr2` must be read before anything else could fault.
 * For an async "page not present" returns the frame to resume (another
 * task's when the current one parked); NULL for an ordinary page fault. */
struct trap_frame *apf_page_fault(struct trap_frame *f, uint64_t cr2);
/* GUEST_APF_VECTOR, trap context, only when apf_enabled(): "page ready".
 * Wakes, acknowledges, EOIs; returns the frame to resume. */
struct trap_frame *apf_page_ready(struct trap_frame *f);
/* Tasks parked on a token right now, over all vCPUs. */
uint32_t apf_parked(void);
/* vCPU 0 at the end of the run: one LOG line per vCPU with the protocol on;
 * returns the "page not present" and "page ready" totals. */
void apf_report(uint64_t *not_present, uint64_t *ready);

#endif
