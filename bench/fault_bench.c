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
 * memory file aborts the benchmark. Markdown goes to stdout, progress to stderr. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazyvm/fc_client.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/units.h"

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

static const struct variant variants[] = {
    {"floor-block", FLOOR, BLOCK},
    {"lazyvm-block", LAZYVM, BLOCK},
    {"floor-busy", FLOOR, BUSY},
    {"lazyvm-busy", LAZYVM, BUSY},
};
#define NVARIANTS (sizeof(variants) / sizeof(variants[0]))

struct run_result {
	double med_us, p99_us, pps, wall_s;
	double handler_cpu_s; /* CPU time the handler used over its whole life */
};

/* Everything the error paths and the signal handler must clean up. */
static struct {
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
} g;

static void remove_temp_files(void)
{
	if (g.sock_path[0])
		unlink(g.sock_path);
	if (g.log_path[0])
		unlink(g.log_path);
	if (g.mem_created)
		unlink(g.mem_path);
	if (g.dir[0])
		rmdir(g.dir);
}

/* Kills and reaps the running handler, removes our files. */
static void cleanup(void)
{
	pid_t pid = g.child;

	if (pid > 0) {
		kill(pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		g.child = 0;
	}
	remove_temp_files();
}

static void on_signal(int sig)
{
	/* Async-signal-safe only: kill, waitpid, unlink, rmdir, _exit. */
	pid_t pid = g.child;

	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	remove_temp_files();
	_exit(128 + sig);
}

static void print_log_tail(void)
{
	char buf[2048];
	int fd = g.log_path[0] ? open(g.log_path, O_RDONLY | O_CLOEXEC) : -1;
	off_t end;
	ssize_t n;

	if (fd < 0)
		return;
	end = lseek(fd, 0, SEEK_END);
	if (end > (off_t)sizeof(buf) - 1)
		lseek(fd, end - (off_t)sizeof(buf) + 1, SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		buf[n] = '\0';
		fprintf(stderr, "--- end of the lazyvm handler's log ---\n%s%s---\n", buf,
		        buf[n - 1] == '\n' ? "" : "\n");
	}
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("fault_bench: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	cleanup();
	exit(1);
}

/* Like die, but first shows what the lazyvm handler logged. */
static void die_log(const struct variant *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void die_log(const struct variant *v, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (v->kind == LAZYVM)
		print_log_tail();
	die("%s", msg);
}

static const char *describe_status(int st, char *buf, size_t len)
{
	if (WIFEXITED(st))
		snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st),
		         strsignal(WTERMSIG(st)));
	else
		snprintf(buf, len, "wait status 0x%x", st);
	return buf;
}

/* ---- small helpers ---- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0 (the modulo bias is irrelevant at these sizes). */
static uint64_t rand_below(uint64_t *s, uint64_t n)
{
	return splitmix64(s) % n;
}

/* The byte of page p a touch reads: varies over the page, so a page installed
 * at the wrong offset within the file is caught as well as a wrong page. */
static inline uint64_t byte_off(uint64_t p)
{
	return (p * 2654435761ull) & (PAGE - 1);
}

static int cmp_u64(const void *a, const void *b)
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
static uint64_t nearest_rank(const uint64_t *sorted, size_t n, double p)
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

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ENODATA;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static void sleep_step(void)
{
	lv_sleep_ns(POLL_STEP_NS);
}

/* ---- the floor handlers (run in a forked child; never return) ---- */

static void floor_fail(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void floor_fail(const char *name, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "fault_bench: %s handler: %s\n", name, msg);
	_exit(1);
}

/* Accepts one connection on g.sock_path and receives the hand-off. */
static int floor_accept(const char *name, struct fc_handshake *hs, int *conn_out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char *buf = malloc(FC_HANDSHAKE_MAX_BYTES + 1), err[320];
	size_t len = 0, end;
	int lfd, conn, uffd = -1, c;

	if (!buf)
		floor_fail(name, "out of memory");
	strcpy(sa.sun_path, g.sock_path); /* length checked at start-up */
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0)
		floor_fail(name, "cannot listen on %s: %s", g.sock_path, strerror(errno));
	do
		conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	while (conn < 0 && errno == EINTR);
	if (conn < 0)
		floor_fail(name, "accept: %s", strerror(errno));
	close(lfd);
	while ((c = fc_json_next(buf, len, &end)) == 0) {
		union {
			char b[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} ctrl;
		struct iovec iov = {.iov_base = buf + len,
		                    .iov_len = FC_HANDSHAKE_MAX_BYTES + 1 - len};
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = ctrl.b,
		                    .msg_controllen = sizeof(ctrl.b)};
		ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			floor_fail(name, "reading the hand-off: %s",
			           n ? strerror(errno) : "end of file");
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && uffd < 0)
				memcpy(&uffd, CMSG_DATA(cm), sizeof(int));
		len += (size_t)n;
		if (len > FC_HANDSHAKE_MAX_BYTES)
			floor_fail(name, "hand-off larger than %u bytes", FC_HANDSHAKE_MAX_BYTES);
	}
	if (c < 0)
		floor_fail(name, "the hand-off is not JSON");
	if (fc_handshake_parse(buf, end, g.file_size, hs, err, sizeof(err)) < 0)
		floor_fail(name, "bad hand-off: %s", err);
	if (uffd < 0)
		floor_fail(name, "the hand-off carried no file descriptor");
	for (size_t i = 0; i < hs->nregions; i++)
		if (hs->regions[i].page_size != PAGE)
			floor_fail(name, "only 4 KiB pages are supported");
	free(buf);
	*conn_out = conn;
	return uffd;
}

