/* A VM's life: create (memslots, irqchip, vCPUs), run (vCPU threads), stop. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "apf.h"
#include "linux.h"
#include "migrate.h"
#include "vcpu.h"
#include "vmm.h"

static void kick_handler(int sig)
{
	(void)sig;
}

int vm_create(struct vm *vm, struct kvm_sys *sys, const struct vm_config *cfg)
{
	int r;

	vm->cfg = *cfg;
	vm->sys = sys;
	vm->nvcpus = cfg->nvcpus;
	vm->fd = -1;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		vm->vcpus[i].fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_mutex_init(&vm->console_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* vm_run's stall watch */
	pthread_cond_init(&vm->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_rwlock_init(&vm->mem_gate, NULL);
	atomic_init(&vm->state, VM_RUNNING);
	atomic_init(&vm->stalled, false);
	if (vm->nvcpus < 1 || vm->nvcpus > VMM_MAX_VCPUS)
		return -EINVAL;
	vm->fd = ioctl(sys->fd, KVM_CREATE_VM, 0);
	if (vm->fd < 0) {
		r = -errno;
		lv_err("KVM_CREATE_VM: %s", strerror(errno));
		return r;
	}
	/* Intel needs a TSS and identity-map page below 4 GiB even for a guest
	 * that never leaves long mode; elsewhere these are no-ops. */
	if (ioctl(vm->fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		lv_debug("KVM_SET_TSS_ADDR: %s", strerror(errno));
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		struct mem_slot *s = &vm->mem.slots[i];
		struct kvm_userspace_memory_region reg = {
		    .slot = i,
		    .guest_phys_addr = s->gpa,
		    .memory_size = s->size,
		    .userspace_addr = (uint64_t)(uintptr_t)s->host,
		};

		if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &reg) < 0) {
			r = -errno;
			lv_err("KVM_SET_USER_MEMORY_REGION slot %u [0x%llx, +0x%llx): %s", i,
			       (unsigned long long)s->gpa, (unsigned long long)s->size,
			       strerror(errno));
			return r;
		}
	}
	/* Exception payloads on every VM: async page faults inject #PF with CR2
	 * through it (without it a pending #PF's CR2 is silently dropped,
	 * measured), and vCPU events saved with it must be loaded with it. */
	struct kvm_enable_cap cap = {.cap = KVM_CAP_EXCEPTION_PAYLOAD, .args = {1}};
	if (ioctl(vm->fd, KVM_ENABLE_CAP, &cap) < 0) {
		r = -errno;
		lv_err("KVM_CAP_EXCEPTION_PAYLOAD: %s", strerror(errno));
		return r;
	}
	if (ioctl(vm->fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		r = -errno;
		lv_err("KVM_CREATE_IRQCHIP: %s", strerror(errno));
		return r;
	}
	/* After the irqchip, which the PIT's interrupt goes to. The speaker
	 * port stays with KVM (a dummy), as Firecracker does it. */
	struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
	if (cfg->pit && ioctl(vm->fd, KVM_CREATE_PIT2, &pit) < 0) {
		r = -errno;
		lv_err("KVM_CREATE_PIT2: %s", strerror(errno));
		return r;
	}
	if (cfg->linux_guest) {
		if ((r = linux_devs_create(vm)) < 0) {
			lv_err("the Linux guest's devices: %s", strerror(-r));
			return r;
		}
	} else if ((r = vcpu_bundled_pio(vm)) < 0) {
		return r;
	}
	if (cfg->capture_apf_msrs) {
		char why[160];
		if ((r = apf_capture_msrs(vm, why, sizeof(why))) < 0) {
			lv_err("async page faults: %s", why);
			return r;
		}
	}
	/* Before the vCPUs (KVM refuses it after). Not offered (a KVM built to
	 * mitigate SMT RSB attacks): the VM runs with HLT exits, and KVM's own
	 * async PF keeps most user-mode faults from the exit intake; the
	 * report says which (hlt_in_guest). */
	if (cfg->hlt_in_guest &&
	    (kvm_cap(vm->fd, KVM_CAP_X86_DISABLE_EXITS) & KVM_X86_DISABLE_EXITS_HLT)) {
		struct kvm_enable_cap hlt = {.cap = KVM_CAP_X86_DISABLE_EXITS,
		                             .args = {KVM_X86_DISABLE_EXITS_HLT}};
		if (ioctl(vm->fd, KVM_ENABLE_CAP, &hlt) < 0) {
			r = -errno;
			lv_err("KVM_CAP_X86_DISABLE_EXITS (HLT): %s", strerror(errno));
			return r;
		}
		vm->hlt_in_guest = true;
	}
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		v->vm = vm;
		v->index = i;
		v->fd = ioctl(vm->fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (v->fd < 0) {
			r = -errno;
			lv_err("KVM_CREATE_VCPU %u: %s", i, strerror(errno));
			return r;
		}
		v->run = mmap(NULL, (size_t)sys->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		              v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			r = -errno;
			lv_err("mmap of vCPU %u's kvm_run: %s", i, strerror(errno));
			return r;
		}
		r = cfg->cpuid_later ? 0 : arch_vcpu_set_cpuid(v);
		if (r < 0) {
			lv_err("KVM_SET_CPUID2 on vCPU %u: %s", i, strerror(-r));
			return r;
		}
	}
	return 0;
}

