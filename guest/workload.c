/* The workload string: jobs from the shared parser (guest/workload_parse.c,
 * include/lazyvm/guest_workload.h has the grammar), the bump allocator that
 * gives every job its memory, and one task per job. */
#include "workload.h"

static struct job jobs[GUEST_MAX_TASKS];
_Static_assert(GUEST_MAX_TASKS == WORKLOAD_MAX_TASKS, "one task per workload part");

int workload_parse(const char *spec, struct job *out, unsigned max, unsigned *n, char *err,
                   size_t errlen)
{
	static struct workload_task tasks[WORKLOAD_MAX_TASKS];
	struct workload_error e;

	if (max > WORKLOAD_MAX_TASKS)
		max = WORKLOAD_MAX_TASKS;
	if (workload_parse_tasks(spec, tasks, max, n, &e) < 0) {
		fmt_format(err, errlen, "bad workload part '%.*s': %s", (int)e.len, spec + e.off,
		           e.why);
		return -1;
	}
	for (unsigned i = 0; i < *n; i++) {
		const struct workload_task *t = &tasks[i];

		memset(&out[i], 0, sizeof(out[i]));
		out[i].kind = t->kind;
		out[i].index = i;
		out[i].size = t->size;
		out[i].count = t->count;
		out[i].crash = t->crash;
		out[i].of = t->of;
		fmt_format(out[i].spec, sizeof(out[i].spec), "%.*s", (int)t->len, spec + t->off);
	}
	return 0;
}

uint64_t job_mem_need(const struct job *j)
{
	struct workload_task t = {.kind = j->kind, .size = j->size};

	return workload_task_mem(&t);
}

unsigned workload_setup(uint64_t heap_start, uint64_t heap_end, void (*task_fn)(void *))
{
	char err[MSG_TEXT_MAX];
	uint64_t need = 0, have = heap_end > heap_start ? heap_end - heap_start : 0;
	uint64_t next = heap_start;
	unsigned n;

	if (workload_parse(boot.workload, jobs, GUEST_MAX_TASKS, &n, err, sizeof(err)))
		guest_fail("%s", err);
	for (unsigned i = 0; i < n; i++)
		need += job_mem_need(&jobs[i]); /* each <= 2 * 4 GiB: no overflow */
	if (need > have)
		guest_fail("workload needs %lu bytes, guest has %lu", need, have);

	/* Every piece is a multiple of PAGE_SIZE from a 2 MiB boundary, so
	 * every page the workloads touch is whole and page-aligned. */
	for (unsigned i = 0; i < n; i++) {
		struct job *j = &jobs[i];

		if (j->kind == JOB_SCAN || j->kind == JOB_RANDOM || j->kind == JOB_EDGE) {
			j->area = (uint8_t *)(uintptr_t)next;
			next += j->size;
		}
		if (j->kind == JOB_RESCAN) { /* the scan job's own pages and size */
			j->area = jobs[j->of].area;
			j->size = jobs[j->of].size;
		}
		if (j->kind == JOB_RANDOM) {
			j->gens = (uint8_t *)(uintptr_t)next;
			next += job_mem_need(j) - j->size;
		}
		task_create(i % boot.nr_vcpus, task_fn, j, j->spec);
	}
	msg_log("workload: %u tasks on %u vCPUs, %lu bytes at 0x%lx", n, boot.nr_vcpus, need,
	        heap_start);
	return n;
}
