/* User async page faults (the RFC's exitful design): on a userfault exit that
 * the policy calls slow and the guest can take, the guest gets "page not
 * present" (#PF, CR2 = token) and runs on; an I/O worker fetches and installs
 * the page, then the guest gets "page ready" (its APF vector, token in the
 * shared area). Two implementations (enum apf_impl):
 *   lazyvm  the VMM plays KVM's part: it implements the Linux PV async PF MSRs
 *           itself (KVM MSR filter -> userspace MSR exits), injects #PF through
 *           the vCPU events and "page ready" as an MSI (exitless: an irqfd)
 *   kvm     KVM's async PF for userfaults (lazyvm's patches, native exits):
 *           KVM owns the MSRs; an exit flagged APF is ACCEPTed and later made
 *           READY (exitful), or KVM puts the fault on the vCPU's notify ring
 *           and takes the page back from its complete ring (exitless)
 *
 * The bottom of the exit path but for the pages themselves (ufpages.h): the
 * exit backends (exit.h) call in here, nothing here calls back into them or
 * into the vCPU loop.
 */
#ifndef LAZYVM_APF_H
#define LAZYVM_APF_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "apf_rings.h"
#include "ufpages.h"
#include "vmm.h"

/* The Linux PV async PF ABI names come from include/lazyvm/guest_abi.h. */

enum apf_mode { APF_OFF, APF_USER, APF_EXITLESS, APF_KERNEL };
enum apf_policy { APF_POLICY_SYNC, APF_POLICY_ASYNC, APF_POLICY_HYBRID };
enum apf_impl { APF_IMPL_LAZYVM, APF_IMPL_KVM };

struct apf;
const char *apf_mode_name(enum apf_mode m);
const char *apf_policy_name(enum apf_policy p);
/* What delivers a's async page faults: "lazyvm, MSR filter", "KVM exitful,
 * native", "KVM exitless, native" */
const char *apf_impl_name(const struct apf *a);

#define APF_MAX_TOKENS  1024u
#define APF_READY_QUEUE 64u
#define APF_IO_WORKERS  2u
/* Resolver slots of the I/O side, after the vCPUs': the I/O workers, then the
 * exitless ring task. */
#define APF_SLOTS (APF_IO_WORKERS + 1u)

struct apf_vcpu {
	pthread_mutex_t lock;
	uint64_t msr_en;              /* the guest's MSR_KVM_ASYNC_PF_EN */
	uint8_t vector;               /* MSR_KVM_ASYNC_PF_INT */
	bool ready_in_flight;         /* a "page ready" was injected and not yet ACKed */
	uint32_t ready_token;         /* its token (recycled at the ACK) */
	struct apf_rings_page *rings; /* notify (exitless) and complete rings; the
	                               * complete ring holds pages that are in and
	                               * wait for the guest's ACK of the last ready
	                               * (lazyvm), or for KVM to take them (kvm) */
	bool rings_from_kvm;          /* the vCPU's KVM_APF_PAGE_OFFSET page */
	_Atomic unsigned outstanding; /* async faults of this vCPU not yet ACKed */
	int complete_efd;             /* exitless: irqfd raising the guest's vector
	                               * (lazyvm), KVM's complete eventfd (kvm) */
	_Atomic bool reentered;       /* the vCPU re-entered the guest since its last injection */
	unsigned fault_cpl;           /* of the fault being made async (its own thread only) */
};

struct apf_stats {
	_Atomic uint64_t not_present, ready, sync_faults, spurious, refused_unsafe, refused_state;
	_Atomic uint64_t async_ns, sync_ns; /* time spent per class, vCPU side */
	_Atomic uint64_t io_wakeups;        /* an I/O worker woke from sleep */
	_Atomic uint64_t notify_signals;    /* exitless: eventfd writes by the fault intake */
	/* kvm: exits flagged APF, ACCEPTs done and refused, READYs done and
	 * refused (ENOENT: the guest dropped its async PFs), exitless faults taken
	 * from KVM's notify ring and pages given back on its complete ring */
	_Atomic uint64_t kvm_apf_exits, kvm_accepted, kvm_accept_refused;
	_Atomic uint64_t kvm_ready, kvm_ready_refused, kvm_ring_taken, kvm_ring_completed;
	/* lazyvm's injection by the guest's CPL at the fault: made async in
	 * user mode, in kernel mode (the guest asked for SEND_ALWAYS), and kept
	 * synchronous because the guest was in kernel mode without it */
	_Atomic uint64_t user_async, kernel_async, kernel_sync;
};

