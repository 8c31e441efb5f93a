/* The fault engine. See include/lazyvm/engine.h for the data flow.
 *
 * Ordering rule for removes (balloon MADV_DONTNEED): the kernel makes copies fail
 * with EAGAIN only while a REMOVE event is unread; once it is read, the zap runs
 * concurrently with our installs, and a copy of old snapshot data that lands
 * after the zap would give the guest stale bytes where it must see zeros. So
 * reading the UFFD and marking removed ranges happen under install_lock held for
 * writing, and every install re-checks the page state under it held for reading:
 * a copy either happens before the event is read (then the zap clears it, or it
 * fails with EAGAIN) or sees PAGE_REMOVED and installs zeros. */
#include "lazyvm/engine.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "engine_internal.h"

/* Records the first terminal status and its reason, and tells the supervisor. */
void engine_finish(struct engine *eng, enum engine_status st, const char *fmt, ...)
{
	int expected = ENGINE_RUNNING;
	char msg[sizeof(eng->error)] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
	}
	/* The message is in place before the status leaves RUNNING, so a reader that
	 * sees the status can read the message without the lock. */
	pthread_mutex_lock(&eng->error_lock);
	if (atomic_load(&eng->status) == ENGINE_RUNNING) {
		memcpy(eng->error, msg, sizeof(msg));
		atomic_compare_exchange_strong(&eng->status, &expected, (int)st);
	}
	pthread_mutex_unlock(&eng->error_lock);
	atomic_store(&eng->stopping, true);
	uint64_t one = 1;
	if (write(eng->event_efd, &one, sizeof(one)) < 0)
		(void)0; /* the counter cannot overflow from this one write */
	if (write(eng->stop_efd, &one, sizeof(one)) < 0)
		(void)0;
}

struct region *engine_region_find(struct engine *eng, uint64_t addr)
{
	size_t lo = 0, hi = eng->nregions;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		struct region *reg = &eng->regions[mid];

		if (addr < reg->r.host_addr)
			hi = mid;
		else if (addr - reg->r.host_addr >= reg->r.size)
			lo = mid + 1;
		else
			return reg;
	}
	return NULL;
}

static int install_one(struct worker *w, struct todo *t);

/* Gives claimed pages back uninstalled (the map stays true when a worker
 * stops or must retry). */
void engine_release_todos(struct todo *t, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		for (uint32_t j = 0; j < t[i].npages; j++)
			pagemap_finish(t[i].reg->pm, t[i].idx + j,
			               t[i].zero ? PAGE_REMOVED : PAGE_MISSING);
}

/* Fault-around: after the faulting page (already claimed, previously `prev`),
 * claims the missing pages right after it so they come in the same read and
 * the same install. Returns the run's length in pages (>= 1). */
uint32_t engine_claim_run(struct engine *eng, struct region *reg, uint64_t idx,
                          enum page_state prev, size_t room)
{
	uint32_t run = 1;

	if (prev == PAGE_MISSING && reg->r.page_size == 4096)
		while (run < eng->cfg.fault_around && idx + run < pagemap_pages(reg->pm) &&
		       (run + 1) * 4096 <= room && pagemap_claim_missing(reg->pm, idx + run))
			run++;
	return run;
}

/* Gives a claimed page back (after EAGAIN) and wakes its waiters: they retry
 * the access and fault again, by which time the event that made the kernel
 * refuse the install has been read. */
static void release_and_wake(struct engine *eng, struct todo *t)
{
	engine_release_todos(t, 1);
	uffd_wake(eng->cfg.uffd, page_addr(t->reg, t->idx), t->npages * t->reg->r.page_size);
}

/* Installs a fault-around run page by page: after a remove overlapped it, or
 * when part of it turned out to exist. Each page is re-checked on its own. */
static int install_split(struct worker *w, struct todo *t)
{
	for (uint32_t j = 0; j < t->npages; j++) {
		struct todo one = {.reg = t->reg,
		                   .idx = t->idx + j,
		                   .npages = 1,
		                   .data = t->data + j * t->reg->r.page_size,
		                   .t0 = t->t0};
		int r = install_one(w, &one);

		if (r < 0) {
			struct todo rest = *t;
			rest.idx += j + 1;
			rest.npages -= j + 1;
			engine_release_todos(&rest, 1);
			return r;
		}
		if (j)
			ctr_add(&w->m.pages_around, 1);
	}
	return 0;
}

