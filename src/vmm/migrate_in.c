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
#define HELLO_PENDING_MAX  8 /* connections read at once before their HELLO */
#define STR_(x)            #x
#define STR(x)             STR_(x)
#define PAYLOAD_TIMEOUT_MS 30000 /* per piece of the state, once the offer came */

struct mig_in {
	int fd;
	const char *dir; /* the received state and checksums */
	pthread_mutex_t lock;
	bool accepted, transferred, done_sent;
	int send_error;
	struct mig_pinger ping; /* from ACCEPT on: the source waits on us */
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
	if (!mi->send_error && mig_pinger_start(&mi->ping, mi->fd, &mi->lock) < 0)
		lv_warn("migration: no heartbeat to the source (it will warn that we are silent)");
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
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, HELLO_PENDING_MAX) < 0) {
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

/* A connection that has not said HELLO yet. */
struct pending {
	int fd;
	uint64_t deadline;
	size_t got; /* bytes of m read so far */
	struct mig_msg m;
	char peer[INET6_ADDRSTRLEN + 1];
};

static void drop_pending(struct pending *p, const char *why)
{
	lv_warn("migration: ignored a connection from %s: %s; still waiting", p->peer, why);
	close(p->fd);
	p->fd = -1;
}

/* Reads what has arrived of p's HELLO. Returns 1 when it is complete, valid
 * and answered (p->fd is then the source's, blocking), 0 when more is to
 * come, -1 when the connection was dropped. */
static int pending_read(struct pending *p)
{
	char why[256];
	ssize_t n = recv(p->fd, (char *)&p->m + p->got, sizeof(p->m) - p->got, 0);
	struct mig_msg *m = &p->m;
	int r;

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		drop_pending(p, n == 0 ? "the peer closed the connection" : strerror(errno));
		return -1;
	}
	p->got += (size_t)n;
	if (p->got < sizeof(p->m))
		return 0;
	if ((r = mig_check_msg(m, why, sizeof(why))) == 0 &&
	    (m->kind != MIG_HELLO || m->arg[0] < GUEST_MEM_MIN || m->arg[0] > GUEST_MEM_MAX ||
	     m->arg[0] % SNAP_PAGE_SIZE || m->arg[1] < 1 || m->arg[1] > GUEST_MAX_VCPUS)) {
		snprintf(why, sizeof(why), "bad HELLO (message %u, %llu bytes of RAM, %llu vCPUs)",
		         m->kind, (unsigned long long)m->arg[0], (unsigned long long)m->arg[1]);
		mig_send_msg(p->fd, MIG_REFUSE, NULL, why);
		r = -EPROTO;
	}
	/* The rest of the conversation uses blocking sockets, bounded by poll. */
	int fl = fcntl(p->fd, F_GETFL);
	if (r == 0 && (fl < 0 || fcntl(p->fd, F_SETFL, fl & ~O_NONBLOCK) < 0)) {
		r = -errno;
		snprintf(why, sizeof(why), "fcntl: %s", strerror(-r));
	}
	if (r == 0 && (r = mig_send_msg(p->fd, MIG_HELLO, NULL, NULL)) < 0)
		snprintf(why, sizeof(why), "%s", strerror(-r));
	if (r < 0) {
		drop_pending(p, why);
		return -1;
	}
	return 1;
}

/* Waits (until the deadline, 0: for ever) for a source that says HELLO
 * properly, and answers it. Connections are read concurrently, each with its
 * own HELLO_TIMEOUT_MS, at most HELLO_PENDING_MAX of them (a newcomer beyond
 * that pushes out the one waiting longest): a stray connection (a port
 * scanner, a client of something else, a bad HELLO) is dropped with a
 * warning and must not cost the VM its destination, which a queue read one
 * at a time would (the real source gives up after 5 s without an answer).
 * The first valid HELLO wins. Returns the connection, or -errno with
 * out->error set. */
static int accept_source(int lfd, const char *bound, uint64_t deadline, uint64_t *mem,
                         struct vmm_outcome *out)
{
	struct pending pend[HELLO_PENDING_MAX];
	unsigned npend = 0;
	int fd = -1;

