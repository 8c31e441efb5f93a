/* Front-end entry points: boot the guest (vmm_run) and restore (vmm_restore). */
#include "lazyvm/vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "migrate.h"
#include "snapshot.h"
#include "apf.h"
#include "vcpu.h"
#include "vmm.h"

const char *vmm_load_name(enum vmm_load l)
{
	static const char *const names[] = {"eager", "mmap", "lazy"};

	return names[l];
}

/* Fills the outcome from what the VM reported. */
void fill_vm_outcome(struct vm *vm, int r, struct vmm_outcome *out)
{
	struct vm_report *rep = &vm->report;
	struct rusage ru;

	out->results = rep->results;
	out->results_failed = rep->results_failed;
	out->t_first_entry_ns = rep->t_first_entry_ns;
	out->t_run_start_ns = rep->t_resume_ns ? rep->t_resume_ns : rep->t_first_entry_ns;
	out->t_done_ns = rep->t_done_ns;
	out->snapshot_written = vm->snapshot_taken;
	out->snapshot_ns = rep->snapshot_ns;
	out->migrated = vm->migrated;
	snprintf(out->migrate_note, sizeof(out->migrate_note), "%s", vm->migrate_note);
	if (vm->cfg.migrate) {
		struct migrate_out *mo = vm->cfg.migrate;
		if (mo->t_accept_ns)
			out->mig_downtime_ns = mo->t_accept_ns - mo->t_pause_ns;
		if (mo->t_done_ns)
			out->mig_transfer_ns = mo->t_done_ns - mo->t_accept_ns;
		out->mig_state_bytes = mo->state_bytes;
		out->mig_pages = mo->pages_total;
		out->mig_pages_zero = mo->pages_zero;
		out->mig_bytes_sent = mo->nbd_bytes_sent;
		out->mig_requests = mo->nbd_requests;
	}
	out->guest_apf_not_present = rep->guest_apf_not_present;
	out->guest_apf_ready = rep->guest_apf_ready;
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		out->max_rss_kb = (uint64_t)ru.ru_maxrss;
	if (rep->error[0])
		snprintf(out->error, sizeof(out->error), "%s", rep->error);
	else if (r < 0 && !rep->done && !vm->snapshot_taken && !vm->migrated)
		snprintf(out->error, sizeof(out->error),
		         "the VM stopped before the guest finished");
	else if (rep->done && rep->results == 0 && rep->done_status != 0)
		snprintf(out->error, sizeof(out->error),
		         "the guest stopped before running any task (status %d; its log says why)",
		         rep->done_status);
	else if (rep->done && (rep->done_status != 0 || rep->results_failed))
		snprintf(
		    out->error, sizeof(out->error),
		    "the guest reported failure: %u of %u task(s) failed verification (status %d)",
		    rep->results_failed, rep->results, rep->done_status);
	else if (vm->cfg.migrate && !vm->migrated && !vm->migrate_note[0])
		snprintf(out->error, sizeof(out->error),
		         "the guest finished before the migration point: nothing was migrated");
	else if (vm->migrate_note[0])
		snprintf(out->error, sizeof(out->error),
		         "the guest finished here because the migration failed: %.400s",
		         vm->migrate_note);
	out->ok = !out->error[0];
}

/* --migrate-after: parks every vCPU at that time, wherever the guest is. */
struct migrate_timer {
	struct vm *vm;
	uint64_t after_ns;
	pthread_t thread;
};

static void *migrate_timer_main(void *arg)
{
	struct migrate_timer *mt = arg;
	struct vm *vm = mt->vm;
	struct timespec deadline;

	vm_cond_deadline(mt->after_ns, &deadline);
	pthread_mutex_lock(&vm->lock);
	while (atomic_load(&vm->state) != VM_STOPPING &&
	       pthread_cond_timedwait(&vm->cond, &vm->lock, &deadline) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&vm->lock);
	if (atomic_load(&vm->state) == VM_STOPPING)
		return NULL; /* the guest finished (or failed) first */
	vm_set_state(vm, VM_PAUSING);
	pthread_mutex_lock(&vm->lock);
	while (vm->paused < vm->nvcpus && atomic_load(&vm->state) == VM_PAUSING)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	if (atomic_load(&vm->state) == VM_PAUSING)
		vm_migrate_parked(vm);
	return NULL;
}

