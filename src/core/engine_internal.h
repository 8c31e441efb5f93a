/* Private to the fault engine: the structures its two files share. Not public
 * API (that is include/lazyvm/engine.h) and not installed.
 *
 *   engine.c           the fault path: intake, claims, source reads, installs,
 *                      the handler threads and engine_resolve; life cycle,
 *                      status, metrics and page-map queries
 *   engine_prefetch.c  what sits on top of it: working-set recording and
 *                      replay, background prefetch, known-zero pages */
#ifndef LAZYVM_ENGINE_INTERNAL_H
#define LAZYVM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/engine.h"
#include "lazyvm/metrics.h"
#include "lazyvm/pagemap.h"

#define EVENT_BATCH 64u
/* A working-set replay reads this many runs at once: with remote memory the
 * round trips, not the bytes, are what it costs. */
#define PREFETCH_BATCH 256u
/* Source buffer of a worker: a batch reads at most this many bytes, so an engine
 * with huge pages reads fewer messages at a time (see batch_max). MAP_NORESERVE:
 * an engine of small pages only ever touches 256 KiB of it. */
#define WORKER_BUF_BYTES (8u << 20)
#define HUGE_PAGE_MAX    (2u << 20)

struct region {
	struct engine_region r;
	struct pagemap *pm;
	unsigned shift; /* log2(page_size) */
};

struct worker {
	struct engine *eng;
	pthread_t thread;
	bool started;
	struct metrics m;
	char *buf; /* WORKER_BUF_BYTES, for source reads */
};

/* One page a batch will install. */
struct todo {
	struct region *reg;
	uint64_t idx;    /* the faulting page */
	uint32_t npages; /* claimed run [idx, idx + npages): fault-around */
	bool zero;       /* install zeros: the range was removed (npages == 1) */
	char *data;      /* source bytes in the worker's buffer */
	bool loaded;     /* data holds them already (a packed working set): no read */
	uint64_t t0;     /* when its fault message was read */
};

struct engine {
	struct engine_config cfg;
	char name[64];
	struct region *regions; /* sorted by host_addr */
	size_t nregions;
	struct worker *workers;
	pthread_rwlock_t install_lock;
	int stop_efd;
	int event_efd;
	_Atomic bool stopping;
	_Atomic int status;
	pthread_mutex_t error_lock;
	char error[512];
	void *zeros;        /* HUGE_PAGE_MAX zero bytes, for huge pages (no ZEROPAGE there) */
	unsigned batch_max; /* messages per read: every fault of a batch fits in a buffer */
	unsigned nworkers;  /* threads + resolvers */
	/* background prefetch */
	_Atomic uint64_t last_demand_ns; /* last demand fault seen */
	pthread_t bg_thread;
	bool bg_started;
	unsigned bg_slot, bg_chunk;
	uint64_t bg_quiet_ns;
	uint64_t *bg_first;        /* a working set to install first (owned) */
	const void *bg_first_data; /* its pages' bytes, or NULL (borrowed) */
	size_t bg_nfirst;
	bool bg_rest;
	void (*bg_done)(void *arg);
	void *bg_done_arg;
	/* working-set recording: source page numbers installed, in order */
	pthread_mutex_t rec_lock;
	bool recording;
	uint64_t *rec;
	size_t nrec, caprec;
	/* the kernel refuses RWF_NOWAIT on userfaultfd reads (before 6.8) */
	_Atomic bool no_rwf_nowait;
	_Atomic bool nap_warned; /* lost_nonblock said so (engine_intake.c) */
};

static inline uint64_t page_addr(const struct region *reg, uint64_t idx)
{
	return reg->r.host_addr + (idx << reg->shift);
}

/* engine.c: the region holding host address `addr`, or NULL. Regions move
 * only on a REMAP event, under install_lock held for writing. */
struct region *engine_region_find(struct engine *eng, uint64_t addr);

/* engine.c: serves todo[0, n) (n <= PREFETCH_BATCH), runs the caller has
 * claimed, their data going to w's buffer: one source read for the batch, then
 * an install a run. A read or install error stops the engine (engine_status
 * leaves RUNNING) and releases the claims not reached. */
void engine_serve_batch(struct worker *w, struct todo *todo, unsigned n);

/* engine.c: records the first terminal status and its reason (the status
 * leaves RUNNING only after the message is in place) and tells the
 * supervisor and every worker. */
void engine_finish(struct engine *eng, enum engine_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* engine.c: gives claimed pages back uninstalled (the map stays true when a
 * worker stops or must retry). */
void engine_release_todos(struct todo *t, unsigned n);

/* engine.c: fault-around: after the faulting page (claimed, previously
 * `prev`), claims the missing pages right after it, as long as they fit in
 * `room` bytes. Returns the run's length in pages (>= 1). */
uint32_t engine_claim_run(struct engine *eng, struct region *reg, uint64_t idx,
                          enum page_state prev, size_t room);

/* engine_intake.c: a handler thread: poll (block) or spin (busy) on the
 * userfaultfd, read a batch, serve it; until eng->stopping. */
void *engine_worker_main(void *arg);

/* engine_prefetch.c: called for every run installed while eng->recording. */
void engine_record_run(struct engine *eng, struct region *reg, uint64_t idx, uint32_t n);

#endif