/* The client closed the connection (it destroyed its VM, or exited). */
static bool floor_peer_gone(int conn)
{
	char c;
	ssize_t n = recv(conn, &c, 1, MSG_DONTWAIT);

	return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Serves one message: pread the page, UFFDIO_COPY it. Returns false when the
 * address space is gone. */
static bool floor_serve(const char *name, const struct fc_handshake *hs, int uffd, int mem_fd,
                        const struct uffd_msg *msg, unsigned char *page)
{
	uint64_t addr, off = UINT64_MAX;

	if (msg->event != UFFD_EVENT_PAGEFAULT)
		return true; /* reading a non-fault event is all the kernel needs */
	addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	for (size_t i = 0; i < hs->nregions; i++)
		if (addr - hs->regions[i].base_host_virt_addr < hs->regions[i].size)
			off = hs->regions[i].offset + (addr - hs->regions[i].base_host_virt_addr);
	if (off == UINT64_MAX)
		floor_fail(name, "fault at 0x%" PRIx64 " outside every region", addr);
	if (pread(mem_fd, page, PAGE, (off_t)off) != PAGE)
		floor_fail(name, "pread of the memory file at %" PRIu64 " failed", off);

	struct uffdio_copy cp = {.dst = addr, .src = (uint64_t)(uintptr_t)page, .len = PAGE};
	if (ioctl(uffd, UFFDIO_COPY, &cp) == 0)
		return true;
	if (errno == EEXIST || errno == EAGAIN) {
		/* Already there, or the mm is changing: wake the waiter, it retries. */
		struct uffdio_range r = {.start = addr, .len = PAGE};
		ioctl(uffd, UFFDIO_WAKE, &r);
		return true;
	}
	if (errno == ESRCH || errno == ENOENT || errno == ENOSPC)
		return false;
	floor_fail(name, "UFFDIO_COPY at 0x%" PRIx64 ": %s", addr, strerror(errno));
}

static void floor_main(const struct variant *v) __attribute__((noreturn));
static void floor_main(const struct variant *v)
{
	static unsigned char page[PAGE] __attribute__((aligned(PAGE)));
	struct fc_handshake hs;
	struct uffd_msg msg;
	int conn, uffd = floor_accept(v->name, &hs, &conn);
	int mem_fd = open(g.mem_path, O_RDONLY | O_CLOEXEC);

	if (mem_fd < 0)
		floor_fail(v->name, "cannot open %s: %s", g.mem_path, strerror(errno));
	if (v->intake == BLOCK) {
		struct pollfd p[2] = {{.fd = uffd, .events = POLLIN},
		                      {.fd = conn, .events = POLLIN}};

		for (;;) {
			if (poll(p, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				floor_fail(v->name, "poll: %s", strerror(errno));
			}
			if (p[0].revents & POLLIN) {
				ssize_t n = read(uffd, &msg, sizeof(msg));

				if (n == (ssize_t)sizeof(msg)) {
					if (!floor_serve(v->name, &hs, uffd, mem_fd, &msg, page))
						_exit(0);
				} else if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
					floor_fail(v->name, "reading the userfaultfd: %s",
					           n < 0 ? strerror(errno) : "short read");
				}
			} else if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
				floor_fail(v->name,
				           "the userfaultfd reports an error (revents 0x%x)",
				           p[0].revents);
			}
			if (p[1].revents && floor_peer_gone(conn))
				_exit(0);
		}
	}
	for (unsigned empty = 0;;) {
		ssize_t n = read(uffd, &msg, sizeof(msg)); /* the UFFD is O_NONBLOCK */

		if (n == (ssize_t)sizeof(msg)) {
			if (!floor_serve(v->name, &hs, uffd, mem_fd, &msg, page))
				_exit(0);
			continue;
		}
		if (n >= 0 || (errno != EAGAIN && errno != EINTR))
			floor_fail(v->name, "reading the userfaultfd: %s",
			           n < 0 ? strerror(errno) : "short read");
		if (++empty % FLOOR_EOF_CHECK == 0 && floor_peer_gone(conn))
			_exit(0);
	}
}

