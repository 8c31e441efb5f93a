/* Handing fc-handler's VMs on (docs/ARCHITECTURE.md, "Takeover"), shared by
 * its three files:
 *   state.c     the description of every VM and listening socket (JSON in a
 *               memfd) and the fds that go with it; freezing the VMs before
 *               they are handed on, starting them again
 *   state_apply.c  reading a description: the VMs built again
 *   takeover.c  the takeover socket: a successor asks, this handler hands
 *               everything over and exits, or serves on if the successor fails
 *   takeover_recv.c  the successor's side
 *   fdstore.c   systemd's fd store: the same description and fds kept by the
 *               service manager, taken back by the next instance
 * Included by handler_internal.h. */
#ifndef LAZYVM_FC_TAKEOVER_H
#define LAZYVM_FC_TAKEOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fc_handler;
struct fc_snap;
struct vm;
struct watch;

/* Named fds: what travels beside a state description ("listen-0",
 * "vm3-uffd", "vm3-conn", "vm3-pidfd", "state"). */
#define FC_FD_NAME_MAX 32
struct fc_fdset {
	char (*names)[FC_FD_NAME_MAX];
	int *fds; /* -1 once taken */
	size_t n, cap;
};

/* Adds (fd not duplicated). 0 or -ENOMEM. */
int fc_fdset_add(struct fc_fdset *s, const char *name, int fd);
/* Takes the fd named `name` out of the set (the caller owns it now); -1 when
 * there is none. */
int fc_fdset_take(struct fc_fdset *s, const char *name);
/* Closes the fds nobody took (close_rest) and frees the set. */
void fc_fdset_free(struct fc_fdset *s, bool close_rest);

#define FC_STATE_VERSION 1

/* state.c. Stops every VM's engine (threads joined: nothing in flight),
 * keeps its page map in vm->runs and stops watching the VMs and the
 * listening sockets; after this the fds are what the VMs are. Hand-offs
 * being read must have ended (npending == 0). */
void fc_state_freeze(struct fc_handler *h);
/* Serves on after a hand-over that failed (why): engines again from the page
 * maps kept, the watches back. */
void fc_state_thaw(struct fc_handler *h, const char *why);
/* The description (JSON) of every VM and listening socket, and their fds in
 * *fds (not duplicated). exact: the engines are frozen, so the page maps are
 * exact; else each is read from a running engine. 0 or -errno. */
int fc_state_build(struct fc_handler *h, bool exact, char **json, size_t *len,
                   struct fc_fdset *fds);
/* state_apply.c. Builds the described VMs again (engines made, page maps imported, not
 * started) and gives each snapshot its listening socket, taking their fds
 * out of `fds`. Either everything fits this handler's configuration or
 * nothing is kept: -1 with `why`. Returns the number of VMs. */
int fc_state_apply(struct fc_handler *h, const char *json, size_t len, struct fc_fdset *fds,
                   char *why, size_t whylen);
/* Drops what fc_state_apply built, before it started (a successor whose
 * predecessor did not commit). */
void fc_state_discard(struct fc_handler *h);
/* The snapshot's size and the CRC-32C of its first and last 64 KiB, read
 * once and kept: what tells a successor it serves the same memory. */
int fc_snap_fingerprint(struct fc_snap *s, uint64_t *fp);
/* Starts what fc_state_apply built: the engines (a VM whose engine does not
 * start is given up on), the watches, the listening sockets. */
void fc_state_start(struct fc_handler *h);

/* The state memfd: a header (magic, version, sequence, length, CRC-32C) and
 * the JSON. Write replaces the content; read checks all of it. 0 or -errno,
 * read with `why`. */
int fc_state_write(int fd, uint64_t seq, const char *json, size_t len);
int fc_state_read(int fd, uint64_t *seq, char **json, size_t *len, char *why, size_t whylen);

/* takeover.c: the packets of the exchange (SOCK_SEQPACKET). */
struct json_object;
#define TK_VERSION      1
#define TK_FDS_A_PACKET 200 /* below the kernel's SCM_MAX_FD (253) */
#define TK_PACKET_MAX   (64 * 1024)
#define TK_STEP_NS      (10ull * 1000 * 1000 * 1000) /* each step's bound */
/* Sends one packet, nfds fds beside it (waits up to 2 s for room). 0 or -errno. */
int tk_send(int fd, const char *json, const int *fds, size_t nfds);
/* One packet into buf (NUL-terminated), its fds appended to fds (room for
 * TK_FDS_A_PACKET; NULL: closed). Waits up to timeout_ms (0: not at all).
 * The length, 0 on EOF, -EAGAIN when nothing came, or -errno. */
int tk_recv(int fd, char *buf, size_t len, int *fds, size_t *nfds, int timeout_ms);
/* The packet's object when it is one with `key` (*val its value); put it. */
struct json_object *tk_parse(const char *buf, size_t len, const char *key,
                             struct json_object **val);
/* {"key": text}, best effort. */
void tk_send_text(int fd, const char *key, const char *text);

/* takeover.c. The takeover socket of a serving handler. 0 or -errno. */
int fc_takeover_listen(struct fc_handler *h);
/* An event on one of its watches. 0, or -errno when the handler cannot go
 * on (a successor that took the VMs went silent). */
int fc_takeover_event(struct fc_handler *h, struct watch *w);
/* Its deadlines and the drain before the hand-over; the next deadline into
 * *next (ns, left alone when none). */
void fc_takeover_timers(struct fc_handler *h, uint64_t now, uint64_t *next);
/* takeover_recv.c. The successor's side, at start-up: connects to `path`, takes everything
 * over and starts serving it. 0 or -errno (logged; the old handler serves
 * on). */
int fc_takeover_receive(struct fc_handler *h, const char *path);
void fc_takeover_close(struct fc_handler *h);

/* fdstore.c. Probes systemd (NOTIFY_SOCKET) and takes back what a previous
 * instance stored (LISTEN_FDS). 0, or -errno when what came back cannot be
 * served. Without systemd, or in a build without libsystemd, nothing. */
int fc_fdstore_open(struct fc_handler *h);
/* Once serving: the listening sockets go to the store, READY=1. */
void fc_fdstore_ready(struct fc_handler *h);
/* A VM came (present) or is leaving: its fds in or out of the store, and the
 * description rewritten. */
void fc_fdstore_vm_changed(struct fc_handler *h, struct vm *vm, bool present);
/* Rewrites the description from the running engines (each second). */
void fc_fdstore_sync(struct fc_handler *h);
/* Stopping (SIGTERM) with a store: freezes the VMs, writes the exact
 * description and leaves the sockets' paths, so the next instance serves
 * on. true when that was done. */
bool fc_fdstore_stop(struct fc_handler *h);
void fc_fdstore_close(struct fc_handler *h);

#endif