/* Installs one claimed page, or a claimed fault-around run in one
 * UFFDIO_COPY. Returns 0 (installed, or released for a retry) or -errno after
 * the engine recorded why it stops. */
static int install_one(struct worker *w, struct todo *t)
{
	struct engine *eng = w->eng;
	struct region *reg = t->reg;
	uint64_t ps = reg->r.page_size, len = t->npages * ps, addr;
	bool zero, removed = false;
	int r;

	pthread_rwlock_rdlock(&eng->install_lock);
	addr = page_addr(reg, t->idx); /* under the lock: a remap may move regions */
	/* A remove that overtook this install turns it into a zero install. */
	for (uint32_t j = 0; j < t->npages; j++)
		removed |= pagemap_get(reg->pm, t->idx + j) == PAGE_REMOVED;
	if (removed && t->npages > 1) {
		pthread_rwlock_unlock(&eng->install_lock);
		return install_split(w, t);
	}
	zero = t->zero || removed;
	if (!zero)
		r = uffd_copy(eng->cfg.uffd, addr, t->data, len);
	else if (ps > 4096) /* hugetlbfs has no UFFDIO_ZEROPAGE */
		r = uffd_copy(eng->cfg.uffd, addr, eng->zeros, ps);
	else
		r = uffd_zeropage(eng->cfg.uffd, addr, ps);

	/* ENOENT: the range is not inside one registered VMA. A run that crosses
	 * a VMA boundary (an mprotect'ed hotplug slot, a region mapped in two
	 * pieces) goes in page by page, each inside its own VMA; a single page
	 * that still gets ENOENT has left the userfaultfd (unregistered or
	 * unmapped, which woke its waiters): it is left out, not a failure. */
	if (r == -ENOENT) {
		pthread_rwlock_unlock(&eng->install_lock);
		if (t->npages > 1)
			return install_split(w, t);
		engine_release_todos(t, 1);
		if (!atomic_load_explicit(&w->m.holes, memory_order_relaxed))
			lv_debug("%s: page 0x%" PRIx64 " is in no registered range (UFFDIO_COPY: "
			         "ENOENT): left out",
			         eng->name, addr);
		ctr_add(&w->m.holes, 1);
		return 0;
	}
	enum uffd_outcome o = uffd_classify(r);
	if (o == UFFD_EXISTS && t->npages > 1) {
		/* Part of the run may be in: settle each page on its own. */
		pthread_rwlock_unlock(&eng->install_lock);
		return install_split(w, t);
	}
	if (o == UFFD_DONE || o == UFFD_EXISTS) {
		/* Not INFLIGHT any more only if a remove made it REMOVED and a later
		 * fault claimed it again: both of us installed zeros, either way the
		 * page is now present. */
		for (uint32_t j = 0; j < t->npages; j++)
			if (!pagemap_finish(reg->pm, t->idx + j, PAGE_PRESENT))
				pagemap_set_range(reg->pm, t->idx + j, 1, PAGE_PRESENT);
	}
	pthread_rwlock_unlock(&eng->install_lock);
	if (eng->cfg.blocktime && (o == UFFD_DONE || o == UFFD_EXISTS))
		blocktime_end_range(eng->cfg.blocktime, addr, len, lv_now_ns());

	switch (o) {
	case UFFD_EXISTS:
		ctr_add(&w->m.eexist, 1);
		uffd_wake(eng->cfg.uffd, addr, ps);
		/* fall through */
	case UFFD_DONE:
		/* Zero installs too: a page the snapshot marks zero is part of the
		 * working set (its replay installs it without reading). */
		if (eng->recording)
			engine_record_run(eng, reg, t->idx, t->npages);
		ctr_add(zero ? &w->m.pages_zeroed : &w->m.pages_copied, t->npages);
		ctr_add(&w->m.pages_around, t->npages - 1);
		hist_record(&w->m.latency, lv_now_ns() - t->t0);
		return 0;
	case UFFD_RETRY:
		ctr_add(&w->m.eagain, 1);
		release_and_wake(eng, t);
		return 0;
	case UFFD_GONE:
		engine_finish(eng, ENGINE_GONE,
		              "%s: address space gone while installing 0x%" PRIx64 " (%s)",
		              eng->name, addr, strerror(-r));
		return r;
	case UFFD_FATAL:
	default:
		engine_finish(eng, ENGINE_FAILED,
		              "%s: installing %s page at 0x%" PRIx64 " (%" PRIu64 " bytes): %s",
		              eng->name, zero ? "a zero" : "a", addr, ps, strerror(-r));
		return r;
	}
}

