/* The takeover socket: a new fc-handler (`--takeover SOCKET`) takes every VM
 * and every listening socket of the running one, which then exits; no VM
 * loses a page, and none waits longer than the hand-over.
 *
 * A unix SOCK_SEQPACKET socket (one message a packet, fds beside them),
 * mode 0600 and only for a peer of this handler's uid or root: whoever holds
 * a VM's userfaultfd can write its memory. The exchange:
 *
 *   successor                               this handler
 *   {"hello":1,"pid":N}          ->
 *                                           stops accepting (connections wait
 *                                           in the backlog, for the successor);
 *                                           lets the hand-offs being read end;
 *                                           stops every engine (threads
 *                                           joined), exports the page maps
 *                                <-         {"fds":[names]} + SCM_RIGHTS ...
 *                                <-         {"sent":N}  (the "state" fd is a
 *                                           memfd with the description, state.c)
 *   builds every VM, imports its page map, does not start
 *   {"accept":true} | {"refuse":S} ->
 *                                <-         {"commit":true}
 *   starts the engines, accepts
 *   {"serving":true}             ->         exits 0
 *
 * Until the commit, any failure (a refusal, a successor that dies or says
 * nothing for 10 s) leaves this handler serving on, from the page maps it
 * kept; the successor then exits. After the commit the successor serves; if
 * it dies before it says so, this handler serves on (a successor that stays
 * silent is killed first, so that two never read one userfaultfd). */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "fc_json.h"
#include "handler_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"

#define TK_HELLO_NS        (5ull * 1000 * 1000 * 1000)
#define TK_SEND_TIMEOUT_MS 2000

enum tk_phase {
	TK_IDLE,      /* listening */
	TK_HELLO,     /* a successor connected; its hello not read yet */
	TK_DRAIN,     /* not accepting; the hand-offs being read end first */
	TK_SENT,      /* everything sent; waiting for accept or refuse */
	TK_COMMITTED, /* commit sent; waiting for "serving" */
	TK_PEER_EXIT, /* the successor went away after the commit: waiting for its exit */
};

struct fc_takeover {
	char path[108];
	int listen_fd;
	ino_t ino; /* the socket file bound, to unlink only our own */
	struct watch w_listen, w_conn, w_peer;
	enum tk_phase phase;
	int conn, peer_pidfd;
	pid_t peer;
	uint64_t deadline_ns, t0_ns;
	unsigned nvms;
};

/* --- packets --- */

