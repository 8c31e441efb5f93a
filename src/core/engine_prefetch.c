/* What sits on top of the fault engine's fault path (engine.c): working-set
 * recording and replay (REAP), background prefetch, known-zero pages. Every
 * page goes through the same claims and the same engine_serve_batch as a
 * demand fault, so a prefetch and a fault never install a page twice. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/engine.h"
#include "lazyvm/log.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/units.h"
#include "engine_internal.h"

/* Appends a run's source page numbers to the working-set record. */
void engine_record_run(struct engine *eng, struct region *reg, uint64_t idx, uint32_t n)
{
	uint64_t first = (reg->r.src_off + (idx << reg->shift)) / 4096;
	uint64_t count = (uint64_t)n << (reg->shift - 12);

	pthread_mutex_lock(&eng->rec_lock);
	if (eng->nrec + count > eng->caprec) {
		size_t cap = eng->caprec ? eng->caprec * 2 : 4096;
		while (cap < eng->nrec + count)
			cap *= 2;
		uint64_t *p = realloc(eng->rec, cap * sizeof(*p));
		if (!p) {
			eng->recording = false; /* out of memory: stop recording, serve on */
			pthread_mutex_unlock(&eng->rec_lock);
			return;
		}
		eng->rec = p;
		eng->caprec = cap;
	}
	for (uint64_t i = 0; i < count; i++)
		eng->rec[eng->nrec++] = first + i;
	pthread_mutex_unlock(&eng->rec_lock);
}

void engine_record_start(struct engine *eng)
{
	eng->recording = true;
}

size_t engine_record_get(struct engine *eng, uint64_t **pages)
{
	size_t n;

	pthread_mutex_lock(&eng->rec_lock);
	n = eng->nrec;
	*pages = n ? malloc(n * sizeof(**pages)) : NULL;
	if (*pages)
		memcpy(*pages, eng->rec, n * sizeof(**pages));
	else
		n = 0;
	pthread_mutex_unlock(&eng->rec_lock);
	return n;
}

/* The region holding source page `sp` (4 KiB units), and its page index. */
static struct region *region_of_src(struct engine *eng, uint64_t sp, uint64_t *idx)
{
	uint64_t off = sp * 4096;

	for (size_t i = 0; i < eng->nregions; i++) {
		struct region *reg = &eng->regions[i];
		if (off >= reg->r.src_off && off - reg->r.src_off < reg->r.size) {
			*idx = (off - reg->r.src_off) >> reg->shift;
			return reg;
		}
	}
	return NULL;
}

int engine_prefetch(struct engine *eng, unsigned slot, const uint64_t *pages, size_t n,
                    const void *data, uint64_t *installed)
{
	struct worker *w;
	struct todo todo[PREFETCH_BATCH];
	unsigned nt = 0;
	size_t used = 0;

	*installed = 0;
	if (!eng->workers || slot >= eng->cfg.resolvers)
		return -EINVAL;
	w = &eng->workers[eng->cfg.threads + slot];
	for (size_t i = 0; i <= n; i++) {
		struct region *reg = NULL;
		uint64_t idx = 0;
		bool zero = false;

		if (i < n && (reg = region_of_src(eng, pages[i], &idx)) &&
		    reg->r.page_size == 4096) {
			enum page_state prev = pagemap_claim(reg->pm, idx);
			if (prev == PAGE_REMOVED)
				zero = true; /* known zero: installed as a zero page, not read */
			else if (prev != PAGE_MISSING)
				reg = NULL; /* already in, or being installed */
		} else {
			reg = NULL; /* outside the regions, or a huge page */
		}
		/* Merge into the last run when it continues it (for given bytes,
		 * consecutive entries are consecutive in data too). */
		if (reg && !zero && nt && !todo[nt - 1].zero && todo[nt - 1].reg == reg &&
		    todo[nt - 1].idx + todo[nt - 1].npages == idx &&
		    (data || used + 4096 <= WORKER_BUF_BYTES)) {
			todo[nt - 1].npages++;
			used += data ? 0 : 4096;
			continue;
		}
		if (nt && (i == n || nt == PREFETCH_BATCH ||
		           (reg && !zero && used + 4096 > WORKER_BUF_BYTES))) {
			/* A long replay in the background must not hold up engine_stop. */
			if (atomic_load(&eng->stopping)) {
				engine_release_todos(todo, nt);
				if (reg)
					pagemap_finish(reg->pm, idx,
					               zero ? PAGE_REMOVED : PAGE_MISSING);
				return -ECANCELED;
			}
			engine_serve_batch(w, todo, nt);
			if (engine_status(eng) != ENGINE_RUNNING) {
				if (reg)
					pagemap_finish(reg->pm, idx,
					               zero ? PAGE_REMOVED : PAGE_MISSING);
				return -EIO;
			}
			for (unsigned k = 0; k < nt; k++)
				*installed += todo[k].npages;
			nt = 0;
			used = 0;
		}
		if (reg) {
			char *at = zero ? NULL : data ? (char *)data + i * 4096 : w->buf + used;

			todo[nt++] = (struct todo){.reg = reg,
			                           .idx = idx,
			                           .npages = 1,
			                           .zero = zero,
			                           .data = at,
			                           .loaded = data && !zero,
			                           .t0 = lv_now_ns()};
			used += zero || data ? 0 : 4096;
		}
	}
	return 0;
}

/* Background prefetch: walks every region for missing pages and installs them
 * a chunk (up to bg_chunk contiguous pages, one read, one copy) at a time. It
 * yields to demand: while faults arrived in the last bg_quiet_ns it sleeps, so
 * a demand fault waits at most for the one chunk in flight (CRIU's lazy-pages
 * daemon backs off the same way). Ends when nothing is missing. */
