/* Parsing of sizes and durations given on the command line, and clocks. */
#ifndef LAZYVM_UNITS_H
#define LAZYVM_UNITS_H

#include <stdint.h>
#include <time.h>

/* "4096", "4k", "64M", "1G", "1T" (binary multiples, case-insensitive, optional
 * trailing "iB"/"B"). Returns 0, or -EINVAL for a malformed string and -ERANGE
 * for one that does not fit in 64 bits. */
int lv_parse_size(const char *s, uint64_t *out);

/* "0", "250ns", "200us", "10ms", "2s" into nanoseconds. A bare number is
 * refused (-EINVAL): a duration without its unit is a mistake waiting to happen. */
int lv_parse_duration(const char *s, uint64_t *ns);

static inline uint64_t lv_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleeps for ns nanoseconds, restarting after signals. */
void lv_sleep_ns(uint64_t ns);

#endif
