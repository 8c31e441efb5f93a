/* The fault engine: serves the faults of one address space (one VM) from a page
 * source through a userfaultfd.
 *
 * A fault's way: intake (a batch of UFFD messages) -> page map (claim: the first
 * fault on a page owns it, later ones ride along) -> source read (batched) ->
 * install (UFFDIO_COPY, or zeros for removed ranges) -> the kernel wakes every
 * thread waiting on the page.
 *
 * Lifecycle: engine_create, engine_add_region (the caller has registered the
 * ranges with the UFFD, or a peer such as Firecracker did), engine_start,
 * then engine_stop and engine_destroy. Nothing here exits the process. */
#ifndef LAZYVM_ENGINE_H
#define LAZYVM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/metrics.h"
#include "lazyvm/source.h"

enum engine_intake {
	ENGINE_INTAKE_BLOCK, /* poll(2) on the UFFD and a stop eventfd */
	ENGINE_INTAKE_BUSY,  /* spin on non-blocking reads; measured here to halve latency */
};

struct engine_config {
	int uffd;              /* the engine takes ownership and closes it */
	struct source *source; /* borrowed; must outlive the engine */
	unsigned threads;      /* handler threads, threads + resolvers >= 1 */
	unsigned resolvers;    /* slots for synchronous engine_resolve callers (one per
	                        * vCPU for exit-based intake), each with its own
	                        * buffer and metrics; 0 when only UFFD messages come */
	enum engine_intake intake;
	uint64_t busy_idle_ns; /* BUSY: after this long without a message, block in
	                        * poll until the next one (0: spin for ever) */
	const char *name;      /* for messages, e.g. "vm pid 1234" */
	/* Install up to this many pages per fault: the faulting page and the
	 * missing ones right after it, read from the source in one piece and
	 * installed in one UFFDIO_COPY (Linux's fault-around for file mappings
	 * does 16). 0 or 1: the faulting page only. Small pages only; <= 64. */
	unsigned fault_around;
	/* Optional (borrowed): waits of faulting threads are accounted here, by
	 * the tid in each UFFD message (UFFD_FEATURE_THREAD_ID) or of the thread
	 * calling engine_resolve. */
	struct blocktime *blocktime;
};

/* One registered range of the address space and where its bytes live. */
struct engine_region {
	uint64_t host_addr;
	uint64_t size;
	uint64_t src_off;   /* offset of the range's first byte in the source */
	uint64_t page_size; /* 4096, or 2 MiB for hugetlbfs: one fault installs one page */
};

enum engine_status {
	ENGINE_RUNNING,
	ENGINE_STOPPED, /* engine_stop was called */
	ENGINE_GONE,    /* the address space went away (the VM exited) */
	ENGINE_FAILED,  /* a fatal error: see engine_error() */
};

struct engine;

int engine_create(const struct engine_config *cfg, struct engine **out);

/* Adds a region before engine_start. Returns -EINVAL for a zero, unaligned or
 * overlapping region, or one that reaches beyond the source. */
int engine_add_region(struct engine *eng, const struct engine_region *r);

/* Starts the handler threads. Returns 0 or -errno (nothing started then). */
int engine_start(struct engine *eng);

/* Stops and joins the threads (idempotent). Returns 0. */
int engine_stop(struct engine *eng);

/* Tells the threads to stop without waiting for them: engine_stop then joins.
 * Stopping many engines, begin each first, so that their batches in flight
 * finish side by side. */
void engine_stop_begin(struct engine *eng);

/* Stops if needed, closes the UFFD and frees everything. */
void engine_destroy(struct engine *eng);

/* An eventfd that becomes readable when the engine stops serving on its own
 * (GONE or FAILED), for a supervisor's poll loop. */
int engine_event_fd(const struct engine *eng);

enum engine_status engine_status(const struct engine *eng);
const char *engine_status_name(enum engine_status s);

/* The first fatal error, with context (address, offset, source, errno text), or
 * "" when there was none. */
const char *engine_error(const struct engine *eng);

/* Merged metrics of all threads into *out (zeroed first). Safe while running. */
void engine_metrics(const struct engine *eng, struct metrics *out);

/* Resolves the fault at host address `addr` synchronously, from the calling
 * thread (exit-based intake: a vCPU thread that left KVM_RUN on a missing page).
 * `slot` < cfg.resolvers, one per concurrent caller. Returns 0 once the page is
 * present (installed here, with fault-around, or by someone else meanwhile),
 * -EAGAIN when the kernel refused the install for now (retry), -EFAULT outside
 * every region, -EIO when the engine has stopped (engine_error says why). */
