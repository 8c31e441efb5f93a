/* Reading Firecracker's hand-off from a connection: bytes and the UFFD. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/uffd.h"

#define MAX_FDS_PER_MSG 8

int fc_conn_init(struct fc_conn *c, int fd, pid_t *pid, int *pidfd, bool *race_free)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	*c = (struct fc_conn){.fd = fd, .uffd = -1};
	*pid = 0;
	c->buf = malloc(FC_HANDSHAKE_MAX_BYTES + 1);
	if (!c->buf)
		return -ENOMEM;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	*pid = cred.pid;
	len = sizeof(*pidfd);
	/* SO_PEERPIDFD (6.5) names the very process that connected; pidfd_open on
	 * the pid may meet a process that recycled the pid of one that has gone,
	 * so a pidfd found that way is never trusted enough to kill with. */
	*race_free = false;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, pidfd, &len) == 0 && *pidfd >= 0) {
		*race_free = true;
		return 0;
	}
	*pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
	return *pidfd < 0 ? -errno : 0;
}

static void take_fds(struct fc_conn *c, struct msghdr *mh)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(cm);

		for (size_t i = 0; i < n; i++) {
			if (c->uffd < 0) {
				c->uffd = fds[i];
			} else {
				close(fds[i]);
				c->extra_fds++;
			}
		}
	}
}

int fc_conn_receive(struct fc_conn *c, char *why, size_t whylen)
{
	for (;;) {
		union {
			char buf[CMSG_SPACE(MAX_FDS_PER_MSG * sizeof(int))];
			struct cmsghdr align;
		} ctrl;
		struct iovec iov = {.iov_base = c->buf + c->len,
		                    .iov_len = FC_HANDSHAKE_MAX_BYTES + 1 - c->len};
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = ctrl.buf,
		                    .msg_controllen = sizeof(ctrl.buf)};
		ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			snprintf(why, whylen, "reading the handshake: %s", strerror(errno));
			return -1;
		}
		take_fds(c, &mh);
		if (mh.msg_flags & MSG_CTRUNC) {
			snprintf(why, whylen,
			         "more than %d file descriptors sent; expected one userfaultfd",
			         MAX_FDS_PER_MSG);
			return -1;
		}
		if (n == 0) {
			c->eof = true;
			if (c->len == 0)
				snprintf(why, whylen,
				         "connection closed before any handshake was sent");
			else
				snprintf(why, whylen,
				         "truncated handshake: connection closed after %zu bytes "
				         "of JSON",
				         c->len);
			return -1;
		}
		c->len += (size_t)n;
		if (c->len > FC_HANDSHAKE_MAX_BYTES) {
			snprintf(why, whylen, "handshake larger than the %u bytes allowed",
			         FC_HANDSHAKE_MAX_BYTES);
			return -1;
		}
		int complete = fc_handshake_complete(c->buf, c->len);
		if (complete == 0)
			continue;
		if (complete < 0)
			return 1; /* not JSON: the parser names the problem */
		if (c->extra_fds) {
			snprintf(why, whylen,
			         "%d file descriptors sent; expected exactly one userfaultfd",
			         c->extra_fds + 1);
			return -1;
		}
		if (c->uffd < 0) {
			snprintf(why, whylen,
			         "no userfaultfd came with the handshake (no SCM_RIGHTS)");
			return -1;
		}
		if (uffd_fd_check(c->uffd) != 1) {
			char path[64], target[128] = "?";
			ssize_t t;

			snprintf(path, sizeof(path), "/proc/self/fd/%d", c->uffd);
			t = readlink(path, target, sizeof(target) - 1);
			target[t > 0 ? t : 1] = '\0';
			snprintf(why, whylen,
			         "the file descriptor sent is not a userfaultfd (it is %s)",
			         target);
			return -1;
		}
		return 1;
	}
}