/* ---- starting and stopping handlers ---- */

static void lazyvm_argv(const struct variant *v, const char **argv)
{
	unsigned n = 0;

	argv[n++] = g.lazyvm;
	argv[n++] = "fc-handler";
	argv[n++] = "--socket";
	argv[n++] = g.sock_path;
	argv[n++] = "--mem-file";
	argv[n++] = g.mem_path;
	argv[n++] = "--intake";
	argv[n++] = v->intake == BLOCK ? "block" : "busy";
	if (v->intake == BUSY) {
		argv[n++] = "--busy-idle";
		argv[n++] = "0";
	}
	/* The floor installs exactly the faulting page: so must lazyvm here. */
	argv[n++] = "--fault-around";
	argv[n++] = "1";
	/* A refusal must reach us as an error, not as SIGKILL. */
	argv[n++] = "--on-fatal";
	argv[n++] = "report";
	argv[n] = NULL;
}

static pid_t start_handler(const struct variant *v)
{
	pid_t parent = getpid(), pid;

	unlink(g.sock_path);
	fflush(NULL); /* the child must not flush our buffers a second time */
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid > 0) {
		g.child = pid;
		return pid;
	}
	/* The child: dies with us, whatever way we go. */
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	if (g.pin != PIN_NONE &&
	    sched_setaffinity(0, sizeof(g.handler_cpus), &g.handler_cpus) < 0) {
		fprintf(stderr, "fault_bench: sched_setaffinity: %s\n", strerror(errno));
		_exit(127);
	}
	if (v->kind == FLOOR)
		floor_main(v);

	const char *argv[16];
	int err_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
	int log_fd = open(g.log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (log_fd < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) {
		dprintf(err_fd, "fault_bench: cannot open the log %s: %s\n", g.log_path,
		        strerror(errno));
		_exit(127);
	}
	lazyvm_argv(v, argv);
	execv(g.lazyvm, (char *const *)argv);
	dprintf(err_fd, "fault_bench: cannot run %s: %s\n", g.lazyvm, strerror(errno));
	_exit(127);
}

/* Waits for the handler's socket, then hands the VM over. */
static void handoff(const struct variant *v, pid_t pid, struct fc_vm *vm)
{
	uint64_t deadline = lv_now_ns() + HANDLER_START_NS;
	char why[320], st_buf[96];

	for (;;) {
		struct stat sb;
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			g.child = 0;
			die_log(v, "the %s handler ended (%s) before accepting the VM", v->name,
			        describe_status(st, st_buf, sizeof(st_buf)));
		}
		if (stat(g.sock_path, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
			int r = fc_vm_handoff(vm, g.sock_path, FC_BAD_NONE, why, sizeof(why));

			if (r == 0)
				return;
			if (vm->sock >= 0) /* fc_vm_handoff leaves a failed socket open */
				close(vm->sock);
			vm->sock = -1;
			/* Bound but not yet listening: try again. */
			if (r != -ECONNREFUSED && r != -ENOENT)
				die_log(v, "handing the VM to the %s handler: %s", v->name, why);
		}
		if (lv_now_ns() > deadline)
			die_log(v, "the %s handler did not come up within 5 s (no socket at %s)",
			        v->name, g.sock_path);
		sleep_step();
	}
}

