/* vCPU threads and their exits (vcpu.c), shared with vm.c. */
#ifndef LAZYVM_VCPU_H
#define LAZYVM_VCPU_H

#include "vmm.h"

void *vcpu_thread(void *arg);
void vm_set_state(struct vm *vm, enum vm_state st);

/* Fills vm->pio with the bundled guest's two devices (serial, control port);
 * strict: any other port fails the VM. */
int vcpu_bundled_pio(struct vm *vm);
/* From vCPU v in an I/O exit: parks every other vCPU, then snapshots (or
 * migrates) the VM and stops it. 0, or -errno with the VM failed. */
int vcpu_snapshot_point(struct vcpu *v);

/* Writes the snapshot of a paused VM into vm->cfg.snapshot_dir (snapshot.c). */
int snapshot_save(struct vm *vm, char *why, size_t whylen);

struct vmm_outcome;
/* Fills a front end's outcome from what the VM reported (run.c). */
void fill_vm_outcome(struct vm *vm, int r, struct vmm_outcome *out);

#endif
