/* Post-copy migration, the destination's side (migrate.h): receive the VM's
 * state, then restore it lazily with guest memory pulled from the source's
 * NBD server, demand faults first and every other page in the background. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/guest_abi.h"
#include "lazyvm/hostport.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"
#include "migrate.h"
#include "snapshot.h"

#define HELLO_TIMEOUT_MS   5000
#define PAYLOAD_TIMEOUT_MS 30000 /* per piece of the state, once the offer came */

struct mig_in {
	int fd;
	const char *dir; /* the received state and checksums */
	pthread_mutex_t lock;
	bool accepted, transferred, done_sent;
	int send_error;
};

/* ACCEPT once the VM is about to run; DONE once every page is in, and never
 * before ACCEPT (with little memory the background pass can finish first). */
static void send_locked(struct mig_in *mi, uint32_t kind)
{
	int r = mig_send_msg(mi->fd, kind, NULL, NULL);

	if (r < 0 && !mi->send_error) {
		mi->send_error = r;
		lv_warn("migration: telling the source %s failed: %s",
		        kind == MIG_ACCEPT ? "that the VM runs here" : "that every page is in",
		        strerror(-r));
	}
}

static void remove_dir(const char *dir)
{
	char path[300];

	snprintf(path, sizeof(path), "%s/state", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/checksums", dir);
	unlink(path);
	rmdir(dir);
}

static void hook_ready(void *arg)
{
	struct mig_in *mi = arg;

	/* The restore has read the state and holds the checksums open: nothing
	 * is left behind in the temporary directory even if we are killed. */
	remove_dir(mi->dir);
	pthread_mutex_lock(&mi->lock);
	send_locked(mi, MIG_ACCEPT);
	mi->accepted = true;
	if (mi->transferred) {
		send_locked(mi, MIG_DONE);
		mi->done_sent = true;
	}
	pthread_mutex_unlock(&mi->lock);
}

static void hook_transferred(void *arg)
{
	struct mig_in *mi = arg;

	pthread_mutex_lock(&mi->lock);
	mi->transferred = true;
	if (mi->accepted) {
		send_locked(mi, MIG_DONE);
		mi->done_sent = true;
	}
	pthread_mutex_unlock(&mi->lock);
}

static int listen_on(const char *addr, char *bound, size_t boundlen, char *why, size_t whylen)
{
	char host[256], port[8], w[200];
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
	                *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	uint16_t portnum;
	int fd, one = 1, r;

	if (lv_parse_hostport(addr, true, host, sizeof(host), &portnum, w, sizeof(w)) < 0) {
		snprintf(why, whylen, "--listen '%s': %s", addr, w);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", portnum);
	if ((r = getaddrinfo(host, port, &hints, &ai)) != 0) {
		snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(r));
		return -EINVAL;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		freeaddrinfo(ai);
		snprintf(why, whylen, "socket: %s", strerror(-r));
		return r;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1) < 0) {
		r = -errno;
		freeaddrinfo(ai);
		close(fd);
		snprintf(why, whylen, "cannot listen on %s: %s", addr, strerror(-r));
		return r;
	}
	freeaddrinfo(ai);
	char h[INET6_ADDRSTRLEN + 1], p[16];
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), p, sizeof(p),
	                NI_NUMERICHOST | NI_NUMERICSERV) == 0)
		snprintf(bound, boundlen, strchr(h, ':') ? "[%s]:%s" : "%s:%s", h, p);
	else
		snprintf(bound, boundlen, "%s", addr);
	return fd;
}

/* The source's NBD export: where it reached us from, on the port it named. */
static int source_uri(int fd, uint64_t port, char *uri, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char h[INET6_ADDRSTRLEN + 1];

	if (port == 0 || port > 65535)
		return -EPROTO;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), NULL, 0, NI_NUMERICHOST) != 0)
		return -EINVAL;
	snprintf(uri, len, strchr(h, ':') ? "nbd://[%s]:%llu/" : "nbd://%s:%llu/", h,
	         (unsigned long long)port);
	return 0;
}

/* Waits (until the deadline, 0: for ever) for a source that says HELLO
 * properly, and answers it. A connection that does not (a port scanner, a
 * client of something else, a bad HELLO) is dropped with a warning and the
 * wait goes on: a stray connection must not cost the VM its destination.
 * Returns the connection, or -errno with out->error set. */
