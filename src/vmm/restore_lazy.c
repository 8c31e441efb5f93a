/* What a lazy restore adds to vmm_restore (restore.h): the fault engine on
 * the checked source and its watcher, userfault exits, async page faults,
 * zero pages, working sets (REAP), background prefetch's end, huge pages. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/compat.h"
#include "lazyvm/fdio.h"
#include "lazyvm/log.h"
#include "lazyvm/workset.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "restore.h"
#include "vcpu.h"
/* Pages the snapshot says are all zeros (SNAP_ZERO_PAGES, from a migration
 * source that looked) are never read: a fault on one installs a zero page. */
static int mark_zero_pages(struct restore *rs, struct guest_mem *m)
{
	uint64_t npages = m->size / SNAP_PAGE_SIZE, len;
	const uint64_t *zero = snap_find(&rs->rd, SNAP_ZERO_PAGES, 0, &len);

	if (!zero)
		return 0;
	if (len != (npages + 63) / 64 * sizeof(*zero))
		return restore_fail(rs, -EINVAL,
		                    "snapshot: zero-page map of %llu bytes for %llu pages",
		                    (unsigned long long)len, (unsigned long long)npages);
	for (uint64_t pg = 0; pg < npages;) {
		if (!(zero[pg / 64] >> (pg % 64) & 1)) {
			pg++;
			continue;
		}
		uint64_t end = pg + 1;
		while (end < npages && zero[end / 64] >> (end % 64) & 1)
			end++;
		/* The map is trusted only where the checksums agree: a data page
		 * marked zero would be installed as zeros without a read. */
		int bad = source_checked_verify_zero(rs->src, pg * SNAP_PAGE_SIZE,
		                                     (end - pg) * SNAP_PAGE_SIZE);
		if (bad < 0)
			return restore_fail(rs, bad,
			                    "snapshot: the zero-page map and the page checksums "
			                    "disagree (the page is named above); nothing was run");
		/* A run may cross slots: mark it slot by slot. */
		for (uint64_t p = pg; p < end;) {
			uint8_t *host = guest_mem_ptr(m, p * SNAP_PAGE_SIZE, SNAP_PAGE_SIZE);
			uint64_t n = 1;
			while (p + n < end &&
			       guest_mem_ptr(m, (p + n) * SNAP_PAGE_SIZE, SNAP_PAGE_SIZE) ==
			           host + n * SNAP_PAGE_SIZE)
				n++;
			int r = host ? engine_mark_zero(rs->eng, (uint64_t)(uintptr_t)host,
			                                n * SNAP_PAGE_SIZE)
			             : -EFAULT;
			if (r < 0)
				return restore_fail(rs, r, "marking zero pages at 0x%llx: %s",
				                    (unsigned long long)(p * SNAP_PAGE_SIZE),
				                    strerror(-r));
			p += n;
		}
		rs->out->pages_zero_known += end - pg;
		pg = end;
	}
	return 0;
}

