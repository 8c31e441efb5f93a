/* fault_bench's shared state and the ways out: the temporary files, the
 * running handler, the signal handler, die/die_log; small helpers every part
 * uses (allocation, full reads, the fixed-seed generator). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_bench.h"
#include "lazyvm/units.h"

struct bench_state g;

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
void cleanup(void)
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

void on_signal(int sig)
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

void die(const char *fmt, ...)
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
void die_log(const struct variant *v, const char *fmt, ...)
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

uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0 (the modulo bias is irrelevant at these sizes). */
uint64_t rand_below(uint64_t *s, uint64_t n)
{
	return splitmix64(s) % n;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

int pread_full(int fd, void *buf, size_t len, uint64_t off)
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

void sleep_step(void)
{
	lv_sleep_ns(POLL_STEP_NS);
}
