/* `lazyvm fc-handler`: a page-fault handler that released Firecracker versions
 * use unchanged to restore a snapshot lazily (the Uffd memory backend).
 *
 * One process serves many VMs of one or more snapshots: it listens on a unix
 * socket a snapshot; each connection is one VM that sends the hand-off (JSON
 * regions + the UFFD, see fc_handshake.h) and gets that snapshot's memory.
 * The handler validates it, then serves that VM's faults from the memory file
 * with its own fault engine until the VM exits. A bad hand-off is refused with a
 * message and harms no other VM. A VM the handler cannot serve (rejected, or its
 * engine failed) is killed or reported per `on_fatal`: Firecracker would
 * otherwise hang for ever at its next fault. Such a VM's userfaultfd is kept
 * open until its memory is gone, so that it hangs rather than reading zero
 * pages; a VM leaves when its memory is gone (or its proven process exits).
 * A running handler hands every VM to a successor that asks on its takeover
 * socket, or keeps them in systemd's fd store across a restart (takeover.h
 * in src/fc, docs/ARCHITECTURE.md). */
#ifndef LAZYVM_FC_HANDLER_H
#define LAZYVM_FC_HANDLER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lazyvm/engine.h"

enum fc_on_fatal {
	FC_ON_FATAL_KILL,   /* SIGKILL the VM's process, when it is proven to be the
	                     * one that connected (SO_PEERPIDFD plus a page check);
	                     * otherwise report that it cannot be identified */
	FC_ON_FATAL_REPORT, /* log its pid and leave it */
};

/* systemd's fd store (FileDescriptorStoreMax=): every VM's fds and a state
 * description kept by the service manager, so that the next instance of the
 * service serves on after a restart (docs/ARCHITECTURE.md). */
enum fc_fd_store {
	FC_FD_STORE_AUTO, /* when NOTIFY_SOCKET is set (and $FDSTORE, if set, is not 0) */
	FC_FD_STORE_ON,   /* as auto, but an error when there is no systemd to store in */
	FC_FD_STORE_OFF,
};

/* One snapshot served: VMs that connect to its socket get its memory. */
struct fc_snapshot_config {
	const char *socket_path;
	const char *source;      /* a memory file (regular file or block device), or an
	                          * NBD export: nbd://HOST:PORT/NAME, nbd+unix:///NAME?socket=P */
	const char *checksums;   /* a `lazyvm checksum` file: every page checked, known-zero
	                          * pages served without a read; NULL: none */
	const char *record_ws;   /* the first VM's touch order is written here when it
	                          * leaves (or the handler stops); NULL: none */
	const char *prefetch_ws; /* replayed for every VM from its hand-off on; a missing,
	                          * damaged or stale file only warns; NULL: none */
};

#define FC_MAX_SNAPSHOTS 64

struct fc_handler_config {
	struct fc_snapshot_config snaps[FC_MAX_SNAPSHOTS];
	unsigned nsnaps;         /* >= 1 */
	unsigned threads_per_vm; /* >= 1 */
	enum engine_intake intake;
	uint64_t busy_idle_ns;
	int io_uring;               /* batch source reads through io_uring */
	unsigned fault_around;      /* pages per fault, see engine_config */
	uint64_t source_latency_ns; /* 0: none */
	uint64_t source_timeout_ns; /* NBD: a wait without progress ends after this */
	bool background_prefetch;   /* every other page in the background, yielding to
	                             * demand faults (after the working set, if any) */
	bool populate_all;          /* every page in the background at once, from the
	                             * hand-off on (Firecracker's fault_all handler) */
	enum fc_on_fatal on_fatal;
	uint64_t handshake_timeout_ns;
	unsigned max_vms;         /* VMs served at once (hand-offs being read not counted) */
	unsigned max_pending;     /* hand-offs being read at once */
	int signal_fd;            /* signalfd for SIGTERM/SIGINT (stop) and SIGUSR1
	                           * (metrics); -1 for none */
	FILE *metrics_out;        /* where metrics JSON goes (stdout) */
	const char *metrics_prom; /* Prometheus text exposition written here (renamed into
	                           * place) every second and at exit; NULL: none */
	/* Takeover (docs/ARCHITECTURE.md): a successor connects to the takeover
	 * socket and gets every VM and listening socket; this handler then
	 * exits (fc_handler_run returns 0), or serves on if the successor fails
	 * before it serves. */
	const char *takeover_from;   /* take everything over from the handler
	                              * listening here, at start-up; NULL: no */
	const char *takeover_listen; /* listen for a successor here; NULL: the first
	                              * snapshot's socket path + ".takeover" */
	bool no_takeover_listen;     /* do not listen for one at all */
	enum fc_fd_store fd_store;   /* systemd's fd store */
};

struct fc_handler;

/* Opens every snapshot's source (and checksums, working set) and binds its
 * socket (refusing to replace anything but a stale socket). Returns 0 or
 * -errno after logging what failed. */
int fc_handler_create(const struct fc_handler_config *cfg, struct fc_handler **out);

/* Serves until SIGTERM/SIGINT arrives on signal_fd or fc_handler_stop() is
 * called, or until a successor has taken everything over. Returns 0 after a
 * clean stop or a hand-over, -errno on a handler-wide failure. */
int fc_handler_run(struct fc_handler *h);

/* Asks a running fc_handler_run to return (thread- and signal-safe). */
void fc_handler_stop(struct fc_handler *h);

/* Writes {"vms_active" (being served), "vms_served", "handshakes_rejected",
 * "vms_failed", "vms_pending" (hand-offs being read), "vms_unserved" (given up
 * on, memory not gone yet), "vms": [{id, pid, state, metrics}...], "totals":
 * {metrics}} and a newline. */
void fc_handler_write_metrics(struct fc_handler *h, FILE *f);

/* Rewrites cfg.metrics_prom (if set): the handler's gauges and counters, and
 * every VM's metrics and their total (vm="all"). 0 or -errno (logged). */
int fc_handler_write_prom(struct fc_handler *h);

/* Whether fc_handler_run ended by handing everything to a successor (or to
 * systemd's fd store). */
bool fc_handler_handed_over(const struct fc_handler *h);

/* Stops every VM's engine, unlinks the sockets, frees everything; after a
 * hand-over, closes this handler's fds and leaves the sockets to the
 * successor. */
void fc_handler_destroy(struct fc_handler *h);

#endif
