/* fc-handler's state, shared by the event loop (handler.c) and each VM's
 * life (vm_life.c). */
#ifndef LAZYVM_FC_HANDLER_INTERNAL_H
#define LAZYVM_FC_HANDLER_INTERNAL_H

#include "fc_internal.h"
#include "lazyvm/fc_handler.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/metrics.h"
#include "lazyvm/workset.h"

enum watch_kind { W_LISTEN, W_SIGNAL, W_STOP, W_CONN, W_PIDFD, W_ENGINE };

struct fc_snap;

struct watch {
	enum watch_kind kind;
	struct vm *vm;
	struct fc_snap *snap; /* W_LISTEN */
};

/* One snapshot: its socket and its memory, shared read-only by its VMs (a
 * file through the page cache, an NBD export through one connection pool),
 * whatever each VM's balloon does with its own copy. */
struct fc_snap {
	unsigned index;
	const struct fc_snapshot_config *cfg;
	struct source *src;
	struct csumfile *csum; /* NULL without --checksums */
	struct ws_id ws_id;    /* what a working set of it must be recorded for */
	uint64_t *ws_pages;    /* the working set replayed for each VM */
	uint64_t ws_n;
	void *ws_data;  /* their bytes (a packed working set, checked), or NULL */
	bool recording; /* one of its VMs records its touch order */
	int listen_fd;
	struct watch w_listen;
	uint64_t served;
};

/* A VM's life: PENDING while its hand-off is read; SERVING while its engine
 * runs; UNSERVED once the handler gave up on it (refused, or its engine
 * failed) but the VM may still live: the userfaultfd is kept open then, since
 * closing the last reference would turn the VM's later faults into zero pages
 * where snapshot data belongs. A VM leaves when its memory is gone. */
enum vm_state { VM_PENDING, VM_SERVING, VM_UNSERVED };

/* Resolver slots of a VM's engine: fault requests read from the socket, and
 * --populate all's background pass. */
enum { SLOT_REQUESTS, SLOT_POPULATE, VM_SLOTS };

struct vm {
	unsigned id;
	char name[48];
	enum vm_state state;
	pid_t pid; /* the process that connected: not necessarily the VM */
	int pidfd;
	bool pidfd_race_free; /* from SO_PEERPIDFD */
	bool proven;          /* the connector is the VM (owner.c) */
	char proof[200];      /* why it is, or is not, proven */
	struct fc_conn conn;  /* the socket: the hand-off, then what follows; fd < 0 once closed */
	uint64_t deadline_ns;
	int uffd;               /* our reference to the userfaultfd, -1 before the hand-off */
	uint64_t probe_addr;    /* a user address of the VM, for fc_uffd_mm_alive */
	struct fc_snap *snap;   /* whose memory it gets */
	struct source *src;     /* where its engine reads: the snapshot's, or (NBD) its own
	                         * connection, so that VMs do not queue on one socket */
	bool recording;         /* its engine records the working set */
	struct fc_handshake hs; /* the regions served (fault requests are mapped through it) */
	struct engine *eng;
	uint64_t started_ns;
	uint64_t requests, requests_bad; /* fault requests answered, refused */
	struct watch w_conn, w_pid, w_eng;
	struct vm *next;
};

struct fc_handler {
	struct fc_handler_config cfg;
	struct fc_snap snaps[FC_MAX_SNAPSHOTS];
	unsigned nsnaps;
	int epfd, stop_efd;
	struct watch w_signal, w_stop;
	struct vm *vms;
	unsigned next_id, npending, nserving, nunserved;
	uint64_t served, rejected, failed;
	struct metrics retired; /* VMs that have gone, and pages the proofs installed */
	void *unreadable;       /* a PROT_NONE page: the source of liveness probes */
	uint64_t next_probe_ns, next_prom_ns;
};

int fc_ep_add(struct fc_handler *h, int fd, struct watch *w);

/* vm_life.c: what happens to one VM. Each may free vm (vm_free). */
void fc_vm_readable(struct fc_handler *h, struct vm *vm);     /* W_CONN */
void fc_vm_engine_event(struct fc_handler *h, struct vm *vm); /* W_ENGINE */
void fc_vm_pidfd(struct fc_handler *h, struct vm *vm);        /* W_PIDFD */
void fc_vm_reject(struct fc_handler *h, struct vm *vm, const char *why);
void fc_vm_free(struct fc_handler *h, struct vm *vm);

/* snapshot.c: a snapshot's source, checksums and working set; its socket. */
int fc_snap_open(struct fc_handler *h, struct fc_snap *s, unsigned index);
void fc_snap_close(struct fc_snap *s);
/* The known-zero pages of the VM's regions, marked in its engine (before
 * engine_start). Returns how many. */
uint64_t fc_snap_mark_zero(const struct fc_snap *s, struct vm *vm);
/* The source vm's engine reads: the snapshot's own for a file (one page
 * cache for all its VMs), a connection of its own for NBD. 0 or -errno. */
int fc_snap_vm_source(struct fc_handler *h, struct fc_snap *s, struct vm *vm);
void fc_snap_vm_source_put(struct fc_snap *s, struct vm *vm);

/* Writes the working set vm recorded. */
void fc_snap_save_ws(struct fc_snap *s, struct vm *vm);

#endif
