/* Userfault exits (see userfault.h): the bitmap, and the vCPU side of the
 * sigbus backend, which resolves a missing page synchronously and completes
 * the access that exited. */
#include "userfault.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <inttypes.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/log.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "apf.h"
#include "vcpu.h"

#define BITS_PER_WORD (8 * sizeof(unsigned long))
#define PAGE_SHIFT    12
#define PAGE_MASK_4K  (~(uint64_t)4095)
#define PTE_P         (1ull << 0)
#define PTE_PS        (1ull << 7)
#define PTE_ADDR      0x000ffffffffff000ull
#define RETRIES       1000

const char *exit_backend_name(enum exit_backend b)
{
	static const char *const names[] = {"none", "native", "sigbus", "kick"};

	return names[b];
}

int uf_bitmap_create(struct uf_bitmap *bm, uint64_t nbits)
{
	memset(bm, 0, sizeof(*bm));
	bm->nbits = nbits;
	bm->bytes = (size_t)((nbits + BITS_PER_WORD - 1) / BITS_PER_WORD * sizeof(unsigned long));
	bm->bytes = (bm->bytes + 4095) & ~(size_t)4095;
	/* A memfd so that a handler process can map the same bitmap. */
	bm->memfd = memfd_create("lazyvm-userfault-bitmap", MFD_CLOEXEC);
	if (bm->memfd < 0)
		return -errno;
	if (ftruncate(bm->memfd, (off_t)bm->bytes) < 0)
		goto err;
	bm->bits = mmap(NULL, bm->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, bm->memfd, 0);
	if (bm->bits == MAP_FAILED)
		goto err;
	memset((void *)bm->bits, 0xff, bm->bytes);
	return 0;
err:;
	int r = -errno;
	close(bm->memfd);
	bm->memfd = -1;
	bm->bits = NULL;
	return r;
}

void uf_bitmap_destroy(struct uf_bitmap *bm)
{
	if (bm->bits)
		munmap((void *)bm->bits, bm->bytes);
	if (bm->memfd >= 0)
		close(bm->memfd);
	bm->bits = NULL;
	bm->memfd = -1;
}

/* Bits past the end read as clear: the range is checked before the word is
 * loaded (a guest-supplied gfn must not reach past the bitmap's memory). */
bool uf_bitmap_test(const struct uf_bitmap *bm, uint64_t bit)
{
	if (bit >= bm->nbits)
		return false;
	return (atomic_load_explicit(&bm->bits[bit / BITS_PER_WORD], memory_order_acquire) >>
	        (bit % BITS_PER_WORD)) &
	       1;
}

void uf_bitmap_clear(struct uf_bitmap *bm, uint64_t first, uint64_t n)
{
	for (uint64_t b = first; b < first + n && b < bm->nbits; b++)
		atomic_fetch_and_explicit(&bm->bits[b / BITS_PER_WORD],
		                          ~(1ul << (b % BITS_PER_WORD)), memory_order_release);
}

uint64_t uf_bitmap_count(const struct uf_bitmap *bm)
{
	uint64_t n = 0;

	for (uint64_t b = 0; b < bm->nbits; b++)
		n += uf_bitmap_test(bm, b);
	return n;
}

int userfault_resolve_gpa(struct vm *vm, unsigned slot, uint64_t gpa)
{
	struct userfault *uf = vm->uf;
	uint64_t gfn = gpa >> PAGE_SHIFT;
	struct engine_run run;
	uint8_t *host;
	int r, tries = 0;

	if (gfn >= uf->bm.nbits || !uf_bitmap_test(&uf->bm, gfn))
		return 0;
	host = guest_mem_ptr(&vm->mem, gpa & PAGE_MASK_4K, 4096);
	if (!host)
		return 0;
	do
		r = engine_resolve(uf->eng, slot, (uint64_t)(uintptr_t)host, &run);
	while (r == -EAGAIN && ++tries < RETRIES);
	if (r < 0) {
		vm_fail(vm, "resolver %u: fetching guest page 0x%" PRIx64 ": %s", slot,
		        gpa & PAGE_MASK_4K, r == -EIO ? engine_error(uf->eng) : strerror(-r));
		return r;
	}
	/* The run may start before or after this page within its slot; the
	 * bits follow the host addresses one for one. */
	if (run.npages)
		uf_bitmap_clear(&uf->bm, gfn + (run.addr - (uint64_t)(uintptr_t)host) / 4096,
		                run.npages);
	else
		uf_bitmap_clear(&uf->bm, gfn, 1);
	return 1;
}

