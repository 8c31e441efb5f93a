/* The workload string parser (include/lazyvm/guest_workload.h). Built twice:
 * into the guest, and into the host library so that `lazyvm run` can refuse a
 * bad string before it boots a VM. Freestanding C: no libc calls. */
#include "lazyvm/guest_workload.h"

#include "lazyvm/guest_abi.h"

#define COUNT_MAX (1ull << 40) /* keeps COUNT * PAGE_SIZE in 64 bits */

struct field {
	const char *s;
	size_t len;
};

static bool field_is(struct field f, const char *word)
{
	size_t i = 0;

	for (; i < f.len && word[i]; i++)
		if (f.s[i] != word[i])
			return false;
	return i == f.len && !word[i];
}

/* Decimal with an optional k/M/G suffix when `sized`; 0 on success. */
static int parse_u64(struct field f, bool sized, uint64_t *out)
{
	uint64_t v = 0;
	size_t i = 0;
	unsigned shift = 0;

	if (!f.len || f.s[0] < '0' || f.s[0] > '9')
		return -1;
	for (; i < f.len && f.s[i] >= '0' && f.s[i] <= '9'; i++) {
		uint64_t d = (uint64_t)(f.s[i] - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	if (sized && i + 1 == f.len) {
		switch (f.s[i]) {
		case 'k':
		case 'K': shift = 10; break;
		case 'm':
		case 'M': shift = 20; break;
		case 'g':
		case 'G': shift = 30; break;
		default: return -1;
		}
		i++;
	}
	if (i != f.len || (shift && v > UINT64_MAX >> shift))
		return -1;
	*out = v << shift;
	return 0;
}

static const char *parse_size(struct field f, uint64_t *size)
{
	if (parse_u64(f, true, size))
		return "SIZE is not a number with an optional k/M/G suffix";
	if (!*size || *size % WORKLOAD_PAGE_SIZE)
		return "SIZE must be a positive multiple of 4k";
	if (*size > GUEST_MEM_MAX)
		return "SIZE is larger than any guest";
	return NULL;
}

static const char *parse_count(struct field f, uint64_t *count)
{
	if (parse_u64(f, false, count) || *count > COUNT_MAX)
		return "COUNT and N must be decimal, below 2^40";
	return NULL;
}

/* One part, split at ':' into f[0 .. nf); tasks[0 .. index) are the ones
 * before it. Returns NULL or what is wrong. */
static const char *parse_part(struct workload_task *t, const struct field *f, unsigned nf,
                              const struct workload_task *before, unsigned index)
{
	const char *bad;
	uint64_t k;

	if (field_is(f[0], "scan")) {
		t->kind = JOB_SCAN;
		return nf != 2 ? "expected scan:SIZE" : parse_size(f[1], &t->size);
	}
	if (field_is(f[0], "random")) {
		t->kind = JOB_RANDOM;
		if (nf != 3)
			return "expected random:SIZE:COUNT";
		bad = parse_size(f[1], &t->size);
		return bad ? bad : parse_count(f[2], &t->count);
	}
	if (field_is(f[0], "compute")) {
		t->kind = JOB_COMPUTE;
		return nf != 2 ? "expected compute:N" : parse_count(f[1], &t->count);
	}
	if (field_is(f[0], "rescan")) {
		/* A second reader of scan task K's pages, in its run phase only: two
		 * tasks faulting on the same pages at the same time. */
		t->kind = JOB_RESCAN;
		if (nf != 2)
			return "expected rescan:K (K = the index of an earlier scan task)";
		if ((bad = parse_count(f[1], &k)))
			return bad;
		if (k >= index || before[k].kind != JOB_SCAN)
			return "K is not the index (from 0) of an earlier scan task";
		t->of = (uint32_t)k;
		return NULL;
	}
	if (field_is(f[0], "edge")) {
		t->kind = JOB_EDGE;
		if (nf != 2)
			return "expected edge:SIZE";
		bad = parse_size(f[1], &t->size);
		if (!bad &&
		    (t->size < 16 * WORKLOAD_PAGE_SIZE || t->size % (4 * WORKLOAD_PAGE_SIZE)))
			return "edge:SIZE needs a multiple of 16k, at least 64k";
		return bad;
	}
	if (field_is(f[0], "crash")) {
		t->kind = JOB_CRASH;
		if (nf == 2 && field_is(f[1], "ud"))
			t->crash = CRASH_UD;
		else if (nf == 2 && field_is(f[1], "pf"))
			t->crash = CRASH_PF;
		else if (nf == 2 && field_is(f[1], "div"))
			t->crash = CRASH_DIV;
		else if (nf == 2 && field_is(f[1], "hang"))
			t->crash = CRASH_HANG;
		else
			return "expected crash:ud, crash:pf, crash:div or crash:hang";
		return NULL;
	}
	return "unknown task (scan, random, compute, edge, rescan or crash)";
}

int workload_parse_tasks(const char *spec, struct workload_task *tasks, unsigned max, unsigned *n,
                         struct workload_error *err)
{
	size_t at = 0, total = 0;

	*n = 0;
	while (spec[total])
		total++;
	if (total >= GUEST_WORKLOAD_MAX) {
		*err = (struct workload_error){
		    .why = "longer than the guest's boot info holds (255 characters)",
		    .whole = true};
		return -1;
	}
	if (!total)
		return 0;
	for (;;) {
		const char *p = spec + at, *bad = NULL;
		size_t len = 0;
		struct field f[4];
		unsigned nf = 0;

		while (p[len] && p[len] != '+')
			len++;
		if (*n == max)
			bad = "too many tasks (at most 32)";
		for (size_t i = 0, start = 0; !bad && i <= len; i++) {
			if (i < len && p[i] != ':')
				continue;
			if (nf == 4) {
				bad = "too many ':' fields";
				break;
			}
			f[nf++] = (struct field){p + start, i - start};
			start = i + 1;
		}
		if (!bad) {
			tasks[*n] =
			    (struct workload_task){.off = (uint32_t)at, .len = (uint32_t)len};
			bad = len ? parse_part(&tasks[*n], f, nf, tasks, *n)
			          : "empty part (two '+' in a row, or at an end)";
		}
		if (bad) {
			*err = (struct workload_error){
			    .why = bad, .off = (uint32_t)at, .len = (uint32_t)len};
			return -1;
		}
		(*n)++;
		if (!p[len])
			return 0;
		at += len + 1;
	}
}

uint64_t workload_task_mem(const struct workload_task *t)
{
	switch (t->kind) {
	case JOB_SCAN:
	case JOB_EDGE: return t->size;
	case JOB_RANDOM:
		return t->size + (t->size / WORKLOAD_PAGE_SIZE + WORKLOAD_PAGE_SIZE - 1) /
		                     WORKLOAD_PAGE_SIZE * WORKLOAD_PAGE_SIZE;
	default: return 0;
	}
}
