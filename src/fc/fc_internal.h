/* Internals of fc-handler shared between its files. */
#ifndef LAZYVM_FC_INTERNAL_H
#define LAZYVM_FC_INTERNAL_H

#include <stddef.h>
#include <sys/types.h>

/* One connection's hand-off while it is being read. */
struct fc_conn {
	int fd;    /* the accepted socket, -1 when closed */
	int uffd;  /* the userfaultfd received, -1 until then (owned until handed on) */
	char *buf; /* FC_HANDSHAKE_MAX_BYTES + 1 bytes */
	size_t len;
	int extra_fds; /* file descriptors beyond the first (refused) */
};

/* Takes `fd` (non-blocking), finds the peer (SO_PEERCRED) and a pidfd for it
 * (SO_PEERPIDFD, else pidfd_open). Returns 0 or -errno; on error the caller
 * still owns the conn and closes it with fc_conn_close. */
int fc_conn_init(struct fc_conn *c, int fd, pid_t *pid, int *pidfd);

/* Reads what is available. Returns 1 when a complete JSON value and exactly one
 * userfaultfd have arrived (the bytes are in c->buf[0..c->len)), or when the
 * bytes can no longer become JSON (the parser will name the problem); 0 when
 * more is needed; -1 with a sentence in `why` for a bad hand-off (no fd, more
 * than one fd, not a userfaultfd, too big, closed early). */
int fc_conn_receive(struct fc_conn *c, char *why, size_t whylen);

/* Tells the peer why it was refused (best effort, never blocks). */
void fc_conn_reply(struct fc_conn *c, const char *why);

void fc_conn_close(struct fc_conn *c);

#endif
