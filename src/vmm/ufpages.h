/* The pages of a VM restored with exit intake, as the exit path sees them:
 * the userfault bitmap (one bit per guest frame, set = "not here yet") and the
 * fault engine that brings a page in. The lowest layer of the exit path
 * (docs/ARCHITECTURE.md, "The way of an exit"): the exit backends (exit.h)
 * and async page faults (apf.h) both resolve pages through it; it calls
 * nothing above it. */
#ifndef LAZYVM_UFPAGES_H
#define LAZYVM_UFPAGES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/engine.h"
#include "vmm.h"

struct uf_bitmap {
	int memfd;
	_Atomic unsigned long *bits;
	uint64_t nbits;
	size_t bytes;
};

#define UF_BITS_PER_WORD (8 * sizeof(unsigned long))

int uf_bitmap_create(struct uf_bitmap *bm, uint64_t nbits); /* every bit set */
void uf_bitmap_destroy(struct uf_bitmap *bm);
bool uf_bitmap_test(const struct uf_bitmap *bm, uint64_t bit);
/* Clears [first, first + n) with release ordering: whoever sees a clear bit
 * also sees the page's contents. */
void uf_bitmap_clear(struct uf_bitmap *bm, uint64_t first, uint64_t n);
uint64_t uf_bitmap_count(const struct uf_bitmap *bm);

struct uf_pages {
	struct uf_bitmap bm;
	struct engine *eng; /* resolvers: one slot per vCPU, then the I/O side's */
};

/* Whether the page holding gpa is still missing. */
static inline bool uf_pages_missing(const struct uf_pages *pg, uint64_t gpa)
{
	return uf_bitmap_test(&pg->bm, gpa >> 12);
}

/* Makes the page holding gpa present through resolver `slot` (a vCPU index, or
 * an I/O worker's slot after them) and clears its bits (the whole run the
 * engine installed). 1 installed now, 0 already there, < 0 after vm_fail. */
int uf_pages_resolve(struct uf_pages *pg, struct vm *vm, unsigned slot, uint64_t gpa);

#endif
