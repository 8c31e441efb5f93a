/* vmm_restore: validate a snapshot completely, load its memory (eager, mmap or
 * lazy), put every vCPU back, run the guest's run phase. */
#include "lazyvm/vmm.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/fdio.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "devices.h"
#include "snapshot.h"
#include "vcpu.h"
#include "apf.h"
#include "exit.h"
#include "restore.h"
#include "vmm.h"

int restore_fail(struct restore *rs, int err, const char *fmt, ...)
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
	char path[4096], why[4200];
	struct stat st;
	int fd, r = 0;

	snprintf(path, sizeof(path), "%s/state", rs->cfg->dir);
	if ((fd = lv_open_input(path, 0, &st, why, sizeof(why))) < 0)
		return restore_fail(rs, fd, "%s", why);
	if (st.st_size <= 0 || (uint64_t)st.st_size > SNAP_STATE_MAX) {
		close(fd);
		return restore_fail(rs, -EINVAL,
		                    "%s: %lld bytes is not a plausible state file size", path,
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
		return restore_fail(rs, -ENOMEM, "out of memory reading %s", path);
	}
	for (size_t got = 0; got < rs->state_len;) {
		ssize_t n = pread(fd, rs->state + got, rs->state_len - got, (off_t)got);
		if (n <= 0) {
			r = restore_fail(rs, n < 0 ? -errno : -EIO, "reading %s: %s", path,
			                 n < 0 ? strerror(errno) : "file shrank");
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	if (r)
		return r;
	if (snap_reader_init(&rs->rd, rs->state, rs->state_len, why, sizeof(why)) < 0)
		return restore_fail(rs, -EINVAL, "%s: %s", path, why);
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
	char path[4096], why[4200];
	struct stat st;

	if (h->mem_size < GUEST_MEM_MIN || h->mem_size > GUEST_MEM_MAX ||
	    h->mem_size % (2u << 20) || h->nr_regions < 1 || h->nr_regions > VMM_MAX_SLOTS ||
	    h->nr_vcpus < 1 || h->nr_vcpus > VMM_MAX_VCPUS || h->page_size != SNAP_PAGE_SIZE)
		return restore_fail(
		    rs, -EINVAL,
		    "snapshot header is implausible: %llu bytes of RAM in %u region(s), %u "
		    "vCPU(s), page size %u",
		    (unsigned long long)h->mem_size, h->nr_regions, h->nr_vcpus, h->page_size);
	memset(want, 0, sizeof(*want));
	want->size = h->mem_size;
	want->nslots = h->nr_regions;
	for (unsigned i = 0; i < h->nr_regions; i++) {
		const struct snap_region *reg = snap_find(&rs->rd, SNAP_REGION, i, &len);

		if (!reg || len != sizeof(*reg))
			return restore_fail(rs, -EINVAL, "snapshot: region %u is missing", i);
		if (reg->gpa != at || reg->file_off != at || reg->size == 0 ||
		    reg->size % (2u << 20) || reg->size > h->mem_size - at)
			return restore_fail(
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
		return restore_fail(rs, -EINVAL,
		                    "snapshot: regions cover %llu bytes, header says %llu",
		                    (unsigned long long)at, (unsigned long long)h->mem_size);
	uint64_t npages = h->mem_size / SNAP_PAGE_SIZE;
	uint64_t nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	rs->chunk_crcs = snap_find(&rs->rd, SNAP_CSUM_CHUNKS, 0, &len);
	if (!rs->chunk_crcs || len != nchunks * sizeof(uint32_t))
		return restore_fail(
		    rs, -EINVAL, "snapshot: checksum chunk table missing or of the wrong length");
	snprintf(path, sizeof(path), "%s/checksums", rs->cfg->dir);
	if ((rs->csum_fd = lv_open_input(path, 0, &st, why, sizeof(why))) < 0)
		return restore_fail(rs, rs->csum_fd, "%s", why);
	if ((uint64_t)st.st_size != npages * sizeof(uint32_t))
		return restore_fail(rs, -EINVAL,
		                    "%s is %lld bytes; the snapshot's %llu pages need exactly %llu",
		                    path, (long long)st.st_size, (unsigned long long)npages,
		                    (unsigned long long)(npages * sizeof(uint32_t)));
	if (rs->cfg->source_uri)
		return 0; /* memory comes from the NBD export: checked when it is opened */
	snprintf(path, sizeof(path), "%s/memory", rs->cfg->dir);
	if ((rs->mem_fd = lv_open_input(path, 0, &st, why, sizeof(why))) < 0)
		return restore_fail(rs, rs->mem_fd, "%s", why);
	if ((uint64_t)st.st_size != h->mem_size)
		return restore_fail(
		    rs, -EINVAL,
		    "%s is %lld bytes but the snapshot's memory layout needs exactly %llu "
		    "(%s)",
		    path, (long long)st.st_size, (unsigned long long)h->mem_size,
		    (uint64_t)st.st_size < h->mem_size ? "truncated" : "not this snapshot's file");
	return 0;
}

/* Maps guest RAM the way the load mode wants, slot by slot as laid out. */
static int map_memory(struct restore *rs, struct guest_mem *m, const struct guest_mem *want)
{
	enum mem_backing b = rs->cfg->load == VMM_LOAD_MMAP ? MEM_FILE_PRIVATE : MEM_ANON;
	int r = guest_mem_map(m, want->size, want->nslots, b, rs->mem_fd);

	if (r < 0)
		return restore_fail(rs, r, "mapping %llu bytes of guest RAM: %s",
		                    (unsigned long long)want->size, strerror(-r));
	/* guest_mem_map lays slots out the same way snapshot_save did; insist. */
	for (unsigned i = 0; i < m->nslots; i++)
		if (m->slots[i].gpa != want->slots[i].gpa ||
		    m->slots[i].size != want->slots[i].size)
			return restore_fail(rs, -EINVAL,
			                    "snapshot region %u is not an equal split of RAM", i);
	return 0;
}

/* The memory file as a checked source: every page it gives is verified
 * against the snapshot's checksums (and delayed by --source-latency). */
int restore_open_source(struct restore *rs, uint64_t mem_size)
{
	char path[4096];
	struct source *file, *src;
	int r;

	if (rs->cfg->source_uri) {
		char why[256];

		if ((r = source_nbd_open(rs->cfg->source_uri, rs->cfg->source_timeout_ns, &file,
		                         why, sizeof(why))) < 0)
			return restore_fail(rs, r, "cannot open the NBD export %s: %s",
			                    rs->cfg->source_uri, why);
		if (source_size(file) != mem_size) {
			uint64_t size = source_size(file);

			source_destroy(file);
			return restore_fail(
			    rs, -EINVAL,
			    "the NBD export %s is %llu bytes but the snapshot's memory layout "
			    "needs exactly %llu",
			    rs->cfg->source_uri, (unsigned long long)size,
			    (unsigned long long)mem_size);
		}
	} else {
		char why[4200];

		snprintf(path, sizeof(path), "%s/memory", rs->cfg->dir);
		if ((r = source_file_open(path, 0, &file, why, sizeof(why))) < 0)
			return restore_fail(rs, r, "%s", why);
	}
	src = file;
	if (rs->cfg->source_latency_ns &&
	    (r = source_latency_wrap(file, rs->cfg->source_latency_ns, &src)) < 0) {
		source_destroy(file);
		return restore_fail(rs, r, "latency source: %s", strerror(-r));
	}
	r = source_checked_wrap(src, rs->csum_fd, 0, rs->chunk_crcs, mem_size / SNAP_PAGE_SIZE,
	                        SNAP_PAGE_SIZE, &rs->src);
	if (r < 0) {
		source_destroy(src);
		return restore_fail(rs, r, "checksummed source: %s", strerror(-r));
	}
	return 0;
}

/* Guest RAM of slot s, as it is now, against the snapshot's checksums. */
static int verify_slot(struct restore *rs, const struct mem_slot *s)
{
	int r = source_checked_verify(rs->src, s->host, s->file_off, s->size);

	if (r < 0)
		return restore_fail(rs, r,
		                    "the memory file does not match the snapshot's checksums "
		                    "(the page is named above); nothing was run");
	return 0;
}

/* --load mmap: the guest runs on the file's pages through the page cache,
 * where lazyvm cannot check a page as it comes in. So every page is checked
 * through the mapping itself before the guest runs (what is checked is what
 * the guest will read): the mapping stays lazy in the kernel's sense, but the
 * file is read once up front (measured in docs/BENCHMARKS.md). */
static int verify_mapped(struct restore *rs, const struct guest_mem *m)
{
	int r;

	if ((r = restore_open_source(rs, m->size)) < 0)
		return r;
	for (unsigned i = 0; i < m->nslots; i++)
		if ((r = verify_slot(rs, &m->slots[i])) < 0)
			return r;
	return 0;
}

static int load_eager(struct restore *rs, struct guest_mem *m)
{
	int r;

	if ((r = restore_open_source(rs, m->size)) < 0)
		return r;
	for (unsigned i = 0; i < m->nslots; i++) {
		struct mem_slot *s = &m->slots[i];

		/* From an NBD export: through the checked source, a MiB at a time. */
		for (uint64_t off = 0; rs->cfg->source_uri && off < s->size; off += 1 << 20) {
			uint64_t n = s->size - off < (1u << 20) ? s->size - off : (1u << 20);
			if ((r = source_read(rs->src, s->host + off, s->file_off + off, n)) < 0)
				return restore_fail(rs, r, "reading the NBD export at 0x%llx: %s",
				                    (unsigned long long)(s->file_off + off),
				                    strerror(-r));
		}
		for (uint64_t off = 0; !rs->cfg->source_uri && off < s->size;) {
			ssize_t n = pread(rs->mem_fd, s->host + off, s->size - off,
			                  (off_t)(s->file_off + off));
			char why[512];

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return restore_fail(rs, n < 0 ? -errno : -ENODATA,
				                    "reading the memory file at 0x%llx: %s",
				                    (unsigned long long)(s->file_off + off),
				                    source_strerror(rs->src,
				                                    n < 0 ? -errno : -ENODATA, why,
				                                    sizeof(why)));
			off += (uint64_t)n;
		}
		if (!rs->cfg->source_uri && (r = verify_slot(rs, s)) < 0)
			return r;
		rs->out->bytes_read += s->size;
		rs->out->pages_installed += s->size / SNAP_PAGE_SIZE;
	}
	return 0;
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
			return restore_fail(
			    rs, -EINVAL, "snapshot: interrupt controller %u state missing", chip);
		if (ioctl(vm->fd, KVM_SET_IRQCHIP, ic) < 0)
			return restore_fail(rs, -errno, "KVM_SET_IRQCHIP %u: %s", chip,
			                    strerror(errno));
	}
	if ((r = devices_load(vm, &rs->rd, why, sizeof(why))) < 0)
		return restore_fail(rs, r, "snapshot: %s", why);
	const struct kvm_clock_data *clock = snap_find(&rs->rd, SNAP_CLOCK, 0, &len);
	if (clock && len == sizeof(*clock)) {
		struct kvm_clock_data c = {.clock = clock->clock};
		if (ioctl(vm->fd, KVM_SET_CLOCK, &c) < 0)
			lv_warn("KVM_SET_CLOCK: %s", strerror(errno));
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if ((r = arch_vcpu_load(&vm->vcpus[i], &rs->rd, why, sizeof(why))) < 0)
			return restore_fail(rs, r, "restoring %s", why);
	return 0;
}

int vmm_restore(const struct vmm_restore_config *cfg, struct vmm_outcome *out)
{
	struct restore rs = {
	    .cfg = cfg, .out = out, .mem_fd = -1, .csum_fd = -1, .uf = {.uffd = -1}};
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
		r = restore_fail(&rs, -ENOMEM, "out of memory");
		goto out;
	}
	if ((r = map_memory(&rs, &vm->mem, &want)) < 0)
		goto out;
	if (cfg->load == VMM_LOAD_EAGER && (r = load_eager(&rs, &vm->mem)) < 0)
		goto out;
	if (cfg->load == VMM_LOAD_MMAP && (r = verify_mapped(&rs, &vm->mem)) < 0)
		goto out;
	if (cfg->load == VMM_LOAD_LAZY && (r = restore_start_lazy(&rs, &vm->mem)) < 0)
		goto out;
	/* lazyvm's own async PF (not KVM's): it holds the guest's PV MSRs */
	bool lazyvm_apf = (cfg->apf == VMM_APF_USER || cfg->apf == VMM_APF_EXITLESS) &&
	                  rs.apf_impl == APF_IMPL_LAZYVM;
	struct vm_config vc = {
	    .mem_size = want.size,
	    .nslots = want.nslots,
	    .nvcpus = rs.rd.hdr.nr_vcpus,
	    .workload = "",
	    .quiet_console = cfg->console_to_stderr,
	    /* not where KVM owns them (apf_kvm.c) */
	    .capture_apf_msrs = lazyvm_apf,
	    .stall_ns = cfg->stall_ns,
	    /* lazyvm's async PF through an intake that sees only faults KVM
	     * takes in the vCPU's thread: KVM's artificial halt must not take
	     * them first (exit.h) */
	    .hlt_in_guest = lazyvm_apf && rs.have_uf && rs.uf.ops->sees_vcpu_thread_faults,
	    /* the snapshot's devices and CPUID, not this host's */
	    .pit = snap_find(&rs.rd, SNAP_DEVICE, SNAP_DEV_PIT, &(uint64_t){0}),
	    .cpuid_later = true,
	    /* a Linux guest's snapshot holds its UART */
	    .linux_guest = snap_find(&rs.rd, SNAP_DEVICE, SNAP_DEV_UART0, &(uint64_t){0}) != NULL};
	out->apf_msr_filter = vc.capture_apf_msrs;
	if ((r = vm_create(vm, &sys, &vc)) < 0) {
		restore_fail(&rs, r, "creating the VM: %s", strerror(-r));
		goto out_vm;
	}
	out->hlt_in_guest = vm->hlt_in_guest;
	if (vc.hlt_in_guest && !vm->hlt_in_guest)
		snprintf(out->apf_note, sizeof(out->apf_note),
		         "KVM cannot leave HLT to the guest: its own async PF takes the faults "
		         "made with interrupts on before the %s intake sees them",
		         exit_backend_name(rs.uf.ops->id));
	/* What KVM itself touches must be in before the state that makes it
	 * touch them (restore_lazy.c). */
	if (rs.have_uf && (r = restore_install_first(&rs, vm)) < 0)
		goto out_vm;
	if ((r = load_vm_state(&rs, vm)) < 0)
		goto out_vm;
	if ((r = restore_setup_apf(&rs, vm)) < 0)
		goto out_vm;
	if (cfg->prefetch_ws && rs.eng && (r = restore_prefetch_ws(&rs, vm)) < 0)
		goto out_vm;
	rs.mem = &vm->mem;
	/* After a replay: huge pages for the pieces it filled, before the guest
	 * runs. Measured both ways (BENCHMARKS 6b): here the replay's total is
	 * lower than collapsing while the guest already runs (941 vs 1029 ms on
	 * the hardware-model host; the PVM host cannot tell them apart), at the
	 * price of a later first instruction. */
	if (cfg->prefetch_ws && rs.eng)
		restore_collapse(&rs);
	/* 16 pages (64 KiB) a chunk; paused while a demand fault came in the last
	 * 2 ms, so a demand fault waits for at most one chunk. */
	if (cfg->background && rs.eng &&
	    (r = engine_background_start(rs.eng, rs.eng_prefetch_slot, 16, 2 * 1000 * 1000,
	                                 restore_transferred, &rs)) < 0) {
		restore_fail(&rs, r, "background prefetch: %s", strerror(-r));
		goto out_vm;
	}
	if (rs.have_uf) {
		const char *name = exit_backend_name(rs.uf.ops->id);

		if ((r = exit_attach(&rs.uf, vm)) < 0) {
			restore_fail(&rs, r, "the %s exit backend: %s", name, strerror(-r));
			goto out_vm;
		}
		snprintf(out->exit_backend, sizeof(out->exit_backend), "%s", name);
	}
	vm->blocktime = rs.bt;
	out->t_ready_ns = lv_now_ns();
	if (cfg->hooks && cfg->hooks->ready)
		cfg->hooks->ready(cfg->hooks->arg);
	r = restore_run_watched(&rs, vm);
	if (rs.have_uf)
		exit_detach(&rs.uf);
	/* A migration's destination owns every page only once all have come. */
	if (cfg->background_finish && rs.eng && r == 0) {
		lv_info("guest done; waiting for the last pages to arrive");
		engine_background_join(rs.eng);
	}
	if (rs.bt)
		report_blocktime(&rs, vm);
	out->huge_collapsed = atomic_load(&rs.huge);
	if (cfg->record_ws && rs.eng)
		restore_record_ws(&rs);
	fill_vm_outcome(vm, r, out);
	if (rs.have_apf) {
		apf_stop(&rs.apf);
		out->apf_not_present = rs.apf.st.not_present;
		out->apf_ready = rs.apf.st.ready;
		out->apf_spurious = rs.apf.st.spurious;
		out->apf_refused_unsafe = rs.apf.st.refused_unsafe;
		out->apf_refused_state = rs.apf.st.refused_state;
		out->apf_user_async = rs.apf.st.user_async;
		out->apf_kernel_async = rs.apf.st.kernel_async;
		out->apf_kernel_sync = rs.apf.st.kernel_sync;
		out->apf_io_wakeups = rs.apf.st.io_wakeups;
		out->apf_sync = rs.apf.st.sync_faults;
		out->apf_sync_ns = rs.apf.st.sync_ns;
		out->apf_async_ns = rs.apf.st.async_ns;
		out->apf_notify_signals = rs.apf.st.notify_signals;
		out->apf_kvm_exits = rs.apf.st.kvm_apf_exits;
		out->apf_kvm_accepted = rs.apf.st.kvm_accepted;
		out->apf_kvm_accept_refused = rs.apf.st.kvm_accept_refused;
		out->apf_kvm_ready = rs.apf.st.kvm_ready;
		out->apf_kvm_ready_refused = rs.apf.st.kvm_ready_refused;
		out->apf_kvm_ring_taken = rs.apf.st.kvm_ring_taken;
		out->apf_kvm_ring_completed = rs.apf.st.kvm_ring_completed;
		snprintf(out->apf_mode, sizeof(out->apf_mode), "%s", apf_mode_name(rs.apf.mode));
		snprintf(out->apf_impl, sizeof(out->apf_impl), "%s", apf_impl_name(&rs.apf));
		/* only the bundled guest reports what it took; a Linux guest's
		 * count is in its /proc/interrupts (HYP), not here */
		if (cfg->apf == VMM_APF_KERNEL && out->ok && !vc.linux_guest &&
		    out->guest_apf_not_present == 0)
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
	/* The vCPU threads are gone: close the userfaultfd (the engine's and the
	 * kick thread's copy) before KVM lets go of the VM. KVM's own async PF
	 * may have a kernel worker waiting on a fault that will never be served
	 * (the engine failed), and destroying the VM waits for that worker; the
	 * last close of the userfaultfd releases it. No guest runs again. */
	if (rs.have_uf)
		exit_detach(&rs.uf);
	if (rs.eng)
		engine_destroy(rs.eng);
	rs.eng = NULL;
	exit_close_uffd(&rs.uf);
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
	if (rs.have_uf)
		exit_destroy(&rs.uf);
	exit_close_uffd(&rs.uf);
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
