/* Userfault exits: the seed's KVM userfault on a stock kernel, and on ours.
 *
 * The VMM keeps the userfault bitmap (ufpages.h). An *exit backend* turns a
 * vCPU's access to a missing page into a return from KVM_RUN with the guest
 * address; the vCPU thread then fetches and installs the page (the fault
 * engine's resolver), clears the bit, completes the access exactly and
 * re-enters, or makes it an async page fault (apf.h). Backends, probed at
 * start-up, one struct exit_backend_ops each:
 *   native  (exit_native.c) KVM_MEM_USERFAULT memslots (KVM userfault series;
 *           not upstream, kernel/ builds it for the hardware-model tier):
 *           KVM_RUN fails with EFAULT and a KVM_EXIT_MEMORY_FAULT exit, flag
 *           USERFAULT, for a guest access to a page whose bit is set; KVM's
 *           own accesses still fault on the UFFD (a handler thread serves
 *           those). With our patches the exit may also say APF: KVM could make
 *           it an async page fault (apf_kvm.c)
 *   sigbus  (exit_sigbus.c) UFFD_FEATURE_SIGBUS: KVM cannot fault the page
 *           in. On the PVM host data accesses exit as KVM_EXIT_MMIO with the
 *           gpa and instruction fetches as KVM_EXIT_INTERNAL_ERROR; on
 *           hardware KVM as -EFAULT without a gpa (unusable there)
 *   kick    (exit_kick.c) blocking UFFD plus a signal to the vCPU thread (KVM
 *           >= 6.2 lets a signal interrupt a slow fault): an intake thread
 *           reads the fault (UFFD_FEATURE_THREAD_ID says which vCPU), kicks
 *           that vCPU out of KVM_RUN (EINTR, RIP at the faulting instruction,
 *           nothing retired), and the vCPU thread resolves the page and
 *           re-enters
 *
 * The way of an exit reads in one direction (docs/ARCHITECTURE.md): the vCPU
 * loop (vcpu.c) -> the backend's ops (here) -> async PF (apf.h) -> the pages
 * and the fault engine (ufpages.h, src/core). No file includes a header of a
 * layer above its own.
 */
#ifndef LAZYVM_EXIT_H
#define LAZYVM_EXIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ufpages.h"
#include "vmm.h"

enum exit_backend {
	EXIT_BACKEND_NONE,
	EXIT_BACKEND_NATIVE,
	EXIT_BACKEND_SIGBUS,
	EXIT_BACKEND_KICK,
	EXIT_BACKENDS
};

const char *exit_backend_name(enum exit_backend b);

struct exit_probe {
	bool works[EXIT_BACKENDS], probed[EXIT_BACKENDS];
	char why[EXIT_BACKENDS][160];
	/* native: KVM_CAP_ASYNC_PF_USERFAULT (exitful) and ..._EVENTFD (exitless) */
	bool apf_exitful, apf_exitless;
};

/* Runs tiny probe VMs and says which backends work here; *best is the one to
 * use (native, else sigbus, else kick), EXIT_BACKEND_NONE when none does. A
 * costly backend (kick: ~50 ms) is probed only with probe_all or when the one
 * before it is unusable. */
int exit_backends_probe(struct kvm_sys *sys, bool probe_all, struct exit_probe *p,
                        enum exit_backend *best);

/* What the vCPU loop does after a backend saw an exit. */
enum exit_verdict {
	EXIT_FAILED = -1,  /* the VM was failed with the reason */
	EXIT_NOT_MINE = 0, /* not a userfault: the caller handles the exit */
	EXIT_RESOLVED = 1, /* the page is in (and the access completed): re-enter */
	EXIT_ASYNC = 2,    /* it became an async page fault: re-enter */
};

struct userfault;

struct exit_backend_ops {
	enum exit_backend id;
	bool costly;
	uint64_t uffd_features; /* the userfaultfd the engine opens */
	unsigned uffd_threads;  /* engine threads serving the UFFD (KVM's own accesses) */
	bool wants_uffd;        /* reads the UFFD itself: userfault.uffd is a dup of it */
	bool needs_core;        /* the guest's core installed before it runs */
	/* It sees a vCPU's fault only when KVM takes it in the vCPU's own thread
	 * (kick). With lazyvm's async PF KVM must then not run its own: where
	 * lazyvm holds the guest's PV async PF MSRs, KVM "halts" the vCPU and
	 * faults the page from a worker whenever the guest has interrupts on,
	 * i.e. for every user-mode fault (kvm_can_do_async_pf). Unless HLT does
	 * not exit (vm_config.hlt_in_guest). */
	bool sees_vcpu_thread_faults;
	/* 1 works here, 0 not, with what was seen in why */
	int (*probe)(struct kvm_sys *sys, struct exit_probe *p, char *why, size_t whylen);
	/* After vm_create, before the vCPUs run: 0 or -errno (logged). */
	int (*attach)(struct userfault *uf, struct vm *vm);
	void (*vcpu_started)(struct userfault *uf, struct vcpu *v); /* in its thread */
	/* KVM_RUN returned an exit (or EFAULT with a memory fault exit). */
	enum exit_verdict (*on_exit)(struct userfault *uf, struct vcpu *v);
	/* KVM_RUN returned EINTR: 0 to re-enter, < 0 after vm_fail. */
	int (*after_kick)(struct userfault *uf, struct vcpu *v);
	void (*detach)(struct userfault *uf);  /* stops the backend's threads; idempotent */
	void (*destroy)(struct userfault *uf); /* frees its state */
};

/* The exit-intake state of one VM. */
struct userfault {
	const struct exit_backend_ops *ops;
	struct uf_pages pages;
	_Atomic uint64_t exits_data, exits_fetch, exits_spurious, exits_kick, resolve_ns;
	int uffd; /* ops->wants_uffd: a dup of the engine's UFFD, else -1 */
	struct vm *vm;
	void *priv; /* the backend's own state */
};

const struct exit_backend_ops *exit_backend_ops(enum exit_backend b);

/* Sets uf up for backend b over nbits guest frames (every bit set). */
int exit_init(struct userfault *uf, enum exit_backend b, uint64_t nbits);
/* The engine exists: uffd is its userfaultfd (duplicated when the backend
 * reads it itself). 0 or -errno. */
int exit_set_uffd(struct userfault *uf, int uffd);
/* Makes uf the VM's exit intake (vm->uf) and attaches the backend. */
int exit_attach(struct userfault *uf, struct vm *vm);
void exit_detach(struct userfault *uf);     /* the backend's threads stop */
void exit_close_uffd(struct userfault *uf); /* its copy of the UFFD */
void exit_destroy(struct userfault *uf);    /* all of it, the bitmap too */

/* For the vCPU loop (vcpu.c), each a no-op without exit intake. */
void exit_vcpu_started(struct vcpu *v);
enum exit_verdict exit_on_exit(struct vcpu *v);
int exit_after_kick(struct vcpu *v);

#endif