void fc_conn_reply(struct fc_conn *c, const char *why)
{
	char line[512];
	int n;

	if (c->fd < 0)
		return;
	n = snprintf(line, sizeof(line), "lazyvm fc-handler: handshake rejected: %s\n", why);
	if (n > (int)sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (send(c->fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		(void)0; /* the peer may be gone: the log has the message */
}

void fc_conn_close(struct fc_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	if (c->uffd >= 0)
		close(c->uffd);
	free(c->buf);
	c->fd = c->uffd = -1;
	c->buf = NULL;
}

/* Features lazyvm serves: MISSING faults (anonymous, hugetlbfs, shmem) and the
 * events the engine handles (REMOVE, UNMAP, whole-region REMAP). THREAD_ID and
 * EXACT_ADDRESS only add to the fault message; POISON and MOVE only enable
 * ioctls the handler never calls. Everything else changes what arrives or
 * what a fault needs: EVENT_FORK hands the reader a new userfaultfd per fork,
 * WP and MINOR faults are not resolved by UFFDIO_COPY, SIGBUS sends no message
 * at all. */
#define FC_UFFD_FEATURES_SERVED                                                                    \
	(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP |         \
	 UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_THREAD_ID |    \
	 UFFD_FEATURE_EXACT_ADDRESS | UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE)

/* The kernel marks a context whose UFFDIO_API is done with this bit in the
 * features it shows (fs/userfaultfd.c, UFFD_FEATURE_INITIALIZED). */
#define UFFD_FEATURE_INITIALIZED_BIT (1ull << 31)

int fc_uffd_features(int uffd, uint64_t *features)
{
	char path[64], line[256];
	int r = -ENODATA;
	FILE *f;

	/* UFFDIO_API may be called once per context, by the peer, so the handler
	 * cannot ask the kernel again; fdinfo shows "API:\t<api>:<features>:<ioctls>"
	 * (userfaultfd_show_fdinfo), the features being exactly those the peer
	 * asked for. */
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", uffd);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long api, feat;

		if (sscanf(line, "API:\t%llx:%llx:", &api, &feat) == 2) {
			*features = feat;
			r = 0;
			break;
		}
	}
	fclose(f);
	return r;
}

int fc_uffd_check(int uffd, char *why, size_t whylen)
{
	uint64_t features, extra;
	char names[256];
	int fl, r;

	/* Refused rather than fixed with F_SETFL: the file description is the
	 * peer's too, and turning on O_NONBLOCK behind its back would change
	 * what its own reads do. Firecracker always sets it. (The engine also
	 * never blocks on a read, should the peer clear the flag later.) */
	fl = fcntl(uffd, F_GETFL);
	if (fl < 0) {
		snprintf(why, whylen, "cannot read the userfaultfd's flags: %s", strerror(errno));
		return -1;
	}
	if (!(fl & O_NONBLOCK)) {
		snprintf(why, whylen,
		         "the userfaultfd is not O_NONBLOCK (create it with "
		         "userfaultfd(O_NONBLOCK), as Firecracker does)");
		return -1;
	}
	r = fc_uffd_features(uffd, &features);
	if (r < 0) {
		snprintf(why, whylen,
		         "cannot read the userfaultfd's features from /proc/self/fdinfo/%d (%s); "
		         "refusing a userfaultfd whose features are unknown",
		         uffd, strerror(-r));
		return -1;
	}
	/* A context without UFFDIO_API shows 0 here and is not refused: the proof
	 * of ownership and the first read fail on it with a clear message. */
	extra = features & ~UFFD_FEATURE_INITIALIZED_BIT & ~(uint64_t)FC_UFFD_FEATURES_SERVED;
	if (extra) {
		uffd_feature_names(extra, names, sizeof(names));
		snprintf(why, whylen,
		         "the userfaultfd has feature(s) lazyvm does not handle: %s (it serves "
		         "MISSING faults with the REMOVE, UNMAP and REMAP events)",
		         names);
		return -1;
	}
	return 0;
}
