/* Reading Firecracker's hand-off from a connection: bytes and the UFFD. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
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

int fc_conn_init(struct fc_conn *c, int fd, pid_t *pid, int *pidfd, bool *race_free)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	*c = (struct fc_conn){.fd = fd};
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

void fc_attach_fds(struct msghdr *mh, void *ctrl, const int *fds, size_t nfds)
{
	struct cmsghdr *cm;

	memset(ctrl, 0, CMSG_SPACE(nfds * sizeof(int)));
	mh->msg_control = ctrl;
	mh->msg_controllen = CMSG_SPACE(nfds * sizeof(int));
	cm = CMSG_FIRSTHDR(mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
}

static void take_fds(struct fc_conn *c, struct msghdr *mh)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(cm);

		for (size_t i = 0; i < n; i++) {
			if (c->nfds < FC_CONN_MAX_FDS)
				c->fds[c->nfds] = fds[i];
			else
				close(fds[i]);
			c->nfds++;
		}
	}
}

/* Where the JSON value at the front of the buffer ends, fed to json-c a
 * chunk at a time as it arrives: a peer that trickles its message byte by byte
 * costs one pass over it, not one per byte (the event loop serves every VM's
 * hand-off). 1 with *end, 0 need more, -1 not JSON (*end where it broke). */
static int json_progress(struct fc_conn *c, size_t *end)
{
	size_t start = c->fed;
	struct json_object *o;
	enum json_tokener_error e;

	if (!c->tok) {
		c->tok = json_tokener_new();
		if (!c->tok)
			return -1;
		json_tokener_set_flags(c->tok,
		                       JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
		c->fed = start = 0;
	}
	if (start == c->len)
		return 0;
	o = json_tokener_parse_ex(c->tok, c->buf + start, (int)(c->len - start));
	e = json_tokener_get_error(c->tok);
	if (e == json_tokener_continue) {
		c->fed = c->len;
		return 0;
	}
	json_object_put(o);
	*end = start + json_tokener_get_parse_end(c->tok);
	json_tokener_reset(c->tok);
	c->fed = 0;
	return e == json_tokener_success ? 1 : -1;
}

/* After the hand-off (the secret-hiding branch, commit 1189ece0b on): the
 * text "no_exitless_apf" or "exitless_apf:N" (with 3N fds), then frames of a
 * little-endian u32 length and that many bytes of bitcode; before that
 * commit, JSON values. 1 with *end and c->msg_kind, 0 need more, -1 neither. */
static int next_message(struct fc_conn *c, size_t *end)
{
	static const char no_apf[] = "no_exitless_apf", apf[] = "exitless_apf:";
	const size_t nl = sizeof(no_apf) - 1, al = sizeof(apf) - 1;
	size_t n = c->len;

	*end = 0;
	if (!n)
		return 0;
	if (memcmp(c->buf, no_apf, n < nl ? n : nl) == 0) {
		c->msg_kind = FC_MSG_APF_TEXT;
		*end = nl;
		return n >= nl;
	}
	if (memcmp(c->buf, apf, n < al ? n : al) == 0) {
		/* The count ends where its send did: nothing follows it until a
		 * vCPU faults, so the digits buffered are all of them. */
		c->msg_kind = FC_MSG_APF_TEXT;
		*end = n < al ? 0 : al + strspn(c->buf + al, "0123456789");
		return n > al && *end > al;
	}
	if (strchr("{[ \t\r\n", c->buf[0]) && c->buf[0]) {
		c->msg_kind = FC_MSG_JSON;
		return json_progress(c, end);
	}
	if (n < 4)
		return 0;
	uint32_t flen =
	    (uint32_t)(unsigned char)c->buf[0] | (uint32_t)(unsigned char)c->buf[1] << 8 |
	    (uint32_t)(unsigned char)c->buf[2] << 16 | (uint32_t)(unsigned char)c->buf[3] << 24;
	if (flen > FC_HANDSHAKE_MAX_BYTES - 4)
		return -1;
	c->msg_kind = FC_MSG_FRAME;
	*end = 4 + (size_t)flen;
	return n >= *end;
}

int fc_conn_receive(struct fc_conn *c, char *why, size_t whylen)
{
	for (;;) {
		union {
			char buf[CMSG_SPACE(FC_CONN_CTRL_FDS * sizeof(int))];
			struct cmsghdr align;
		} ctrl;
		size_t end;
		int complete;

		/* What is buffered may already hold the next message. */
		complete = c->handed_off ? next_message(c, &end) : json_progress(c, &end);
		if (complete > 0) {
			c->msg_len = end;
			return 1;
		}
		if (complete < 0) {
			c->msg_len = c->len; /* not JSON: the parser names the problem */
			c->msg_kind = FC_MSG_GARBAGE;
			return 1;
		}
		if (c->len > FC_HANDSHAKE_MAX_BYTES) {
			snprintf(why, whylen, "%s larger than the %u bytes allowed",
			         c->handed_off ? "a message" : "handshake", FC_HANDSHAKE_MAX_BYTES);
			return -1;
		}
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
			snprintf(why, whylen, "reading the %s: %s",
			         c->handed_off ? "socket" : "handshake", strerror(errno));
			return -1;
		}
		take_fds(c, &mh);
		if (c->handed_off) {
			/* exitless_apf:N's 3N fds: lazyvm does not do exitless
			 * async PF for Firecracker; they are counted and closed. */
			c->late_fds += c->nfds;
			fc_conn_close_fds(c);
		}
		if (mh.msg_flags & MSG_CTRUNC || (!c->handed_off && c->nfds > FC_CONN_MAX_FDS)) {
			snprintf(why, whylen,
			         "more than %d file descriptors sent; Firecracker sends one "
			         "userfaultfd, or three with guest_memfd",
			         FC_CONN_MAX_FDS);
			return -1;
		}
		if (n == 0) {
			c->eof = true;
			if (c->len == 0)
				snprintf(why, whylen, "connection closed before any %s was sent",
				         c->handed_off ? "further message" : "handshake");
			else
				snprintf(why, whylen,
				         "truncated %s: connection closed after %zu bytes of JSON",
				         c->handed_off ? "message" : "handshake", c->len);
			return -1;
		}
		c->len += (size_t)n;
	}
}

