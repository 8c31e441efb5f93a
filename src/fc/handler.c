/* lazyvm fc-handler: the socket and the event loop (each VM's life is in
 * vm_life.c).
 *
 * One thread runs the loop (epoll): the listening socket, the signalfd, every
 * VM's connection (its hand-off, then what Firecracker sends after it), its
 * pidfd (the VM exited) and its engine's event fd (the engine stopped on its
 * own). Faults never pass through this thread: each VM's engine threads serve
 * them. A slow or hostile peer can therefore delay nothing but its own VM. */
#include "lazyvm/fc_handler.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "handler_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"

/* How often every VM's memory is checked for having gone: the only sign of a
 * VM's end when the process that connected is not known to be the VM. */
#define PROBE_INTERVAL_NS (500ull * 1000 * 1000)
/* Probe address when the hand-off never named a region: any user address
 * works (the probe never installs), this one is page-aligned and far from 0. */
#define PROBE_ADDR_DEFAULT (1ull << 30)
/* How often --metrics-prom's file is rewritten. */
#define PROM_INTERVAL_NS (1000ull * 1000 * 1000)

int fc_ep_add(struct fc_handler *h, int fd, struct watch *w)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};

	return epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int fc_handler_create(const struct fc_handler_config *cfg, struct fc_handler **out)
{
	struct fc_handler *h;
	int r;

	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cfg = *cfg;
	h->epfd = h->stop_efd = -1;
	for (unsigned i = 0; i < FC_MAX_SNAPSHOTS; i++)
		h->snaps[i].listen_fd = -1;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	h->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	h->unreadable = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h->epfd < 0 || h->stop_efd < 0 || h->unreadable == MAP_FAILED) {
		r = -errno;
		h->unreadable = NULL;
		goto err;
	}
	for (unsigned i = 0; i < cfg->nsnaps; i++) {
		r = fc_snap_open(h, &h->snaps[i], i);
		h->nsnaps = i + 1; /* closed by destroy, whatever happened */
		if (r < 0)
			goto err;
	}
	h->w_signal.kind = W_SIGNAL;
	h->w_stop.kind = W_STOP;
	if ((r = fc_ep_add(h, h->stop_efd, &h->w_stop)) < 0 ||
	    (cfg->signal_fd >= 0 && (r = fc_ep_add(h, cfg->signal_fd, &h->w_signal)) < 0))
		goto err;
	/* The VMs and sockets of a predecessor first: its sockets are the ones
	 * Firecracker connects to; the rest are bound here. */
	r = cfg->takeover_from ? fc_takeover_receive(h, cfg->takeover_from) : fc_fdstore_open(h);
	if (r < 0)
		goto err;
	/* Serving taken-over VMs already: giving up now would leave them with
	 * nobody, so what fails from here is only reported. */
	bool serving = h->vms != NULL;
	for (unsigned i = 0; i < h->nsnaps; i++)
		if (h->snaps[i].listen_fd < 0 && (r = fc_snap_listen(h, &h->snaps[i], -1)) < 0 &&
		    !serving)
			goto err;
	if ((r = fc_takeover_listen(h)) < 0 && !serving)
		goto err;
	fc_fdstore_ready(h);
	*out = h;
	return 0;
err:
	fc_handler_destroy(h);
	return r;
}

