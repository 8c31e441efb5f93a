/* fault_bench's command line: --help, the options, their checks (exit 2 on
 * bad usage), the lazyvm binary to run and the CPU placement. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault_bench.h"
#include "lazyvm/units.h"

static const char usage_text[] =
    "Usage: fault_bench [OPTIONS]\n"
    "\n"
    "Compares lazyvm's fc-handler with the floor (the least any userfaultfd handler\n"
    "must do: read a fault, pread the page, UFFDIO_COPY it), both serving the same\n"
    "memory file, in one run. This process is the client: it maps the VM memory,\n"
    "hands the userfaultfd to the handler as Firecracker does, and times the first\n"
    "touch of every page. Variants: floor-block, lazyvm-block, floor-busy,\n"
    "lazyvm-busy, interleaved in a shuffled order in every repetition.\n"
    "\n"
    "Tests:\n"
    "  latency     T threads (each of --threads) touch disjoint shares of the first\n"
    "              --size bytes, in random order; median and p99 of the touch\n"
    "              latency, pages per second\n"
    "  sequential  one thread touches the first --seq-size bytes in address order;\n"
    "              total seconds\n"
    "\n"
    "Options:\n"
    "  --mem-file PATH   memory file to serve (default: a file of random bytes,\n"
    "                    max(--size, --seq-size) + 4 KiB, created under $TMPDIR or\n"
    "                    /tmp and deleted at the end); its last page is the untimed\n"
    "                    warm-up page\n"
    "  --size SIZE       bytes touched by the latency test (default 32M; 0 = skip)\n"
    "  --seq-size SIZE   bytes touched by the sequential test (default 256M; 0 = skip)\n"
    "  --reps N          repetitions (default 5); the report gives medians over them\n"
    "  --threads LIST    touching threads of the latency test (default 1,2)\n"
    "  --quick           smoke test: --size 4M --seq-size 16M --reps 1 (explicit\n"
    "                    options win)\n"
    "  --pin none|same|split  CPU placement (default none: the scheduler decides);\n"
    "                    same: handler and client on the first allowed CPU; split:\n"
    "                    handler on the last allowed CPU, client on the others\n"
    "  --lazyvm PATH     the lazyvm binary (default: ../lazyvm next to this binary,\n"
    "                    else $B/lazyvm, else build/lazyvm)\n"
    "  -h, --help        this text\n"
    "\n"
    "The Markdown report goes to stdout, progress to stderr. Exit status: 0 after a\n"
    "complete run, 1 on an error (a handler that fails, does not start within 5 s or\n"
    "serves a wrong byte), 2 on bad usage.\n";

void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("fault_bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nRun 'fault_bench --help' for the options.\n", stderr);
	exit(2);
}

static uint64_t parse_size_opt(const char *opt, const char *val)
{
	uint64_t v;

	if (lv_parse_size(val, &v) < 0)
		usage_error("%s: '%s' is not a size (e.g. 4096, 4M, 1G)", opt, val);
	if (v % PAGE)
		usage_error("%s: %s is not a multiple of 4 KiB", opt, val);
	return v;
}

static unsigned parse_uint_opt(const char *opt, const char *val, unsigned lo, unsigned hi)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(val, &end, 10);
	if (errno || end == val || *end || val[0] == '-' || v < lo || v > hi)
		usage_error("%s: '%s' is not a whole number from %u to %u", opt, val, lo, hi);
	return (unsigned)v;
}

static unsigned parse_threads(const char *val, unsigned *out)
{
	char copy[256], *save = NULL;
	unsigned n = 0;

	if (strlen(val) >= sizeof(copy))
		usage_error("--threads: list too long");
	strcpy(copy, val);
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == MAX_TLIST)
			usage_error("--threads: at most %u thread counts", MAX_TLIST);
		out[n++] = parse_uint_opt("--threads", tok, 1, MAX_THREADS);
	}
	if (n == 0)
		usage_error("--threads: '%s' names no thread count", val);
	return n;
}

static const char *find_lazyvm(void)
{
	static char path[PATH_MAX];
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	const char *b = getenv("B");

	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			snprintf(path, sizeof(path), "%.*s/../lazyvm", (int)(sizeof(path) - 12),
			         self);
			if (access(path, X_OK) == 0)
				return path;
		}
	}
	if (b && *b) {
		snprintf(path, sizeof(path), "%.*s/lazyvm", (int)(sizeof(path) - 8), b);
		if (access(path, X_OK) == 0)
			return path;
	}
	snprintf(path, sizeof(path), "build/lazyvm");
	return path;
}

int first_cpu(const cpu_set_t *s)
{
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, s))
			return c;
	return -1;
}

/* Splits the CPUs we may use between the handlers and the client (ourselves). */
static void set_pinning(void)
{
	cpu_set_t all, client;
	int first = -1, last = -1, n = 0;

	if (sched_getaffinity(0, sizeof(all), &all) < 0)
		usage_error("--pin: sched_getaffinity: %s", strerror(errno));
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &all)) {
			if (first < 0)
				first = c;
			last = c;
			n++;
		}
	CPU_ZERO(&g.handler_cpus);
	CPU_ZERO(&client);
	if (g.pin == PIN_SAME) {
		CPU_SET(first, &g.handler_cpus);
		CPU_SET(first, &client);
	} else {
		if (n < 2)
			usage_error("--pin split needs two or more CPUs; this process may use %d",
			            n);
		client = all;
		CPU_CLR(last, &client);
		CPU_SET(last, &g.handler_cpus);
	}
	if (sched_setaffinity(0, sizeof(client), &client) < 0)
		usage_error("--pin: sched_setaffinity: %s", strerror(errno));
}