/* Reads the source bytes of a batch's pages (in one batch when there are
 * several) and installs every page. */
void engine_serve_batch(struct worker *w, struct todo *todo, unsigned n)
{
	struct engine *eng = w->eng;
	struct source_req reqs[PREFETCH_BATCH];
	unsigned map[PREFETCH_BATCH], nreq = 0;
	int r = 0;

	for (unsigned i = 0; i < n; i++) {
		if (todo[i].zero || todo[i].loaded)
			continue;
		struct region *reg = todo[i].reg;
		reqs[nreq] =
		    (struct source_req){.buf = todo[i].data,
		                        .off = reg->r.src_off + (todo[i].idx << reg->shift),
		                        .len = todo[i].npages * reg->r.page_size};
		map[nreq++] = i;
	}
	if (nreq == 1)
		r = reqs[0].result =
		    source_read(eng->cfg.source, reqs[0].buf, reqs[0].off, reqs[0].len);
	else if (nreq > 1)
		r = source_read_batch(eng->cfg.source, reqs, nreq);
	if (r < 0) {
		for (unsigned q = 0; q < nreq; q++) {
			if (!reqs[q].result)
				continue;
			struct todo *t = &todo[map[q]];
			char why[512];
			engine_finish(
			    eng, ENGINE_FAILED,
			    "%s: reading page 0x%" PRIx64 " (source offset 0x%" PRIx64
			    ", %zu bytes) from %s: %s",
			    eng->name, page_addr(t->reg, t->idx), reqs[q].off, reqs[q].len,
			    source_describe(eng->cfg.source),
			    source_strerror(eng->cfg.source, reqs[q].result, why, sizeof(why)));
			break;
		}
		engine_release_todos(todo, n);
		return;
	}
	for (unsigned q = 0; q < nreq; q++)
		ctr_add(&w->m.bytes_read, reqs[q].len);
	for (unsigned i = 0; i < n; i++) {
		if (install_one(w, &todo[i]) < 0) {
			engine_release_todos(todo + i + 1, n - i - 1);
			return;
		}
	}
}

int engine_create(const struct engine_config *cfg, struct engine **out)
{
	struct engine *eng;
	int r;

	if (cfg->uffd < 0 || !cfg->source || cfg->threads + cfg->resolvers < 1 ||
	    cfg->threads > 64 || cfg->resolvers > 64 || cfg->fault_around > 64)
		return -EINVAL;
	eng = calloc(1, sizeof(*eng));
	if (!eng)
		return -ENOMEM;
	eng->cfg = *cfg;
	snprintf(eng->name, sizeof(eng->name), "%s", cfg->name ? cfg->name : "engine");
	eng->cfg.name = eng->name;
	eng->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (eng->stop_efd < 0) {
		r = -errno;
		goto err_free;
	}
	eng->event_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (eng->event_efd < 0) {
		r = -errno;
		goto err_stop_efd;
	}
	pthread_rwlock_init(&eng->install_lock, NULL);
	pthread_mutex_init(&eng->error_lock, NULL);
	pthread_mutex_init(&eng->rec_lock, NULL);
	atomic_init(&eng->status, ENGINE_RUNNING);
	*out = eng;
	return 0;

err_stop_efd:
	close(eng->stop_efd);
err_free:
	free(eng);
	return r;
}

