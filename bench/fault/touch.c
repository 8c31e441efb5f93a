/* The client side of one run: this process plays Firecracker (fc_vm_create,
 * then the hand-off), its threads time the first touch of every page, and
 * every byte is checked against the memory file. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fault_bench.h"
#include "lazyvm/units.h"

struct toucher {
	pthread_t th;
	pthread_barrier_t *bar;
	const unsigned char *base; /* the VM's memory, page 0 */
	const uint64_t *order;     /* the pages, in touch order */
	uint64_t n;
	uint64_t *lat; /* ns per touch, n entries */
	uint64_t t_start, t_end;
	bool bad;
	uint64_t bad_page;
	unsigned char got;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	pthread_barrier_wait(t->bar);
	t->t_start = lv_now_ns();
	for (uint64_t i = 0; i < t->n; i++) {
		uint64_t p = t->order[i];
		const volatile unsigned char *a = t->base + p * PAGE + byte_off(p);
		uint64_t t0, t1;
		unsigned char b;

		t0 = lv_now_ns();
		__asm__ __volatile__("" ::: "memory");
		b = *a;
		__asm__ __volatile__("" ::: "memory");
		t1 = lv_now_ns();
		t->lat[i] = t1 - t0;
		if (b != g.expected[p]) {
			t->bad = true;
			t->bad_page = p;
			t->got = b;
			break;
		}
	}
	t->t_end = lv_now_ns();
	return NULL;
}

/* Compares the VM's bytes [0, len) with the memory file's. */
static void verify_range(const struct variant *v, const struct fc_vm *vm, const unsigned char *base,
                         uint64_t from, uint64_t len, unsigned char *chunk)
{
	for (uint64_t off = from; off < from + len; off += CHUNK) {
		size_t n = (size_t)(from + len - off < CHUNK ? from + len - off : CHUNK);
		int r = pread_full(vm->mem_fd, chunk, n, off);

		if (r < 0)
			die("reading the memory file at %" PRIu64 ": %s", off, strerror(-r));
		if (memcmp(base + off, chunk, n) != 0) {
			size_t i = 0;

			while (base[off + i] == chunk[i])
				i++;
			die_log(v,
			        "%s: the VM's byte at offset %" PRIu64 " (page %" PRIu64
			        ") is 0x%02x, the memory file has 0x%02x: a broken run, no numbers",
			        v->name, off + i, (off + i) / PAGE, base[off + i], chunk[i]);
		}
	}
}

/* One run: a fresh handler and VM; `nthreads` threads touch the first `pages`
 * pages (shuffled shares) or one thread touches them in order (sequential). */
void run_one(const struct variant *v, uint64_t pages, unsigned nthreads, bool sequential,
             struct run_result *res)
{
	struct toucher t[MAX_THREADS];
	pthread_barrier_t bar;
	struct fc_vm vm;
	char why[320];
	uint64_t *order = xmalloc(pages * sizeof(*order));
	uint64_t *lat = xmalloc(pages * sizeof(*lat));
	uint64_t start = UINT64_MAX, end = 0, warm_page = g.file_size / PAGE - 1;
	unsigned char *chunk = xmalloc(CHUNK);
	pid_t pid;

	/* Touch orders: thread i owns pages [i*pages/T, (i+1)*pages/T), shuffled
	 * with a fixed seed so every variant sees the same sequence. */
	for (uint64_t p = 0; p < pages; p++)
		order[p] = p;
	for (unsigned i = 0; i < nthreads; i++) {
		uint64_t lo = pages * i / nthreads, hi = pages * (i + 1) / nthreads, s = SEED + i;

		t[i] = (struct toucher){
		    .bar = &bar, .order = order + lo, .n = hi - lo, .lat = lat + lo};
		for (uint64_t k = hi - lo; !sequential && k > 1; k--) {
			uint64_t j = rand_below(&s, k), x = order[lo + k - 1];
			order[lo + k - 1] = order[lo + j];
			order[lo + j] = x;
		}
	}
	memset(lat, 0, pages * sizeof(*lat)); /* no allocation faults while timing */

	pid = start_handler(v);
	struct fc_vm_config vc = {
	    .mem_file = g.mem_path, .nregions = 1, .page_size = PAGE, .version = FC_V1_12};
	if (fc_vm_create(&vm, &vc, why, sizeof(why)) < 0)
		die("creating the VM: %s", why);
	handoff(v, pid, &vm);
	const unsigned char *base =
	    (const unsigned char *)(uintptr_t)vm.regions[0].base_host_virt_addr;

	/* One untimed fault on a page outside the measured range: the handler has
	 * then read the hand-off and started serving, so no sample pays for that. */
	if (*(const volatile unsigned char *)(base + warm_page * PAGE + byte_off(warm_page)) !=
	    g.expected[warm_page])
		die_log(v, "%s: the warm-up page holds the wrong bytes", v->name);

	if (pthread_barrier_init(&bar, NULL, nthreads) != 0)
		die("pthread_barrier_init failed");
	for (unsigned i = 0; i < nthreads; i++) {
		t[i].base = base;
		int r = pthread_create(&t[i].th, NULL, touch_main, &t[i]);
		if (r)
			die("pthread_create: %s", strerror(r));
	}
	/* Watchdog: a handler that stops serving leaves a thread blocked in a fault
	 * for ever; give up (exiting kills such threads) after a generous bound. */
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 60 + (time_t)(pages / 1000); /* ~45 us per fault is expected */
	for (unsigned i = 0; i < nthreads; i++) {
		int r = pthread_timedjoin_np(t[i].th, NULL, &dl);

		if (r == ETIMEDOUT)
			die_log(v,
			        "%s: the touch phase did not finish in time: the handler stopped "
			        "serving faults",
			        v->name);
		if (r)
			die("pthread_join: %s", strerror(r));
	}
	pthread_barrier_destroy(&bar);
	for (unsigned i = 0; i < nthreads; i++) {
		if (t[i].bad)
			die_log(v,
			        "%s: page %" PRIu64 " read 0x%02x at byte %" PRIu64
			        ", the memory file has 0x%02x: a broken run, no numbers",
			        v->name, t[i].bad_page, t[i].got, byte_off(t[i].bad_page),
			        g.expected[t[i].bad_page]);
		if (t[i].t_start < start)
			start = t[i].t_start;
		if (t[i].t_end > end)
			end = t[i].t_end;
	}
	verify_range(v, &vm, base, 0, pages * PAGE, chunk);
	verify_range(v, &vm, base, warm_page * PAGE, PAGE, chunk);
	fc_vm_destroy(&vm);
	stop_handler(v, pid);

	qsort(lat, pages, sizeof(*lat), cmp_u64);
	res->med_us = (double)nearest_rank(lat, pages, 0.50) / 1e3;
	res->p99_us = (double)nearest_rank(lat, pages, 0.99) / 1e3;
	res->wall_s = (double)(end - start) / 1e9;
	res->pps = (double)pages / res->wall_s;
	res->handler_cpu_s = g.handler_cpu_s;
	free(order);
	free(lat);
	free(chunk);
}
