/* Post-copy migration, the source's side (migrate.h), and the wire helpers
 * both sides use. */
#include "migrate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lazyvm/fdio.h"
#include "lazyvm/hostport.h"
#include "lazyvm/log.h"
#include "lazyvm/nbd_server.h"
#include "lazyvm/units.h"
#include "snapshot.h"
#include "vmm.h"

#define CONNECT_TIMEOUT_MS 5000
#define ACCEPT_TIMEOUT_MS  60000 /* the destination validates and builds the VM */

int mig_recv_all(int fd, void *buf, size_t len, int timeout_ms)
{
	char *p = buf;

	while (len) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int pr = poll(&pfd, 1, timeout_ms);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0)
			return -errno;
		if (pr == 0)
			return -ETIMEDOUT;
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mig_send_msg(int fd, uint32_t kind, const uint64_t arg[4], const char *text)
{
	struct mig_msg m = {.magic = MIG_MAGIC, .version = MIG_VERSION, .kind = kind};

	if (arg)
		memcpy(m.arg, arg, sizeof(m.arg));
	if (text)
		snprintf(m.text, sizeof(m.text), "%s", text);
	return lv_write_all(fd, &m, sizeof(m));
}

int mig_recv_msg(int fd, struct mig_msg *m, int timeout_ms, char *why, size_t whylen)
{
	int r = mig_recv_all(fd, m, sizeof(*m), timeout_ms);

	if (r < 0) {
		snprintf(why, whylen, "%s",
		         r == -ECONNRESET  ? "the peer closed the connection"
		         : r == -ETIMEDOUT ? "the peer sent nothing in time"
		                           : strerror(-r));
		return r;
	}
	return mig_check_msg(m, why, whylen);
}

int mig_check_msg(struct mig_msg *m, char *why, size_t whylen)
{
	if (m->magic != MIG_MAGIC) {
		snprintf(why, whylen, "the peer does not speak lazyvm migration (magic 0x%08x)",
		         m->magic);
		return -EPROTO;
	}
	if (m->version != MIG_VERSION) {
		snprintf(why, whylen, "the peer speaks migration version %u; this lazyvm speaks %u",
		         m->version, MIG_VERSION);
		return -EPROTO;
	}
	m->text[sizeof(m->text) - 1] = 0;
	return 0;
}

/* No Nagle; and keepalive probes after 5 s of silence, every 2 s, 3 of them:
 * both sides wait for the other without a deadline at times (the source for
 * DONE, the destination for the offer), so a peer whose machine vanished
 * without closing is noticed in about 11 s instead of TCP's default 2 hours. */
void mig_tune_socket(int fd)
{
	int one = 1, idle = 5, intvl = 2, cnt = 3;
	/* A peer that stopped reading (stopped, stuck) cannot hold a send for
	 * ever: after this the send fails with EAGAIN and the caller says so. */
	struct timeval sndtimeo = {.tv_sec = MIG_SILENCE_MS / 1000 * 3};

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sndtimeo, sizeof(sndtimeo));
}

/* Connects with a deadline. */
static int connect_to(const char *to, char *why, size_t whylen)
{
	char host[256], port[8], w[200];
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai, *a;
	uint16_t portnum;
	int fd = -1, r;

	if (lv_parse_hostport(to, false, host, sizeof(host), &portnum, w, sizeof(w)) < 0) {
		snprintf(why, whylen, "migration destination: %s", w);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", portnum);
	if ((r = getaddrinfo(host, port, &hints, &ai)) != 0) {
		snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(r));
		return -EHOSTUNREACH;
	}
	r = -ECONNREFUSED;
	for (a = ai; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
			r = -errno;
		} else {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			int err = 0;
			socklen_t el = sizeof(err);
			int pr = poll(&p, 1, CONNECT_TIMEOUT_MS);
			if (pr == 0)
				r = -ETIMEDOUT;
			else if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
				r = -errno;
			else if (err)
				r = -err;
			else
				r = 0;
		}
		if (r < 0) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		snprintf(why, whylen, "cannot reach %s: %s", to, strerror(-r));
		return r;
	}
	/* Blocking from here on; waits are bounded with poll. */
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	mig_tune_socket(fd);
	return fd;
}

