/* lazyvm's reference VMM, as the front ends use it: boot the bundled guest
 * (optionally stopping at its snapshot point to write a snapshot), or restore a
 * snapshot with one of three ways of loading its memory. */
#ifndef LAZYVM_VMM_PUBLIC_H
#define LAZYVM_VMM_PUBLIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/engine.h"

/* Async page faults (docs/USERFAULT.md). */
enum vmm_apf {
	VMM_APF_OFF,      /* every fault synchronous */
	VMM_APF_USER,     /* the VMM injects "not present"/"page ready" (needs exit intake) */
	VMM_APF_EXITLESS, /* the same through per-vCPU notify/complete rings + eventfds */
	VMM_APF_KERNEL,   /* KVM's own async PF; probed: unavailable on emulating KVMs */
};
enum vmm_apf_policy { VMM_POLICY_SYNC, VMM_POLICY_ASYNC, VMM_POLICY_HYBRID };
/* --exit-backend: which exit backend an exit intake uses (AUTO: the probe's
 * best; a named one that does not work here fails the restore, saying why). */
enum vmm_exit_backend { VMM_EXIT_AUTO, VMM_EXIT_NATIVE, VMM_EXIT_SIGBUS, VMM_EXIT_KICK };

struct vmm_run_config {
	uint64_t mem_size;
	unsigned mem_slots;
	unsigned vcpus;
	uint32_t timeslice_us;
	uint64_t seed;
	const char *workload;
	const char *snapshot_dir; /* NULL: run prepare and run phases straight through */
	bool console_to_stderr;
	const void *image; /* the guest image, loaded flat at GUEST_IMAGE_GPA */
	enum vmm_apf apf;  /* != OFF: the guest enables the PV async PF protocol */
	size_t image_len;
	/* Post-copy migration to a `lazyvm migrate --listen` at this HOST:PORT:
	 * at the snapshot point, or migrate_after_ns after the start when set. */
	const char *migrate_to;
	uint64_t migrate_after_ns;
	uint64_t stall_ns; /* no message or console line this long: stop (0: never) */
	/* A Linux guest instead of the bundled one (docs/LINUX.md): a bzImage,
	 * an initramfs (NULL: none) and the kernel command line. */
	const char *kernel_path;
	const char *initrd_path;
	const char *cmdline;
};

/* The command line `lazyvm run --kernel` gives Linux without --cmdline. */
extern const char vmm_linux_default_cmdline[];

enum vmm_load {
	VMM_LOAD_EAGER, /* read the whole memory file, verify every page, then run */
	VMM_LOAD_MMAP,  /* map the memory file MAP_PRIVATE (Firecracker's File backend) */
	VMM_LOAD_LAZY,  /* userfaultfd + the fault engine: each page fetched when touched */
};

/* Called from lazyvm's threads during a restore (all optional). */
struct vmm_restore_hooks {
	/* The VM state is loaded and the vCPUs are about to run: from here on
	 * this process owns the VM (a migration destination tells its source). */
	void (*ready)(void *arg);
	/* Background prefetch has every page in (present, or known zero). */
	void (*transferred)(void *arg);
	void *arg;
};

struct vmm_restore_config {
	const char *dir;
	enum vmm_load load;
	uint64_t source_latency_ns; /* lazy: every page read takes this long */
	const char *source_uri;     /* memory from this NBD export, not DIR/memory */
	uint64_t source_timeout_ns; /* NBD: longest wait for the server (0: 5 s) */
	const char *record_ws;      /* lazy: write the pages the guest touched here */
	const char *prefetch_ws;    /* lazy: install this recorded working set first */
	bool background;            /* lazy: fetch every other page in the background */
	bool background_finish;     /* and keep fetching after the guest is done, until
	                             * every page is in (a migration's last pages) */
	const struct vmm_restore_hooks *hooks;
	unsigned handler_threads;           /* lazy: engine threads */
	enum engine_intake intake;          /* lazy */
	bool exit_intake;                   /* lazy: faults as vCPU exits (userfault exits)
	                                     * instead of UFFD messages; `intake` unused */
	enum vmm_exit_backend exit_backend; /* with exit_intake */
	enum vmm_apf apf;
	enum vmm_apf_policy policy;
	unsigned fault_around; /* lazy: pages per fault (engine_config) */
	bool console_to_stderr;
	uint64_t stall_ns; /* no message or console line this long: stop (0: never) */
};

