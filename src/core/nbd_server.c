/* The read-only NBD server (see nbd_server.h). Constants and message layouts
 * follow the NBD protocol (NetworkBlockDevice/nbd doc/proto.md); every field is
 * big-endian on the wire and built byte by byte, never through packed structs.
 *
 * Threads: one accept thread, one thread per connection. A connection thread
 * never closes its own socket: it shuts it down and marks itself done, and
 * whoever joins it (the accept thread reaping finished connections, or
 * nbd_server_stop) closes the fd. So stop's shutdown() can never hit an fd
 * number that was already closed and reused by someone else. */
#include <arpa/inet.h>
#include <endian.h>
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
#include "lazyvm/units.h"

#define NBD_MAGIC              0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_IHAVEOPT           0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_REP_MAGIC          0x0003e889045565a9ull
#define NBD_REQUEST_MAGIC      0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u

#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0) /* handshake flags */
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0) /* client flags */
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)
#define NBD_FLAG_HAS_FLAGS        (1u << 0) /* transmission flags */
#define NBD_FLAG_READ_ONLY        (1u << 1)
#define NBD_FLAG_CAN_MULTI_CONN   (1u << 8)
#define EXPORT_FLAGS              (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN)

#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT       2
#define NBD_OPT_LIST        3
#define NBD_OPT_INFO        6
#define NBD_OPT_GO          7

#define NBD_REP_ACK         1u
#define NBD_REP_SERVER      2u
#define NBD_REP_INFO        3u
#define NBD_REP_ERR_UNSUP   0x80000001u
#define NBD_REP_ERR_INVALID 0x80000003u
#define NBD_REP_ERR_TOO_BIG 0x80000009u

#define NBD_INFO_EXPORT     0
#define NBD_INFO_BLOCK_SIZE 3

#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_WRITE_ZEROES 6

#define NBD_EPERM  1u
#define NBD_EINVAL 22u

#define OPT_DATA_MAX     4096u       /* longest option payload read (a string's limit) */
#define OPT_SKIP_MAX     (64u << 10) /* longer option payloads: close, not skip */
#define OPTIONS_MAX      1024u       /* options one handshake may send */
#define DEFAULT_CONNS    8u
#define DEFAULT_HS_MS    10000u
#define IOV_BATCH        64
#define REQUEST_BYTES    28
#define OPT_HEADER_BYTES 16

struct region {
	const unsigned char *host;
	uint64_t start, len; /* export offsets */
};

struct nbd_conn {
	struct nbd_server *srv;
	struct nbd_conn *next;
	int fd;
	uint64_t deadline_ns; /* the handshake must end by then; 0 in transmission */
	pthread_t thread;
	bool done; /* under srv->lock: the thread has finished, join it */
	char peer[64];
};

struct nbd_server {
	int listen_fd, wake_fd;
	uint16_t port;
	unsigned max_conns, hs_timeout_ms;
	pthread_t accept_thread;
	pthread_mutex_t lock; /* conns */
	struct nbd_conn *conns;
	struct region *regions;
	unsigned nregions;
	uint64_t size;
	_Atomic uint64_t *sent; /* one bit a page: wholly sent in a successful read */
	_Atomic uint64_t connections, refused, requests, bytes_sent, pages_covered, errors;
};

static void put_be16(unsigned char *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, 2);
}
static void put_be32(unsigned char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}
static void put_be64(unsigned char *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}
static uint16_t get_be16(const unsigned char *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return be16toh(v);
}
static uint32_t get_be32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return be32toh(v);
}
static uint64_t get_be64(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return be64toh(v);
}

static void count(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ---- socket I/O: 0 or -errno; a closed peer is -ECONNRESET ---- */

static void set_recv_timeout(int fd, uint64_t ns)
{
	struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000),
	                     .tv_usec = (suseconds_t)(ns % 1000000000 / 1000)};

	if (ns && !tv.tv_sec && !tv.tv_usec)
		tv.tv_usec = 1; /* 0 would mean "no timeout" */
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Reads all len bytes. During the handshake the whole handshake has one
 * deadline, so a client trickling a byte at a time cannot hold its slot. */