static void handle_accept(struct fc_handler *h, struct fc_snap *snap)
{
	for (;;) {
		int fd = accept4(snap->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct vm *vm;
		int r;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				lv_warn("accept on %s: %s", snap->cfg->socket_path,
				        strerror(errno));
			return;
		}
		/* Hand-offs being read have their own bound, apart from --max-vms:
		 * a crowd of slow peers must not stand in the way of VMs. */
		if (h->npending >= h->cfg.max_pending) {
			static const char line[] =
			    "lazyvm fc-handler: handshake rejected: too many "
			    "hand-offs pending (--max-pending)\n";

			h->rejected++;
			lv_err("refused a connection: %u hand-offs already pending (--max-pending)",
			       h->npending);
			if (send(fd, line, sizeof(line) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
				(void)0; /* best effort, like every reply */
			close(fd);
			continue;
		}
		vm = calloc(1, sizeof(*vm));
		if (!vm) {
			close(fd);
			lv_err("out of memory accepting a VM");
			return;
		}
		vm->id = ++h->next_id;
		vm->snap = snap;
		vm->state = VM_PENDING;
		vm->pidfd = vm->uffd = -1;
		vm->probe_addr = PROBE_ADDR_DEFAULT;
		snprintf(vm->proof, sizeof(vm->proof), "no complete hand-off to prove it with");
		vm->w_conn = (struct watch){.kind = W_CONN, .vm = vm};
		vm->w_pid = (struct watch){.kind = W_PIDFD, .vm = vm};
		vm->w_eng = (struct watch){.kind = W_ENGINE, .vm = vm};
		vm->deadline_ns = lv_now_ns() + h->cfg.handshake_timeout_ns;
		vm->next = h->vms;
		h->vms = vm;
		h->npending++;
		r = fc_conn_init(&vm->conn, fd, &vm->pid, &vm->pidfd, &vm->pidfd_race_free);
		snprintf(vm->name, sizeof(vm->name), "vm %u (pid %d)", vm->id, (int)vm->pid);
		if (r < 0) {
			lv_err("%s: cannot identify the peer: %s", vm->name, strerror(-r));
			fc_vm_free(h, vm);
			continue;
		}
		lv_info("%s: connected", vm->name);
		if ((r = fc_ep_add(h, fd, &vm->w_conn)) < 0) {
			lv_err("%s: epoll: %s", vm->name, strerror(-r));
			fc_vm_free(h, vm);
		}
	}
}

/* Hand-offs past their deadline are refused, and every VM whose memory has
 * gone leaves; returns the epoll timeout (ms). */
static int handle_timers(struct fc_handler *h)
{
	uint64_t now = lv_now_ns(), next = UINT64_MAX;
	bool probe = now >= h->next_probe_ns;
	struct vm *vm = h->vms, *nx;

	fc_takeover_timers(h, now, &next);
	if (h->frozen || h->handed_over)
		return next == UINT64_MAX ? -1 : (int)((next - now) / 1000000 + 1);
	fc_fdstore_sync(h);
	if (probe)
		h->next_probe_ns = now + PROBE_INTERVAL_NS;
	if (h->cfg.metrics_prom) {
		if (now >= h->next_prom_ns) {
			fc_handler_write_prom(h);
			h->next_prom_ns = now + PROM_INTERVAL_NS;
		}
		if (h->next_prom_ns < next)
			next = h->next_prom_ns;
	}
	for (; vm; vm = nx) {
		nx = vm->next;
		if (vm->state != VM_PENDING) {
			if (probe && vm->uffd >= 0 &&
			    !fc_uffd_mm_alive(vm->uffd, vm->probe_addr, h->unreadable)) {
				lv_info("%s: its memory is gone: the VM has exited", vm->name);
				fc_vm_free(h, vm);
			} else if (h->next_probe_ns < next) {
				next = h->next_probe_ns;
			}
			continue;
		}
		if (vm->deadline_ns <= now) {
			char why[128];

			snprintf(why, sizeof(why),
			         "no complete handshake within %.1f s (got %zu bytes)",
			         (double)h->cfg.handshake_timeout_ns / 1e9, vm->conn.len);
			fc_vm_reject(h, vm, why);
		} else if (vm->deadline_ns < next) {
			next = vm->deadline_ns;
		}
	}
	return next == UINT64_MAX ? -1 : (int)((next - now) / 1000000 + 1);
}

static int handle_signal(struct fc_handler *h)
{
	struct signalfd_siginfo si;

	while (read(h->cfg.signal_fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGUSR1)
			fc_handler_write_metrics(h, h->cfg.metrics_out);
		else
			return 1;
	}
	return 0;
}

int fc_handler_run(struct fc_handler *h)
{
	lv_info("fc-handler serving %u snapshot(s)", h->nsnaps);
	for (;;) {
		struct epoll_event evs[32];
		int timeout = handle_timers(h);
		int n;

		if (h->handed_over)
			return 0;
		n = epoll_wait(h->epfd, evs, 32, timeout);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			lv_err("epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			int r;

			switch (w->kind) {
			case W_LISTEN: handle_accept(h, w->snap); break;
			case W_SIGNAL:
				if (handle_signal(h)) {
					fc_fdstore_stop(h);
					return 0;
				}
				break;
			case W_STOP: return 0;
			case W_TAKEOVER:
				if ((r = fc_takeover_event(h, w)) < 0)
					return r;
				goto next_round; /* VMs may have been frozen or thawed */
			case W_CONN:
				fc_vm_readable(h, w->vm);
				/* vm may be freed: later events in this batch for it are
				 * stale, so restart the wait. */
				goto next_round;
			case W_PIDFD: fc_vm_pidfd(h, w->vm); goto next_round;
			case W_ENGINE: fc_vm_engine_event(h, w->vm); goto next_round;
			}
		}
	next_round:;
	}
}

void fc_handler_stop(struct fc_handler *h)
{
	uint64_t one = 1;

	if (write(h->stop_efd, &one, sizeof(one)) < 0)
		(void)0; /* already pending */
}

void fc_handler_write_metrics(struct fc_handler *h, FILE *f)
{
	struct metrics total = {0}, m;

	metrics_add(&total, &h->retired);
	fprintf(f,
	        "{\"vms_active\":%u,\"vms_served\":%" PRIu64 ",\"handshakes_rejected\":%" PRIu64
	        ",\"vms_failed\":%" PRIu64 ",\"vms_pending\":%u,\"vms_unserved\":%u,\"vms\":[",
	        h->nserving, h->served, h->rejected, h->failed, h->npending, h->nunserved);
	bool first = true;
	for (struct vm *vm = h->vms; vm; vm = vm->next) {
		if (!vm->eng)
			continue;
		engine_metrics(vm->eng, &m);
		metrics_add(&total, &m);
		fprintf(f, "%s{\"id\":%u,\"pid\":%d,\"snapshot\":%u,\"state\":\"%s\",\"metrics\":",
		        first ? "" : ",", vm->id, (int)vm->pid, vm->snap->index,
		        engine_status_name(engine_status(vm->eng)));
		metrics_write_json(f, &m);
		fputc('}', f);
		first = false;
	}
	fputs("],\"totals\":", f);
	metrics_write_json(f, &total);
	fputs("}\n", f);
	fflush(f);
}

int fc_handler_write_prom(struct fc_handler *h)
{
	const char *path = h->cfg.metrics_prom;
	struct metrics total = {0}, *per = NULL;
	const struct metrics **ms = NULL;
	const char **labels = NULL;
	char(*lab)[64] = NULL, tmp[4200];
	size_t n = 0, cap = 1;
	FILE *f;
	int r = 0;

	if (!path)
		return 0;
	for (struct vm *vm = h->vms; vm; vm = vm->next)
		cap += vm->eng != NULL;
	per = calloc(cap, sizeof(*per));
	ms = calloc(cap, sizeof(*ms));
	labels = calloc(cap, sizeof(*labels));
	lab = calloc(cap, sizeof(*lab));
	if (!per || !ms || !labels || !lab) {
		r = -ENOMEM;
		goto out;
	}
	metrics_add(&total, &h->retired);
	for (struct vm *vm = h->vms; vm; vm = vm->next) {
		if (!vm->eng)
			continue;
		engine_metrics(vm->eng, &per[n]);
		metrics_add(&total, &per[n]);
		snprintf(lab[n], sizeof(lab[n]), "vm=\"%u\",pid=\"%d\",snapshot=\"%u\"", vm->id,
		         (int)vm->pid, vm->snap->index);
		ms[n] = &per[n];
		labels[n] = lab[n];
		n++;
	}
	ms[n] = &total;
	labels[n++] = "vm=\"all\"";
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f) {
		r = -errno;
		goto out;
	}
	fprintf(f,
	        "# HELP lazyvm_fc_vms VMs by state: served now, pending (hand-off being read), "
	        "unserved (given up on, memory not gone yet)\n# TYPE lazyvm_fc_vms gauge\n"
	        "lazyvm_fc_vms{state=\"active\"} %u\nlazyvm_fc_vms{state=\"pending\"} %u\n"
	        "lazyvm_fc_vms{state=\"unserved\"} %u\n"
	        "# HELP lazyvm_fc_vms_served_total VMs whose hand-off was accepted\n"
	        "# TYPE lazyvm_fc_vms_served_total counter\nlazyvm_fc_vms_served_total %llu\n"
	        "# HELP lazyvm_fc_handshakes_rejected_total hand-offs refused\n"
	        "# TYPE lazyvm_fc_handshakes_rejected_total counter\n"
	        "lazyvm_fc_handshakes_rejected_total %llu\n"
	        "# HELP lazyvm_fc_vms_failed_total VMs whose engine failed\n"
	        "# TYPE lazyvm_fc_vms_failed_total counter\nlazyvm_fc_vms_failed_total %llu\n",
	        h->nserving, h->npending, h->nunserved, (unsigned long long)h->served,
	        (unsigned long long)h->rejected, (unsigned long long)h->failed);
	metrics_write_prom(f, ms, labels, n);
	if (fclose(f) != 0 || rename(tmp, path) < 0)
		r = -errno;
out:
	if (r < 0)
		lv_warn("cannot write the Prometheus metrics to %s: %s", path, strerror(-r));
	free(per);
	free(ms);
	free(labels);
	free(lab);
	return r;
}

bool fc_handler_handed_over(const struct fc_handler *h)
{
	return h->handed_over;
}

void fc_handler_destroy(struct fc_handler *h)
{
	if (!h)
		return;
	fc_takeover_close(h);
	while (h->vms) {
		struct vm *vm = h->vms;

		if (!h->handed_over && vm->eng && engine_status(vm->eng) == ENGINE_RUNNING)
			lv_warn("%s: still running; it will hang at its next fault now that its "
			        "handler stops",
			        vm->name);
		fc_vm_free(h, vm);
	}
	fc_fdstore_close(h);
	for (unsigned i = 0; i < h->nsnaps; i++)
		fc_snap_close(&h->snaps[i]);
	if (h->epfd >= 0)
		close(h->epfd);
	if (h->stop_efd >= 0)
		close(h->stop_efd);
	if (h->unreadable)
		munmap(h->unreadable, 4096);
	free(h);
}
