/* lazyvm's reference VMM: internal interfaces between its files.
 *
 * A VM is KVM's VM fd, guest RAM in one or more memslots, vCPU threads, and the
 * two devices the guest ABI defines (serial console, control port). Library
 * code: returns 0 or -errno and logs context; never exits. */
#ifndef LAZYVM_VMM_H
#define LAZYVM_VMM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/guest_abi.h"
#include "dev/pio.h"

#define VMM_MAX_SLOTS 8
#define VMM_MAX_VCPUS GUEST_MAX_VCPUS

/* --- KVM system fd and capabilities (kvm.c) --- */

struct kvm_sys {
	int fd; /* /dev/kvm */
	int vcpu_mmap_size;
	struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID */
	uint32_t *msr_index;      /* KVM_GET_MSR_INDEX_LIST */
	uint32_t nmsrs;
	int xsave2_size; /* KVM_CAP_XSAVE2: bytes of the xsave area, 0 = 4096 */
};

int kvm_sys_open(struct kvm_sys *sys, char *why, size_t whylen);
void kvm_sys_close(struct kvm_sys *sys);
/* KVM_CHECK_EXTENSION on fd (system or VM): the value, 0 when absent. */
int kvm_cap(int fd, long cap);

/* --- guest memory (mem.c) --- */

struct mem_slot {
	uint64_t gpa;
	uint64_t size;
	uint64_t file_off; /* position of this slot in the snapshot memory file */
	uint8_t *host;
};

struct guest_mem {
	uint64_t size; /* bytes of RAM from gpa 0 */
	unsigned nslots;
	struct mem_slot slots[VMM_MAX_SLOTS];
	bool file_mapped; /* slots map the memory file (MAP_PRIVATE) */
};

enum mem_backing {
	MEM_ANON,        /* anonymous private memory (boot, eager and lazy restore) */
	MEM_FILE_PRIVATE /* the memory file mapped MAP_PRIVATE (Firecracker's File backend) */
};

/* Lays out `size` bytes of RAM in `nslots` equal slots (each a multiple of
 * 2 MiB) and maps them. With MEM_FILE_PRIVATE, `fd` is the memory file. */
int guest_mem_map(struct guest_mem *m, uint64_t size, unsigned nslots, enum mem_backing b, int fd);
void guest_mem_unmap(struct guest_mem *m);

/* THE translation of a guest-physical range to host memory: NULL unless all of
 * [gpa, gpa + len) is RAM within one slot. Overflow-checked; every
 * guest-supplied address goes through here. */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* --- the VM (vm.c) --- */

enum vm_state { VM_RUNNING, VM_PAUSING, VM_STOPPING };

struct vm;

struct vcpu {
	struct vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool started;
	char serial_line[160];
	size_t serial_len;
	uint64_t exits;
	_Atomic bool in_run; /* inside KVM_RUN (the kick backend only kicks these) */
	_Atomic int tid;     /* of its thread, once started */
};

/* What the guest reported. */
struct vm_report {
	bool booted;
	bool prepared; /* PREPARED or SNAPSHOT seen */
	bool done;
	int done_status;
	unsigned results, results_failed;
	bool panicked;
	char error[512];           /* first fatal problem (guest panic or VMM-side), "" if none */
	uint64_t t_first_entry_ns; /* first KVM_RUN of this process */
	uint64_t t_resume_ns;      /* run phase start: after PREPARED/SNAPSHOT, or restore */
	uint64_t t_done_ns;
	uint64_t snapshot_ns; /* writing the snapshot (all vCPUs parked) */
	uint64_t guest_apf_not_present, guest_apf_ready; /* from DONE */
};

