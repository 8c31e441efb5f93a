/* The userfault bitmap and resolving a page through the fault engine (ufpages.h). */
#include "ufpages.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_SHIFT   12
#define PAGE_MASK_4K (~(uint64_t)4095)
#define RETRIES      1000

int uf_bitmap_create(struct uf_bitmap *bm, uint64_t nbits)
{
	memset(bm, 0, sizeof(*bm));
	bm->nbits = nbits;
	bm->bytes =
	    (size_t)((nbits + UF_BITS_PER_WORD - 1) / UF_BITS_PER_WORD * sizeof(unsigned long));
	bm->bytes = (bm->bytes + 4095) & ~(size_t)4095;
	/* A memfd so that a handler process can map the same bitmap. */
	bm->memfd = memfd_create("lazyvm-userfault-bitmap", MFD_CLOEXEC);
	if (bm->memfd < 0)
		return -errno;
	if (ftruncate(bm->memfd, (off_t)bm->bytes) < 0)
		goto err;
	bm->bits = mmap(NULL, bm->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, bm->memfd, 0);
	if (bm->bits == MAP_FAILED)
		goto err;
	memset((void *)bm->bits, 0xff, bm->bytes);
	return 0;
err:;
	int r = -errno;
	close(bm->memfd);
	bm->memfd = -1;
	bm->bits = NULL;
	return r;
}

void uf_bitmap_destroy(struct uf_bitmap *bm)
{
	if (bm->bits)
		munmap((void *)bm->bits, bm->bytes);
	if (bm->memfd >= 0)
		close(bm->memfd);
	bm->bits = NULL;
	bm->memfd = -1;
}

/* Bits past the end read as clear: the range is checked before the word is
 * loaded (a guest-supplied gfn must not reach past the bitmap's memory). */
bool uf_bitmap_test(const struct uf_bitmap *bm, uint64_t bit)
{
	if (bit >= bm->nbits)
		return false;
	return (atomic_load_explicit(&bm->bits[bit / UF_BITS_PER_WORD], memory_order_acquire) >>
	        (bit % UF_BITS_PER_WORD)) &
	       1;
}

void uf_bitmap_clear(struct uf_bitmap *bm, uint64_t first, uint64_t n)
{
	for (uint64_t b = first; b < first + n && b < bm->nbits; b++)
		atomic_fetch_and_explicit(&bm->bits[b / UF_BITS_PER_WORD],
		                          ~(1ul << (b % UF_BITS_PER_WORD)), memory_order_release);
}

uint64_t uf_bitmap_count(const struct uf_bitmap *bm)
{
	uint64_t n = 0;

	for (uint64_t b = 0; b < bm->nbits; b++)
		n += uf_bitmap_test(bm, b);
	return n;
}

int uf_pages_resolve(struct uf_pages *pg, struct vm *vm, unsigned slot, uint64_t gpa)
{
	uint64_t gfn = gpa >> PAGE_SHIFT;
	struct engine_run run;
	uint8_t *host;
	int r, tries = 0;

	if (gfn >= pg->bm.nbits || !uf_bitmap_test(&pg->bm, gfn))
		return 0;
	host = guest_mem_ptr(&vm->mem, gpa & PAGE_MASK_4K, 4096);
	if (!host)
		return 0;
	do
		r = engine_resolve(pg->eng, slot, (uint64_t)(uintptr_t)host, &run);
	while (r == -EAGAIN && ++tries < RETRIES);
	if (r < 0) {
		vm_fail(vm, "resolver %u: fetching guest page 0x%" PRIx64 ": %s", slot,
		        gpa & PAGE_MASK_4K, r == -EIO ? engine_error(pg->eng) : strerror(-r));
		return r;
	}
	/* The run may start before or after this page within its slot; the
	 * bits follow the host addresses one for one. */
	if (run.npages)
		uf_bitmap_clear(&pg->bm, gfn + (run.addr - (uint64_t)(uintptr_t)host) / 4096,
		                run.npages);
	else
		uf_bitmap_clear(&pg->bm, gfn, 1);
	return 1;
}