int tk_send(int fd, const char *json, const int *fds, size_t nfds)
{
	union {
		char buf[CMSG_SPACE(TK_FDS_A_PACKET * sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = {.iov_base = (void *)json, .iov_len = strlen(json)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (nfds)
		fc_attach_fds(&mh, ctrl.buf, fds, nfds);
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};

		if (sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		/* The peer's queue is full: it is reading, or stuck. */
		if (poll(&p, 1, TK_SEND_TIMEOUT_MS) <= 0)
			return -ETIMEDOUT;
	}
}

/* One packet into buf (NUL-terminated), its fds appended to *fds (room for
 * TK_FDS_A_PACKET). Waits up to timeout_ms (0: not at all). Returns the
 * length, 0 on EOF, -EAGAIN when nothing came, or -errno. */
int tk_recv(int fd, char *buf, size_t len, int *fds, size_t *nfds, int timeout_ms)
{
	union {
		char buf[CMSG_SPACE(TK_FDS_A_PACKET * sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = {.iov_base = buf, .iov_len = len - 1};
	struct msghdr mh = {.msg_iov = &iov,
	                    .msg_iovlen = 1,
	                    .msg_control = ctrl.buf,
	                    .msg_controllen = sizeof(ctrl)};
	struct pollfd p = {.fd = fd, .events = POLLIN};
	ssize_t n;

	if (timeout_ms && poll(&p, 1, timeout_ms) == 0)
		return -EAGAIN;
	n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		for (size_t i = 0; i < k; i++) {
			int f;

			memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (fds && *nfds < TK_FDS_A_PACKET)
				fds[(*nfds)++] = f;
			else
				close(f);
		}
	}
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		return -EMSGSIZE;
	buf[n] = '\0';
	return n ? (int)n : 0;
}

/* The packet's object, when it has `key`. */
struct json_object *tk_parse(const char *buf, size_t len, const char *key, struct json_object **val)
{
	struct json_object *o;

	if (fc_json_parse_one(buf, len, "takeover message", &o, NULL, 0) < 0)
		return NULL;
	if (json_object_get_type(o) == json_type_object && json_object_object_get_ex(o, key, val))
		return o;
	json_object_put(o);
	return NULL;
}

void tk_send_text(int fd, const char *key, const char *text)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, key, json_object_new_string(text));
	tk_send(fd, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), NULL, 0);
	json_object_put(o);
}

/* --- this handler's side --- */

int fc_takeover_listen(struct fc_handler *h)
{
	struct fc_takeover *tk;
	struct stat st;
	int r;

	if (h->cfg.no_takeover_listen)
		return 0;
	tk = calloc(1, sizeof(*tk));
	if (!tk)
		return -ENOMEM;
	tk->conn = tk->peer_pidfd = -1;
	tk->w_listen = tk->w_conn = tk->w_peer = (struct watch){.kind = W_TAKEOVER};
	if (snprintf(tk->path, sizeof(tk->path), "%s%s",
	             h->cfg.takeover_listen ? h->cfg.takeover_listen : h->snaps[0].cfg->socket_path,
	             h->cfg.takeover_listen ? "" : ".takeover") >= (int)sizeof(tk->path) - 16) {
		lv_err("the takeover socket path %s... is too long (--takeover-listen PATH, or "
		       "--no-takeover-listen)",
		       tk->path);
		free(tk);
		return -ENAMETOOLONG;
	}
	/* Right after a takeover the predecessor still listens there until it
	 * exits: this socket replaces its. */
	r = fc_bind_unix(tk->path, SOCK_SEQPACKET, 0600, h->cfg.takeover_from != NULL);
	if (r < 0) {
		free(tk);
		return r;
	}
	tk->listen_fd = r;
	if (lstat(tk->path, &st) == 0)
		tk->ino = st.st_ino;
	h->tk = tk;
	lv_info("a successor may take over at %s (fc-handler --takeover %s)", tk->path, tk->path);
	return fc_ep_add(h, tk->listen_fd, &tk->w_listen);
}

static void tk_drop_peer(struct fc_handler *h, struct fc_takeover *tk)
{
	if (tk->conn >= 0) {
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, tk->conn, NULL);
		close(tk->conn);
	}
	if (tk->peer_pidfd >= 0) {
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, tk->peer_pidfd, NULL);
		close(tk->peer_pidfd);
	}
	tk->conn = tk->peer_pidfd = -1;
	tk->phase = TK_IDLE;
}

/* Before anything was sent: accept connections again. */
static void tk_abandon(struct fc_handler *h, struct fc_takeover *tk, const char *why)
{
	lv_warn("takeover by pid %d: %s; serving on", (int)tk->peer, why);
	if (tk->phase == TK_DRAIN)
		for (unsigned i = 0; i < h->nsnaps; i++)
			if (h->snaps[i].listen_fd >= 0)
				fc_ep_add(h, h->snaps[i].listen_fd, &h->snaps[i].w_listen);
	tk_drop_peer(h, tk);
}

/* After the VMs were frozen: serve on from the page maps kept. */
static void tk_resume(struct fc_handler *h, struct fc_takeover *tk, const char *why)
{
	char line[400];

	snprintf(line, sizeof(line), "the hand-over to pid %d failed: %s", (int)tk->peer, why);
	tk_drop_peer(h, tk);
	fc_state_thaw(h, line);
}

static void tk_accept(struct fc_handler *h, struct fc_takeover *tk)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd = accept4(tk->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    (cred.uid != geteuid() && cred.uid != 0)) {
		lv_warn("takeover: refused a connection from uid %d (only uid %d or root may take "
		        "the VMs)",
		        (int)cred.uid, (int)geteuid());
		tk_send_text(fd, "refuse", "not this handler's uid");
		close(fd);
		return;
	}
	if (tk->phase != TK_IDLE || h->handed_over) {
		tk_send_text(fd, "refuse", "another takeover is under way");
		close(fd);
		return;
	}
	tk->conn = fd;
	tk->peer = cred.pid;
	len = sizeof(tk->peer_pidfd);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &tk->peer_pidfd, &len) < 0)
		tk->peer_pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
	tk->phase = TK_HELLO;
	tk->deadline_ns = lv_now_ns() + TK_HELLO_NS;
	if (fc_ep_add(h, fd, &tk->w_conn) < 0)
		tk_drop_peer(h, tk);
}