int restore_start_lazy(struct restore *rs, struct guest_mem *m)
{
	char why[256] = "";
	int uffd, r;

	if ((r = restore_open_source(rs, m->size)) < 0)
		return r;
	if (rs->cfg->apf == VMM_APF_USER && !rs->cfg->exit_intake)
		return restore_fail(rs, -EINVAL,
		                    "--apf user needs --intake exit: the VMM injects async page "
		                    "faults when a vCPU exits on a missing page");
	if (rs->cfg->exit_intake) {
		struct exit_probe probe;
		enum exit_backend best;

		exit_backends_probe(rs->sys, rs->cfg->exit_backend == VMM_EXIT_KICK, &probe, &best);
		if (best == EXIT_BACKEND_NONE)
			return restore_fail(
			    rs, -EOPNOTSUPP,
			    "--intake exit: no usable exit backend on this host (sigbus: %s; "
			    "kick: %s; native: %s)",
			    probe.why[EXIT_BACKEND_SIGBUS], probe.why[EXIT_BACKEND_KICK],
			    probe.why[EXIT_BACKEND_NATIVE]);
		if (rs->cfg->exit_backend != VMM_EXIT_AUTO) {
			_Static_assert((int)VMM_EXIT_NATIVE == EXIT_BACKEND_NATIVE &&
			                   (int)VMM_EXIT_SIGBUS == EXIT_BACKEND_SIGBUS &&
			                   (int)VMM_EXIT_KICK == EXIT_BACKEND_KICK,
			               "enum vmm_exit_backend follows enum exit_backend");
			enum exit_backend want = (enum exit_backend)rs->cfg->exit_backend;

			if (!probe.works[want])
				return restore_fail(
				    rs, -EOPNOTSUPP,
				    "--exit-backend %s does not work on this host: %s",
				    exit_backend_name(want), probe.why[want]);
			best = want;
		}
		if ((r = exit_init(&rs->uf, best, m->size / 4096)) < 0)
			return restore_fail(rs, r, "userfault bitmap: %s", strerror(-r));
		rs->have_uf = true;
		/* Native exits on our KVM: KVM's own async PF for userfaults where
		 * it has the kind asked for; elsewhere lazyvm plays KVM's part. */
		if (best == EXIT_BACKEND_NATIVE &&
		    ((rs->cfg->apf == VMM_APF_USER && probe.apf_exitful) ||
		     (rs->cfg->apf == VMM_APF_EXITLESS && probe.apf_exitless)))
			rs->apf_impl = APF_IMPL_KVM;
	}
	/* Exit intake, sigbus: KVM cannot fault a missing page in and exits
	 * instead; no UFFD messages are read at all. Kick: blocking faults whose
	 * messages name the faulting thread, so the right vCPU can be kicked. */
	/* UFFD intake: messages name the faulting thread too, for the blocktime. */
	uint64_t features = rs->have_uf ? rs->uf.ops->uffd_features : UFFD_FEATURE_THREAD_ID;
	if ((r = blocktime_create(rs->rd.hdr.nr_vcpus, &rs->bt)) < 0)
		return restore_fail(rs, r, "blocktime: %s", strerror(-r));
	uffd = uffd_open(features, NULL, why, sizeof(why));
	if (uffd < 0)
		return restore_fail(rs, uffd, "userfaultfd: %s %s", strerror(-uffd), why);
	for (unsigned i = 0; i < m->nslots; i++) {
		r = uffd_register(uffd, (uint64_t)(uintptr_t)m->slots[i].host, m->slots[i].size,
		                  UFFDIO_REGISTER_MODE_MISSING,
		                  (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE), why,
		                  sizeof(why));
		if (r < 0) {
			close(uffd);
			return restore_fail(rs, r,
			                    "registering guest RAM slot %u with userfaultfd: %s %s",
			                    i, strerror(-r), why);
		}
	}
	struct engine_config ec = {.uffd = uffd,
	                           .source = rs->src,
	                           /* exit intake: as many as the backend wants (native: KVM's own
	                            * accesses to guest memory still come as UFFD faults) */
	                           .threads = rs->have_uf                ? rs->uf.ops->uffd_threads
	                                      : rs->cfg->handler_threads ? rs->cfg->handler_threads
	                                                                 : 1,
	                           /* vCPUs (their exits, and the VMM's own accesses from their
	                            * threads: vm_mem_get), then with exit intake the async PF I/O
	                            * side (APF_SLOTS) and the kick intake thread, then the last:
	                            * working-set replay (before the guest runs), then background
	                            * prefetch (while it runs) */
	                           .resolvers = rs->rd.hdr.nr_vcpus +
	                                        (rs->cfg->exit_intake ? APF_SLOTS + 2 : 1),
	                           .intake = rs->cfg->intake,
	                           .busy_idle_ns = 10 * 1000 * 1000,
	                           .fault_around = rs->cfg->fault_around,
	                           .blocktime = rs->bt,
	                           .name = "restore"};
	if ((r = engine_create(&ec, &rs->eng)) < 0) {
		close(uffd);
		return restore_fail(rs, r, "fault engine: %s", strerror(-r));
	}
	if (rs->have_uf) {
		rs->uf.pages.eng = rs->eng;
		if ((r = exit_set_uffd(&rs->uf, uffd)) < 0)
			return restore_fail(rs, r, "userfaultfd copy: %s", strerror(-r));
	}
	for (unsigned i = 0; i < m->nslots; i++) {
		struct engine_region er = {.host_addr = (uint64_t)(uintptr_t)m->slots[i].host,
		                           .size = m->slots[i].size,
		                           .src_off = m->slots[i].file_off,
		                           .page_size = SNAP_PAGE_SIZE};
		if ((r = engine_add_region(rs->eng, &er)) < 0)
			return restore_fail(rs, r, "fault engine region %u: %s", i, strerror(-r));
	}
	if ((r = mark_zero_pages(rs, m)) < 0)
		return r;
	if ((r = engine_start(rs->eng)) < 0)
		return restore_fail(rs, r, "starting the fault engine: %s", strerror(-r));
	rs->eng_prefetch_slot = ec.resolvers - 1;
	if (rs->cfg->record_ws)
		engine_record_start(rs->eng);
	return 0;
}

