/* The workload string: parsing, the bump allocator that gives every job its
 * memory, and one task per job.
 *
 * Grammar: parts joined with '+', each one of
 *   scan:SIZE  random:SIZE:COUNT  compute:N  crash:ud|pf|div|hang
 * SIZE is a positive multiple of 4 KiB with an optional binary suffix k, M or
 * G (either case); COUNT and N are plain decimal.
 */
#include "workload.h"

#define COUNT_MAX (1ull << 40) /* keeps COUNT * PAGE_SIZE in 64 bits */

static struct job jobs[GUEST_MAX_TASKS];

struct field {
	const char *s;
	size_t len;
};

static bool field_is(struct field f, const char *word)
{
	size_t n = strlen(word);

	return f.len == n && !memcmp(f.s, word, n);
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
	if (!*size || *size % PAGE_SIZE)
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

/* One part, split at ':' into f[0 .. nf). Returns NULL or what is wrong. */
static const char *parse_part(struct job *j, const struct field *f, unsigned nf)
{
	if (field_is(f[0], "scan")) {
		j->kind = JOB_SCAN;
		return nf != 2 ? "expected scan:SIZE" : parse_size(f[1], &j->size);
	}
	if (field_is(f[0], "random")) {
		const char *bad;

		j->kind = JOB_RANDOM;
		if (nf != 3)
			return "expected random:SIZE:COUNT";
		bad = parse_size(f[1], &j->size);
		return bad ? bad : parse_count(f[2], &j->count);
	}
	if (field_is(f[0], "compute")) {
		j->kind = JOB_COMPUTE;
		return nf != 2 ? "expected compute:N" : parse_count(f[1], &j->count);
	}
	if (field_is(f[0], "rescan")) {
		uint64_t k;
		const char *bad;

		/* A second reader of scan job K's pages, in its run phase only: two
		 * tasks faulting on the same pages at the same time. */
		j->kind = JOB_RESCAN;
		if (nf != 2)
			return "expected rescan:K (K = the index of an earlier scan task)";
		bad = parse_count(f[1], &k);
		if (bad)
			return bad;
		j->of = (uint32_t)k;
		return NULL;
	}
	if (field_is(f[0], "edge")) {
		const char *bad;

		j->kind = JOB_EDGE;
		if (nf != 2)
			return "expected edge:SIZE";
		bad = parse_size(f[1], &j->size);
		if (!bad && (j->size < 4 * 4 * PAGE_SIZE || j->size % (4 * PAGE_SIZE)))
			return "edge:SIZE needs a multiple of 16k, at least 64k";
		return bad;
	}
	if (field_is(f[0], "crash")) {
		j->kind = JOB_CRASH;
		if (nf == 2 && field_is(f[1], "ud"))
			j->crash = CRASH_UD;
		else if (nf == 2 && field_is(f[1], "pf"))
			j->crash = CRASH_PF;
		else if (nf == 2 && field_is(f[1], "div"))
			j->crash = CRASH_DIV;
		else if (nf == 2 && field_is(f[1], "hang"))
			j->crash = CRASH_HANG;
		else
			return "expected crash:ud, crash:pf, crash:div or crash:hang";
		return NULL;
	}
	return "unknown task (scan, random, compute, edge, rescan or crash)";
}

int workload_parse(const char *spec, struct job *out, unsigned max, unsigned *n, char *err,
                   size_t errlen)
{
	const char *p = spec;

	*n = 0;
	if (!*spec)
		return 0;
	for (;;) {
		size_t len = 0;
		struct field f[4];
		unsigned nf = 0;
		const char *bad = NULL;
		struct job *j = &out[*n];

		while (p[len] && p[len] != '+')
			len++;
		if (*n == max)
			bad = "too many tasks";
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
			memset(j, 0, sizeof(*j));
			j->index = *n;
			bad = len ? parse_part(j, f, nf)
			          : "empty part (two '+' in a row, or at an end)";
		}
		if (bad) {
			fmt_format(err, errlen, "bad workload part '%.*s': %s", (int)len, p, bad);
			return -1;
		}
		fmt_format(j->spec, sizeof(j->spec), "%.*s", (int)len, p);
		(*n)++;
		if (!p[len])
			return 0;
		p += len + 1;
	}
}

uint64_t job_mem_need(const struct job *j)
{
	switch (j->kind) {
	case JOB_SCAN:
	case JOB_EDGE: return j->size;
	case JOB_RANDOM:
		return j->size + (j->size / PAGE_SIZE + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE;
	default: return 0;
	}
}

unsigned workload_setup(uint64_t heap_start, uint64_t heap_end, void (*task_fn)(void *))
{
	char err[MSG_TEXT_MAX];
	uint64_t need = 0, have = heap_end > heap_start ? heap_end - heap_start : 0;
	uint64_t next = heap_start;
	unsigned n;

	if (workload_parse(boot.workload, jobs, GUEST_MAX_TASKS, &n, err, sizeof(err)))
		guest_fail("%s", err);
	for (unsigned i = 0; i < n; i++) {
		need += job_mem_need(&jobs[i]); /* each <= 2 * 4 GiB: no overflow */
		if (jobs[i].kind == JOB_RESCAN &&
		    (jobs[i].of >= i || jobs[jobs[i].of].kind != JOB_SCAN))
			guest_fail("%s: task %u is not an earlier scan task", jobs[i].spec,
			           jobs[i].of);
	}
	if (need > have)
		guest_fail("workload needs %lu bytes, guest has %lu", need, have);

	/* Every piece is a multiple of PAGE_SIZE from a 2 MiB boundary, so
	 * every page the workloads touch is whole and page-aligned. */
	for (unsigned i = 0; i < n; i++) {
		struct job *j = &jobs[i];

		if (j->kind == JOB_SCAN || j->kind == JOB_RANDOM || j->kind == JOB_EDGE) {
			j->area = (uint8_t *)(uintptr_t)next;
			next += j->size;
		}
		if (j->kind == JOB_RESCAN) { /* the scan job's own pages and size */
			j->area = jobs[j->of].area;
			j->size = jobs[j->of].size;
		}
		if (j->kind == JOB_RANDOM) {
			j->gens = (uint8_t *)(uintptr_t)next;
			next += job_mem_need(j) - j->size;
		}
		task_create(i % boot.nr_vcpus, task_fn, j, j->spec);
	}
	msg_log("workload: %u tasks on %u vCPUs, %lu bytes at 0x%lx", n, boot.nr_vcpus, need,
	        heap_start);
	return n;
}