static int recv_all(struct nbd_conn *c, void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len) {
		if (c->deadline_ns) {
			uint64_t now = lv_now_ns();

			if (now >= c->deadline_ns)
				return -ETIMEDOUT;
			set_recv_timeout(c->fd, c->deadline_ns - now);
		}
		ssize_t n = recv(c->fd, p, len, MSG_WAITALL);

		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int skip_bytes(struct nbd_conn *c, uint64_t len)
{
	unsigned char scratch[16384];

	while (len) {
		size_t n = len < sizeof(scratch) ? (size_t)len : sizeof(scratch);
		int r = recv_all(c, scratch, n);

		if (r < 0)
			return r;
		len -= n;
	}
	return 0;
}

/* Sends every byte of iov[0..n) (consumed as it goes). MSG_NOSIGNAL: a peer
 * gone away is -EPIPE here, never a SIGPIPE for the whole process. */
static int send_iov(int fd, struct iovec *iov, int n, int flags)
{
	while (n > 0) {
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t sent = sendmsg(fd, &mh, MSG_NOSIGNAL | flags);

		if (sent < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		while (n > 0 && (size_t)sent >= iov->iov_len) {
			sent -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + sent;
			iov->iov_len -= (size_t)sent;
		}
	}
	return 0;
}

static int send_buf(int fd, const void *buf, size_t len)
{
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

	return send_iov(fd, &iov, 1, 0);
}

/* ---- the export ---- */

/* The region holding export offset off (< size): the last one starting at or
 * before it. */
static unsigned region_at(const struct nbd_server *s, uint64_t off)
{
	unsigned lo = 0, hi = s->nregions - 1;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo + 1) / 2;

		if (s->regions[mid].start <= off)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

static bool range_inside(const struct nbd_server *s, uint64_t off, uint64_t len)
{
	return off <= s->size && len <= s->size - off;
}

/* Marks the pages wholly inside [off, off + len) as sent; counts the new ones. */
static void mark_sent(struct nbd_server *s, uint64_t off, uint64_t len)
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

/* ---- handshake ---- */

enum hs_result { HS_TRANSMIT, HS_CLOSE };

static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
                     uint32_t len)
{
	unsigned char hdr[20];
	struct iovec iov[2] = {{.iov_base = hdr, .iov_len = sizeof(hdr)},
	                       {.iov_base = (void *)data, .iov_len = len}};

	put_be64(hdr, NBD_REP_MAGIC);
	put_be32(hdr + 8, opt);
	put_be32(hdr + 12, type);
	put_be32(hdr + 16, len);
	return send_iov(c->fd, iov, len ? 2 : 1, 0);
}

/* NBD_OPT_INFO / NBD_OPT_GO: name length, name, info count, infos. Any name is
 * the export; the size and the block sizes are sent whatever was requested.
 * Returns 1 after NBD_REP_ACK, 0 after NBD_REP_ERR_INVALID, or -errno. */
static int opt_info(struct nbd_conn *c, uint32_t opt, const unsigned char *d, uint32_t len)
{
	unsigned char exp[12], bs[14];
	uint32_t namelen;
	int r;

	if (len < 6 || (namelen = get_be32(d)) > len - 6 ||
	    2u * get_be16(d + 4 + namelen) != len - 6 - namelen) {
		count(&c->srv->errors, 1);
		r = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
		return r < 0 ? r : 0;
	}
	put_be16(exp, NBD_INFO_EXPORT);
	put_be64(exp + 2, c->srv->size);
	put_be16(exp + 10, EXPORT_FLAGS);
	put_be16(bs, NBD_INFO_BLOCK_SIZE);
	put_be32(bs + 2, 1);
	put_be32(bs + 6, NBD_SERVER_PAGE_SIZE);
	put_be32(bs + 10, NBD_SERVER_MAX_IO);
	if ((r = opt_reply(c, opt, NBD_REP_INFO, exp, sizeof(exp))) < 0 ||
	    (r = opt_reply(c, opt, NBD_REP_INFO, bs, sizeof(bs))) < 0 ||
	    (r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0)) < 0)
		return r;
	return 1;
}

