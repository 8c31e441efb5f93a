/* The fault engine's intake: a worker thread reads a batch of userfaultfd
 * messages (never blocking, whatever the peer does to the file's flags),
 * handles the non-fault events (removes, unmaps, remaps, forks) under
 * install_lock held for writing, claims the faulting pages and hands the
 * batch to engine_serve_batch (engine.c). See engine.c for the ordering rule
 * between removes and installs. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lazyvm/blocktime.h"
#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"
#include "engine_internal.h"

/* Marks every page overlapping [start, end) removed. Caller holds install_lock
 * for writing. */
static uint64_t mark_removed(struct engine *eng, uint64_t start, uint64_t end)
{
	uint64_t marked = 0;

	for (size_t i = 0; i < eng->nregions; i++) {
		struct region *reg = &eng->regions[i];
		uint64_t rs = reg->r.host_addr, re = rs + reg->r.size;
		uint64_t s = start > rs ? start : rs, e = end < re ? end : re;

		if (s >= e)
			continue;
		uint64_t first = (s - rs) >> reg->shift;
		uint64_t last = (e - rs + reg->r.page_size - 1) >> reg->shift;
		pagemap_set_range(reg->pm, first, last - first, PAGE_REMOVED);
		marked += last - first;
	}
	return marked;
}

/* Handles the non-fault events of a batch. Caller holds install_lock for
 * writing. Returns 0, or -EPROTO after recording a fatal error. */
static int handle_event(struct worker *w, const struct uffd_msg *msg)
{
	struct engine *eng = w->eng;

	switch (msg->event) {
	case UFFD_EVENT_REMOVE:
		ctr_add(&w->m.remove_events, 1);
		ctr_add(&w->m.removed_pages,
		        mark_removed(eng, msg->arg.remove.start, msg->arg.remove.end));
		return 0;
	case UFFD_EVENT_UNMAP:
		/* The range no longer exists; a new mapping there is fresh memory. */
		ctr_add(&w->m.unmap_events, 1);
		ctr_add(&w->m.removed_pages,
		        mark_removed(eng, msg->arg.remove.start, msg->arg.remove.end));
		return 0;
	case UFFD_EVENT_REMAP: {
		uint64_t from = msg->arg.remap.from, to = msg->arg.remap.to,
		         len = msg->arg.remap.len;
		struct region *reg = engine_region_find(eng, from);

		ctr_add(&w->m.remap_events, 1);
		if (!reg || reg->r.host_addr != from || reg->r.size != len) {
			engine_finish(
			    eng, ENGINE_FAILED,
			    "%s: mremap of [0x%" PRIx64 ", 0x%" PRIx64 ") to 0x%" PRIx64
			    " does not move one whole region; partial moves are not supported",
			    eng->name, from, from + len, to);
			return -EPROTO;
		}
		reg->r.host_addr = to;
		/* Keep the table sorted for engine_region_find. */
		for (size_t i = 0; i + 1 < eng->nregions; i++)
			for (size_t j = 0; j + 1 < eng->nregions - i; j++)
				if (eng->regions[j].r.host_addr > eng->regions[j + 1].r.host_addr) {
					struct region t = eng->regions[j];
					eng->regions[j] = eng->regions[j + 1];
					eng->regions[j + 1] = t;
				}
		return 0;
	}
	case UFFD_EVENT_FORK:
		/* Reading the event installed the child's userfaultfd in our fd
		 * table: close it, or every fork of the peer leaks one. */
		close((int)msg->arg.fork.ufd);
		engine_finish(eng, ENGINE_FAILED,
		              "%s: unexpected userfaultfd event FORK (the peer enabled "
		              "UFFD_FEATURE_EVENT_FORK, which lazyvm does not handle)",
		              eng->name);
		return -EPROTO;
	default:
		engine_finish(eng, ENGINE_FAILED, "%s: unexpected userfaultfd event %u", eng->name,
		              msg->event);
		return -EPROTO;
	}
}

/* Reads up to `max` messages and never blocks, whatever the peer does to the
 * file's flags: the userfaultfd's file description is shared with the peer, which
 * may clear O_NONBLOCK after the hand-off, and a worker stuck in a blocking read
 * would make engine_stop wait for ever. RWF_NOWAIT asks for a non-blocking read
 * of this one call (userfaultfd honours it since it moved to read_iter; measured
 * here on 6.18); kernels where it still has a plain ->read (Debian 12's 6.1)
 * refuse it with EOPNOTSUPP, and then the flag is checked before each read:
 * that leaves a window of one system call, which only a peer flipping the flag
 * on purpose can hit. Returns a count, or -EPROTO after recording why. */
