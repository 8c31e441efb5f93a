/* Statistics over the runs and the Markdown report on stdout (docs and
 * scripts parse it: bench/run, tests/integration/bench_smoke.sh). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "fault_bench.h"
#include "lazyvm/units.h"

int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples: the smallest value with at least
 * a fraction p of the samples at or below it. */
uint64_t nearest_rank(const uint64_t *sorted, size_t n, double p)
{
	size_t rank = (size_t)(p * (double)n + 0.999999999);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

/* Median of n doubles (mean of the middle two for even n); sorts a copy. */
static double median_of(const double *v, size_t n)
{
	double tmp[MAX_REPS];

	if (n == 0)
		return 0;
	memcpy(tmp, v, n * sizeof(*v));
	qsort(tmp, n, sizeof(*tmp), cmp_double);
	return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static void min_max(const double *v, size_t n, double *lo, double *hi)
{
	*lo = *hi = n ? v[0] : 0;
	for (size_t i = 1; i < n; i++) {
		if (v[i] < *lo)
			*lo = v[i];
		if (v[i] > *hi)
			*hi = v[i];
	}
}

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[512];

	snprintf(buf, len, "unknown CPU");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');

		if (strncmp(line, "model name", 10) != 0 || !colon)
			continue;
		colon++;
		while (*colon == ' ' || *colon == '\t')
			colon++;
		colon[strcspn(colon, "\n")] = '\0';
		snprintf(buf, len, "%s", colon);
		break;
	}
	fclose(f);
}

/* The command line, shell-quoted where a word needs it. */
static void command_line(int argc, char **argv, char *buf, size_t len)
{
	size_t pos = 0;

	buf[0] = '\0';
	for (int i = 0; i < argc && pos < len; i++) {
		bool plain = argv[i][0] != '\0' &&
		             strspn(argv[i], "abcdefghijklmnopqrstuvwxyz"
		                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
		                             "0123456789-_./=,:+%@") == strlen(argv[i]);
		int n = snprintf(buf + pos, len - pos, plain ? "%s%s" : "%s'%s'", i ? " " : "",
		                 argv[i]);

		if (n < 0)
			break;
		pos += (size_t)n;
	}
}

void fmt_mib(uint64_t bytes, char *buf, size_t len)
{
	if (bytes % MIB == 0)
		snprintf(buf, len, "%" PRIu64 " MiB", bytes / MIB);
	else
		snprintf(buf, len, "%.2f MiB", (double)bytes / (double)MIB);
}

