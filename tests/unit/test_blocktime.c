/* Blocktime accounting: per-thread waits, waits ended by someone else's
 * install, and the time every vCPU was blocked at once. */
#include "lazyvm/blocktime.h"
#include "test.h"

static const struct blocktime_thread *thread_of(const struct blocktime_report *r, int tid)
{
	for (unsigned i = 0; i < r->nthreads; i++)
		if (r->t[i].tid == tid)
			return &r->t[i];
	return NULL;
}

static void test_overlap_is_all_blocked(void)
{
	struct blocktime *bt;
	struct blocktime_report r;

	CHECK_EQ(blocktime_create(2, &bt), 0);
	blocktime_register_vcpu(bt, 100);
	blocktime_register_vcpu(bt, 101);
	blocktime_begin(bt, 100, 0x1000, 0);  /* vCPU A waits from 0 */
	blocktime_begin(bt, 101, 0x5000, 10); /* vCPU B from 10: both blocked */
	blocktime_end_range(bt, 0x5000, 0x1000, 30);
	blocktime_end_range(bt, 0x0000, 0x2000, 40);
	blocktime_get(bt, &r);
	CHECK_EQ(r.nthreads, 2);
	CHECK_EQ(thread_of(&r, 100)->wait_ns, 40);
	CHECK_EQ(thread_of(&r, 101)->wait_ns, 20);
	CHECK_EQ(thread_of(&r, 100)->faults, 1);
	CHECK_EQ(r.all_ns, 20); /* [10, 30) */
	blocktime_destroy(bt);
}

static void test_ride_along_and_repeats(void)
{
	struct blocktime *bt;
	struct blocktime_report r;

	CHECK_EQ(blocktime_create(2, &bt), 0);
	blocktime_register_vcpu(bt, 1);
	blocktime_register_vcpu(bt, 2);
	blocktime_begin(bt, 1, 0x3000, 100);
	blocktime_begin(bt, 1, 0x3000, 150);          /* the same fault again: keeps its start */
	blocktime_begin(bt, 2, 0x3000, 120);          /* rides along on the same page */
	blocktime_end_range(bt, 0x2000, 0x4000, 200); /* one fault-around run ends both */
	blocktime_get(bt, &r);
	CHECK_EQ(thread_of(&r, 1)->wait_ns, 100);
	CHECK_EQ(thread_of(&r, 2)->wait_ns, 80);
	CHECK_EQ(r.all_ns, 80);
	/* An install elsewhere ends nothing; a wait on another page closes the open one. */
	blocktime_begin(bt, 1, 0x9000, 300);
	blocktime_end_range(bt, 0x1000, 0x1000, 310);
	blocktime_begin(bt, 1, 0xa000, 320);
	blocktime_end_thread(bt, 1, 330);
	blocktime_get(bt, &r);
	CHECK_EQ(thread_of(&r, 1)->faults, 3);
	CHECK_EQ(thread_of(&r, 1)->wait_ns, 100 + 20 + 10);
	blocktime_destroy(bt);
}

static void test_other_threads_do_not_count_as_vcpus(void)
{
	struct blocktime *bt;
	struct blocktime_report r;

	CHECK_EQ(blocktime_create(1, &bt), 0);
	blocktime_begin(bt, 7, 0x1000, 0); /* the VMM's own thread: not a vCPU */
	blocktime_register_vcpu(bt, 8);
	blocktime_begin(bt, 8, 0x2000, 5);
	blocktime_end_range(bt, 0, 0x3000, 25);
	blocktime_get(bt, &r);
	CHECK_EQ(r.all_ns, 20); /* only vCPU 8's wait */
	CHECK(!thread_of(&r, 7)->vcpu && thread_of(&r, 8)->vcpu);
	CHECK_EQ(thread_of(&r, 7)->wait_ns, 25);
	/* A wait of a non-vCPU thread alone still ends with its page. */
	blocktime_begin(bt, 7, 0x6000, 40);
	blocktime_end_range(bt, 0x6000, 0x1000, 47);
	blocktime_get(bt, &r);
	CHECK_EQ(thread_of(&r, 7)->wait_ns, 25 + 7);
	CHECK_EQ(thread_of(&r, 7)->faults, 2);
	/* A thread that registers while waiting counts from its wait's start. */
	blocktime_begin(bt, 9, 0x4000, 100);
	blocktime_destroy(bt);
	CHECK_EQ(blocktime_create(1, &bt), 0);
	blocktime_begin(bt, 9, 0x4000, 100);
	blocktime_register_vcpu(bt, 9);
	blocktime_end_range(bt, 0x4000, 0x1000, 130);
	blocktime_get(bt, &r);
	CHECK_EQ(r.all_ns, 30);
	/* More threads than slots: counted apart, never crash. */
	for (int t = 0; t < BLOCKTIME_MAX + 5; t++)
		blocktime_begin(bt, 1000 + t, 0x1000, 200);
	blocktime_get(bt, &r);
	CHECK_EQ(r.nthreads, BLOCKTIME_MAX);
	CHECK_EQ(r.untracked, 6);
	blocktime_destroy(bt);
}

TEST_MAIN(TEST(test_overlap_is_all_blocked), TEST(test_ride_along_and_repeats),
          TEST(test_other_threads_do_not_count_as_vcpus))
