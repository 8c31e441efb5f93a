/* The fault engine in-process: a region of this process's memory registered
 * with a userfaultfd, faulted by several threads, served from a memory file. */
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>

#include "lazyvm/engine.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "test.h"

#define MB (1ull << 20)

struct rig {
	char path[64];
	struct source *src;
	struct engine *eng;
	int uffd_dup; /* to unregister (and so wake) after a failure */
	unsigned char *mem;
	uint64_t size, page;
};

static unsigned rig_fault_around; /* engine_config.fault_around for rig_up */
static unsigned rig_resolvers;    /* engine_config.resolvers for rig_up */
static uint64_t rig_zero_pages;   /* the first pages of memory are marked known-zero */

static unsigned char pattern(uint64_t off)
{
	return (unsigned char)(off * 13 + (off >> 12) * 101 + 1);
}

static void rig_up(struct rig *rig, uint64_t size, uint64_t page, unsigned threads,
                   enum engine_intake intake, unsigned src_flags)
{
	unsigned char *buf = malloc(size);
	char why[256];
	int fd, uffd;

	CHECK(buf);
	strcpy(rig->path, "/tmp/lazyvm-test-engine-XXXXXX");
	fd = mkstemp(rig->path);
	CHECK(fd >= 0);
	for (uint64_t i = 0; i < size; i++)
		buf[i] = pattern(i);
	CHECK_EQ(write(fd, buf, size), (long long)size);
	close(fd);
	free(buf);
	CHECK_OK(source_file_open(rig->path, src_flags, &rig->src, NULL, 0));

	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (page > 4096 ? MAP_HUGETLB : 0);
	rig->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (rig->mem == MAP_FAILED)
		SKIP("cannot map %llu bytes with %llu-byte pages: %s", (unsigned long long)size,
		     (unsigned long long)page, strerror(errno));
	rig->size = size;
	rig->page = page;
	uint64_t features =
	    UFFD_FEATURE_EVENT_REMOVE | (page > 4096 ? UFFD_FEATURE_MISSING_HUGETLBFS : 0);
	uffd = uffd_open(features, NULL, why, sizeof(why));
	if (uffd < 0)
		fprintf(stderr, "uffd_open: %s %s\n", strerror(-uffd), why);
	CHECK(uffd >= 0);
	uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE) |
	                (page == 4096 ? 1ull << _UFFDIO_ZEROPAGE : 0);
	CHECK_OK(uffd_register(uffd, (uint64_t)(uintptr_t)rig->mem, size,
	                       UFFDIO_REGISTER_MODE_MISSING, need, why, sizeof(why)));
	rig->uffd_dup = dup(uffd);
	struct engine_config cfg = {.uffd = uffd,
	                            .source = rig->src,
	                            .threads = threads,
	                            .intake = intake,
	                            .busy_idle_ns = 5 * 1000 * 1000,
	                            .fault_around = rig_fault_around,
	                            .resolvers = rig_resolvers,
	                            .name = "test"};
	CHECK_OK(engine_create(&cfg, &rig->eng));
	/* Two regions: the second half of memory is served from the first half of
	 * the file and vice versa, so a wrong offset cannot pass for a right one. */
	struct engine_region lo = {.host_addr = (uint64_t)(uintptr_t)rig->mem,
	                           .size = size / 2,
	                           .src_off = size / 2,
	                           .page_size = page};
	struct engine_region hi = {.host_addr = lo.host_addr + size / 2,
	                           .size = size / 2,
	                           .src_off = 0,
	                           .page_size = page};
	CHECK_OK(engine_add_region(rig->eng, &hi));
	CHECK_OK(engine_add_region(rig->eng, &lo));
	if (rig_zero_pages)
		CHECK_OK(engine_mark_zero(rig->eng, lo.host_addr, rig_zero_pages * 4096));
	CHECK_OK(engine_start(rig->eng));
}

static void rig_down(struct rig *rig)
{
	engine_destroy(rig->eng);
	close(rig->uffd_dup);
	munmap(rig->mem, rig->size);
	source_destroy(rig->src);
	unlink(rig->path);
}

