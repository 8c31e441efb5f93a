/* Post-copy live migration between two lazyvm processes (docs/MIGRATION.md).
 *
 * The control connection (TCP, the source connects to the destination):
 *
 *   source                                   destination (lazyvm migrate --listen)
 *   HELLO {mem_size, vcpus}          ->
 *                                    <-      HELLO
 *   ... the guest runs until the migration point; every vCPU is parked ...
 *   OFFER {state_len, csums_len, nbd_port}
 *     + state file + page checksums  ->      validates, creates the VM, loads state
 *                                    <-      ACCEPT (the VM is the destination's now)
 *                                            or REFUSE {why}: the VM goes on at the source
 *   serves guest RAM over NBD        <->     pulls pages: demand faults first, the
 *                                            rest in the background
 *                                    <-      DONE: every page is in
 *   checks every non-zero page was sent, exits
 *
 * Every message is a struct mig_msg (256 bytes, little-endian); OFFER is
 * followed by its two payloads. The state file is the snapshot format
 * (docs/SNAPSHOT.md) with a zero-page map: zero pages never cross the wire. */
#ifndef LAZYVM_MIGRATE_H
#define LAZYVM_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#define MIG_MAGIC      0x47494d4cu /* "LMIG" */
#define MIG_VERSION    2u          /* 2: PING */
#define MIG_PING_MS    1000        /* a waited-on side says PING this often */
#define MIG_SILENCE_MS 10000       /* nothing at all for this long: the peer is stopped or stuck */

enum mig_kind {
	MIG_HELLO = 1,  /* source: arg[0] mem_size, arg[1] vCPUs; destination: echo */
	MIG_OFFER = 2,  /* arg[0] state bytes, arg[1] checksum bytes, arg[2] NBD port */
	MIG_ACCEPT = 3, /* the destination runs the VM from now on */
	MIG_REFUSE = 4, /* text: why; the source keeps the VM */
	MIG_DONE = 5,   /* every page is in: arg[0] pages read, arg[1] zero pages */
	MIG_PING = 6,   /* "still here": the source until its OFFER, the destination
	                 * from ACCEPT on; receivers skip it (migrate_ping.c) */
};

struct mig_msg {
	uint32_t magic;
	uint32_t version;
	uint32_t kind;
	uint32_t reserved;
	uint64_t arg[4];
	char text[208]; /* NUL-terminated */
};
_Static_assert(sizeof(struct mig_msg) == 256, "mig_msg");

/* Sends PING on fd every MIG_PING_MS from its own thread (under lock, when
 * given, if others write fd too) until stopped or the peer is gone. */
struct mig_pinger {
	int fd, efd;
	pthread_mutex_t *lock;
	pthread_t th;
	bool started;
};
int mig_pinger_start(struct mig_pinger *p, int fd, pthread_mutex_t *lock);
void mig_pinger_stop(struct mig_pinger *p); /* idempotent */

/* The next message that is not a PING; -ETIMEDOUT after MIG_SILENCE_MS with
 * nothing at all (the peer is stopped or stuck), else as mig_recv_msg. */
int mig_recv_next(int fd, struct mig_msg *m, char *why, size_t whylen);

/* The source's side, held by the VM (vm_config.migrate). */
struct migrate_out {
	const char *to;         /* HOST:PORT of the destination */
	int fd;                 /* the control connection */
	struct mig_pinger ping; /* from HELLO until the OFFER */
	/* what happened, for the report */
	uint64_t t_pause_ns, t_accept_ns, t_done_ns;
	uint64_t state_bytes, pages_total, pages_zero;
	uint64_t nbd_bytes_sent, nbd_requests;
};

/* Connects to the destination and exchanges HELLO, before the VM starts, so
 * an unreachable destination fails the run at once. 0 or -errno with why. */
int migrate_connect(struct migrate_out *mo, const char *to, uint64_t mem_size, unsigned nvcpus,
                    char *why, size_t whylen);
void migrate_close(struct migrate_out *mo);

struct vm;
/* With every vCPU parked: sends the VM and serves its memory until the
 * destination has every page. 0: migrated (the VM has left this process).
 * -EAGAIN: the destination refused or failed before taking the VM over; it
 * is intact here and may run on. Other -errno: failed after the destination
 * took over (the VM is lost). why says what happened in every case. */
int migrate_out(struct vm *vm, struct migrate_out *mo, char *why, size_t whylen);

/* Wire helpers for both sides. Sends return 0 or -errno; receives wait at
 * most timeout_ms for each piece (-1: for ever) and return -ECONNRESET when
 * the peer closed, -ETIMEDOUT, -EPROTO for a foreign or other-version peer
 * (why says which). */
int mig_recv_all(int fd, void *buf, size_t len, int timeout_ms);
int mig_send_msg(int fd, uint32_t kind, const uint64_t arg[4], const char *text);
int mig_recv_msg(int fd, struct mig_msg *m, int timeout_ms, char *why, size_t whylen);
/* The checks mig_recv_msg makes of a whole message it read (magic, version;
 * terminates text): 0 or -EPROTO with why. */
int mig_check_msg(struct mig_msg *m, char *why, size_t whylen);
void mig_tune_socket(int fd);

#endif
