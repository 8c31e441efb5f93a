/* fault_bench: lazyvm's fc-handler against "the floor", side by side, in one run
 * on the same memory file.
 *
 * The floor is the least any UFFD handler must do per fault, written here as
 * directly as possible in a forked child: poll + read one message + pread +
 * UFFDIO_COPY (block), or the same spinning on a non-blocking read (busy).
 * lazyvm is `lazyvm fc-handler` run as a separate process. The client is this
 * process: it plays Firecracker (fc_vm_create + fc_vm_handoff), then times the
 * first touch of every page.
 *
 * Every run gets a fresh handler and a fresh VM. Runs are interleaved: for each
 * repetition, every (variant, test) pair runs once, in a shuffled order, and the
 * report gives the median over repetitions. A run whose bytes differ from the
 * memory file aborts the benchmark. Markdown goes to stdout, progress to stderr.
 *
 * This file: main, the memory file and the runs; the parts are in bench/fault/
 * (fault_bench.h says which is where). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fault/fault_bench.h"
#include "lazyvm/units.h"

const struct variant variants[] = {
    {"floor-block", FLOOR, BLOCK},
    {"lazyvm-block", LAZYVM, BLOCK},
    {"floor-busy", FLOOR, BUSY},
    {"lazyvm-busy", LAZYVM, BUSY},
};

static void create_mem_file(uint64_t size)
{
	uint64_t s = SEED, *buf = xmalloc(CHUNK);
	int fd;

	snprintf(g.mem_path, sizeof(g.mem_path), "%s/mem", g.dir);
	fd = open(g.mem_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die("cannot create %s: %s", g.mem_path, strerror(errno));
	g.mem_created = true;
	for (uint64_t off = 0; off < size; off += CHUNK) {
		size_t n = (size_t)(size - off < CHUNK ? size - off : CHUNK);
		const char *p = (const char *)buf;

		for (size_t i = 0; i < CHUNK / 8; i++)
			buf[i] = splitmix64(&s);
		while (n) {
			ssize_t w = write(fd, p, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				die("writing %s: %s", g.mem_path, strerror(errno));
			p += w;
			n -= (size_t)w;
		}
	}
	/* Written back now, not by a flusher thread in the middle of a run. */
	if (fdatasync(fd) < 0)
		die("fdatasync %s: %s", g.mem_path, strerror(errno));
	close(fd);
	free(buf);
}

/* Reads the expected byte of every page the runs touch (this also brings those
 * parts of the file into the page cache). */
