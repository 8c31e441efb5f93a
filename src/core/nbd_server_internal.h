/* Private to the NBD server: the structures its two halves share. Not public
 * API (that is include/lazyvm/nbd_server.h) and not installed.
 *
 *   nbd_server.c  life cycle: listener, accept thread, connection threads and
 *                 their bookkeeping, stats, the sent-pages bitmap, start/stop
 *   nbd_proto.c   the protocol on one connection: handshake and option
 *                 negotiation, then requests and replies, reads sent from the
 *                 regions */
#ifndef LAZYVM_NBD_SERVER_INTERNAL_H
#define LAZYVM_NBD_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lazyvm/nbd_server.h"

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

static inline void count(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline bool range_inside(const struct nbd_server *s, uint64_t off, uint64_t len)
{
	return off <= s->size && len <= s->size - off;
}

/* nbd_proto.c: the handshake (bounded by srv->hs_timeout_ms), then requests
 * until the client disconnects or breaks the protocol. Leaves c->fd open:
 * whoever joins the connection thread closes it (see nbd_server.c). */
void nbd_proto_serve(struct nbd_conn *c);

/* nbd_server.c: records a read reply handed wholly to the kernel, for
 * nbd_server_range_sent and the pages_covered stat. */
void nbd_server_mark_sent(struct nbd_server *s, uint64_t off, uint64_t len);

#endif