/* Byte i of memory is byte (i + size/2) mod size of the file. */
static unsigned char expected(const struct rig *rig, uint64_t i)
{
	return pattern((i + rig->size / 2) % rig->size);
}

struct toucher {
	struct rig *rig;
	unsigned seed;
	uint64_t bad;
};

static void *touch_all_random(void *arg)
{
	struct toucher *t = arg;
	uint64_t pages = t->rig->size / 4096;
	uint64_t *order = malloc(pages * sizeof(*order));

	for (uint64_t i = 0; i < pages; i++)
		order[i] = i;
	for (uint64_t i = pages - 1; i > 0; i--) { /* Fisher-Yates, per-thread order */
		uint64_t j = (uint64_t)rand_r(&t->seed) % (i + 1), x = order[i];
		order[i] = order[j];
		order[j] = x;
	}
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t off = order[i] * 4096 + (uint64_t)(rand_r(&t->seed) % 4096);
		if (t->rig->mem[off] != expected(t->rig, off))
			t->bad++;
	}
	free(order);
	return NULL;
}

/* The kernel wakes a faulting thread inside the install ioctl, before the
 * handler counts the install: wait (bounded) for the counters to catch up with
 * what the test knows was installed, then insist they match exactly. */
static void settle_metrics(struct rig *rig, struct metrics *m, uint64_t copied, uint64_t zeroed)
{
	for (int i = 0; i < 2000; i++) {
		engine_metrics(rig->eng, m);
		if (m->latency.count >= copied + zeroed)
			break;
		usleep(1000);
	}
	usleep(2000);
	engine_metrics(rig->eng, m);
	CHECK_EQ(m->pages_copied, copied);
	CHECK_EQ(m->pages_zeroed, zeroed);
	CHECK_EQ(m->latency.count, copied + zeroed);
}

static void check_every_byte(struct rig *rig)
{
	for (uint64_t i = 0; i < rig->size; i++)
		if (rig->mem[i] != expected(rig, i)) {
			fprintf(stderr, "  byte %llu: %#x, want %#x\n", (unsigned long long)i,
			        rig->mem[i], expected(rig, i));
			CHECK(0);
		}
}

static void run_touchers(struct rig *rig, unsigned n)
{
	pthread_t th[8];
	struct toucher t[8];

	for (unsigned i = 0; i < n; i++) {
		t[i] = (struct toucher){.rig = rig, .seed = 1234 + i};
		CHECK_OK(pthread_create(&th[i], NULL, touch_all_random, &t[i]));
	}
	for (unsigned i = 0; i < n; i++) {
		CHECK_OK(pthread_join(th[i], NULL));
		CHECK_EQ(t[i].bad, 0);
	}
}

/* Four threads touch every page in four different random orders: every page is
 * read from the source once and installed once, whatever the overlap. */
static void check_concurrent_faults(unsigned handlers, enum engine_intake intake,
                                    unsigned src_flags)
{
	struct rig rig;
	struct metrics m;
	uint64_t counts[4];

	rig_up(&rig, 8 * MB, 4096, handlers, intake, src_flags);
	run_touchers(&rig, 4);
	check_every_byte(&rig);
	uint64_t pages = rig.size / 4096;
	settle_metrics(&rig, &m, pages, 0);
	CHECK_EQ(m.bytes_read, rig.size);
	CHECK_EQ(m.faults, m.pages_copied + m.faults_shared + m.faults_stale + m.eagain);
	engine_page_counts(rig.eng, counts);
	CHECK_EQ(counts[PAGE_PRESENT], pages);
	CHECK_EQ(engine_status(rig.eng), ENGINE_RUNNING);
	printf("    faults %llu, shared %llu, stale %llu, p50 %.1f us\n",
	       (unsigned long long)m.faults, (unsigned long long)m.faults_shared,
	       (unsigned long long)m.faults_stale, hist_percentile(&m.latency, 0.5) / 1000.0);
	rig_down(&rig);
}