int engine_add_region(struct engine *eng, const struct engine_region *r)
{
	uint64_t ps = r->page_size;
	struct region *regs;
	size_t at;
	int err;

	if (eng->workers)
		return -EBUSY;
	if ((ps != 4096 && ps != HUGE_PAGE_MAX) || r->size == 0 || r->host_addr % ps ||
	    r->size % ps || r->host_addr + r->size < r->host_addr)
		return -EINVAL;
	if (r->src_off > source_size(eng->cfg.source) ||
	    r->size > source_size(eng->cfg.source) - r->src_off)
		return -ERANGE;
	for (at = 0; at < eng->nregions && eng->regions[at].r.host_addr < r->host_addr; at++)
		;
	if (at > 0 && eng->regions[at - 1].r.host_addr + eng->regions[at - 1].r.size > r->host_addr)
		return -EEXIST;
	if (at < eng->nregions && r->host_addr + r->size > eng->regions[at].r.host_addr)
		return -EEXIST;
	regs = realloc(eng->regions, (eng->nregions + 1) * sizeof(*regs));
	if (!regs)
		return -ENOMEM;
	eng->regions = regs;
	memmove(&regs[at + 1], &regs[at], (eng->nregions - at) * sizeof(*regs));
	regs[at] = (struct region){.r = *r, .shift = (unsigned)__builtin_ctzll(ps)};
	err = pagemap_create(r->size / ps, &regs[at].pm);
	if (err < 0) {
		memmove(&regs[at], &regs[at + 1], (eng->nregions - at) * sizeof(*regs));
		return err;
	}
	eng->nregions++;
	return 0;
}

