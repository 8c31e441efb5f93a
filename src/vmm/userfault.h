/* Userfault exits: the seed's KVM userfault on a stock kernel.
 *
 * The VMM keeps the userfault bitmap (one bit per guest frame, set = "not here
 * yet", memfd-backed so another process can share it). An *exit backend* turns
 * a vCPU's access to a missing page into a return from KVM_RUN with the guest
 * address; the vCPU thread then fetches and installs the page (the fault
 * engine's resolver), clears the bit, completes the access exactly and
 * re-enters. Backends, probed at start-up:
 *   native  KVM_MEM_USERFAULT memslots (KVM userfault series; not upstream,
 *           kernel/ builds it for the hardware-model tier): KVM_RUN fails
 *           with EFAULT and a KVM_EXIT_MEMORY_FAULT exit, flag USERFAULT, for
 *           a guest access to a page whose bit is set; KVM's own accesses
 *           still fault on the UFFD (a handler thread serves those)
 *   sigbus  UFFD_FEATURE_SIGBUS: KVM cannot fault the page in. On the PVM host
 *           data accesses exit as KVM_EXIT_MMIO with the gpa and instruction
 *           fetches as KVM_EXIT_INTERNAL_ERROR; on hardware KVM as -EFAULT
 *           without a gpa (unusable there)
 *   kick    blocking UFFD plus a signal to the vCPU thread (KVM >= 6.2 lets a
 *           signal interrupt a slow fault): an intake thread reads the fault
 *           (UFFD_FEATURE_THREAD_ID says which vCPU), kicks that vCPU out of
 *           KVM_RUN (EINTR, RIP at the faulting instruction, nothing retired),
 *           and the vCPU thread resolves the page and re-enters
 */
#ifndef LAZYVM_USERFAULT_H
#define LAZYVM_USERFAULT_H

#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>

#include "lazyvm/engine.h"
#include "vmm.h"

enum exit_backend {
	EXIT_BACKEND_NONE,
	EXIT_BACKEND_NATIVE,
	EXIT_BACKEND_SIGBUS,
	EXIT_BACKEND_KICK
};

const char *exit_backend_name(enum exit_backend b);

struct exit_probe {
	bool native, sigbus, kick;
	bool kick_probed; /* kick is only probed when sigbus is unusable (it costs ~50 ms) */
	char native_why[160], sigbus_why[160], kick_why[160];
};

/* Runs tiny probe VMs and says which backends work here; *best is the one to
 * use (native, else sigbus, else kick), EXIT_BACKEND_NONE when none does. */
int exit_backends_probe(struct kvm_sys *sys, bool probe_all, struct exit_probe *p,
                        enum exit_backend *best);

struct uf_bitmap {
	int memfd;
	_Atomic unsigned long *bits;
	uint64_t nbits;
	size_t bytes;
};

int uf_bitmap_create(struct uf_bitmap *bm, uint64_t nbits); /* every bit set */
void uf_bitmap_destroy(struct uf_bitmap *bm);
bool uf_bitmap_test(const struct uf_bitmap *bm, uint64_t bit);
/* Clears [first, first + n) with release ordering: whoever sees a clear bit
 * also sees the page's contents. */
void uf_bitmap_clear(struct uf_bitmap *bm, uint64_t first, uint64_t n);
uint64_t uf_bitmap_count(const struct uf_bitmap *bm);

/* The exit-intake state of one VM. */
struct userfault {
	enum exit_backend backend;
	struct uf_bitmap bm;
	struct engine *eng; /* resolvers: one slot per vCPU */
	_Atomic uint64_t exits_data, exits_fetch, exits_spurious, resolve_ns;
	/* kick backend */
	_Atomic uint64_t exits_kick;
	int kick_uffd; /* a dup of the engine's UFFD */
	int kick_stop_efd;
	pthread_t kick_thread;
	bool kick_started;
	struct vm *vm;
	_Atomic int tid[VMM_MAX_VCPUS];           /* each vCPU thread's tid, 0 unknown */
	_Atomic uint64_t kick_gpa[VMM_MAX_VCPUS]; /* the fault it was kicked for */
};

#define UF_NO_GPA UINT64_MAX

/* Kick backend: starts/stops the intake thread (after the vCPUs exist). */
int userfault_kick_start(struct userfault *uf, struct vm *vm);
void userfault_kick_stop(struct userfault *uf);

/* A vCPU thread came back from KVM_RUN with EINTR: if it was kicked for a
 * fault, resolve it (or make it an async page fault). 0 to re-enter, < 0
 * after vm_fail. */
int userfault_after_kick(struct vcpu *v);

/* Called by each vCPU thread once, to be found by its fault messages. */
void userfault_vcpu_started(struct vcpu *v);

/* A vCPU's exit that may be a userfault. Returns 1 when it was one and has been
 * resolved and completed (re-enter), 0 when it was not a userfault (the caller
 * reports the exit as usual), < 0 after vm_fail. */
int userfault_mmio_exit(struct vcpu *v);

/* Native backend: turns KVM_MEM_USERFAULT on for every memslot, each with its
 * part of uf->bm, after vm_create and before the vCPUs run. 0 or -errno (said). */
int userfault_native_enable(struct userfault *uf, struct vm *vm);

/* KVM_RUN failed with EFAULT and a KVM_EXIT_MEMORY_FAULT exit: 1 when it was
 * a userfault, now resolved (re-enter); < 0 after vm_fail otherwise. */
int userfault_memory_fault_exit(struct vcpu *v);

/* Makes the page holding gpa present through resolver `slot` (a vCPU index, or
 * an I/O worker's slot after them). 1 installed now, 0 already there, < 0
 * after vm_fail. */
int userfault_resolve_gpa(struct vm *vm, unsigned slot, uint64_t gpa);

/* Guest virtual -> physical through the guest's page tables (missing table
 * pages are fetched). 0, -ENOENT when unmapped, < 0 after vm_fail. */
int userfault_translate(struct vcpu *v, uint64_t cr3, uint64_t va, uint64_t *gpa);
int userfault_internal_exit(struct vcpu *v);

#endif
