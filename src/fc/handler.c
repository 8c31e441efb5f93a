/* lazyvm fc-handler: the event loop and each VM's life.
 *
 * One thread runs the loop (epoll): the listening socket, the signalfd, every
 * VM's connection while its hand-off is being read, its pidfd (the VM exited)
 * and its engine's event fd (the engine stopped on its own). Faults never pass
 * through this thread: each VM's engine threads serve them. A slow or hostile
 * peer can therefore delay nothing but its own hand-off. */
#include "lazyvm/fc_handler.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"

enum watch_kind { W_LISTEN, W_SIGNAL, W_STOP, W_CONN, W_PIDFD, W_ENGINE };

struct watch {
	enum watch_kind kind;
	struct vm *vm;
};

struct vm {
	unsigned id;
	char name[48];
	pid_t pid;
	int pidfd;
	struct fc_conn conn; /* the hand-off being read; conn.fd < 0 once done */
	uint64_t deadline_ns;
	struct engine *eng;
	uint64_t started_ns;
	struct watch w_conn, w_pid, w_eng;
	struct vm *next;
};

struct fc_handler {
	struct fc_handler_config cfg;
	struct source *src;
	int listen_fd, epfd, stop_efd;
	struct watch w_listen, w_signal, w_stop;
	struct vm *vms;
	unsigned next_id, nvms;
	uint64_t served, rejected, failed;
	struct metrics retired; /* VMs that have gone */
};

static int ep_add(struct fc_handler *h, int fd, struct watch *w)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};

	return epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
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
		lv_err("socket path %s is too long (at most %zu bytes, with room for a temporary name)",
		       path, sizeof(sa.sun_path) - 16);
		return -ENAMETOOLONG;
	}
	/* Replace a stale socket left by a previous run, never a regular file. */
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		lv_err("%s exists and is not a socket; refusing to replace it", path);
		return -EEXIST;
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
	if (h->epfd < 0 || h->stop_efd < 0) {
		r = -errno;
		goto err;
	}
	r = bind_socket(cfg->socket_path);
	if (r < 0)
		goto err;
	h->listen_fd = r;
	h->w_listen.kind = W_LISTEN;
	h->w_signal.kind = W_SIGNAL;
	h->w_stop.kind = W_STOP;
	if ((r = ep_add(h, h->listen_fd, &h->w_listen)) < 0 ||
	    (r = ep_add(h, h->stop_efd, &h->w_stop)) < 0 ||
	    (cfg->signal_fd >= 0 && (r = ep_add(h, cfg->signal_fd, &h->w_signal)) < 0))
		goto err;
	*out = h;
	return 0;
err:
	fc_handler_destroy(h);
	return r;
}

/* Kills or reports a VM we cannot serve, per --on-fatal. */
static void vm_give_up(struct fc_handler *h, struct vm *vm, const char *why)
{
	if (h->cfg.on_fatal == FC_ON_FATAL_KILL && vm->pidfd >= 0) {
		if (syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0) == 0)
			lv_err("%s: killed (SIGKILL) because it cannot be served: %s", vm->name,
			       why);
		else if (errno == ESRCH)
			lv_info("%s: cannot be served (%s); it has already exited", vm->name, why);
		else
			lv_err("%s: cannot be served (%s), and killing it failed: %s", vm->name,
			       why, strerror(errno));
	} else {
		lv_err("%s: left without a page server; it will hang at its next fault: %s",
		       vm->name, why);
	}
}

static void vm_free(struct fc_handler *h, struct vm *vm)
{
	struct vm **pp;

	for (pp = &h->vms; *pp && *pp != vm; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = vm->next;
	h->nvms--;
	if (vm->eng) {
		struct metrics m;

		engine_stop(vm->eng);
		engine_metrics(vm->eng, &m);
		metrics_add(&h->retired, &m);
		lv_info("%s: done after %.1f s: %" PRIu64 " faults, %" PRIu64
		        " pages copied, %" PRIu64 " zeroed, p50 %.1f us (%s)",
		        vm->name, (double)(lv_now_ns() - vm->started_ns) / 1e9, (uint64_t)m.faults,
		        (uint64_t)m.pages_copied, (uint64_t)m.pages_zeroed,
		        (double)hist_percentile(&m.latency, 0.5) / 1000.0,
		        engine_status_name(engine_status(vm->eng)));
		engine_destroy(vm->eng);
	}
	fc_conn_close(&vm->conn);
	if (vm->pidfd >= 0)
		close(vm->pidfd);
	free(vm);
}

static void vm_reject(struct fc_handler *h, struct vm *vm, const char *why)
{
	h->rejected++;
	lv_err("%s: handshake rejected: %s", vm->name, why);
	/* Kill (per policy) before replying: a peer that reads the reply must not
	 * get the chance to carry on as if it had been served. */
	vm_give_up(h, vm, why);
	fc_conn_reply(&vm->conn, why);
	vm_free(h, vm);
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
		vm = calloc(1, sizeof(*vm));
		if (!vm) {
			close(fd);
			lv_err("out of memory accepting a VM");
			return;
		}
		vm->id = ++h->next_id;
		vm->pidfd = -1;
		vm->w_conn = (struct watch){W_CONN, vm};
		vm->w_pid = (struct watch){W_PIDFD, vm};
		vm->w_eng = (struct watch){W_ENGINE, vm};
		vm->deadline_ns = lv_now_ns() + h->cfg.handshake_timeout_ns;
		vm->next = h->vms;
		h->vms = vm;
		h->nvms++;
		r = fc_conn_init(&vm->conn, fd, &vm->pid, &vm->pidfd);
		snprintf(vm->name, sizeof(vm->name), "vm %u (pid %d)", vm->id, (int)vm->pid);
		if (r < 0) {
			lv_err("%s: cannot identify the peer: %s", vm->name, strerror(-r));
			vm_free(h, vm);
			continue;
		}
		if (h->nvms > h->cfg.max_vms) {
			char why[96];

			snprintf(why, sizeof(why), "already serving %u VMs (--max-vms)",
			         h->cfg.max_vms);
			vm_reject(h, vm, why);
			continue;
		}
		lv_info("%s: connected", vm->name);
		if ((r = ep_add(h, fd, &vm->w_conn)) < 0) {
			lv_err("%s: epoll: %s", vm->name, strerror(-r));
			vm_free(h, vm);
		}
	}
}