static void *background_main(void *arg)
{
	struct engine *eng = arg;
	struct worker *w = &eng->workers[eng->cfg.threads + eng->bg_slot];

	if (eng->bg_nfirst) {
		uint64_t installed = 0, t0 = lv_now_ns();
		int r = engine_prefetch(eng, eng->bg_slot, eng->bg_first, eng->bg_nfirst,
		                        eng->bg_first_data, &installed);

		if (r < 0)
			return NULL; /* the engine stopped: it says why */
		ctr_add(&w->m.pages_prefetched, installed);
		lv_info("%s: working set replayed: %llu of its %zu pages installed in %.1f ms",
		        eng->name, (unsigned long long)installed, eng->bg_nfirst,
		        (double)(lv_now_ns() - t0) / 1e6);
	}
	for (size_t r = 0; r < eng->nregions && eng->bg_rest; r++) {
		struct region *reg = &eng->regions[r];
		uint64_t idx = 0, n = pagemap_pages(reg->pm);

		if (reg->r.page_size != 4096)
			continue;
		while (!atomic_load(&eng->stopping) && engine_status(eng) == ENGINE_RUNNING) {
			uint64_t now = lv_now_ns();

			if (now - atomic_load_explicit(&eng->last_demand_ns, memory_order_relaxed) <
			    eng->bg_quiet_ns) {
				lv_sleep_ns(eng->bg_quiet_ns / 2);
				continue;
			}
			idx = pagemap_find(reg->pm, idx, PAGE_MISSING);
			if (idx >= n)
				break;
			if (!pagemap_claim_missing(reg->pm, idx))
				continue; /* a demand fault took it meanwhile */
			uint32_t run = 1;
			while (run < eng->bg_chunk && idx + run < n &&
			       pagemap_claim_missing(reg->pm, idx + run))
				run++;
			struct todo t = {
			    .reg = reg, .idx = idx, .npages = run, .data = w->buf, .t0 = now};
			engine_serve_batch(w, &t, 1);
			ctr_add(&w->m.pages_background, run);
			idx += run;
		}
	}
	/* Nothing missing any more; pages demand faults were installing at the
	 * end of the pass are in once nothing is INFLIGHT. */
	for (size_t r = 0; r < eng->nregions && eng->bg_done; r++)
		while (!atomic_load(&eng->stopping) && engine_status(eng) == ENGINE_RUNNING &&
		       pagemap_count(eng->regions[r].pm, PAGE_INFLIGHT) +
		               pagemap_count(eng->regions[r].pm, PAGE_MISSING) >
		           0)
			lv_sleep_ns(100 * 1000);
	if (eng->bg_done && !atomic_load(&eng->stopping) && engine_status(eng) == ENGINE_RUNNING)
		eng->bg_done(eng->bg_done_arg);
	return NULL;
}

int engine_background(struct engine *eng, const struct engine_bg *bg)
{
	int r;

	if (!eng->workers || bg->slot >= eng->cfg.resolvers || eng->bg_started ||
	    bg->chunk_pages < 1 || (uint64_t)bg->chunk_pages * 4096 > WORKER_BUF_BYTES)
		return -EINVAL;
	free(eng->bg_first);
	eng->bg_first = NULL;
	eng->bg_nfirst = 0;
	if (bg->nfirst) {
		eng->bg_first = malloc(bg->nfirst * sizeof(*eng->bg_first));
		if (!eng->bg_first)
			return -ENOMEM;
		memcpy(eng->bg_first, bg->first, bg->nfirst * sizeof(*eng->bg_first));
		eng->bg_nfirst = bg->nfirst;
	}
	eng->bg_first_data = bg->first_data;
	eng->bg_slot = bg->slot;
	eng->bg_chunk = bg->chunk_pages;
	eng->bg_quiet_ns = bg->quiet_ns;
	eng->bg_rest = bg->rest;
	/* "Every page is in" means something only after the whole walk. */
	eng->bg_done = bg->rest ? bg->done : NULL;
	eng->bg_done_arg = bg->arg;
	r = -pthread_create(&eng->bg_thread, NULL, background_main, eng);
	if (r == 0)
		eng->bg_started = true;
	return r;
}

int engine_background_start(struct engine *eng, unsigned slot, unsigned chunk_pages,
                            uint64_t quiet_ns, void (*done)(void *arg), void *arg)
{
	struct engine_bg bg = {.slot = slot,
	                       .chunk_pages = chunk_pages,
	                       .quiet_ns = quiet_ns,
	                       .rest = true,
	                       .done = done,
	                       .arg = arg};

	return engine_background(eng, &bg);
}

void engine_background_join(struct engine *eng)
{
	if (eng->bg_started) {
		pthread_join(eng->bg_thread, NULL);
		eng->bg_started = false;
	}
}

int engine_mark_zero(struct engine *eng, uint64_t addr, uint64_t len)
{
	if (eng->workers)
		return -EBUSY;
	for (uint64_t a = addr; a < addr + len;) {
		struct region *reg = engine_region_find(eng, a);
		if (!reg || reg->r.page_size != 4096 || a % 4096 || len % 4096)
			return -EINVAL;
		uint64_t idx = (a - reg->r.host_addr) >> reg->shift;
		uint64_t n = (reg->r.host_addr + reg->r.size - a) / 4096;
		if (n > (addr + len - a) / 4096)
			n = (addr + len - a) / 4096;
		pagemap_set_range(reg->pm, idx, n, PAGE_REMOVED);
		a += n * 4096;
	}
	return 0;
}