static int accept_source(int lfd, const char *bound, uint64_t deadline, uint64_t *mem,
                         struct vmm_outcome *out)
{
	for (;;) {
		struct pollfd p = {.fd = lfd, .events = POLLIN};
		uint64_t now = lv_now_ns();
		int timeout = !deadline         ? -1
		              : now >= deadline ? 0
		                                : (int)((deadline - now) / 1000000);
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char peer[INET6_ADDRSTRLEN + 1] = "?", why[256];
		struct mig_msg m;
		int r, fd;

		while ((r = poll(&p, 1, timeout)) < 0 && errno == EINTR)
			;
		if (r <= 0) {
			snprintf(out->error, sizeof(out->error),
			         "no migration source connected to %s in time", bound);
			return -ETIMEDOUT;
		}
		fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
		if (fd < 0)
			continue; /* the peer gave up already */
		getnameinfo((struct sockaddr *)&ss, sl, peer, sizeof(peer), NULL, 0,
		            NI_NUMERICHOST);
		mig_tune_socket(fd);
		r = mig_recv_msg(fd, &m, HELLO_TIMEOUT_MS, why, sizeof(why));
		if (r == 0 &&
		    (m.kind != MIG_HELLO || m.arg[0] < GUEST_MEM_MIN || m.arg[0] > GUEST_MEM_MAX ||
		     m.arg[0] % SNAP_PAGE_SIZE || m.arg[1] < 1 || m.arg[1] > GUEST_MAX_VCPUS)) {
			snprintf(why, sizeof(why),
			         "bad HELLO (message %u, %llu bytes of RAM, %llu vCPUs)", m.kind,
			         (unsigned long long)m.arg[0], (unsigned long long)m.arg[1]);
			mig_send_msg(fd, MIG_REFUSE, NULL, why);
			r = -EPROTO;
		}
		if (r == 0 && (r = mig_send_msg(fd, MIG_HELLO, NULL, NULL)) < 0)
			snprintf(why, sizeof(why), "%s", strerror(-r));
		if (r < 0) {
			lv_warn("migration: ignored a connection from %s: %s; still waiting", peer,
			        why);
			close(fd);
			continue;
		}
		*mem = m.arg[0];
		lv_info("migration: source %s connected (%llu MiB of RAM, %llu vCPUs); waiting for "
		        "the VM",
		        peer, (unsigned long long)(m.arg[0] >> 20), (unsigned long long)m.arg[1]);
		return fd;
	}
}

/* Receives the OFFER with its payloads into dir (state, checksums).
 * Returns 0 with *port the source's NBD port, or -errno with out->error set
 * (and the REFUSE, when the source should hear why, already sent). */
static int receive_vm(struct mig_in *mi, const char *dir, uint64_t mem, uint64_t *port,
                      struct vmm_outcome *out)
{
	struct mig_msg m;
	char why[256], path[300];
	uint8_t *state = NULL, *csums = NULL;
	int r;

	/* The source decides when to move: the offer may take as long as it likes. */
	if ((r = mig_recv_msg(mi->fd, &m, -1, why, sizeof(why))) < 0) {
		snprintf(out->error, sizeof(out->error), "migration source: %s", why);
		return r;
	}
	uint64_t state_len = m.arg[0], csums_len = m.arg[1];
	if (m.kind != MIG_OFFER || state_len == 0 || state_len > SNAP_STATE_MAX ||
	    csums_len != mem / SNAP_PAGE_SIZE * sizeof(uint32_t)) {
		snprintf(
		    out->error, sizeof(out->error),
		    "migration source: bad OFFER (message %u, state %llu bytes, checksums %llu "
		    "bytes for %llu MiB)",
		    m.kind, (unsigned long long)state_len, (unsigned long long)csums_len,
		    (unsigned long long)(mem >> 20));
		mig_send_msg(mi->fd, MIG_REFUSE, NULL, out->error);
		return -EPROTO;
	}
	*port = m.arg[2];
	state = malloc(state_len);
	csums = malloc(csums_len);
	if (!state || !csums) {
		r = -ENOMEM;
		snprintf(out->error, sizeof(out->error), "out of memory for the VM state");
		mig_send_msg(mi->fd, MIG_REFUSE, NULL, out->error);
		goto out;
	}
	if ((r = mig_recv_all(mi->fd, state, state_len, PAYLOAD_TIMEOUT_MS)) < 0 ||
	    (r = mig_recv_all(mi->fd, csums, csums_len, PAYLOAD_TIMEOUT_MS)) < 0) {
		snprintf(out->error, sizeof(out->error), "receiving the VM state: %s",
		         r == -ECONNRESET ? "the source closed the connection" : strerror(-r));
		goto out;
	}
	out->mig_state_bytes = state_len + csums_len;
	snprintf(path, sizeof(path), "%s/checksums", dir);
	if ((r = snap_write_file(path, csums, csums_len, why, sizeof(why))) == 0) {
		snprintf(path, sizeof(path), "%s/state", dir);
		r = snap_write_file(path, state, state_len, why, sizeof(why));
	}
	if (r < 0) {
		snprintf(out->error, sizeof(out->error), "%s", why);
		mig_send_msg(mi->fd, MIG_REFUSE, NULL, out->error);
	}
out:
	free(state);
	free(csums);
	return r;
}

