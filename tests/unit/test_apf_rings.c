/* The exitless rings: layout, SPSC order, the NOTIFY_ARMED wake-up rule. */
#include <pthread.h>

#include "../../src/vmm/apf_rings.h"
#include "test.h"

static void test_layout_and_order(void)
{
	static struct apf_rings_page p;
	struct apf_ring_entry e;

	apf_rings_init(&p);
	CHECK_EQ(p.version, 1);
	CHECK_EQ(p.ring_size, 64);
	CHECK_EQ(p.entry_size, 16);
	CHECK(apf_ring_empty(&p.notify));
	for (uint64_t i = 0; i < 64; i++)
		CHECK(apf_ring_push(&p.notify,
		                    &(struct apf_ring_entry){.gpa = i << 12, .flags = i + 1}));
	CHECK(!apf_ring_push(&p.notify, &(struct apf_ring_entry){.gpa = 1})); /* full */
	CHECK_EQ(apf_ring_count(&p.notify), 64);
	for (uint64_t i = 0; i < 64; i++) {
		CHECK(apf_ring_pop(&p.notify, &e));
		CHECK_EQ(e.gpa, i << 12);
		CHECK_EQ(e.flags, i + 1);
	}
	CHECK(!apf_ring_pop(&p.notify, &e));
	/* Indices wrap past 2^32 the same way. */
	atomic_store(&p.complete.head, UINT32_MAX - 1);
	atomic_store(&p.complete.tail, UINT32_MAX - 1);
	for (int i = 0; i < 4; i++)
		CHECK(apf_ring_push(&p.complete, &(struct apf_ring_entry){.gpa = (uint64_t)i}));
	for (int i = 0; i < 4; i++) {
		CHECK(apf_ring_pop(&p.complete, &e));
		CHECK_EQ(e.gpa, i);
	}
}

static void test_wakeup_rule(void)
{
	static struct apf_rings_page p;

	apf_rings_init(&p);
	CHECK(!apf_rings_need_wakeup(&p)); /* consumer awake: no signal */
	atomic_fetch_or(&p.flags, APF_RINGS_NOTIFY_ARMED);
	CHECK(apf_rings_need_wakeup(&p));  /* armed: one signal */
	CHECK(!apf_rings_need_wakeup(&p)); /* and only one per sleep */
}

#define N 200000
static struct apf_rings_page shared;

static void *producer(void *arg)
{
	for (uint64_t i = 0; i < N; i++)
		while (
		    !apf_ring_push(&shared.notify, &(struct apf_ring_entry){.gpa = i, .flags = ~i}))
			;
	return arg;
}

/* Two threads, 200000 entries through 64 slots: nothing lost, reordered or torn. */
static void test_spsc_threads(void)
{
	pthread_t t;
	struct apf_ring_entry e;

	apf_rings_init(&shared);
	CHECK_OK(pthread_create(&t, NULL, producer, NULL));
	for (uint64_t i = 0; i < N; i++) {
		while (!apf_ring_pop(&shared.notify, &e))
			;
		CHECK_EQ(e.gpa, i);
		CHECK(e.flags == ~i);
	}
	CHECK_OK(pthread_join(t, NULL));
}

TEST_MAIN(TEST(test_layout_and_order), TEST(test_wakeup_rule), TEST(test_spsc_threads))
