/* fc-handler's state, shared by the event loop (handler.c) and each VM's
 * life (vm_life.c). */
#ifndef LAZYVM_FC_HANDLER_INTERNAL_H
#define LAZYVM_FC_HANDLER_INTERNAL_H

#include "fc_internal.h"
#include "lazyvm/fc_handler.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/metrics.h"
#include "lazyvm/workset.h"

enum watch_kind {
	W_LISTEN,
	W_SIGNAL,
	W_STOP,
	W_CONN,
	W_PIDFD,
	W_ENGINE,
	W_TAKEOVER, /* takeover.c: its listening socket, a successor, its pidfd */
};

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
	bool keep_path;       /* handed on: the socket lives on, so does its path */
	uint64_t fingerprint; /* fc_snap_fingerprint, once read (0: not yet) */
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
	uint64_t zeros;                  /* known-zero pages marked */
	bool stored;                     /* its fds are in systemd's fd store (fdstore.c) */
	/* Handed over (takeover.c): the page map of its stopped engine, kept
	 * until the successor has it, to serve on if it fails. */
	struct engine_page_run *runs;
	size_t nruns;
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
	struct fc_takeover *tk;   /* takeover.c: handing over, or ready to */
	struct fc_fdstore *store; /* fdstore.c: systemd's fd store, NULL when not used */
	bool frozen;              /* VMs handed over or being handed over: not watched */
	bool handed_over;         /* a successor serves everything: leave it all alone */
};

int fc_ep_add(struct fc_handler *h, int fd, struct watch *w);

/* snap.c: listens on the unix socket `path` (SOCK_STREAM or SOCK_SEQPACKET),
 * with `mode` (0: the umask's) set before anyone can connect. A stale socket
 * is replaced, a live one only with replace_live, any other file never.
 * Returns the non-blocking listening fd or -errno (logged). */
int fc_bind_unix(const char *path, int type, mode_t mode, bool replace_live);

/* vm_life.c: what happens to one VM. Each may free vm (vm_free). */
void fc_vm_readable(struct fc_handler *h, struct vm *vm);     /* W_CONN */
void fc_vm_engine_event(struct fc_handler *h, struct vm *vm); /* W_ENGINE */
void fc_vm_pidfd(struct fc_handler *h, struct vm *vm);        /* W_PIDFD */
void fc_vm_reject(struct fc_handler *h, struct vm *vm, const char *why);
void fc_vm_free(struct fc_handler *h, struct vm *vm);
/* Gives up on a VM whose engine cannot serve it (--on-fatal, then parked). */
void fc_vm_fail(struct fc_handler *h, struct vm *vm, const char *why);
/* Stops the VM's engine, saves its working set, folds its metrics in, frees it. */
void fc_vm_retire_engine(struct fc_handler *h, struct vm *vm);
/* A VM's engine in two steps: made (its regions, then either an imported page
 * map or the snapshot's known-zero pages and working-set recording), then
 * started (threads, background installs, watches). Each returns 0, or -1 with
 * `why`; the caller then gives the VM up (fc_vm_fail). */
int fc_vm_engine_make(struct fc_handler *h, struct vm *vm, const struct engine_page_run *runs,
                      size_t nruns, char *why, size_t whylen);
int fc_vm_engine_go(struct fc_handler *h, struct vm *vm, char *why, size_t whylen);

/* snapshot.c: a snapshot's source, checksums and working set; its socket. */
int fc_snap_open(struct fc_handler *h, struct fc_snap *s, unsigned index);
/* Listens on the snapshot's socket: `fd` when one was handed over (a
 * takeover, systemd's fd store), else a new socket bound at its path. */
int fc_snap_listen(struct fc_handler *h, struct fc_snap *s, int fd);
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

#include "takeover.h"

#endif