static int opt_export_name(struct nbd_conn *c, bool no_zeroes)
{
	unsigned char rep[10 + 124] = {0};

	put_be64(rep, c->srv->size);
	put_be16(rep + 8, EXPORT_FLAGS);
	return send_buf(c->fd, rep, no_zeroes ? 10 : sizeof(rep));
}

static enum hs_result handshake(struct nbd_conn *c)
{
	unsigned char buf[OPT_DATA_MAX], hdr[OPT_HEADER_BYTES];
	uint32_t cflags;
	int r;

	put_be64(buf, NBD_MAGIC);
	put_be64(buf + 8, NBD_IHAVEOPT);
	put_be16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if ((r = send_buf(c->fd, buf, 18)) < 0 || (r = recv_all(c, buf, 4)) < 0)
		goto io_failed;
	cflags = get_be32(buf);
	if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		lv_warn("nbd server: %s: unknown client flags 0x%x; closing", c->peer, cflags);
		count(&c->srv->errors, 1);
		return HS_CLOSE;
	}
	for (unsigned nopts = 0; nopts < OPTIONS_MAX; nopts++) {
		uint32_t opt, len;

		if ((r = recv_all(c, hdr, sizeof(hdr))) < 0)
			goto io_failed;
		opt = get_be32(hdr + 8);
		len = get_be32(hdr + 12);
		if (get_be64(hdr) != NBD_IHAVEOPT) {
			lv_warn("nbd server: %s: bad option magic 0x%llx; closing", c->peer,
			        (unsigned long long)get_be64(hdr));
			goto violation;
		}
		if (len > OPT_DATA_MAX) {
			/* NBD_OPT_EXPORT_NAME has no error reply; a long one ends it. */
			if (opt == NBD_OPT_EXPORT_NAME || len > OPT_SKIP_MAX) {
				lv_warn("nbd server: %s: option %u with %u bytes of data; closing",
				        c->peer, opt, len);
				goto violation;
			}
			if ((r = skip_bytes(c, len)) < 0 ||
			    (r = opt_reply(c, opt, NBD_REP_ERR_TOO_BIG, NULL, 0)) < 0)
				goto io_failed;
			count(&c->srv->errors, 1);
			continue;
		}
		if ((r = recv_all(c, buf, len)) < 0)
			goto io_failed;
		switch (opt) {
		case NBD_OPT_EXPORT_NAME:
			r = opt_export_name(c, cflags & NBD_FLAG_C_NO_ZEROES);
			if (r < 0)
				goto io_failed;
			return HS_TRANSMIT;
		case NBD_OPT_GO:
		case NBD_OPT_INFO:
			if ((r = opt_info(c, opt, buf, len)) < 0)
				goto io_failed;
			if (r == 1 && opt == NBD_OPT_GO)
				return HS_TRANSMIT;
			break;
		case NBD_OPT_ABORT: (void)opt_reply(c, opt, NBD_REP_ACK, NULL, 0); return HS_CLOSE;
		case NBD_OPT_LIST:
			if (len) {
				count(&c->srv->errors, 1);
				r = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
			} else {
				unsigned char empty_name[4] = {0};

				r = opt_reply(c, opt, NBD_REP_SERVER, empty_name, 4);
				if (!r)
					r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
			}
			if (r < 0)
				goto io_failed;
			break;
		default: /* STARTTLS, STRUCTURED_REPLY, META_CONTEXT, EXTENDED_HEADERS... */
			if ((r = opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0)) < 0)
				goto io_failed;
			break;
		}
	}
	lv_warn("nbd server: %s: more than %u options; closing", c->peer, OPTIONS_MAX);
violation:
	count(&c->srv->errors, 1);
	return HS_CLOSE;
io_failed:
	if (r != -ECONNRESET)
		lv_warn("nbd server: %s: handshake: %s", c->peer, strerror(-r));
	return HS_CLOSE;
}

/* ---- transmission ---- */

