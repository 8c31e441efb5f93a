/* Blocktime accounting (include/lazyvm/blocktime.h). */
#include "lazyvm/blocktime.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct slot {
	int tid;
	bool vcpu; /* counts towards "all blocked" */
	bool waiting;
	uint64_t addr; /* page waited for */
	uint64_t since;
	uint64_t faults, wait_ns;
};

struct blocktime {
	pthread_mutex_t lock;
	unsigned nvcpus;
	unsigned nslots;
	unsigned nwaiting;      /* vCPUs waiting */
	_Atomic unsigned nopen; /* waits open, of any thread: installs skip the lock at 0 */
	uint64_t all_since;     /* when nwaiting reached nvcpus */
	uint64_t all_ns;
	uint64_t untracked;
	struct slot s[BLOCKTIME_MAX];
};

int blocktime_create(unsigned nvcpus, struct blocktime **out)
{
	struct blocktime *bt = calloc(1, sizeof(*bt));

	if (!bt)
		return -ENOMEM;
	pthread_mutex_init(&bt->lock, NULL);
	bt->nvcpus = nvcpus;
	*out = bt;
	return 0;
}

void blocktime_destroy(struct blocktime *bt)
{
	if (!bt)
		return;
	pthread_mutex_destroy(&bt->lock);
	free(bt);
}

/* A waiting thread stops waiting: its time goes to its total, and an
 * all-blocked interval (if one was open) ends here. Lock held. */
static void end_wait(struct blocktime *bt, struct slot *s, uint64_t now)
{
	s->waiting = false;
	atomic_fetch_sub_explicit(&bt->nopen, 1, memory_order_relaxed);
	s->faults++;
	s->wait_ns += now - s->since;
	if (!s->vcpu)
		return;
	if (bt->nwaiting == bt->nvcpus)
		bt->all_ns += now - bt->all_since;
	bt->nwaiting--;
}

/* The slot of tid, a new one if there is room, else NULL. Lock held. */
static struct slot *slot_of(struct blocktime *bt, int tid)
{
	for (unsigned i = 0; i < bt->nslots; i++)
		if (bt->s[i].tid == tid)
			return &bt->s[i];
	if (bt->nslots == BLOCKTIME_MAX)
		return NULL;
	bt->s[bt->nslots].tid = tid;
	return &bt->s[bt->nslots++];
}

void blocktime_register_vcpu(struct blocktime *bt, int tid)
{
	pthread_mutex_lock(&bt->lock);
	struct slot *s = slot_of(bt, tid);
	if (s && !s->vcpu) {
		s->vcpu = true;
		if (s->waiting && ++bt->nwaiting == bt->nvcpus)
			bt->all_since = s->since;
	}
	pthread_mutex_unlock(&bt->lock);
}

void blocktime_begin(struct blocktime *bt, int tid, uint64_t addr, uint64_t now)
{
	struct slot *s;

	pthread_mutex_lock(&bt->lock);
	s = slot_of(bt, tid);
	if (!s) {
		bt->untracked++;
	} else if (!s->waiting || s->addr != addr) {
		/* A thread cannot wait for two pages: an open wait on another page
		 * was resolved without us seeing it (e.g. a retried fault). */
		if (s->waiting)
			end_wait(bt, s, now);
		s->waiting = true;
		atomic_fetch_add_explicit(&bt->nopen, 1, memory_order_relaxed);
		s->addr = addr;
		s->since = now;
		if (s->vcpu && ++bt->nwaiting == bt->nvcpus)
			bt->all_since = now;
	}
	pthread_mutex_unlock(&bt->lock);
}

void blocktime_end_range(struct blocktime *bt, uint64_t addr, uint64_t len, uint64_t now)
{
	/* Most installs (fault-around, background prefetch) end no wait. */
	if (!atomic_load_explicit(&bt->nopen, memory_order_relaxed))
		return;
	pthread_mutex_lock(&bt->lock);
	for (unsigned i = 0;
	     atomic_load_explicit(&bt->nopen, memory_order_relaxed) && i < bt->nslots; i++) {
		struct slot *s = &bt->s[i];

		if (s->waiting && s->addr >= addr && s->addr - addr < len)
			end_wait(bt, s, now);
	}
	pthread_mutex_unlock(&bt->lock);
}

void blocktime_end_thread(struct blocktime *bt, int tid, uint64_t now)
{
	pthread_mutex_lock(&bt->lock);
	for (unsigned i = 0; i < bt->nslots; i++)
		if (bt->s[i].tid == tid) {
			if (bt->s[i].waiting)
				end_wait(bt, &bt->s[i], now);
			break;
		}
	pthread_mutex_unlock(&bt->lock);
}

void blocktime_get(struct blocktime *bt, struct blocktime_report *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&bt->lock);
	out->nthreads = bt->nslots;
	for (unsigned i = 0; i < bt->nslots; i++)
		out->t[i] = (struct blocktime_thread){.tid = bt->s[i].tid,
		                                      .vcpu = bt->s[i].vcpu,
		                                      .faults = bt->s[i].faults,
		                                      .wait_ns = bt->s[i].wait_ns};
	out->all_ns = bt->all_ns;
	out->untracked = bt->untracked;
	pthread_mutex_unlock(&bt->lock);
}
