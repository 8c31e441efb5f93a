#include "lazyvm/pagemap.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#define PAGES_PER_WORD 32u
#define STATE_MASK     3ull

struct pagemap {
	uint64_t npages;
	size_t nwords;
	_Atomic uint64_t *words; /* mmap'd, MAP_NORESERVE: zero pages cost nothing */
};

int pagemap_create(uint64_t npages, struct pagemap **out)
{
	struct pagemap *pm;
	size_t bytes;

	if (npages == 0 || npages > (UINT64_MAX >> 4))
		return -EINVAL;
	pm = calloc(1, sizeof(*pm));
	if (!pm)
		return -ENOMEM;
	pm->npages = npages;
	pm->nwords = (size_t)((npages + PAGES_PER_WORD - 1) / PAGES_PER_WORD);
	bytes = pm->nwords * sizeof(uint64_t);
	/* PAGE_MISSING is 0, so fresh anonymous memory is a map of missing pages and
	 * a huge sparse region costs only the words that are ever written. */
	pm->words = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
	                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (pm->words == MAP_FAILED) {
		free(pm);
		return -ENOMEM;
	}
	*out = pm;
	return 0;
}

void pagemap_destroy(struct pagemap *pm)
{
	if (!pm)
		return;
	munmap(pm->words, pm->nwords * sizeof(uint64_t));
	free(pm);
}

uint64_t pagemap_pages(const struct pagemap *pm)
{
	return pm->npages;
}

size_t pagemap_footprint(const struct pagemap *pm)
{
	return pm->nwords * sizeof(uint64_t);
}

const char *page_state_name(enum page_state s)
{
	static const char *const names[] = {"missing", "in flight", "present", "removed"};

	return names[s & STATE_MASK];
}

static inline unsigned shift_of(uint64_t idx)
{
	return (unsigned)(idx % PAGES_PER_WORD) * 2;
}

enum page_state pagemap_get(const struct pagemap *pm, uint64_t idx)
{
	assert(idx < pm->npages);
	uint64_t w = atomic_load_explicit(&pm->words[idx / PAGES_PER_WORD], memory_order_acquire);

	return (enum page_state)((w >> shift_of(idx)) & STATE_MASK);
}

enum page_state pagemap_claim(struct pagemap *pm, uint64_t idx)
{
	assert(idx < pm->npages);
	_Atomic uint64_t *word = &pm->words[idx / PAGES_PER_WORD];
	unsigned sh = shift_of(idx);
	uint64_t old = atomic_load_explicit(word, memory_order_acquire);

	for (;;) {
		enum page_state s = (enum page_state)((old >> sh) & STATE_MASK);

		if (s == PAGE_INFLIGHT || s == PAGE_PRESENT)
			return s;
		uint64_t new = (old & ~(STATE_MASK << sh)) | ((uint64_t)PAGE_INFLIGHT << sh);
		if (atomic_compare_exchange_weak_explicit(word, &old, new, memory_order_acq_rel,
		                                          memory_order_acquire))
			return s;
	}
}

bool pagemap_claim_missing(struct pagemap *pm, uint64_t idx)
{
	assert(idx < pm->npages);
	_Atomic uint64_t *word = &pm->words[idx / PAGES_PER_WORD];
	unsigned sh = shift_of(idx);
	uint64_t old = atomic_load_explicit(word, memory_order_acquire);

	for (;;) {
		if (((old >> sh) & STATE_MASK) != PAGE_MISSING)
			return false;
		uint64_t new = old | ((uint64_t)PAGE_INFLIGHT << sh);
		if (atomic_compare_exchange_weak_explicit(word, &old, new, memory_order_acq_rel,
		                                          memory_order_acquire))
			return true;
	}
}

bool pagemap_finish(struct pagemap *pm, uint64_t idx, enum page_state to)
{
	assert(idx < pm->npages);
	_Atomic uint64_t *word = &pm->words[idx / PAGES_PER_WORD];
	unsigned sh = shift_of(idx);
	uint64_t old = atomic_load_explicit(word, memory_order_acquire);

	for (;;) {
		if (((old >> sh) & STATE_MASK) != PAGE_INFLIGHT)
			return false;
		uint64_t new = (old & ~(STATE_MASK << sh)) | ((uint64_t)to << sh);
		if (atomic_compare_exchange_weak_explicit(word, &old, new, memory_order_acq_rel,
		                                          memory_order_acquire))
			return true;
	}
}

