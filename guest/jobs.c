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
	/* rescan reads scan job `of`'s pages: its pattern is that job's. */
	uint32_t owner = j->kind == JOB_RESCAN ? j->of : j->index;

	for (uint64_t p = 0; p < j->size / PAGE_SIZE; p++) {
		uint8_t *page = j->area + p * PAGE_SIZE;
		uint64_t want = pattern(seed, owner, p, 0);
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
	case CRASH_HANG:
		/* A guest that stops without a word: interrupts off, halted for
		 * good (what the VMM's stall watchdog is for). */
		for (;;)
			asm volatile("cli; hlt");
	}
	msg_log("task %u %s: survived the crash (v=%lu)", j->index, j->spec, v);
	msg_send(GUEST_MSG_RESULT, 1, j->index, 0, 0, 0, j->spec);
	return 1;
}

/* edge:SIZE: the instructions a lazy restore must get exactly right on a
 * missing page. The area is A (first quarter), B (second quarter) and C
 * (second half); all three are written before the snapshot point, so after a
 * restore every access below starts on missing pages:
 *  - one `rep movsb` from the middle of A's first page to the middle of B's,
 *    across every page boundary of both (source and destination missing);
 *  - read-modify-write on every page of C: `addq $3` to its first qword and
 *    `lock xaddq` of 5 to its second (a write that must not be lost or applied
 *    twice);
 *  - `repe cmpsq` to compare, and plain loads to check C. */
static int run_edge(struct job *j, uint64_t seed)
{
	uint64_t q = j->size / 4, bad = 0, first_bad = 0;
	uint8_t *a = j->area, *b = j->area + q, *c = j->area + 2 * q;
	uint64_t len = q - PAGE_SIZE; /* from mid-page to mid-page */
	const uint8_t *src = a + PAGE_SIZE / 2;
	uint8_t *dst = b + PAGE_SIZE / 4, *d = dst;
	uint64_t n = len;

	asm volatile("rep movsb" : "+S"(src), "+D"(d), "+c"(n) : : "memory");
	/* Check the copy with repe cmpsq over whole qwords, then the tail. */
	const uint8_t *s1 = a + PAGE_SIZE / 2, *s2 = dst;
	uint64_t nq = len / 8;
	bool equal;
	asm volatile("repe cmpsq" : "+S"(s1), "+D"(s2), "+c"(nq), "=@ccz"(equal) : : "memory");
	if (!equal && !bad++)
		first_bad = (uintptr_t)s2 - 8;
	for (uint64_t i = len / 8 * 8; i < len; i++)
		if (dst[i] != a[PAGE_SIZE / 2 + i] && !bad++)
			first_bad = (uintptr_t)&dst[i];
	/* The rest of B's last page, past the copy, keeps B's own pattern. */
	const uint64_t *tail = (const uint64_t *)(b + q - PAGE_SIZE);
	uint64_t bpat = pattern(seed, j->index, 2 * q / PAGE_SIZE - 1, 0);
	for (uint64_t k = (uint64_t)(dst + len - (b + q - PAGE_SIZE) + 7) / 8; k < QWORDS_PER_PAGE;
	     k++)
		if (tail[k] != bpat && !bad++)
			first_bad = (uintptr_t)&tail[k];
	for (uint64_t p = 0; p < 2 * q / PAGE_SIZE; p++) {
		uint64_t *w = (uint64_t *)(c + p * PAGE_SIZE), add = 5;
		uint64_t base = pattern(seed, j->index, 2 * q / PAGE_SIZE + p, 0);

		asm volatile("addq $3, %0" : "+m"(w[0]));
		asm volatile("lock xaddq %0, %1" : "+r"(add), "+m"(w[1]) : : "memory");
		if ((add != base || w[0] != base + 3 || w[1] != base + 5 || w[2] != base) && !bad++)
			first_bad = (uintptr_t)w;
	}
	if (bad)
		msg_log("task %u %s: first bad byte at 0x%lx", j->index, j->spec, first_bad);
	msg_send(GUEST_MSG_RESULT, bad != 0, j->index, j->size, bad, first_bad, j->spec);
	return bad != 0;
}

void job_prepare(struct job *j, uint64_t seed)
{
	switch (j->kind) {
	case JOB_SCAN:
	case JOB_EDGE: prepare_pages(j, seed); break;
	case JOB_RANDOM:
		prepare_pages(j, seed);
		memset(j->gens, 0, random_pages(j));
		break;
	case JOB_COMPUTE:
		j->x = guest_compute(guest_compute_x0(seed, j->index), j->count / 2);
		break;
	case JOB_CRASH:
	case JOB_RESCAN: break;
	}
}

int job_run(struct job *j, uint64_t seed)
{
	switch (j->kind) {
	case JOB_SCAN: return run_scan(j, seed);
	case JOB_RANDOM: return run_random(j, seed);
	case JOB_COMPUTE: return run_compute(j);
	case JOB_CRASH: return run_crash(j);
	case JOB_EDGE: return run_edge(j, seed);
	case JOB_RESCAN: return run_scan(j, seed);
	}
	return 1;
}