int migrate_connect(struct migrate_out *mo, const char *to, uint64_t mem_size, unsigned nvcpus,
                    char *why, size_t whylen)
{
	uint64_t arg[4] = {mem_size, nvcpus};
	struct mig_msg m;
	char w[160];
	int r;

	memset(mo, 0, sizeof(*mo));
	mo->to = to;
	mo->fd = connect_to(to, why, whylen);
	if (mo->fd < 0)
		return mo->fd;
	/* A failed send has only its errno; a failed receive says why itself. */
	if ((r = mig_send_msg(mo->fd, MIG_HELLO, arg, NULL)) < 0)
		snprintf(w, sizeof(w), "sending HELLO: %s", strerror(-r));
	else
		r = mig_recv_msg(mo->fd, &m, CONNECT_TIMEOUT_MS, w, sizeof(w));
	if (r < 0) {
		snprintf(why, whylen, "migration destination %s: %s", to, w);
		goto fail;
	}
	if (m.kind == MIG_REFUSE) {
		snprintf(why, whylen, "migration destination %s refuses: %s", to, m.text);
		r = -ECONNREFUSED;
		goto fail;
	}
	if (m.kind != MIG_HELLO) {
		snprintf(why, whylen, "migration destination %s answered HELLO with message %u", to,
		         m.kind);
		r = -EPROTO;
		goto fail;
	}
	/* Until the OFFER the destination waits on us: tell it we are alive. */
	if ((r = mig_pinger_start(&mo->ping, mo->fd, NULL)) < 0) {
		snprintf(why, whylen, "cannot start the migration heartbeat: %s", strerror(-r));
		goto fail;
	}
	return 0;
fail:
	close(mo->fd);
	mo->fd = -1;
	return r;
}

void migrate_close(struct migrate_out *mo)
{
	mig_pinger_stop(&mo->ping);
	if (mo->fd >= 0)
		close(mo->fd);
	mo->fd = -1;
}

/* The address the destination reached us on: the NBD server listens there. */
static int local_addr(int fd, char *host, size_t hostlen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (getnameinfo((struct sockaddr *)&ss, sl, host, (socklen_t)hostlen, NULL, 0,
	                NI_NUMERICHOST) != 0)
		return -EINVAL;
	return 0;
}

/* Every page not known to be zero must have gone out in some read. */
static int check_all_sent(struct vm *vm, struct nbd_server *srv, const uint64_t *zero, char *why,
                          size_t whylen)
{
	uint64_t npages = vm->mem.size / SNAP_PAGE_SIZE;

	for (uint64_t pg = 0; pg < npages; pg++) {
		if (zero[pg / 64] >> (pg % 64) & 1)
			continue;
		uint64_t end = pg + 1;
		while (end < npages && !(zero[end / 64] >> (end % 64) & 1))
			end++;
		if (!nbd_server_range_sent(srv, pg * SNAP_PAGE_SIZE, (end - pg) * SNAP_PAGE_SIZE)) {
			uint64_t p = pg;
			while (nbd_server_range_sent(srv, p * SNAP_PAGE_SIZE, SNAP_PAGE_SIZE))
				p++;
			snprintf(
			    why, whylen,
			    "the destination says it has every page, but page 0x%llx was never "
			    "sent",
			    (unsigned long long)(p * SNAP_PAGE_SIZE));
			return -EPROTO;
		}
		pg = end;
	}
	return 0;
}