static void test_faults_one_handler(void)
{
	check_concurrent_faults(1, ENGINE_INTAKE_BLOCK, 0);
}
static void test_faults_two_handlers(void)
{
	check_concurrent_faults(2, ENGINE_INTAKE_BLOCK, 0);
}
static void test_faults_busy_intake(void)
{
	check_concurrent_faults(2, ENGINE_INTAKE_BUSY, 0);
}
static void test_faults_io_uring(void)
{
	check_concurrent_faults(2, ENGINE_INTAKE_BLOCK, SOURCE_FILE_IO_URING);
}

/* MADV_DONTNEED (a balloon) turns a range into zeros for good; the rest keeps
 * its data; a range never touched before the remove also reads zeros. */
static void test_remove_gives_zeros(void)
{
	struct rig rig;
	struct metrics m;

	rig_up(&rig, 4 * MB, 4096, 2, ENGINE_INTAKE_BLOCK, 0);
	for (uint64_t i = 0; i < MB; i += 4096) /* touch the first MiB */
		CHECK_EQ(rig.mem[i], expected(&rig, i));
	CHECK_OK(madvise(rig.mem + 256 * 1024, 1 * MB, MADV_DONTNEED)); /* half touched */
	for (uint64_t i = 0; i < rig.size; i++) {
		bool removed = i >= 256 * 1024 && i < 256 * 1024 + MB;
		if (rig.mem[i] != (removed ? 0 : expected(&rig, i))) {
			fprintf(stderr, "  byte %llu: %#x\n", (unsigned long long)i, rig.mem[i]);
			CHECK(0);
		}
	}
	/* 256 pages copied before the remove, then every page above the range. */
	settle_metrics(&rig, &m, 256 + (rig.size - 256 * 1024 - MB) / 4096, MB / 4096);
	CHECK_EQ(m.remove_events, 1);
	CHECK_EQ(m.removed_pages, MB / 4096);
	rig_down(&rig);
}

/* A source that fails: the engine stops with a message naming the page, the
 * offset and the source, and installs nothing in its place. */
static void *touch_one(void *arg)
{
	volatile unsigned char *p = arg;
	return (void *)(uintptr_t)*p;
}

static void test_source_failure_is_reported(void)
{
	struct rig rig;
	pthread_t th;
	void *got;

	rig_up(&rig, 1 * MB, 4096, 1, ENGINE_INTAKE_BLOCK, 0);
	CHECK_OK(truncate(rig.path, 4096)); /* the file loses its tail */
	CHECK_OK(pthread_create(&th, NULL, touch_one, rig.mem + 8192));
	struct pollfd p = {.fd = engine_event_fd(rig.eng), .events = POLLIN};
	CHECK_EQ(poll(&p, 1, 10000), 1);
	CHECK_EQ(engine_status(rig.eng), ENGINE_FAILED);
	const char *e = engine_error(rig.eng);
	fprintf(stderr, "    engine error: %s\n", e);
	CHECK(strstr(e, "reading page 0x"));
	CHECK(strstr(e, "source offset 0x82000")); /* (8192 + 512K) in hex */
	CHECK(strstr(e, rig.path));
	CHECK(strstr(e, "ends early: it is now 4096 bytes, shorter than the 1048576 it had"));
	/* The toucher is still blocked (no wrong page was installed): unregister
	 * to let it go; it then reads the fresh zero page of plain anonymous memory. */
	CHECK_OK(uffd_unregister(rig.uffd_dup, (uint64_t)(uintptr_t)rig.mem, rig.size));
	CHECK_OK(pthread_join(th, &got));
	rig_down(&rig);
}

/* 2 MiB hugetlbfs pages: one fault installs one huge page. */
static void test_huge_pages(void)
{
	struct rig rig;
	struct metrics m;
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r+");
	long have = 0;

	if (!f || fscanf(f, "%ld", &have) != 1)
		SKIP("no /proc/sys/vm/nr_hugepages");
	if (have < 8) {
		rewind(f);
		fprintf(f, "%ld\n", have + 8); /* root only; failure shows as a skip below */
	}
	fclose(f);
	rig_up(&rig, 8 * MB, 2 * MB, 2, ENGINE_INTAKE_BLOCK, 0);
	run_touchers(&rig, 2);
	check_every_byte(&rig);
	settle_metrics(&rig, &m, 4, 0);
	CHECK_EQ(m.bytes_read, 8 * MB);
	CHECK_OK(madvise(rig.mem, 2 * MB, MADV_DONTNEED));
	for (uint64_t i = 0; i < 2 * MB; i += 512)
		CHECK_EQ(rig.mem[i], 0);
	settle_metrics(&rig, &m, 4, 1);
	rig_down(&rig);
}

