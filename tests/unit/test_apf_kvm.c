/* KVM's async PF for userfaults, lazyvm's side, without the kernel: the
 * exitless I/O task against a stand-in for KVM's half of the ring page (KVM
 * pushes on the notify ring and signals under NOTIFY_ARMED, takes the pages
 * back from the complete ring), and the exitful decision's fallbacks (a policy
 * that never goes async, a page already in, an ACCEPT KVM refuses, a READY
 * KVM refuses). */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../src/vmm/apf_internal.h"
#include "lazyvm/units.h"
#include "test.h"

#define NPAGES 4096u

static struct vm *fake_vm(unsigned nvcpus)
{
	static struct vm vm;

	memset(&vm, 0, sizeof(vm));
	vm.nvcpus = nvcpus;
	pthread_mutex_init(&vm.lock, NULL);
	pthread_cond_init(&vm.cond, NULL);
	for (unsigned i = 0; i < nvcpus; i++) {
		vm.vcpus[i].vm = &vm;
		vm.vcpus[i].index = i;
		vm.vcpus[i].fd = -1; /* no KVM: every ioctl fails with EBADF */
	}
	return &vm;
}

/* Pages whose bits are all clear: the I/O side finds each already in. */
static void pages_all_in(struct uf_pages *pg)
{
	memset(pg, 0, sizeof(*pg));
	CHECK_EQ(uf_bitmap_create(&pg->bm, NPAGES), 0);
	uf_bitmap_clear(&pg->bm, 0, NPAGES);
}

/* As apf_kvm_attach leaves it for exitless, with anonymous pages in place of
 * KVM's (KVM initialises the header the same way). */
static void map_rings(struct apf *a)
{
	for (unsigned i = 0; i < a->vm->nvcpus; i++) {
		void *p =
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		CHECK(p != MAP_FAILED);
		a->vcpus[i].rings = p;
		a->vcpus[i].rings_from_kvm = true;
		apf_rings_init(p);
	}
	a->kvm_exitless = true;
}

static void test_exitless_io_task(void)
{
	struct vm *vm = fake_vm(2);
	struct uf_pages pg;
	struct apf a;
	char why[160];
	enum { N = 500 };
	uint32_t seen[N] = {0};
	unsigned on[N];
	unsigned pushed = 0, back = 0, signals = 0;
	uint64_t deadline = lv_now_ns() + 10ull * 1000 * 1000 * 1000;

	pages_all_in(&pg);
	CHECK_EQ(apf_init(&a, vm, &pg, APF_EXITLESS, APF_IMPL_KVM, APF_POLICY_ASYNC, 0, why,
	                  sizeof(why)),
	         0);
	map_rings(&a);
	CHECK_EQ(apf_start(&a), 0);
	CHECK_EQ(a.started, 3u); /* the ring task and the exitful fallback's workers */
	/* Nothing to do: the task arms both rings and sleeps; KVM's first push
	 * then must signal it. */
	while (!(atomic_load(&a.vcpus[1].rings->flags) & APF_RINGS_NOTIFY_ARMED) &&
	       lv_now_ns() < deadline)
		lv_sleep_ns(1000 * 1000);
	CHECK(atomic_load(&a.vcpus[0].rings->flags) & APF_RINGS_NOTIFY_ARMED);
	/* KVM's side: a fault per push, at most 64 outstanding a vCPU */
	while (back < N && lv_now_ns() < deadline) {
		for (unsigned v = 0; v < 2 && pushed < N; v++) {
			struct apf_rings_page *r = a.vcpus[v].rings;
			struct apf_ring_entry e = {.gpa = (uint64_t)pushed << 12 | 0x123,
			                           .flags = 7000 + pushed};

			if (apf_ring_count(&r->notify) + apf_ring_count(&r->complete) >= 32 ||
			    !apf_ring_push(&r->notify, &e))
				continue;
			on[pushed++] = v;
			if (apf_rings_need_wakeup(r)) {
				uint64_t one = 1;
				CHECK_EQ(write(a.notify_efd, &one, sizeof(one)), 8);
				signals++;
			}
		}
		for (unsigned v = 0; v < 2; v++) {
			struct apf_ring_entry e;

			while (apf_ring_pop(&a.vcpus[v].rings->complete, &e)) {
				uint32_t k = (uint32_t)e.flags - 7000;

				CHECK(k < N);
				CHECK_EQ(e.gpa,
				         (uint64_t)k << 12); /* page aligned, the same page */
				CHECK_EQ(on[k], v);          /* on its own vCPU's ring */
				seen[k]++;
				back++;
			}
		}
	}
	CHECK_EQ(back, (unsigned)N);
	for (unsigned k = 0; k < N; k++)
		CHECK_EQ(seen[k], 1u);
	/* every page given back was signalled on its vCPU's complete eventfd */
	for (unsigned v = 0; v < 2; v++) {
		struct pollfd p = {.fd = a.vcpus[v].complete_efd, .events = POLLIN};
		CHECK_EQ(poll(&p, 1, 0), 1);
	}
	apf_stop(&a);
	CHECK_EQ(a.st.kvm_ring_taken, (uint64_t)N);
	CHECK_EQ(a.st.kvm_ring_completed, (uint64_t)N);
	CHECK_EQ(a.st.not_present, (uint64_t)N);
	CHECK_EQ(a.st.ready, (uint64_t)N);
	CHECK(signals >= 1); /* the first push at least: it slept on the eventfd */
	CHECK(a.st.io_wakeups >= 1);
	CHECK(!vm->report.error[0]);
	apf_destroy(&a);
	uf_bitmap_destroy(&pg.bm);
}

