/* What fault_bench's files share (bench/fault_bench.c: main, the memory file
 * and the runs; bench/fault/: common.c the state and the ways out, floor.c the
 * floor handler, handler.c starting and stopping handlers, touch.c the client's
 * touching threads and one run, report.c statistics and the report, options.c
 * the command line). One binary, build/bench/fault_bench (the Makefile). */
#ifndef LAZYVM_FAULT_BENCH_H
#define LAZYVM_FAULT_BENCH_H

#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lazyvm/fc_client.h"

#define PAGE             4096u
#define MIB              ((uint64_t)1 << 20)
#define SEC_NS           1000000000ull
#define HANDLER_START_NS (5 * SEC_NS) /* a handler must listen within this */
#define HANDLER_STOP_NS  (5 * SEC_NS) /* and exit within this after the run */
#define POLL_STEP_NS     (1000000ull) /* 1 ms between checks while waiting */
#define MAX_THREADS      64u
#define MAX_TLIST        8u
#define MAX_REPS         1000u
#define CHUNK            (1u << 20)        /* file reads for verification */
#define FLOOR_EOF_CHECK  16384u            /* busy floor: empty reads between EOF checks */
#define SEED             0x6c617a79766dull /* fixed: every variant touches pages in the same order */

#define DEF_SIZE       (32 * MIB)
#define DEF_SEQ_SIZE   (256 * MIB)
#define DEF_REPS       5u
#define QUICK_SIZE     (4 * MIB)
#define QUICK_SEQ_SIZE (16 * MIB)

enum kind { FLOOR, LAZYVM };
enum pin { PIN_NONE, PIN_SAME, PIN_SPLIT };
enum intake { BLOCK, BUSY };

struct variant {
	const char *name;
	enum kind kind;
	enum intake intake;
};

#define NVARIANTS 4u
/* floor-block, lazyvm-block, floor-busy, lazyvm-busy: each lazyvm variant
 * follows the floor of the same intake (the report's ratios rely on it). */
extern const struct variant variants[NVARIANTS];

struct run_result {
	double med_us, p99_us, pps, wall_s;
	double handler_cpu_s; /* CPU time the handler used over its whole life */
};

/* Everything the error paths and the signal handler must clean up. */
struct bench_state {
	char dir[PATH_MAX - 64]; /* our temporary directory, "" if none */
	char mem_path[PATH_MAX]; /* the memory file */
	bool mem_created;        /* we made it: delete it at the end */
	char sock_path[PATH_MAX];
	char log_path[PATH_MAX]; /* lazyvm's stdout + stderr, per run */
	volatile pid_t child;    /* the handler running now, 0 if none */
	uint64_t file_size;
	const char *lazyvm;
	unsigned char *expected; /* expected[p]: the byte a touch of page p reads */
	enum pin pin;
	cpu_set_t handler_cpus; /* with --pin: where handlers run (the client's set is ours) */
	double handler_cpu_s;   /* user + system CPU time of the last handler */
};
extern struct bench_state g;

/* The options that reach the runs and the report (options.c fills them). */
struct options {
	uint64_t size, seq_size; /* bytes touched: latency, sequential (0: skip) */
	bool size_set, seq_set;  /* given on the command line */
	unsigned reps, ntl, tlist[MAX_TLIST];
	const char *mem_file; /* --mem-file, NULL if none */
};

/* The byte of page p a touch reads: varies over the page, so a page installed
 * at the wrong offset within the file is caught as well as a wrong page. */
static inline uint64_t byte_off(uint64_t p)
{
	return (p * 2654435761ull) & (PAGE - 1);
}

/* common.c. die and die_log clean up (cleanup()) and exit 1; die_log first
 * shows the tail of the lazyvm handler's log when v is a lazyvm variant. */
void cleanup(void);
void on_signal(int sig);
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void die_log(const struct variant *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
void *xmalloc(size_t n);
int pread_full(int fd, void *buf, size_t len, uint64_t off);
uint64_t splitmix64(uint64_t *s);
uint64_t rand_below(uint64_t *s, uint64_t n);
void sleep_step(void);

/* floor.c: the floor handler, in the forked child; never returns. */
void floor_main(const struct variant *v) __attribute__((noreturn));

/* handler.c: a handler (floor or lazyvm) forked, handed the VM, stopped;
 * stop_handler leaves its CPU time in g.handler_cpu_s. */
void lazyvm_argv(const struct variant *v, const char **argv);
pid_t start_handler(const struct variant *v);
void handoff(const struct variant *v, pid_t pid, struct fc_vm *vm);
void stop_handler(const struct variant *v, pid_t pid);

/* touch.c: one run (a fresh handler and VM), its result in res. */
void run_one(const struct variant *v, uint64_t pages, unsigned nthreads, bool sequential,
             struct run_result *res);

/* report.c. lat: [variant][thread count][rep], seqr: [variant][rep]. */
uint64_t nearest_rank(const uint64_t *sorted, size_t n, double p);
int cmp_u64(const void *a, const void *b);
void fmt_mib(uint64_t bytes, char *buf, size_t len);
void print_report(int argc, char **argv, const struct options *o, const struct run_result *lat,
                  const struct run_result *seqr, uint64_t bench_t0);

/* options.c: exits 2 on bad usage (0 after --help); sets g.pin, g.lazyvm
 * and, with --pin, this process's CPUs and g.handler_cpus. */
void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void parse_options(int argc, char **argv, struct options *o);
int first_cpu(const cpu_set_t *s);

#endif
