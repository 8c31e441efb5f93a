/* `lazyvm fc-handler`: a page-fault handler that released Firecracker versions
 * use unchanged to restore a snapshot lazily (the Uffd memory backend).
 *
 * One process serves many VMs: it listens on a unix socket; each connection is
 * one VM that sends the hand-off (JSON regions + the UFFD, see fc_handshake.h).
 * The handler validates it, then serves that VM's faults from the memory file
 * with its own fault engine until the VM exits. A bad hand-off is refused with a
 * message and harms no other VM. A VM the handler cannot serve (rejected, or its
 * engine failed) is killed or reported per `on_fatal`: Firecracker would
 * otherwise hang for ever at its next fault. Such a VM's userfaultfd is kept
 * open until its memory is gone, so that it hangs rather than reading zero
 * pages; a VM leaves when its memory is gone (or its proven process exits). */
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

struct fc_handler_config {
	const char *socket_path;
	const char *mem_file;
	unsigned threads_per_vm; /* >= 1 */
	enum engine_intake intake;
	uint64_t busy_idle_ns;
	int io_uring;               /* batch source reads through io_uring */
	unsigned fault_around;      /* pages per fault, see engine_config */
	uint64_t source_latency_ns; /* 0: none */
	bool populate_all;          /* every page of a VM in the background, from its
	                             * hand-off on (Firecracker's fault_all handler) */
	enum fc_on_fatal on_fatal;
	uint64_t handshake_timeout_ns;
	unsigned max_vms;     /* VMs served at once (hand-offs being read not counted) */
	unsigned max_pending; /* hand-offs being read at once */
	int signal_fd;        /* signalfd for SIGTERM/SIGINT (stop) and SIGUSR1
	                       * (metrics); -1 for none */
	FILE *metrics_out;    /* where metrics JSON goes (stdout) */
};

struct fc_handler;

/* Opens the memory file and binds the socket (refusing to replace anything
 * but a stale socket). Returns 0 or -errno after logging what failed. */
int fc_handler_create(const struct fc_handler_config *cfg, struct fc_handler **out);

/* Serves until SIGTERM/SIGINT arrives on signal_fd or fc_handler_stop() is
 * called. Returns 0 after a clean stop, -errno on a handler-wide failure. */
int fc_handler_run(struct fc_handler *h);

/* Asks a running fc_handler_run to return (thread- and signal-safe). */
void fc_handler_stop(struct fc_handler *h);

/* Writes {"vms_active" (being served), "vms_served", "handshakes_rejected",
 * "vms_failed", "vms_pending" (hand-offs being read), "vms_unserved" (given up
 * on, memory not gone yet), "vms": [{id, pid, state, metrics}...], "totals":
 * {metrics}} and a newline. */
void fc_handler_write_metrics(struct fc_handler *h, FILE *f);

/* Stops every VM's engine, unlinks the socket, frees everything. */
void fc_handler_destroy(struct fc_handler *h);

#endif
