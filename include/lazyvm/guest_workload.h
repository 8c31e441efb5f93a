/* The workload string's grammar and its one parser, shared by the guest (which
 * runs the tasks) and the host (lazyvm run refuses a bad string as bad usage
 * before it boots anything). Freestanding: stdint.h, stddef.h and stdbool.h
 * only, no allocation, no I/O.
 *
 * Parts joined with '+', each one of
 *   scan:SIZE  random:SIZE:COUNT  compute:N  edge:SIZE  rescan:K  crash:ud|pf|div|hang
 * SIZE is a positive multiple of 4 KiB with an optional binary suffix k, M or
 * G (either case), at most GUEST_MEM_MAX; edge:SIZE a multiple of 16k, at
 * least 64k. COUNT and N are plain decimal below 2^40; K is the index (from
 * 0) of an earlier scan task. At most WORKLOAD_MAX_TASKS parts, and the whole
 * string fits in guest_boot_info.workload (GUEST_WORKLOAD_MAX - 1 bytes).
 */
#ifndef LAZYVM_GUEST_WORKLOAD_H
#define LAZYVM_GUEST_WORKLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WORKLOAD_MAX_TASKS 32u
#define WORKLOAD_PAGE_SIZE 4096ull

enum job_kind { JOB_SCAN, JOB_RANDOM, JOB_COMPUTE, JOB_CRASH, JOB_EDGE, JOB_RESCAN };
enum crash_kind { CRASH_UD, CRASH_PF, CRASH_DIV, CRASH_HANG };

/* One parsed part. */
struct workload_task {
	enum job_kind kind;
	uint64_t size;         /* scan, random, edge: bytes, a multiple of 4 KiB */
	uint64_t count;        /* random: touches; compute: steps */
	enum crash_kind crash; /* crash */
	uint32_t of;           /* rescan: the index of the scan task it reads again */
	uint32_t off, len;     /* where the part stands in the string */
};

/* What is wrong with a string: `why`, and the part it is about (off, len in
 * the string), unless `whole`: then it is about the whole string. */
struct workload_error {
	const char *why;
	uint32_t off, len;
	bool whole;
};

/* Splits `spec` at '+' into tasks[0 .. *n), at most `max`. Returns 0, or -1
 * with err filled. An empty spec is zero tasks. */
int workload_parse_tasks(const char *spec, struct workload_task *tasks, unsigned max, unsigned *n,
                         struct workload_error *err);

/* Bytes of guest heap one task needs (its pages, and their generation bytes). */
uint64_t workload_task_mem(const struct workload_task *t);

#endif
