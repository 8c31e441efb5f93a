/* User async page faults (the RFC's exitful design, realised by the VMM): on a
 * userfault exit that the policy calls slow and the guest can take, the vCPU
 * injects "page not present" (#PF, CR2 = token) and re-enters at once; an I/O
 * worker fetches and installs the page, then the VMM injects "page ready"
 * (the guest's APF vector, token in the shared area). The VMM implements the
 * Linux PV async PF MSRs itself (KVM MSR filter -> userspace MSR exits), so
 * KVM's own async PF stays out of the way and a stock Linux guest would work.
 */
#ifndef LAZYVM_APF_H
#define LAZYVM_APF_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "apf_rings.h"
#include "vmm.h"

/* The Linux PV async PF ABI names come from include/lazyvm/guest_abi.h. */

enum apf_mode { APF_OFF, APF_USER, APF_EXITLESS, APF_KERNEL };
enum apf_policy { APF_POLICY_SYNC, APF_POLICY_ASYNC, APF_POLICY_HYBRID };

const char *apf_mode_name(enum apf_mode m);
const char *apf_policy_name(enum apf_policy p);

#define APF_MAX_TOKENS  1024u
#define APF_READY_QUEUE 64u
#define APF_IO_WORKERS  2u

struct apf_vcpu {
	pthread_mutex_t lock;
	uint64_t msr_en;              /* the guest's MSR_KVM_ASYNC_PF_EN */
	uint8_t vector;               /* MSR_KVM_ASYNC_PF_INT */
	bool ready_in_flight;         /* a "page ready" was injected and not yet ACKed */
	uint32_t ready_token;         /* its token (recycled at the ACK) */
	struct apf_rings_page *rings; /* notify (exitless) and complete rings; the
	                               * complete ring holds pages that are in and
	                               * wait for the guest's ACK of the last ready */
	_Atomic unsigned outstanding; /* async faults of this vCPU not yet ACKed */
	int complete_efd;             /* exitless: irqfd raising the guest's vector */
	_Atomic bool reentered;       /* the vCPU re-entered the guest since its last injection */
};

struct apf_stats {
	_Atomic uint64_t not_present, ready, sync_faults, spurious, refused_unsafe, refused_state;
	_Atomic uint64_t async_ns, sync_ns; /* time spent per class, vCPU side */
	_Atomic uint64_t io_wakeups;        /* an I/O worker woke from sleep */
	_Atomic uint64_t notify_signals;    /* exitless: eventfd writes by the fault intake */
};

struct apf {
	enum apf_mode mode;
	enum apf_policy policy;
	uint64_t slow_ns;           /* hybrid: async when the source takes at least this long */
	uint64_t source_latency_ns; /* what the source was told to take (--source-latency) */
	struct vm *vm;
	struct apf_vcpu vcpus[VMM_MAX_VCPUS];
	/* tokens: unique while outstanding, recycled after the guest's ACK */
	pthread_mutex_t token_lock;
	uint32_t free_tokens[APF_MAX_TOKENS];
	unsigned nfree;
	/* I/O workers: fetch the page of a not-present fault, then "page ready" */
	pthread_mutex_t work_lock;
	pthread_cond_t work_cond;
	struct apf_job {
		unsigned vcpu;
		uint64_t gpa;
		uint32_t token;
	} jobs[APF_MAX_TOKENS];
	unsigned jhead, jlen;
	bool stopping;
	int notify_efd; /* exitless: wakes the I/O task, under the NOTIFY_ARMED rule */
	bool irqfds_bound;
	pthread_t workers[APF_IO_WORKERS];
	unsigned nworkers, started;
	struct apf_stats st;
};

/* Prepares async PF state for `mode` (before vCPUs run). */
int apf_init(struct apf *a, struct vm *vm, enum apf_mode mode, enum apf_policy policy,
             uint64_t source_latency_ns, char *why, size_t whylen);
/* Sends guest accesses to the APF MSRs to the VMM (MSR filter + userspace
 * MSR exits). vm_create calls it when asked (vm_config.capture_apf_msrs).
 * KVM_X86_SET_MSR_FILTER takes ~15 ms on our nested hosts (it waits for an
 * SRCU grace period), before or after the vCPUs exist: only restores that
 * deliver async page faults pay it. */
int apf_capture_msrs(struct vm *vm, char *why, size_t whylen);
int apf_start(struct apf *a); /* the I/O workers (user mode) */
void apf_stop(struct apf *a);
void apf_destroy(struct apf *a); /* stops, detaches from the VM */

/* Exitless: route each vCPU's complete eventfd to its "page ready" vector
 * (KVM_IRQFD + MSI routing), once the vectors are known. */
int apf_route_irqfds(struct apf *a);

/* A userspace MSR exit for one of the APF MSRs: 1 handled, 0 not ours. */
int apf_msr_exit(struct vcpu *v);

/* Called on a read userfault exit at gpa (page missing) before it is resolved
 * synchronously: 1 when it became an async page fault (the vCPU may re-enter
 * at once; do not complete the exit), 0 when it must be handled synchronously,
 * < 0 after vm_fail. */
int apf_try_async(struct vcpu *v, uint64_t gpa);

/* The same for a vCPU kicked out of a fault that was still waiting (kick
 * backend): nothing has retired, so any instruction can go async. */
int apf_try_async_kicked(struct vcpu *v, uint64_t gpa);

/* Accounts one missing-page fault the vCPU thread handled: async (an APF was
 * injected) or sync (resolved before re-entry), and the vCPU time it took. */
void apf_account(struct vcpu *v, bool async, uint64_t ns);

/* The vCPU is about to re-enter the guest (for the spurious-APF count). */
void apf_entering(struct vcpu *v);

#endif
