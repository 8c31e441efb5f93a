/* One VM's life in fc-handler: its hand-off read and checked, its engine
 * started, the messages that follow on its socket answered, and what happens
 * when it cannot be served or goes away. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "handler_internal.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"

/* The engine's messages start with its name, which is the VM's name: the
 * handler's own lines carry that name already, so they quote the rest. */
static const char *engine_reason(const struct vm *vm)
{
	const char *e = engine_error(vm->eng);
	size_t n = strlen(vm->name);

	return strncmp(e, vm->name, n) == 0 && strncmp(e + n, ": ", 2) == 0 ? e + n + 2 : e;
}

/* Applies --on-fatal to a VM the handler cannot serve, in one line that says
 * what happened (`what`: why), and what became of the VM. Kills only a process
 * proven to be the VM (owner.c) whose memory still exists: never on a guess. */
static void vm_give_up(struct fc_handler *h, struct vm *vm, const char *what, const char *why)
{
	if (h->cfg.on_fatal == FC_ON_FATAL_REPORT) {
		lv_err("%s: %s: %s; left without a page server: it will hang at its next fault",
		       vm->name, what, why);
		return;
	}
	if (!vm->proven) {
		lv_err("%s: %s: %s; cannot prove which process is the VM (%s); not killing: it "
		       "will hang at its next fault",
		       vm->name, what, why, vm->proof);
		return;
	}
	if (vm->uffd >= 0 && !fc_uffd_mm_alive(vm->uffd, vm->probe_addr, h->unreadable)) {
		lv_info("%s: %s: %s; its memory is already gone", vm->name, what, why);
		return;
	}
	if (syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0) == 0)
		lv_err("%s: %s: %s; killed it (SIGKILL), since it cannot be served", vm->name, what,
		       why);
	else if (errno == ESRCH)
		lv_info("%s: %s: %s; it has already exited", vm->name, what, why);
	else
		lv_err("%s: %s: %s; killing it failed: %s", vm->name, what, why, strerror(errno));
}

/* Stops a VM's engine and folds its metrics into the retired ones. */
void fc_vm_retire_engine(struct fc_handler *h, struct vm *vm)
{
	struct metrics m;

	if (!vm->eng)
		return;
	engine_stop(vm->eng);
	fc_snap_save_ws(vm->snap, vm);
	engine_metrics(vm->eng, &m);
	metrics_add(&h->retired, &m);
	lv_info("%s: %s after %.1f s: %" PRIu64 " faults, %" PRIu64 " pages copied, %" PRIu64
	        " zeroed, p50 %.1f us",
	        vm->name, engine_status_name(engine_status(vm->eng)),
	        (double)(lv_now_ns() - vm->started_ns) / 1e9, (uint64_t)m.faults,
	        (uint64_t)m.pages_copied, (uint64_t)m.pages_zeroed,
	        (double)hist_percentile(&m.latency, 0.5) / 1000.0);
	engine_destroy(vm->eng); /* closes the engine's own duplicate of the uffd */
	vm->eng = NULL;
	fc_snap_vm_source_put(vm->snap, vm); /* after the engine that read it */
	h->nserving--;
}

static void vm_drop_pidfd(struct fc_handler *h, struct vm *vm)
{
	if (vm->pidfd < 0)
		return;
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, vm->pidfd, NULL);
	close(vm->pidfd);
	vm->pidfd = -1;
}

