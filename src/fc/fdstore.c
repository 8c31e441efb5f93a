/* systemd's fd store (sd_notify(3) FDSTORE=1, sd_listen_fds(3)): run as a
 * service with FileDescriptorStoreMax= (contrib/systemd/), fc-handler keeps
 * every listening socket and every VM's fds (userfaultfd, Firecracker's
 * socket, pidfd) in the service manager, beside two memfds holding the state
 * description (state.c), written in turn, the newer valid one winning. A
 * restarted instance (systemctl restart, or Restart= after a crash) gets
 * them back as LISTEN_FDS and serves on:
 *   - after a clean stop (SIGTERM) the description is exact: the engines were
 *     stopped first, and whatever the VMs did meanwhile waits in their
 *     userfaultfds;
 *   - after a crash it is the one written last (each second, and at each VM
 *     that comes or goes): present pages are asked for again (EEXIST), removed
 *     pages stay removed; a balloon remove read in the last second is lost
 *     (that page reads its snapshot bytes, not zeros); threads whose fault the
 *     dead instance had read are woken to fault again.
 * Without NOTIFY_SOCKET (not run by systemd) nothing here is used. The
 * static build has no libsystemd (LAZYVM_NO_SYSTEMD). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "handler_internal.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"

#ifdef LAZYVM_NO_SYSTEMD

int fc_fdstore_open(struct fc_handler *h)
{
	if (h->cfg.fd_store == FC_FD_STORE_ON) {
		lv_err("--fd-store on: this build has no systemd support (the static build)");
		return -ENOTSUP;
	}
	if (getenv("NOTIFY_SOCKET"))
		lv_debug("NOTIFY_SOCKET is set, but this build has no systemd support: the fd "
		         "store is not used");
	return 0;
}
void fc_fdstore_ready(struct fc_handler *h)
{
}
void fc_fdstore_vm_changed(struct fc_handler *h, struct vm *vm, bool present)
{
}
void fc_fdstore_sync(struct fc_handler *h)
{
}
bool fc_fdstore_stop(struct fc_handler *h)
{
	return false;
}
void fc_fdstore_close(struct fc_handler *h)
{
}

#else

#include <systemd/sd-daemon.h>

#define STORE_PREFIX "lazyvm-"
#define SYNC_NS      (1000ull * 1000 * 1000)

struct fc_fdstore {
	bool active;     /* serving: what changes goes to the store */
	int state_fd[2]; /* lazyvm-state-a, -b */
	bool state_stored[2];
	uint64_t seq; /* of the description written last */
	uint64_t next_sync_ns;
	struct fc_fdset have; /* names already in the store (taken back at start) */
};

static int store_fd(const char *name, int fd)
{
	char msg[128];
	int r;

	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=" STORE_PREFIX "%s", name);
	r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
	if (r <= 0)
		lv_warn("systemd's fd store: cannot store %s: %s", name,
		        r < 0 ? strerror(-r) : "no NOTIFY_SOCKET");
	return r;
}

static void unstore_fd(const char *name)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=" STORE_PREFIX "%s", name);
	sd_pid_notify(0, 0, msg);
}

/* Stores `fd` under `name` unless it came back from the store. */
static void keep(struct fc_fdstore *st, const char *name, int fd)
{
	for (size_t i = 0; i < st->have.n; i++)
		if (!strcmp(st->have.names[i], name))
			return;
	if (fd >= 0 && store_fd(name, fd) > 0)
		fc_fdset_add(&st->have, name, -1);
}

static void forget(struct fc_fdstore *st, const char *name)
{
	for (size_t i = 0; i < st->have.n; i++)
		if (!strcmp(st->have.names[i], name)) {
			unstore_fd(name);
			memmove(st->have.names[i], st->have.names[i + 1],
			        (st->have.n - i - 1) * sizeof(st->have.names[0]));
			st->have.n--;
			return;
		}
}

/* Writes the description into the memfd written less recently. */
static void write_state(struct fc_handler *h, bool exact)
{
	struct fc_fdstore *st = h->store;
	struct fc_fdset fds = {0};
	char *json = NULL;
	size_t len = 0;
	int r = fc_state_build(h, exact, &json, &len, &fds);
	uint64_t seq = st->seq + 1;

	fc_fdset_free(&fds, false);
	if (r == 0)
		r = fc_state_write(st->state_fd[seq & 1], seq, json, len);
	free(json);
	if (r < 0) {
		lv_warn("systemd's fd store: cannot write the state description: %s", strerror(-r));
		return;
	}
	st->seq = seq;
}

