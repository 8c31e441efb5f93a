/* The engine's page map in and out, run-length encoded: what one engine hands
 * the next when a VM changes hands (fc-handler's takeover). A page map is two
 * bits a page; a VM's map is mostly long runs (untouched memory, fault-around
 * runs, balloon ranges), so runs are small where the map is not. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/engine.h"
#include "lazyvm/pagemap.h"
#include "engine_internal.h"

size_t engine_regions(const struct engine *eng, struct engine_region *out, size_t max)
{
	for (size_t i = 0; i < eng->nregions && i < max; i++)
		out[i] = eng->regions[i].r;
	return eng->nregions;
}

/* Appends a run, growing the array; merges with the last run when the state
 * is the same and the last run is of the same region. */
static int push_run(struct engine_page_run **runs, size_t *n, size_t *cap, uint64_t pages,
                    enum page_state s, bool merge)
{
	if (merge && *n && (*runs)[*n - 1].state == (uint8_t)s) {
		(*runs)[*n - 1].pages += pages;
		return 0;
	}
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		struct engine_page_run *p = realloc(*runs, nc * sizeof(*p));

		if (!p)
			return -ENOMEM;
		*runs = p;
		*cap = nc;
	}
	(*runs)[(*n)++] = (struct engine_page_run){.pages = pages, .state = (uint8_t)s};
	return 0;
}

int engine_export_pages(const struct engine *eng, struct engine_page_run **runs, size_t *nruns)
{
	struct engine_page_run *out = NULL;
	size_t n = 0, cap = 0;

	for (size_t i = 0; i < eng->nregions; i++) {
		const struct pagemap *pm = eng->regions[i].pm;
		uint64_t np = pagemap_pages(pm), p = 0;
		bool first = true;

		while (p < np) {
			enum page_state s = pagemap_get(pm, p);
			uint64_t end = pagemap_run_end(pm, p);

			/* Running engine: a page being installed may never arrive. */
			if (s == PAGE_INFLIGHT)
				s = PAGE_MISSING;
			if (push_run(&out, &n, &cap, end - p, s, !first) < 0) {
				free(out);
				return -ENOMEM;
			}
			first = false;
			p = end;
		}
	}
	*runs = out;
	*nruns = n;
	return 0;
}

int engine_import_pages(struct engine *eng, const struct engine_page_run *runs, size_t nruns)
{
	size_t k = 0;

	if (eng->workers)
		return -EBUSY;
	/* Check everything first, so a bad description changes nothing. */
	for (size_t i = 0; i < eng->nregions; i++) {
		uint64_t left = pagemap_pages(eng->regions[i].pm);

		while (left) {
			if (k == nruns || runs[k].pages == 0 || runs[k].pages > left ||
			    (runs[k].state != PAGE_MISSING && runs[k].state != PAGE_PRESENT &&
			     runs[k].state != PAGE_REMOVED))
				return -EINVAL;
			left -= runs[k++].pages;
		}
	}
	if (k != nruns)
		return -EINVAL;
	k = 0;
	for (size_t i = 0; i < eng->nregions; i++) {
		struct pagemap *pm = eng->regions[i].pm;
		uint64_t at = 0;

		while (at < pagemap_pages(pm)) {
			pagemap_set_range(pm, at, runs[k].pages, (enum page_state)runs[k].state);
			at += runs[k++].pages;
		}
	}
	return 0;
}
