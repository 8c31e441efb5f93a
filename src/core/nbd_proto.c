/* The NBD protocol on one connection of the read-only NBD server (see
 * nbd_server.h; the life cycle is in nbd_server.c). Constants and message
 * layouts follow the NBD protocol (NetworkBlockDevice/nbd doc/proto.md); every
 * field is big-endian on the wire and built byte by byte, never through packed
 * structs. */
#include <endian.h>
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include "lazyvm/log.h"
#include "lazyvm/nbd_server.h"
#include "lazyvm/units.h"
#include "nbd_server_internal.h"

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
#define IOV_BATCH        64
#define REQUEST_BYTES    28
#define OPT_HEADER_BYTES 16

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
	nbd_server_mark_sent(s, off, len);
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

void nbd_proto_serve(struct nbd_conn *c)
{
	c->deadline_ns = lv_now_ns() + (uint64_t)c->srv->hs_timeout_ms * 1000000;
	if (handshake(c) == HS_TRANSMIT) {
		c->deadline_ns = 0;
		set_recv_timeout(c->fd, 0); /* between faults a client may idle for long */
		transmission(c);
	}
}