void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
	    {"mem-file", required_argument, 0, 'm'}, {"size", required_argument, 0, 's'},
	    {"seq-size", required_argument, 0, 'S'}, {"reps", required_argument, 0, 'r'},
	    {"threads", required_argument, 0, 't'},  {"quick", no_argument, 0, 'q'},
	    {"lazyvm", required_argument, 0, 'l'},   {"pin", required_argument, 0, 'p'},
	    {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
	};
	uint64_t size = DEF_SIZE, seq_size = DEF_SEQ_SIZE;
	bool size_set = false, seq_set = false, reps_set = false, quick = false;
	unsigned reps = DEF_REPS, tlist[MAX_TLIST] = {1, 2}, ntl = 2;
	const char *mem_file = NULL, *lazyvm = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': mem_file = optarg; break;
		case 's':
			size = parse_size_opt("--size", optarg);
			size_set = true;
			break;
		case 'S':
			seq_size = parse_size_opt("--seq-size", optarg);
			seq_set = true;
			break;
		case 'r':
			reps = parse_uint_opt("--reps", optarg, 1, MAX_REPS);
			reps_set = true;
			break;
		case 't': ntl = parse_threads(optarg, tlist); break;
		case 'q': quick = true; break;
		case 'l': lazyvm = optarg; break;
		case 'p':
			if (!strcmp(optarg, "none"))
				g.pin = PIN_NONE;
			else if (!strcmp(optarg, "same"))
				g.pin = PIN_SAME;
			else if (!strcmp(optarg, "split"))
				g.pin = PIN_SPLIT;
			else
				usage_error("--pin: '%s' is not none, same or split", optarg);
			break;
		case 'h': fputs(usage_text, stdout); exit(0);
		default: fputs("Run 'fault_bench --help' for the options.\n", stderr); exit(2);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (quick) {
		size = size_set ? size : QUICK_SIZE;
		seq_size = seq_set ? seq_size : QUICK_SEQ_SIZE;
		reps = reps_set ? reps : 1;
	}
	if (size == 0 && seq_size == 0)
		usage_error("--size and --seq-size are both 0: nothing to measure");
	for (unsigned i = 0; i < ntl && size; i++)
		if (size / PAGE < tlist[i])
			usage_error("--size %" PRIu64 " has fewer pages than %u threads", size,
			            tlist[i]);

	if (g.pin != PIN_NONE)
		set_pinning(); /* before any thread or child: they inherit the client's set */
	g.lazyvm = lazyvm ? lazyvm : find_lazyvm();
	if (access(g.lazyvm, X_OK) != 0)
		usage_error(
		    "cannot run the lazyvm binary %s: %s (build it with make, or pass --lazyvm)",
		    g.lazyvm, strerror(errno));
	*o = (struct options){.size = size,
	                      .seq_size = seq_size,
	                      .size_set = size_set,
	                      .seq_set = seq_set,
	                      .reps = reps,
	                      .ntl = ntl,
	                      .mem_file = mem_file};
	memcpy(o->tlist, tlist, sizeof(o->tlist));
}