/* Watches the fault engine while the VM runs. If it fails, no page will come
 * for the vCPUs blocked on faults: stop the VM with the engine's reason, make
 * guest RAM inaccessible, then wake the blocked vCPUs, whose retried access
 * now fails in the host instead of reading a page that is not there. The
 * guest never sees a wrong or zero page. */
struct watch {
	struct restore *rs;
	struct vm *vm;
	int stop_efd;
};

static void *watch_engine(void *arg)
{
	struct watch *w = arg;
	struct pollfd p[2] = {{.fd = engine_event_fd(w->rs->eng), .events = POLLIN},
	                      {.fd = w->stop_efd, .events = POLLIN}};

	while (poll(p, 2, -1) < 0 && errno == EINTR)
		;
	if (p[1].revents || engine_status(w->rs->eng) != ENGINE_FAILED)
		return NULL;
	vm_fail(w->vm, "serving guest memory: %s", engine_error(w->rs->eng));
	vm_mem_revoke(w->vm);
	for (unsigned i = 0; i < w->vm->mem.nslots; i++) {
		struct mem_slot *s = &w->vm->mem.slots[i];

		engine_wake(w->rs->eng, (uint64_t)(uintptr_t)s->host, s->size);
	}
	return NULL;
}

/* vm_mem_get's filler: the VMM touches a page of a lazily restored VM only
 * once it is installed, brought in by the calling thread through its own
 * resolver slot (its vCPU's) rather than by touching it, which would sleep on
 * the userfaultfd with the memory gate held, for ever if the engine stopped. */
static int fill_for_vmm(struct vm *vm, unsigned who, uint64_t gpa, uint64_t len)
{
	struct restore *rs = vm->mem_fill_ctx;

	for (uint64_t page = gpa & ~4095ull; page < gpa + len; page += 4096) {
		uint64_t addr = (uint64_t)(uintptr_t)guest_mem_ptr(&vm->mem, page, 4096);
		struct engine_run run;
		int r, tries = 0;

		if (rs->have_uf ? !uf_pages_missing(&rs->uf.pages, page)
		                : engine_page_present(rs->eng, addr))
			continue;
		if (who == VM_MEM_NO_FETCH)
			return -EAGAIN;
		if (rs->have_uf) {
			if (uf_pages_resolve(&rs->uf.pages, vm, who, page) < 0)
				return -ECANCELED; /* it failed the VM with the reason */
			continue;
		}
		do
			r = engine_resolve(rs->eng, who, addr, &run);
		while (r == -EAGAIN && ++tries < 1000);
		if (r < 0) {
			vm_fail(vm,
			        "serving guest memory: the VMM needs guest page 0x%" PRIx64 ": %s",
			        page, r == -EIO ? engine_error(rs->eng) : strerror(-r));
			return -ECANCELED;
		}
	}
	return 0;
}

/* The stall watch's count of the guest's own pages (vmm.h): every install
 * less those of a background prefetch or a replay. Those two are counted just
 * after their installs, so either may show as one second of progress: bounded
 * like the rest, by the guest's size. */
static uint64_t pages_demanded(void *ctx)
{
	struct restore *rs = ctx;
	struct metrics m;

	engine_metrics(rs->eng, &m);
	return m.pages_copied + m.pages_zeroed - m.pages_background - m.pages_prefetched;
}