/* The description the previous instance wrote last, from the memfds that
 * came back. 0, or -1 when none is valid (why says so). */
static int newest_state(struct fc_fdstore *st, char **json, size_t *len, char *why, size_t whylen)
{
	*json = NULL;
	for (int i = 0; i < 2; i++) {
		char *j;
		size_t l;
		uint64_t seq;

		if (st->state_fd[i] < 0 ||
		    fc_state_read(st->state_fd[i], &seq, &j, &l, why, whylen) < 0)
			continue;
		if (!*json || seq > st->seq) {
			free(*json);
			*json = j;
			*len = l;
			st->seq = seq;
		} else {
			free(j);
		}
	}
	return *json ? 0 : -1;
}

/* What a previous instance stored, back from LISTEN_FDS. */
static int take_back(struct fc_handler *h, struct fc_fdstore *st)
{
	struct fc_fdset set = {0};
	char **names = NULL, why[600] = "no state description came back";
	char *json;
	size_t len;
	int n = sd_listen_fds_with_names(1, &names), r = 0;

	if (n <= 0)
		return 0;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names && names[i] ? names[i] : "";

		if (strncmp(name, STORE_PREFIX, strlen(STORE_PREFIX))) {
			lv_warn("systemd passed fd %d named \"%s\", which is not lazyvm's: closed",
			        fd, name);
			close(fd);
			continue;
		}
		name += strlen(STORE_PREFIX);
		fc_fdset_add(&st->have, name, -1);
		if (!strcmp(name, "state-a") || !strcmp(name, "state-b"))
			st->state_fd[name[6] == 'b'] = fd;
		else
			fc_fdset_add(&set, name, fd);
	}
	for (int i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
	if (newest_state(st, &json, &len, why, sizeof(why)) < 0) {
		lv_err("systemd handed back %zu fds, but %s: they are closed, and the VMs they "
		       "belong to hang at their next fault",
		       set.n, why);
		fc_fdset_free(&set, true);
		/* Forget them: the store is of no use without its description. */
		for (size_t i = 0; i < st->have.n; i++)
			unstore_fd(st->have.names[i]);
		st->have.n = 0;
		st->seq = 0;
		return 0;
	}
	uint64_t t0 = lv_now_ns();
	n = fc_state_apply(h, json, len, &set, why, sizeof(why));
	bool exact = strstr(json, "\"exact\":true") != NULL;
	free(json);
	if (n < 0) {
		/* The store is left as it is: the next start, configured to fit,
		 * may serve them. */
		lv_err("systemd's fd store: the VMs stored cannot be served: %s", why);
		r = -EINVAL;
	} else {
		for (size_t i = 0; i < set.n; i++)
			if (set.fds[i] >= 0)
				forget(st, set.names[i]);
		fc_state_start(h);
		lv_info("took back %d VMs from systemd's fd store in %.1f ms (description %" PRIu64
		        ", %s)",
		        n, (double)(lv_now_ns() - t0) / 1e6, st->seq,
		        exact
		            ? "exact: written at a clean stop"
		            : "written while serving: the previous instance did not stop cleanly");
		for (struct vm *vm = h->vms; vm; vm = vm->next)
			vm->stored = true;
	}
	fc_fdset_free(&set, true);
	return r;
}

