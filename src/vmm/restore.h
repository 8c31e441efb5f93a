/* vmm_restore's pieces, shared between restore.c (validating the snapshot,
 * loading memory eagerly or by mmap, putting the VM back, the run) and
 * restore_lazy.c (everything the lazy load adds: the fault engine and its
 * watcher, userfault exits, async page faults, zero pages, working sets,
 * huge pages). Private to src/vmm. */
#ifndef LAZYVM_RESTORE_H
#define LAZYVM_RESTORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/engine.h"
#include "lazyvm/source.h"
#include "lazyvm/vmm.h"
#include "apf.h"
#include "snapshot.h"
#include "exit.h"
#include "vmm.h"

struct restore {
	const struct vmm_restore_config *cfg;
	struct vmm_outcome *out;
	uint8_t *state;
	size_t state_len;
	struct snap_reader rd;
	const uint32_t *chunk_crcs; /* of the checksums file, from the state file */
	int mem_fd, csum_fd;
	struct source *src;
	struct engine *eng;
	struct userfault uf;
	bool have_uf;
	struct kvm_sys *sys;
	unsigned eng_prefetch_slot; /* resolver slot for working-set replay */
	struct apf apf;
	bool have_apf;
	enum apf_impl apf_impl; /* user and exitless: lazyvm's or KVM's (native) */
	struct blocktime *bt;
	const struct guest_mem *mem; /* guest RAM, once mapped */
	_Atomic uint64_t huge;       /* 2 MiB pieces collapsed into huge pages */
};

/* Records why the restore fails (the first reason wins) and returns err. */
int restore_fail(struct restore *rs, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The memory (DIR/memory or the NBD export) as a checked source in rs->src:
 * every page it gives is verified against the snapshot's checksums. */
int restore_open_source(struct restore *rs, uint64_t mem_size);

/* Lazy load: userfaultfd over guest RAM (or the userfault exit set-up), the
 * fault engine on rs->src, zero pages marked; working-set recording started
 * when asked. */
int restore_start_lazy(struct restore *rs, struct guest_mem *m);
/* vm_run, with a watcher that stops the VM if the engine fails. */
int restore_run_watched(struct restore *rs, struct vm *vm);
/* Userfault exits: installs the pages KVM itself writes for the guest's PV
 * MSRs (kvmclock, wall clock, steal time, async PF area, PV EOI), and with a
 * backend that needs it the bundled guest's core, before the vCPU state is
 * loaded (writing the wall clock MSR writes guest memory). */
int restore_install_first(struct restore *rs, struct vm *vm);
/* The guest memory KVM writes for PV MSR `index` holding `data`: 1 with
 * *out filled, 0 when the MSR is not one of those or is not enabled. */
struct pv_range {
	uint64_t gpa;
	uint32_t len;
	const char *name;
};
int restore_pv_ranges(uint32_t index, uint64_t data, struct pv_range *out);
/* The guest's async PF state where --apf wants it; starts the APF workers. */
int restore_setup_apf(struct restore *rs, struct vm *vm);
/* Working sets (REAP): write the one recorded; replay one (a bad or stale
 * file only warns). */
void restore_record_ws(struct restore *rs);
int restore_prefetch_ws(struct restore *rs, struct vm *vm);
/* Fully installed 2 MiB pieces of rs->mem become transparent huge pages. */
void restore_collapse(struct restore *rs);
/* The background pass has every page: collapse, note the time, tell the hook. */
void restore_transferred(void *arg);

#endif
