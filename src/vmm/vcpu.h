/* vCPU threads and their exits (vcpu.c), shared with vm.c. */
#ifndef LAZYVM_VCPU_H
#define LAZYVM_VCPU_H

#include "vmm.h"

void *vcpu_thread(void *arg);
void vcpu_kick(struct vcpu *v);
void vm_set_state(struct vm *vm, enum vm_state st);

/* Completes an exit KVM has handed us (I/O, MMIO) so that the vCPU's registers
 * are those after the instruction: KVM_RUN with immediate_exit set returns
 * EINTR once the instruction is done. Needed before saving state. */
int vcpu_complete_exit(struct vcpu *v);

/* Writes the snapshot of a paused VM into vm->cfg.snapshot_dir (snapshot.c). */
int snapshot_save(struct vm *vm, char *why, size_t whylen);

struct vmm_outcome;
/* Fills a front end's outcome from what the VM reported (run.c). */
void fill_vm_outcome(struct vm *vm, int r, struct vmm_outcome *out);

#endif