int restore_run_watched(struct restore *rs, struct vm *vm)
{
	struct watch w = {.rs = rs, .vm = vm, .stop_efd = -1};
	pthread_t th;
	uint64_t one = 1;
	int r;

	if (!rs->eng)
		return vm_run(vm);
	vm->mem_fill = fill_for_vmm;
	vm->mem_fill_ctx = rs;
	vm->pages_demanded = pages_demanded;
	w.stop_efd = eventfd(0, EFD_CLOEXEC);
	if (w.stop_efd < 0)
		return restore_fail(rs, -errno, "eventfd: %s", strerror(errno));
	r = -pthread_create(&th, NULL, watch_engine, &w);
	if (r < 0) {
		close(w.stop_efd);
		return restore_fail(rs, r, "cannot start the engine watcher: %s", strerror(-r));
	}
	r = vm_run(vm);
	if (write(w.stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* a fresh eventfd cannot be full */
	pthread_join(th, NULL);
	close(w.stop_efd);
	return r;
}

/* With userfault exits some of the guest's pages must be in before the first
 * KVM_RUN, because KVM itself touches them, outside any exit lazyvm could
 * serve:
 *   - the pages KVM writes for the guest's PV MSRs: the kvmclock page at
 *     each entry after a clock update, the wall clock when its MSR is
 *     written (by the restore itself), steal time, the async PF area (the
 *     "page ready all" that enabling async PF sends), the PV EOI word at
 *     interrupt injection. Missing, KVM's write fails (sigbus: EFAULT, the
 *     guest's clock is never set up) or sleeps on the userfaultfd where no
 *     intake sees it. Found from the snapshot's MSRs (bit 0 enables, the
 *     address is in the rest) and the async PF MSR the VMM held (SNAP_APF).
 *   - for backends that say so (needs_core), the bundled guest's core: the
 *     sigbus backend cannot serve what KVM touches to deliver an event (the
 *     IDT, GDT, the stack it pushes a frame on: with one missing KVM
 *     escalates to a triple fault, measured), and under the native backend a
 *     fault of the guest's idle task or scheduler must never become async.
 *     By the guest ABI that is [0, GUEST_IMAGE_GPA + GUEST_IMAGE_MAX), or
 *     [0, core_end) when the boot info says where the core ends.
 * Each goes through the engine like any page (verified against the
 * checksums); everything else stays lazy. */
static int install_range(struct restore *rs, struct vm *vm, uint64_t start, uint64_t end,
                         const char *what)
{
	for (uint64_t gpa = start & ~4095ull; gpa < end; gpa += 4096) {
		uint8_t *host = guest_mem_ptr(&vm->mem, gpa, 4096);
		struct engine_run run;
		int r;

		if (!host || !uf_pages_missing(&rs->uf.pages, gpa))
			continue;
		r = engine_resolve(rs->eng, 0, (uint64_t)(uintptr_t)host, &run);
		if (r < 0)
			return restore_fail(rs, r, "installing %s page 0x%llx before the run: %s",
			                    what, (unsigned long long)gpa,
			                    r == -EIO ? engine_error(rs->eng) : strerror(-r));
		uf_bitmap_clear(&rs->uf.pages.bm,
		                gpa / 4096 + (run.addr - (uint64_t)(uintptr_t)host) / 4096,
		                run.npages ? run.npages : 1);
	}
	return 0;
}

/* KVM's PV MSRs (Documentation/virt/kvm/x86/msr.rst) */
#define MSR_KVM_WALL_CLOCK      0x11u
#define MSR_KVM_SYSTEM_TIME     0x12u
#define MSR_KVM_WALL_CLOCK_NEW  0x4b564d00u
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01u
#define MSR_KVM_STEAL_TIME      0x4b564d03u
#define MSR_KVM_PV_EOI_EN       0x4b564d04u

static const struct pv_msr {
	uint32_t index;
	bool enable_bit; /* bit 0 enables; else any non-zero value is an address */
	uint64_t gpa_mask;
	uint32_t len; /* of what KVM writes there */
	const char *name;
} pv_msrs[] = {
    {MSR_KVM_SYSTEM_TIME_NEW, true, ~1ull, 32, "kvmclock"},
    {MSR_KVM_SYSTEM_TIME, true, ~1ull, 32, "kvmclock (old MSR)"},
    {MSR_KVM_WALL_CLOCK_NEW, false, ~0ull, 12, "wall clock"},
    {MSR_KVM_WALL_CLOCK, false, ~0ull, 12, "wall clock (old MSR)"},
    {MSR_KVM_STEAL_TIME, true, ~0x3full, 64, "steal time"},
    {MSR_KVM_ASYNC_PF_EN, true, KVM_ASYNC_PF_GPA_MASK, 64, "async PF area"},
    {MSR_KVM_PV_EOI_EN, true, ~1ull, 4, "PV EOI"},
};

int restore_pv_ranges(uint32_t index, uint64_t data, struct pv_range *out)
{
	for (unsigned i = 0; i < sizeof(pv_msrs) / sizeof(pv_msrs[0]); i++) {
		const struct pv_msr *p = &pv_msrs[i];

		if (p->index != index)
			continue;
		if (p->enable_bit ? !(data & 1) : !data)
			return 0;
		out->gpa = data & p->gpa_mask;
		out->len = p->len;
		out->name = p->name;
		return 1;
	}
	return 0;
}

static int install_pv_pages(struct restore *rs, struct vm *vm)
{
	for (unsigned v = 0; v < vm->nvcpus; v++) {
		uint64_t len, alen, n;
		const struct snap_msr *m = snap_find(&rs->rd, SNAP_MSRS, v, &len);
		const struct snap_apf *sa = snap_find(&rs->rd, SNAP_APF, v, &alen);
		struct pv_range pr;
		int r;

		n = m ? len / sizeof(*m) : 0;
		for (uint64_t i = 0; i <= n; i++) {
			bool is_apf = i == n; /* last: the one the VMM held */

			if (is_apf ? !sa || alen != sizeof(*sa) ||
			                 !restore_pv_ranges(MSR_KVM_ASYNC_PF_EN, sa->msr_en, &pr)
			           : !restore_pv_ranges(m[i].index, m[i].data, &pr))
				continue;
			if (!guest_mem_ptr(&vm->mem, pr.gpa, pr.len))
				continue; /* not RAM: KVM will refuse or fail it, not fault */
			lv_info("vCPU %u: %s at 0x%llx installed before the run", v, pr.name,
			        (unsigned long long)pr.gpa);
			if ((r = install_range(rs, vm, pr.gpa, pr.gpa + pr.len, pr.name)) < 0)
				return r;
		}
	}
	return 0;
}

int restore_install_first(struct restore *rs, struct vm *vm)
{
	const struct guest_boot_info *bi;
	uint64_t end = GUEST_IMAGE_GPA + GUEST_IMAGE_MAX;
	int r = install_pv_pages(rs, vm);

	if (r < 0 || !rs->uf.ops->needs_core)
		return r;
	if ((r = install_range(rs, vm, GUEST_BOOT_INFO_GPA, GUEST_BOOT_INFO_GPA + 4096,
	                       "the guest's core")) < 0)
		return r;
	bi = guest_mem_ptr(&vm->mem, GUEST_BOOT_INFO_GPA, sizeof(*bi));
	/* The guest says where its core ends; a value outside the image area is
	 * ignored (guest-written, so untrusted) and the whole area is used. */
	if (bi && bi->core_end > GUEST_IMAGE_GPA && bi->core_end <= end)
		end = bi->core_end;
	return install_range(rs, vm, 0, end, "the guest's core");
}

/* A guest whose async PF MSRs KVM held when the snapshot was taken (a Linux
 * booted without `run --apf on`) has no SNAP_APF section: its set-up is in
 * its MSR section, and arch_vcpu_load gave it back to KVM. 1 when vCPU v has
 * it enabled there, with *sa filled. */
static int apf_from_kvm_msrs(const struct restore *rs, unsigned v, struct snap_apf *sa)
{
	uint64_t len;
	const struct snap_msr *m = snap_find(&rs->rd, SNAP_MSRS, v, &len);

	*sa = (struct snap_apf){0};
	for (uint64_t i = 0; m && i < len / sizeof(*m); i++) {
		if (m[i].index == MSR_KVM_ASYNC_PF_EN)
			sa->msr_en = m[i].data;
		else if (m[i].index == MSR_KVM_ASYNC_PF_INT)
			sa->vector = m[i].data;
	}
	return (sa->msr_en & KVM_ASYNC_PF_ENABLED) != 0;
}

/* Turns KVM's own async PF off for a vCPU whose MSRs it got from the
 * snapshot: the VMM holds them from here on (or nobody does, with --apf
 * off). The guest still believes it enabled; it just gets no async PF from
 * KVM. */
static int kvm_apf_off(struct restore *rs, struct vm *vm, unsigned v)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[1];
	} m = {.hdr.nmsrs = 1, .e = {{.index = MSR_KVM_ASYNC_PF_EN, .data = 0}}};

	if (ioctl(vm->vcpus[v].fd, KVM_SET_MSRS, &m) != 1)
		return restore_fail(rs, -EINVAL, "vCPU %u: KVM refused to turn its async PF off",
		                    v);
	return 0;
}

