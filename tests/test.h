/* lazyvm's test harness: one binary per feature, each a list of test cases.
 * Every case runs in a forked child with its own timeout (TEST_CASE_TIMEOUT
 * seconds, default 60), so a crash, a hang or a failed CHECK in any thread ends
 * that case only. A binary exits 0 when every case passed, 1 when one failed,
 * 77 when the facility under test is truly absent (said loudly on stderr).
 * CHECK() prints the failed expression with file:line and fails the case at once.
 * tests/run-tests runs every binary under a timeout and prints the summary. */
#ifndef LAZYVM_TEST_H
#define LAZYVM_TEST_H

#include <errno.h>
#include <inttypes.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SKIP_CODE 77

struct test_case {
	const char *name;
	void (*fn)(void);
};

#define CHECK(expr)                                                                                \
	do {                                                                                       \
		if (!(expr)) {                                                                     \
			fprintf(stderr, "  FAILED %s:%d: CHECK(%s)\n", __FILE__, __LINE__, #expr); \
			_exit(1);                                                                  \
		}                                                                                  \
	} while (0)

/* Compares two integers and prints both values when they differ. */
#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long _a = (long long)(a), _b = (long long)(b);                                \
		if (_a != _b) {                                                                    \
			fprintf(stderr, "  FAILED %s:%d: CHECK_EQ(%s, %s): %lld != %lld\n",        \
			        __FILE__, __LINE__, #a, #b, _a, _b);                               \
			_exit(1);                                                                  \
		}                                                                                  \
	} while (0)

/* A library call that returns 0 or -errno must have returned 0. */
#define CHECK_OK(call)                                                                             \
	do {                                                                                       \
		long long _r = (long long)(call);                                                  \
		if (_r != 0) {                                                                     \
			fprintf(stderr, "  FAILED %s:%d: %s returned %lld (%s)\n", __FILE__,       \
			        __LINE__, #call, _r, _r < 0 ? strerror((int)-_r) : "?");           \
			_exit(1);                                                                  \
		}                                                                                  \
	} while (0)

/* Marks the running case as skipped (facility absent) and leaves it. */
#define SKIP(...)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "  SKIP: ");                                                       \
		fprintf(stderr, __VA_ARGS__);                                                      \
		fprintf(stderr, "\n");                                                             \
		_exit(TEST_SKIP_CODE);                                                             \
	} while (0)

/* Runs the cases named on the command line (all when none), prints one line
 * each, returns the process exit code. */
int test_main(const struct test_case *cases, size_t n, int argc, char **argv);

#define TEST_MAIN(...)                                                                             \
	static const struct test_case test_cases_[] = {__VA_ARGS__};                               \
	int main(int argc, char **argv)                                                            \
	{                                                                                          \
		return test_main(test_cases_, sizeof(test_cases_) / sizeof(test_cases_[0]), argc,  \
		                 argv);                                                            \
	}

#define TEST(fn)                                                                                   \
	{                                                                                          \
#fn, fn                                                                            \
	}

#endif