static int resolve_gpa(struct vcpu *v, uint64_t gpa)
{
	return userfault_resolve_gpa(v->vm, v->index, gpa);
}

static int userfault_mmio_exit_locked(struct vcpu *v)
{
	struct vm *vm = v->vm;
	struct kvm_run *run = v->run;
	uint64_t gpa = run->mmio.phys_addr, t0 = lv_now_ns();
	uint32_t len = run->mmio.len;
	int a, b;

	if (!vm->uf || len == 0 || len > sizeof(run->mmio.data) ||
	    !guest_mem_ptr(&vm->mem, gpa, len))
		return 0;
	/* A slow page the guest can wait for elsewhere: an async page fault. */
	uint64_t missing = uf_bitmap_test(&vm->uf->bm, gpa >> PAGE_SHIFT) ? gpa
	                   : uf_bitmap_test(&vm->uf->bm, (gpa + len - 1) >> PAGE_SHIFT)
	                       ? gpa + len - 1
	                       : UINT64_MAX;
	if (missing != UINT64_MAX) {
		int r = apf_try_async(v, missing);
		if (r) {
			apf_account(v, r > 0, lv_now_ns() - t0);
			return r > 0 ? 1 : -1;
		}
	}
	a = resolve_gpa(v, gpa);
	b = a < 0 ? a : resolve_gpa(v, gpa + len - 1); /* an access may straddle two pages */
	if (a < 0 || b < 0)
		return -1;
	if (!a && !b)
		atomic_fetch_add(&vm->uf->exits_spurious, 1); /* another vCPU got there first */
	/* Complete the access exactly: a read gets its bytes; a write has retired
	 * (RIP is past it) and is applied here. */
	uint8_t *p = guest_mem_ptr(&vm->mem, gpa, len);
	if (run->mmio.is_write)
		memcpy(p, run->mmio.data, len);
	else
		memcpy(run->mmio.data, p, len);
	atomic_fetch_add(&vm->uf->exits_data, 1);
	atomic_fetch_add(&vm->uf->resolve_ns, lv_now_ns() - t0);
	if (a || b)
		apf_account(v, false, lv_now_ns() - t0);
	return 1;
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

int userfault_translate(struct vcpu *v, uint64_t cr3, uint64_t va, uint64_t *gpa)
{
	int fetched = 0;

	return walk(v, cr3, va, gpa, &fetched);
}

static int userfault_internal_exit_locked(struct vcpu *v)
{
	struct vm *vm = v->vm;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint64_t t0 = lv_now_ns();
	int fetched = 0;

	if (!vm->uf || v->run->internal.suberror != KVM_INTERNAL_ERROR_EMULATION)
		return 0;
	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return 0;
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
			return -1;
		r = resolve_gpa(v, gpa);
		if (r < 0)
			return -1;
		fetched += r;
	}
	if (!fetched)
		return 0; /* nothing was missing: a genuine emulation failure */
	atomic_fetch_add(&vm->uf->exits_fetch, 1);
	atomic_fetch_add(&vm->uf->resolve_ns, lv_now_ns() - t0);
	return 1;
}

/* --- the kick backend --- */

void userfault_vcpu_started(struct vcpu *v)
{
	if (v->vm->uf && v->vm->uf->backend == EXIT_BACKEND_KICK)
		atomic_store(&v->vm->uf->tid[v->index], (int)gettid());
}

