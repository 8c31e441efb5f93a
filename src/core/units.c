#include "lazyvm/units.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Parses the leading unsigned decimal of s; *end gets the rest. */
static int parse_u64(const char *s, uint64_t *v, const char **end)
{
	uint64_t x = 0;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');

		if (x > (UINT64_MAX - d) / 10)
			return -ERANGE;
		x = x * 10 + d;
	}
	*v = x;
	*end = s;
	return 0;
}

static int mul_checked(uint64_t a, uint64_t b, uint64_t *out)
{
	if (b && a > UINT64_MAX / b)
		return -ERANGE;
	*out = a * b;
	return 0;
}

int lv_parse_size(const char *s, uint64_t *out)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {
	    {"", 1},
	    {"b", 1},
	    {"k", 1ull << 10},
	    {"kb", 1ull << 10},
	    {"kib", 1ull << 10},
	    {"m", 1ull << 20},
	    {"mb", 1ull << 20},
	    {"mib", 1ull << 20},
	    {"g", 1ull << 30},
	    {"gb", 1ull << 30},
	    {"gib", 1ull << 30},
	    {"t", 1ull << 40},
	    {"tb", 1ull << 40},
	    {"tib", 1ull << 40},
	};
	const char *rest;
	uint64_t v;
	int r;

	if (!s || (r = parse_u64(s, &v, &rest)) < 0)
		return s ? r : -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcasecmp(rest, units[i].suffix) == 0)
			return mul_checked(v, units[i].mult, out);
	return -EINVAL;
}

int lv_parse_duration(const char *s, uint64_t *ns)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {
	    {"ns", 1},
	    {"us", 1000},
	    {"ms", 1000000},
	    {"s", 1000000000ull},
	};
	const char *rest;
	uint64_t v;
	int r;

	if (!s || (r = parse_u64(s, &v, &rest)) < 0)
		return s ? r : -EINVAL;
	if (*rest == '\0')
		return v == 0 ? (*ns = 0, 0) : -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(rest, units[i].suffix) == 0)
			return mul_checked(v, units[i].mult, ns);
	return -EINVAL;
}

void lv_sleep_ns(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
	                      .tv_nsec = (long)(ns % 1000000000ull)};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}