void vm_destroy(struct vm *vm)
{
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->run)
			munmap(v->run, (size_t)vm->sys->vcpu_mmap_size);
		if (v->fd >= 0)
			close(v->fd);
		v->run = NULL;
		v->fd = -1;
	}
	if (vm->fd >= 0)
		close(vm->fd);
	vm->fd = -1;
	linux_devs_free(vm);
	pthread_mutex_destroy(&vm->lock);
	pthread_mutex_destroy(&vm->console_lock);
	pthread_cond_destroy(&vm->cond);
	pthread_rwlock_destroy(&vm->mem_gate);
}

int vcpu_complete_exit(struct vcpu *v)
{
	v->run->immediate_exit = 1;
	int r = ioctl(v->fd, KVM_RUN, 0);
	int err = errno;
	v->run->immediate_exit = 0;
	if (r == 0 || err != EINTR)
		return r == 0 ? -EPROTO : -err;
	return 0;
}

/* Makes vCPU v leave KVM_RUN soon: immediate_exit covers the window before it
 * enters, the signal the time inside. */
void vcpu_kick(struct vcpu *v)
{
	if (!v->started)
		return;
	v->run->immediate_exit = 1;
	pthread_kill(v->thread, v->vm->kick_signal);
}

void vm_set_state(struct vm *vm, enum vm_state st)
{
	pthread_mutex_lock(&vm->lock);
	/* STOPPING is final. */
	if (atomic_load(&vm->state) != VM_STOPPING)
		atomic_store(&vm->state, st);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (st != VM_RUNNING)
		for (unsigned i = 0; i < vm->nvcpus; i++)
			vcpu_kick(&vm->vcpus[i]);
}

bool vm_mem_enter(struct vm *vm)
{
	pthread_rwlock_rdlock(&vm->mem_gate);
	if (!vm->mem_revoked)
		return true;
	pthread_rwlock_unlock(&vm->mem_gate);
	return false;
}

void vm_mem_exit(struct vm *vm)
{
	pthread_rwlock_unlock(&vm->mem_gate);
}

int vm_mem_get(struct vm *vm, unsigned who, uint64_t gpa, uint64_t len, void **host)
{
	void *p = guest_mem_ptr(&vm->mem, gpa, len);
	int r;

	*host = NULL;
	if (!p)
		return -EFAULT;
	if (vm->mem_fill && (r = vm->mem_fill(vm, who, gpa, len)) < 0)
		return r;
	*host = p;
	return 0;
}

void vm_mem_revoke(struct vm *vm)
{
	pthread_rwlock_wrlock(&vm->mem_gate);
	vm->mem_revoked = true;
	for (unsigned i = 0; i < vm->mem.nslots; i++)
		mprotect(vm->mem.slots[i].host, vm->mem.slots[i].size, PROT_NONE);
	pthread_rwlock_unlock(&vm->mem_gate);
}

