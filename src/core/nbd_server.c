/* The read-only NBD server's life cycle (see nbd_server.h; the protocol on
 * each connection is in nbd_proto.c).
 *
 * Threads: one accept thread, one thread per connection. A connection thread
 * never closes its own socket: it shuts it down and marks itself done, and
 * whoever joins it (the accept thread reaping finished connections, or
 * nbd_server_stop) closes the fd. So stop's shutdown() can never hit an fd
 * number that was already closed and reused by someone else. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lazyvm/log.h"
#include "lazyvm/nbd_server.h"
#include "nbd_server_internal.h"

#define DEFAULT_CONNS 8u
#define DEFAULT_HS_MS 10000u

/* ---- the sent-pages bitmap ---- */

/* Marks the pages wholly inside [off, off + len) as sent; counts the new ones. */
void nbd_server_mark_sent(struct nbd_server *s, uint64_t off, uint64_t len)
{
	uint64_t first = off / NBD_SERVER_PAGE_SIZE + (off % NBD_SERVER_PAGE_SIZE != 0);
	uint64_t end = (off + len) / NBD_SERVER_PAGE_SIZE;
	uint64_t fresh = 0;

	while (first < end) {
		uint64_t bit = first % 64, n = end - first < 64 - bit ? end - first : 64 - bit;
		uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << bit;
		uint64_t old =
		    atomic_fetch_or_explicit(&s->sent[first / 64], mask, memory_order_relaxed);

		fresh += (uint64_t)__builtin_popcountll(mask & ~old);
		first += n;
	}
	if (fresh)
		count(&s->pages_covered, fresh);
}

/* ---- connections ---- */

static void *conn_main(void *arg)
{
	struct nbd_conn *c = arg;
	struct nbd_server *s = c->srv;

	count(&s->connections, 1); /* before the greeting, so a client never sees 0 */
	lv_debug("nbd server: %s connected", c->peer);
	nbd_proto_serve(c);
	lv_debug("nbd server: %s done", c->peer);
	shutdown(c->fd, SHUT_RDWR);
	pthread_mutex_lock(&s->lock);
	c->done = true;
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- accepting ---- */

static void describe_peer(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
	}
	snprintf(out, len, "%s:%u", host, port);
}

/* Joins finished connections; returns how many are still live. Accept thread
 * only (or stop, after the accept thread is gone). */
static unsigned reap_done(struct nbd_server *s)
{
	struct nbd_conn *done = NULL, **pp, *c;
	unsigned live = 0;

	pthread_mutex_lock(&s->lock);
	for (pp = &s->conns; (c = *pp);) {
		if (c->done) {
			*pp = c->next;
			c->next = done;
			done = c;
		} else {
			live++;
			pp = &c->next;
		}
	}
	pthread_mutex_unlock(&s->lock);
	while ((c = done)) {
		done = c->next;
		pthread_join(c->thread, NULL);
		close(c->fd);
		free(c);
	}
	return live;
}

static void start_conn(struct nbd_server *s, int fd, const struct sockaddr_storage *ss)
{
	struct nbd_conn *c;
	int one = 1, r;

	if (reap_done(s) >= s->max_conns) {
		char peer[64];

		describe_peer(ss, peer, sizeof(peer));
		lv_warn("nbd server: refusing %s: %u connections already open", peer, s->max_conns);
		count(&s->refused, 1);
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		lv_err("nbd server: out of memory for a connection");
		close(fd);
		return;
	}
	*c = (struct nbd_conn){.srv = s, .fd = fd};
	describe_peer(ss, c->peer, sizeof(c->peer));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	/* Linked before the thread starts, so stop always finds it. */
	pthread_mutex_lock(&s->lock);
	c->next = s->conns;
	s->conns = c;
	r = pthread_create(&c->thread, NULL, conn_main, c);
	if (r) {
		s->conns = c->next;
		pthread_mutex_unlock(&s->lock);
		lv_err("nbd server: no thread for %s: %s", c->peer, strerror(r));
		close(fd);
		free(c);
		return;
	}
	pthread_mutex_unlock(&s->lock);
}

static void *accept_main(void *arg)
{
	struct nbd_server *s = arg;

	for (;;) {
		struct pollfd pfd[2] = {{.fd = s->listen_fd, .events = POLLIN},
		                        {.fd = s->wake_fd, .events = POLLIN}};
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		int fd;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			lv_err("nbd server: poll: %s; no more connections", strerror(errno));
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sslen, SOCK_CLOEXEC);
		if (fd >= 0) {
			start_conn(s, fd, &ss);
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
		    errno == ECONNABORTED)
			continue; /* the client left before we took it */
		/* Out of fds or memory, say: back off instead of spinning on poll. */
		lv_warn("nbd server: accept: %s", strerror(errno));
		reap_done(s);
		(void)poll(&pfd[1], 1, 100);
	}
}

/* ---- life cycle ---- */