static void stop_handler(const struct variant *v, pid_t pid)
{
	uint64_t deadline = lv_now_ns() + HANDLER_STOP_NS;
	struct rusage ru;
	char st_buf[96];
	int st;

	/* The floor exits when the VM's connection closes; lazyvm on SIGTERM. */
	if (v->kind == LAZYVM)
		kill(pid, SIGTERM);
	for (;;) {
		pid_t r = wait4(pid, &st, WNOHANG, &ru);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			g.child = 0;
			die("waitpid on the %s handler: %s", v->name, strerror(errno));
		}
		if (lv_now_ns() > deadline)
			die_log(v, "the %s handler did not exit within 5 s after the run (killed)",
			        v->name); /* cleanup() kills and reaps it */
		sleep_step();
	}
	g.child = 0;
	g.handler_cpu_s = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	                  (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die_log(v, "the %s handler ended with %s", v->name,
		        describe_status(st, st_buf, sizeof(st_buf)));
}

/* ---- the client side: touching pages ---- */

struct toucher {
	pthread_t th;
	pthread_barrier_t *bar;
	const unsigned char *base; /* the VM's memory, page 0 */
	const uint64_t *order;     /* the pages, in touch order */
	uint64_t n;
	uint64_t *lat; /* ns per touch, n entries */
	uint64_t t_start, t_end;
	bool bad;
	uint64_t bad_page;
	unsigned char got;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	pthread_barrier_wait(t->bar);
	t->t_start = lv_now_ns();
	for (uint64_t i = 0; i < t->n; i++) {
		uint64_t p = t->order[i];
		const volatile unsigned char *a = t->base + p * PAGE + byte_off(p);
		uint64_t t0, t1;
		unsigned char b;

		t0 = lv_now_ns();
		__asm__ __volatile__("" ::: "memory");
		b = *a;
		__asm__ __volatile__("" ::: "memory");
		t1 = lv_now_ns();
		t->lat[i] = t1 - t0;
		if (b != g.expected[p]) {
			t->bad = true;
			t->bad_page = p;
			t->got = b;
			break;
		}
	}
	t->t_end = lv_now_ns();
	return NULL;
}

/* Compares the VM's bytes [0, len) with the memory file's. */
static void verify_range(const struct variant *v, const struct fc_vm *vm, const unsigned char *base,
                         uint64_t from, uint64_t len, unsigned char *chunk)
{
	for (uint64_t off = from; off < from + len; off += CHUNK) {
		size_t n = (size_t)(from + len - off < CHUNK ? from + len - off : CHUNK);
		int r = pread_full(vm->mem_fd, chunk, n, off);

		if (r < 0)
			die("reading the memory file at %" PRIu64 ": %s", off, strerror(-r));
		if (memcmp(base + off, chunk, n) != 0) {
			size_t i = 0;

			while (base[off + i] == chunk[i])
				i++;
			die_log(v,
			        "%s: the VM's byte at offset %" PRIu64 " (page %" PRIu64
			        ") is 0x%02x, the memory file has 0x%02x: a broken run, no numbers",
			        v->name, off + i, (off + i) / PAGE, base[off + i], chunk[i]);
		}
	}
}

/* One run: a fresh handler and VM; `nthreads` threads touch the first `pages`
 * pages (shuffled shares) or one thread touches them in order (sequential). */
static void run_one(const struct variant *v, uint64_t pages, unsigned nthreads, bool sequential,
                    struct run_result *res)
{
	struct toucher t[MAX_THREADS];
	pthread_barrier_t bar;
	struct fc_vm vm;
	char why[320];
	uint64_t *order = xmalloc(pages * sizeof(*order));
	uint64_t *lat = xmalloc(pages * sizeof(*lat));
	uint64_t start = UINT64_MAX, end = 0, warm_page = g.file_size / PAGE - 1;
	unsigned char *chunk = xmalloc(CHUNK);
	pid_t pid;

	/* Touch orders: thread i owns pages [i*pages/T, (i+1)*pages/T), shuffled
	 * with a fixed seed so every variant sees the same sequence. */
	for (uint64_t p = 0; p < pages; p++)
		order[p] = p;
	for (unsigned i = 0; i < nthreads; i++) {
		uint64_t lo = pages * i / nthreads, hi = pages * (i + 1) / nthreads, s = SEED + i;

		t[i] = (struct toucher){
		    .bar = &bar, .order = order + lo, .n = hi - lo, .lat = lat + lo};
		for (uint64_t k = hi - lo; !sequential && k > 1; k--) {
			uint64_t j = rand_below(&s, k), x = order[lo + k - 1];
			order[lo + k - 1] = order[lo + j];
			order[lo + j] = x;
		}
	}
	memset(lat, 0, pages * sizeof(*lat)); /* no allocation faults while timing */