void vm_migrate_parked(struct vm *vm)
{
	char why[512];
	int r = migrate_out(vm, vm->cfg.migrate, why, sizeof(why));

	if (r == 0) {
		vm->migrated = true;
		vm_set_state(vm, VM_STOPPING);
	} else if (r == -EAGAIN) {
		lv_warn("migration failed, the VM goes on here: %s", why);
		snprintf(vm->migrate_note, sizeof(vm->migrate_note), "%s", why);
		vm_set_state(vm, VM_RUNNING);
	} else {
		vm_fail(vm, "migration: %s", why);
	}
}

void vm_fail(struct vm *vm, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&vm->lock);
	if (!vm->report.error[0]) {
		va_start(ap, fmt);
		vsnprintf(vm->report.error, sizeof(vm->report.error), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&vm->lock);
	vm_set_state(vm, VM_STOPPING);
}

void vm_cond_deadline(uint64_t after_ns, struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_nsec += (long)(after_ns % 1000000000ull);
	ts->tv_sec += (time_t)(after_ns / 1000000000ull) + ts->tv_nsec / 1000000000L;
	ts->tv_nsec %= 1000000000L;
}

/* Waits for the VM to stop. With cfg.stall_ns, a guest that shows no
 * progress (no control message, no console line, no page brought in for it)
 * for that long while running is stopped with a message: a guest that waits
 * for ever (halted with interrupts off, or running on memory that is not its
 * own) must end in an error, not a hang, and with a report of every vCPU's
 * state (vcpu_thread). Pauses (a snapshot or migration being written) do not
 * count. */
static void wait_stopping(struct vm *vm)
{
	uint64_t stall = vm->cfg.stall_ns, pages = 0;

	atomic_store(&vm->progress_ns, lv_now_ns());
	pthread_mutex_lock(&vm->lock);
	while (atomic_load(&vm->state) != VM_STOPPING) {
		if (!stall) {
			pthread_cond_wait(&vm->cond, &vm->lock);
			continue;
		}
		uint64_t now;
		struct timespec ts;

		vm_cond_deadline(stall < 1000000000ull ? stall : 1000000000ull, &ts);
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
		now = lv_now_ns();
		if (atomic_load(&vm->state) != VM_RUNNING) {
			atomic_store(&vm->progress_ns, now);
			continue;
		}
		if (vm->pages_demanded) {
			uint64_t p = vm->pages_demanded(vm->mem_fill_ctx);

			if (p != pages)
				atomic_store(&vm->progress_ns, now);
			pages = p;
		}
		uint64_t idle = now - atomic_load(&vm->progress_ns);
		if (idle < stall)
			continue;
		pthread_mutex_unlock(&vm->lock);
		/* Before the stop: each vCPU says where it was once it is out. */
		atomic_store(&vm->stalled, true);
		vm_fail(vm,
		        "the guest made no progress for %.1f s (no control message, no console "
		        "line, no page faulted in; --stall-timeout %.1f s): stopped",
		        (double)idle / 1e9, (double)stall / 1e9);
		pthread_mutex_lock(&vm->lock);
	}
	pthread_mutex_unlock(&vm->lock);
}

int vm_run(struct vm *vm)
{
	struct sigaction sa = {.sa_handler = kick_handler};
	sigset_t kick;
	int r = 0;

	vm->kick_signal = SIGRTMIN;
	sigemptyset(&sa.sa_mask);
	if (sigaction(vm->kick_signal, &sa, NULL) < 0)
		return -errno;
	sigemptyset(&kick);
	sigaddset(&kick, vm->kick_signal);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		r = -pthread_create(&v->thread, NULL, vcpu_thread, v);
		if (r < 0) {
			vm_fail(vm, "cannot start vCPU %u's thread: %s", i, strerror(-r));
			break;
		}
		v->started = true;
	}
	wait_stopping(vm);
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		if (vm->vcpus[i].started)
			pthread_join(vm->vcpus[i].thread, NULL);
		vm->vcpus[i].started = false;
	}
	if (vm->lx)
		linux_console_flush(vm->lx);
	if (vm->report.error[0])
		return -EIO;
	return vm->report.done || vm->snapshot_taken || vm->migrated ? 0 : -EIO;
}