/* The guest-physical address of a host address inside guest RAM, or UF_NO_GPA. */
static uint64_t host_to_gpa(struct vm *vm, uint64_t host)
{
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		uint64_t base = (uint64_t)(uintptr_t)s->host;

		if (host >= base && host - base < s->size)
			return s->gpa + (host - base);
	}
	return UF_NO_GPA;
}

static void *kick_intake(void *arg)
{
	struct userfault *uf = arg;
	struct vm *vm = uf->vm;
	unsigned own_slot = vm->nvcpus + APF_IO_WORKERS; /* faults of non-vCPU threads */
	struct uffd_msg msgs[16];

	for (;;) {
		struct pollfd p[2] = {{.fd = uf->kick_uffd, .events = POLLIN},
		                      {.fd = uf->kick_stop_efd, .events = POLLIN}};

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		int n = uffd_read_events(uf->kick_uffd, msgs, 16);
		for (int i = 0; i < n; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			uint64_t gpa = host_to_gpa(vm, msgs[i].arg.pagefault.address);
			int tid = (int)msgs[i].arg.pagefault.feat.ptid;
			unsigned v;

			if (gpa == UF_NO_GPA)
				continue;
			if (!uf_bitmap_test(&uf->bm, gpa >> PAGE_SHIFT)) {
				/* Already in (a stale message): make sure nobody waits. */
				uffd_wake(uf->kick_uffd,
				          msgs[i].arg.pagefault.address & PAGE_MASK_4K, 4096);
				continue;
			}
			for (v = 0; v < vm->nvcpus && atomic_load(&uf->tid[v]) != tid; v++)
				;
			/* Only a vCPU inside KVM_RUN is kicked: a signal cannot get a thread
			 * out of its own page fault (the VMM reading guest memory), and
			 * serving a fault here is always correct. */
			if (v == vm->nvcpus || !atomic_load(&vm->vcpus[v].in_run)) {
				lv_debug(
				    "kick intake: fault at gpa 0x%llx from tid %d (%s) served here",
				    (unsigned long long)gpa, tid,
				    v == vm->nvcpus ? "not a vCPU" : "vCPU outside KVM_RUN");
				/* Not a guest access in KVM_RUN (e.g. KVM's async PF worker or
				 * the VMM itself): serve it here. */
				userfault_resolve_gpa(vm, own_slot, gpa);
				continue;
			}
			atomic_store(&uf->kick_gpa[v], gpa);
			vcpu_kick(&vm->vcpus[v]);
		}
	}
	return NULL;
}

int userfault_kick_start(struct userfault *uf, struct vm *vm)
{
	uf->vm = vm;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		atomic_store(&uf->kick_gpa[i], UF_NO_GPA);
	uf->kick_stop_efd = eventfd(0, EFD_CLOEXEC);
	if (uf->kick_stop_efd < 0)
		return -errno;
	int r = -pthread_create(&uf->kick_thread, NULL, kick_intake, uf);
	if (r == 0)
		uf->kick_started = true;
	return r;
}