struct vm_config {
	uint64_t mem_size;
	unsigned nslots;
	unsigned nvcpus;
	uint32_t timeslice_us;
	uint64_t seed;
	const char *workload;
	const char *snapshot_dir;    /* take a snapshot at the snapshot point, then stop */
	bool quiet_console;          /* don't echo the guest's console */
	bool capture_apf_msrs;       /* guest APF MSR accesses exit to the VMM (apf.h) */
	bool hlt_in_guest;           /* KVM_X86_DISABLE_EXITS_HLT if KVM offers it: KVM then
	                              * runs no async PF of its own for a guest whose PV
	                              * async PF it does not hold (exit.h) */
	struct migrate_out *migrate; /* migrate instead of writing a snapshot (migrate.h) */
	bool migrate_timed;          /* at a time (run.c), not at the snapshot point */
	uint64_t stall_ns;           /* stop the VM when the guest shows no progress
	                              * (no message, no console line) this long; 0: never */
	bool pit;                    /* KVM's in-kernel i8254 (KVM_CREATE_PIT2); a snapshot
	                              * carries its state (devices.c) */
	bool cpuid_later;            /* no KVM_SET_CPUID2 here: a restore sets the
	                              * snapshot's own (arch_vcpu_load) */
	bool linux_guest;            /* a Linux kernel, not the bundled guest: the hypervisor
	                              * CPUID bit, the Linux devices (linux.h); with pit */
};

struct vm {
	struct vm_config cfg;
	struct kvm_sys *sys;
	int fd;
	struct guest_mem mem;
	unsigned nvcpus;
	struct vcpu vcpus[VMM_MAX_VCPUS];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	_Atomic int state;
	unsigned paused; /* vCPUs parked for a snapshot */
	bool snapshot_taken;
	bool migrated;          /* the VM has left for a migration destination */
	char migrate_note[512]; /* why a migration did not happen, when the VM went on */
	struct vm_report report;
	bool hlt_in_guest;     /* cfg.hlt_in_guest was granted */
	struct pio_table pio;  /* every KVM_EXIT_IO goes through it (dev/pio.h) */
	struct linux_devs *lx; /* a Linux guest's devices, NULL for the bundled guest */
	pthread_mutex_t console_lock;
	int kick_signal;
	struct userfault *uf;        /* exit-based intake, NULL otherwise */
	struct apf *apf;             /* async page faults, NULL when off */
	struct blocktime *blocktime; /* vCPU threads register with it, NULL when off */
	/* The VMM's own accesses to guest RAM hold this for reading; revoking
	 * RAM (a failed restore makes it PROT_NONE) holds it for writing. */
	pthread_rwlock_t mem_gate;
	bool mem_revoked;
	_Atomic uint64_t progress_ns; /* the guest's last message or console line */
	/* Set by a lazy restore: pages installed so far because the guest touched
	 * them. A guest whose memory is still coming in makes progress without a
	 * word (a Linux process verifying its pages at 1 ms a fault): the stall
	 * watch counts each new page as progress (bounded by the guest's size). */
	uint64_t (*pages_demanded)(void *ctx); /* called with mem_fill_ctx */
	_Atomic bool stalled; /* stopped for a stall: every vCPU reports its state */
	/* Set by a lazy restore: brings [gpa, gpa + len) in before the VMM touches
	 * it (see vm_mem_get). 0, or -errno once the pages cannot come. */
	int (*mem_fill)(struct vm *vm, unsigned who, uint64_t gpa, uint64_t len);
	void *mem_fill_ctx;
};

/* Creates the VM: memslots for `mem` (already mapped), in-kernel irqchip, vCPUs
 * with KVM's CPUID. Does not set registers. */
int vm_create(struct vm *vm, struct kvm_sys *sys, const struct vm_config *cfg);
void vm_destroy(struct vm *vm);

/* Starts every vCPU thread and waits until the guest is done, panics, the VM
 * fails, or (with a snapshot dir) the snapshot is written. Returns 0 when the
 * VM ran to its end, -errno otherwise; vm->report says what happened. */
int vm_run(struct vm *vm);

/* The VMM's own reads and writes of guest RAM.
 *
 * During a lazy restore a page may not be in yet, and the engine that would
 * bring it may have stopped (a page failed its checksum, the source died). A
 * host thread that touched such a page would sleep in the kernel on the
 * userfaultfd for ever (or take SIGBUS), and while it sleeps inside the gate
 * the VM's stop path (vm_mem_revoke) could not finish. So the rule: the VMM
 * touches guest RAM only between vm_mem_enter and vm_mem_exit, and only
 * through pointers from vm_mem_get, which first brings the pages in (from the
 * calling thread, through the restore's resolver slot `who`) and fails when
 * they cannot come. No host thread ever waits on a page nobody will serve.
 *
 * vm_mem_enter: false (and nothing held) when RAM has been revoked, so the
 * caller must not touch it. */
