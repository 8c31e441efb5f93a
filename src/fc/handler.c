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

int fc_ep_add(struct fc_handler *h, int fd, struct watch *w)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};

	return epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* Does anyone listen on the unix socket at `path`? 1 yes, 0 no (stale), or
 * -errno. A non-blocking connect answers at once: ECONNREFUSED for a socket
 * file nobody listens on, success or EAGAIN (backlog full) for a listener.
 * The listener sees a connection closed before anything was sent, which it
 * does not count as a hand-off. */
static int socket_is_live(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, r;

	strcpy(sa.sun_path, path); /* the caller checked the length */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 1 : -errno;
	close(fd);
	if (r == -EAGAIN || r == -EINPROGRESS)
		return 1;
	if (r == -ECONNREFUSED || r == -ENOENT)
		return 0;
	return r;
}

/* Listens on `path`. The socket is bound and listening under a temporary name
 * and renamed into place, so that whoever sees the path can connect at once
 * (a client that connects between bind and listen would be refused). */
static int bind_socket(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char tmp[sizeof(sa.sun_path)];
	struct stat st;
	int fd, r;

	if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp)) {
		lv_err("socket path %s is too long (at most %zu bytes, with room for a temporary "
		       "name)",
		       path, sizeof(sa.sun_path) - 16);
		return -ENAMETOOLONG;
	}
	/* Replace a stale socket left by a previous run, never a regular file,
	 * and never the socket of a handler that is still listening: VMs would
	 * connect to this one while that one serves its VMs on, and its exit
	 * would unlink our socket. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			lv_err("%s exists and is not a socket; refusing to replace it", path);
			return -EEXIST;
		}
		r = socket_is_live(path);
		if (r != 0) {
			if (r > 0)
				lv_err("%s: another process is listening on this socket (another "
				       "fc-handler?); refusing to take it over",
				       path);
			else
				lv_err("%s: cannot tell whether someone listens on it: %s; "
				       "refusing to replace it",
				       path, strerror(-r));
			return r > 0 ? -EADDRINUSE : r;
		}
	}
	strcpy(sa.sun_path, tmp);
	unlink(tmp);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0 ||
	    rename(tmp, path) < 0) {
		r = -errno;
		lv_err("cannot listen on %s: %s", path, strerror(-r));
		unlink(tmp);
		close(fd);
		return r;
	}
	return fd;
}

int fc_handler_create(const struct fc_handler_config *cfg, struct fc_handler **out)
{
	struct fc_handler *h;
	int r;

	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cfg = *cfg;
	h->listen_fd = h->epfd = h->stop_efd = -1;
	char why[4200];
	r = source_file_open(cfg->mem_file, cfg->io_uring ? SOURCE_FILE_IO_URING : 0, &h->src, why,
	                     sizeof(why));
	if (r < 0) {
		lv_err("memory file: %s", why);
		goto err;
	}
	if (source_size(h->src) == 0) {
		lv_err("memory file %s is empty", cfg->mem_file);
		r = -EINVAL;
		goto err;
	}
	if (cfg->source_latency_ns) {
		struct source *slow;

		r = source_latency_wrap(h->src, cfg->source_latency_ns, &slow);
		if (r < 0)
			goto err;
		h->src = slow;
	}
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	h->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	h->unreadable = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h->epfd < 0 || h->stop_efd < 0 || h->unreadable == MAP_FAILED) {
		r = -errno;
		h->unreadable = NULL;
		goto err;
	}
	r = bind_socket(cfg->socket_path);
	if (r < 0)
		goto err;
	h->listen_fd = r;
	h->w_listen.kind = W_LISTEN;
	h->w_signal.kind = W_SIGNAL;
	h->w_stop.kind = W_STOP;
	if ((r = fc_ep_add(h, h->listen_fd, &h->w_listen)) < 0 ||
	    (r = fc_ep_add(h, h->stop_efd, &h->w_stop)) < 0 ||
	    (cfg->signal_fd >= 0 && (r = fc_ep_add(h, cfg->signal_fd, &h->w_signal)) < 0))
		goto err;
	*out = h;
	return 0;
err:
	fc_handler_destroy(h);
	return r;
}

static void handle_accept(struct fc_handler *h)
{
	for (;;) {
		int fd = accept4(h->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct vm *vm;
		int r;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				lv_warn("accept on %s: %s", h->cfg.socket_path, strerror(errno));
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
		vm->state = VM_PENDING;
		vm->pidfd = vm->uffd = -1;
		vm->probe_addr = PROBE_ADDR_DEFAULT;
		snprintf(vm->proof, sizeof(vm->proof), "no complete hand-off to prove it with");
		vm->w_conn = (struct watch){W_CONN, vm};
		vm->w_pid = (struct watch){W_PIDFD, vm};
		vm->w_eng = (struct watch){W_ENGINE, vm};
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

	if (probe)
		h->next_probe_ns = now + PROBE_INTERVAL_NS;
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
	lv_info("fc-handler listening on %s, serving %s (%" PRIu64 " MiB)", h->cfg.socket_path,
	        source_describe(h->src), source_size(h->src) >> 20);
	for (;;) {
		struct epoll_event evs[32];
		int timeout = handle_timers(h);
		int n = epoll_wait(h->epfd, evs, 32, timeout);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			lv_err("epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;

			switch (w->kind) {
			case W_LISTEN: handle_accept(h); break;
			case W_SIGNAL:
				if (handle_signal(h))
					return 0;
				break;
			case W_STOP: return 0;
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
		fprintf(f,
		        "%s{\"id\":%u,\"pid\":%d,\"state\":\"%s\",\"metrics\":", first ? "" : ",",
		        vm->id, (int)vm->pid, engine_status_name(engine_status(vm->eng)));
		metrics_write_json(f, &m);
		fputc('}', f);
		first = false;
	}
	fputs("],\"totals\":", f);
	metrics_write_json(f, &total);
	fputs("}\n", f);
	fflush(f);
}

void fc_handler_destroy(struct fc_handler *h)
{
	if (!h)
		return;
	while (h->vms) {
		struct vm *vm = h->vms;

		if (vm->eng && engine_status(vm->eng) == ENGINE_RUNNING)
			lv_warn("%s: still running; it will hang at its next fault now that its "
			        "handler stops",
			        vm->name);
		fc_vm_free(h, vm);
	}
	if (h->listen_fd >= 0) {
		close(h->listen_fd);
		unlink(h->cfg.socket_path);
	}
	if (h->epfd >= 0)
		close(h->epfd);
	if (h->stop_efd >= 0)
		close(h->stop_efd);
	if (h->unreadable)
		munmap(h->unreadable, 4096);
	source_destroy(h->src);
	free(h);
}