static int read_events_nowait(struct engine *eng, struct uffd_msg *msgs, unsigned max)
{
	struct iovec iov = {.iov_base = msgs, .iov_len = sizeof(*msgs) * max};
	int fl;

	while (!atomic_load_explicit(&eng->no_rwf_nowait, memory_order_relaxed)) {
		ssize_t n = preadv2(eng->cfg.uffd, &iov, 1, -1, RWF_NOWAIT);

		if (n >= 0)
			return (int)((size_t)n / sizeof(*msgs));
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return 0;
		if (errno != EOPNOTSUPP && errno != EINVAL)
			return -errno;
		atomic_store(&eng->no_rwf_nowait, true);
	}
	fl = fcntl(eng->cfg.uffd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK)) {
		engine_finish(eng, ENGINE_FAILED,
		              "%s: the userfaultfd lost O_NONBLOCK after the hand-off (its owner "
		              "cleared it) and this kernel has no RWF_NOWAIT for it: a blocking "
		              "read could hang this engine, so it stops",
		              eng->name);
		return -EPROTO;
	}
	return uffd_read_events(eng->cfg.uffd, msgs, max);
}

/* Reads one batch of messages under the write lock, handles events there and
 * turns faults into todos. Returns the number of todos (>= 0) or -errno;
 * *nmsgs gets the number of messages read. */
static int intake_batch(struct worker *w, struct todo *todo, int *nmsgs)
{
	struct engine *eng = w->eng;
	struct uffd_msg msgs[EVENT_BATCH];
	unsigned ntodo = 0;
	size_t buf_used = 0;
	uint64_t now;
	int n;

	pthread_rwlock_wrlock(&eng->install_lock);
	n = read_events_nowait(eng, msgs, eng->batch_max);
	now = lv_now_ns();
	*nmsgs = n > 0 ? n : 0;
	for (int i = 0; i < n; i++) {
		if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
			if (handle_event(w, &msgs[i]) < 0) {
				n = -EPROTO;
				break;
			}
			continue;
		}
		uint64_t addr = msgs[i].arg.pagefault.address;
		uint64_t pf = msgs[i].arg.pagefault.flags;
		struct region *reg = engine_region_find(eng, addr);

		/* A peer that registered write-protect or minor mode (seen here
		 * when no /proc told the handler its features up front) wants
		 * what UFFDIO_COPY cannot give. */
		if (pf & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_MINOR)) {
			engine_finish(
			    eng, ENGINE_FAILED,
			    "%s: a %s fault at 0x%" PRIx64 ": the peer registered %s mode, "
			    "which lazyvm does not serve (it serves MISSING faults)",
			    eng->name, pf & UFFD_PAGEFAULT_FLAG_WP ? "write-protect" : "minor",
			    addr, pf & UFFD_PAGEFAULT_FLAG_WP ? "write-protect" : "minor");
			n = -EPROTO;
			break;
		}

		ctr_add(&w->m.faults, 1);
		atomic_store_explicit(&eng->last_demand_ns, now, memory_order_relaxed);
		if (!reg) {
			engine_finish(eng, ENGINE_FAILED,
			              "%s: fault at 0x%" PRIx64
			              " outside every region the peer declared",
			              eng->name, addr);
			n = -EPROTO;
			break;
		}
		uint64_t idx = (addr - reg->r.host_addr) >> reg->shift;
		enum page_state prev = pagemap_claim(reg->pm, idx);
		if (eng->cfg.blocktime && prev != PAGE_PRESENT && msgs[i].arg.pagefault.feat.ptid)
			blocktime_begin(eng->cfg.blocktime, (int)msgs[i].arg.pagefault.feat.ptid,
			                page_addr(reg, idx), now);
		if (prev == PAGE_INFLIGHT) {
			ctr_add(&w->m.faults_shared, 1);
		} else if (prev == PAGE_PRESENT) {
			/* Installed after the fault was queued: the install woke it already,
			 * but a wake is cheap and a stranded vCPU is not. */
			ctr_add(&w->m.faults_stale, 1);
			uffd_wake(eng->cfg.uffd, page_addr(reg, idx), reg->r.page_size);
		} else {
			uint32_t run =
			    engine_claim_run(eng, reg, idx, prev, WORKER_BUF_BYTES - buf_used);
			todo[ntodo++] = (struct todo){.reg = reg,
			                              .idx = idx,
			                              .npages = run,
			                              .zero = prev == PAGE_REMOVED,
			                              .data = w->buf + buf_used,
			                              .t0 = now};
			if (prev != PAGE_REMOVED)
				buf_used += run * reg->r.page_size;
		}
	}
	pthread_rwlock_unlock(&eng->install_lock);
	if (n < 0) {
		engine_release_todos(todo, ntodo);
		return n;
	}
	if (n > 0)
		ctr_add(&w->m.read_batches, 1);
	return n < 0 ? n : (int)ntodo;
}