/* KVM's exitful async PF as the VM's, under `policy`. */
static void exitful(struct apf *a, struct vm *vm, struct uf_pages *pg, enum apf_policy policy,
                    uint64_t latency_ns)
{
	char why[160];

	CHECK_EQ(apf_init(a, vm, pg, APF_USER, APF_IMPL_KVM, policy, latency_ns, why, sizeof(why)),
	         0);
	vm->apf = a;
}

static void test_exitful_decision(void)
{
	struct vm *vm = fake_vm(1);
	struct uf_pages pg;
	struct apf a;

	memset(&pg, 0, sizeof(pg));
	CHECK_EQ(uf_bitmap_create(&pg.bm, NPAGES), 0); /* every page missing */
	/* sync policy: never async, whatever KVM offers */
	exitful(&a, vm, &pg, APF_POLICY_SYNC, 0);
	CHECK_EQ(apf_kvm_fault(&vm->vcpus[0], 0x5000), 0);
	CHECK_EQ(a.st.kvm_apf_exits, 1u);
	CHECK_EQ(a.st.kvm_accept_refused, 0u);
	apf_destroy(&a);
	/* hybrid with a fast source: a short fault stays sync */
	exitful(&a, vm, &pg, APF_POLICY_HYBRID, 20 * 1000);
	CHECK_EQ(apf_kvm_fault(&vm->vcpus[0], 0x5000), 0);
	CHECK_EQ(a.st.kvm_accept_refused, 0u);
	apf_destroy(&a);
	/* async, slow: a page already in is re-entered at once; a missing one is
	 * ACCEPTed, and a refused ACCEPT (here EBADF) is resolved synchronously */
	exitful(&a, vm, &pg, APF_POLICY_HYBRID, 1000 * 1000);
	uf_bitmap_clear(&pg.bm, 6, 1);
	CHECK_EQ(apf_kvm_fault(&vm->vcpus[0], 0x6000), 0);
	CHECK_EQ(a.st.kvm_accept_refused, 0u);
	CHECK_EQ(apf_kvm_fault(&vm->vcpus[0], 0x5008), 0);
	CHECK_EQ(a.st.kvm_accept_refused, 1u);
	CHECK_EQ(a.st.kvm_accepted, 0u);
	CHECK_EQ(a.st.not_present, 0u);
	CHECK_EQ(a.jlen, 0u); /* nothing queued for the I/O workers */
	/* lazyvm's own injection stays out of KVM's way */
	CHECK_EQ(apf_try_unretired(&vm->vcpus[0], 0x5000), 0);
	/* a READY KVM refuses (other than ENOENT) fails the VM, naming it:
	 * the guest would wait for that page for ever */
	apf_kvm_ready(&a, 0, 0x5000);
	CHECK(strstr(vm->report.error, "KVM_ASYNC_PF READY for gpa 0x5000") != NULL);
	CHECK_EQ(a.st.kvm_ready_refused, 1u);
	CHECK_EQ(a.st.ready, 0u);
	apf_destroy(&a);
	uf_bitmap_destroy(&pg.bm);
}

static void test_names(void)
{
	struct apf a = {.mode = APF_USER, .impl = APF_IMPL_LAZYVM};

	CHECK(!strcmp(apf_impl_name(&a), "lazyvm, MSR filter"));
	a.impl = APF_IMPL_KVM;
	CHECK(!strcmp(apf_impl_name(&a), "KVM exitful, native"));
	a.mode = APF_EXITLESS; /* exitless asked, but not set up: exitful */
	CHECK(!strcmp(apf_impl_name(&a), "KVM exitful, native"));
	a.kvm_exitless = true;
	CHECK(!strcmp(apf_impl_name(&a), "KVM exitless, native"));
}

TEST_MAIN(TEST(test_exitless_io_task), TEST(test_exitful_decision), TEST(test_names))