void userfault_kick_stop(struct userfault *uf)
{
	uint64_t one = 1;

	if (!uf->kick_started)
		return;
	if (write(uf->kick_stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* a fresh eventfd cannot be full */
	pthread_join(uf->kick_thread, NULL);
	uf->kick_started = false;
	close(uf->kick_stop_efd);
}

/* A fault of which nothing has retired (after a kick, or a native exit, where
 * KVM checks the bitmap before touching the page): an async page fault needs
 * no undoing, else the page is resolved now and *count counts it. 0 to
 * re-enter, < 0 after vm_fail. */
static int resolve_unretired(struct vcpu *v, uint64_t gpa, _Atomic uint64_t *count)
{
	uint64_t t0 = lv_now_ns();
	int r = apf_try_async_kicked(v, gpa);

	if (r) {
		apf_account(v, r > 0, lv_now_ns() - t0);
		return r > 0 ? 0 : -1;
	}
	r = resolve_gpa(v, gpa);
	if (r < 0)
		return -1;
	apf_account(v, false, lv_now_ns() - t0);
	atomic_fetch_add(count, 1);
	atomic_fetch_add(&v->vm->uf->resolve_ns, lv_now_ns() - t0);
	return 0;
}

int userfault_after_kick(struct vcpu *v)
{
	struct userfault *uf = v->vm->uf;
	uint64_t gpa;

	if (!uf || uf->backend != EXIT_BACKEND_KICK)
		return 0;
	gpa = atomic_exchange(&uf->kick_gpa[v->index], UF_NO_GPA);
	if (gpa == UF_NO_GPA)
		return 0;
	return resolve_unretired(v, gpa, &uf->exits_kick);
}

int userfault_native_enable(struct userfault *uf, struct vm *vm)
{
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		uint64_t first = s->gpa >> PAGE_SHIFT;
		struct kvm_userspace_memory_region2 reg = {
		    .slot = i,
		    .flags = KVM_MEM_USERFAULT,
		    .guest_phys_addr = s->gpa,
		    .memory_size = s->size,
		    .userspace_addr = (uint64_t)(uintptr_t)s->host,
		    .userfault_bitmap = (uint64_t)(uintptr_t)&uf->bm.bits[first / BITS_PER_WORD]};

		/* KVM reads the slot's bits from its first gfn on, a word at a time:
		 * the slot must start on a word of the VM-wide bitmap. */
		if (first % BITS_PER_WORD || first + s->size / 4096 > uf->bm.nbits) {
			lv_err("native userfault: slot %u at gpa 0x%" PRIx64
			       " does not start on a bitmap word or ends past the bitmap",
			       i, s->gpa);
			return -EINVAL;
		}
		/* A flags-only change of the existing slot: KVM zaps what it had
		 * mapped (the VMM's own setup may have faulted pages in). */
		if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION2, &reg) < 0) {
			int r = -errno;

			lv_err("native userfault: KVM_SET_USER_MEMORY_REGION2 slot %u [0x%" PRIx64
			       ", +0x%" PRIx64 ") with KVM_MEM_USERFAULT: %s",
			       i, s->gpa, s->size, strerror(errno));
			return r;
		}
	}
	return 0;
}

int userfault_memory_fault_exit(struct vcpu *v)
{
	struct userfault *uf = v->vm->uf;
	const struct lv_kvm_memory_fault *mf = kvm_run_memory_fault(v->run);

	if (!uf || uf->backend != EXIT_BACKEND_NATIVE ||
	    !(mf->flags & KVM_MEMORY_EXIT_FLAG_USERFAULT)) {
		vm_fail(v->vm,
		        "vCPU %u: KVM_RUN: memory fault at gpa 0x%" PRIx64 " (+0x%" PRIx64
		        "), flags 0x%" PRIx64 ", not a userfault lazyvm asked for",
		        v->index, (uint64_t)mf->gpa, (uint64_t)mf->size, (uint64_t)mf->flags);
		return -1;
	}
	return resolve_unretired(v, mf->gpa, &uf->exits_data) < 0 ? -1 : 1;
}

int userfault_mmio_exit(struct vcpu *v)
{
	int r;

	if (!v->vm->uf)
		return 0;
	if (!vm_mem_enter(v->vm))
		return -1; /* guest RAM revoked: the VM is stopping */
	r = userfault_mmio_exit_locked(v);
	vm_mem_exit(v->vm);
	return r;
}

int userfault_internal_exit(struct vcpu *v)
{
	int r;

	if (!v->vm->uf)
		return 0;
	if (!vm_mem_enter(v->vm))
		return -1; /* guest RAM revoked: the VM is stopping */
	r = userfault_internal_exit_locked(v);
	vm_mem_exit(v->vm);
	return r;
}
