/* The workloads' prepare and run phases.
 *
 * Memory workloads go a page at a time with one `rep stosq` to fill and one
 * `repe scasq` to verify: this KVM emulates every guest instruction (~0.5 us
 * each) but a string instruction only once per page, and a page never spans
 * two faults, which keeps each lazy-restore fault to one page.
 */
#include "workload.h"
#include "lazyvm/guest_compute.h"

#define QWORDS_PER_PAGE (PAGE_SIZE / 8)
#define CRASH_PF_ADDR   0x200000000ull /* 8 GiB: beyond the VMM's identity map */

/* splitmix64's finaliser: a cheap bijection with good avalanche. */
static uint64_t mix64(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The qword repeated over page `page` of task `task`'s area at generation
 * `gen`: different for every task, page and generation, so a page restored
 * from the wrong place or the wrong time never matches. */
static uint64_t pattern(uint64_t seed, uint32_t task, uint64_t page, uint8_t gen)
{
	return mix64(seed ^ mix64((uint64_t)task << 40 ^ (uint64_t)gen << 32 ^ page));
}

static void page_fill(void *page, uint64_t v)
{
	uint64_t n = QWORDS_PER_PAGE;

	asm volatile("rep stosq" : "+D"(page), "+c"(n) : "a"(v) : "memory");
}

/* Returns the index of the first qword that differs from v, or
 * QWORDS_PER_PAGE if the page is all v. */
static uint64_t page_check(const void *page, uint64_t v)
{
	const uint8_t *p = page;
	uint64_t n = QWORDS_PER_PAGE;
	bool equal;

	asm volatile("repe scasq" : "+D"(p), "+c"(n), "=@ccz"(equal) : "a"(v) : "memory");
	if (equal)
		return QWORDS_PER_PAGE;
	return (uint64_t)(p - (const uint8_t *)page) / 8 - 1;
}

/* A LOG line for a task's first bad page (later ones only count). */
static void report_mismatch(const struct job *j, const uint8_t *page, uint64_t q, uint64_t want)
{
	const uint64_t *qw = (const uint64_t *)page;

	msg_log("task %u %s: page 0x%lx q%lu 0x%lx != 0x%lx", j->index, j->spec,
	        (uint64_t)(uintptr_t)page, q, qw[q], want);
}

static uint64_t random_pages(const struct job *j)
{
	return j->size / PAGE_SIZE;
}

static void prepare_pages(struct job *j, uint64_t seed)
{
	for (uint64_t p = 0; p < j->size / PAGE_SIZE; p++)
		page_fill(j->area + p * PAGE_SIZE, pattern(seed, j->index, p, 0));
}

static int run_scan(struct job *j, uint64_t seed)
{
	uint64_t bad = 0, first_bad = 0;

	for (uint64_t p = 0; p < j->size / PAGE_SIZE; p++) {
		uint8_t *page = j->area + p * PAGE_SIZE;
		uint64_t want = pattern(seed, j->index, p, 0);
		uint64_t q = page_check(page, want);

		if (q == QWORDS_PER_PAGE)
			continue;
		if (!bad++) {
			first_bad = (uintptr_t)page;
			report_mismatch(j, page, q, want);
		}
	}
	msg_send(GUEST_MSG_RESULT, bad != 0, j->index, j->size, bad, first_bad, j->spec);
	return bad != 0;
}

/* xorshift64 (13, 7, 17) for the page choice; its state must not be 0. */
static uint64_t xorshift64(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Touch i checks the page against its generation; every second touch (odd
 * i) then rewrites it at the next generation, so the run phase also dirties
 * pages the restore brought in. */
static int run_random(struct job *j, uint64_t seed)
{
	uint64_t npages = random_pages(j), s = mix64(seed ^ 0x72616e646f6dull ^ j->index) | 1;
	uint64_t bad = 0, first_bad = 0;

	for (uint64_t i = 0; i < j->count; i++) {
		uint64_t p = xorshift64(&s) % npages;
		uint8_t *page = j->area + p * PAGE_SIZE;
		uint8_t gen = j->gens[p];
		uint64_t want = pattern(seed, j->index, p, gen);
		uint64_t q = page_check(page, want);

		if (q != QWORDS_PER_PAGE && !bad++) {
			first_bad = (uintptr_t)page;
			report_mismatch(j, page, q, want);
		}
		if (i & 1) {
			j->gens[p] = (uint8_t)(gen + 1);
			page_fill(page, pattern(seed, j->index, p, (uint8_t)(gen + 1)));
		}
	}
	msg_send(GUEST_MSG_RESULT, bad != 0, j->index, j->count * PAGE_SIZE, bad, first_bad,
	         j->spec);
	return bad != 0;
}

static int run_compute(struct job *j)
{
	j->x = guest_compute(j->x, j->count - j->count / 2);
	msg_send(GUEST_MSG_RESULT, 0, j->index, 0, j->x, j->count, j->spec);
	return 0;
}

static int run_crash(struct job *j)
{
	uint64_t v = 1;

	switch (j->crash) {
	case CRASH_UD: asm volatile("ud2"); break;
	case CRASH_PF:
		asm volatile("mov (%1), %0" : "=r"(v) : "r"(CRASH_PF_ADDR) : "memory");
		break;
	case CRASH_DIV:
		/* In asm: a C division by zero is undefined, not a #DE. */
		asm volatile("xor %%edx, %%edx; divq %1" : "+a"(v) : "r"(0ull) : "rdx");
		break;
	}
	msg_log("task %u %s: survived the crash (v=%lu)", j->index, j->spec, v);
	msg_send(GUEST_MSG_RESULT, 1, j->index, 0, 0, 0, j->spec);
	return 1;
}

void job_prepare(struct job *j, uint64_t seed)
{
	switch (j->kind) {
	case JOB_SCAN: prepare_pages(j, seed); break;
	case JOB_RANDOM:
		prepare_pages(j, seed);
		memset(j->gens, 0, random_pages(j));
		break;
	case JOB_COMPUTE:
		j->x = guest_compute(guest_compute_x0(seed, j->index), j->count / 2);
		break;
	case JOB_CRASH: break;
	}
}

int job_run(struct job *j, uint64_t seed)
{
	switch (j->kind) {
	case JOB_SCAN: return run_scan(j, seed);
	case JOB_RANDOM: return run_random(j, seed);
	case JOB_COMPUTE: return run_compute(j);
	case JOB_CRASH: return run_crash(j);
	}
	return 1;
}
