/* The exit layer (exit.h): the backends' table and the dispatch from the vCPU
 * loop, and the exit handling they share: completing or undoing an access
 * that has retired (sigbus's MMIO exits), fetching what an emulator could not
 * (internal errors), resolving a fault of which nothing retired, walking the
 * guest's page tables. */
#include "exit_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "apf.h"
#include "x86_64/decode.h"

#define PAGE_SHIFT 12
#define PTE_P      (1ull << 0)
#define PTE_PS     (1ull << 7)
#define PTE_ADDR   0x000ffffffffff000ull

const char *exit_backend_name(enum exit_backend b)
{
	static const char *const names[] = {"none", "native", "sigbus", "kick"};

	return names[b];
}

const struct exit_backend_ops *exit_backend_ops(enum exit_backend b)
{
	switch (b) {
	case EXIT_BACKEND_NATIVE: return &exit_native_ops;
	case EXIT_BACKEND_SIGBUS: return &exit_sigbus_ops;
	case EXIT_BACKEND_KICK: return &exit_kick_ops;
	default: return NULL;
	}
}

int exit_init(struct userfault *uf, enum exit_backend b, uint64_t nbits)
{
	memset(uf, 0, sizeof(*uf));
	uf->uffd = -1;
	uf->ops = exit_backend_ops(b);
	if (!uf->ops)
		return -EINVAL;
	return uf_bitmap_create(&uf->pages.bm, nbits);
}

int exit_set_uffd(struct userfault *uf, int uffd)
{
	if (!uf->ops->wants_uffd)
		return 0;
	uf->uffd = fcntl(uffd, F_DUPFD_CLOEXEC, 0);
	return uf->uffd < 0 ? -errno : 0;
}

int exit_attach(struct userfault *uf, struct vm *vm)
{
	uf->vm = vm;
	vm->uf = uf;
	return uf->ops->attach ? uf->ops->attach(uf, vm) : 0;
}

void exit_detach(struct userfault *uf)
{
	if (uf->ops && uf->ops->detach)
		uf->ops->detach(uf);
}

void exit_close_uffd(struct userfault *uf)
{
	if (uf->uffd >= 0)
		close(uf->uffd);
	uf->uffd = -1;
}

void exit_destroy(struct userfault *uf)
{
	if (!uf->ops)
		return;
	exit_detach(uf);
	if (uf->ops->destroy)
		uf->ops->destroy(uf);
	exit_close_uffd(uf);
	uf_bitmap_destroy(&uf->pages.bm);
	uf->ops = NULL;
}

void exit_vcpu_started(struct vcpu *v)
{
	struct userfault *uf = v->vm->uf;

	if (uf && uf->ops->vcpu_started)
		uf->ops->vcpu_started(uf, v);
}

enum exit_verdict exit_on_exit(struct vcpu *v)
{
	struct userfault *uf = v->vm->uf;

	return uf ? uf->ops->on_exit(uf, v) : EXIT_NOT_MINE;
}

int exit_after_kick(struct vcpu *v)
{
	struct userfault *uf = v->vm->uf;

	return uf && uf->ops->after_kick ? uf->ops->after_kick(uf, v) : 0;
}

static int resolve_gpa(struct vcpu *v, uint64_t gpa)
{
	return uf_pages_resolve(&v->vm->uf->pages, v->vm, v->index, gpa);
}

/* Translates a guest virtual address through the guest's own page tables,
 * fetching every missing table page on the way. Returns 0 with *gpa, -ENOENT
 * when the guest has no mapping (its own #PF, not ours), < 0 after vm_fail. */
