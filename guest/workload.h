/* Workloads: the tasks named by boot_info.workload, each with a prepare phase
 * (before the snapshot point) and a run phase (after it) that verifies what it
 * reads and reports one GUEST_MSG_RESULT:
 *   status  0 pass, 1 fail
 *   arg0    task index (from 0, in workload order)
 *   arg1    bytes verified: scan SIZE, random COUNT * 4096, others 0
 *   arg2    scan, random: pages (touches) that did not match, 0 on a pass;
 *           compute: the final x (include/lazyvm/guest_compute.h says how to recompute it)
 *   arg3    scan, random: GPA of the first bad page, 0 if none; compute: N
 *   text    the task's part of the workload string, e.g. "scan:16M"
 * The first bad page of a task is also described in a LOG line.
 */
#ifndef GUEST_WORKLOAD_H
#define GUEST_WORKLOAD_H

#include "guest.h"
#include "lazyvm/guest_workload.h"

struct job {
	enum job_kind kind;
	uint32_t index;          /* task index, from 0 in workload order */
	uint64_t size;           /* scan, random: bytes, a multiple of PAGE_SIZE */
	uint64_t count;          /* random: touches; compute: steps */
	enum crash_kind crash;   /* crash */
	uint8_t *area;           /* scan, random: the pages */
	uint8_t *gens;           /* random: one generation byte per page */
	uint64_t x;              /* compute: the state, kept across the snapshot */
	uint32_t of;             /* rescan: the index of the scan job whose area it reads */
	char spec[MSG_TEXT_MAX]; /* the part of the workload string, e.g. "scan:16M" */
};

/* Splits `spec` at '+' into jobs[0 .. *n). On a bad part returns -1 with a
 * message naming it in err. No I/O and no allocation, so a host test can run
 * it. An empty spec is zero jobs. */
int workload_parse(const char *spec, struct job *jobs, unsigned max, unsigned *n, char *err,
                   size_t errlen);
/* Bytes of heap one job needs (its pages, and their generation bytes). */
uint64_t job_mem_need(const struct job *j);
/* Gives the jobs their memory from [heap_start, heap_end) and creates one
 * task per job (task i on vCPU i % nr_vcpus) running task_fn(job). vCPU 0,
 * once. Returns the number of tasks, or calls guest_fail(). */
unsigned workload_setup(uint64_t heap_start, uint64_t heap_end, void (*task_fn)(void *));

/* jobs.c; both run in the job's own task. */
void job_prepare(struct job *j, uint64_t seed);
/* Verifies, reports GUEST_MSG_RESULT; returns its status (0 pass). */
int job_run(struct job *j, uint64_t seed);

#endif
