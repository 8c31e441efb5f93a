/* lazyvm fc-handler: the event loop and each VM's life.
 *
 * One thread runs the loop (epoll): the listening socket, the signalfd, every
 * VM's connection while its hand-off is being read, its pidfd (the VM exited)
 * and its engine's event fd (the engine stopped on its own). Faults never pass
 * through this thread: each VM's engine threads serve them. A slow or hostile
 * peer can therefore delay nothing but its own hand-off. */
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

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"

enum watch_kind { W_LISTEN, W_SIGNAL, W_STOP, W_CONN, W_PIDFD, W_ENGINE };

struct watch {
	enum watch_kind kind;
	struct vm *vm;
};

/* A VM's life: PENDING while its hand-off is read; SERVING while its engine
 * runs; UNSERVED once the handler gave up on it (refused, or its engine
 * failed) but the VM may still live: the userfaultfd is kept open then, since
 * closing the last reference would turn the VM's later faults into zero pages
 * where snapshot data belongs. A VM leaves when its memory is gone. */
enum vm_state { VM_PENDING, VM_SERVING, VM_UNSERVED };

struct vm {
	unsigned id;
	char name[48];
	enum vm_state state;
	pid_t pid; /* the process that connected: not necessarily the VM */
	int pidfd;
	bool pidfd_race_free; /* from SO_PEERPIDFD */
	bool proven;          /* the connector is the VM (owner.c) */
	char proof[200];      /* why it is, or is not, proven */
	struct fc_conn conn;  /* the hand-off being read; conn.fd < 0 once done */
	uint64_t deadline_ns;
	int uffd;            /* our reference to the userfaultfd, -1 before the hand-off */
	uint64_t probe_addr; /* a user address of the VM, for fc_uffd_mm_alive */
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
	unsigned next_id, npending, nserving, nunserved;
	uint64_t served, rejected, failed;
	struct metrics retired; /* VMs that have gone, and pages the proofs installed */
	void *unreadable;       /* a PROT_NONE page: the source of liveness probes */
	uint64_t next_probe_ns;
};

/* How often every VM's memory is checked for having gone: the only sign of a
 * VM's end when the process that connected is not known to be the VM. */
#define PROBE_INTERVAL_NS (500ull * 1000 * 1000)
/* Probe address when the hand-off never named a region: any user address
 * works (the probe never installs), this one is page-aligned and far from 0. */
#define PROBE_ADDR_DEFAULT (1ull << 30)

static int ep_add(struct fc_handler *h, int fd, struct watch *w)
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
static void vm_retire_engine(struct fc_handler *h, struct vm *vm)
{
	struct metrics m;

	if (!vm->eng)
		return;
	engine_stop(vm->eng);
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

static void vm_free(struct fc_handler *h, struct vm *vm)
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
	vm_retire_engine(h, vm);
	fc_conn_close(&vm->conn);
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
		if (vm->conn.uffd >= 0 && uffd_fd_check(vm->conn.uffd) == 1) {
			vm->uffd = vm->conn.uffd;
			vm->conn.uffd = -1;
		}
	}
	fc_conn_close(&vm->conn);
	vm_retire_engine(h, vm);
	vm->state = VM_UNSERVED;
	h->nunserved++;
	if (vm->uffd < 0 || h->nunserved > h->cfg.max_vms) {
		if (vm->uffd >= 0)
			lv_warn("%s: more than %u VMs left unserved: releasing its userfaultfd",
			        vm->name, h->cfg.max_vms);
		vm_free(h, vm);
		return;
	}
	/* The pidfd tells of the VM's exit only when it is the VM's. */
	if (!vm->proven) {
		vm_drop_pidfd(h, vm);
	} else if (vm->pidfd >= 0) {
		int r = ep_add(h, vm->pidfd, &vm->w_pid);

		if (r < 0 && r != -EEXIST)
			vm_drop_pidfd(h, vm);
	}
}