/* The hand-off is complete and valid: give the VM an engine. */
static void vm_serve(struct fc_handler *h, struct vm *vm, const struct fc_handshake *hs)
{
	struct engine_config ec = {.uffd = vm->conn.uffd,
	                           .source = h->src,
	                           .threads = h->cfg.threads_per_vm,
	                           .intake = h->cfg.intake,
	                           .busy_idle_ns = h->cfg.busy_idle_ns,
	                           .fault_around = h->cfg.fault_around,
	                           .name = vm->name};
	char why[160];
	int r;

	r = engine_create(&ec, &vm->eng);
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot create an engine: %s", strerror(-r));
		goto fail;
	}
	vm->conn.uffd = -1; /* the engine owns it now */
	for (size_t i = 0; i < hs->nregions; i++) {
		const struct fc_region *fr = &hs->regions[i];
		struct engine_region er = {.host_addr = fr->base_host_virt_addr,
		                           .size = fr->size,
		                           .src_off = fr->offset,
		                           .page_size = fr->page_size};

		r = engine_add_region(vm->eng, &er);
		if (r < 0) {
			snprintf(why, sizeof(why), "region %zu refused by the engine: %s", i,
			         strerror(-r));
			goto fail;
		}
	}
	r = engine_start(vm->eng);
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot start handler threads: %s", strerror(-r));
		goto fail;
	}
	if ((r = ep_add(h, engine_event_fd(vm->eng), &vm->w_eng)) < 0 ||
	    (r = ep_add(h, vm->pidfd, &vm->w_pid)) < 0) {
		snprintf(why, sizeof(why), "epoll: %s", strerror(-r));
		goto fail;
	}
	vm->started_ns = lv_now_ns();
	h->served++;
	uint64_t bytes = 0;
	for (size_t i = 0; i < hs->nregions; i++)
		bytes += hs->regions[i].size;
	lv_info("%s: serving %zu region(s), %" PRIu64 " MiB, from %s", vm->name, hs->nregions,
	        bytes >> 20, source_describe(h->src));
	fc_conn_close(&vm->conn); /* Firecracker sends nothing more */
	return;
fail:
	h->failed++;
	lv_err("%s: %s", vm->name, why);
	vm_give_up(h, vm, why);
	vm_free(h, vm);
}

static void handle_conn(struct fc_handler *h, struct vm *vm)
{
	struct fc_handshake hs;
	char why[320];
	int r = fc_conn_receive(&vm->conn, why, sizeof(why));

	if (r == 0)
		return; /* need more bytes */
	if (r < 0) {
		vm_reject(h, vm, why);
		return;
	}
	r = fc_handshake_parse(vm->conn.buf, vm->conn.len, source_size(h->src), &hs, why,
	                       sizeof(why));
	if (r < 0) {
		vm_reject(h, vm, why);
		return;
	}
	vm_serve(h, vm, &hs);
	fc_handshake_free(&hs);
}

static void handle_engine_event(struct fc_handler *h, struct vm *vm)
{
	enum engine_status st = engine_status(vm->eng);

	if (st == ENGINE_FAILED) {
		h->failed++;
		vm_give_up(h, vm, engine_error(vm->eng));
	} else {
		lv_info("%s: %s", vm->name, engine_error(vm->eng));
	}
	vm_free(h, vm);
}

/* Hand-offs past their deadline are refused; returns the epoll timeout (ms). */
static int expire_handshakes(struct fc_handler *h)
{
	uint64_t now = lv_now_ns(), next = UINT64_MAX;
	struct vm *vm = h->vms, *nx;

	for (; vm; vm = nx) {
		nx = vm->next;
		if (vm->conn.fd < 0)
			continue;
		if (vm->deadline_ns <= now) {
			char why[128];

			snprintf(why, sizeof(why),
			         "no complete handshake within %.1f s (got %zu bytes)",
			         (double)h->cfg.handshake_timeout_ns / 1e9, vm->conn.len);
			vm_reject(h, vm, why);
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
		int timeout = expire_handshakes(h);
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
				handle_conn(h, w->vm);
				/* vm may be freed: later events in this batch for it are
				 * stale, so restart the wait. */
				goto next_round;
			case W_PIDFD:
				lv_info("%s: process exited", w->vm->name);
				vm_free(h, w->vm);
				goto next_round;
			case W_ENGINE: handle_engine_event(h, w->vm); goto next_round;
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
	        ",\"vms_failed\":%" PRIu64 ",\"vms\":[",
	        h->nvms, h->served, h->rejected, h->failed);
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
		vm_free(h, vm);
	}
	if (h->listen_fd >= 0) {
		close(h->listen_fd);
		unlink(h->cfg.socket_path);
	}
	if (h->epfd >= 0)
		close(h->epfd);
	if (h->stop_efd >= 0)
		close(h->stop_efd);
	source_destroy(h->src);
	free(h);
}