void fc_vm_free(struct fc_handler *h, struct vm *vm)
{
	struct vm **pp;

	for (pp = &h->vms; *pp && *pp != vm; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = vm->next;
	if (vm->state == VM_PENDING)
		h->npending--;
	if (vm->state == VM_UNSERVED)
		h->nunserved--;
	if (vm->state != VM_PENDING)
		fc_fdstore_vm_changed(h, vm, false);
	fc_vm_retire_engine(h, vm);
	free(vm->runs);
	fc_conn_close(&vm->conn);
	fc_snap_vm_source_put(vm->snap, vm); /* when no engine ever used it */
	fc_handshake_free(&vm->hs);
	if (vm->uffd >= 0)
		close(vm->uffd);
	if (vm->pidfd >= 0)
		close(vm->pidfd);
	free(vm);
}

/* After vm_give_up: keeps the VM's userfaultfd open until its memory is gone
 * (see enum vm_state), without serving it. */
static void vm_park(struct fc_handler *h, struct vm *vm)
{
	if (vm->state == VM_PENDING) {
		h->npending--;
		/* A hand-off refused before its userfaultfd was taken: keep that
		 * too, if it is one (it may be a VM's only other reference). */
		if (vm->conn.nfds && uffd_fd_check(vm->conn.fds[0]) == 1)
			vm->uffd = fc_conn_take_uffd(&vm->conn);
		/* The rest (a guest_memfd, a bitmap) keep nothing from zeros. */
		fc_conn_close_fds(&vm->conn);
	}
	fc_conn_close(&vm->conn);
	fc_vm_retire_engine(h, vm);
	/* An unserved VM reads nothing more: its own NBD connection goes now,
	 * also when its engine never started. */
	fc_snap_vm_source_put(vm->snap, vm);
	vm->state = VM_UNSERVED;
	h->nunserved++;
	if (vm->uffd < 0 || h->nunserved > h->cfg.max_vms) {
		if (vm->uffd >= 0)
			lv_warn("%s: more than %u VMs left unserved: releasing its userfaultfd",
			        vm->name, h->cfg.max_vms);
		fc_vm_free(h, vm);
		return;
	}
	/* The pidfd tells of the VM's exit only when it is the VM's. */
	if (!vm->proven) {
		vm_drop_pidfd(h, vm);
	} else if (vm->pidfd >= 0) {
		int r = fc_ep_add(h, vm->pidfd, &vm->w_pid);

		if (r < 0 && r != -EEXIST)
			vm_drop_pidfd(h, vm);
	}
	fc_fdstore_vm_changed(h, vm, true);
}

void fc_vm_reject(struct fc_handler *h, struct vm *vm, const char *why)
{
	h->rejected++;
	/* Kill (per policy) before replying: a peer that reads the reply must not
	 * get the chance to carry on as if it had been served. */
	vm_give_up(h, vm, "handshake rejected", why);
	fc_conn_reply(&vm->conn, why);
	vm_park(h, vm);
}

/* Which Firecracker wrote this hand-off, from the fields it carries. */
static const char *shape_name(unsigned has)
{
	if (has & (FC_HAS_GPA_START | FC_HAS_GUEST_MEMFD))
		return "secret-hiding (gpa_start, is_guest_memfd)";
	if (has & FC_HAS_PAGE_SIZE)
		return "v1.12 or later (page_size)";
	if (has & FC_HAS_PAGE_SIZE_KIB)
		return "v1.7-v1.11 (page_size_kib only)";
	return "v1.4-v1.6 (no page size field: 4 KiB pages)";
}

int fc_vm_engine_make(struct fc_handler *h, struct vm *vm, const struct engine_page_run *runs,
                      size_t nruns, char *why, size_t whylen)
{
	const struct fc_handshake *hs = &vm->hs;
	struct engine_config ec = {.uffd = -1,
	                           .source = NULL, /* below */
	                           .threads = h->cfg.threads_per_vm,
	                           .resolvers = VM_SLOTS,
	                           .intake = h->cfg.intake,
	                           .busy_idle_ns = h->cfg.busy_idle_ns,
	                           .fault_around = h->cfg.fault_around,
	                           .name = vm->name};
	int r;

	/* The snapshot's first VM records its working set: each page as it was
	 * touched, so without fault-around (which would record pages nobody
	 * touched). A VM taken over does not: it did not start here. */
	if (!runs && vm->snap->cfg->record_ws && !vm->snap->recording) {
		vm->snap->recording = vm->recording = true;
		ec.fault_around = 1;
	}
	if ((r = fc_snap_vm_source(h, vm->snap, vm)) < 0) {
		snprintf(why, whylen, "cannot connect to its memory: %s", strerror(-r));
		return -1;
	}
	ec.source = vm->src;
	/* The engine gets a duplicate: when it stops, ours keeps the VM's
	 * registration alive (see enum vm_state). */
	ec.uffd = fcntl(vm->uffd, F_DUPFD_CLOEXEC, 0);
	if (ec.uffd < 0) {
		snprintf(why, whylen, "cannot duplicate the userfaultfd: %s", strerror(errno));
		return -1;
	}
	r = engine_create(&ec, &vm->eng);
	if (r < 0) {
		close(ec.uffd);
		snprintf(why, whylen, "cannot create an engine: %s", strerror(-r));
		return -1;
	}
	h->nserving++; /* counted from here: fc_vm_retire_engine uncounts */
	vm->started_ns = lv_now_ns();
	for (size_t i = 0; i < hs->nregions; i++) {
		const struct fc_region *fr = &hs->regions[i];
		struct engine_region er = {.host_addr = fr->base_host_virt_addr,
		                           .size = fr->size,
		                           .src_off = fr->offset,
		                           .page_size = fr->page_size};

		r = engine_add_region(vm->eng, &er);
		if (r < 0) {
			snprintf(why, whylen, "region %zu refused by the engine: %s", i,
			         strerror(-r));
			return -1;
		}
	}
	if (runs) {
		/* A VM taken over: its page map says what is in already. */
		if (engine_import_pages(vm->eng, runs, nruns) < 0) {
			snprintf(why, whylen,
			         "its page map (%zu runs) does not fit its %zu region(s)", nruns,
			         hs->nregions);
			return -1;
		}
		return 0;
	}
	vm->zeros = fc_snap_mark_zero(vm->snap, vm);
	if (vm->recording)
		engine_record_start(vm->eng);
	return 0;
}

int fc_vm_engine_go(struct fc_handler *h, struct vm *vm, char *why, size_t whylen)
{
	int r = engine_start(vm->eng);

	if (r < 0) {
		snprintf(why, whylen, "cannot start handler threads: %s", strerror(-r));
		return -1;
	}
	if ((r = fc_ep_add(h, engine_event_fd(vm->eng), &vm->w_eng)) < 0) {
		snprintf(why, whylen, "epoll: %s", strerror(-r));
		return -1;
	}
	/* In the background, from the hand-off on: the working set first (in the
	 * order the recorded VM touched it), then, with --background-prefetch,
	 * the rest, yielding to demand faults; --populate all does everything
	 * at once, as Firecracker's own fault_all handler does on the first
	 * fault. */
	struct engine_bg bg = {.slot = SLOT_POPULATE,
	                       .chunk_pages = 64,
	                       .quiet_ns = h->cfg.populate_all ? 0 : 2 * 1000 * 1000,
	                       .first = vm->snap->ws_pages,
	                       .nfirst = vm->snap->ws_n,
	                       .first_data = vm->snap->ws_data,
	                       .rest = h->cfg.populate_all || h->cfg.background_prefetch};
	if ((bg.nfirst || bg.rest) && (r = engine_background(vm->eng, &bg)) < 0) {
		snprintf(why, whylen, "cannot start the background installs: %s", strerror(-r));
		return -1;
	}
	/* Only the VM's own pidfd tells of its end; a connector that is not
	 * known to be the VM may come and go as it likes. */
	if (!vm->proven || fc_ep_add(h, vm->pidfd, &vm->w_pid) < 0)
		vm_drop_pidfd(h, vm);
	return 0;
}

void fc_vm_fail(struct fc_handler *h, struct vm *vm, const char *why)
{
	h->failed++;
	vm_give_up(h, vm, "cannot be served", why);
	vm_park(h, vm);
}

/* The hand-off is complete and valid: give the VM an engine. */
static void vm_serve(struct fc_handler *h, struct vm *vm)
{
	const struct fc_handshake *hs = &vm->hs;
	char why[160];

	if (fc_vm_engine_make(h, vm, NULL, 0, why, sizeof(why)) < 0 ||
	    fc_vm_engine_go(h, vm, why, sizeof(why)) < 0) {
		fc_vm_fail(h, vm, why);
		return;
	}
	h->npending--;
	vm->state = VM_SERVING;
	h->served++;
	uint64_t bytes = 0;
	for (size_t i = 0; i < hs->nregions; i++)
		bytes += hs->regions[i].size;
	vm->snap->served++;
	bool bg_first = vm->snap->ws_n, bg_rest = h->cfg.populate_all || h->cfg.background_prefetch;
	char extra[160] = "";
	snprintf(extra, sizeof(extra), "%s%s%s%s", h->cfg.populate_all ? ", populating all" : "",
	         bg_first ? ", replaying the working set" : "",
	         !h->cfg.populate_all && bg_rest ? ", prefetching the rest" : "",
	         vm->recording ? ", recording its working set" : "");
	if (vm->zeros)
		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
		         ", %" PRIu64 " known-zero pages", vm->zeros);
	lv_info("%s: serving %zu region(s), %" PRIu64 " MiB, from %s%s; Firecracker %s; %s %s",
	        vm->name, hs->nregions, bytes >> 20, source_describe(vm->snap->src), extra,
	        shape_name(hs->has),
	        vm->proven ? "the VM is the connecting process:" : "the VM is not identified:",
	        vm->proof);
	/* The socket stays open: Firecracker since v1.12 keeps it, and the
	 * secret-hiding branch sends fault requests on it. */
	vm->conn.handed_off = true;
	fc_fdstore_vm_changed(h, vm, true);
}

