#include <pthread.h>
#include <stdatomic.h>

#include "lazyvm/pagemap.h"
#include "test.h"

static void test_states_and_claims(void)
{
	struct pagemap *pm;

	CHECK_OK(pagemap_create(100, &pm));
	CHECK_EQ(pagemap_pages(pm), 100);
	CHECK_EQ(pagemap_count(pm, PAGE_MISSING), 100);
	CHECK_EQ(pagemap_claim(pm, 7), PAGE_MISSING);  /* won */
	CHECK_EQ(pagemap_claim(pm, 7), PAGE_INFLIGHT); /* second claimer loses */
	CHECK_EQ(pagemap_get(pm, 7), PAGE_INFLIGHT);
	CHECK(pagemap_finish(pm, 7, PAGE_PRESENT));
	CHECK(!pagemap_finish(pm, 7, PAGE_PRESENT)); /* no longer in flight */
	CHECK_EQ(pagemap_claim(pm, 7), PAGE_PRESENT);
	CHECK_EQ(pagemap_get(pm, 6), PAGE_MISSING);
	CHECK_EQ(pagemap_get(pm, 8), PAGE_MISSING);
	pagemap_set_range(pm, 7, 1, PAGE_REMOVED);
	CHECK_EQ(pagemap_claim(pm, 7), PAGE_REMOVED); /* removed pages are claimable */
	CHECK_EQ(pagemap_get(pm, 7), PAGE_INFLIGHT);
	CHECK_EQ(pagemap_count(pm, PAGE_INFLIGHT), 1);
	CHECK_EQ(pagemap_count(pm, PAGE_MISSING), 99);
	pagemap_destroy(pm);
	CHECK_EQ(pagemap_create(0, &pm), -EINVAL);
}

static void test_ranges_across_words(void)
{
	struct pagemap *pm;
	const uint64_t n = 1000;

	CHECK_OK(pagemap_create(n, &pm));
	/* Ranges that start and end inside words and span whole words. */
	pagemap_set_range(pm, 5, 200, PAGE_PRESENT);
	pagemap_set_range(pm, 31, 2, PAGE_REMOVED);
	pagemap_set_range(pm, 990, 10, PAGE_REMOVED);
	for (uint64_t i = 0; i < n; i++) {
		enum page_state want = PAGE_MISSING;
		if (i >= 5 && i < 205)
			want = PAGE_PRESENT;
		if (i == 31 || i == 32 || i >= 990)
			want = PAGE_REMOVED;
		CHECK_EQ(pagemap_get(pm, i), want);
	}
	CHECK_EQ(pagemap_count(pm, PAGE_PRESENT), 198);
	CHECK_EQ(pagemap_count(pm, PAGE_REMOVED), 12);
	CHECK_EQ(pagemap_count(pm, PAGE_MISSING), n - 210);
	CHECK_EQ(pagemap_find(pm, 0, PAGE_PRESENT), 5);
	CHECK_EQ(pagemap_find(pm, 31, PAGE_PRESENT), 33);
	CHECK_EQ(pagemap_find(pm, 205, PAGE_PRESENT), n);
	CHECK_EQ(pagemap_find(pm, 5, PAGE_MISSING), 205);
	CHECK_EQ(pagemap_find(pm, 0, PAGE_INFLIGHT), n);
	CHECK_EQ(pagemap_find(pm, 991, PAGE_REMOVED), 991);
	pagemap_set_range(pm, 0, n, PAGE_MISSING);
	CHECK_EQ(pagemap_count(pm, PAGE_MISSING), n);
	pagemap_destroy(pm);
}

/* 1 TiB of 4 KiB pages: the map must not need more than 0.1% of it. */
static void test_footprint_of_a_terabyte(void)
{
	struct pagemap *pm;
	const uint64_t pages = (1ull << 40) / 4096;

	CHECK_OK(pagemap_create(pages, &pm));
	CHECK(pagemap_footprint(pm) <= (1ull << 40) / 1000);
	CHECK_EQ(pagemap_footprint(pm), pages / 4);
	/* Touch both ends; the middle stays untouched (MAP_NORESERVE). */
	CHECK_EQ(pagemap_claim(pm, pages - 1), PAGE_MISSING);
	CHECK_EQ(pagemap_claim(pm, 0), PAGE_MISSING);
	CHECK_EQ(pagemap_find(pm, 1, PAGE_INFLIGHT), pages - 1);
	pagemap_destroy(pm);
}

#define RACE_PAGES 4096
#define RACERS     4
static struct pagemap *race_pm;
static _Atomic unsigned race_wins[RACERS];

static void *racer(void *arg)
{
	unsigned id = (unsigned)(uintptr_t)arg;

	for (uint64_t i = 0; i < RACE_PAGES; i++) {
		uint64_t idx = (i * 2654435761u + id) % RACE_PAGES; /* different orders */
		if (pagemap_claim(race_pm, idx) == PAGE_MISSING) {
			atomic_fetch_add(&race_wins[id], 1);
			CHECK(pagemap_finish(race_pm, idx, PAGE_PRESENT));
		}
	}
	return NULL;
}

/* Every page is won by exactly one claimer, however the claims interleave. */
static void test_concurrent_claims(void)
{
	pthread_t t[RACERS];
	unsigned total = 0;

	CHECK_OK(pagemap_create(RACE_PAGES, &race_pm));
	for (unsigned i = 0; i < RACERS; i++)
		CHECK_OK(pthread_create(&t[i], NULL, racer, (void *)(uintptr_t)i));
	for (unsigned i = 0; i < RACERS; i++)
		CHECK_OK(pthread_join(t[i], NULL));
	for (unsigned i = 0; i < RACERS; i++)
		total += race_wins[i];
	CHECK_EQ(total, RACE_PAGES);
	CHECK_EQ(pagemap_count(race_pm, PAGE_PRESENT), RACE_PAGES);
	pagemap_destroy(race_pm);
}

/* pagemap_run_end against a page-by-page walk, over word boundaries. */
static void test_run_end(void)
{
	struct pagemap *pm;
	unsigned seed = 7;

	CHECK_OK(pagemap_create(1000, &pm));
	CHECK_EQ(pagemap_run_end(pm, 0), 1000);
	CHECK_EQ(pagemap_run_end(pm, 999), 1000);
	for (uint64_t p = 0; p < 1000;) { /* runs of 1 to 80 pages */
		uint64_t n = 1 + (uint64_t)rand_r(&seed) % 80;
		if (n > 1000 - p)
			n = 1000 - p;
		pagemap_set_range(pm, p, n, (enum page_state)(rand_r(&seed) % 4));
		p += n;
	}
	for (uint64_t p = 0; p < 1000; p++) {
		uint64_t e = p + 1;
		while (e < 1000 && pagemap_get(pm, e) == pagemap_get(pm, p))
			e++;
		CHECK_EQ(pagemap_run_end(pm, p), e);
	}
	pagemap_destroy(pm);
}

TEST_MAIN(TEST(test_states_and_claims), TEST(test_ranges_across_words),
          TEST(test_footprint_of_a_terabyte), TEST(test_concurrent_claims), TEST(test_run_end))