int engine_start(struct engine *eng)
{
	uint64_t max_ps = 4096;
	int r;

	if (eng->workers || eng->nregions == 0)
		return eng->workers ? -EBUSY : -EINVAL;
	for (size_t i = 0; i < eng->nregions; i++)
		if (eng->regions[i].r.page_size > max_ps)
			max_ps = eng->regions[i].r.page_size;
	eng->batch_max = (unsigned)(WORKER_BUF_BYTES / max_ps);
	if (eng->batch_max > EVENT_BATCH)
		eng->batch_max = EVENT_BATCH;
	if (max_ps > 4096) {
		eng->zeros =
		    mmap(NULL, HUGE_PAGE_MAX, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (eng->zeros == MAP_FAILED) {
			eng->zeros = NULL;
			return -ENOMEM;
		}
	}
	eng->nworkers = eng->cfg.threads + eng->cfg.resolvers;
	eng->workers = calloc(eng->nworkers, sizeof(*eng->workers));
	if (!eng->workers)
		return -ENOMEM;
	for (unsigned i = 0; i < eng->nworkers; i++) {
		struct worker *w = &eng->workers[i];

		w->eng = eng;
		w->buf = mmap(NULL, WORKER_BUF_BYTES, PROT_READ | PROT_WRITE,
		              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (w->buf == MAP_FAILED) {
			w->buf = NULL;
			r = -ENOMEM;
			goto err_stop;
		}
		if (i >= eng->cfg.threads)
			continue; /* a resolver: driven by engine_resolve, no thread */
		r = -pthread_create(&w->thread, NULL, engine_worker_main, w);
		if (r < 0)
			goto err_stop;
		w->started = true;
	}
	return 0;

err_stop:
	engine_stop(eng);
	return r;
}

void engine_stop_begin(struct engine *eng)
{
	uint64_t one = 1;

	atomic_store(&eng->stopping, true);
	if (write(eng->stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* already signalled to the limit: still stops */
}

int engine_stop(struct engine *eng)
{
	int expected = ENGINE_RUNNING;

	engine_stop_begin(eng);
	engine_background_join(eng);
	for (unsigned i = 0; eng->workers && i < eng->nworkers; i++) {
		if (eng->workers[i].started)
			pthread_join(eng->workers[i].thread, NULL);
		eng->workers[i].started = false;
	}
	atomic_compare_exchange_strong(&eng->status, &expected, ENGINE_STOPPED);
	return 0;
}

void engine_destroy(struct engine *eng)
{
	if (!eng)
		return;
	engine_stop(eng);
	for (unsigned i = 0; eng->workers && i < eng->nworkers; i++)
		if (eng->workers[i].buf)
			munmap(eng->workers[i].buf, WORKER_BUF_BYTES);
	free(eng->workers);
	for (size_t i = 0; i < eng->nregions; i++)
		pagemap_destroy(eng->regions[i].pm);
	free(eng->regions);
	if (eng->zeros)
		munmap(eng->zeros, HUGE_PAGE_MAX);
	close(eng->cfg.uffd);
	close(eng->stop_efd);
	close(eng->event_efd);
	pthread_rwlock_destroy(&eng->install_lock);
	pthread_mutex_destroy(&eng->error_lock);
	pthread_mutex_destroy(&eng->rec_lock);
	free(eng->rec);
	free(eng->bg_first);
	free(eng);
}

int engine_resolve(struct engine *eng, unsigned slot, uint64_t addr, struct engine_run *done)
{
	struct worker *w;
	struct region *reg;
	enum page_state prev;
	uint64_t t0 = lv_now_ns(), idx;

	done->addr = addr;
	done->npages = 0;
	if (!eng->workers || slot >= eng->cfg.resolvers)
		return -EINVAL;
	w = &eng->workers[eng->cfg.threads + slot];
	pthread_rwlock_rdlock(&eng->install_lock);
	reg = engine_region_find(eng, addr);
	pthread_rwlock_unlock(&eng->install_lock);
	if (!reg)
		return -EFAULT;
	idx = (addr - reg->r.host_addr) >> reg->shift;
	ctr_add(&w->m.faults, 1);
	atomic_store_explicit(&eng->last_demand_ns, t0, memory_order_relaxed);
	if (eng->cfg.blocktime)
		blocktime_begin(eng->cfg.blocktime, (int)gettid(), page_addr(reg, idx), t0);
	for (;;) {
		if (engine_status(eng) != ENGINE_RUNNING)
			return -EIO;
		prev = pagemap_claim(reg->pm, idx);
		if (prev == PAGE_PRESENT) {
			ctr_add(&w->m.faults_stale, 1);
			if (eng->cfg.blocktime)
				blocktime_end_thread(eng->cfg.blocktime, (int)gettid(),
				                     lv_now_ns());
			return 0;
		}
		if (prev != PAGE_INFLIGHT)
			break;
		/* Another vCPU or worker is installing it: wait for the outcome. */
		ctr_add(&w->m.faults_shared, 1);
		while (pagemap_get(reg->pm, idx) == PAGE_INFLIGHT &&
		       engine_status(eng) == ENGINE_RUNNING)
			sched_yield();
	}
	/* From here the install (or its failure) ends this thread's wait. */
	struct todo t = {.reg = reg,
	                 .idx = idx,
	                 .npages = engine_claim_run(eng, reg, idx, prev, WORKER_BUF_BYTES),
	                 .zero = prev == PAGE_REMOVED,
	                 .data = w->buf,
	                 .t0 = t0};
	engine_serve_batch(w, &t, 1);
	if (engine_status(eng) != ENGINE_RUNNING)
		return -EIO;
	if (pagemap_get(reg->pm, idx) != PAGE_PRESENT)
		return -EAGAIN;
	done->addr = page_addr(reg, idx);
	done->npages = t.npages;
	return 0;
}

bool engine_page_present(struct engine *eng, uint64_t addr)
{
	struct region *reg = engine_region_find(eng, addr);

	return reg && pagemap_get(reg->pm, (addr - reg->r.host_addr) >> reg->shift) == PAGE_PRESENT;
}

int engine_wake(struct engine *eng, uint64_t addr, uint64_t len)
{
	return uffd_wake(eng->cfg.uffd, addr, len);
}

int engine_event_fd(const struct engine *eng)
{
	return eng->event_efd;
}

enum engine_status engine_status(const struct engine *eng)
{
	return atomic_load(&eng->status);
}

const char *engine_status_name(enum engine_status s)
{
	static const char *const names[] = {"running", "stopped", "gone", "failed"};

	return names[s];
}

const char *engine_error(const struct engine *eng)
{
	/* Written once, before status leaves RUNNING; read after that. */
	return engine_status(eng) == ENGINE_RUNNING ? "" : eng->error;
}

void engine_metrics(const struct engine *eng, struct metrics *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; eng->workers && i < eng->nworkers; i++)
		metrics_add(out, &eng->workers[i].m);
}

void engine_page_counts(const struct engine *eng, uint64_t counts[4])
{
	memset(counts, 0, 4 * sizeof(counts[0]));
	for (size_t i = 0; i < eng->nregions; i++)
		for (int s = 0; s < 4; s++)
			counts[s] += pagemap_count(eng->regions[i].pm, (enum page_state)s);
}
