/* A small read-only NBD server over host memory: the migration source exports
 * the paused guest's RAM (several host regions, concatenated into one export)
 * and the destination's NBD source (source_nbd_open) pulls the pages it faults.
 *
 * Protocol: fixed newstyle handshake (NBD_OPT_GO, NBD_OPT_INFO,
 * NBD_OPT_EXPORT_NAME, NBD_OPT_LIST, NBD_OPT_ABORT; every other option gets
 * NBD_REP_ERR_UNSUP), simple replies only, any export name accepted. Reads are
 * sent straight from the regions; writes, trims and write-zeroes fail with
 * EPERM; flush succeeds. One thread per connection, requests answered in order.
 * No TLS and no authentication: bind to an address only the destination can
 * reach.
 *
 * A broken or hostile client costs at most its own connection: every length it
 * sends is bounded, every offset checked, a bad magic ends that connection only.
 * The server never writes to the regions; keeping them mapped and unchanged
 * while the server runs is the caller's job. */
#ifndef LAZYVM_NBD_SERVER_H
#define LAZYVM_NBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NBD_SERVER_PAGE_SIZE 4096u
#define NBD_SERVER_MAX_IO    (32u << 20) /* longest read; advertised as the maximum block */

/* One piece of the export. The regions, in order, are the export: region i
 * starts where region i-1 ends. `len` is a multiple of NBD_SERVER_PAGE_SIZE;
 * a region of length 0 is ignored. */
struct nbd_export_region {
	const void *host;
	uint64_t len;
};

struct nbd_server_config {
	const char *bind_addr;                   /* numeric IPv4/IPv6 address; NULL = "127.0.0.1" */
	uint16_t port;                           /* 0 = an ephemeral port (see nbd_server_port) */
	const struct nbd_export_region *regions; /* copied; the memory is borrowed */
	unsigned nregions;
	unsigned max_conns;            /* concurrent connections; 0 = 8 */
	unsigned handshake_timeout_ms; /* a client that has not finished the
	                                * handshake this long after connecting
	                                * is dropped; 0 = 10000 */
};

struct nbd_server_stats {
	uint64_t connections;   /* accepted and served (refused ones not counted) */
	uint64_t refused;       /* closed at once: max_conns were already open */
	uint64_t requests;      /* transmission-phase requests received */
	uint64_t bytes_sent;    /* read payload bytes sent in successful replies */
	uint64_t pages_covered; /* distinct pages wholly sent at least once */
	uint64_t errors;        /* error replies plus connections ended by a
	                         * protocol violation */
};

struct nbd_server;

/* Binds, listens and starts the accept thread. On failure returns -errno and
 * fills `why` (bad config: -EINVAL; the address taken: -EADDRINUSE). The
 * regions' memory must stay mapped until nbd_server_stop returns. */
int nbd_server_start(const struct nbd_server_config *cfg, struct nbd_server **out, char *why,
                     size_t whylen);

/* The port actually bound (the ephemeral one when cfg->port was 0). */
uint16_t nbd_server_port(const struct nbd_server *s);

/* The export size: the sum of the region lengths. */
uint64_t nbd_server_size(const struct nbd_server *s);

/* A snapshot of the counters; safe from any thread while the server runs. */
void nbd_server_stats(struct nbd_server *s, struct nbd_server_stats *st);

/* Whether every 4 KiB page that [off, off + len) touches has been sent whole
 * in some successful read reply (a page only partly read does not count).
 * A reply counts once all of it has been handed to the kernel, so the client
 * may already hold the data a moment before this (and the stats) say so.
 * False for a range not inside the export; true for an empty range inside it.
 * Safe from any thread while the server runs. */
bool nbd_server_range_sent(struct nbd_server *s, uint64_t off, uint64_t len);

/* Closes the listener and every connection (shutdown() unblocks their
 * threads, even mid-send to a client that stopped reading), joins every
 * thread and frees the server. NULL is ignored. Never blocks on a client. */
void nbd_server_stop(struct nbd_server *s);

#endif