/* Everything to the successor: the VMs frozen, their description and fds. */
static void tk_hand_over(struct fc_handler *h, struct fc_takeover *tk)
{
	struct fc_fdset fds = {0};
	uint64_t t_frozen;
	char *json = NULL, msg[128];
	size_t len = 0;
	int memfd, r;

	tk->t0_ns = lv_now_ns();
	tk->nvms = 0;
	for (struct vm *vm = h->vms; vm; vm = vm->next)
		tk->nvms++;
	fc_state_freeze(h);
	t_frozen = lv_now_ns();
	memfd = memfd_create("lazyvm-state", MFD_CLOEXEC);
	r = memfd < 0 ? -errno : fc_state_build(h, true, &json, &len, &fds);
	if (r == 0)
		r = fc_state_write(memfd, 1, json, len);
	if (r == 0)
		r = tk_send(tk->conn, "{\"fds\":[\"state\"]}", &memfd, 1);
	for (size_t at = 0; r == 0 && at < fds.n; at += TK_FDS_A_PACKET) {
		size_t n = fds.n - at < TK_FDS_A_PACKET ? fds.n - at : TK_FDS_A_PACKET;
		struct json_object *o = json_object_new_object(), *a = json_object_new_array();

		for (size_t i = 0; i < n; i++)
			json_object_array_add(a, json_object_new_string(fds.names[at + i]));
		json_object_object_add(o, "fds", a);
		r = tk_send(tk->conn, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
		            fds.fds + at, n);
		json_object_put(o);
	}
	size_t nfds = fds.n + 1;
	snprintf(msg, sizeof(msg), "{\"sent\":%zu}", nfds);
	if (r == 0)
		r = tk_send(tk->conn, msg, NULL, 0);
	if (memfd >= 0)
		close(memfd);
	free(json);
	fc_fdset_free(&fds, false); /* this handler's own fds: kept */
	if (r < 0) {
		snprintf(msg, sizeof(msg), "sending the VMs: %s", strerror(-r));
		tk_resume(h, tk, msg);
		return;
	}
	lv_info("takeover: %u VMs frozen in %.1f ms, %zu fds and a %zu-byte description sent to "
	        "pid %d in %.1f ms",
	        tk->nvms, (double)(t_frozen - tk->t0_ns) / 1e6, nfds, len, (int)tk->peer,
	        (double)(lv_now_ns() - t_frozen) / 1e6);
	tk->phase = TK_SENT;
	tk->deadline_ns = lv_now_ns() + TK_STEP_NS;
}

/* The successor went away after the commit: once it has exited, nobody
 * reads the userfaultfds and this handler can serve on. */
static void tk_peer_gone(struct fc_handler *h, struct fc_takeover *tk)
{
	struct pollfd p = {.fd = tk->peer_pidfd, .events = POLLIN};

	if (tk->peer_pidfd < 0 || poll(&p, 1, 0) == 1) {
		tk_resume(h, tk,
		          "the successor exited after the commit, before it said it serves (a "
		          "balloon remove it read in that moment is lost: that page reads its "
		          "snapshot bytes, not zeros)");
		return;
	}
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, tk->conn, NULL);
	close(tk->conn);
	tk->conn = -1;
	tk->phase = TK_PEER_EXIT;
	tk->deadline_ns = lv_now_ns() + TK_STEP_NS;
	if (fc_ep_add(h, tk->peer_pidfd, &tk->w_peer) < 0)
		tk->deadline_ns = lv_now_ns();
}