int fc_fdstore_open(struct fc_handler *h)
{
	const char *max = getenv("FDSTORE");
	struct fc_fdstore *st;

	if (h->cfg.fd_store == FC_FD_STORE_OFF)
		return 0;
	if (!getenv("NOTIFY_SOCKET")) {
		if (h->cfg.fd_store == FC_FD_STORE_ON) {
			lv_err("--fd-store on: NOTIFY_SOCKET is not set (not started by systemd as "
			       "a notify service)");
			return -ENOTSUP;
		}
		lv_debug("no NOTIFY_SOCKET: not run by systemd, its fd store is not used");
		return 0;
	}
	/* systemd 254 and later tell the store's size; 0 is no store. */
	if (max && strtoul(max, NULL, 10) == 0) {
		lv_info("systemd's fd store is off for this service (FDSTORE=0: set "
		        "FileDescriptorStoreMax=)");
		return 0;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->state_fd[0] = st->state_fd[1] = -1;
	h->store = st;
	return take_back(h, st);
}

void fc_fdstore_ready(struct fc_handler *h)
{
	struct fc_fdstore *st = h->store;
	char name[FC_FD_NAME_MAX];

	if (!st) {
		if (getenv("NOTIFY_SOCKET"))
			sd_notify(0, "READY=1");
		return;
	}
	for (int i = 0; i < 2; i++) {
		if (st->state_fd[i] < 0)
			st->state_fd[i] =
			    memfd_create(i ? "lazyvm-state-b" : "lazyvm-state-a", MFD_CLOEXEC);
		if (st->state_fd[i] < 0) {
			lv_err("systemd's fd store: memfd_create: %s; not used", strerror(errno));
			return;
		}
	}
	st->active = true;
	write_state(h, false);
	write_state(h, false); /* both valid, so either may be taken back */
	keep(st, "state-a", st->state_fd[0]);
	keep(st, "state-b", st->state_fd[1]);
	for (unsigned i = 0; i < h->nsnaps; i++) {
		snprintf(name, sizeof(name), "listen-%u", i);
		keep(st, name, h->snaps[i].listen_fd);
	}
	for (struct vm *vm = h->vms; vm; vm = vm->next)
		fc_fdstore_vm_changed(h, vm, true);
	sd_notifyf(0, "READY=1\nSTATUS=serving %u VMs, their fds in systemd's fd store",
	           h->nserving);
	lv_info("systemd's fd store holds the sockets and every VM's fds: a restart serves on");
}

void fc_fdstore_vm_changed(struct fc_handler *h, struct vm *vm, bool present)
{
	struct fc_fdstore *st = h->store;
	static const char *const kinds[] = {"uffd", "conn", "pidfd"};
	const int fds[] = {vm->uffd, vm->conn.fd, vm->pidfd};
	char name[FC_FD_NAME_MAX];

	if (!st || !st->active || h->frozen)
		return;
	/* The description first, so that no fd in the store is unknown to it
	 * (a VM described whose fds did not make it is dropped at start). */
	if (present)
		write_state(h, false);
	for (int k = 0; k < 3; k++) {
		snprintf(name, sizeof(name), "vm%u-%s", vm->id, kinds[k]);
		if (present && !vm->stored)
			keep(st, name, fds[k]);
		else if (!present)
			forget(st, name);
	}
	vm->stored = present;
	if (!present)
		write_state(h, false);
}

void fc_fdstore_sync(struct fc_handler *h)
{
	struct fc_fdstore *st = h->store;
	uint64_t now = lv_now_ns();

	if (!st || !st->active || h->frozen || now < st->next_sync_ns)
		return;
	st->next_sync_ns = now + SYNC_NS;
	write_state(h, false);
}

bool fc_fdstore_stop(struct fc_handler *h)
{
	struct fc_fdstore *st = h->store;
	struct vm *vm, *nx;
	unsigned n = 0;

	if (!st || !st->active)
		return false;
	sd_notify(0, "STOPPING=1");
	for (vm = h->vms; vm; vm = nx) {
		nx = vm->next;
		if (vm->state == VM_PENDING) {
			lv_warn(
			    "%s: its hand-off was being read; closed (Firecracker's load fails)",
			    vm->name);
			fc_vm_free(h, vm);
		} else {
			n++;
		}
	}
	fc_state_freeze(h);
	write_state(h, true);
	h->handed_over = true;
	for (unsigned i = 0; i < h->nsnaps; i++)
		h->snaps[i].keep_path = true;
	lv_info("stopping: %u VMs, their page maps and the sockets are in systemd's fd store; "
	        "the next instance serves on (until then their faults wait)",
	        n);
	return true;
}

void fc_fdstore_close(struct fc_handler *h)
{
	struct fc_fdstore *st = h->store;

	if (!st)
		return;
	for (int i = 0; i < 2; i++)
		if (st->state_fd[i] >= 0)
			close(st->state_fd[i]);
	fc_fdset_free(&st->have, false);
	free(st);
	h->store = NULL;
}

#endif
