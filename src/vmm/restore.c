/* vmm_restore: validate a snapshot completely, load its memory (eager, mmap or
 * lazy), put every vCPU back, run the guest's run phase. */
#include "lazyvm/vmm.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "snapshot.h"
#include "vcpu.h"
#include "apf.h"
#include "userfault.h"
#include "vmm.h"

struct restore {
	const struct vmm_restore_config *cfg;
	struct vmm_outcome *out;
	uint8_t *state;
	size_t state_len;
	struct snap_reader rd;
	const uint32_t *chunk_crcs; /* of the checksums file, from the state file */
	int mem_fd, csum_fd;
	struct source *src;
	struct engine *eng;
	struct userfault uf;
	bool have_uf;
	struct kvm_sys *sys;
	unsigned eng_prefetch_slot; /* resolver slot for working-set replay */
	struct apf apf;
	bool have_apf;
	struct blocktime *bt;
	const struct guest_mem *mem; /* guest RAM, once mapped */
	_Atomic uint64_t huge;       /* 2 MiB pieces collapsed into huge pages */
};

/* Records why the restore fails (the first reason wins) and returns err. */
static int fail(struct restore *rs, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct restore *rs, int err, const char *fmt, ...)
{
	va_list ap;

	if (!rs->out->error[0]) {
		va_start(ap, fmt);
		vsnprintf(rs->out->error, sizeof(rs->out->error), fmt, ap);
		va_end(ap);
	}
	return err;
}