	pid = start_handler(v);
	struct fc_vm_config vc = {
	    .mem_file = g.mem_path, .nregions = 1, .page_size = PAGE, .version = FC_V1_12};
	if (fc_vm_create(&vm, &vc, why, sizeof(why)) < 0)
		die("creating the VM: %s", why);
	handoff(v, pid, &vm);
	const unsigned char *base =
	    (const unsigned char *)(uintptr_t)vm.regions[0].base_host_virt_addr;

	/* One untimed fault on a page outside the measured range: the handler has
	 * then read the hand-off and started serving, so no sample pays for that. */
	if (*(const volatile unsigned char *)(base + warm_page * PAGE + byte_off(warm_page)) !=
	    g.expected[warm_page])
		die_log(v, "%s: the warm-up page holds the wrong bytes", v->name);

	if (pthread_barrier_init(&bar, NULL, nthreads) != 0)
		die("pthread_barrier_init failed");
	for (unsigned i = 0; i < nthreads; i++) {
		t[i].base = base;
		int r = pthread_create(&t[i].th, NULL, touch_main, &t[i]);
		if (r)
			die("pthread_create: %s", strerror(r));
	}
	/* Watchdog: a handler that stops serving leaves a thread blocked in a fault
	 * for ever; give up (exiting kills such threads) after a generous bound. */
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 60 + (time_t)(pages / 1000); /* ~45 us per fault is expected */
	for (unsigned i = 0; i < nthreads; i++) {
		int r = pthread_timedjoin_np(t[i].th, NULL, &dl);

		if (r == ETIMEDOUT)
			die_log(v,
			        "%s: the touch phase did not finish in time: the handler stopped "
			        "serving faults",
			        v->name);
		if (r)
			die("pthread_join: %s", strerror(r));
	}
	pthread_barrier_destroy(&bar);
	for (unsigned i = 0; i < nthreads; i++) {
		if (t[i].bad)
			die_log(v,
			        "%s: page %" PRIu64 " read 0x%02x at byte %" PRIu64
			        ", the memory file has 0x%02x: a broken run, no numbers",
			        v->name, t[i].bad_page, t[i].got, byte_off(t[i].bad_page),
			        g.expected[t[i].bad_page]);
		if (t[i].t_start < start)
			start = t[i].t_start;
		if (t[i].t_end > end)
			end = t[i].t_end;
	}
	verify_range(v, &vm, base, 0, pages * PAGE, chunk);
	verify_range(v, &vm, base, warm_page * PAGE, PAGE, chunk);
	fc_vm_destroy(&vm);
	stop_handler(v, pid);

	qsort(lat, pages, sizeof(*lat), cmp_u64);
	res->med_us = (double)nearest_rank(lat, pages, 0.50) / 1e3;
	res->p99_us = (double)nearest_rank(lat, pages, 0.99) / 1e3;
	res->wall_s = (double)(end - start) / 1e9;
	res->pps = (double)pages / res->wall_s;
	res->handler_cpu_s = g.handler_cpu_s;
	free(order);
	free(lat);
	free(chunk);
}

/* ---- set-up: the memory file, the machine, the options ---- */

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

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
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

static int first_cpu(const cpu_set_t *s)
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

