#include "test.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>

int test_main(const struct test_case *cases, size_t n, int argc, char **argv)
{
	const char *env = getenv("TEST_CASE_TIMEOUT");
	unsigned timeout = env ? (unsigned)atoi(env) : 60;
	unsigned passed = 0, failed = 0, skipped = 0;

	for (size_t i = 0; i < n; i++) {
		int selected = argc < 2, status;
		pid_t pid;

		for (int a = 1; a < argc; a++)
			selected |= strcmp(argv[a], cases[i].name) == 0;
		if (!selected)
			continue;
		fflush(stdout);
		fflush(stderr);
		pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			alarm(timeout);
			cases[i].fn();
			fflush(stdout);
			_exit(0);
		}
		while (waitpid(pid, &status, 0) < 0)
			;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			passed++;
			printf("  ok   %s\n", cases[i].name);
		} else if (WIFEXITED(status) && WEXITSTATUS(status) == TEST_SKIP_CODE) {
			skipped++;
			printf("  skip %s\n", cases[i].name);
		} else {
			failed++;
			if (WIFSIGNALED(status))
				printf("  FAIL %s (%s%s)\n", cases[i].name,
				       strsignal(WTERMSIG(status)),
				       WTERMSIG(status) == SIGALRM ? ": timed out" : "");
			else
				printf("  FAIL %s\n", cases[i].name);
		}
		fflush(stdout);
	}
	printf("%u passed, %u failed, %u skipped\n", passed, failed, skipped);
	if (failed)
		return 1;
	if (skipped && !passed)
		return TEST_SKIP_CODE;
	return 0;
}