static int read_state(struct restore *rs)
{
	char path[4096];
	struct stat st;
	int fd, r = 0;

	snprintf(path, sizeof(path), "%s/state", rs->cfg->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(rs, -errno, "cannot open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || (uint64_t)st.st_size > SNAP_STATE_MAX) {
		close(fd);
		return fail(rs, -EINVAL, "%s: %lld bytes is not a plausible state file size", path,
		            (long long)st.st_size);
	}
	rs->state_len = (size_t)st.st_size;
	/* Populated up front: one kernel call instead of a page fault per 4 KiB
	 * of a state file that grows with memory (the page checksums). */
	rs->state = mmap(NULL, rs->state_len, PROT_READ | PROT_WRITE,
	                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (rs->state == MAP_FAILED) {
		rs->state = NULL;
		close(fd);
		return fail(rs, -ENOMEM, "out of memory reading %s", path);
	}
	for (size_t got = 0; got < rs->state_len;) {
		ssize_t n = pread(fd, rs->state + got, rs->state_len - got, (off_t)got);
		if (n <= 0) {
			r = fail(rs, n < 0 ? -errno : -EIO, "reading %s: %s", path,
			         n < 0 ? strerror(errno) : "file shrank");
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	if (r)
		return r;
	char why[256];
	if (snap_reader_init(&rs->rd, rs->state, rs->state_len, why, sizeof(why)) < 0)
		return fail(rs, -EINVAL, "%s: %s", path, why);
	return 0;
}

struct state_job {
	struct restore *rs;
	int *result;
};

static void *read_state_thread(void *arg)
{
	struct state_job *job = arg;

	*job->result = read_state(job->rs);
	return NULL;
}

/* The layout must be regions tiling [0, mem_size) in order, each a multiple of
 * 2 MiB at its own gpa in the file; the memory file exactly that size. */
static int check_layout(struct restore *rs, struct guest_mem *want)
{
	const struct snap_header *h = &rs->rd.hdr;
	uint64_t at = 0, len;
	char path[4096];
	struct stat st;

	if (h->mem_size < GUEST_MEM_MIN || h->mem_size > GUEST_MEM_MAX ||
	    h->mem_size % (2u << 20) || h->nr_regions < 1 || h->nr_regions > VMM_MAX_SLOTS ||
	    h->nr_vcpus < 1 || h->nr_vcpus > VMM_MAX_VCPUS || h->page_size != SNAP_PAGE_SIZE)
		return fail(rs, -EINVAL,
		            "snapshot header is implausible: %llu bytes of RAM in %u region(s), %u "
		            "vCPU(s), page size %u",
		            (unsigned long long)h->mem_size, h->nr_regions, h->nr_vcpus,
		            h->page_size);
	memset(want, 0, sizeof(*want));
	want->size = h->mem_size;
	want->nslots = h->nr_regions;
	for (unsigned i = 0; i < h->nr_regions; i++) {
		const struct snap_region *reg = snap_find(&rs->rd, SNAP_REGION, i, &len);

		if (!reg || len != sizeof(*reg))
			return fail(rs, -EINVAL, "snapshot: region %u is missing", i);
		if (reg->gpa != at || reg->file_off != at || reg->size == 0 ||
		    reg->size % (2u << 20) || reg->size > h->mem_size - at)
			return fail(
			    rs, -EINVAL,
			    "snapshot: region %u (gpa 0x%llx, %llu bytes, file offset 0x%llx) does "
			    "not continue the layout at 0x%llx",
			    i, (unsigned long long)reg->gpa, (unsigned long long)reg->size,
			    (unsigned long long)reg->file_off, (unsigned long long)at);
		want->slots[i] = (struct mem_slot){
		    .gpa = reg->gpa, .size = reg->size, .file_off = reg->file_off};
		at += reg->size;
	}
	if (at != h->mem_size)
		return fail(rs, -EINVAL, "snapshot: regions cover %llu bytes, header says %llu",
		            (unsigned long long)at, (unsigned long long)h->mem_size);
	uint64_t npages = h->mem_size / SNAP_PAGE_SIZE;
	uint64_t nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	rs->chunk_crcs = snap_find(&rs->rd, SNAP_CSUM_CHUNKS, 0, &len);
	if (!rs->chunk_crcs || len != nchunks * sizeof(uint32_t))
		return fail(rs, -EINVAL,
		            "snapshot: checksum chunk table missing or of the wrong length");
	snprintf(path, sizeof(path), "%s/checksums", rs->cfg->dir);
	rs->csum_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (rs->csum_fd < 0 || fstat(rs->csum_fd, &st) < 0)
		return fail(rs, -errno, "cannot open %s: %s", path, strerror(errno));
	if ((uint64_t)st.st_size != npages * sizeof(uint32_t))
		return fail(rs, -EINVAL,
		            "%s is %lld bytes; the snapshot's %llu pages need exactly %llu", path,
		            (long long)st.st_size, (unsigned long long)npages,
		            (unsigned long long)(npages * sizeof(uint32_t)));
	if (rs->cfg->source_uri)
		return 0; /* memory comes from the NBD export: checked when it is opened */
	snprintf(path, sizeof(path), "%s/memory", rs->cfg->dir);
	rs->mem_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (rs->mem_fd < 0 || fstat(rs->mem_fd, &st) < 0)
		return fail(rs, -errno, "cannot open %s: %s", path, strerror(errno));
	if ((uint64_t)st.st_size != h->mem_size)
		return fail(rs, -EINVAL,
		            "%s is %lld bytes but the snapshot's memory layout needs exactly %llu "
		            "(%s)",
		            path, (long long)st.st_size, (unsigned long long)h->mem_size,
		            (uint64_t)st.st_size < h->mem_size ? "truncated"
		                                               : "not this snapshot's file");
	return 0;
}

/* Maps guest RAM the way the load mode wants, slot by slot as laid out. */
static int map_memory(struct restore *rs, struct guest_mem *m, const struct guest_mem *want)
{
	enum mem_backing b = rs->cfg->load == VMM_LOAD_MMAP ? MEM_FILE_PRIVATE : MEM_ANON;
	int r = guest_mem_map(m, want->size, want->nslots, b, rs->mem_fd);

	if (r < 0)
		return fail(rs, r, "mapping %llu bytes of guest RAM: %s",
		            (unsigned long long)want->size, strerror(-r));
	/* guest_mem_map lays slots out the same way snapshot_save did; insist. */
	for (unsigned i = 0; i < m->nslots; i++)
		if (m->slots[i].gpa != want->slots[i].gpa ||
		    m->slots[i].size != want->slots[i].size)
			return fail(rs, -EINVAL, "snapshot region %u is not an equal split of RAM",
			            i);
	return 0;
}

/* The memory file as a checked source: every page it gives is verified
 * against the snapshot's checksums (and delayed by --source-latency). */
static int open_source(struct restore *rs, uint64_t mem_size)
{
	char path[4096];
	struct source *file, *src;
	int r;

	if (rs->cfg->source_uri) {
		char why[256];

		if ((r = source_nbd_open(rs->cfg->source_uri, &file, why, sizeof(why))) < 0)
			return fail(rs, r, "cannot open the NBD export %s: %s", rs->cfg->source_uri,
			            why);
		if (source_size(file) != mem_size) {
			uint64_t size = source_size(file);

			source_destroy(file);
			return fail(
			    rs, -EINVAL,
			    "the NBD export %s is %llu bytes but the snapshot's memory layout "
			    "needs exactly %llu",
			    rs->cfg->source_uri, (unsigned long long)size,
			    (unsigned long long)mem_size);
		}
	} else {
		snprintf(path, sizeof(path), "%s/memory", rs->cfg->dir);
		if ((r = source_file_open(path, 0, &file)) < 0)
			return fail(rs, r, "opening %s: %s", path, strerror(-r));
	}
	src = file;
	if (rs->cfg->source_latency_ns &&
	    (r = source_latency_wrap(file, rs->cfg->source_latency_ns, &src)) < 0) {
		source_destroy(file);
		return fail(rs, r, "latency source: %s", strerror(-r));
	}
	r = source_checked_wrap(src, rs->csum_fd, rs->chunk_crcs, mem_size / SNAP_PAGE_SIZE,
	                        SNAP_PAGE_SIZE, &rs->src);
	if (r < 0) {
		source_destroy(src);
		return fail(rs, r, "checksummed source: %s", strerror(-r));
	}
	return 0;
}

static int load_eager(struct restore *rs, struct guest_mem *m)
{
	int r;

	if ((r = open_source(rs, m->size)) < 0)
		return r;
	for (unsigned i = 0; i < m->nslots; i++) {
		struct mem_slot *s = &m->slots[i];

		/* From an NBD export: through the checked source, a MiB at a time. */
		for (uint64_t off = 0; rs->cfg->source_uri && off < s->size; off += 1 << 20) {
			uint64_t n = s->size - off < (1u << 20) ? s->size - off : (1u << 20);
			if ((r = source_read(rs->src, s->host + off, s->file_off + off, n)) < 0)
				return fail(rs, r, "reading the NBD export at 0x%llx: %s",
				            (unsigned long long)(s->file_off + off), strerror(-r));
		}
		for (uint64_t off = 0; !rs->cfg->source_uri && off < s->size;) {
			ssize_t n = pread(rs->mem_fd, s->host + off, s->size - off,
			                  (off_t)(s->file_off + off));
			if (n <= 0)
				return fail(rs, n < 0 ? -errno : -ENODATA,
				            "reading the memory file at 0x%llx: %s",
				            (unsigned long long)(s->file_off + off),
				            n < 0 ? strerror(errno) : "unexpected end of file");
			off += (uint64_t)n;
		}
		r = rs->cfg->source_uri
		        ? 0
		        : source_checked_verify(rs->src, s->host, s->file_off, s->size);
		if (r < 0)
			return fail(rs, r,
			            "the memory file does not match the snapshot's checksums "
			            "(the page is named above); nothing was run");
		rs->out->bytes_read += s->size;
		rs->out->pages_installed += s->size / SNAP_PAGE_SIZE;
	}
	return 0;
}

/* Pages the snapshot says are all zeros (SNAP_ZERO_PAGES, from a migration
 * source that looked) are never read: a fault on one installs a zero page. */
static int mark_zero_pages(struct restore *rs, struct guest_mem *m)
{
	uint64_t npages = m->size / SNAP_PAGE_SIZE, len;
	const uint64_t *zero = snap_find(&rs->rd, SNAP_ZERO_PAGES, 0, &len);

	if (!zero)
		return 0;
	if (len != (npages + 63) / 64 * sizeof(*zero))
		return fail(rs, -EINVAL, "snapshot: zero-page map of %llu bytes for %llu pages",
		            (unsigned long long)len, (unsigned long long)npages);
	for (uint64_t pg = 0; pg < npages;) {
		if (!(zero[pg / 64] >> (pg % 64) & 1)) {
			pg++;
			continue;
		}
		uint64_t end = pg + 1;
		while (end < npages && zero[end / 64] >> (end % 64) & 1)
			end++;
		/* A run may cross slots: mark it slot by slot. */
		for (uint64_t p = pg; p < end;) {
			uint8_t *host = guest_mem_ptr(m, p * SNAP_PAGE_SIZE, SNAP_PAGE_SIZE);
			uint64_t n = 1;
			while (p + n < end &&
			       guest_mem_ptr(m, (p + n) * SNAP_PAGE_SIZE, SNAP_PAGE_SIZE) ==
			           host + n * SNAP_PAGE_SIZE)
				n++;
			int r = host ? engine_mark_zero(rs->eng, (uint64_t)(uintptr_t)host,
			                                n * SNAP_PAGE_SIZE)
			             : -EFAULT;
			if (r < 0)
				return fail(rs, r, "marking zero pages at 0x%llx: %s",
				            (unsigned long long)(p * SNAP_PAGE_SIZE), strerror(-r));
			p += n;
		}
		rs->out->pages_zero_known += end - pg;
		pg = end;
	}
	return 0;
}

static int start_lazy(struct restore *rs, struct guest_mem *m)
{
	char why[256] = "";
	int uffd, r;

	if ((r = open_source(rs, m->size)) < 0)
		return r;
	if (rs->cfg->apf == VMM_APF_USER && !rs->cfg->exit_intake)
		return fail(rs, -EINVAL,
		            "--apf user needs --intake exit: the VMM injects async page "
		            "faults when a vCPU exits on a missing page");
	if (rs->cfg->exit_intake) {
		struct exit_probe probe;
		enum exit_backend best;

		exit_backends_probe(rs->sys, false, &probe, &best);
		if (best == EXIT_BACKEND_NONE)
			return fail(
			    rs, -EOPNOTSUPP,
			    "--intake exit: no usable exit backend on this host (sigbus: %s; "
			    "kick: %s; native: %s)",
			    probe.sigbus_why, probe.kick_why, probe.native_why);
		rs->uf.backend = best;
		if ((r = uf_bitmap_create(&rs->uf.bm, m->size / 4096)) < 0)
			return fail(rs, r, "userfault bitmap: %s", strerror(-r));
		rs->have_uf = true;
	}
	/* Exit intake, sigbus: KVM cannot fault a missing page in and exits
	 * instead; no UFFD messages are read at all. Kick: blocking faults whose
	 * messages name the faulting thread, so the right vCPU can be kicked. */
	/* UFFD intake: messages name the faulting thread too, for the blocktime. */
	uint64_t features = rs->cfg->exit_intake && rs->uf.backend == EXIT_BACKEND_SIGBUS
	                        ? UFFD_FEATURE_SIGBUS
	                        : UFFD_FEATURE_THREAD_ID;
	if ((r = blocktime_create(rs->rd.hdr.nr_vcpus, &rs->bt)) < 0)
		return fail(rs, r, "blocktime: %s", strerror(-r));
	uffd = uffd_open(features, NULL, why, sizeof(why));
	if (uffd < 0)
		return fail(rs, uffd, "userfaultfd: %s %s", strerror(-uffd), why);
	for (unsigned i = 0; i < m->nslots; i++) {
		r = uffd_register(uffd, (uint64_t)(uintptr_t)m->slots[i].host, m->slots[i].size,
		                  UFFDIO_REGISTER_MODE_MISSING,
		                  (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE), why,
		                  sizeof(why));
		if (r < 0) {
			close(uffd);
			return fail(rs, r, "registering guest RAM slot %u with userfaultfd: %s %s",
			            i, strerror(-r), why);
		}
	}
	struct engine_config ec = {
	    .uffd = uffd,
	    .source = rs->src,
	    .threads = rs->cfg->exit_intake       ? 0
	               : rs->cfg->handler_threads ? rs->cfg->handler_threads
	                                          : 1,
	    /* vCPUs, then the async PF I/O workers, then the kick intake thread,
	     * then the last: working-set replay (before the guest runs), then
	     * background prefetch (while it runs) */
	    .resolvers = rs->cfg->exit_intake ? rs->rd.hdr.nr_vcpus + APF_IO_WORKERS + 2 : 1,
	    .intake = rs->cfg->intake,
	    .busy_idle_ns = 10 * 1000 * 1000,
	    .fault_around = rs->cfg->fault_around,
	    .blocktime = rs->bt,
	    .name = "restore"};
	rs->uf.kick_uffd =
	    rs->uf.backend == EXIT_BACKEND_KICK ? fcntl(uffd, F_DUPFD_CLOEXEC, 0) : -1;
	if ((r = engine_create(&ec, &rs->eng)) < 0) {
		close(uffd);
		return fail(rs, r, "fault engine: %s", strerror(-r));
	}
	for (unsigned i = 0; i < m->nslots; i++) {
		struct engine_region er = {.host_addr = (uint64_t)(uintptr_t)m->slots[i].host,
		                           .size = m->slots[i].size,
		                           .src_off = m->slots[i].file_off,
		                           .page_size = SNAP_PAGE_SIZE};
		if ((r = engine_add_region(rs->eng, &er)) < 0)
			return fail(rs, r, "fault engine region %u: %s", i, strerror(-r));
	}
	if ((r = mark_zero_pages(rs, m)) < 0)
		return r;
	if ((r = engine_start(rs->eng)) < 0)
		return fail(rs, r, "starting the fault engine: %s", strerror(-r));
	rs->eng_prefetch_slot = ec.resolvers - 1;
	if (rs->cfg->record_ws)
		engine_record_start(rs->eng);
	return 0;
}

/* Watches the fault engine while the VM runs. If it fails, no page will come
 * for the vCPUs blocked on faults: stop the VM with the engine's reason, make
 * guest RAM inaccessible, then wake the blocked vCPUs, whose retried access
 * now fails in the host instead of reading a page that is not there. The
 * guest never sees a wrong or zero page. */
struct watch {
	struct restore *rs;
	struct vm *vm;
	int stop_efd;
};

static void *watch_engine(void *arg)
{
	struct watch *w = arg;
	struct pollfd p[2] = {{.fd = engine_event_fd(w->rs->eng), .events = POLLIN},
	                      {.fd = w->stop_efd, .events = POLLIN}};

	while (poll(p, 2, -1) < 0 && errno == EINTR)
		;
	if (p[1].revents || engine_status(w->rs->eng) != ENGINE_FAILED)
		return NULL;
	vm_fail(w->vm, "serving guest memory: %s", engine_error(w->rs->eng));
	vm_mem_revoke(w->vm);
	for (unsigned i = 0; i < w->vm->mem.nslots; i++) {
		struct mem_slot *s = &w->vm->mem.slots[i];

		engine_wake(w->rs->eng, (uint64_t)(uintptr_t)s->host, s->size);
	}
	return NULL;
}

static int run_watched(struct restore *rs, struct vm *vm)
{
	struct watch w = {.rs = rs, .vm = vm, .stop_efd = -1};
	pthread_t th;
	uint64_t one = 1;
	int r;

	if (!rs->eng)
		return vm_run(vm);
	w.stop_efd = eventfd(0, EFD_CLOEXEC);
	if (w.stop_efd < 0)
		return fail(rs, -errno, "eventfd: %s", strerror(errno));
	r = -pthread_create(&th, NULL, watch_engine, &w);
	if (r < 0) {
		close(w.stop_efd);
		return fail(rs, r, "cannot start the engine watcher: %s", strerror(-r));
	}
	r = vm_run(vm);
	if (write(w.stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* a fresh eventfd cannot be full */
	pthread_join(th, NULL);
	close(w.stop_efd);
	return r;
}

/* The sigbus exit backend serves what the guest's instructions touch, but not
 * what KVM itself touches around them: delivering an interrupt or exception
 * reads the IDT and GDT and pushes a frame on the stack, and when one of those
 * pages is missing KVM escalates to a triple fault instead of exiting
 * (measured: SHUTDOWN at the first instruction of a restore). So the guest's
 * core (page tables, boot info and the kernel image with its stacks, IDT and
 * GDT: [0, GUEST_IMAGE_GPA + GUEST_IMAGE_MAX) by the guest ABI) is installed
 * before the first entry; everything else stays lazy. */
static int prefetch_range(struct restore *rs, struct vm *vm, uint64_t start, uint64_t end)
{
	for (uint64_t gpa = start; gpa < end; gpa += 4096) {
		uint8_t *host = guest_mem_ptr(&vm->mem, gpa, 4096);
		struct engine_run run;
		int r;

		if (!host || !uf_bitmap_test(&rs->uf.bm, gpa / 4096))
			continue;
		r = engine_resolve(rs->eng, 0, (uint64_t)(uintptr_t)host, &run);
		if (r < 0)
			return fail(rs, r, "installing the guest's core page 0x%llx: %s",
			            (unsigned long long)gpa,
			            r == -EIO ? engine_error(rs->eng) : strerror(-r));
		uf_bitmap_clear(&rs->uf.bm,
		                gpa / 4096 + (run.addr - (uint64_t)(uintptr_t)host) / 4096,
		                run.npages ? run.npages : 1);
	}
	return 0;
}

static int prefetch_core(struct restore *rs, struct vm *vm)
{
	const struct guest_boot_info *bi;
	uint64_t end = GUEST_IMAGE_GPA + GUEST_IMAGE_MAX;
	int r = prefetch_range(rs, vm, GUEST_BOOT_INFO_GPA, GUEST_BOOT_INFO_GPA + 4096);

	if (r < 0)
		return r;
	bi = guest_mem_ptr(&vm->mem, GUEST_BOOT_INFO_GPA, sizeof(*bi));
	/* The guest says where its core ends; a value outside the image area is
	 * ignored (guest-written, so untrusted) and the whole area is used. */
	if (bi && bi->core_end > GUEST_IMAGE_GPA && bi->core_end <= end)
		end = bi->core_end;
	return prefetch_range(rs, vm, 0, end);
}

/* The guest's async PF set-up (SNAP_APF) goes where the mode wants it: to the
 * VMM (user: it injects; off: it keeps KVM out and injects nothing) or to KVM
 * (kernel: KVM's own async PF). */
static int setup_apf(struct restore *rs, struct vm *vm)
{
	static const enum apf_mode modes[] = {[VMM_APF_OFF] = APF_OFF,
	                                      [VMM_APF_USER] = APF_USER,
	                                      [VMM_APF_EXITLESS] = APF_EXITLESS,
	                                      [VMM_APF_KERNEL] = APF_KERNEL};
	static const enum apf_policy policies[] = {[VMM_POLICY_SYNC] = APF_POLICY_SYNC,
	                                           [VMM_POLICY_ASYNC] = APF_POLICY_ASYNC,
	                                           [VMM_POLICY_HYBRID] = APF_POLICY_HYBRID};
	char why[160];
	uint64_t len;
	int r;

	/* Off: the guest's async PF MSRs stay out of KVM (it never writes them
	 * again after boot), so nothing needs intercepting; the MSR filter costs
	 * milliseconds of start-up (measured), which a plain restore should not. */
	if (rs->cfg->apf == VMM_APF_OFF)
		return 0;
	if (!snap_find(&rs->rd, SNAP_APF, 0, &len)) {
		if (rs->cfg->apf != VMM_APF_OFF)
			snprintf(
			    rs->out->apf_note, sizeof(rs->out->apf_note),
			    "the snapshot's guest never enabled async page faults (run --apf off)");
		return 0;
	}
	r = apf_init(&rs->apf, vm, modes[rs->cfg->apf], policies[rs->cfg->policy],
	             rs->cfg->source_latency_ns, why, sizeof(why));
	if (r < 0)
		return fail(rs, r, "async page faults: %s", why);
	rs->have_apf = true;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		const struct snap_apf *sa = snap_find(&rs->rd, SNAP_APF, i, &len);

		if (!sa || len != sizeof(*sa))
			return fail(rs, -EINVAL, "snapshot: vCPU %u's async PF state is missing",
			            i);
		if (rs->cfg->apf == VMM_APF_KERNEL) {
			struct {
				struct kvm_msrs hdr;
				struct kvm_msr_entry e[2];
			} m = {.hdr.nmsrs = 2,
			       .e = {{.index = MSR_KVM_ASYNC_PF_INT, .data = sa->vector},
			             {.index = MSR_KVM_ASYNC_PF_EN, .data = sa->msr_en}}};
			if (ioctl(vm->vcpus[i].fd, KVM_SET_MSRS, &m) != 2)
				return fail(rs, -EINVAL, "vCPU %u: KVM refused the async PF MSRs",
				            i);
		} else {
			rs->apf.vcpus[i].msr_en = sa->msr_en;
			rs->apf.vcpus[i].vector = (uint8_t)sa->vector;
		}
	}
	if (rs->cfg->apf != VMM_APF_KERNEL)
		vm->apf = &rs->apf;
	if ((r = apf_route_irqfds(&rs->apf)) < 0)
		return fail(rs, r, "async page faults: routing the page-ready irqfds: %s",
		            strerror(-r));
	if ((r = apf_start(&rs->apf)) < 0)
		return fail(rs, r, "async page fault workers: %s", strerror(-r));
	return 0;
}

/* Working-set files (REAP): a header naming the snapshot they belong to (its
 * memory size and the state file's CRC), then the pages in the order they
 * were installed. A file that is missing, damaged or from another snapshot
 * only costs a warning: the restore goes on plain lazy. */
struct ws_header {
	char magic[8]; /* "LZYVMWS1" */
	uint64_t mem_size;
	uint32_t state_crc;
	uint32_t reserved;
	uint64_t count;
};

static uint32_t state_crc(const struct restore *rs)
{
	uint32_t crc;

	memcpy(&crc, rs->state + rs->state_len - sizeof(crc), sizeof(crc));
	return crc;
}

static void record_ws(struct restore *rs)
{
	struct ws_header h = {
	    .magic = "LZYVMWS1", .mem_size = rs->rd.hdr.mem_size, .state_crc = state_crc(rs)};
	uint64_t *pages = NULL;
	FILE *f;

	h.count = engine_record_get(rs->eng, &pages);
	f = fopen(rs->cfg->record_ws, "wb");
	if (!f || fwrite(&h, sizeof(h), 1, f) != 1 ||
	    (h.count && fwrite(pages, sizeof(*pages), h.count, f) != h.count) || fclose(f) != 0)
		lv_warn("cannot write the working set to %s: %s", rs->cfg->record_ws,
		        strerror(errno));
	else
		rs->out->ws_recorded = h.count;
	free(pages);
}

static int prefetch_ws(struct restore *rs, struct vm *vm)
{
	const char *path = rs->cfg->prefetch_ws;
	struct ws_header h;
	uint64_t *pages = NULL, installed = 0, t0 = lv_now_ns();
	FILE *f = fopen(path, "rb");
	int r;

	if (!f || fread(&h, sizeof(h), 1, f) != 1 || memcmp(h.magic, "LZYVMWS1", 8) != 0 ||
	    h.count > rs->rd.hdr.mem_size / 4096 * 4) {
		lv_warn("working set %s is missing or not a working-set file: plain lazy restore",
		        path);
		goto out;
	}
	if (h.mem_size != rs->rd.hdr.mem_size || h.state_crc != state_crc(rs)) {
		lv_warn(
		    "working set %s was recorded for another snapshot (stale): plain lazy restore",
		    path);
		goto out;
	}
	pages = malloc((h.count ? h.count : 1) * sizeof(*pages));
	if (!pages || fread(pages, sizeof(*pages), h.count, f) != h.count) {
		lv_warn("working set %s is truncated: plain lazy restore", path);
		goto out;
	}
	r = engine_prefetch(rs->eng, rs->eng_prefetch_slot, pages, h.count, &installed);
	if (r < 0) {
		fclose(f);
		free(pages);
		return fail(rs, r, "replaying the working set: %s", engine_error(rs->eng));
	}
	/* With exit intake the bitmap must say what is in now. */
	for (uint64_t i = 0; rs->have_uf && i < h.count; i++) {
		uint8_t *host = guest_mem_ptr(&vm->mem, pages[i] * 4096, 4096);
		if (host && engine_page_present(rs->eng, (uint64_t)(uintptr_t)host))
			uf_bitmap_clear(&rs->uf.bm, pages[i], 1);
	}
	rs->out->ws_prefetched = installed;
	rs->out->prefetch_ms_x1000 = (lv_now_ns() - t0) / 1000;
out:
	if (f)
		fclose(f);
	free(pages);
	return 0;
}

/* Every 2 MiB piece of guest RAM whose pages are all installed becomes one
 * transparent huge page (MADV_COLLAPSE, Linux 6.1). UFFDIO_COPY installs
 * 4 KiB pages, so without this KVM maps a lazily restored guest 4 KiB at a
 * time for ever, where an eagerly loaded one may get 2 MiB pages. While the
 * userfaultfd is armed the kernel refuses to collapse a piece with a page
 * missing (it would fill the hole with zeros), so this can never make up a
 * page. Best effort: a refusal only means smaller pages. LAZYVM_COLLAPSE=0
 * turns it off (for measuring it). */
static void collapse_installed(struct restore *rs)
{
	const char *env = getenv("LAZYVM_COLLAPSE");
	const struct guest_mem *m = rs->mem;

	if ((env && !strcmp(env, "0")) || !m)
		return;
	for (unsigned i = 0; i < m->nslots; i++)
		for (uint64_t off = 0; off + (2u << 20) <= m->slots[i].size; off += 2u << 20) {
			uint8_t *p = m->slots[i].host + off;
			bool all = (uintptr_t)p % (2u << 20) == 0;

			for (unsigned k = 0; k < 512 && all; k++)
				all = engine_page_present(rs->eng,
				                          (uint64_t)(uintptr_t)(p + k * 4096));
			if (all && madvise(p, 2u << 20, MADV_COLLAPSE) == 0)
				atomic_fetch_add(&rs->huge, 1);
		}
}

static void transferred(void *arg)
{
	struct restore *rs = arg;

	collapse_installed(rs);
	rs->out->t_transferred_ns = lv_now_ns();
	if (rs->cfg->hooks && rs->cfg->hooks->transferred)
		rs->cfg->hooks->transferred(rs->cfg->hooks->arg);
}

/* Per vCPU (by the tids its threads registered) and all-blocked totals. */
static void report_blocktime(struct restore *rs, struct vm *vm)
{
	struct blocktime_report bt;

	blocktime_get(rs->bt, &bt);
	rs->out->nvcpus = vm->nvcpus;
	rs->out->blocktime_all_ns = bt.all_ns;
	for (unsigned i = 0; i < bt.nthreads; i++)
		for (unsigned v = 0; v < vm->nvcpus && v < 8; v++)
			if (bt.t[i].tid == atomic_load(&vm->vcpus[v].tid)) {
				rs->out->blocktime_ns[v] = bt.t[i].wait_ns;
				rs->out->blocktime_faults[v] = bt.t[i].faults;
			}
}

static int load_vm_state(struct restore *rs, struct vm *vm)
{
	char why[256];
	uint64_t len;
	int r;

	for (uint32_t chip = 0; chip < 3; chip++) {
		const struct kvm_irqchip *ic = snap_find(&rs->rd, SNAP_IRQCHIP, chip, &len);
		if (!ic || len != sizeof(*ic))
			return fail(rs, -EINVAL, "snapshot: interrupt controller %u state missing",
			            chip);
		if (ioctl(vm->fd, KVM_SET_IRQCHIP, ic) < 0)
			return fail(rs, -errno, "KVM_SET_IRQCHIP %u: %s", chip, strerror(errno));
	}
	const struct kvm_clock_data *clock = snap_find(&rs->rd, SNAP_CLOCK, 0, &len);
	if (clock && len == sizeof(*clock)) {
		struct kvm_clock_data c = {.clock = clock->clock};
		if (ioctl(vm->fd, KVM_SET_CLOCK, &c) < 0)
			lv_warn("KVM_SET_CLOCK: %s", strerror(errno));
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if ((r = arch_vcpu_load(&vm->vcpus[i], &rs->rd, why, sizeof(why))) < 0)
			return fail(rs, r, "restoring %s", why);
	return 0;
}

int vmm_restore(const struct vmm_restore_config *cfg, struct vmm_outcome *out)
{
	struct restore rs = {
	    .cfg = cfg, .out = out, .mem_fd = -1, .csum_fd = -1, .uf = {.kick_uffd = -1}};
	struct guest_mem want;
	struct kvm_sys sys = {.fd = -1};

	rs.sys = &sys;
	struct vm *vm = NULL;
	struct rusage ru0, ru1;
	int r;

	memset(out, 0, sizeof(*out));
	if (cfg->background && cfg->load != VMM_LOAD_LAZY) {
		snprintf(out->error, sizeof(out->error),
		         "--background-prefetch works with --load lazy");
		return -EINVAL;
	}
	if (cfg->load == VMM_LOAD_MMAP && cfg->source_uri) {
		snprintf(out->error, sizeof(out->error),
		         "--load mmap maps a local memory file; it cannot read from --source");
		return -EINVAL;
	}
	getrusage(RUSAGE_SELF, &ru0);
	/* Reading and checking the state file grows with memory (its page
	 * checksums); opening KVM does not depend on it: do both at once. */
	pthread_t reader;
	int read_r = -EINTR;
	struct state_job job = {.rs = &rs, .result = &read_r};
	bool threaded = pthread_create(&reader, NULL, read_state_thread, &job) == 0;
	int kvm_r = kvm_sys_open(&sys, out->error, sizeof(out->error));
	if (threaded)
		pthread_join(reader, NULL);
	else
		read_r = read_state(&rs);
	/* A bad snapshot is the more useful message: it wins over a KVM problem. */
	if ((r = read_r) < 0 || (r = check_layout(&rs, &want)) < 0)
		goto out;
	if ((r = kvm_r) < 0)
		goto out;
	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		r = fail(&rs, -ENOMEM, "out of memory");
		goto out;
	}
	if ((r = map_memory(&rs, &vm->mem, &want)) < 0)
		goto out;
	if (cfg->load == VMM_LOAD_EAGER && (r = load_eager(&rs, &vm->mem)) < 0)
		goto out;
	if (cfg->load == VMM_LOAD_LAZY && (r = start_lazy(&rs, &vm->mem)) < 0)
		goto out;
	struct vm_config vc = {.mem_size = want.size,
	                       .nslots = want.nslots,
	                       .nvcpus = rs.rd.hdr.nr_vcpus,
	                       .workload = "",
	                       .quiet_console = cfg->console_to_stderr,
	                       .capture_apf_msrs =
	                           cfg->apf == VMM_APF_USER || cfg->apf == VMM_APF_EXITLESS};
	if ((r = vm_create(vm, &sys, &vc)) < 0) {
		fail(&rs, r, "creating the VM: %s", strerror(-r));
		goto out_vm;
	}
	if ((r = load_vm_state(&rs, vm)) < 0)
		goto out_vm;
	if ((r = setup_apf(&rs, vm)) < 0)
		goto out_vm;
	if (cfg->prefetch_ws && rs.eng && (r = prefetch_ws(&rs, vm)) < 0)
		goto out_vm;
	rs.mem = &vm->mem;
	/* After a replay: huge pages for the pieces it filled, before the guest
	 * runs. Measured both ways (BENCHMARKS 6b): here the replay's total is
	 * lower than collapsing while the guest already runs (941 vs 1029 ms on
	 * the hardware-model host; the PVM host cannot tell them apart), at the
	 * price of a later first instruction. */
	if (cfg->prefetch_ws && rs.eng)
		collapse_installed(&rs);
	/* 16 pages (64 KiB) a chunk; paused while a demand fault came in the last
	 * 2 ms, so a demand fault waits for at most one chunk. */
	if (cfg->background && rs.eng &&
	    (r = engine_background_start(rs.eng, rs.eng_prefetch_slot, 16, 2 * 1000 * 1000,
	                                 transferred, &rs)) < 0) {
		fail(&rs, r, "background prefetch: %s", strerror(-r));
		goto out_vm;
	}
	if (rs.have_uf) {
		rs.uf.eng = rs.eng;
		vm->uf = &rs.uf;
		/* sigbus cannot serve KVM's own accesses (event delivery): install the
		 * guest's core first. Kick can: those fault in the vCPU's thread too. */
		if (rs.uf.backend == EXIT_BACKEND_SIGBUS && (r = prefetch_core(&rs, vm)) < 0)
			goto out_vm;
		if (rs.uf.backend == EXIT_BACKEND_KICK &&
		    (r = userfault_kick_start(&rs.uf, vm)) < 0) {
			fail(&rs, r, "kick intake thread: %s", strerror(-r));
			goto out_vm;
		}
		snprintf(out->exit_backend, sizeof(out->exit_backend), "%s",
		         exit_backend_name(rs.uf.backend));
	}
	vm->blocktime = rs.bt;
	out->t_ready_ns = lv_now_ns();
	if (cfg->hooks && cfg->hooks->ready)
		cfg->hooks->ready(cfg->hooks->arg);
	r = run_watched(&rs, vm);
	if (rs.have_uf)
		userfault_kick_stop(&rs.uf);
	/* A migration's destination owns every page only once all have come. */
	if (cfg->background_finish && rs.eng && r == 0) {
		lv_info("guest done; waiting for the last pages to arrive");
		engine_background_join(rs.eng);
	}
	if (rs.bt)
		report_blocktime(&rs, vm);
	out->huge_collapsed = atomic_load(&rs.huge);
	if (cfg->record_ws && rs.eng)
		record_ws(&rs);
	fill_vm_outcome(vm, r, out);
	if (rs.have_apf) {
		apf_stop(&rs.apf);
		out->apf_not_present = rs.apf.st.not_present;
		out->apf_ready = rs.apf.st.ready;
		out->apf_spurious = rs.apf.st.spurious;
		out->apf_refused_unsafe = rs.apf.st.refused_unsafe;
		out->apf_refused_state = rs.apf.st.refused_state;
		out->apf_io_wakeups = rs.apf.st.io_wakeups;
		out->apf_sync = rs.apf.st.sync_faults;
		out->apf_sync_ns = rs.apf.st.sync_ns;
		out->apf_async_ns = rs.apf.st.async_ns;
		out->apf_notify_signals = rs.apf.st.notify_signals;
		if (cfg->apf == VMM_APF_KERNEL && out->ok && out->guest_apf_not_present == 0)
			snprintf(out->apf_note, sizeof(out->apf_note),
			         "kernel async PF unavailable: KVM delivered none (this KVM blocks "
			         "on the "
			         "userfaultfd instead)");
	}
	if (rs.eng) {
		struct metrics m;

		engine_metrics(rs.eng, &m);
		out->faults = rs.have_uf ? rs.uf.exits_data + rs.uf.exits_fetch + rs.uf.exits_kick +
		                               rs.apf.st.not_present
		                         : m.faults;
		out->pages_installed = m.pages_copied + m.pages_zeroed;
		out->pages_background = m.pages_background;
		out->bytes_read = m.bytes_read;
		out->fault_p50_ns = hist_percentile(&m.latency, 0.5);
		out->fault_p99_ns = hist_percentile(&m.latency, 0.99);
		if (engine_status(rs.eng) == ENGINE_FAILED) {
			snprintf(out->error, sizeof(out->error), "serving guest memory: %s",
			         engine_error(rs.eng));
			out->ok = false;
		}
	} else if (cfg->load == VMM_LOAD_MMAP) {
		getrusage(RUSAGE_SELF, &ru1);
		out->faults =
		    (uint64_t)(ru1.ru_minflt - ru0.ru_minflt + ru1.ru_majflt - ru0.ru_majflt);
	}
	r = out->ok ? 0 : -EIO;
out_vm:
	if (rs.have_apf)
		apf_destroy(&rs.apf);
	vm_destroy(vm);
out:
	/* The engine goes after the vCPUs (they may wait on it) and before the memory. */
	if (rs.eng)
		engine_destroy(rs.eng);
	if (vm) {
		guest_mem_unmap(&vm->mem);
		free(vm);
	}
	source_destroy(rs.src);
	if (rs.have_uf) {
		userfault_kick_stop(&rs.uf);
		uf_bitmap_destroy(&rs.uf.bm);
		if (rs.uf.kick_uffd >= 0)
			close(rs.uf.kick_uffd);
	}
	if (rs.mem_fd >= 0)
		close(rs.mem_fd);
	if (rs.csum_fd >= 0)
		close(rs.csum_fd);
	if (rs.state)
		munmap(rs.state, rs.state_len);
	blocktime_destroy(rs.bt);
	if (sys.fd >= 0)
		kvm_sys_close(&sys);
	return r;
}
