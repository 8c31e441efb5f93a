/* The Firecracker-playing client's guest side: it touches and checks its
 * memory as a guest would, and removes pages as the release's balloon does. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lazyvm/fc_client.h"
#include "lazyvm/metrics.h"
#include "lazyvm/units.h"

int fc_vm_read_reply(struct fc_vm *vm, char *buf, size_t len, int timeout_ms)
{
	struct pollfd p = {.fd = vm->sock, .events = POLLIN};
	size_t got = 0;

	while (got + 1 < len) {
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		ssize_t n = read(vm->sock, buf + got, len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(buf, '\n', got) || (buf[0] == '{' && memchr(buf, '}', got)))
			break;
	}
	buf[got] = '\0';
	return (int)got;
}

int fc_vm_fault_request(struct fc_vm *vm, uint64_t offset, char *buf, size_t len, int timeout_ms)
{
	char req[128];
	int n = snprintf(req, sizeof(req), "{\"vcpu\":0,\"offset\":%llu,\"flags\":0,\"token\":42}",
	                 (unsigned long long)offset);

	if (vm->sock < 0)
		return -ENOTCONN;
	if (send(vm->sock, req, (size_t)n, MSG_NOSIGNAL) != n)
		return -errno;
	n = fc_vm_read_reply(vm, buf, len, timeout_ms);
	return n > 0 ? n : -ETIMEDOUT;
}

int fc_vm_wait_resident(struct fc_vm *vm, uint64_t timeout_ns, double *waited_s)
{
	uint64_t t0 = lv_now_ns();

	for (;;) {
		uint64_t missing = 0;

		for (uint64_t off = 0; off < vm->size && !missing; off += vm->page_size)
			missing += !fc_vm_page_resident(vm, off);
		*waited_s = (double)(lv_now_ns() - t0) / 1e9;
		if (!missing)
			return 0;
		if (lv_now_ns() - t0 > timeout_ns)
			return -ETIMEDOUT;
		usleep(2000);
	}
}

bool fc_vm_page_resident(const struct fc_vm *vm, uint64_t offset)
{
	for (unsigned r = 0; r < vm->nregions; r++) {
		const struct fc_region *g = &vm->regions[r];
		unsigned char v = 0;

		if (offset - g->offset < g->size)
			return mincore((void *)(uintptr_t)(g->base_host_virt_addr +
			                                   (offset - g->offset) / 4096 * 4096),
			               4096, &v) == 0 &&
			       (v & 1);
	}
	return false;
}

struct touch_arg {
	struct fc_vm *vm;
	unsigned seed;
	bool removed_first; /* the balloon's quarters were removed before the touches */
	uint64_t mismatches, nonzero;
	struct metrics m; /* m.latency: each page's first access */
};

/* Page i of the whole memory, whatever region holds it. */
static unsigned char *page_ptr(struct fc_vm *vm, uint64_t i)
{
	uint64_t off = i * vm->page_size;

	for (unsigned r = 0; r < vm->nregions; r++)
		if (off - vm->regions[r].offset < vm->regions[r].size)
			return (unsigned char *)(uintptr_t)vm->regions[r].base_host_virt_addr +
			       (off - vm->regions[r].offset);
	return NULL;
}

static bool in_hole(const struct fc_vm *vm, uint64_t i)
{
	uint64_t a = (uint64_t)(uintptr_t)page_ptr((struct fc_vm *)vm, i);

	for (unsigned h = 0; h < vm->nholes; h++)
		if (a - vm->holes[h].addr < vm->holes[h].len)
			return true;
	return false;
}

/* Is page i in the quarter of its region the balloon takes back (the
 * second)? */
static bool in_balloon(const struct fc_vm *vm, uint64_t i)
{
	uint64_t off = i * vm->page_size;

	for (unsigned r = 0; r < vm->nregions; r++) {
		const struct fc_region *g = &vm->regions[r];
		uint64_t q = g->size / 4 / vm->page_size * vm->page_size;

		if (off - g->offset < g->size)
			return off - g->offset >= q && off - g->offset < 2 * q;
	}
	return false;
}

static bool page_is_zero(struct fc_vm *vm, uint64_t i)
{
	const unsigned char *m = page_ptr(vm, i);

	for (uint64_t b = 0; b < vm->page_size; b++)
		if (m[b])
			return false;
	return true;
}

/* Pages a guest of --touch-percent P uses: the same P% of memory whatever the
 * seed (a function's working set), spread by a multiplicative hash. */
static bool in_use(const struct fc_vm *vm, uint64_t i)
{
	unsigned pc = vm->cfg.touch_percent;

	return !pc || pc >= 100 || (uint32_t)(i * 2654435761u) % 100 < pc;
}

static int page_matches(struct fc_vm *vm, uint64_t i, unsigned char *scratch)
{
	if (pread(vm->mem_fd, scratch, vm->page_size, (off_t)(i * vm->page_size)) !=
	    (ssize_t)vm->page_size)
		return 0;
	return memcmp(page_ptr(vm, i), scratch, vm->page_size) == 0;
}