	while (fd < 0) {
		struct pollfd pfd[HELLO_PENDING_MAX + 1] = {{.fd = lfd, .events = POLLIN}};
		uint64_t now = lv_now_ns(), until = deadline;
		int timeout, r;

		for (unsigned i = 0; i < npend; i++) {
			pfd[i + 1] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
			if (!until || pend[i].deadline < until)
				until = pend[i].deadline;
		}
		timeout = !until ? -1 : now >= until ? 0 : (int)((until - now + 999999) / 1000000);
		while ((r = poll(pfd, npend + 1, timeout)) < 0 && errno == EINTR)
			;
		now = lv_now_ns();
		for (unsigned i = 0; i < npend && fd < 0; i++) {
			int got = 0;

			if (pfd[i + 1].revents)
				got = pending_read(&pend[i]);
			if (got == 0 && now >= pend[i].deadline) {
				char why[96];
				snprintf(why, sizeof(why),
				         "no HELLO within %d ms (%zu of %zu bytes came)",
				         HELLO_TIMEOUT_MS, pend[i].got, sizeof(pend[i].m));
				drop_pending(&pend[i], why);
			} else if (got == 1) {
				fd = pend[i].fd;
				*mem = pend[i].m.arg[0];
				lv_info("migration: source %s connected (%llu MiB of RAM, %llu "
				        "vCPUs); waiting for the VM",
				        pend[i].peer, (unsigned long long)(pend[i].m.arg[0] >> 20),
				        (unsigned long long)pend[i].m.arg[1]);
				pend[i].fd = -1;
			}
		}
		/* Keep the ones still waiting, in arrival order. */
		unsigned k = 0;
		for (unsigned i = 0; i < npend; i++)
			if (pend[i].fd >= 0)
				pend[k++] = pend[i];
		npend = k;
		if (fd >= 0)
			break;
		if (pfd[0].revents & POLLIN) {
			struct sockaddr_storage ss;
			socklen_t sl = sizeof(ss);
			int c =
			    accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);

			if (c >= 0) {
				if (npend == HELLO_PENDING_MAX) {
					drop_pending(&pend[0],
					             "more than " STR(
					                 HELLO_PENDING_MAX) " connections without "
					                                    "a HELLO; this one "
					                                    "waited longest");
					memmove(pend, pend + 1, (npend - 1) * sizeof(pend[0]));
					npend--;
				}
				struct pending *p = &pend[npend++];
				*p = (struct pending){
				    .fd = c, .deadline = now + HELLO_TIMEOUT_MS * 1000000ull};
				snprintf(p->peer, sizeof(p->peer), "?");
				getnameinfo((struct sockaddr *)&ss, sl, p->peer, sizeof(p->peer),
				            NULL, 0, NI_NUMERICHOST);
				mig_tune_socket(c);
			} /* else the peer gave up already */
		}
		if (deadline && now >= deadline) {
			snprintf(out->error, sizeof(out->error),
			         "no migration source connected to %s in time", bound);
			break;
		}
	}
	/* The first valid HELLO won; whoever else was still talking is not it. */
	for (unsigned i = 0; i < npend; i++)
		drop_pending(&pend[i], fd >= 0 ? "another source said HELLO first" : "giving up");
	return fd >= 0 ? fd : -ETIMEDOUT;
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

	/* The source decides when to move: the offer may take as long as it
	 * likes, as long as the source's heartbeat says it is alive. */
	if ((r = mig_recv_next(mi->fd, &m, why, sizeof(why))) < 0) {
		if (r == -ETIMEDOUT)
			snprintf(out->error, sizeof(out->error),
			         "migration source: sent nothing for %d s, not even its heartbeat "
			         "(stopped or stuck?); the VM stays there",
			         MIG_SILENCE_MS / 1000);
		else
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
	mig_pinger_stop(&mi.ping);
	if (dir[0])
		remove_dir(dir);
	if (mi.fd >= 0)
		close(mi.fd);
	pthread_mutex_destroy(&mi.lock);
	return r;
}
