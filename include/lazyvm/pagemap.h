/* Per-page state of one memory region: two bits a page, lock-free.
 *
 * States and their transitions (the only ones the engine performs):
 *   MISSING  --claim-->  INFLIGHT --finish--> PRESENT
 *   REMOVED  --claim-->  INFLIGHT              (installed as zeros)
 *   any      --set_range(REMOVED)-->  REMOVED  (balloon / MADV_DONTNEED)
 * A claim is won by exactly one caller, so concurrent faults on one page cost one
 * source read and one install. Memory: 2 bits per page, reserved with
 * MAP_NORESERVE and touched only where used: 1 TiB of 4 KiB pages costs at most
 * 64 MiB (0.006%). */
#ifndef LAZYVM_PAGEMAP_H
#define LAZYVM_PAGEMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum page_state {
	PAGE_MISSING = 0,
	PAGE_INFLIGHT = 1,
	PAGE_PRESENT = 2,
	PAGE_REMOVED = 3,
};

struct pagemap;

/* Creates a map of npages pages, all MISSING. Returns 0 or -ENOMEM/-EINVAL. */
int pagemap_create(uint64_t npages, struct pagemap **out);
void pagemap_destroy(struct pagemap *pm);

uint64_t pagemap_pages(const struct pagemap *pm);
/* Bytes of address space reserved for the state bits. */
size_t pagemap_footprint(const struct pagemap *pm);

const char *page_state_name(enum page_state s);

/* idx must be < pagemap_pages(); callers check guest- or peer-supplied indices
 * before calling (asserted). */
enum page_state pagemap_get(const struct pagemap *pm, uint64_t idx);

/* Tries MISSING -> INFLIGHT or REMOVED -> INFLIGHT. Returns the state seen:
 * the caller owns the page (and must finish it) iff that is MISSING or REMOVED. */
enum page_state pagemap_claim(struct pagemap *pm, uint64_t idx);

/* MISSING -> INFLIGHT only (never a REMOVED page: those must read zeros, and
 * fault-around only reads ahead from the source). True when won. */
bool pagemap_claim_missing(struct pagemap *pm, uint64_t idx);

/* INFLIGHT -> to. Returns false, changing nothing, when the page is no longer
 * INFLIGHT (a remove overtook the install). */
bool pagemap_finish(struct pagemap *pm, uint64_t idx, enum page_state to);

/* Sets pages [first, first + count) to s unconditionally. */
void pagemap_set_range(struct pagemap *pm, uint64_t first, uint64_t count, enum page_state s);

/* Number of pages in state s. O(pages / 32). */
uint64_t pagemap_count(const struct pagemap *pm, enum page_state s);

/* First index >= from whose state is s, or pagemap_pages() when none. */
uint64_t pagemap_find(const struct pagemap *pm, uint64_t from, enum page_state s);

/* The end of the run of pages in the state of page `from`: the first index
 * > from whose state differs, or pagemap_pages(). Whole words at a time. */
uint64_t pagemap_run_end(const struct pagemap *pm, uint64_t from);

#endif
