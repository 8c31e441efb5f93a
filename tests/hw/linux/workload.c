/* The Linux guest's workload (static, in the L2 initramfs; docs/LINUX.md).
 *
 *   lazyvm-work fill MIB    fill MIB MiB with a pattern, print "lazyvm: snapshot"
 *                           and wait until it has left the UART (the VMM takes
 *                           the snapshot at that line), then verify every byte
 *   lazyvm-work rfc MIB [MSTEPS]
 *                           the same fill, then after the snapshot line the RFC's
 *                           experiment: one CPU-bound process (MSTEPS million
 *                           steps, 200 by default: ~0.5 s on the tier) and one
 *                           memory-bound process (the verification), each
 *                           timed, run at the same time. A benchmark gives the
 *                           CPU-bound one the length of the I/O it is to cover.
 *
 * Ends with "lazyvm: result pass" or "lazyvm: result fail: WHY" on the
 * console, which the VMM counts. Exit status 0 on pass. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SEED 0x6c617a79766d0001ull /* "lazyvm" */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t pattern(uint64_t i)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ SEED;

	x ^= x >> 31;
	return x * 0xbf58476d1ce4e5b9ull;
}

/* A line on the console, whole, and out of the UART before this returns. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, (size_t)n) != n)
		return;
	tcdrain(1);
}

/* The guest's count of "page ready" interrupts: the HYP line of
 * /proc/interrupts, summed over CPUs (-1 when there is none). */
static long long hyp_interrupts(void)
{
	char line[512];
	long long sum = -1;
	FILE *f = fopen("/proc/interrupts", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		char *p = line;
		while (*p == ' ')
			p++;
		if (strncmp(p, "HYP:", 4) != 0)
			continue;
		p += 4;
		sum = 0;
		for (;;) {
			char *end;
			long long v = strtoll(p, &end, 10);
			if (end == p)
				break;
			sum += v;
			p = end;
		}
	}
	fclose(f);
	return sum;
}

static uint64_t *fill(size_t mib)
{
	size_t words = mib << 17;
	uint64_t *p =
	    mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t t0 = now_ns();

	if (p == MAP_FAILED) {
		say("lazyvm: result fail: mmap of %zu MiB: %s", mib, strerror(errno));
		exit(1);
	}
	for (size_t i = 0; i < words; i++)
		p[i] = pattern(i);
	say("lazyvm: filled %zu MiB in %.1f ms", mib, (double)(now_ns() - t0) / 1e6);
	return p;
}

/* 0, or the first bad word's index + 1 */
static size_t verify(const uint64_t *p, size_t mib)
{
	size_t words = mib << 17;

	for (size_t i = 0; i < words; i++)
		if (p[i] != pattern(i))
			return i + 1;
	return 0;
}

static int verdict(const uint64_t *p, size_t mib, uint64_t t0)
{
	size_t bad = verify(p, mib);
	double ms = (double)(now_ns() - t0) / 1e6;

	if (bad) {
		say("lazyvm: result fail: word %zu (byte offset 0x%zx) is 0x%016" PRIx64
		    ", want 0x%016" PRIx64,
		    bad - 1, (bad - 1) * 8, p[bad - 1], pattern(bad - 1));
		return 1;
	}
	say("lazyvm: verified %zu MiB in %.1f ms", mib, ms);
	return 0;
}

/* The CPU-bound process: a xorshift chain of a fixed length. */
static void cpu_bound(uint64_t steps)
{
	uint64_t x = SEED, t0 = now_ns();

	for (uint64_t i = 0; i < steps; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	say("lazyvm: rfc cpu-bound %.1f ms (x=%016" PRIx64 ")", (double)(now_ns() - t0) / 1e6, x);
	_exit(0);
}

int main(int argc, char **argv)
{
	size_t mib;
	uint64_t *p, msteps = 200;
	char *end = NULL;
	int rc;
	bool rfc = argc >= 2 && strcmp(argv[1], "rfc") == 0;

	if (argc < 3 || argc > 3 + rfc || (!rfc && strcmp(argv[1], "fill") != 0) ||
	    (mib = strtoul(argv[2], NULL, 10)) == 0 || mib > 4096 ||
	    (argc == 4 &&
	     ((msteps = strtoull(argv[3], &end, 10)) == 0 || *end || msteps > 100000))) {
		say("lazyvm: result fail: usage: lazyvm-work fill MIB | rfc MIB [MSTEPS] "
		    "(MIB 1-4096, MSTEPS 1-100000 million steps)");
		return 2;
	}
	p = fill(mib);
	long long hyp0 = hyp_interrupts();
	say("lazyvm: snapshot");
	/* here on: the restored guest (or the same one, without a snapshot) */
	uint64_t t0 = now_ns();
	if (!rfc) {
		rc = verdict(p, mib, t0);
	} else {
		pid_t cpu = fork();
		if (cpu == 0)
			cpu_bound(msteps * 1000000);
		rc = verdict(p, mib, t0);
		say("lazyvm: rfc memory-bound %.1f ms", (double)(now_ns() - t0) / 1e6);
		int st = 0;
		if (cpu < 0 || waitpid(cpu, &st, 0) != cpu || !WIFEXITED(st))
			rc = 1, say("lazyvm: result fail: the CPU-bound process did not finish");
		say("lazyvm: rfc both done %.1f ms", (double)(now_ns() - t0) / 1e6);
	}
	say("lazyvm: apf: %lld page-ready interrupts (HYP) since the snapshot line",
	    hyp_interrupts() - hyp0);
	if (rc == 0)
		say("lazyvm: result pass");
	return rc;
}