/* What only the regions can tell, before anything is installed: guest_memfd
 * memory, and extra fds for memory that is not. 0 or -1 with why. */
static int check_memory_kind(const struct vm *vm, char *why, size_t whylen)
{
	for (size_t i = 0; i < vm->hs.nregions; i++)
		if (vm->hs.regions[i].guest_memfd) {
			snprintf(
			    why, whylen,
			    "region %zu is guest_memfd memory (is_guest_memfd: true, a "
			    "secret-hiding VM); lazyvm does not serve it: that needs UFFD minor "
			    "faults on the guest_memfd mapping, writes through the guest_memfd "
			    "and the userfault bitmap, and answers to fault requests for "
			    "guest_memfd offsets",
			    i);
			return -1;
		}
	if (vm->conn.nfds != 1) {
		snprintf(why, whylen,
		         "%u file descriptors sent; expected exactly one userfaultfd (only a "
		         "guest_memfd VM of the secret-hiding branch sends more)",
		         vm->conn.nfds);
		return -1;
	}
	return 0;
}

static void handle_handoff(struct fc_handler *h, struct vm *vm)
{
	char why[480];
	uint64_t installed = 0;
	int r;

	if (fc_conn_check_fds(&vm->conn, why, sizeof(why)) < 0) {
		fc_vm_reject(h, vm, why);
		return;
	}
	snprintf(vm->proof, sizeof(vm->proof), "no valid regions to prove it with");
	r = fc_handshake_parse(vm->conn.buf, vm->conn.msg_len, source_size(vm->snap->src), &vm->hs,
	                       why, sizeof(why));
	if (r < 0 || check_memory_kind(vm, why, sizeof(why)) < 0) {
		fc_vm_reject(h, vm, why);
		return;
	}
	fc_conn_consume(&vm->conn);
	if (vm->hs.unknown_fields)
		lv_debug("%s: the hand-off has %zu field(s) lazyvm does not use, ignored: %s",
		         vm->name, vm->hs.unknown_fields, vm->hs.unknown);
	vm->uffd = fc_conn_take_uffd(&vm->conn);
	fc_conn_close_fds(&vm->conn); /* none left: check_memory_kind saw to it */
	vm->probe_addr = vm->hs.regions[0].base_host_virt_addr;
	/* Before anything can go wrong: a refusal from here on may kill. */
	vm->proven = fc_owner_prove(&(struct fc_owner_query){.uffd = vm->uffd,
	                                                     .pid = vm->pid,
	                                                     .pidfd = vm->pidfd,
	                                                     .race_free = vm->pidfd_race_free,
	                                                     .hs = &vm->hs,
	                                                     .src = vm->snap->src,
	                                                     .installed = &installed},
	                            vm->proof, sizeof(vm->proof)) == 1;
	ctr_add(&h->retired.pages_copied, installed);
	r = fc_uffd_check(vm->uffd, why, sizeof(why));
	if (r < 0) {
		fc_vm_reject(h, vm, why);
		return;
	}
	if (r == 0)
		lv_info("%s: %s", vm->name, why);
	if (h->nserving >= h->cfg.max_vms) {
		snprintf(why, sizeof(why), "already serving %u VMs (--max-vms)", h->cfg.max_vms);
		fc_vm_reject(h, vm, why);
		return;
	}
	vm_serve(h, vm);
}