void fc_conn_consume(struct fc_conn *c)
{
	/* Whatever json_progress had fed belonged to this message. */
	if (c->tok)
		json_tokener_reset(c->tok);
	c->fed = 0;
	memmove(c->buf, c->buf + c->msg_len, c->len - c->msg_len);
	c->len -= c->msg_len;
	c->msg_len = 0;
}

int fc_conn_check_fds(struct fc_conn *c, char *why, size_t whylen)
{
	char kind[160];

	if (c->nfds == 0) {
		snprintf(why, whylen, "no userfaultfd came with the handshake (no SCM_RIGHTS)");
		return -1;
	}
	if (uffd_fd_check(c->fds[0]) != 1) {
		snprintf(why, whylen, "the file descriptor sent is not a userfaultfd (it is %s)",
		         uffd_fd_kind(c->fds[0], kind, sizeof(kind)));
		return -1;
	}
	return 0;
}

int fc_conn_take_uffd(struct fc_conn *c)
{
	int fd = c->nfds ? c->fds[0] : -1;

	if (c->nfds)
		c->fds[0] = -1;
	return fd;
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

void fc_conn_close_fds(struct fc_conn *c)
{
	for (unsigned i = 0; i < c->nfds && i < FC_CONN_MAX_FDS; i++)
		if (c->fds[i] >= 0)
			close(c->fds[i]);
	c->nfds = 0;
}

void fc_conn_close(struct fc_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	fc_conn_close_fds(c);
	if (c->tok)
		json_tokener_free(c->tok);
	c->tok = NULL;
	free(c->buf);
	c->fd = -1;
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
	if (r == -ENOENT) {
		/* No /proc (a jail): the features stay unknown. What they would
		 * change shows in the messages, and the engine refuses it there:
		 * a fork event closes its fd and stops, a WP or minor fault
		 * stops; SIGBUS mode sends nothing, so its VM gets SIGBUS, never a
		 * wrong page. */
		snprintf(why, whylen,
		         "features not checked up front (no /proc/self/fdinfo); checked as "
		         "messages arrive");
		return 0;
	}
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
	return 1;
}