static int copy_regions(struct nbd_server *s, const struct nbd_server_config *cfg, char *why,
                        size_t whylen)
{
	if (!cfg->regions || cfg->nregions == 0) {
		snprintf(why, whylen, "no regions to export");
		return -EINVAL;
	}
	s->regions = calloc(cfg->nregions, sizeof(*s->regions));
	if (!s->regions)
		return -ENOMEM;
	for (unsigned i = 0; i < cfg->nregions; i++) {
		const struct nbd_export_region *g = &cfg->regions[i];

		if (g->len == 0)
			continue;
		if (g->len % NBD_SERVER_PAGE_SIZE || !g->host) {
			snprintf(why, whylen, "region %u (%p, %llu bytes): %s", i, g->host,
			         (unsigned long long)g->len,
			         g->host ? "length is not a multiple of 4096" : "no memory");
			return -EINVAL;
		}
		if (g->len > UINT64_MAX - s->size) {
			snprintf(why, whylen, "region %u: export size overflows", i);
			return -EINVAL;
		}
		s->regions[s->nregions++] =
		    (struct region){.host = g->host, .start = s->size, .len = g->len};
		s->size += g->len;
	}
	if (s->size == 0) {
		snprintf(why, whylen, "every region is empty");
		return -EINVAL;
	}
	s->sent = calloc((size_t)(s->size / NBD_SERVER_PAGE_SIZE + 63) / 64, sizeof(*s->sent));
	return s->sent ? 0 : -ENOMEM;
}

static int open_listener(struct nbd_server *s, const char *addr, uint16_t port, char *why,
                         size_t whylen)
{
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	socklen_t sslen;
	int one = 1, r;

	if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		sslen = sizeof(*in);
	} else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		sslen = sizeof(*in6);
	} else {
		snprintf(why, whylen, "bind address '%s' is not a numeric IPv4 or IPv6 address",
		         addr);
		return -EINVAL;
	}
	s->listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s->listen_fd < 0) {
		r = -errno;
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return r;
	}
	(void)setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s->listen_fd, (struct sockaddr *)&ss, sslen) < 0 || listen(s->listen_fd, 64) < 0 ||
	    getsockname(s->listen_fd, (struct sockaddr *)&ss, &sslen) < 0) {
		r = -errno;
		snprintf(why, whylen, "listening on %s port %u: %s", addr, port, strerror(errno));
		return r;
	}
	s->port = ntohs(ss.ss_family == AF_INET ? in->sin_port : in6->sin6_port);
	return 0;
}

static void free_server(struct nbd_server *s)
{
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	pthread_mutex_destroy(&s->lock);
	free(s->sent);
	free(s->regions);
	free(s);
}

int nbd_server_start(const struct nbd_server_config *cfg, struct nbd_server **out, char *why,
                     size_t whylen)
{
	const char *addr = cfg->bind_addr ? cfg->bind_addr : "127.0.0.1";
	struct nbd_server *s = calloc(1, sizeof(*s));
	int r;

	if (!s) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	s->listen_fd = s->wake_fd = -1;
	s->max_conns = cfg->max_conns ? cfg->max_conns : DEFAULT_CONNS;
	s->hs_timeout_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : DEFAULT_HS_MS;
	pthread_mutex_init(&s->lock, NULL);
	if ((r = copy_regions(s, cfg, why, whylen)) < 0)
		goto fail;
	s->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (s->wake_fd < 0) {
		r = -errno;
		snprintf(why, whylen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if ((r = open_listener(s, addr, cfg->port, why, whylen)) < 0)
		goto fail;
	r = -pthread_create(&s->accept_thread, NULL, accept_main, s);
	if (r < 0) {
		snprintf(why, whylen, "no accept thread: %s", strerror(-r));
		goto fail;
	}
	lv_info("nbd server: %llu bytes in %u region(s), read-only, on %s port %u",
	        (unsigned long long)s->size, s->nregions, addr, s->port);
	*out = s;
	return 0;
fail:
	if (r == -ENOMEM)
		snprintf(why, whylen, "out of memory");
	free_server(s);
	return r;
}

uint16_t nbd_server_port(const struct nbd_server *s)
{
	return s->port;
}

uint64_t nbd_server_size(const struct nbd_server *s)
{
	return s->size;
}

void nbd_server_stats(struct nbd_server *s, struct nbd_server_stats *st)
{
	*st = (struct nbd_server_stats){
	    .connections = atomic_load_explicit(&s->connections, memory_order_relaxed),
	    .refused = atomic_load_explicit(&s->refused, memory_order_relaxed),
	    .requests = atomic_load_explicit(&s->requests, memory_order_relaxed),
	    .bytes_sent = atomic_load_explicit(&s->bytes_sent, memory_order_relaxed),
	    .pages_covered = atomic_load_explicit(&s->pages_covered, memory_order_relaxed),
	    .errors = atomic_load_explicit(&s->errors, memory_order_relaxed),
	};
}

bool nbd_server_range_sent(struct nbd_server *s, uint64_t off, uint64_t len)
{
	if (!range_inside(s, off, len))
		return false;
	if (len == 0)
		return true;
	for (uint64_t p = off / NBD_SERVER_PAGE_SIZE, last = (off + len - 1) / NBD_SERVER_PAGE_SIZE;
	     p <= last; p++) {
		uint64_t w = atomic_load_explicit(&s->sent[p / 64], memory_order_relaxed);

		if (!(w & (1ull << (p % 64))))
			return false;
	}
	return true;
}

void nbd_server_stop(struct nbd_server *s)
{
	uint64_t one = 1;
	struct nbd_conn *c, *next;

	if (!s)
		return;
	if (write(s->wake_fd, &one, sizeof(one)) != sizeof(one))
		lv_warn("nbd server: waking the accept thread: %s", strerror(errno));
	pthread_join(s->accept_thread, NULL);
	/* Only connection threads remain; they only ever set their done flag. */
	pthread_mutex_lock(&s->lock);
	for (c = s->conns; c; c = c->next)
		shutdown(c->fd, SHUT_RDWR);
	c = s->conns;
	s->conns = NULL;
	pthread_mutex_unlock(&s->lock);
	for (; c; c = next) {
		next = c->next;
		pthread_join(c->thread, NULL);
		close(c->fd);
		free(c);
	}
	free_server(s);
}
