/* Internals of fc-handler shared between its files. */
#ifndef LAZYVM_FC_INTERNAL_H
#define LAZYVM_FC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct json_tokener;
struct msghdr;

/* Attaches nfds fds (SCM_RIGHTS) to mh, in ctrl, which has room for
 * CMSG_SPACE(nfds * sizeof(int)) bytes and is suitably aligned. */
void fc_attach_fds(struct msghdr *mh, void *ctrl, const int *fds, size_t nfds);

/* Firecracker's secret-hiding hand-off sends three: the userfaultfd, the
 * guest_memfd and the userfault bitmap's memfd. */
#define FC_CONN_MAX_FDS 4
/* Room for the fds of one message after it: "exitless_apf:N" brings 3 a vCPU. */
#define FC_CONN_CTRL_FDS 256

/* What a message after the hand-off is (fc_conn_receive sets it). */
enum fc_msg_kind { FC_MSG_JSON, FC_MSG_APF_TEXT, FC_MSG_FRAME, FC_MSG_GARBAGE };

/* One connection: the hand-off while it is read, then (Firecracker keeps the
 * socket open from v1.12) the messages that may follow it. */
struct fc_conn {
	int fd;                    /* the accepted socket, -1 when closed */
	int fds[FC_CONN_MAX_FDS];  /* received (owned until taken); fds[0] the uffd */
	unsigned nfds;             /* how many came (may exceed the array: refused) */
	char *buf;                 /* FC_HANDSHAKE_MAX_BYTES + 1 bytes */
	size_t len;                /* bytes buffered */
	size_t msg_len;            /* the complete message at the front of buf */
	bool eof;                  /* the peer closed its end */
	bool handed_off;           /* the hand-off is done: messages follow */
	enum fc_msg_kind msg_kind; /* of the message at the front, after the hand-off */
	unsigned late_fds;         /* fds that came after the hand-off (closed) */
	struct json_tokener *tok;  /* the JSON at the front, read as it arrives */
	size_t fed;                /* bytes of buf fed to tok */
};

/* Takes `fd` (non-blocking), finds the peer (SO_PEERCRED) and a pidfd for it
 * (SO_PEERPIDFD, then *race_free, else pidfd_open on the pid). The peer is the
 * process that connected, not necessarily the VM (see owner.c). Returns 0 or
 * -errno; on error the caller still owns the conn and closes it with
 * fc_conn_close. */
int fc_conn_init(struct fc_conn *c, int fd, pid_t *pid, int *pidfd, bool *race_free);

/* The features the peer asked for with UFFDIO_API (from /proc/self/fdinfo).
 * 0 or -errno (-ENODATA: no API line). */
int fc_uffd_features(int uffd, uint64_t *features);

/* Checks a received userfaultfd before it is served: O_NONBLOCK, and no feature
 * beyond those lazyvm handles (named). 1 checked; 0 when the features cannot be
 * known (no /proc), with `why` saying so; -1 refused, with the reason. */
int fc_uffd_check(int uffd, char *why, size_t whylen);

/* Reads what is available. Returns 1 when a complete JSON value is at the
 * front of the buffer (c->buf[0..c->msg_len)), or when the bytes can no longer
 * become JSON (then msg_len is all of them, for the parser to name the
 * problem); 0 when more is needed; -1 with a sentence in `why` (closed, too
 * big, too many fds). fc_conn_consume drops the message once handled. */
int fc_conn_receive(struct fc_conn *c, char *why, size_t whylen);
void fc_conn_consume(struct fc_conn *c);

/* The hand-off's fds: at least one, the first a userfaultfd (checked without
 * /proc). 0, or -1 with `why`. */
int fc_conn_check_fds(struct fc_conn *c, char *why, size_t whylen);

/* Takes the userfaultfd (fds[0]) out of the conn; -1 when none came. */
int fc_conn_take_uffd(struct fc_conn *c);

/* Closes the fds still held (the guest_memfd and bitmap of a refused VM). */
void fc_conn_close_fds(struct fc_conn *c);

/* Tells the peer why it was refused (best effort, never blocks). */
void fc_conn_reply(struct fc_conn *c, const char *why);

void fc_conn_close(struct fc_conn *c);

struct fc_handshake;
struct source;

/* What fc_owner_prove needs to know about one hand-off. */
struct fc_owner_query {
	int uffd;                      /* the userfaultfd received */
	pid_t pid;                     /* the connecting process (SO_PEERCRED) */
	int pidfd;                     /* its pidfd */
	bool race_free;                /* the pidfd came from SO_PEERPIDFD */
	const struct fc_handshake *hs; /* the validated regions */
	struct source *src;            /* the memory file */
	uint64_t *installed;           /* pages installed by the proof */
};

/* Is the connecting process the one whose memory the userfaultfd serves? May
 * install a page or two of the memory file's own content (counted in
 * *installed) and never blocks on the peer. Returns 1 (proven) or 0 (not),
 * with the reason in `why` either way. See owner.c for the argument. */
int fc_owner_prove(const struct fc_owner_query *q, char *why, size_t whylen);

/* Does the address space the userfaultfd serves still exist? `addr` is any
 * page-aligned user address (a region's base), `unreadable` a PROT_NONE page of
 * ours. 1 yes (or cannot tell), 0 gone. Never installs anything. */
int fc_uffd_mm_alive(int uffd, uint64_t addr, const void *unreadable);

/* fc-client: a userfaultfd the way vm->version opens one, with `features`
 * (client.c; client_handoff.c opens a replacement with it). */
struct fc_vm;
int fc_client_open_uffd(struct fc_vm *vm, uint64_t features, char *why, size_t whylen);

#endif