int vmm_migrate_in(const struct vmm_migrate_in_config *cfg, struct vmm_outcome *out)
{
	struct mig_in mi = {.fd = -1};
	struct vmm_restore_config rc = cfg->restore;
	struct vmm_restore_hooks hooks = {
	    .ready = hook_ready, .transferred = hook_transferred, .arg = &mi};
	char bound[300], why[300], dir[256], uri[300];
	uint64_t port = 0, t_offer;
	int lfd, r;

	memset(out, 0, sizeof(*out));
	pthread_mutex_init(&mi.lock, NULL);
	dir[0] = 0;
	if (rc.load != VMM_LOAD_LAZY || rc.source_uri || rc.record_ws || rc.prefetch_ws) {
		snprintf(out->error, sizeof(out->error),
		         "a migration destination restores lazily, from the source");
		return -EINVAL;
	}
	lfd = listen_on(cfg->listen, bound, sizeof(bound), why, sizeof(why));
	if (lfd < 0) {
		snprintf(out->error, sizeof(out->error), "%s", why);
		return lfd;
	}
	if (cfg->listening)
		cfg->listening(cfg->arg, bound);
	uint64_t mem = 0;
	mi.fd = accept_source(lfd, bound,
	                      cfg->accept_timeout_ns ? lv_now_ns() + cfg->accept_timeout_ns : 0,
	                      &mem, out);
	close(lfd); /* one VM per destination */
	if (mi.fd < 0)
		return mi.fd;
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/lazyvm-migrate-XXXXXX",
	         access("/dev/shm", W_OK) == 0 ? "/dev/shm"
	         : tmp                         ? tmp
	                                       : "/tmp");
	if (!mkdtemp(dir)) {
		r = -errno;
		snprintf(out->error, sizeof(out->error), "cannot create %s: %s", dir, strerror(-r));
		mig_send_msg(mi.fd, MIG_REFUSE, NULL, out->error);
		dir[0] = 0;
		goto out;
	}
	struct vmm_outcome rx = {0};
	if ((r = receive_vm(&mi, dir, mem, &port, &rx)) < 0) {
		memcpy(out->error, rx.error, sizeof(out->error));
		goto out;
	}
	t_offer = lv_now_ns();
	if ((r = source_uri(mi.fd, port, uri, sizeof(uri))) < 0) {
		snprintf(out->error, sizeof(out->error), "migration source: bad NBD port %llu",
		         (unsigned long long)port);
		mig_send_msg(mi.fd, MIG_REFUSE, NULL, out->error);
		goto out;
	}
	rc.dir = dir;
	mi.dir = dir;
	rc.source_uri = uri;
	rc.background = true;
	rc.background_finish = true;
	rc.hooks = &hooks;
	r = vmm_restore(&rc, out);
	out->mig_state_bytes = rx.mig_state_bytes;
	if (!out->t_ready_ns) {
		/* Never ran: the source keeps the VM. */
		mig_send_msg(mi.fd, MIG_REFUSE, NULL, out->error);
		goto out;
	}
	out->mig_downtime_ns = out->t_ready_ns - t_offer; /* this side's part */
	if (out->t_transferred_ns)
		out->mig_transfer_ns = out->t_transferred_ns - out->t_ready_ns;
	pthread_mutex_lock(&mi.lock);
	bool done = mi.done_sent && !mi.send_error;
	pthread_mutex_unlock(&mi.lock);
	if (out->ok && !done) {
		snprintf(out->error, sizeof(out->error),
		         "the guest finished, but not every page came from the source%s",
		         mi.send_error ? " (the source went away)" : "");
		out->ok = false;
		r = -EIO;
	}
out:
	if (dir[0])
		remove_dir(dir);
	if (mi.fd >= 0)
		close(mi.fd);
	pthread_mutex_destroy(&mi.lock);
	return r;
}