static void *touch_thread(void *p)
{
	struct touch_arg *a = p;
	uint64_t pages = a->vm->size / a->vm->page_size;
	uint64_t *order = malloc(pages * sizeof(*order));
	unsigned char *scratch = malloc(a->vm->page_size);

	if (!order || !scratch) {
		a->mismatches = UINT64_MAX;
		goto out;
	}
	for (uint64_t i = 0; i < pages; i++)
		order[i] = i;
	for (uint64_t i = pages - 1; i > 0; i--) {
		uint64_t j =
		    ((uint64_t)rand_r(&a->seed) << 31 ^ (uint64_t)rand_r(&a->seed)) % (i + 1);
		uint64_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t pg = order[i], t0;

		if (in_hole(a->vm, pg) || !in_use(a->vm, pg))
			continue;
		/* The first access alone is timed: it is what waits for the
		 * handler (a fault), or finds the page in. */
		t0 = lv_now_ns();
		(void)*(volatile unsigned char *)page_ptr(a->vm, pg);
		hist_record(&a->m.latency, lv_now_ns() - t0);
		if (a->removed_first && in_balloon(a->vm, pg))
			a->nonzero += !page_is_zero(a->vm, pg);
		else
			a->mismatches += !page_matches(a->vm, pg, scratch);
	}
out:
	free(order);
	free(scratch);
	return NULL;
}

/* The balloon takes back the second quarter of every region as the release's
 * balloon does. Returns 1 when it did, 0 when this release removes nothing
 * (res->remove_how says why), -errno. `remap_allowed`: before v1.11 the
 * balloon maps fresh memory over the range first. */
static int balloon_remove(struct fc_vm *vm, bool remap_allowed, struct fc_touch_result *res)
{
	/* Before v1.12 a snapshot without a balloon asks for no EVENT_REMOVE and
	 * nothing ever removes its pages; with one, v1.4-v1.10 put a fresh
	 * mapping over the range first (the handler hears nothing, the range
	 * leaves the userfaultfd); v1.11 on only MADV_DONTNEED (a REMOVE event). */
	if (vm->cfg.version <= FC_V1_7 && !vm->cfg.balloon) {
		res->remove_how =
		    "skipped: no balloon, and before v1.12 nothing else removes pages";
		return 0;
	}
	bool remap = remap_allowed && vm->cfg.version <= FC_V1_7;
	res->remove_how = remap ? "a fresh mapping over the range, then MADV_DONTNEED (v1.4-v1.10)"
	                        : "MADV_DONTNEED (a REMOVE event)";
	for (unsigned i = 0; i < vm->nregions; i++) {
		struct fc_region *g = &vm->regions[i];
		uint64_t q = g->size / 4 / vm->page_size * vm->page_size;
		char *at = (char *)(uintptr_t)g->base_host_virt_addr + q;

		if (!q)
			continue;
		if (remap && mmap(at, q, PROT_READ | PROT_WRITE,
		                  MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
		                      (vm->page_size > 4096 ? MAP_HUGETLB : 0),
		                  -1, 0) == MAP_FAILED)
			return -errno;
		if (madvise(at, q, MADV_DONTNEED) < 0)
			return -errno;
		res->removed_pages += q / vm->page_size;
	}
	return 1;
}

int fc_vm_touch_verify(struct fc_vm *vm, unsigned threads, unsigned seed, bool check_remove,
                       struct fc_touch_result *res)
{
	pthread_t th[64];
	struct touch_arg args[64];
	uint64_t pages = vm->size / vm->page_size, t0;
	unsigned char *scratch;
	int r;

	memset(res, 0, sizeof(*res));
	if (threads < 1 || threads > 64)
		return -EINVAL;
	bool first = false;
	if (check_remove && vm->cfg.remove_first) {
		if ((r = balloon_remove(vm, false, res)) < 0)
			return r;
		first = r == 1;
	}
	t0 = lv_now_ns();
	for (unsigned i = 0; i < threads; i++) {
		args[i] =
		    (struct touch_arg){.vm = vm, .seed = seed + i * 7919, .removed_first = first};
		r = -pthread_create(&th[i], NULL, touch_thread, &args[i]);
		if (r < 0) {
			threads = i;
			break;
		}
	}
	struct metrics all = {0};
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		res->mismatches += args[i].mismatches;
		res->nonzero += args[i].nonzero;
		metrics_add(&all, &args[i].m);
	}
	res->touch_s = (double)(lv_now_ns() - t0) / 1e9;
	res->touch_p50_ns = hist_percentile(&all.latency, 0.5);
	res->touch_p99_ns = hist_percentile(&all.latency, 0.99);
	res->touch_max_ns = atomic_load(&all.latency.max_ns);
	uint64_t used = 0;
	for (uint64_t p = 0; p < pages; p++) {
		res->hole_pages += in_hole(vm, p);
		used += !in_hole(vm, p) && in_use(vm, p);
	}
	res->touches = used * threads;
	if (!check_remove || vm->cfg.remove_first)
		return 0;
	if ((r = balloon_remove(vm, true, res)) <= 0)
		return r;
	scratch = malloc(vm->page_size);
	if (!scratch)
		return -ENOMEM;
	for (uint64_t p = 0; p < pages; p++) {
		if (in_hole(vm, p))
			continue;
		if (!in_balloon(vm, p))
			res->mismatches += !page_matches(vm, p, scratch);
		else
			res->nonzero += !page_is_zero(vm, p);
	}
	free(scratch);
	return 0;
}