static int walk(struct vcpu *v, uint64_t cr3, uint64_t va, uint64_t *gpa, int *fetched)
{
	uint64_t table = cr3 & PTE_ADDR;

	for (int level = 4; level >= 1; level--) {
		unsigned shift = PAGE_SHIFT + 9 * (unsigned)(level - 1);
		uint64_t idx = (va >> shift) & 511, entry;
		int r = resolve_gpa(v, table);
		const uint64_t *e;

		if (r < 0)
			return r;
		*fetched += r;
		e = guest_mem_ptr(&v->vm->mem, table + idx * 8, 8);
		if (!e)
			return -ENOENT;
		entry = *e;
		if (!(entry & PTE_P))
			return -ENOENT;
		if ((level == 2 || level == 3) && (entry & PTE_PS)) {
			uint64_t size = 1ull << shift;
			*gpa = ((entry & PTE_ADDR) & ~(size - 1)) | (va & (size - 1));
			return 0;
		}
		table = entry & PTE_ADDR;
	}
	*gpa = table | (va & 4095);
	return 0;
}

static int translate(struct vcpu *v, uint64_t cr3, uint64_t va, uint64_t *gpa)
{
	int fetched = 0;

	return walk(v, cr3, va, gpa, &fetched);
}

/* Up to 15 instruction bytes at the guest's RIP (through its page tables). */
static size_t fetch_insn(struct vcpu *v, const struct kvm_regs *regs, const struct kvm_sregs *sregs,
                         uint8_t *out)
{
	size_t got = 0;

	while (got < 15) {
		uint64_t va = sregs->cs.base + regs->rip + got, gpa;
		size_t chunk = 4096 - (va & 4095);
		const uint8_t *p;

		if (translate(v, sregs->cr3, va, &gpa) < 0)
			break;
		if (chunk > 15 - got)
			chunk = 15 - got;
		if (vm_mem_get(v->vm, v->index, gpa, chunk, (void **)&p) < 0)
			break;
		memcpy(out + got, p, chunk);
		got += chunk;
	}
	return got;
}

/* A read that retired (KVM_EXIT_MMIO: the bytes are ours to give) made an
 * async page fault: when the policy and the guest allow and the instruction
 * changes only registers and flags, it is completed with placeholder bytes and
 * its registers put back (undone exactly), then "page not present" goes in.
 * 1 async, 0 resolve it synchronously, -1 after vm_fail. */
static int try_async_retired(struct vcpu *v, uint64_t gpa)
{
	struct kvm_run *run = v->run;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint8_t insn[15];
	uint32_t token;
	int r;

	if (run->mmio.is_write || !(token = apf_begin(v, &regs, &sregs)))
		return 0;
	size_t n = fetch_insn(v, &regs, &sregs, insn);
	if (!insn_undoable_read(insn, n)) {
		apf_abort(v, token, true);
		return 0;
	}
	memset(run->mmio.data, 0, sizeof(run->mmio.data));
	r = vcpu_complete_exit(v);
	if (r < 0 || ioctl(v->fd, KVM_SET_REGS, &regs) < 0) {
		apf_abort(v, token, false);
		vm_fail(v->vm, "vCPU %u: undoing a read for an async page fault: %s", v->index,
		        strerror(r < 0 ? -r : errno));
		return -1;
	}
	return apf_commit(v, gpa, token);
}

static enum exit_verdict mmio_exit_locked(struct userfault *uf, struct vcpu *v)
{
	struct vm *vm = v->vm;
	struct kvm_run *run = v->run;
	uint64_t gpa = run->mmio.phys_addr, t0 = lv_now_ns();
	uint32_t len = run->mmio.len;
	int a, b;