static void test_region_validation(void)
{
	struct source *src;
	struct engine *eng;
	int uffd = uffd_open(0, NULL, NULL, 0);

	CHECK(uffd >= 0);
	CHECK_OK(source_zero_create(16 * MB, &src));
	struct engine_config cfg = {.uffd = uffd, .source = src, .threads = 1};
	CHECK_OK(engine_create(&cfg, &eng));
	struct engine_region r = {
	    .host_addr = 1ull << 30, .size = 4 * MB, .src_off = 0, .page_size = 4096};
	CHECK_OK(engine_add_region(eng, &r));
	r.host_addr += 4 * MB - 4096; /* overlaps the last page */
	CHECK_EQ(engine_add_region(eng, &r), -EEXIST);
	r.host_addr = (1ull << 30) - 4096; /* overlaps the first page from below */
	CHECK_EQ(engine_add_region(eng, &r), -EEXIST);
	r.host_addr = 2ull << 30;
	r.src_off = 13 * MB; /* 13 + 4 > 16 */
	CHECK_EQ(engine_add_region(eng, &r), -ERANGE);
	r.src_off = 0;
	r.size = 4097;
	CHECK_EQ(engine_add_region(eng, &r), -EINVAL);
	r.size = 4096;
	r.page_size = 8192;
	CHECK_EQ(engine_add_region(eng, &r), -EINVAL);
	r.page_size = 4096;
	r.host_addr = UINT64_MAX - 4095;
	CHECK_EQ(engine_add_region(eng, &r), -EINVAL); /* wraps */
	engine_destroy(eng);
	source_destroy(src);
}

/* Fault-around: a sequential toucher gets 16 pages a fault, every byte right. */
static void test_fault_around_sequential(void)
{
	struct rig rig;
	struct metrics m;

	rig_fault_around = 16;
	rig_up(&rig, 4 * MB, 4096, 1, ENGINE_INTAKE_BLOCK, 0);
	for (uint64_t i = 0; i < rig.size; i += 4096)
		CHECK_EQ(rig.mem[i], expected(&rig, i));
	check_every_byte(&rig);
	uint64_t pages = rig.size / 4096;
	for (int i = 0; i < 2000; i++) { /* let the counters catch up */
		engine_metrics(rig.eng, &m);
		if (m.pages_copied >= pages)
			break;
		usleep(1000);
	}
	CHECK_EQ(m.pages_copied, pages);
	CHECK_EQ(m.bytes_read, rig.size);
	/* Each region is a whole number of 16-page runs: one fault per run. */
	CHECK_EQ(m.faults, pages / 16);
	CHECK_EQ(m.pages_around, pages - pages / 16);
	rig_down(&rig);
}

/* Fault-around never reads ahead into removed ranges (those must read zeros)
 * and stops at pages already present; random touches from four threads. */