/* The guest's async PF set-up (SNAP_APF, or KVM's MSRs) goes where the mode
 * wants it: to the VMM (user: it injects; off: it keeps KVM out and injects
 * nothing) or to KVM (kernel: KVM's own async PF). */
int restore_setup_apf(struct restore *rs, struct vm *vm)
{
	static const enum apf_mode modes[] = {[VMM_APF_OFF] = APF_OFF,
	                                      [VMM_APF_USER] = APF_USER,
	                                      [VMM_APF_EXITLESS] = APF_EXITLESS,
	                                      [VMM_APF_KERNEL] = APF_KERNEL};
	static const enum apf_policy policies[] = {[VMM_POLICY_SYNC] = APF_POLICY_SYNC,
	                                           [VMM_POLICY_ASYNC] = APF_POLICY_ASYNC,
	                                           [VMM_POLICY_HYBRID] = APF_POLICY_HYBRID};
	char why[160];
	uint64_t len;
	int r;

	/* Off: nothing needs intercepting (a guest writes its async PF MSRs at
	 * boot, not again), and the MSR filter costs milliseconds of start-up
	 * (measured), which a plain restore should not. */
	bool kvm_held = !snap_find(&rs->rd, SNAP_APF, 0, &len);
	struct snap_apf held[VMM_MAX_VCPUS];
	unsigned nheld = 0;

	if (kvm_held)
		for (unsigned i = 0; i < vm->nvcpus; i++)
			nheld += apf_from_kvm_msrs(rs, i, &held[i]);
	/* Off means off: KVM would otherwise run its own async PF for a guest
	 * whose MSRs it held (measured with Linux: 4155 "page ready" with off) */
	if (rs->cfg->apf == VMM_APF_OFF) {
		for (unsigned i = 0; kvm_held && i < vm->nvcpus; i++)
			if ((held[i].msr_en & KVM_ASYNC_PF_ENABLED) &&
			    (r = kvm_apf_off(rs, vm, i)) < 0)
				return r;
		return 0;
	}
	if (kvm_held && !nheld) {
		snprintf(rs->out->apf_note, sizeof(rs->out->apf_note),
		         "the snapshot's guest never enabled async page faults (run --apf off)");
		return 0;
	}
	r = apf_init(&rs->apf, vm, rs->have_uf ? &rs->uf.pages : NULL, modes[rs->cfg->apf],
	             rs->apf_impl, policies[rs->cfg->policy], rs->cfg->source_latency_ns, why,
	             sizeof(why));
	if (r < 0)
		return restore_fail(rs, r, "async page faults: %s", why);
	rs->have_apf = true;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		const struct snap_apf *sa =
		    kvm_held ? &held[i] : snap_find(&rs->rd, SNAP_APF, i, &len);

		if (!sa || (!kvm_held && len != sizeof(*sa)))
			return restore_fail(rs, -EINVAL,
			                    "snapshot: vCPU %u's async PF state is missing", i);
		/* KVM's async PF, its own or for userfaults: KVM owns the MSRs */
		if (rs->cfg->apf == VMM_APF_KERNEL || rs->apf_impl == APF_IMPL_KVM) {
			struct {
				struct kvm_msrs hdr;
				struct kvm_msr_entry e[2];
			} m = {.hdr.nmsrs = 2,
			       .e = {{.index = MSR_KVM_ASYNC_PF_INT, .data = sa->vector},
			             {.index = MSR_KVM_ASYNC_PF_EN, .data = sa->msr_en}}};
			if (ioctl(vm->vcpus[i].fd, KVM_SET_MSRS, &m) != 2)
				return restore_fail(rs, -EINVAL,
				                    "vCPU %u: KVM refused the async PF MSRs", i);
		} else if (kvm_held && (sa->msr_en & KVM_ASYNC_PF_ENABLED) &&
		           (r = kvm_apf_off(rs, vm, i)) < 0)
			return r; /* lazyvm injects from here on, not KVM */
		if (rs->cfg->apf != VMM_APF_KERNEL) {
			rs->apf.vcpus[i].msr_en = sa->msr_en;
			rs->apf.vcpus[i].vector = (uint8_t)sa->vector;
		}
	}
	if (rs->apf_impl == APF_IMPL_KVM && (r = apf_kvm_attach(&rs->apf, why, sizeof(why))) < 0)
		return restore_fail(rs, r, "KVM's async page faults for userfaults: %s", why);
	if (rs->cfg->apf != VMM_APF_KERNEL)
		vm->apf = &rs->apf;
	if ((r = apf_route_irqfds(&rs->apf)) < 0)
		return restore_fail(rs, r, "async page faults: routing the page-ready irqfds: %s",
		                    strerror(-r));
	if ((r = apf_start(&rs->apf)) < 0)
		return restore_fail(rs, r, "async page fault workers: %s", strerror(-r));
	return 0;
}

