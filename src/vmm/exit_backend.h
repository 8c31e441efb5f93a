/* What the exit backends (exit_native.c, exit_sigbus.c, exit_kick.c) share:
 * exit.c's handling of exits, probe.c's probe VMs. Private to the exit layer. */
#ifndef LAZYVM_EXIT_BACKEND_H
#define LAZYVM_EXIT_BACKEND_H

#include <stddef.h>

#include "exit.h"

extern const struct exit_backend_ops exit_native_ops, exit_sigbus_ops, exit_kick_ops;

/* An exit after which the access has retired or could not be emulated:
 * KVM_EXIT_MMIO on a missing RAM page (resolved and completed, or a read
 * undone and made async), KVM_EXIT_INTERNAL_ERROR of an emulator that could
 * not fetch (the pages under it brought in). Anything else: not mine. */
enum exit_verdict exit_retired(struct userfault *uf, struct vcpu *v);
/* A fault of which nothing has retired (a kick; a native exit, where KVM
 * checks the bitmap before the access): an async page fault needs no undoing,
 * else the page is resolved now and *count counts it. */
enum exit_verdict exit_unretired(struct vcpu *v, uint64_t gpa, _Atomic uint64_t *count);

/* A probe VM: 2 pages of RAM, real-mode code in page 0 that reads page 1,
 * which is registered MISSING with a UFFD of `features`. */
struct probe_vm {
	int vm, vcpu, uffd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem; /* 2 pages */
};
#define PROBE_GPA 0x1000u
int probe_vm_open(struct kvm_sys *sys, struct probe_vm *p, uint64_t features, char *why,
                  size_t whylen);
void probe_vm_close(struct probe_vm *p);

#endif