static void tk_readable(struct fc_handler *h, struct fc_takeover *tk)
{
	char buf[512], why[300];
	struct json_object *o, *v;
	int n = tk_recv(tk->conn, buf, sizeof(buf), NULL, NULL, 0);

	if (n == -EAGAIN)
		return;
	if (n <= 0) {
		snprintf(why, sizeof(why), "the successor %s",
		         n == 0 ? "closed the connection" : strerror(-n));
		if (tk->phase == TK_COMMITTED)
			tk_peer_gone(h, tk);
		else if (tk->phase == TK_SENT)
			tk_resume(h, tk, why);
		else
			tk_abandon(h, tk, why);
		return;
	}
	switch (tk->phase) {
	case TK_HELLO:
		if (!(o = tk_parse(buf, (size_t)n, "hello", &v)) ||
		    json_object_get_int64(v) != TK_VERSION) {
			if (o)
				json_object_put(o);
			tk_send_text(tk->conn, "refuse", "takeover protocol version 1 only");
			tk_abandon(h, tk, "not a hello of version 1");
			return;
		}
		json_object_put(o);
		/* Connections from here on wait in the backlog of the listening
		 * sockets, which the successor will accept. */
		for (unsigned i = 0; i < h->nsnaps; i++)
			if (h->snaps[i].listen_fd >= 0)
				epoll_ctl(h->epfd, EPOLL_CTL_DEL, h->snaps[i].listen_fd, NULL);
		lv_info("takeover: pid %d asks for the VMs%s", (int)tk->peer,
		        h->npending ? "; the hand-offs being read end first" : "");
		tk->phase = TK_DRAIN;
		return;
	case TK_SENT:
		if ((o = tk_parse(buf, (size_t)n, "accept", &v))) {
			json_object_put(o);
			if (tk_send(tk->conn, "{\"commit\":true}", NULL, 0) < 0) {
				tk_resume(h, tk, "it accepted, and the commit could not be sent");
				return;
			}
			tk->phase = TK_COMMITTED;
			tk->deadline_ns = lv_now_ns() + TK_STEP_NS;
			return;
		}
		o = tk_parse(buf, (size_t)n, "refuse", &v);
		snprintf(why, sizeof(why), "it refused: %s",
		         o ? json_object_get_string(v) : "(a message that is not an answer)");
		if (o)
			json_object_put(o);
		tk_resume(h, tk, why);
		return;
	case TK_COMMITTED:
		if ((o = tk_parse(buf, (size_t)n, "serving", &v))) {
			json_object_put(o);
			lv_info("takeover: pid %d serves the %u VMs; handed over in %.1f ms",
			        (int)tk->peer, tk->nvms, (double)(lv_now_ns() - tk->t0_ns) / 1e6);
			h->handed_over = true;
			for (unsigned i = 0; i < h->nsnaps; i++)
				h->snaps[i].keep_path = true;
			tk_drop_peer(h, tk);
		}
		return;
	default: return;
	}
}

int fc_takeover_event(struct fc_handler *h, struct watch *w)
{
	struct fc_takeover *tk = h->tk;

	if (w == &tk->w_listen)
		tk_accept(h, tk);
	else if (w == &tk->w_conn && tk->conn >= 0)
		tk_readable(h, tk);
	else if (w == &tk->w_peer && tk->phase == TK_PEER_EXIT)
		tk_resume(h, tk, "the successor exited after the commit, before it said it serves");
	return 0;
}

void fc_takeover_timers(struct fc_handler *h, uint64_t now, uint64_t *next)
{
	struct fc_takeover *tk = h->tk;

	if (!tk || tk->phase == TK_IDLE)
		return;
	if (tk->phase == TK_DRAIN && h->npending == 0) {
		tk_hand_over(h, tk);
		if (tk->phase == TK_IDLE)
			return;
	}
	if (tk->phase == TK_DRAIN)
		return; /* the pending hand-offs have their own deadlines */
	if (now < tk->deadline_ns) {
		if (tk->deadline_ns < *next)
			*next = tk->deadline_ns;
		return;
	}
	switch (tk->phase) {
	case TK_HELLO: tk_abandon(h, tk, "no hello within 5 s"); break;
	case TK_SENT: tk_resume(h, tk, "no answer within 10 s"); break;
	case TK_COMMITTED:
		/* Silent after the commit: it may be serving or stuck. Only once
		 * it is dead can this handler read the userfaultfds again. */
		lv_err("takeover: pid %d took the VMs and said nothing for 10 s: killing it, to "
		       "serve on",
		       (int)tk->peer);
		if (tk->peer_pidfd >= 0)
			syscall(SYS_pidfd_send_signal, tk->peer_pidfd, SIGKILL, NULL, 0);
		tk_peer_gone(h, tk);
		break;
	case TK_PEER_EXIT:
		lv_err("takeover: pid %d does not exit: its VMs are left to it", (int)tk->peer);
		h->handed_over = true;
		tk_drop_peer(h, tk);
		break;
	default: break;
	}
}

void fc_takeover_close(struct fc_handler *h)
{
	struct fc_takeover *tk = h->tk;
	struct stat st;

	if (!tk)
		return;
	tk_drop_peer(h, tk);
	close(tk->listen_fd);
	/* A successor has bound its own socket at this path by now. */
	if (!h->handed_over && lstat(tk->path, &st) == 0 && st.st_ino == tk->ino)
		unlink(tk->path);
	free(tk);
	h->tk = NULL;
}