static void load_expected(uint64_t pages)
{
	uint64_t npages = g.file_size / PAGE, warm = npages - 1;
	unsigned char *chunk = xmalloc(CHUNK);
	int fd = open(g.mem_path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		die("cannot open %s: %s", g.mem_path, strerror(errno));
	g.expected = xmalloc(npages);
	for (uint64_t off = 0; off < pages * PAGE; off += CHUNK) {
		size_t n = (size_t)(pages * PAGE - off < CHUNK ? pages * PAGE - off : CHUNK);

		if ((r = pread_full(fd, chunk, n, off)) < 0)
			die("reading %s: %s", g.mem_path, strerror(-r));
		for (uint64_t p = off / PAGE; p < (off + n) / PAGE; p++)
			g.expected[p] = chunk[p * PAGE - off + byte_off(p)];
	}
	if ((r = pread_full(fd, chunk, PAGE, warm * PAGE)) < 0)
		die("reading %s: %s", g.mem_path, strerror(-r));
	g.expected[warm] = chunk[byte_off(warm)];
	close(fd);
	free(chunk);
}

int main(int argc, char **argv)
{
	uint64_t bench_t0 = lv_now_ns();
	struct options o;
	char buf_a[64];

	parse_options(argc, argv, &o);

	/* Our files live in one private directory; the signal handler removes it. */
	const char *tmp = getenv("TMPDIR");
	snprintf(g.dir, sizeof(g.dir), "%s/fault_bench.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(g.dir)) {
		int e = errno;
		char d[PATH_MAX];
		snprintf(d, sizeof(d), "%s", g.dir);
		g.dir[0] = '\0';
		die("cannot create a directory %s: %s", d, strerror(e));
	}
	snprintf(g.sock_path, sizeof(g.sock_path), "%s/handler.sock", g.dir);
	snprintf(g.log_path, sizeof(g.log_path), "%s/lazyvm.log", g.dir);
	if (strlen(g.sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s", g.sock_path);
		g.sock_path[0] = '\0';
		die("socket path %s is too long for a unix socket: set TMPDIR to a shorter "
		    "directory",
		    p);
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	uint64_t need = o.size > o.seq_size ? o.size : o.seq_size;
	if (o.mem_file) {
		struct stat st;

		if (stat(o.mem_file, &st) < 0)
			die("cannot use --mem-file %s: %s", o.mem_file, strerror(errno));
		if (!S_ISREG(st.st_mode))
			die("--mem-file %s is not a regular file", o.mem_file);
		if ((uint64_t)st.st_size % PAGE || (uint64_t)st.st_size < 2 * PAGE)
			die("--mem-file %s (%lld bytes) is not two or more whole 4 KiB pages",
			    o.mem_file, (long long)st.st_size);
		g.file_size = (uint64_t)st.st_size;
		/* The last page is the warm-up page: the tests use what lies before it. */
		if (!o.size_set && o.size > g.file_size - PAGE)
			o.size = g.file_size - PAGE;
		if (!o.seq_set && o.seq_size > g.file_size - PAGE)
			o.seq_size = g.file_size - PAGE;
		need = o.size > o.seq_size ? o.size : o.seq_size;
		if (need > g.file_size - PAGE)
			die("--mem-file %s holds %" PRIu64 " bytes; the tests need %" PRIu64
			    " plus a 4 KiB warm-up page",
			    o.mem_file, g.file_size, need);
		snprintf(g.mem_path, sizeof(g.mem_path), "%s", o.mem_file);
	} else {
		g.file_size = need + PAGE;
		fmt_mib(g.file_size, buf_a, sizeof(buf_a));
		fprintf(stderr, "creating a %s memory file of random bytes in %s\n", buf_a, g.dir);
		create_mem_file(g.file_size);
	}
	load_expected(need / PAGE);

	/* ---- the runs ---- */
	struct job {
		unsigned v, ti; /* variant, index into o.tlist (latency) */
		bool seq;
	} jobs[NVARIANTS * (MAX_TLIST + 1)];
	unsigned njobs = 0;
	struct run_result *lat = calloc(NVARIANTS * o.ntl * o.reps, sizeof(*lat));
	struct run_result *seqr = calloc(NVARIANTS * o.reps, sizeof(*seqr));
	uint64_t shuffle_seed = SEED ^ 0x5eed;

	if (!lat || !seqr)
		die("out of memory");
	for (unsigned v = 0; v < NVARIANTS; v++) {
		for (unsigned ti = 0; o.size && ti < o.ntl; ti++)
			jobs[njobs++] = (struct job){v, ti, false};
		if (o.seq_size)
			jobs[njobs++] = (struct job){v, 0, true};
	}
	for (unsigned rep = 0; rep < o.reps; rep++) {
		for (unsigned k = njobs; k > 1; k--) {
			unsigned j = (unsigned)rand_below(&shuffle_seed, k);
			struct job x = jobs[k - 1];
			jobs[k - 1] = jobs[j];
			jobs[j] = x;
		}
		for (unsigned k = 0; k < njobs; k++) {
			const struct variant *v = &variants[jobs[k].v];
			struct run_result *r;

			if (jobs[k].seq) {
				r = &seqr[jobs[k].v * o.reps + rep];
				run_one(v, o.seq_size / PAGE, 1, true, r);
				fprintf(stderr,
				        "rep %u/%u  %-12s  sequential %3" PRIu64
				        " MiB, 1 thread: %.3f s "
				        "(median %.1f us, p99 %.1f us; handler CPU %.2f s)\n",
				        rep + 1, o.reps, v->name, o.seq_size / MIB, r->wall_s,
				        r->med_us, r->p99_us, r->handler_cpu_s);
			} else {
				unsigned T = o.tlist[jobs[k].ti];

				r = &lat[(jobs[k].v * o.ntl + jobs[k].ti) * o.reps + rep];
				run_one(v, o.size / PAGE, T, false, r);
				fprintf(
				    stderr,
				    "rep %u/%u  %-12s  random %3" PRIu64
				    " MiB, %u thread%s: median %.1f us, p99 %.1f us, %.0f pages/s; "
				    "handler CPU %.2f s\n",
				    rep + 1, o.reps, v->name, o.size / MIB, T, T > 1 ? "s" : " ",
				    r->med_us, r->p99_us, r->pps, r->handler_cpu_s);
			}
		}
	}

	print_report(argc, argv, &o, lat, seqr, bench_t0);
	free(lat);
	free(seqr);
	free(g.expected);
	cleanup();
	return 0;
}