static void fmt_mib(uint64_t bytes, char *buf, size_t len)
{
	if (bytes % MIB == 0)
		snprintf(buf, len, "%" PRIu64 " MiB", bytes / MIB);
	else
		snprintf(buf, len, "%.2f MiB", (double)bytes / (double)MIB);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"mem-file", required_argument, 0, 'm'}, {"size", required_argument, 0, 's'},
	    {"seq-size", required_argument, 0, 'S'}, {"reps", required_argument, 0, 'r'},
	    {"threads", required_argument, 0, 't'},  {"quick", no_argument, 0, 'q'},
	    {"lazyvm", required_argument, 0, 'l'},   {"pin", required_argument, 0, 'p'},
	    {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
	};
	uint64_t size = DEF_SIZE, seq_size = DEF_SEQ_SIZE, bench_t0 = lv_now_ns();
	bool size_set = false, seq_set = false, reps_set = false, quick = false;
	unsigned reps = DEF_REPS, tlist[MAX_TLIST] = {1, 2}, ntl = 2;
	const char *mem_file = NULL, *lazyvm = NULL;
	char cmdline[4096], cpu[256], buf_a[64], buf_b[64];
	struct utsname un;
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
		case 'h': fputs(usage_text, stdout); return 0;
		default: fputs("Run 'fault_bench --help' for the options.\n", stderr); return 2;
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

	uint64_t need = size > seq_size ? size : seq_size;
	if (mem_file) {
		struct stat st;

		if (stat(mem_file, &st) < 0)
			die("cannot use --mem-file %s: %s", mem_file, strerror(errno));
		if (!S_ISREG(st.st_mode))
			die("--mem-file %s is not a regular file", mem_file);
		if ((uint64_t)st.st_size % PAGE || (uint64_t)st.st_size < 2 * PAGE)
			die("--mem-file %s (%lld bytes) is not two or more whole 4 KiB pages",
			    mem_file, (long long)st.st_size);
		g.file_size = (uint64_t)st.st_size;
		/* The last page is the warm-up page: the tests use what lies before it. */
		if (!size_set && size > g.file_size - PAGE)
			size = g.file_size - PAGE;
		if (!seq_set && seq_size > g.file_size - PAGE)
			seq_size = g.file_size - PAGE;
		need = size > seq_size ? size : seq_size;
		if (need > g.file_size - PAGE)
			die("--mem-file %s holds %" PRIu64 " bytes; the tests need %" PRIu64
			    " plus a 4 KiB warm-up page",
			    mem_file, g.file_size, need);
		snprintf(g.mem_path, sizeof(g.mem_path), "%s", mem_file);
	} else {
		g.file_size = need + PAGE;
		fmt_mib(g.file_size, buf_a, sizeof(buf_a));
		fprintf(stderr, "creating a %s memory file of random bytes in %s\n", buf_a, g.dir);
		create_mem_file(g.file_size);
	}
	load_expected(need / PAGE);

	/* ---- the runs ---- */
	struct job {
		unsigned v, ti; /* variant, index into tlist (latency) */
		bool seq;
	} jobs[NVARIANTS * (MAX_TLIST + 1)];
	unsigned njobs = 0;
	struct run_result *lat = calloc(NVARIANTS * ntl * reps, sizeof(*lat));
	struct run_result *seqr = calloc(NVARIANTS * reps, sizeof(*seqr));
	uint64_t shuffle_seed = SEED ^ 0x5eed;

	if (!lat || !seqr)
		die("out of memory");
	for (unsigned v = 0; v < NVARIANTS; v++) {
		for (unsigned ti = 0; size && ti < ntl; ti++)
			jobs[njobs++] = (struct job){v, ti, false};
		if (seq_size)
			jobs[njobs++] = (struct job){v, 0, true};
	}
	for (unsigned rep = 0; rep < reps; rep++) {
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
				r = &seqr[jobs[k].v * reps + rep];
				run_one(v, seq_size / PAGE, 1, true, r);
				fprintf(stderr,
				        "rep %u/%u  %-12s  sequential %3" PRIu64
				        " MiB, 1 thread: %.3f s "
				        "(median %.1f us, p99 %.1f us; handler CPU %.2f s)\n",
				        rep + 1, reps, v->name, seq_size / MIB, r->wall_s,
				        r->med_us, r->p99_us, r->handler_cpu_s);
			} else {
				unsigned T = tlist[jobs[k].ti];

				r = &lat[(jobs[k].v * ntl + jobs[k].ti) * reps + rep];
				run_one(v, size / PAGE, T, false, r);
				fprintf(
				    stderr,
				    "rep %u/%u  %-12s  random %3" PRIu64
				    " MiB, %u thread%s: median %.1f us, p99 %.1f us, %.0f pages/s; "
				    "handler CPU %.2f s\n",
				    rep + 1, reps, v->name, size / MIB, T, T > 1 ? "s" : " ",
				    r->med_us, r->p99_us, r->pps, r->handler_cpu_s);
			}
		}
	}

	/* ---- the report ---- */
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
	free(lat);
	free(seqr);
	free(g.expected);
	cleanup();
	return 0;
}
