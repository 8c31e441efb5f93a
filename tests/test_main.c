#include "test.h"

#include <string.h>

jmp_buf test_fail_jmp;
int test_skip_requested;

int test_main(const struct test_case *cases, size_t n, int argc, char **argv)
{
	unsigned passed = 0, failed = 0, skipped = 0;

	for (size_t i = 0; i < n; i++) {
		int selected = argc < 2;

		for (int a = 1; a < argc; a++)
			selected |= strcmp(argv[a], cases[i].name) == 0;
		if (!selected)
			continue;
		test_skip_requested = 0;
		fflush(stdout);
		int how = setjmp(test_fail_jmp);
		if (how == 0) {
			cases[i].fn();
			passed++;
			printf("  ok   %s\n", cases[i].name);
		} else if (how == 2) {
			skipped++;
			printf("  skip %s\n", cases[i].name);
		} else {
			failed++;
			printf("  FAIL %s\n", cases[i].name);
		}
		fflush(stdout);
	}
	if (failed)
		return 1;
	if (skipped && !passed)
		return TEST_SKIP_CODE;
	return 0;
}