bool vm_mem_enter(struct vm *vm);
void vm_mem_exit(struct vm *vm);
/* A thread that has no resolver slot (an I/O worker): only pages already in. */
#define VM_MEM_NO_FETCH (~0u)
/* Inside the gate: the host address of [gpa, gpa + len), every page of it
 * installed. `who` is the caller's resolver slot (its vCPU index) or
 * VM_MEM_NO_FETCH. Returns 0 with *host; -EFAULT when the range is not RAM
 * within one slot; -EAGAIN (VM_MEM_NO_FETCH only) when a page is not in yet;
 * -ECANCELED when a page cannot come (the VM has been failed with the reason). */
int vm_mem_get(struct vm *vm, unsigned who, uint64_t gpa, uint64_t len, void **host);
/* Makes guest RAM inaccessible (PROT_NONE) once no VMM access is under way;
 * bounded, since no access inside the gate waits on a missing page. */
void vm_mem_revoke(struct vm *vm);

/* With every vCPU parked (the caller is a vCPU at the snapshot point or the
 * migration timer): migrates the VM out. Afterwards the VM is STOPPING
 * (migrated, or lost) or RUNNING again (the destination refused; noted). */
void vm_migrate_parked(struct vm *vm);

/* The deadline `after_ns` from now for a pthread_cond_timedwait on vm->cond,
 * which runs on CLOCK_MONOTONIC (a wall-clock step must not fire or stall it). */
struct timespec;
void vm_cond_deadline(uint64_t after_ns, struct timespec *ts);

/* Makes vCPU v leave KVM_RUN soon: immediate_exit covers the window before
 * it enters, a signal (vm->kick_signal) the time inside. */
void vcpu_kick(struct vcpu *v);
/* Completes an exit KVM has handed us (I/O, MMIO) so that the vCPU's registers
 * are those after the instruction: KVM_RUN with immediate_exit set returns
 * EINTR once the instruction is done. Needed before saving state. */
int vcpu_complete_exit(struct vcpu *v);

/* Records the first fatal error and stops every vCPU. */
void vm_fail(struct vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --- x86-64 boot set-up (x86_64/boot.c) --- */

/* Writes the page tables, GDT, boot info and image into guest memory. */
int arch_load_guest(struct vm *vm, const void *image, size_t image_len);
/* Long mode with flat segments (base 0, 4 GiB, DPL 0): CS 64-bit code, DS
 * (and ES, FS, GS, SS) data; PE, ET, PG, PAE, LME, LMA and the bits given. */
struct arch_long_mode {
	uint16_t cs, ds, gdt_limit;
	uint64_t gdt, cr3, cr0_more, cr4_more, efer_more;
};
int arch_vcpu_long_mode(struct vcpu *v, const struct arch_long_mode *lm);
/* Long-mode registers of vCPU v at the guest entry. */
int arch_vcpu_boot_regs(struct vcpu *v);
/* KVM_SET_CPUID2 from KVM's supported set, with this vCPU's APIC ids. */
int arch_vcpu_set_cpuid(struct vcpu *v);

/* --- the stall report (x86_64/report.c) --- */

/* From vCPU v's own thread, out of KVM_RUN for good: logs at error level what
 * it was doing (registers, pending events, LAPIC ISR/IRR, mp_state) and the
 * guest's async PF area, and the guest's own async PF bookkeeping when it
 * keeps one (guest_abi.h). Touches only guest pages already in. */
void arch_vcpu_report(struct vcpu *v);

/* --- vCPU state save/restore (x86_64/state.c) --- */

struct vcpu_state; /* opaque blob builder in snapshot.c */

/* Appends every piece of vCPU state as snapshot sections; see snapshot.c. */
struct snap_writer;
int arch_vcpu_save(struct vcpu *v, struct snap_writer *w);
struct snap_reader;
int arch_vcpu_load(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen);

/* --- the bundled guest image (guest_image.S) --- */
extern const unsigned char lazyvm_guest_image[];
extern const unsigned char lazyvm_guest_image_end[];

#endif
