/* A vCPU thread: KVM_RUN, an explicit switch on every exit reason, the two
 * devices of the guest ABI, and parking for a snapshot. */
#include "vcpu.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/guest_compute.h"
#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "apf.h"
#include "exit.h"

static uint64_t vcpu_rip(struct vcpu *v)
{
	struct kvm_regs regs;

	return ioctl(v->fd, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
}

static void console_flush(struct vcpu *v)
{
	struct vm *vm = v->vm;
	FILE *out = vm->cfg.quiet_console ? stderr : stdout;

	if (!v->serial_len)
		return;
	atomic_store_explicit(&vm->progress_ns, lv_now_ns(), memory_order_relaxed);
	pthread_mutex_lock(&vm->console_lock);
	fwrite(v->serial_line, 1, v->serial_len, out);
	if (v->serial_line[v->serial_len - 1] != '\n')
		fputc('\n', out);
	fflush(out);
	pthread_mutex_unlock(&vm->console_lock);
	v->serial_len = 0;
}

static void serial_out(struct vcpu *v, uint8_t c)
{
	v->serial_line[v->serial_len++] = (char)c;
	if (c == '\n' || v->serial_len == sizeof(v->serial_line))
		console_flush(v);
}

/* The snapshot point: park every other vCPU, save, stop. */
int vcpu_snapshot_point(struct vcpu *v)
{
	struct vm *vm = v->vm;
	char why[512];
	int r;

	if (!vm->cfg.snapshot_dir && !vm->cfg.migrate) {
		vm_fail(vm,
		        "vCPU %u: the guest asked for a snapshot, but no --snapshot-dir was given",
		        v->index);
		return -EPROTO;
	}
	vm_set_state(vm, VM_PAUSING);
	r = vcpu_complete_exit(v);
	if (r < 0) {
		vm_fail(vm, "vCPU %u: completing the snapshot request: %s", v->index, strerror(-r));
		return r;
	}
	pthread_mutex_lock(&vm->lock);
	while (vm->paused < vm->nvcpus - 1 && atomic_load(&vm->state) == VM_PAUSING)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	if (atomic_load(&vm->state) != VM_PAUSING)
		return -ECANCELED;
	if (vm->cfg.migrate) {
		vm_migrate_parked(vm);
		return 0;
	}
	uint64_t t0 = lv_now_ns();
	r = snapshot_save(vm, why, sizeof(why));
	vm->report.snapshot_ns = lv_now_ns() - t0;
	if (r < 0) {
		vm_fail(vm, "writing the snapshot to %s: %s", vm->cfg.snapshot_dir, why);
		return r;
	}
	vm->snapshot_taken = true;
	vm_set_state(vm, VM_STOPPING);
	return 0;
}

/* A compute task's value is recomputed here: the guest cannot vouch for its
 * own registers having survived a snapshot and restore. */
static bool compute_result_ok(struct vcpu *v, const struct guest_msg *msg)
{
	const struct guest_boot_info *bi;
	uint64_t want;

	if (strncmp(msg->text, "compute:", 8) != 0)
		return true;
	if (vm_mem_get(v->vm, v->index, GUEST_BOOT_INFO_GPA, sizeof(*bi), (void **)&bi) < 0 ||
	    msg->arg[3] > (1ull << 32))
		return false;
	want = guest_compute(guest_compute_x0(bi->seed, (uint32_t)msg->arg[0]), msg->arg[3]);
	if (want == msg->arg[2])
		return true;
	lv_err("guest: %s: reported 0x%" PRIx64 ", but %" PRIu64 " steps from seed %" PRIu64
	       " give 0x%" PRIx64,
	       msg->text, msg->arg[2], msg->arg[3], bi->seed, want);
	return false;
}

static int handle_msg_locked(struct vcpu *v, uint32_t gpa);

/* Guest RAM may have been revoked (a failed lazy restore): then the message
 * cannot be read and the VM is stopping anyway. */
static int handle_msg(struct vcpu *v, uint32_t gpa)
{
	int r;

	atomic_store_explicit(&v->vm->progress_ns, lv_now_ns(), memory_order_relaxed);
	if (!vm_mem_enter(v->vm))
		return -ECANCELED;
	r = handle_msg_locked(v, gpa);
	vm_mem_exit(v->vm);
	return r;
}

static int handle_msg_locked(struct vcpu *v, uint32_t gpa)
{
	struct vm *vm = v->vm;
	const struct guest_msg *p;
	struct guest_msg msg;
	int r = vm_mem_get(vm, v->index, gpa, sizeof(*p), (void **)&p);

	if (r == -EFAULT) {
		vm_fail(vm, "vCPU %u: control message at gpa 0x%x is not inside guest RAM",
		        v->index, gpa);
		return -EFAULT;
	}
	if (r < 0)
		return r; /* its page cannot come: the VM has been failed with the reason */
	/* Copy first: the guest may change the message while we look at it. */
	memcpy(&msg, p, sizeof(msg));
	msg.text[sizeof(msg.text) - 1] = '\0';
	if (msg.magic != GUEST_MSG_MAGIC || msg.version != GUEST_ABI_VERSION) {
		vm_fail(vm,
		        "vCPU %u: bad control message at gpa 0x%x (magic 0x%x, version %u; want "
		        "0x%x, %u)",
		        v->index, gpa, msg.magic, msg.version, GUEST_MSG_MAGIC, GUEST_ABI_VERSION);
		return -EPROTO;
	}
	switch (msg.type) {
	case GUEST_MSG_BOOTED:
		lv_debug("guest: vCPU %u booted (%s)", v->index, msg.text);
		vm->report.booted = true;
		return 0;
	case GUEST_MSG_LOG: lv_info("guest: vCPU %u: %s", v->index, msg.text); return 0;
	case GUEST_MSG_PREPARED:
		vm->report.prepared = true;
		vm->report.t_resume_ns = lv_now_ns();
		return 0;
	case GUEST_MSG_SNAPSHOT: vm->report.prepared = true; return vcpu_snapshot_point(v);
	case GUEST_MSG_RESULT:
		if (msg.status == 0 && !compute_result_ok(v, &msg))
			msg.status = 1;
		pthread_mutex_lock(&vm->lock);
		vm->report.results++;
		if (msg.status != 0)
			vm->report.results_failed++;
		pthread_mutex_unlock(&vm->lock);
		lv_info("guest: %s: %s (%" PRIu64 " bytes verified, value 0x%" PRIx64 ")", msg.text,
		        msg.status == 0 ? "pass" : "FAIL", msg.arg[1], msg.arg[2]);
		return 0;
	case GUEST_MSG_DONE:
		vm->report.guest_apf_not_present = msg.arg[2];
		vm->report.guest_apf_ready = msg.arg[3];
		vm->report.done = true;
		vm->report.done_status = msg.status;
		vm->report.t_done_ns = lv_now_ns();
		vm_set_state(vm, VM_STOPPING);
		return 0;
	case GUEST_MSG_PANIC:
		vm->report.panicked = true;
		vm_fail(vm,
		        "guest exception on vCPU %u: vector %" PRIu64 ", error code 0x%" PRIx64
		        ", RIP 0x%" PRIx64 ", CR2 0x%" PRIx64 "%s%s",
		        v->index, msg.arg[0], msg.arg[1], msg.arg[2], msg.arg[3],
		        msg.text[0] ? ": " : "", msg.text);
		return -EFAULT;
	default:
		vm_fail(vm, "vCPU %u: unknown control message type %u", v->index, msg.type);
		return -EPROTO;
	}
}

/* The bundled guest's serial port: bytes to the console, line status
 * "transmitter empty", everything else 0. */
static int bundled_serial_io(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data,
                             unsigned size)
{
	(void)ctx;
	if (size != 1) {
		vm_fail(v->vm, "vCPU %u: %u-byte access to serial port 0x%x at RIP 0x%" PRIx64,
		        v->index, size, port, vcpu_rip(v));
		return -EPROTO;
	}
	if (out && port == GUEST_PORT_SERIAL)
		serial_out(v, data[0]);
	else if (!out)
		data[0] = port == GUEST_PORT_SERIAL + 5 ? 0x60 : 0;
	return 0;
}

/* The bundled guest's control port: a 32-bit write of a message's gpa. */
static int bundled_ctrl_io(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data,
                           unsigned size)
{
	uint32_t gpa;

	(void)ctx;
	if (!out || size != 4 || port != GUEST_PORT_CTRL) {
		vm_fail(v->vm,
		        "vCPU %u: unhandled I/O: %s port 0x%x, size %u at RIP 0x%" PRIx64
		        " (the control port takes 32-bit writes)",
		        v->index, out ? "out to" : "in from", port, size, vcpu_rip(v));
		return -EPROTO;
	}
	memcpy(&gpa, data, sizeof(gpa));
	return handle_msg(v, gpa);
}

int vcpu_bundled_pio(struct vm *vm)
{
	int r;

	pio_init(&vm->pio, true);
	if ((r = pio_add(&vm->pio, GUEST_PORT_SERIAL, GUEST_PORT_SERIAL + 7, "serial",
	                 bundled_serial_io, NULL)) < 0)
		return r;
	return pio_add(&vm->pio, GUEST_PORT_CTRL, GUEST_PORT_CTRL + 3, "control", bundled_ctrl_io,
	               NULL);
}

static int handle_io(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool out = run->io.direction == KVM_EXIT_IO_OUT;
	int r = pio_dispatch(&v->vm->pio, v, run->io.port, out, run->io.size, run->io.count, data);

	if (r == -ENOENT)
		vm_fail(v->vm,
		        "vCPU %u: unhandled I/O: %s port 0x%x, size %u, count %u at RIP 0x%" PRIx64,
		        v->index, out ? "out to" : "in from", run->io.port, run->io.size,
		        run->io.count, vcpu_rip(v));
	return r;
}

static const char *exit_name(uint32_t reason)
{
	static const char *const names[] = {
	    [KVM_EXIT_UNKNOWN] = "UNKNOWN",
	    [KVM_EXIT_EXCEPTION] = "EXCEPTION",
	    [KVM_EXIT_IO] = "IO",
	    [KVM_EXIT_HYPERCALL] = "HYPERCALL",
	    [KVM_EXIT_DEBUG] = "DEBUG",
	    [KVM_EXIT_HLT] = "HLT",
	    [KVM_EXIT_MMIO] = "MMIO",
	    [KVM_EXIT_IRQ_WINDOW_OPEN] = "IRQ_WINDOW_OPEN",
	    [KVM_EXIT_SHUTDOWN] = "SHUTDOWN",
	    [KVM_EXIT_FAIL_ENTRY] = "FAIL_ENTRY",
	    [KVM_EXIT_INTR] = "INTR",
	    [KVM_EXIT_SET_TPR] = "SET_TPR",
	    [KVM_EXIT_TPR_ACCESS] = "TPR_ACCESS",
	    [KVM_EXIT_NMI] = "NMI",
	    [KVM_EXIT_INTERNAL_ERROR] = "INTERNAL_ERROR",
	    [KVM_EXIT_SYSTEM_EVENT] = "SYSTEM_EVENT",
	    [KVM_EXIT_X86_RDMSR] = "X86_RDMSR",
	    [KVM_EXIT_X86_WRMSR] = "X86_WRMSR",
	};

	return reason < sizeof(names) / sizeof(names[0]) && names[reason] ? names[reason] : "?";
}

/* One exit: 0 to re-enter, < 0 to stop this vCPU (the VM was told why). */
static int handle_exit(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	struct vm *vm = v->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO: return handle_io(v);
	case KVM_EXIT_INTR: return 0;
	case KVM_EXIT_MMIO: {
		int r = exit_on_exit(v);
		if (r)
			return r > 0 ? 0 : -EFAULT;
		vm_fail(
		    vm,
		    "vCPU %u: guest %s %u bytes at gpa 0x%llx, which is not RAM, at RIP 0x%" PRIx64,
		    v->index, run->mmio.is_write ? "wrote" : "read", run->mmio.len,
		    (unsigned long long)run->mmio.phys_addr, vcpu_rip(v));
		return -EFAULT;
	}
	case KVM_EXIT_SHUTDOWN:
		vm_fail(vm, "vCPU %u: shutdown (triple fault) at RIP 0x%" PRIx64, v->index,
		        vcpu_rip(v));
		return -EFAULT;
	case KVM_EXIT_FAIL_ENTRY:
		vm_fail(vm, "vCPU %u: VM entry failed, hardware reason 0x%llx", v->index,
		        (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return -EFAULT;
	case KVM_EXIT_INTERNAL_ERROR: {
		int r = exit_on_exit(v);
		if (r)
			return r > 0 ? 0 : -EFAULT;
		vm_fail(vm, "vCPU %u: KVM internal error, suberror %u, at RIP 0x%" PRIx64, v->index,
		        run->internal.suberror, vcpu_rip(v));
		return -EFAULT;
	}
	case KVM_EXIT_SYSTEM_EVENT:
		vm_fail(vm, "vCPU %u: system event %u (shutdown, reset or crash)", v->index,
		        run->system_event.type);
		return -EFAULT;
	case KVM_EXIT_X86_RDMSR:
	case KVM_EXIT_X86_WRMSR:
		if (apf_msr_exit(v))
			return 0;
		vm_fail(vm,
		        "vCPU %u: unexpected userspace MSR %s exit for MSR 0x%x at RIP 0x%" PRIx64,
		        v->index, run->exit_reason == KVM_EXIT_X86_WRMSR ? "write" : "read",
		        run->msr.index, vcpu_rip(v));
		return -EPROTO;
	case KVM_EXIT_HLT:
		/* The in-kernel LAPIC handles HLT; one reaching us means it did not. */
		vm_fail(vm, "vCPU %u: unexpected HLT exit at RIP 0x%" PRIx64, v->index,
		        vcpu_rip(v));
		return -EFAULT;
	default:
		vm_fail(vm, "vCPU %u: unhandled exit reason %u (%s) at RIP 0x%" PRIx64, v->index,
		        run->exit_reason, exit_name(run->exit_reason), vcpu_rip(v));
		return -EPROTO;
	}
}

/* Parks this vCPU for a snapshot until the VM runs again or stops. */
static void park(struct vcpu *v)
{
	struct vm *vm = v->vm;
	int r = vcpu_complete_exit(v);

	if (r < 0)
		vm_fail(vm, "vCPU %u: completing its last exit before a snapshot: %s", v->index,
		        strerror(-r));
	pthread_mutex_lock(&vm->lock);
	vm->paused++;
	pthread_cond_broadcast(&vm->cond);
	while (atomic_load(&vm->state) == VM_PAUSING)
		pthread_cond_wait(&vm->cond, &vm->lock);
	vm->paused--;
	pthread_mutex_unlock(&vm->lock);
}

/* A memory fault exit no exit backend claimed. */
static void memory_fault_not_ours(struct vcpu *v)
{
	const struct lv_kvm_memory_fault *mf = kvm_run_memory_fault(v->run);

	vm_fail(v->vm,
	        "vCPU %u: KVM_RUN: memory fault at gpa 0x%" PRIx64 " (+0x%" PRIx64
	        "), flags 0x%" PRIx64 ", not a userfault lazyvm asked for",
	        v->index, (uint64_t)mf->gpa, (uint64_t)mf->size, (uint64_t)mf->flags);
}

void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;

	atomic_store(&v->tid, (int)gettid());
	if (vm->blocktime)
		blocktime_register_vcpu(vm->blocktime, v->tid);
	exit_vcpu_started(v);
	for (;;) {
		int state = atomic_load(&vm->state);

		if (state == VM_STOPPING)
			break;
		if (state == VM_PAUSING) {
			park(v);
			continue;
		}
		if (v->index == 0 && !vm->report.t_first_entry_ns)
			vm->report.t_first_entry_ns = lv_now_ns();
		apf_entering(v);
		atomic_store(&v->in_run, true);
		int rr = ioctl(v->fd, KVM_RUN, 0);
		atomic_store(&v->in_run, false);
		if (rr < 0) {
			/* The native backend's userfault comes back as -EFAULT
			 * with the exit filled in, not as a plain exit. */
			if (errno == EFAULT && v->run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
				int r = exit_on_exit(v);
				if (r > 0)
					continue;
				if (r == 0)
					memory_fault_not_ours(v);
				break;
			}
			if (errno == EINTR || errno == EAGAIN) {
				v->run->immediate_exit = 0;
				if (exit_after_kick(v) < 0)
					break;
				continue;
			}
			vm_fail(vm, "vCPU %u: KVM_RUN: %s", v->index, strerror(errno));
			break;
		}
		v->exits++;
		if (handle_exit(v) < 0)
			break;
	}
	console_flush(v);
	if (atomic_load(&vm->stalled))
		arch_vcpu_report(v);
	return NULL;
}
