/* User async page faults (apf.h): tokens, the I/O side (workers that install
 * the pages of async faults, the exitless ring task), the policy, accounting.
 * lazyvm's injection is in apf_lazyvm.c, KVM's uAPI in apf_kvm.c. */
#include "apf_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

const char *apf_mode_name(enum apf_mode m)
{
	static const char *const names[] = {"off", "user", "exitless", "kernel"};

	return names[m];
}

const char *apf_policy_name(enum apf_policy p)
{
	static const char *const names[] = {"sync", "async", "hybrid"};

	return names[p];
}

const char *apf_impl_name(const struct apf *a)
{
	if (a->mode == APF_KERNEL)
		return "KVM's own";
	if (a->impl == APF_IMPL_LAZYVM)
		return "lazyvm, MSR filter";
	return a->kvm_exitless ? "KVM exitless, native" : "KVM exitful, native";
}

int apf_init(struct apf *a, struct vm *vm, struct uf_pages *pages, enum apf_mode mode,
             enum apf_impl impl, enum apf_policy policy, uint64_t source_latency_ns, char *why,
             size_t whylen)
{
	memset(a, 0, sizeof(*a));
	a->mode = mode;
	a->impl = impl;
	a->policy = policy;
	a->slow_ns = 100 * 1000;
	a->source_latency_ns = source_latency_ns;
	a->vm = vm;
	a->pages = pages;
	pthread_mutex_init(&a->token_lock, NULL);
	pthread_mutex_init(&a->work_lock, NULL);
	pthread_cond_init(&a->work_cond, NULL);
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		pthread_mutex_init(&a->vcpus[i].lock, NULL);
	/* Tokens 1..APF_MAX_TOKENS: never 0, never the wake-all token. */
	for (unsigned i = 0; i < APF_MAX_TOKENS; i++)
		a->free_tokens[a->nfree++] = APF_MAX_TOKENS - i;
	a->notify_efd = -1;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		a->vcpus[i].complete_efd = -1;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct apf_vcpu *av = &a->vcpus[i];

		/* KVM's rings are KVM's page of the vCPU (apf_kvm_attach). */
		if (impl == APF_IMPL_LAZYVM) {
			av->rings = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
			if (av->rings == MAP_FAILED) {
				av->rings = NULL;
				snprintf(why, whylen, "ring page: %s", strerror(errno));
				return -ENOMEM;
			}
			apf_rings_init(av->rings);
		}
		if (mode == APF_EXITLESS &&
		    (av->complete_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
			snprintf(why, whylen, "eventfd: %s", strerror(errno));
			return -errno;
		}
	}
	if (mode == APF_EXITLESS && (a->notify_efd = eventfd(0, EFD_CLOEXEC)) < 0) {
		snprintf(why, whylen, "eventfd: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

void apf_destroy(struct apf *a)
{
	apf_stop(a);
	if (a->vm && a->vm->apf == a)
		a->vm->apf = NULL;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++) {
		pthread_mutex_destroy(&a->vcpus[i].lock);
		if (a->vcpus[i].rings)
			munmap(a->vcpus[i].rings, 4096);
		if (a->vcpus[i].complete_efd >= 0)
			close(a->vcpus[i].complete_efd);
	}
	if (a->notify_efd >= 0)
		close(a->notify_efd);
	pthread_mutex_destroy(&a->token_lock);
	pthread_mutex_destroy(&a->work_lock);
	pthread_cond_destroy(&a->work_cond);
}

uint32_t apf_token_get(struct apf *a)
{
	uint32_t t = 0;

	pthread_mutex_lock(&a->token_lock);
	if (a->nfree)
		t = a->free_tokens[--a->nfree];
	pthread_mutex_unlock(&a->token_lock);
	return t;
}

void apf_token_put(struct apf *a, uint32_t t)
{
	pthread_mutex_lock(&a->token_lock);
	a->free_tokens[a->nfree++] = t;
	pthread_mutex_unlock(&a->token_lock);
}

bool apf_policy_async(const struct apf *a)
{
	if ((a->mode != APF_USER && a->mode != APF_EXITLESS) || a->policy == APF_POLICY_SYNC)
		return false;
	/* hybrid: the page is local and quick, an APF pair would cost more */
	return a->policy != APF_POLICY_HYBRID || a->source_latency_ns >= a->slow_ns;
}

void apf_queue(struct apf *a, unsigned vcpu, uint64_t gpa, uint32_t token)
{
	pthread_mutex_lock(&a->work_lock);
	a->jobs[(a->jhead + a->jlen++) % APF_MAX_TOKENS] =
	    (struct apf_job){.vcpu = vcpu, .gpa = gpa, .token = token};
	pthread_cond_signal(&a->work_cond);
	pthread_mutex_unlock(&a->work_lock);
}

/* Exitless I/O task: one thread serving every vCPU's notify ring, the ones
 * lazyvm fills (apf_lazyvm.c) or KVM's. */
static void *ring_worker(void *arg)
{
	struct apf *a = arg;
	unsigned nv = a->vm->nvcpus, slot = nv + APF_IO_WORKERS;

	while (!__atomic_load_n(&a->stopping, __ATOMIC_ACQUIRE)) {
		bool any = false;

		for (unsigned i = 0; i < nv; i++) {
			struct apf_ring_entry e;

			while (apf_ring_pop(&a->vcpus[i].rings->notify, &e)) {
				any = true;
				if (a->impl == APF_IMPL_KVM) { /* KVM injected "not present" */
					atomic_fetch_add(&a->st.kvm_ring_taken, 1);
					atomic_fetch_add(&a->st.not_present, 1);
				}
				if (uf_pages_resolve(a->pages, a->vm, slot, e.gpa) < 0)
					continue;
				if (a->impl == APF_IMPL_KVM)
					apf_kvm_complete(a, i, e.gpa, (uint32_t)e.flags);
				else
					apf_lazyvm_page_in(a, i, e.gpa, (uint32_t)e.flags);
			}
		}
		if (any)
			continue;
		/* Nothing to do: arm every ring, look once more, then sleep. */
		for (unsigned i = 0; i < nv; i++)
			atomic_fetch_or(&a->vcpus[i].rings->flags, APF_RINGS_NOTIFY_ARMED);
		atomic_thread_fence(memory_order_seq_cst);
		for (unsigned i = 0; i < nv && !any; i++)
			any = !apf_ring_empty(&a->vcpus[i].rings->notify);
		if (!any && !__atomic_load_n(&a->stopping, __ATOMIC_ACQUIRE)) {
			uint64_t v;
			if (read(a->notify_efd, &v, sizeof(v)) > 0)
				atomic_fetch_add(&a->st.io_wakeups, 1);
		}
		for (unsigned i = 0; i < nv; i++)
			atomic_fetch_and(&a->vcpus[i].rings->flags, ~APF_RINGS_NOTIFY_ARMED);
	}
	return NULL;
}

static void *io_worker(void *arg)
{
	struct apf *a = arg;
	unsigned slot;

	pthread_mutex_lock(&a->work_lock);
	slot = a->vm->nvcpus + a->nworkers++; /* resolver slots after the vCPUs' */
	for (;;) {
		if (!a->jlen && !a->stopping) {
			while (!a->jlen && !a->stopping)
				pthread_cond_wait(&a->work_cond, &a->work_lock);
			atomic_fetch_add(&a->st.io_wakeups, 1);
		}
		if (a->stopping)
			break;
		struct apf_job job = a->jobs[a->jhead];
		a->jhead = (a->jhead + 1) % APF_MAX_TOKENS;
		a->jlen--;
		pthread_mutex_unlock(&a->work_lock);
		if (uf_pages_resolve(a->pages, a->vm, slot, job.gpa) >= 0) {
			if (a->impl == APF_IMPL_KVM)
				apf_kvm_ready(a, job.vcpu, job.gpa);
			else
				apf_lazyvm_page_in(a, job.vcpu, job.gpa, job.token);
		}
		pthread_mutex_lock(&a->work_lock);
	}
	pthread_mutex_unlock(&a->work_lock);
	return NULL;
}

static int start_one(struct apf *a, void *(*fn)(void *))
{
	int r = -pthread_create(&a->workers[a->started], NULL, fn, a);

	if (r < 0) {
		apf_stop(a);
		return r;
	}
	a->started++;
	return 0;
}

int apf_start(struct apf *a)
{
	int r = 0;

	if ((a->mode != APF_USER && a->mode != APF_EXITLESS) || !a->pages)
		return 0;
	/* Exitless: one I/O task for every vCPU (the point of the wake-up rule);
	 * KVM's exitless falls back to exitful exits when a ring is full, so it
	 * has the workers of those too. */
	if (a->mode == APF_EXITLESS && (a->impl == APF_IMPL_LAZYVM || a->kvm_exitless))
		r = start_one(a, ring_worker);
	for (unsigned i = 0;
	     r == 0 && i < APF_IO_WORKERS && (a->mode == APF_USER || a->impl == APF_IMPL_KVM); i++)
		r = start_one(a, io_worker);
	return r;
}

void apf_stop(struct apf *a)
{
	pthread_mutex_lock(&a->work_lock);
	__atomic_store_n(&a->stopping, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&a->work_cond);
	pthread_mutex_unlock(&a->work_lock);
	if (a->notify_efd >= 0) {
		uint64_t one = 1;
		if (write(a->notify_efd, &one, sizeof(one)) < 0)
			(void)0; /* a fresh eventfd cannot be full */
	}
	for (unsigned i = 0; i < a->started; i++)
		pthread_join(a->workers[i], NULL);
	a->started = 0;
}

void apf_account(struct vcpu *v, bool async, uint64_t ns)
{
	struct apf *a = v->vm->apf;

	if (!a)
		return;
	if (!async)
		atomic_fetch_add(&a->st.sync_faults, 1);
	atomic_fetch_add(async ? &a->st.async_ns : &a->st.sync_ns, ns);
}

void apf_entering(struct vcpu *v)
{
	if (v->vm->apf)
		atomic_store(&v->vm->apf->vcpus[v->index].reentered, true);
}
