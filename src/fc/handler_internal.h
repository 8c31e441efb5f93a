/* fc-handler's state, shared by the event loop (handler.c) and each VM's
 * life (vm_life.c). */
#ifndef LAZYVM_FC_HANDLER_INTERNAL_H
#define LAZYVM_FC_HANDLER_INTERNAL_H

#include "fc_internal.h"
#include "lazyvm/fc_handler.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/metrics.h"

enum watch_kind { W_LISTEN, W_SIGNAL, W_STOP, W_CONN, W_PIDFD, W_ENGINE };

struct watch {
	enum watch_kind kind;
	struct vm *vm;
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
	struct fc_handshake hs; /* the regions served (fault requests are mapped through it) */
	struct engine *eng;
	uint64_t started_ns;
	uint64_t requests, requests_bad; /* fault requests answered, refused */
	struct watch w_conn, w_pid, w_eng;
	struct vm *next;
};

struct fc_handler {
	struct fc_handler_config cfg;
	struct source *src;
	int listen_fd, epfd, stop_efd;
	struct watch w_listen, w_signal, w_stop;
	struct vm *vms;
	unsigned next_id, npending, nserving, nunserved;
	uint64_t served, rejected, failed;
	struct metrics retired; /* VMs that have gone, and pages the proofs installed */
	void *unreadable;       /* a PROT_NONE page: the source of liveness probes */
	uint64_t next_probe_ns;
};

int fc_ep_add(struct fc_handler *h, int fd, struct watch *w);

/* vm_life.c: what happens to one VM. Each may free vm (vm_free). */
void fc_vm_readable(struct fc_handler *h, struct vm *vm);     /* W_CONN */
void fc_vm_engine_event(struct fc_handler *h, struct vm *vm); /* W_ENGINE */
void fc_vm_pidfd(struct fc_handler *h, struct vm *vm);        /* W_PIDFD */
void fc_vm_reject(struct fc_handler *h, struct vm *vm, const char *why);
void fc_vm_free(struct fc_handler *h, struct vm *vm);

#endif