static void test_fault_around_random_and_remove(void)
{
	struct rig rig;
	struct metrics m;

	rig_fault_around = 16;
	rig_up(&rig, 4 * MB, 4096, 2, ENGINE_INTAKE_BLOCK, 0);
	for (uint64_t i = 0; i < MB; i += 3 * 4096) /* every third page of the first MiB */
		CHECK_EQ(rig.mem[i], expected(&rig, i));
	CHECK_OK(madvise(rig.mem + 100 * 4096, 50 * 4096, MADV_DONTNEED));
	CHECK_OK(madvise(rig.mem + 2 * MB + 7 * 4096, 3 * 4096, MADV_DONTNEED)); /* never touched */
	for (uint64_t i = 0; i < rig.size; i++) {
		uint64_t p = i / 4096;
		bool removed = (p >= 100 && p < 150) || (p >= 512 + 7 && p < 512 + 10);
		if (rig.mem[i] != (removed ? 0 : expected(&rig, i))) {
			fprintf(stderr, "  byte %llu (page %llu): %#x\n", (unsigned long long)i,
			        (unsigned long long)p, rig.mem[i]);
			CHECK(0);
		}
	}
	engine_metrics(rig.eng, &m);
	CHECK(m.pages_around > 0);
	CHECK(m.pages_zeroed <= 53);
	rig_down(&rig);

	rig_up(&rig, 8 * MB, 4096, 2, ENGINE_INTAKE_BLOCK, 0);
	run_touchers(&rig, 4);
	check_every_byte(&rig);
	uint64_t counts[4];
	engine_page_counts(rig.eng, counts);
	CHECK_EQ(counts[PAGE_PRESENT], rig.size / 4096);
	rig_down(&rig);
}

/* Fault-around that meets a VMA boundary (an mprotect'ed slot, as Firecracker
 * v1.14's hotplug makes) or a range that left the userfaultfd: the faulting
 * page is always served, the run goes in page by page, and nothing fails. */
