/* The workload parser the guest and `lazyvm run` share (guest/workload_parse.c). */
#include "lazyvm/guest_abi.h"
#include "lazyvm/guest_workload.h"
#include "test.h"

static struct workload_task tasks[WORKLOAD_MAX_TASKS];

static void test_good_strings(void)
{
	const char *w = "scan:16M+random:8k:1000+compute:100000+edge:64k+rescan:0+crash:pf";
	unsigned n;
	struct workload_error e;

	CHECK_OK(workload_parse_tasks(w, tasks, WORKLOAD_MAX_TASKS, &n, &e));
	CHECK_EQ(n, 6);
	CHECK_EQ(tasks[0].kind, JOB_SCAN);
	CHECK_EQ(tasks[0].size, 16 << 20);
	CHECK_EQ(tasks[1].kind, JOB_RANDOM);
	CHECK_EQ(tasks[1].size, 8192);
	CHECK_EQ(tasks[1].count, 1000);
	CHECK_EQ(tasks[2].count, 100000);
	CHECK_EQ(tasks[3].kind, JOB_EDGE);
	CHECK_EQ(tasks[4].kind, JOB_RESCAN);
	CHECK_EQ(tasks[4].of, 0);
	CHECK_EQ(tasks[5].crash, CRASH_PF);
	CHECK_EQ(tasks[1].off, 9); /* "random:8k:1000" */
	CHECK_EQ(tasks[1].len, 14);
	CHECK_EQ(workload_task_mem(&tasks[0]), 16 << 20);
	CHECK_EQ(workload_task_mem(&tasks[1]), 8192 + 4096); /* + a generation byte a page */
	CHECK_EQ(workload_task_mem(&tasks[2]), 0);
	CHECK_OK(workload_parse_tasks("", tasks, WORKLOAD_MAX_TASKS, &n, &e));
	CHECK_EQ(n, 0);
}

/* Each bad string names its part (off, len) and what is wrong. */
static void test_bad_strings(void)
{
	static const struct {
		const char *w, *part, *why;
	} bad[] = {
	    {"scan:x", "scan:x", "not a number"},
	    {"scan:4M+scan:5000", "scan:5000", "multiple of 4k"},
	    {"scan:0", "scan:0", "positive multiple"},
	    {"scan:8G", "scan:8G", "larger than any guest"},
	    {"scan:18446744073709551616", "scan:18446744073709551616", "not a number"},
	    {"random:1M", "random:1M", "expected random:SIZE:COUNT"},
	    {"compute:1099511627777", "compute:1099511627777", "below 2^40"},
	    {"edge:32k", "edge:32k", "at least 64k"},
	    {"rescan:0", "rescan:0", "earlier scan task"},
	    {"compute:1+rescan:0", "rescan:0", "earlier scan task"},
	    {"crash:segv", "crash:segv", "crash:ud"},
	    {"scan:1M+", "", "empty part"},
	    {"scan:1M++scan:1M", "", "empty part"},
	    {"a:b:c:d:e", "a:b:c:d:e", "too many ':'"},
	    {"dance:1", "dance:1", "unknown task"},
	};
	struct workload_error e;
	unsigned n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_EQ(workload_parse_tasks(bad[i].w, tasks, WORKLOAD_MAX_TASKS, &n, &e), -1);
		CHECK(!e.whole);
		CHECK_EQ(e.len, strlen(bad[i].part));
		CHECK(!strncmp(bad[i].w + e.off, bad[i].part, e.len));
		if (!strstr(e.why, bad[i].why))
			fprintf(stderr, "  '%s': '%s'\n", bad[i].w, e.why);
		CHECK(strstr(e.why, bad[i].why));
	}
}

static void test_limits(void)
{
	char w[GUEST_WORKLOAD_MAX + 8] = "";
	struct workload_error e;
	unsigned n;

	/* 33 parts do not fit in 255 characters: too many with a smaller max. */
	CHECK_EQ(workload_parse_tasks("scan:4k+scan:4k+scan:4k", tasks, 2, &n, &e), -1);
	CHECK(strstr(e.why, "too many tasks"));
	while (strlen(w) + 8 < GUEST_WORKLOAD_MAX - 1)
		strcat(w, "scan:4k+");
	strcat(w, "scan:4k");
	CHECK(strlen(w) < GUEST_WORKLOAD_MAX);
	CHECK_OK(workload_parse_tasks(w, tasks, WORKLOAD_MAX_TASKS, &n, &e));
	strcat(w, "+scan:4k");
	CHECK_EQ(workload_parse_tasks(w, tasks, WORKLOAD_MAX_TASKS, &n, &e), -1);
	CHECK(e.whole && strstr(e.why, "255 characters"));
}

TEST_MAIN(TEST(test_good_strings), TEST(test_bad_strings), TEST(test_limits))
