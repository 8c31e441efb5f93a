/* The userfault bitmap: every bit set at creation, clears, and bits past the
 * end (a guest-supplied gfn) read as clear without touching memory beyond it. */
#include "test.h"
#include "../../src/vmm/ufpages.h"

static void test_set_clear_count(void)
{
	struct uf_bitmap bm;

	CHECK_EQ(uf_bitmap_create(&bm, 130), 0);
	CHECK_EQ(uf_bitmap_count(&bm), 130);
	CHECK(uf_bitmap_test(&bm, 0) && uf_bitmap_test(&bm, 129));
	uf_bitmap_clear(&bm, 60, 10);
	CHECK(!uf_bitmap_test(&bm, 60) && !uf_bitmap_test(&bm, 69) && uf_bitmap_test(&bm, 70));
	CHECK_EQ(uf_bitmap_count(&bm), 120);
	uf_bitmap_destroy(&bm);
}

/* A test that loaded the word of bit 2^40 before checking the range would read
 * 128 GiB past the bitmap and crash the case (as the old order did). */
static void test_out_of_range_reads_nothing(void)
{
	struct uf_bitmap bm;

	CHECK_EQ(uf_bitmap_create(&bm, 64), 0);
	CHECK(!uf_bitmap_test(&bm, 64));
	CHECK(!uf_bitmap_test(&bm, 1ull << 40));
	CHECK(!uf_bitmap_test(&bm, UINT64_MAX));
	CHECK(uf_bitmap_test(&bm, 63));
	uf_bitmap_destroy(&bm);
}

TEST_MAIN(TEST(test_set_clear_count), TEST(test_out_of_range_reads_nothing))
