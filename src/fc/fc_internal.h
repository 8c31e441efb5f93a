/* Internals of fc-handler shared between its files. */
#ifndef LAZYVM_FC_INTERNAL_H
#define LAZYVM_FC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One connection's hand-off while it is being read. */
struct fc_conn {
	int fd;    /* the accepted socket, -1 when closed */
	int uffd;  /* the userfaultfd received, -1 until then (owned until handed on) */
	char *buf; /* FC_HANDSHAKE_MAX_BYTES + 1 bytes */
	size_t len;
	int extra_fds; /* file descriptors beyond the first (refused) */
	bool eof;      /* the peer closed its end */
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
 * beyond those lazyvm handles (named). 0, or -1 with a sentence in `why`. */
int fc_uffd_check(int uffd, char *why, size_t whylen);

/* Reads what is available. Returns 1 when a complete JSON value and exactly one
 * userfaultfd have arrived (the bytes are in c->buf[0..c->len)), or when the
 * bytes can no longer become JSON (the parser will name the problem); 0 when
 * more is needed; -1 with a sentence in `why` for a bad hand-off (no fd, more
 * than one fd, not a userfaultfd, too big, closed early). */
int fc_conn_receive(struct fc_conn *c, char *why, size_t whylen);

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

#endif
