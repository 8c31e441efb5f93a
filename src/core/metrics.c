#include "lazyvm/metrics.h"

#include <string.h>

static unsigned bucket_of(uint64_t ns)
{
	if (ns < HIST_SUB)
		return (unsigned)ns;
	unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
	unsigned shift = msb - HIST_SUB_BITS;
	unsigned sub = (unsigned)(ns >> shift) & (HIST_SUB - 1);

	return (shift + 1) * HIST_SUB + sub;
}

/* Lowest value that falls in bucket b. */
static uint64_t bucket_floor(unsigned b)
{
	if (b < HIST_SUB)
		return b;
	unsigned shift = b / HIST_SUB - 1;

	return ((uint64_t)(HIST_SUB + b % HIST_SUB)) << shift;
}

void hist_record(struct hist *h, uint64_t ns)
{
	ctr_add(&h->count, 1);
	ctr_add(&h->sum_ns, ns);
	if (ns > atomic_load_explicit(&h->max_ns, memory_order_relaxed))
		atomic_store_explicit(&h->max_ns, ns, memory_order_relaxed);
	ctr_add(&h->buckets[bucket_of(ns)], 1);
}

uint64_t hist_percentile(const struct hist *h, double p)
{
	uint64_t count = atomic_load_explicit(&h->count, memory_order_relaxed);
	uint64_t seen = 0, rank;

	if (count == 0)
		return 0;
	if (p < 0)
		p = 0;
	if (p > 1)
		p = 1;
	rank = (uint64_t)(p * (double)(count - 1)) + 1;
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
		if (seen >= rank) {
			/* Report the bucket's midpoint, capped by the true maximum. */
			uint64_t lo = bucket_floor(b);
			uint64_t hi = b + 1 < HIST_BUCKETS ? bucket_floor(b + 1) : lo;
			uint64_t mid = lo + (hi - lo) / 2;
			uint64_t max = atomic_load_explicit(&h->max_ns, memory_order_relaxed);

			return mid < max ? mid : max;
		}
	}
	return atomic_load_explicit(&h->max_ns, memory_order_relaxed);
}

static void add_relaxed(_Atomic uint64_t *dst, const _Atomic uint64_t *src)
{
	ctr_add(dst, atomic_load_explicit(src, memory_order_relaxed));
}

void metrics_add(struct metrics *dst, const struct metrics *src)
{
#define METRICS_ADD(name, doc) add_relaxed(&dst->name, &src->name);
	METRICS_COUNTERS(METRICS_ADD)
#undef METRICS_ADD
	add_relaxed(&dst->latency.count, &src->latency.count);
	add_relaxed(&dst->latency.sum_ns, &src->latency.sum_ns);
	uint64_t max = atomic_load_explicit(&src->latency.max_ns, memory_order_relaxed);
	if (max > atomic_load_explicit(&dst->latency.max_ns, memory_order_relaxed))
		atomic_store_explicit(&dst->latency.max_ns, max, memory_order_relaxed);
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		add_relaxed(&dst->latency.buckets[b], &src->latency.buckets[b]);
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

void metrics_write_json(FILE *f, const struct metrics *m)
{
	const struct hist *h = &m->latency;
	uint64_t n = atomic_load_explicit(&h->count, memory_order_relaxed);
	uint64_t sum = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);

	fputc('{', f);
#define METRICS_JSON(name, doc)                                                                    \
	fprintf(f, "\"" #name "\":%llu,",                                                          \
	        (unsigned long long)atomic_load_explicit(&m->name, memory_order_relaxed));
	METRICS_COUNTERS(METRICS_JSON)
#undef METRICS_JSON
	fprintf(f,
	        "\"latency_us\":{\"count\":%llu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,"
	        "\"p99\":%.1f,\"max\":%.1f}}",
	        (unsigned long long)n, n ? us(sum) / (double)n : 0.0, us(hist_percentile(h, 0.5)),
	        us(hist_percentile(h, 0.9)), us(hist_percentile(h, 0.99)),
	        us(atomic_load_explicit(&h->max_ns, memory_order_relaxed)));
}

uint64_t hist_count_at_most(const struct hist *h, uint64_t ns)
{
	uint64_t n = 0;

	/* Whole buckets that lie at or below ns: exact to one bucket (~3%). */
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		uint64_t hi = b + 1 < HIST_BUCKETS ? bucket_floor(b + 1) : UINT64_MAX;

		if (hi - 1 > ns)
			break;
		n += atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
	}
	return n;
}

/* Bucket bounds of the exported histogram, in seconds: 1-2-5 steps. */
static const double prom_le[] = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3,
                                 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,  0.2,  0.5,  1.0};

void metrics_write_prom(FILE *f, const struct metrics *const *ms, const char *const *labels,
                        size_t n)
{
#define METRICS_PROM(name, doc)                                                                    \
	fprintf(f, "# HELP lazyvm_" #name "_total %s\n# TYPE lazyvm_" #name "_total counter\n",    \
	        doc);                                                                              \
	for (size_t i = 0; i < n; i++)                                                             \
		fprintf(                                                                           \
		    f, "lazyvm_" #name "_total{%s} %llu\n", labels[i],                             \
		    (unsigned long long)atomic_load_explicit(&ms[i]->name, memory_order_relaxed));
	METRICS_COUNTERS(METRICS_PROM)
#undef METRICS_PROM
	fputs("# HELP lazyvm_fault_latency_seconds fault message read -> page installed\n"
	      "# TYPE lazyvm_fault_latency_seconds histogram\n",
	      f);
	for (size_t i = 0; i < n; i++) {
		const struct hist *h = &ms[i]->latency;
		uint64_t count = atomic_load_explicit(&h->count, memory_order_relaxed);

		for (size_t b = 0; b < sizeof(prom_le) / sizeof(prom_le[0]); b++)
			fprintf(f, "lazyvm_fault_latency_seconds_bucket{%s,le=\"%g\"} %llu\n",
			        labels[i], prom_le[b],
			        (unsigned long long)hist_count_at_most(
			            h, (uint64_t)(prom_le[b] * 1e9)));
		fprintf(f, "lazyvm_fault_latency_seconds_bucket{%s,le=\"+Inf\"} %llu\n", labels[i],
		        (unsigned long long)count);
		fprintf(f, "lazyvm_fault_latency_seconds_sum{%s} %.9f\n", labels[i],
		        (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9);
		fprintf(f, "lazyvm_fault_latency_seconds_count{%s} %llu\n", labels[i],
		        (unsigned long long)count);
	}
}