/* Where file offset `off` is mapped in the VM; 0 when no region holds it. */
static uint64_t offset_to_addr(const struct vm *vm, uint64_t off, uint64_t *page_size)
{
	for (size_t i = 0; i < vm->hs.nregions; i++) {
		const struct fc_region *r = &vm->hs.regions[i];

		if (off - r->offset < r->size) {
			*page_size = r->page_size;
			return r->base_host_virt_addr +
			       (off - r->offset) / r->page_size * r->page_size;
		}
	}
	return 0;
}

/* A fault request on the socket (the secret-hiding protocol): the page is
 * installed as for a fault, and the reply says which range is in. */
static void handle_request(struct fc_handler *h, struct vm *vm, const struct fc_fault_request *q)
{
	struct engine_run run = {0};
	uint64_t ps = 4096, addr = offset_to_addr(vm, q->offset, &ps);
	char reply[256];
	int n, r;

	if (!addr) {
		vm->requests_bad++;
		lv_warn("%s: fault request for offset 0x%" PRIx64 ", which no region holds; not "
		        "answered",
		        vm->name, q->offset);
		return;
	}
	do
		r = engine_resolve(vm->eng, SLOT_REQUESTS, addr, &run);
	while (r == -EAGAIN);
	if (r < 0) {
		vm->requests_bad++;
		lv_warn("%s: fault request for offset 0x%" PRIx64 ": %s", vm->name, q->offset,
		        r == -EIO ? engine_reason(vm) : strerror(-r));
		return;
	}
	uint64_t first = q->offset / ps * ps;
	n = fc_fault_reply_format(q, first, run.npages ? run.npages * ps : ps, false, reply,
	                          sizeof(reply));
	if (n > 0 && send(vm->conn.fd, reply, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
		lv_warn("%s: cannot send the fault reply: %s", vm->name, strerror(errno));
	vm->requests++;
}

/* After the hand-off: every message is read; fault requests are answered,
 * anything else is logged and dropped. The socket closing is normal
 * (Firecracker before v1.12 closes it at once). */
static void handle_messages(struct fc_handler *h, struct vm *vm)
{
	char why[320];
	int r;

	while ((r = fc_conn_receive(&vm->conn, why, sizeof(why))) == 1) {
		struct fc_conn *c = &vm->conn;
		struct fc_fault_request q;
		size_t end;

		switch (c->msg_kind) {
		case FC_MSG_APF_TEXT:
			lv_info("%s: Firecracker says %.*s%s: lazyvm does no exitless async page "
			        "faults for Firecracker VMs (%u fd(s) closed)",
			        vm->name, (int)c->msg_len, c->buf,
			        c->buf[0] == 'n' ? "" : " (vCPUs with exitless async PF)",
			        c->late_fds);
			c->late_fds = 0;
			break;
		case FC_MSG_FRAME:
			/* Bitcode-encoded fault requests come only for guest_memfd
			 * memory, which lazyvm refuses at the hand-off. */
			lv_warn("%s: a %zu-byte framed (bitcode) message, which only a guest_memfd "
			        "VM sends; not answered",
			        vm->name, c->msg_len - 4);
			break;
		case FC_MSG_JSON:
			r = fc_fault_request_parse(c->buf, c->msg_len, &q, why, sizeof(why));
			if (r == 1)
				handle_request(h, vm, &q);
			else
				lv_warn("%s: after the hand-off: %s; ignored", vm->name, why);
			r = 1;
			break;
		case FC_MSG_GARBAGE:
			fc_json_next(c->buf, c->len, &end);
			snprintf(why, sizeof(why),
			         "bytes that are neither JSON nor a frame (at byte %zu)", end);
			r = -1;
			break;
		}
		if (r < 0)
			break;
		fc_conn_consume(c);
	}
	if (r == 0)
		return;
	if (vm->conn.eof && vm->conn.len == 0)
		lv_debug("%s: Firecracker closed the socket", vm->name);
	else
		lv_warn("%s: closing the socket: %s", vm->name, why);
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, vm->conn.fd, NULL);
	close(vm->conn.fd);
	vm->conn.fd = -1;
}

void fc_vm_readable(struct fc_handler *h, struct vm *vm)
{
	char why[320];
	int r;

	if (vm->conn.handed_off) {
		handle_messages(h, vm);
		return;
	}
	r = fc_conn_receive(&vm->conn, why, sizeof(why));
	if (r == 0)
		return; /* need more bytes */
	if (r < 0) {
		if (vm->conn.eof && vm->conn.len == 0 && vm->conn.nfds == 0) {
			/* Nothing sent at all: a probe (another fc-handler asking
			 * whether this socket is live), not a hand-off. */
			lv_debug("%s: closed without sending anything", vm->name);
			fc_vm_free(h, vm);
			return;
		}
		fc_vm_reject(h, vm, why);
		return;
	}
	handle_handoff(h, vm);
	if (vm->state == VM_SERVING && vm->conn.len)
		handle_messages(h, vm); /* sent right behind the hand-off */
}

void fc_vm_engine_event(struct fc_handler *h, struct vm *vm)
{
	if (engine_status(vm->eng) == ENGINE_FAILED) {
		fc_vm_fail(h, vm, engine_reason(vm));
	} else {
		lv_info("%s: %s", vm->name, engine_reason(vm));
		fc_vm_free(h, vm);
	}
}

void fc_vm_pidfd(struct fc_handler *h, struct vm *vm)
{
	if (vm->proven) {
		lv_info("%s: process exited", vm->name);
		fc_vm_free(h, vm);
		return;
	}
	vm_drop_pidfd(h, vm); /* not reached: unproven VMs do not watch it */
}