int migrate_out(struct vm *vm, struct migrate_out *mo, char *why, size_t whylen)
{
	uint64_t npages = vm->mem.size / SNAP_PAGE_SIZE;
	struct nbd_export_region regions[VMM_MAX_SLOTS];
	struct nbd_server_config sc = {.regions = regions, .nregions = vm->mem.nslots};
	struct nbd_server *srv = NULL;
	struct snap_image img = {0};
	struct mig_msg m;
	char host[INET6_ADDRSTRLEN + 1], w2[256];
	/* Whether the VM may go on here after a failure: until the offer is out,
	 * and after it only on a REFUSE or a close without ACCEPT (TCP delivers
	 * in order, so an ACCEPT sent before the close would have arrived). A
	 * timeout is ambiguous: the destination may be running the VM. */
	bool resumable = true;
	int r;

	mig_pinger_stop(&mo->ping); /* from here on this thread writes the connection */
	mo->t_pause_ns = lv_now_ns();
	mo->pages_total = npages;
	if ((r = snapshot_build(vm, &img, why, whylen)) < 0)
		goto out;
	size_t csums_len = npages * sizeof(*img.crcs);
	mo->pages_zero = img.pages_zero;
	mo->state_bytes = img.w.len + csums_len;
	/* Guest RAM, in snapshot file order, served where the destination reached us. */
	for (unsigned i = 0; i < vm->mem.nslots; i++)
		regions[i] = (struct nbd_export_region){.host = vm->mem.slots[i].host,
		                                        .len = vm->mem.slots[i].size};
	if ((r = local_addr(mo->fd, host, sizeof(host))) < 0) {
		snprintf(why, whylen, "the control connection's local address: %s", strerror(-r));
		goto out;
	}
	sc.bind_addr = host;
	if ((r = nbd_server_start(&sc, &srv, w2, sizeof(w2))) < 0) {
		snprintf(why, whylen, "cannot serve guest memory over NBD on %s: %s", host, w2);
		goto out;
	}
	uint64_t arg[4] = {img.w.len, csums_len, nbd_server_port(srv)};
	if ((r = mig_send_msg(mo->fd, MIG_OFFER, arg, NULL)) < 0 ||
	    (r = lv_write_all(mo->fd, img.w.buf, img.w.len)) < 0 ||
	    (r = lv_write_all(mo->fd, img.crcs, csums_len)) < 0) {
		snprintf(why, whylen, "sending the VM state to %s: %s", mo->to, strerror(-r));
		goto out;
	}
	if ((r = mig_recv_msg(mo->fd, &m, ACCEPT_TIMEOUT_MS, w2, sizeof(w2))) == 0 &&
	    m.kind == MIG_PING) /* an old heartbeat cannot come before ACCEPT, but be kind */
		r = mig_recv_msg(mo->fd, &m, ACCEPT_TIMEOUT_MS, w2, sizeof(w2));
	if (r < 0) {
		resumable = r == -ECONNRESET;
		snprintf(why, whylen, "waiting for %s to take the VM over: %s%s", mo->to, w2,
		         resumable ? "" : "; it may be running the VM, so it does not go on here");
		goto out;
	}
	if (m.kind == MIG_REFUSE) {
		snprintf(why, whylen, "%s refused the VM: %s", mo->to, m.text);
		r = -ECONNREFUSED;
		goto out;
	}
	/* Past this point the VM runs at the destination: there is no going back. */
	resumable = false;
	if (m.kind != MIG_ACCEPT) {
		snprintf(why, whylen, "%s answered the offer with message %u", mo->to, m.kind);
		r = -EPROTO;
		goto out;
	}
	mo->t_accept_ns = lv_now_ns();
	lv_info("migration: %s took the VM over after %.1f ms; serving %llu pages (%llu zero, "
	        "not sent)",
	        mo->to, (double)(mo->t_accept_ns - mo->t_pause_ns) / 1e6,
	        (unsigned long long)npages, (unsigned long long)mo->pages_zero);
	/* The destination runs the VM and may still need any page: however long
	 * it is silent (stopped, stuck), giving up here would lose the VM, so
	 * this only says so, every MIG_SILENCE_MS, and goes on serving. */
	while ((r = mig_recv_next(mo->fd, &m, w2, sizeof(w2))) == -ETIMEDOUT)
		lv_warn("migration: %s has sent nothing for %d s, not even its heartbeat (stopped "
		        "or stuck?); it runs the VM, so this process keeps serving its pages",
		        mo->to, MIG_SILENCE_MS / 1000);
	if (r < 0) {
		snprintf(why, whylen, "%s failed before it had every page (%s): the VM is lost",
		         mo->to, w2);
		goto out;
	}
	if (m.kind != MIG_DONE) {
		snprintf(why, whylen, "%s sent message %u instead of DONE: the VM is lost", mo->to,
		         m.kind);
		r = -EPROTO;
		goto out;
	}
	mo->t_done_ns = lv_now_ns();
	/* The server counts a page once its send returned, which can be just
	 * after the destination got it and said DONE: allow it a moment. */
	for (uint64_t until = lv_now_ns() + 500 * 1000 * 1000;;) {
		r = check_all_sent(vm, srv, img.zero, why, whylen);
		if (r == 0 || lv_now_ns() > until)
			break;
		lv_sleep_ns(1000 * 1000);
	}
out:
	if (srv) {
		struct nbd_server_stats st;
		nbd_server_stats(srv, &st);
		mo->nbd_bytes_sent = st.bytes_sent;
		mo->nbd_requests = st.requests;
		nbd_server_stop(srv);
	}
	snapshot_image_free(&img);
	if (r < 0 && resumable)
		return -EAGAIN;
	return r;
}