static void vm_reject(struct fc_handler *h, struct vm *vm, const char *why)
{
	h->rejected++;
	/* Kill (per policy) before replying: a peer that reads the reply must not
	 * get the chance to carry on as if it had been served. */
	vm_give_up(h, vm, "handshake rejected", why);
	fc_conn_reply(&vm->conn, why);
	vm_park(h, vm);
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
			vm_free(h, vm);
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
	struct engine_config ec = {.uffd = -1,
	                           .source = h->src,
	                           .threads = h->cfg.threads_per_vm,
	                           .intake = h->cfg.intake,
	                           .busy_idle_ns = h->cfg.busy_idle_ns,
	                           .fault_around = h->cfg.fault_around,
	                           .name = vm->name};
	char why[160];
	int r;

	/* The engine gets a duplicate: when it stops, ours keeps the VM's
	 * registration alive (see enum vm_state). */
	ec.uffd = fcntl(vm->uffd, F_DUPFD_CLOEXEC, 0);
	if (ec.uffd < 0) {
		snprintf(why, sizeof(why), "cannot duplicate the userfaultfd: %s", strerror(errno));
		goto fail;
	}
	r = engine_create(&ec, &vm->eng);
	if (r < 0) {
		close(ec.uffd);
		snprintf(why, sizeof(why), "cannot create an engine: %s", strerror(-r));
		goto fail;
	}
	h->nserving++; /* counted from here: vm_retire_engine uncounts */
	vm->started_ns = lv_now_ns();
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
	if ((r = ep_add(h, engine_event_fd(vm->eng), &vm->w_eng)) < 0) {
		snprintf(why, sizeof(why), "epoll: %s", strerror(-r));
		goto fail;
	}
	/* Only the VM's own pidfd tells of its end; a connector that is not
	 * known to be the VM may come and go as it likes. */
	if (!vm->proven || ep_add(h, vm->pidfd, &vm->w_pid) < 0)
		vm_drop_pidfd(h, vm);
	h->npending--;
	vm->state = VM_SERVING;
	h->served++;
	uint64_t bytes = 0;
	for (size_t i = 0; i < hs->nregions; i++)
		bytes += hs->regions[i].size;
	lv_info("%s: serving %zu region(s), %" PRIu64 " MiB, from %s; %s %s", vm->name,
	        hs->nregions, bytes >> 20, source_describe(h->src),
	        vm->proven ? "the VM is the connecting process:" : "the VM is not identified:",
	        vm->proof);
	fc_conn_close(&vm->conn); /* Firecracker sends nothing more */
	return;
fail:
	h->failed++;
	vm_give_up(h, vm, "cannot be served", why);
	vm_park(h, vm);
}

static void handle_conn(struct fc_handler *h, struct vm *vm)
{
	struct fc_handshake hs;
	char why[320];
	uint64_t installed = 0;
	int r = fc_conn_receive(&vm->conn, why, sizeof(why));

	if (r == 0)
		return; /* need more bytes */
	if (r < 0) {
		if (vm->conn.eof && vm->conn.len == 0 && vm->conn.uffd < 0) {
			/* Nothing sent at all: a probe (another fc-handler asking
			 * whether this socket is live), not a hand-off. */
			lv_debug("%s: closed without sending anything", vm->name);
			vm_free(h, vm);
			return;
		}
		vm_reject(h, vm, why);
		return;
	}
	snprintf(vm->proof, sizeof(vm->proof), "no valid regions to prove it with");
	r = fc_handshake_parse(vm->conn.buf, vm->conn.len, source_size(h->src), &hs, why,
	                       sizeof(why));
	if (r < 0) {
		vm_reject(h, vm, why);
		return;
	}
	vm->uffd = vm->conn.uffd; /* a userfaultfd: fc_conn_receive checked */
	vm->conn.uffd = -1;
	vm->probe_addr = hs.regions[0].base_host_virt_addr;
	/* Before anything can go wrong: a refusal from here on may kill. */
	vm->proven = fc_owner_prove(&(struct fc_owner_query){.uffd = vm->uffd,
	                                                     .pid = vm->pid,
	                                                     .pidfd = vm->pidfd,
	                                                     .race_free = vm->pidfd_race_free,
	                                                     .hs = &hs,
	                                                     .src = h->src,
	                                                     .installed = &installed},
	                            vm->proof, sizeof(vm->proof)) == 1;
	ctr_add(&h->retired.pages_copied, installed);
	if (fc_uffd_check(vm->uffd, why, sizeof(why)) < 0) {
		vm_reject(h, vm, why);
	} else if (h->nserving >= h->cfg.max_vms) {
		snprintf(why, sizeof(why), "already serving %u VMs (--max-vms)", h->cfg.max_vms);
		vm_reject(h, vm, why);
	} else {
		vm_serve(h, vm, &hs);
	}
	fc_handshake_free(&hs);
}

static void handle_engine_event(struct fc_handler *h, struct vm *vm)
{
	if (engine_status(vm->eng) == ENGINE_FAILED) {
		h->failed++;
		vm_give_up(h, vm, "cannot be served", engine_reason(vm));
		vm_park(h, vm);
	} else {
		lv_info("%s: %s", vm->name, engine_reason(vm));
		vm_free(h, vm);
	}
}

static void handle_pidfd(struct fc_handler *h, struct vm *vm)
{
	if (vm->proven) {
		lv_info("%s: process exited", vm->name);
		vm_free(h, vm);
		return;
	}
	vm_drop_pidfd(h, vm); /* not reached: unproven VMs do not watch it */
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
				vm_free(h, vm);
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
				handle_conn(h, w->vm);
				/* vm may be freed: later events in this batch for it are
				 * stale, so restart the wait. */
				goto next_round;
			case W_PIDFD: handle_pidfd(h, w->vm); goto next_round;
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
	if (h->unreadable)
		munmap(h->unreadable, 4096);
	source_destroy(h->src);
	free(h);
}
