/* Fault-handling metrics: counters and a latency histogram.
 *
 * Each handler thread owns one struct metrics and is its only writer; readers
 * (a SIGUSR1 dump, the final report) merge them while the threads run. Fields
 * are relaxed atomics so those reads are well defined and cost the writer no
 * locked instruction. */
#ifndef LAZYVM_METRICS_H
#define LAZYVM_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

/* Log-linear histogram of nanoseconds: HIST_SUB buckets per power of two, so a
 * percentile is exact to 1/HIST_SUB (~3%) of its value. */
#define HIST_SUB_BITS 5
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
	_Atomic uint64_t count;
	_Atomic uint64_t sum_ns;
	_Atomic uint64_t max_ns;
	_Atomic uint64_t buckets[HIST_BUCKETS];
};

/* X-macro so that merging and JSON output can never miss a counter. */
#define METRICS_COUNTERS(X)                                                                        \
	X(faults, "fault messages read from the UFFD")                                             \
	X(faults_shared, "faults on a page another thread was already installing")                 \
	X(faults_stale, "faults on a page already present (woken)")                                \
	X(pages_copied, "pages installed from the source")                                         \
	X(pages_zeroed, "pages installed as zeros (removed ranges)")                               \
	X(pages_around, "of pages_copied, installed by fault-around ahead of a fault")             \
	X(pages_background, "of pages_copied, installed by background prefetch")                   \
	X(pages_prefetched, "pages installed by a working-set replay (zeros included)")            \
	X(bytes_read, "bytes read from the source")                                                \
	X(eexist, "installs that found the page already there")                                    \
	X(eagain, "installs retried because the address space was changing")                       \
	X(holes, "pages left out: in no registered range (a VMA boundary, a hotplug hole)")        \
	X(remove_events, "UFFD_EVENT_REMOVE received")                                             \
	X(removed_pages, "pages marked removed")                                                   \
	X(unmap_events, "UFFD_EVENT_UNMAP received")                                               \
	X(remap_events, "UFFD_EVENT_REMAP received")                                               \
	X(read_batches, "reads of the UFFD that returned messages")

struct metrics {
#define METRICS_FIELD(name, doc) _Atomic uint64_t name;
	METRICS_COUNTERS(METRICS_FIELD)
#undef METRICS_FIELD
	struct hist latency; /* fault message read -> page installed */
};

/* Single-writer add: a relaxed load and store, no locked instruction. */
static inline void ctr_add(_Atomic uint64_t *c, uint64_t v)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
	                      memory_order_relaxed);
}

void hist_record(struct hist *h, uint64_t ns);
/* The value below which a fraction p (0..1) of the samples lie; 0 when empty. */
uint64_t hist_percentile(const struct hist *h, double p);

/* dst += src, field by field (dst may be shared by no one else). */
void metrics_add(struct metrics *dst, const struct metrics *src);

/* Writes one JSON object (no trailing newline) with every counter and the
 * latency summary: count, mean, p50, p90, p99, max in microseconds. */
void metrics_write_json(FILE *f, const struct metrics *m);

/* Samples of at most ns (cumulative, exact to one bucket). */
uint64_t hist_count_at_most(const struct hist *h, uint64_t ns);

/* Writes the Prometheus text exposition (version 0.0.4) of n sets of metrics,
 * each under its labels (e.g. `vm="3",snapshot="0"`, never empty): every
 * counter as lazyvm_<name>_total, the latency as the histogram
 * lazyvm_fault_latency_seconds with 1-2-5 buckets from 1 us to 1 s. */
void metrics_write_prom(FILE *f, const struct metrics *const *ms, const char *const *labels,
                        size_t n);

#endif
