/* The successor's side of a takeover (the exchange: takeover.c): at
 * start-up, connect to the old handler's takeover socket, receive every VM
 * and socket, build them (state_apply.c), and start serving only once the
 * old handler has committed. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "fc_json.h"
#include "handler_internal.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"

static int tk_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		lv_err("--takeover %s: the path is too long for a unix socket", path);
		return -ENAMETOOLONG;
	}
	if (stat(path, &st) < 0) {
		lv_err("--takeover %s: %s (the running handler listens on its first socket's path "
		       "+ \".takeover\" unless --takeover-listen says otherwise)",
		       path, strerror(errno));
		return -ENOENT;
	}
	if (!S_ISSOCK(st.st_mode)) {
		lv_err("--takeover %s: not a socket", path);
		return -ENOTSOCK;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		lv_err("--takeover %s: %s", path,
		       e == ECONNREFUSED
		           ? "nobody listens on it (a stale socket: its handler has gone)"
		       : e == EPROTOTYPE
		           ? "not a takeover socket (a stream socket: a VM socket, perhaps?)"
		           : strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

/* Test hook: a successor that dies at a chosen step of the hand-over. */
static void tk_test_crash(const char *step)
{
	const char *at = getenv("LAZYVM_TEST_TAKEOVER_CRASH");

	if (at && !strcmp(at, step)) {
		lv_warn("takeover: LAZYVM_TEST_TAKEOVER_CRASH=%s: dying here", step);
		raise(SIGKILL);
	}
}

/* Packets until {"sent":N}: the fds, named. 0 or -1 with why. */
static int tk_receive_fds(int fd, uint64_t wait_ns, struct fc_fdset *set, char *why, size_t whylen)
{
	uint64_t deadline = lv_now_ns() + wait_ns;
	char *buf = malloc(TK_PACKET_MAX);
	int r = -1;

	if (!buf)
		return fc_err(why, whylen, -1, "out of memory");
	for (;;) {
		int fds[TK_FDS_A_PACKET];
		size_t nfds = 0;
		uint64_t now = lv_now_ns();
		struct json_object *o, *v;
		int n = now >= deadline ? -EAGAIN
		                        : tk_recv(fd, buf, TK_PACKET_MAX, fds, &nfds,
		                                  (int)((deadline - now) / 1000000 + 1));

		if (n == -EAGAIN) {
			fc_err(why, whylen, -1, "nothing handed over within %.0f s", wait_ns / 1e9);
			break;
		}
		if (n <= 0) {
			fc_err(why, whylen, -1, "the old handler %s",
			       n == 0 ? "closed the connection" : strerror(-n));
			break;
		}
		if ((o = tk_parse(buf, (size_t)n, "fds", &v))) {
			size_t k = json_object_get_type(v) == json_type_array
			               ? json_object_array_length(v)
			               : 0;

			for (size_t i = 0; i < nfds; i++)
				if (i >= k || fc_fdset_add(set,
				                           json_object_get_string(
				                               json_object_array_get_idx(v, i)),
				                           fds[i]) < 0)
					close(fds[i]);
			json_object_put(o);
			continue;
		}
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		if ((o = tk_parse(buf, (size_t)n, "sent", &v))) {
			uint64_t sent = (uint64_t)json_object_get_int64(v);

			json_object_put(o);
			if (sent != set->n)
				fc_err(why, whylen, -1, "%" PRIu64 " fds sent, %zu came", sent,
				       set->n);
			else
				r = 0;
			break;
		}
		o = tk_parse(buf, (size_t)n, "refuse", &v);
		fc_err(why, whylen, -1, "the old handler refused: %s",
		       o ? json_object_get_string(v)
		         : "(a message that is not part of a takeover)");
		if (o)
			json_object_put(o);
		break;
	}
	free(buf);
	return r;
}

int fc_takeover_receive(struct fc_handler *h, const char *path)
{
	struct fc_fdset set = {0};
	uint64_t t0 = lv_now_ns(), seq, t_got;
	char hello[64], why[600], buf[256], *json = NULL;
	size_t len;
	int fd, sfd, nvms, n, r = -EPROTO;

	fd = tk_connect(path);
	if (fd < 0)
		return fd;
	snprintf(hello, sizeof(hello), "{\"hello\":%d,\"pid\":%d}", TK_VERSION, (int)getpid());
	if ((r = tk_send(fd, hello, NULL, 0)) < 0) {
		lv_err("--takeover %s: %s", path, strerror(-r));
		close(fd);
		return r;
	}
	/* The old handler first lets its hand-offs being read end (each within
	 * its --handshake-timeout). */
	if (tk_receive_fds(fd, h->cfg.handshake_timeout_ns + TK_STEP_NS, &set, why, sizeof(why)) <
	    0)
		goto refuse;
	t_got = lv_now_ns();
	for (size_t i = 0; i < set.n; i++)
		lv_debug("takeover: fd %d is %s", set.fds[i], set.names[i]);
	sfd = fc_fdset_take(&set, "state");
	if (sfd < 0) {
		snprintf(why, sizeof(why), "no state description came");
		goto refuse;
	}
	r = fc_state_read(sfd, &seq, &json, &len, why, sizeof(why));
	close(sfd);
	if (r < 0)
		goto refuse;
	nvms = fc_state_apply(h, json, len, &set, why, sizeof(why));
	free(json);
	if (nvms < 0)
		goto refuse;
	fc_fdset_free(&set, true); /* anything described nowhere */
	tk_test_crash("before-accept");
	if (tk_send(fd, "{\"accept\":true}", NULL, 0) < 0 ||
	    (n = tk_recv(fd, buf, sizeof(buf), NULL, NULL, TK_STEP_NS / 1000000)) <= 0 ||
	    !strstr(buf, "\"commit\"")) {
		lv_err("--takeover %s: the old handler did not commit; it serves on", path);
		fc_state_discard(h);
		close(fd);
		return -EPROTO;
	}
	tk_test_crash("after-commit");
	fc_state_start(h);
	r = tk_send(fd, "{\"serving\":true}", NULL, 0);
	close(fd);
	lv_info("took over %d VMs from %s in %.1f ms (%.1f ms of it waiting for them)%s", nvms,
	        path, (double)(lv_now_ns() - t0) / 1e6, (double)(t_got - t0) / 1e6,
	        r < 0 ? "; the old handler did not hear that this one serves" : "");
	return 0;
refuse:
	lv_err("--takeover %s: %s; the old handler serves on", path, why);
	tk_send_text(fd, "refuse", why);
	fc_fdset_free(&set, true);
	close(fd);
	return -EPROTO;
}