/* One empty spin of a busy worker: true when it has been idle long enough to
 * sleep in poll until the next fault instead of burning the CPU. */
static bool spin_idle(const struct engine *eng, uint64_t last_msg)
{
	if (eng->cfg.busy_idle_ns && lv_now_ns() - last_msg > eng->cfg.busy_idle_ns)
		return true;
	cpu_relax();
	return false;
}

/* Whether the userfaultfd has lost O_NONBLOCK (its owner cleared it), said
 * once per engine. */
static bool lost_nonblock(struct engine *eng)
{
	int fl = fcntl(eng->cfg.uffd, F_GETFL);

	if (fl < 0 || (fl & O_NONBLOCK))
		return false;
	if (!atomic_exchange(&eng->nap_warned, true))
		lv_warn("%s: the userfaultfd lost O_NONBLOCK after the hand-off (its owner cleared "
		        "it), so poll cannot wait on it: looking for faults every millisecond",
		        eng->name);
	return true;
}

void *engine_worker_main(void *arg)
{
	struct worker *w = arg;
	struct engine *eng = w->eng;
	struct todo todo[EVENT_BATCH];
	bool block = eng->cfg.intake == ENGINE_INTAKE_BLOCK, nap = false;
	uint64_t last_msg = lv_now_ns();

	while (!atomic_load_explicit(&eng->stopping, memory_order_relaxed)) {
		int nmsgs, n;

		if (block && nap) {
			/* poll cannot wait on this userfaultfd (below): look every
			 * millisecond, reads never block (read_events_nowait). */
			struct pollfd stop = {.fd = eng->stop_efd, .events = POLLIN};

			if (poll(&stop, 1, 1) > 0)
				break;
		} else if (block) {
			struct pollfd p[2] = {{.fd = eng->cfg.uffd, .events = POLLIN},
			                      {.fd = eng->stop_efd, .events = POLLIN}};

			if (poll(p, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				engine_finish(eng, ENGINE_FAILED, "%s: poll on the userfaultfd: %s",
				              eng->name, strerror(errno));
				break;
			}
			if (p[1].revents)
				break;
			/* A userfaultfd without O_NONBLOCK always polls as POLLERR (the
			 * kernel's way of saying poll cannot promise a read will not
			 * block). Its owner cleared the flag after the hand-off: go on
			 * serving by looking every millisecond, rather than leave the VM
			 * without a page server. */
			if ((p[0].revents & POLLERR) && lost_nonblock(eng)) {
				nap = true;
				continue;
			}
			if (p[0].revents & (POLLERR | POLLNVAL)) {
				engine_finish(
				    eng, ENGINE_FAILED,
				    "%s: the userfaultfd reports an error (poll revents 0x%x)",
				    eng->name, p[0].revents);
				break;
			}
		} else {
			/* Busy: look without the lock (a zero-timeout poll) and take the
			 * write lock only to read what is there, so spinning workers do
			 * not hold up each other's installs. */
			struct pollfd p = {.fd = eng->cfg.uffd, .events = POLLIN};

			/* A lone worker has no one to hold up: it reads straight away
			 * (one system call a spin, as the minimal handler does). */
			if (eng->cfg.threads > 1 && poll(&p, 1, 0) == 0) {
				block = spin_idle(eng, last_msg);
				continue;
			}
		}
		n = intake_batch(w, todo, &nmsgs);
		if (n < 0) {
			if (n != -EPROTO)
				engine_finish(eng, ENGINE_FAILED, "%s: reading the userfaultfd: %s",
				              eng->name, strerror(-n));
			break;
		}
		if (nmsgs == 0) {
			if (!block)
				block = spin_idle(eng, last_msg);
			continue; /* nothing there, or another worker took it */
		}
		if (eng->cfg.intake == ENGINE_INTAKE_BUSY) {
			block = false;
			last_msg = lv_now_ns();
		}
		engine_serve_batch(w, todo, (unsigned)n);
	}
	return NULL;
}