/* Working sets (REAP, workset.h): tagged with the state file's CRC, so a
 * file recorded for another snapshot is found stale. */
static struct ws_id ws_id_of(const struct restore *rs)
{
	struct ws_id id = {.mem_size = rs->rd.hdr.mem_size};

	memcpy(&id.tag, rs->state + rs->state_len - sizeof(id.tag), sizeof(id.tag));
	return id;
}

void restore_record_ws(struct restore *rs)
{
	struct ws_id id = ws_id_of(rs);
	uint64_t *pages = NULL, n = engine_record_get(rs->eng, &pages);
	char why[4200];

	if (ws_save(rs->cfg->record_ws, &id, pages, n, NULL, why, sizeof(why)) < 0)
		lv_warn("cannot write the working set: %s", why);
	else
		rs->out->ws_recorded = n;
	free(pages);
}

int restore_prefetch_ws(struct restore *rs, struct vm *vm)
{
	struct ws_id id = ws_id_of(rs);
	uint64_t *pages = NULL, n = 0, installed = 0, t0 = lv_now_ns();
	char why[4200];
	int r = ws_load(rs->cfg->prefetch_ws, &id, &pages, &n, why, sizeof(why));

	if (r < 0) {
		lv_warn("working set: %s: plain lazy restore", why);
		return 0;
	}
	r = engine_prefetch(rs->eng, rs->eng_prefetch_slot, pages, n, NULL, &installed);
	if (r < 0) {
		free(pages);
		return restore_fail(rs, r, "replaying the working set: %s", engine_error(rs->eng));
	}
	/* With exit intake the bitmap must say what is in now. */
	for (uint64_t i = 0; rs->have_uf && i < n; i++) {
		uint8_t *host = guest_mem_ptr(&vm->mem, pages[i] * 4096, 4096);
		if (host && engine_page_present(rs->eng, (uint64_t)(uintptr_t)host))
			uf_bitmap_clear(&rs->uf.pages.bm, pages[i], 1);
	}
	rs->out->ws_prefetched = installed;
	rs->out->prefetch_ms_x1000 = (lv_now_ns() - t0) / 1000;
	free(pages);
	return 0;
}