void print_report(int argc, char **argv, const struct options *o, const struct run_result *lat,
                  const struct run_result *seqr, uint64_t bench_t0)
{
	uint64_t size = o->size, seq_size = o->seq_size;
	unsigned reps = o->reps, ntl = o->ntl;
	const unsigned *tlist = o->tlist;
	const char *mem_file = o->mem_file;
	char cmdline[4096], cpu[256], buf_a[64], buf_b[64];
	struct utsname un;

	cpu_model(cpu, sizeof(cpu));
	command_line(argc, argv, cmdline, sizeof(cmdline));
	if (uname(&un) < 0)
		snprintf(un.release, sizeof(un.release), "unknown");
	time_t now = time(NULL);
	char date[64];
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", gmtime(&now));
	const char *hargv[16];

	printf("## lazyvm fc-handler vs. the floor\n\n");
	printf("- Command: `%s`\n", cmdline);
	printf("- Machine: %ld CPUs online (nproc), %s, Linux %s; %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), cpu, un.release, date);
	fmt_mib(g.file_size - PAGE, buf_a, sizeof(buf_a));
	printf("- Memory file: %s%s%s, %s + the 4 KiB warm-up page; the same file for every "
	       "variant, read through the page cache\n",
	       mem_file ? "`" : "", mem_file ? mem_file : "random bytes, created for the run",
	       mem_file ? "`" : "", buf_a);
	printf("- lazyvm:");
	for (unsigned vi = 1; vi < NVARIANTS; vi += 2) {
		lazyvm_argv(&variants[vi], hargv);
		printf("%s`", vi > 1 ? " and " : " ");
		for (unsigned i = 1; hargv[i]; i++)
			printf("%s%s", i > 1 ? " " : "lazyvm ",
			       hargv[i] == g.sock_path  ? "S"
			       : hargv[i] == g.mem_path ? "F"
			                                : hargv[i]);
		printf("`");
	}
	printf(", one fault thread per VM\n");
	printf(
	    "- floor: a forked child of the benchmark, one thread; block: poll(2) on the UFFD "
	    "and the connection, read one `uffd_msg`, pread(2) the page, `UFFDIO_COPY`; busy: the "
	    "same spinning on a non-blocking read(2), no poll\n");
	printf("- Client: the benchmark itself (fc_vm_create: 1 region, 4 KiB pages; Firecracker's "
	       "hand-off); a fresh handler and VM for every run; one untimed warm-up fault on the "
	       "file's last page before timing\n");
	printf(
	    "- Method: %u rep%s; in each, every (variant, test) runs once in a shuffled order; a "
	    "cell is the median over reps of the run's value. Latency: CLOCK_MONOTONIC around a "
	    "one-byte volatile read of the page's first touch; median and p99 are nearest-rank "
	    "over "
	    "the samples of all threads. Every byte read is checked against the file, and every "
	    "touched page compared in full after the run\n",
	    reps, reps > 1 ? "s" : "");
	if (g.pin == PIN_NONE)
		printf("- CPU placement: not pinned (the scheduler places handler and client)\n");
	else
		printf("- CPU placement: `--pin %s`: handler on CPU %d, client on %s\n",
		       g.pin == PIN_SAME ? "same" : "split", first_cpu(&g.handler_cpus),
		       g.pin == PIN_SAME ? "the same CPU" : "the other CPU(s)");
	printf("- Ratios: lazyvm / floor of the same intake (above 1: lazyvm is slower in latency, "
	       "faster in pages/s)\n\n");

	if (size) {
		fmt_mib(size, buf_a, sizeof(buf_a));
		printf("### Random first touches: %s (%" PRIu64
		       " pages), disjoint shares per thread\n\n",
		       buf_a, size / PAGE);
		printf(
		    "| variant | threads | median (us) | p99 (us) | pages/s | rep medians, min-max "
		    "(us) | median ratio | p99 ratio | pages/s ratio |\n");
		printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
		for (unsigned ti = 0; ti < ntl; ti++) {
			double med[NVARIANTS], p99[NVARIANTS], pps[NVARIANTS];

			for (unsigned v = 0; v < NVARIANTS; v++) {
				const struct run_result *r = &lat[(v * ntl + ti) * reps];
				double a[MAX_REPS], lo, hi;

				for (unsigned k = 0; k < reps; k++)
					a[k] = r[k].med_us;
				med[v] = median_of(a, reps);
				min_max(a, reps, &lo, &hi);
				for (unsigned k = 0; k < reps; k++)
					a[k] = r[k].p99_us;
				p99[v] = median_of(a, reps);
				for (unsigned k = 0; k < reps; k++)
					a[k] = r[k].pps;
				pps[v] = median_of(a, reps);
				printf("| %s | %u | %.1f | %.1f | %.0f | %.1f-%.1f |",
				       variants[v].name, tlist[ti], med[v], p99[v], pps[v], lo, hi);
				if (variants[v].kind == LAZYVM)
					printf(" %.2f | %.2f | %.2f |\n", med[v] / med[v - 1],
					       p99[v] / p99[v - 1], pps[v] / pps[v - 1]);
				else
					printf(" | | |\n");
			}
		}
		printf("\n");
	}
	if (seq_size) {
		fmt_mib(seq_size, buf_a, sizeof(buf_a));
		printf("### Restore %s sequentially: 1 thread, %" PRIu64
		       " pages in address order\n\n",
		       buf_a, seq_size / PAGE);
		printf(
		    "| intake | floor (s) | lazyvm (s) | lazyvm / floor | floor reps, min-max (s) "
		    "| lazyvm "
		    "reps, min-max (s) | floor median fault (us) | lazyvm median fault (us) |\n");
		printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
		for (unsigned vf = 0; vf < NVARIANTS; vf += 2) {
			double s[2], lo[2], hi[2], m[2], a[MAX_REPS];

			for (unsigned k2 = 0; k2 < 2; k2++) {
				const struct run_result *r = &seqr[(vf + k2) * reps];

				for (unsigned k = 0; k < reps; k++)
					a[k] = r[k].wall_s;
				s[k2] = median_of(a, reps);
				min_max(a, reps, &lo[k2], &hi[k2]);
				for (unsigned k = 0; k < reps; k++)
					a[k] = r[k].med_us;
				m[k2] = median_of(a, reps);
			}
			snprintf(buf_a, sizeof(buf_a), "%.3f-%.3f", lo[0], hi[0]);
			snprintf(buf_b, sizeof(buf_b), "%.3f-%.3f", lo[1], hi[1]);
			printf("| %s | %.3f | %.3f | %.2f | %s | %s | %.1f | %.1f |\n",
			       variants[vf].intake == BLOCK ? "block" : "busy", s[0], s[1],
			       s[1] / s[0], buf_a, buf_b, m[0], m[1]);
		}
		printf("\n");
	}
	printf("Benchmark wall time: %.1f s\n", (double)(lv_now_ns() - bench_t0) / 1e9);
	fflush(stdout);
}