static void test_fault_around_vma_boundaries(void)
{
	struct rig rig;
	struct metrics m;
	uint64_t lo = 0, pages;

	rig_fault_around = 16;
	rig_up(&rig, 4 * MB, 4096, 1, ENGINE_INTAKE_BLOCK, 0);
	pages = rig.size / 4096;
	/* Pages 40..47 read-only: the mapping is now three VMAs. Pages 200..207
	 * leave the userfaultfd: a fresh mapping over them, as Firecracker
	 * v1.4-v1.10's balloon does (they read zeros, from the kernel). */
	CHECK_OK(mprotect(rig.mem + 40 * 4096, 8 * 4096, PROT_READ));
	CHECK(mmap(rig.mem + 200 * 4096, 8 * 4096, PROT_READ | PROT_WRITE,
	           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == rig.mem + 200 * 4096);
	for (uint64_t p = 0; p < pages; p++) {
		unsigned char want = p >= 200 && p < 208 ? 0 : expected(&rig, p * 4096);

		if (rig.mem[p * 4096] != want) {
			fprintf(stderr, "  page %llu: %#x, want %#x\n", (unsigned long long)p,
			        rig.mem[p * 4096], want);
			CHECK(0);
		}
		lo += rig.mem[p * 4096 + 4095] ==
		      (p >= 200 && p < 208 ? 0 : expected(&rig, p * 4096 + 4095));
	}
	CHECK_EQ(lo, pages);
	CHECK_EQ(engine_status(rig.eng), ENGINE_RUNNING);
	for (int i = 0; i < 2000; i++) { /* let the counters catch up */
		engine_metrics(rig.eng, &m);
		if (m.pages_copied >= pages - 8)
			break;
		usleep(1000);
	}
	/* The runs that reached page 200 tried the 8 pages that left; each
	 * alone said ENOENT and was left out. */
	CHECK(m.holes >= 1 && m.holes <= 8);
	CHECK_EQ(m.pages_copied, pages - 8);
	printf("    faults %llu, pages around %llu, left out (holes) %llu\n",
	       (unsigned long long)m.faults, (unsigned long long)m.pages_around,
	       (unsigned long long)m.holes);
	rig_down(&rig);
}

/* UFFD_EVENT_REMAP moves a whole region (its pages keep their source offsets);
 * UFFD_EVENT_UNMAP marks a range gone. */
static void test_remap_and_unmap(void)
{
	struct source *src;
	struct engine *eng;
	struct metrics m;
	char why[256], path[] = "/tmp/lazyvm-test-remap-XXXXXX";
	int fd = mkstemp(path), uffd;
	unsigned char *buf = malloc(2 * MB);

	CHECK(fd >= 0 && buf);
	for (uint64_t i = 0; i < 2 * MB; i++)
		buf[i] = pattern(i);
	CHECK_EQ(write(fd, buf, 2 * MB), 2 * MB);
	close(fd);
	CHECK_OK(source_file_open(path, 0, &src, NULL, 0));
	uffd =
	    uffd_open(UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP, NULL, why, sizeof(why));
	CHECK(uffd >= 0);
	unsigned char *a =
	    mmap(NULL, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *b =
	    mmap(NULL, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(a != MAP_FAILED && b != MAP_FAILED);
	CHECK_OK(uffd_register(uffd, (uint64_t)(uintptr_t)a, MB, UFFDIO_REGISTER_MODE_MISSING, 0,
	                       why, sizeof(why)));
	CHECK_OK(uffd_register(uffd, (uint64_t)(uintptr_t)b, MB, UFFDIO_REGISTER_MODE_MISSING, 0,
	                       why, sizeof(why)));
	struct engine_config cfg = {.uffd = uffd, .source = src, .threads = 1, .name = "remap"};
	CHECK_OK(engine_create(&cfg, &eng));
	struct engine_region ra = {
	    .host_addr = (uint64_t)(uintptr_t)a, .size = MB, .src_off = 0, .page_size = 4096};
	struct engine_region rb = {
	    .host_addr = (uint64_t)(uintptr_t)b, .size = MB, .src_off = MB, .page_size = 4096};
	CHECK_OK(engine_add_region(eng, &ra));
	CHECK_OK(engine_add_region(eng, &rb));
	CHECK_OK(engine_start(eng));
	CHECK_EQ(a[5], pattern(5));
	/* Move region a somewhere new: faults there come from a's file range. */
	/* ...to an address reserved for it: a fixed address nobody reserved may
	 * be taken (under ASan it was ASan's own memory). */
	unsigned char *target = mmap(NULL, MB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(target != MAP_FAILED);
	unsigned char *moved = mremap(a, MB, MB, MREMAP_MAYMOVE | MREMAP_FIXED, target);
	CHECK(moved != MAP_FAILED);
	for (uint64_t i = 0; i < MB; i += 4096)
		CHECK_EQ(moved[i + 7], pattern(i + 7));
	CHECK_EQ(b[4096 + 3], pattern(MB + 4096 + 3));
	/* Unmapping b: its pages are gone for good. */
	CHECK_OK(munmap(b, MB));
	for (int i = 0; i < 2000; i++) {
		engine_metrics(eng, &m);
		if (m.unmap_events)
			break;
		usleep(1000);
	}
	CHECK_EQ(m.remap_events, 1);
	/* The kernel may send more than one UNMAP (e.g. for the mremap's target);
	 * what matters is that exactly b's pages were marked gone. */
	CHECK(m.unmap_events >= 1);
	for (int i = 0; i < 2000 && m.removed_pages < MB / 4096; i++) {
		usleep(1000);
		engine_metrics(eng, &m);
	}
	CHECK_EQ(m.removed_pages, MB / 4096);
	CHECK_EQ(engine_status(eng), ENGINE_RUNNING);
	engine_destroy(eng);
	munmap(moved, MB);
	source_destroy(src);
	unlink(path);
	free(buf);
}

static void bg_done(void *arg)
{
	atomic_store((_Atomic int *)arg, 1);
}

/* Pages marked known-zero (a snapshot's zero-page map) are never read: a
 * working-set replay installs them as zero pages, demand faults and the
 * background pass too; everything else still comes from the source. */
static void test_known_zero_pages(void)
{
	struct rig rig;
	struct metrics m;
	uint64_t want[128], installed = 0;
	_Atomic int done = 0;

	rig_resolvers = 2;
	rig_zero_pages = 64;
	rig_up(&rig, 4 * MB, 4096, 1, ENGINE_INTAKE_BLOCK, 0);
	CHECK_EQ(engine_mark_zero(rig.eng, (uint64_t)(uintptr_t)rig.mem, 4096), -EBUSY);
	for (uint64_t i = 0; i < 128; i++) /* memory pages 0..127: source pages size/2 + i */
		want[i] = rig.size / 2 / 4096 + i;
	CHECK_OK(engine_prefetch(rig.eng, 0, want, 128, NULL, &installed));
	CHECK_EQ(installed, 128);
	engine_metrics(rig.eng, &m);
	CHECK_EQ(m.bytes_read, 64 * 4096);
	CHECK_EQ(m.pages_zeroed, 64);
	CHECK_EQ(m.faults, 0);
	for (uint64_t i = 0; i < 128 * 4096; i++)
		CHECK_EQ(rig.mem[i], i < 64 * 4096 ? 0 : expected(&rig, i));
	CHECK_OK(engine_background_start(rig.eng, 1, 16, 0, bg_done, (void *)&done));
	engine_background_join(rig.eng);
	CHECK_EQ(atomic_load(&done), 1);
	engine_metrics(rig.eng, &m);
	CHECK_EQ(m.bytes_read, rig.size - 64 * 4096);
	CHECK_EQ(m.faults, 0);
	for (uint64_t i = 128 * 4096; i < rig.size; i++)
		CHECK_EQ(rig.mem[i], expected(&rig, i));
	rig_down(&rig);
	rig_resolvers = 0;
	rig_zero_pages = 0;
}

/* A second engine on the same userfaultfd and the same regions as the rig's,
 * its page map imported (a takeover's successor). Not started. */
static struct engine *rig_successor(struct rig *rig, const struct engine_page_run *runs,
                                    size_t nruns)
{
	struct engine_config cfg = {.uffd = dup(rig->uffd_dup),
	                            .source = rig->src,
	                            .threads = 1,
	                            .intake = ENGINE_INTAKE_BLOCK,
	                            .name = "successor"};
	struct engine_region regs[4];
	struct engine *eng;

	CHECK(cfg.uffd >= 0);
	CHECK_EQ(engine_regions(rig->eng, regs, 4), 2);
	CHECK_OK(engine_create(&cfg, &eng));
	CHECK_OK(engine_add_region(eng, &regs[1])); /* any order: the engine sorts */
	CHECK_OK(engine_add_region(eng, &regs[0]));
	CHECK_OK(engine_import_pages(eng, runs, nruns));
	return eng;
}

/* A VM changes engines: the first stops (its threads joined, nothing in
 * flight), its page map goes to the second, and a fault that arrives in
 * between waits in the userfaultfd for the second. Removed pages stay zero
 * and present pages are never read again. */
static void test_pages_handover(void)
{
	struct engine_page_run *runs;
	struct rig rig;
	struct metrics m;
	size_t n;
	pthread_t th;
	void *got;

	rig_up(&rig, 4 * MB, 4096, 2, ENGINE_INTAKE_BLOCK, 0);
	for (uint64_t i = 0; i < MB; i += 4096) /* pages 0..255 */
		CHECK_EQ(rig.mem[i], expected(&rig, i));
	/* madvise returns once the engine has read the REMOVE event. */
	CHECK_OK(madvise(rig.mem + 512 * 1024, MB, MADV_DONTNEED)); /* pages 128..383 */
	CHECK_OK(engine_stop(rig.eng));
	CHECK_OK(engine_export_pages(rig.eng, &runs, &n));
	/* Region [0, 2 MiB): present, removed, missing; region [2, 4 MiB): missing. */
	CHECK_EQ(n, 4);
	CHECK_EQ(runs[0].pages, 128);
	CHECK_EQ(runs[0].state, PAGE_PRESENT);
	CHECK_EQ(runs[1].pages, 256);
	CHECK_EQ(runs[1].state, PAGE_REMOVED);
	CHECK_EQ(runs[2].pages, 128);
	CHECK_EQ(runs[2].state, PAGE_MISSING);
	CHECK_EQ(runs[3].pages, 512);
	CHECK_EQ(runs[3].state, PAGE_MISSING);

	/* Nobody serves now: a fault waits in the userfaultfd. */
	CHECK_OK(pthread_create(&th, NULL, touch_one, rig.mem + 3 * MB));
	usleep(50 * 1000);
	CHECK(pthread_tryjoin_np(th, &got) == EBUSY);

	struct engine *next = rig_successor(&rig, runs, n);
	free(runs);
	CHECK_OK(engine_start(next));
	CHECK_OK(pthread_join(th, &got));
	CHECK_EQ((uintptr_t)got, expected(&rig, 3 * MB));
	engine_destroy(rig.eng);
	rig.eng = next;
	for (uint64_t i = 0; i < rig.size; i++) {
		bool removed = i >= 512 * 1024 && i < 512 * 1024 + MB;
		if (rig.mem[i] != (removed ? 0 : expected(&rig, i))) {
			fprintf(stderr, "  byte %llu: %#x\n", (unsigned long long)i, rig.mem[i]);
			CHECK(0);
		}
	}
	/* Every page but the 128 present and the 256 removed ones is read once. */
	settle_metrics(&rig, &m, 1024 - 128 - 256, 256);
	CHECK_EQ(m.bytes_read, (1024 - 128 - 256) * 4096);
	rig_down(&rig);
}

/* An import that does not describe the engine's regions exactly changes
 * nothing; one after the start is refused. */
static void test_pages_import_refuses(void)
{
	struct engine_page_run *runs;
	struct rig rig;
	size_t n;

	rig_up(&rig, 4 * MB, 4096, 1, ENGINE_INTAKE_BLOCK, 0);
	CHECK_OK(engine_export_pages(rig.eng, &runs, &n));
	CHECK_EQ(n, 2); /* a region each, all missing */
	CHECK_EQ(runs[0].pages, 512);
	CHECK_EQ(runs[1].state, PAGE_MISSING);
	CHECK_EQ(engine_import_pages(rig.eng, runs, n), -EBUSY);

	struct engine *next = rig_successor(&rig, runs, n);
	const struct engine_page_run
	    across[] = {{1024, PAGE_PRESENT}},
	    inflight[] = {{512, PAGE_INFLIGHT}, {512, PAGE_MISSING}},
	    unknown[] = {{512, 7}, {512, PAGE_MISSING}},
	    empty[] = {{0, PAGE_PRESENT}, {512, PAGE_MISSING}, {512, PAGE_MISSING}},
	    shorter[] = {{512, PAGE_PRESENT}, {511, PAGE_PRESENT}},
	    longer[] = {{512, PAGE_PRESENT}, {512, PAGE_PRESENT}, {1, PAGE_PRESENT}},
	    good[] = {{100, PAGE_PRESENT}, {412, PAGE_REMOVED}, {512, PAGE_PRESENT}};
	CHECK_EQ(engine_import_pages(next, across, 1), -EINVAL);
	CHECK_EQ(engine_import_pages(next, inflight, 2), -EINVAL);
	CHECK_EQ(engine_import_pages(next, unknown, 2), -EINVAL);
	CHECK_EQ(engine_import_pages(next, empty, 3), -EINVAL);
	CHECK_EQ(engine_import_pages(next, shorter, 2), -EINVAL);
	CHECK_EQ(engine_import_pages(next, longer, 3), -EINVAL);
	uint64_t counts[4];
	engine_page_counts(next, counts);
	CHECK_EQ(counts[PAGE_MISSING], 1024); /* nothing changed */
	CHECK_OK(engine_import_pages(next, good, 3));
	engine_page_counts(next, counts);
	CHECK_EQ(counts[PAGE_PRESENT], 612);
	CHECK_EQ(counts[PAGE_REMOVED], 412);
	free(runs);
	CHECK_OK(engine_export_pages(next, &runs, &n));
	CHECK_EQ(n, 3);
	CHECK_EQ(runs[1].pages, 412);
	free(runs);
	engine_destroy(next);
	rig_down(&rig);
}

TEST_MAIN(TEST(test_faults_one_handler), TEST(test_faults_two_handlers),
          TEST(test_faults_busy_intake), TEST(test_faults_io_uring), TEST(test_remove_gives_zeros),
          TEST(test_source_failure_is_reported), TEST(test_huge_pages),
          TEST(test_region_validation), TEST(test_fault_around_sequential),
          TEST(test_fault_around_random_and_remove), TEST(test_fault_around_vma_boundaries),
          TEST(test_remap_and_unmap), TEST(test_known_zero_pages), TEST(test_pages_handover),
          TEST(test_pages_import_refuses))