struct apf {
	enum apf_mode mode;
	enum apf_impl impl;
	enum apf_policy policy;
	uint64_t slow_ns;           /* hybrid: async when the source takes at least this long */
	uint64_t source_latency_ns; /* what the source was told to take (--source-latency) */
	struct vm *vm;
	struct uf_pages *pages; /* the pages the I/O side resolves; NULL: no I/O side */
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
	bool kvm_exitless; /* impl kvm: KVM_SET_APF_EVENTFD done, KVM's rings mapped */
	pthread_t workers[APF_IO_WORKERS + 1];
	unsigned nworkers, started;
	struct apf_stats st;
};

/* Prepares async PF state for `mode` (before vCPUs run), resolving pages
 * through `pages` (NULL when nothing is lazy). impl KVM: apf_kvm_attach next. */
int apf_init(struct apf *a, struct vm *vm, struct uf_pages *pages, enum apf_mode mode,
             enum apf_impl impl, enum apf_policy policy, uint64_t source_latency_ns, char *why,
             size_t whylen);
/* Sends guest accesses to the APF MSRs to the VMM (MSR filter + userspace
 * MSR exits). vm_create calls it when asked (vm_config.capture_apf_msrs).
 * KVM_X86_SET_MSR_FILTER takes ~15 ms on our nested hosts (it waits for an
 * SRCU grace period), before or after the vCPUs exist: only restores that
 * deliver async page faults pay it. */
int apf_capture_msrs(struct vm *vm, char *why, size_t whylen);
int apf_start(struct apf *a); /* the I/O workers (user mode) */
void apf_stop(struct apf *a);
void apf_destroy(struct apf *a); /* stops, detaches from the VM */

/* Whether a fault at privilege level `cpl` (0-3) may be made async for a
 * guest whose MSR_KVM_ASYNC_PF_EN is msr_en: at CPL 3 always, below only
 * with KVM_ASYNC_PF_SEND_ALWAYS. A Linux guest (6.12) does not set it and
 * panics on a "page not present" in kernel mode; the bundled guest sets it
 * and parks kernel tasks too. The rest of the guest's state (IF, pending
 * events) is checked apart. */
bool apf_cpl_allows_async(uint64_t msr_en, unsigned cpl);

/* Whether the policy makes slow faults async at all (sync, or hybrid with a
 * source faster than slow_ns: never). */
bool apf_policy_async(const struct apf *a);

/* Exitless: route each vCPU's complete eventfd to its "page ready" vector
 * (KVM_IRQFD + MSI routing), once the vectors are known. */
int apf_route_irqfds(struct apf *a);

/* A userspace MSR exit for one of the APF MSRs: 1 handled, 0 not ours. */
int apf_msr_exit(struct vcpu *v);

/* lazyvm's injection, in three steps around what the exit backend must do to
 * leave the faulting instruction un-retired (RIP at it, nothing done):
 * apf_begin says whether the fault may go async now (policy, then the guest's
 * state): a reserved token (> 0) with the vCPU's registers in *regs and
 * *sregs, or 0 to resolve it synchronously. Then apf_commit injects "page not
 * present" and hands the page to the I/O side (1, or -1 after vm_fail), or
 * apf_abort gives the token back (unsafe: the instruction could not be
 * undone, counted). */
uint32_t apf_begin(struct vcpu *v, struct kvm_regs *regs, struct kvm_sregs *sregs);
int apf_commit(struct vcpu *v, uint64_t gpa, uint32_t token);
void apf_abort(struct vcpu *v, uint32_t token, bool unsafe);
/* The same for a fault of which nothing has retired (a kick, a native exit):
 * 1 it went async, 0 resolve it synchronously, -1 after vm_fail. */
int apf_try_unretired(struct vcpu *v, uint64_t gpa);

/* KVM's implementation (apf_kvm.c). Per vCPU: KVM_ENABLE_CAP 246; exitless
 * also the notify/complete eventfds (KVM_SET_APF_EVENTFD) and KVM's ring page,
 * unless the policy never makes a fault async (KVM would, without asking):
 * then exitful, where every fault is decided and stays sync. 0 or -errno with
 * why. */
int apf_kvm_attach(struct apf *a, char *why, size_t whylen);
/* A native userfault exit KVM flagged APF at gpa: the policy decides; async
 * means ACCEPT on the vCPU's fd and the page to the I/O workers (READY once
 * it is in). 1 it went async, 0 resolve it synchronously, -1 after vm_fail. */
int apf_kvm_fault(struct vcpu *v, uint64_t gpa);

/* Accounts one missing-page fault the vCPU thread handled: async (an APF was
 * injected) or sync (resolved before re-entry), and the vCPU time it took. */
void apf_account(struct vcpu *v, bool async, uint64_t ns);

/* The vCPU is about to re-enter the guest (for the spurious-APF count). */
void apf_entering(struct vcpu *v);

#endif
