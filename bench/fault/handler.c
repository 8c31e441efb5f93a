/* Starting and stopping a handler for one run: the floor (floor.c) or
 * `lazyvm fc-handler`, forked, waited for, handed the VM as Firecracker does,
 * then stopped and its CPU time taken. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_bench.h"
#include "lazyvm/units.h"

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

void lazyvm_argv(const struct variant *v, const char **argv)
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

pid_t start_handler(const struct variant *v)
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
void handoff(const struct variant *v, pid_t pid, struct fc_vm *vm)
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

void stop_handler(const struct variant *v, pid_t pid)
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