struct vmm_outcome {
	bool ok;         /* the guest finished and verified all its data */
	char error[512]; /* why not, when !ok */
	unsigned results, results_failed;
	uint64_t t_first_entry_ns; /* first guest instruction (KVM_RUN) */
	uint64_t t_run_start_ns;   /* run phase start */
	uint64_t t_done_ns;        /* guest reported DONE */
	bool snapshot_written;
	uint64_t snapshot_ns; /* writing it, with every vCPU parked */
	/* migration source (lazyvm run --migrate-to) */
	bool migrated;            /* the VM left for the destination, which has every page */
	char migrate_note[512];   /* why it did not, when the VM went on here */
	uint64_t mig_downtime_ns; /* vCPUs parked here -> the destination took over */
	uint64_t mig_transfer_ns; /* took over -> it has every page */
	uint64_t mig_state_bytes; /* state file + page checksums */
	uint64_t mig_pages, mig_pages_zero;    /* guest pages; of them all-zero, never sent */
	uint64_t mig_bytes_sent, mig_requests; /* guest memory over NBD */
	/* memory loading */
	uint64_t faults;          /* lazy: UFFD faults; mmap: the process's page faults */
	uint64_t pages_installed; /* pages put in guest memory by lazyvm */
	uint64_t bytes_read;      /* from the memory file by lazyvm */
	uint64_t fault_p50_ns, fault_p99_ns;
	uint64_t max_rss_kb;
	char exit_backend[16]; /* exit intake: the backend in use, else "" */
	/* async page faults: what the VMM did, and what the guest says it took */
	uint64_t apf_not_present, apf_ready, apf_spurious, apf_sync;
	uint64_t apf_refused_unsafe, apf_refused_state;
	/* lazyvm's injection by the guest's CPL at the fault: async in user
	 * mode, async in kernel mode (SEND_ALWAYS), sync for being in kernel
	 * mode without SEND_ALWAYS */
	uint64_t apf_user_async, apf_kernel_async, apf_kernel_sync;
	uint64_t guest_apf_not_present, guest_apf_ready;
	char apf_note[160];                  /* e.g. why kernel async PF is unavailable */
	uint64_t ws_recorded, ws_prefetched; /* working-set pages written / installed */
	uint64_t pages_background;           /* installed by background prefetch */
	uint64_t prefetch_ms_x1000;          /* time the replay took, in microseconds */
	uint64_t apf_io_wakeups, apf_notify_signals;
	uint64_t apf_sync_ns, apf_async_ns; /* vCPU time per class of fault */
	/* who delivered them: "lazyvm, MSR filter", "KVM exitful, native", "KVM
	 * exitless, native", "KVM's own" (--apf kernel); "" with --apf off */
	char apf_mode[12], apf_impl[32];
	bool apf_msr_filter; /* the PV async PF MSRs exit to lazyvm (its implementation) */
	bool hlt_in_guest;   /* HLT does not exit (KVM_X86_DISABLE_EXITS_HLT): see exit.h */
	/* KVM's async PF for userfaults: exits flagged APF, ACCEPTs done and
	 * refused, READYs done and refused, exitless faults from KVM's notify
	 * ring and pages given back on its complete ring */
	uint64_t apf_kvm_exits, apf_kvm_accepted, apf_kvm_accept_refused;
	uint64_t apf_kvm_ready, apf_kvm_ready_refused, apf_kvm_ring_taken, apf_kvm_ring_completed;
	/* post-copy blocktime (lazy restores): time each vCPU spent blocked on
	 * missing pages, and the time all of them were blocked at once */
	unsigned nvcpus;
	uint64_t blocktime_ns[8], blocktime_faults[8];
	uint64_t blocktime_all_ns;
	uint64_t pages_zero_known; /* pages the snapshot says are zero: never read */
	uint64_t huge_collapsed;   /* 2 MiB pieces made huge pages once fully installed */
	uint64_t t_ready_ns, t_transferred_ns; /* hooks: vCPUs about to run, all pages in */
};

/* A migration destination (`lazyvm migrate`): listens, takes one VM from a
 * `lazyvm run --migrate-to` source and runs it, pulling its memory lazily
 * over NBD from the source (src/vmm/migrate.h has the protocol). */
struct vmm_migrate_in_config {
	const char *listen;         /* HOST:PORT; port 0 = any (see listening) */
	uint64_t accept_timeout_ns; /* 0: wait for a source for ever */
	/* How to restore: load must be lazy with a UFFD intake; dir, source_uri,
	 * background and hooks are filled in. */
	struct vmm_restore_config restore;
	void (*listening)(void *arg, const char *addr); /* the bound HOST:PORT */
	void *arg;
};

const char *vmm_load_name(enum vmm_load l);

/* Probes which userfault exit backends work on this host (tiny probe VMs) and
 * writes one line each plus the choice into buf. `all` also probes the slow
 * ones. Returns 0, or -errno when KVM itself is unusable. */
int vmm_probe_exits(bool all, char *buf, size_t len);

/* Both return 0 when the VM did what was asked (outcome->ok), else -errno
 * with outcome->error saying why. Neither exits the process. */
int vmm_run(const struct vmm_run_config *cfg, struct vmm_outcome *out);
/* vmm_run with cfg->kernel_path set (run_linux.c). */
int vmm_run_linux(const struct vmm_run_config *cfg, struct vmm_outcome *out);
int vmm_restore(const struct vmm_restore_config *cfg, struct vmm_outcome *out);
/* 0 when the guest finished at the destination with every page in. */
int vmm_migrate_in(const struct vmm_migrate_in_config *cfg, struct vmm_outcome *out);

/* Writes the page checksums and zero-page map of the lazyvm snapshot in dir
 * (checked against its state file) as a checksum file (csumfile.h), for
 * `lazyvm checksum --from-snapshot`. 0 or -errno with why. */
int vmm_snapshot_checksums(const char *dir, const char *out_path, uint64_t *mem_size,
                           uint64_t *zero_pages, char *why, size_t whylen);

#endif