	if (len == 0 || len > sizeof(run->mmio.data) || !guest_mem_ptr(&vm->mem, gpa, len))
		return 0;
	/* A slow page the guest can wait for elsewhere: an async page fault. */
	uint64_t missing = uf_bitmap_test(&uf->pages.bm, gpa >> PAGE_SHIFT) ? gpa
	                   : uf_bitmap_test(&uf->pages.bm, (gpa + len - 1) >> PAGE_SHIFT)
	                       ? gpa + len - 1
	                       : UINT64_MAX;
	if (missing != UINT64_MAX) {
		int r = try_async_retired(v, missing);
		if (r) {
			apf_account(v, r > 0, lv_now_ns() - t0);
			return r > 0 ? EXIT_ASYNC : EXIT_FAILED;
		}
	}
	a = resolve_gpa(v, gpa);
	b = a < 0 ? a : resolve_gpa(v, gpa + len - 1); /* an access may straddle two pages */
	if (a < 0 || b < 0)
		return EXIT_FAILED;
	if (!a && !b)
		atomic_fetch_add(&uf->exits_spurious, 1); /* another vCPU got there first */
	/* Complete the access exactly: a read gets its bytes; a write has retired
	 * (RIP is past it) and is applied here. */
	uint8_t *p = guest_mem_ptr(&vm->mem, gpa, len);
	if (run->mmio.is_write)
		memcpy(p, run->mmio.data, len);
	else
		memcpy(run->mmio.data, p, len);
	atomic_fetch_add(&uf->exits_data, 1);
	atomic_fetch_add(&uf->resolve_ns, lv_now_ns() - t0);
	if (a || b)
		apf_account(v, false, lv_now_ns() - t0);
	return EXIT_RESOLVED;
}

static enum exit_verdict internal_exit_locked(struct userfault *uf, struct vcpu *v)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint64_t t0 = lv_now_ns();
	int fetched = 0;

	if (v->run->internal.suberror != KVM_INTERNAL_ERROR_EMULATION)
		return EXIT_NOT_MINE;
	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return EXIT_NOT_MINE;
	/* The emulator could not fetch (or walk to) the instruction: fetch the
	 * pages under it (an instruction may straddle two) and the top of the
	 * stack (an interrupt frame pushed on delivery), then run it again. */
	const uint64_t vas[] = {sregs.cs.base + regs.rip, sregs.cs.base + regs.rip + 15,
	                        regs.rsp - 8, regs.rsp - 64};
	for (size_t i = 0; i < sizeof(vas) / sizeof(vas[0]); i++) {
		uint64_t gpa;
		int r = walk(v, sregs.cr3, vas[i], &gpa, &fetched);

		if (r == -ENOENT)
			continue;
		if (r < 0)
			return EXIT_FAILED;
		r = resolve_gpa(v, gpa);
		if (r < 0)
			return EXIT_FAILED;
		fetched += r;
	}
	if (!fetched)
		return EXIT_NOT_MINE; /* nothing was missing: a genuine emulation failure */
	atomic_fetch_add(&uf->exits_fetch, 1);
	atomic_fetch_add(&uf->resolve_ns, lv_now_ns() - t0);
	return EXIT_RESOLVED;
}

/* A fault of which nothing has retired (after a kick, or a native exit, where
 * KVM checks the bitmap before touching the page): an async page fault needs
 * no undoing, else the page is resolved now and *count counts it (exit_backend.h). */
enum exit_verdict exit_unretired(struct vcpu *v, uint64_t gpa, _Atomic uint64_t *count)
{
	uint64_t t0 = lv_now_ns();
	int r = apf_try_unretired(v, gpa);

	if (r) {
		apf_account(v, r > 0, lv_now_ns() - t0);
		return r > 0 ? EXIT_ASYNC : EXIT_FAILED;
	}
	r = resolve_gpa(v, gpa);
	if (r < 0)
		return EXIT_FAILED;
	apf_account(v, false, lv_now_ns() - t0);
	atomic_fetch_add(count, 1);
	atomic_fetch_add(&v->vm->uf->resolve_ns, lv_now_ns() - t0);
	return EXIT_RESOLVED;
}

enum exit_verdict exit_retired(struct userfault *uf, struct vcpu *v)
{
	enum exit_verdict r;

	if (v->run->exit_reason != KVM_EXIT_MMIO && v->run->exit_reason != KVM_EXIT_INTERNAL_ERROR)
		return EXIT_NOT_MINE;
	if (!vm_mem_enter(v->vm))
		return EXIT_FAILED; /* guest RAM revoked: the VM is stopping */
	r = v->run->exit_reason == KVM_EXIT_MMIO ? mmio_exit_locked(uf, v)
	                                         : internal_exit_locked(uf, v);
	vm_mem_exit(v->vm);
	return r;
}