/* Pattern with state s in every 2-bit slot of a word. */
static inline uint64_t fill_of(enum page_state s)
{
	return 0x5555555555555555ull * (uint64_t)s;
}

/* Mask of the slots [lo, hi) of a word, slot indices in pages. */
static inline uint64_t slot_mask(unsigned lo, unsigned hi)
{
	uint64_t hi_mask = hi >= PAGES_PER_WORD ? ~0ull : (1ull << (hi * 2)) - 1;

	return hi_mask & ~((1ull << (lo * 2)) - 1);
}

void pagemap_set_range(struct pagemap *pm, uint64_t first, uint64_t count, enum page_state s)
{
	assert(first <= pm->npages && count <= pm->npages - first);
	uint64_t end = first + count;
	uint64_t fill = fill_of(s);

	while (first < end) {
		uint64_t w = first / PAGES_PER_WORD;
		unsigned lo = (unsigned)(first % PAGES_PER_WORD);
		unsigned hi = end - w * PAGES_PER_WORD >= PAGES_PER_WORD
		                  ? PAGES_PER_WORD
		                  : (unsigned)(end - w * PAGES_PER_WORD);
		uint64_t mask = slot_mask(lo, hi);

		if (mask == ~0ull) {
			atomic_store_explicit(&pm->words[w], fill, memory_order_release);
		} else {
			uint64_t old = atomic_load_explicit(&pm->words[w], memory_order_acquire);
			while (!atomic_compare_exchange_weak_explicit(
			    &pm->words[w], &old, (old & ~mask) | (fill & mask),
			    memory_order_acq_rel, memory_order_acquire))
				;
		}
		first = (w + 1) * PAGES_PER_WORD;
	}
}

/* Bit i*2 set in the result iff slot i of w holds s. */
static inline uint64_t slots_equal(uint64_t w, enum page_state s)
{
	uint64_t x = ~(w ^ fill_of(s)); /* both bits of a slot set where equal */

	return x & (x >> 1) & 0x5555555555555555ull;
}

uint64_t pagemap_count(const struct pagemap *pm, enum page_state s)
{
	uint64_t n = 0;

	for (size_t w = 0; w < pm->nwords; w++) {
		uint64_t eq =
		    slots_equal(atomic_load_explicit(&pm->words[w], memory_order_relaxed), s);

		if (w == pm->nwords - 1 && pm->npages % PAGES_PER_WORD)
			eq &= slot_mask(0, (unsigned)(pm->npages % PAGES_PER_WORD));
		n += (uint64_t)__builtin_popcountll(eq);
	}
	return n;
}

/* The first index >= from whose state is (equal) or is not (!equal) s. */
static uint64_t scan(const struct pagemap *pm, uint64_t from, enum page_state s, bool equal)
{
	for (uint64_t w = from / PAGES_PER_WORD; w < pm->nwords; w++) {
		uint64_t eq =
		    slots_equal(atomic_load_explicit(&pm->words[w], memory_order_relaxed), s);

		if (!equal)
			eq = ~eq & 0x5555555555555555ull;
		if (w == from / PAGES_PER_WORD)
			eq &= slot_mask((unsigned)(from % PAGES_PER_WORD), PAGES_PER_WORD);
		if (eq) {
			uint64_t idx = w * PAGES_PER_WORD + (uint64_t)__builtin_ctzll(eq) / 2;
			return idx < pm->npages ? idx : pm->npages;
		}
	}
	return pm->npages;
}

uint64_t pagemap_find(const struct pagemap *pm, uint64_t from, enum page_state s)
{
	return scan(pm, from, s, true);
}

uint64_t pagemap_run_end(const struct pagemap *pm, uint64_t from)
{
	return scan(pm, from, pagemap_get(pm, from), false);
}
