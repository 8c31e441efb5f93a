/* Post-copy "blocktime" (QEMU's term): how long threads (vCPUs) spent blocked
 * waiting for pages, per thread and in total, and how long *every* vCPU was
 * blocked at once (QEMU's "total blocktime": time in which the VM made no
 * progress at all).
 *
 * A thread's wait starts when its fault is seen (a UFFD message read, with the
 * faulting thread's id; or a vCPU's userfault exit) and ends when the page it
 * waits for is installed, by whoever installs it: the wait of a thread that
 * rides along on another thread's fault ends with that install too. Threads
 * are keyed by their tid; the VMM maps tids to vCPUs afterwards.
 *
 * Cost: a mutex and a scan of at most BLOCKTIME_MAX slots per fault and per
 * install, against faults of 5-50 us (measured in BENCHMARKS). */
#ifndef LAZYVM_BLOCKTIME_H
#define LAZYVM_BLOCKTIME_H

#include <stdbool.h>
#include <stdint.h>

#define BLOCKTIME_MAX 64 /* threads tracked; faults of further threads are counted apart */

struct blocktime_thread {
	int tid;
	bool vcpu;        /* registered as a vCPU */
	uint64_t faults;  /* waits that ended */
	uint64_t wait_ns; /* their total */
};

struct blocktime_report {
	unsigned nthreads;
	struct blocktime_thread t[BLOCKTIME_MAX];
	uint64_t all_ns;    /* time in which all `nvcpus` vCPUs were blocked at once */
	uint64_t untracked; /* faults of threads beyond BLOCKTIME_MAX */
};

struct blocktime;

/* nvcpus: how many registered vCPU threads blocked at once count as "all". */
int blocktime_create(unsigned nvcpus, struct blocktime **out);
void blocktime_destroy(struct blocktime *bt);
/* Thread tid is a vCPU: its waits count towards "all blocked". Other threads
 * (the VMM's own accesses) are tracked per thread only. */
void blocktime_register_vcpu(struct blocktime *bt, int tid);

/* Thread `tid` blocked on the page at `addr` at `now`. A thread waits for one
 * page at a time; a repeated fault on the page it waits for keeps the start. */
void blocktime_begin(struct blocktime *bt, int tid, uint64_t addr, uint64_t now);
/* The pages [addr, addr + len) arrived at `now`: ends every wait on them. */
void blocktime_end_range(struct blocktime *bt, uint64_t addr, uint64_t len, uint64_t now);
/* Thread `tid`'s wait ended (it resolved its fault itself). */
void blocktime_end_thread(struct blocktime *bt, int tid, uint64_t now);

/* A copy of the totals so far (waits still open are not counted). */
void blocktime_get(struct blocktime *bt, struct blocktime_report *out);

#endif