/* Every 2 MiB piece of guest RAM whose pages are all installed becomes one
 * transparent huge page (MADV_COLLAPSE, Linux 6.1). UFFDIO_COPY installs
 * 4 KiB pages, so without this KVM maps a lazily restored guest 4 KiB at a
 * time for ever, where an eagerly loaded one may get 2 MiB pages. While the
 * userfaultfd is armed the kernel refuses to collapse a piece with a page
 * missing (it would fill the hole with zeros), so this can never make up a
 * page. Best effort: a refusal only means smaller pages. LAZYVM_COLLAPSE=0
 * turns it off (for measuring it). */
void restore_collapse(struct restore *rs)
{
	const char *env = getenv("LAZYVM_COLLAPSE");
	const struct guest_mem *m = rs->mem;

	if ((env && !strcmp(env, "0")) || !m)
		return;
	for (unsigned i = 0; i < m->nslots; i++)
		for (uint64_t off = 0; off + (2u << 20) <= m->slots[i].size; off += 2u << 20) {
			uint8_t *p = m->slots[i].host + off;
			bool all = (uintptr_t)p % (2u << 20) == 0;

			for (unsigned k = 0; k < 512 && all; k++)
				all = engine_page_present(rs->eng,
				                          (uint64_t)(uintptr_t)(p + k * 4096));
			if (all && madvise(p, 2u << 20, MADV_COLLAPSE) == 0)
				atomic_fetch_add(&rs->huge, 1);
		}
}

void restore_transferred(void *arg)
{
	struct restore *rs = arg;

	restore_collapse(rs);
	rs->out->t_transferred_ns = lv_now_ns();
	if (rs->cfg->hooks && rs->cfg->hooks->transferred)
		rs->cfg->hooks->transferred(rs->cfg->hooks->arg);
}