static int simple_reply(struct nbd_conn *c, const unsigned char *cookie, uint32_t error)
{
	unsigned char rep[16];

	put_be32(rep, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(rep + 4, error);
	memcpy(rep + 8, cookie, 8);
	if (error)
		count(&c->srv->errors, 1);
	return send_buf(c->fd, rep, sizeof(rep));
}

/* The reply header, then [off, off + len) straight from the regions, in
 * batches of IOV_BATCH pieces (a read may span any number of regions). */
static int send_read(struct nbd_conn *c, const unsigned char *cookie, uint64_t off, uint64_t len)
{
	struct nbd_server *s = c->srv;
	unsigned char rep[16];
	struct iovec iov[IOV_BATCH];
	uint64_t pos = off, end = off + len;
	unsigned ri = region_at(s, off);
	int n = 0, r;

	put_be32(rep, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(rep + 4, 0);
	memcpy(rep + 8, cookie, 8);
	iov[n++] = (struct iovec){.iov_base = rep, .iov_len = sizeof(rep)};
	while (pos < end) {
		const struct region *g = &s->regions[ri];
		uint64_t stop = end < g->start + g->len ? end : g->start + g->len;

		iov[n++] = (struct iovec){.iov_base = (void *)(g->host + (pos - g->start)),
		                          .iov_len = (size_t)(stop - pos)};
		pos = stop;
		if (pos == g->start + g->len)
			ri++;
		if (n == IOV_BATCH || pos == end) {
			if ((r = send_iov(c->fd, iov, n, pos < end ? MSG_MORE : 0)) < 0)
				return r;
			n = 0;
		}
	}
	count(&s->bytes_sent, len);
	mark_sent(s, off, len);
	return 0;
}

/* Serves requests until the client disconnects or breaks the protocol. */
static void transmission(struct nbd_conn *c)
{
	struct nbd_server *s = c->srv;
	unsigned char req[REQUEST_BYTES];
	int r = 0;

	for (;;) {
		uint16_t type;
		uint64_t off;
		uint32_t len;

		if ((r = recv_all(c, req, sizeof(req))) < 0)
			break;
		if (get_be32(req) != NBD_REQUEST_MAGIC) {
			lv_warn("nbd server: %s: bad request magic 0x%08x; closing", c->peer,
			        get_be32(req));
			count(&s->errors, 1);
			return;
		}
		count(&s->requests, 1);
		type = get_be16(req + 6);
		off = get_be64(req + 16);
		len = get_be32(req + 24);
		switch (type) {
		case NBD_CMD_READ:
			if (len == 0 || len > NBD_SERVER_MAX_IO || !range_inside(s, off, len))
				r = simple_reply(c, req + 8, NBD_EINVAL);
			else
				r = send_read(c, req + 8, off, len);
			break;
		case NBD_CMD_WRITE:
			/* The payload follows the request: consume it to stay in step. */
			if (len > NBD_SERVER_MAX_IO) {
				lv_warn("nbd server: %s: write of %u bytes; closing", c->peer, len);
				count(&s->errors, 1);
				return;
			}
			if ((r = skip_bytes(c, len)) == 0)
				r = simple_reply(c, req + 8, NBD_EPERM);
			break;
		case NBD_CMD_TRIM:
		case NBD_CMD_WRITE_ZEROES: r = simple_reply(c, req + 8, NBD_EPERM); break;
		case NBD_CMD_FLUSH: r = simple_reply(c, req + 8, 0); break;
		case NBD_CMD_DISC: return;
		default: r = simple_reply(c, req + 8, NBD_EINVAL); break;
		}
		if (r < 0)
			break;
	}
	/* A client that just goes away (or stop's shutdown) is not worth a line. */
	if (r != -ECONNRESET && r != -EPIPE)
		lv_warn("nbd server: %s: %s", c->peer, strerror(-r));
}

static void *conn_main(void *arg)
{
	struct nbd_conn *c = arg;
	struct nbd_server *s = c->srv;

	count(&s->connections, 1); /* before the greeting, so a client never sees 0 */
	lv_debug("nbd server: %s connected", c->peer);
	c->deadline_ns = lv_now_ns() + (uint64_t)s->hs_timeout_ms * 1000000;
	if (handshake(c) == HS_TRANSMIT) {
		c->deadline_ns = 0;
		set_recv_timeout(c->fd, 0); /* between faults a client may idle for long */
		transmission(c);
	}
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