int vmm_run(const struct vmm_run_config *cfg, struct vmm_outcome *out)
{
	struct kvm_sys sys;
	struct vm *vm;
	struct vm_config vc = {.mem_size = cfg->mem_size,
	                       .nslots = cfg->mem_slots,
	                       .nvcpus = cfg->vcpus,
	                       .timeslice_us = cfg->timeslice_us,
	                       .seed = cfg->seed,
	                       .workload = cfg->workload,
	                       .snapshot_dir = cfg->snapshot_dir,
	                       .quiet_console = cfg->console_to_stderr,
	                       .capture_apf_msrs = cfg->apf != VMM_APF_OFF,
	                       .stall_ns = cfg->stall_ns};
	int r;

	if (cfg->kernel_path)
		return vmm_run_linux(cfg, out);
	memset(out, 0, sizeof(*out));
	if ((r = kvm_sys_open(&sys, out->error, sizeof(out->error))) < 0)
		return r;
	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		kvm_sys_close(&sys);
		return -ENOMEM;
	}
	r = guest_mem_map(&vm->mem, cfg->mem_size, cfg->mem_slots, MEM_ANON, -1);
	if (r < 0) {
		snprintf(
		    out->error, sizeof(out->error),
		    "cannot lay out %llu bytes of guest RAM in %u slot(s): %s (RAM must be 16 MiB "
		    "to 4 GiB, a multiple of 2 MiB per slot)",
		    (unsigned long long)cfg->mem_size, cfg->mem_slots, strerror(-r));
		goto out_free;
	}
	r = vm_create(vm, &sys, &vc);
	if (r < 0) {
		snprintf(out->error, sizeof(out->error), "creating the VM: %s", strerror(-r));
		goto out_vm;
	}
	/* With async PF on, the VMM holds the guest's APF MSRs from boot (they go
	 * into the snapshot), so KVM's own async PF never sees them. */
	struct apf apf;
	bool have_apf = false;
	if (cfg->apf != VMM_APF_OFF) {
		char why[160];
		if ((r = apf_init(&apf, vm, NULL, APF_OFF, APF_IMPL_LAZYVM, APF_POLICY_SYNC, 0, why,
		                  sizeof(why))) < 0) {
			snprintf(out->error, sizeof(out->error), "async page faults: %s", why);
			goto out_vm;
		}
		vm->apf = &apf;
		have_apf = true;
	}
	struct migrate_out mo = {.fd = -1};
	struct migrate_timer mt = {.vm = vm, .after_ns = cfg->migrate_after_ns};
	bool timer = false;
	if (cfg->migrate_to) {
		char why[400];
		if ((r = migrate_connect(&mo, cfg->migrate_to, cfg->mem_size, cfg->vcpus, why,
		                         sizeof(why))) < 0) {
			snprintf(out->error, sizeof(out->error), "%s", why);
			goto out_apf;
		}
		vm->cfg.migrate = &mo;
		vm->cfg.migrate_timed = cfg->migrate_after_ns != 0;
	}
	r = arch_load_guest(vm, cfg->image, cfg->image_len);
	if (r < 0) {
		snprintf(out->error, sizeof(out->error), "loading the guest image (%zu bytes): %s",
		         cfg->image_len, strerror(-r));
		goto out_apf;
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if ((r = arch_vcpu_boot_regs(&vm->vcpus[i])) < 0) {
			snprintf(out->error, sizeof(out->error), "vCPU %u boot registers: %s", i,
			         strerror(-r));
			goto out_apf;
		}
	if (cfg->migrate_to && cfg->migrate_after_ns) {
		if ((r = -pthread_create(&mt.thread, NULL, migrate_timer_main, &mt)) < 0) {
			snprintf(out->error, sizeof(out->error), "migration timer: %s",
			         strerror(-r));
			goto out_apf;
		}
		timer = true;
	}
	r = vm_run(vm);
	if (timer)
		pthread_join(mt.thread, NULL);
	fill_vm_outcome(vm, r, out);
	r = out->ok ? 0 : -EIO;
out_apf:
	migrate_close(&mo);
	if (have_apf)
		apf_destroy(&apf);
out_vm:
	vm_destroy(vm);
	guest_mem_unmap(&vm->mem);
out_free:
	free(vm);
	kvm_sys_close(&sys);
	return r;
}