struct engine_run {
	uint64_t addr;   /* first page this call installed */
	uint32_t npages; /* how many (fault-around); 0 when someone else did it */
};
int engine_resolve(struct engine *eng, unsigned slot, uint64_t addr, struct engine_run *done);

/* Working-set recording (REAP): from now on, every page installed from the
 * source is appended, in order, as a source page number (4 KiB units).
 * engine_record_get copies what was recorded (malloc'd; free it). */
void engine_record_start(struct engine *eng);
size_t engine_record_get(struct engine *eng, uint64_t **pages);

/* Installs the given source pages (a recorded working set) through resolver
 * `slot`: pages already in are skipped, the rest are merged into contiguous
 * runs, read in batches and installed a run per UFFDIO_COPY. With `data` (a
 * packed working set: page i's bytes at data + i * 4096, already checked by
 * the caller) nothing is read. *installed gets the number installed. 0, or
 * -EIO when the engine stopped (engine_error), -ECANCELED at engine_stop. */
int engine_prefetch(struct engine *eng, unsigned slot, const uint64_t *pages, size_t n,
                    const void *data, uint64_t *installed);

/* Starts background prefetch through resolver `slot`: every missing page,
 * region by region, chunk_pages contiguous pages a read; paused while demand
 * faults arrived within quiet_ns. Stops by itself when nothing is missing, or
 * at engine_stop. `done` (optional) is called from the background thread once
 * every page is in (present, or known zero), not when it stops early.
 * 0 or -errno. */
int engine_background_start(struct engine *eng, unsigned slot, unsigned chunk_pages,
                            uint64_t quiet_ns, void (*done)(void *arg), void *arg);
/* The general form: first the source pages `first` (a working set, copied;
 * pages already in are skipped), in their order, then, with `rest`, every
 * other missing page as engine_background_start does. Counted in
 * pages_prefetched and pages_background. */
struct engine_bg {
	unsigned slot, chunk_pages;
	uint64_t quiet_ns;
	const uint64_t *first;
	size_t nfirst;
	const void *first_data; /* their bytes (see engine_prefetch), borrowed: NULL reads */
	bool rest;
	void (*done)(void *arg);
	void *arg;
};
int engine_background(struct engine *eng, const struct engine_bg *bg);

/* Waits for the background thread to end (every page in, or the engine
 * stopped or failed). */
void engine_background_join(struct engine *eng);

/* Before engine_start: the pages of [addr, addr + len) are known to be zero
 * (the page source says so, e.g. a migration source's zero-page map). They
 * are never read: a fault on one installs a zero page. 0, -EINVAL (outside
 * the regions, unaligned, huge pages), -EBUSY once started. */
int engine_mark_zero(struct engine *eng, uint64_t addr, uint64_t len);

/* Is the page at host address addr installed? */
bool engine_page_present(struct engine *eng, uint64_t addr);

/* UFFDIO_WAKE over [addr, addr + len): lets threads blocked on faults there
 * retry their access (used to release vCPUs after the VMM has made the memory
 * inaccessible, when the engine failed and no page will come). */
int engine_wake(struct engine *eng, uint64_t addr, uint64_t len);

/* The page map, run-length encoded, for handing a VM from one engine to
 * another (fc-handler's takeover, docs/ARCHITECTURE.md): region by region in
 * host address order, each region's pages as runs that never cross into the
 * next region. */
struct engine_page_run {
	uint64_t pages;
	uint8_t state; /* enum page_state: MISSING, PRESENT or REMOVED, never INFLIGHT */
};

/* The regions as they are now (a whole-region REMAP moves one), in host
 * address order: up to `max` into out; returns how many there are. */
size_t engine_regions(const struct engine *eng, struct engine_region *out, size_t max);

/* Exports the page map into *runs (malloc'd; free it), *nruns runs. Exact
 * only once engine_stop has joined every thread, which leaves nothing
 * INFLIGHT; on a running engine it is a best-effort picture (an INFLIGHT page
 * is exported as MISSING: a later fault on it finds it present, EEXIST). 0 or
 * -ENOMEM. */
int engine_export_pages(const struct engine *eng, struct engine_page_run **runs, size_t *nruns);

/* Before engine_start: sets every page's state from runs exported by an
 * engine with the same regions. PRESENT pages are then never read again and
 * REMOVED pages install zeros. 0; -EBUSY once started; -EINVAL (nothing
 * changed) when the runs do not cover each region exactly or name INFLIGHT or
 * an unknown state. */
int engine_import_pages(struct engine *eng, const struct engine_page_run *runs, size_t nruns);

/* Page counts over all regions (for reports and tests). */
void engine_page_counts(const struct engine *eng, uint64_t counts[4]);

#endif
