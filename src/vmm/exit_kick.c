/* The kick exit backend (exit.h): a blocking userfaultfd whose messages name
 * the faulting thread (UFFD_FEATURE_THREAD_ID); an intake thread reads them
 * and kicks that vCPU out of KVM_RUN (KVM >= 6.2 lets a signal interrupt a
 * slow fault: EINTR, RIP at the faulting instruction, nothing retired), then
 * the vCPU thread resolves the page (or makes it an async page fault). */
#include "exit_backend.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "apf.h"

#define PAGE_MASK_4K (~(uint64_t)4095)
#define KICK_NO_GPA  UINT64_MAX

struct kick {
	int stop_efd;
	pthread_t thread;
	bool started;
	_Atomic int tid[VMM_MAX_VCPUS];      /* each vCPU thread's tid, 0 unknown */
	_Atomic uint64_t gpa[VMM_MAX_VCPUS]; /* the fault it was kicked for */
};

static void kick_vcpu_started(struct userfault *uf, struct vcpu *v)
{
	struct kick *k = uf->priv;

	atomic_store(&k->tid[v->index], (int)gettid());
}

/* The guest-physical address of a host address inside guest RAM, or KICK_NO_GPA. */
static uint64_t host_to_gpa(struct vm *vm, uint64_t host)
{
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		uint64_t base = (uint64_t)(uintptr_t)s->host;

		if (host >= base && host - base < s->size)
			return s->gpa + (host - base);
	}
	return KICK_NO_GPA;
}

static void *kick_intake(void *arg)
{
	struct userfault *uf = arg;
	struct kick *k = uf->priv;
	struct vm *vm = uf->vm;
	unsigned own_slot = vm->nvcpus + APF_SLOTS; /* faults of non-vCPU threads */
	struct uffd_msg msgs[16];

	for (;;) {
		struct pollfd p[2] = {{.fd = uf->uffd, .events = POLLIN},
		                      {.fd = k->stop_efd, .events = POLLIN}};

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		int n = uffd_read_events(uf->uffd, msgs, 16);
		for (int i = 0; i < n; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			uint64_t gpa = host_to_gpa(vm, msgs[i].arg.pagefault.address);
			int tid = (int)msgs[i].arg.pagefault.feat.ptid;
			unsigned v;

			if (gpa == KICK_NO_GPA)
				continue;
			if (!uf_pages_missing(&uf->pages, gpa)) {
				/* Already in (a stale message): make sure nobody waits. */
				uffd_wake(uf->uffd, msgs[i].arg.pagefault.address & PAGE_MASK_4K,
				          4096);
				continue;
			}
			for (v = 0; v < vm->nvcpus && atomic_load(&k->tid[v]) != tid; v++)
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
				uf_pages_resolve(&uf->pages, vm, own_slot, gpa);
				continue;
			}
			atomic_store(&k->gpa[v], gpa);
			vcpu_kick(&vm->vcpus[v]);
		}
	}
	return NULL;
}

static int kick_attach(struct userfault *uf, struct vm *vm)
{
	struct kick *k = calloc(1, sizeof(*k));
	int r;

	if (!k)
		return -ENOMEM;
	uf->priv = k;
	k->stop_efd = -1;
	for (unsigned i = 0; i < VMM_MAX_VCPUS; i++)
		atomic_store(&k->gpa[i], KICK_NO_GPA);
	k->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (k->stop_efd < 0) {
		r = -errno;
		lv_err("kick intake thread: eventfd: %s", strerror(errno));
		return r;
	}
	r = -pthread_create(&k->thread, NULL, kick_intake, uf);
	if (r < 0) {
		lv_err("kick intake thread: %s", strerror(-r));
		return r;
	}
	k->started = true;
	(void)vm;
	return 0;
}

static void kick_detach(struct userfault *uf)
{
	struct kick *k = uf->priv;
	uint64_t one = 1;

	if (!k || !k->started)
		return;
	if (write(k->stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* a fresh eventfd cannot be full */
	pthread_join(k->thread, NULL);
	k->started = false;
}

static void kick_destroy(struct userfault *uf)
{
	struct kick *k = uf->priv;

	if (!k)
		return;
	kick_detach(uf);
	if (k->stop_efd >= 0)
		close(k->stop_efd);
	free(k);
	uf->priv = NULL;
}

static int kick_after_kick(struct userfault *uf, struct vcpu *v)
{
	struct kick *k = uf->priv;
	uint64_t gpa = atomic_exchange(&k->gpa[v->index], KICK_NO_GPA);

	if (gpa == KICK_NO_GPA)
		return 0;
	return exit_unretired(v, gpa, &uf->exits_kick) < 0 ? -1 : 0;
}

struct kick_thread {
	struct probe_vm *p;
	_Atomic int done;
	int ret, err;
};

static void *kick_vcpu(void *arg)
{
	struct kick_thread *k = arg;

	k->ret = ioctl(k->p->vcpu, KVM_RUN, 0);
	k->err = errno;
	atomic_store(&k->done, 1);
	return NULL;
}

static void kick_signal_handler(int sig)
{
	(void)sig;
}

/* Blocking UFFD: the vCPU waits in the kernel; does a signal get it out? */
static int kick_probe(struct kvm_sys *sys, struct exit_probe *unused, char *why, size_t whylen)
{
	struct sigaction sa = {.sa_handler = kick_signal_handler};
	struct kick_thread k = {0};
	struct probe_vm p;
	struct uffd_msg msg;
	pthread_t th;
	int r = probe_vm_open(sys, &p, 0, why, whylen);

	(void)unused;

	if (r < 0)
		goto out;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGRTMIN + 1, &sa, NULL);
	k.p = &p;
	if ((r = -pthread_create(&th, NULL, kick_vcpu, &k)) < 0)
		goto out;
	/* Wait (bounded) for the vCPU's fault to reach the UFFD. */
	r = 0;
	for (int i = 0; i < 1000 && (r = uffd_read_events(p.uffd, &msg, 1)) == 0; i++)
		lv_sleep_ns(1000000);
	if (r <= 0) {
		snprintf(why, whylen, "the probe vCPU's fault never reached the userfaultfd");
		r = 0;
	} else {
		pthread_kill(th, SIGRTMIN + 1);
		for (int i = 0; i < 50 && !atomic_load(&k.done); i++)
			lv_sleep_ns(1000000);
		if (atomic_load(&k.done) && k.ret < 0 && k.err == EINTR) {
			snprintf(why, whylen,
			         "a signal makes KVM_RUN return EINTR while the fault waits");
			r = 1;
		} else {
			snprintf(why, whylen,
			         "the signal was ignored until the page was installed");
			r = 0;
		}
	}
	/* Let the vCPU finish in any case. */
	static uint8_t page[4096];
	uffd_copy(p.uffd, (uint64_t)(uintptr_t)p.mem + 4096, page, 4096);
	pthread_join(th, NULL);
out:
	probe_vm_close(&p);
	return r < 0 ? 0 : r;
}

const struct exit_backend_ops exit_kick_ops = {
    .id = EXIT_BACKEND_KICK,
    .costly = true,
    .uffd_features = UFFD_FEATURE_THREAD_ID,
    .wants_uffd = true,
    .sees_vcpu_thread_faults = true,
    .probe = kick_probe,
    .attach = kick_attach,
    .vcpu_started = kick_vcpu_started,
    .on_exit = exit_retired,
    .after_kick = kick_after_kick,
    .detach = kick_detach,
    .destroy = kick_destroy,
};
