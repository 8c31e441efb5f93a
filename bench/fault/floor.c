/* The floor: the least any UFFD handler must do per fault, as directly as
 * possible, in the forked child start_handler makes: accept the hand-off, then
 * poll + read one message + pread + UFFDIO_COPY (block), or the same spinning
 * on a non-blocking read (busy). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fault_bench.h"
#include "lazyvm/fc_handshake.h"

static void floor_fail(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void floor_fail(const char *name, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "fault_bench: %s handler: %s\n", name, msg);
	_exit(1);
}

/* Accepts one connection on g.sock_path and receives the hand-off. */
static int floor_accept(const char *name, struct fc_handshake *hs, int *conn_out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char *buf = malloc(FC_HANDSHAKE_MAX_BYTES + 1), err[320];
	size_t len = 0, end;
	int lfd, conn, uffd = -1, c;

	if (!buf)
		floor_fail(name, "out of memory");
	strcpy(sa.sun_path, g.sock_path); /* length checked at start-up */
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0)
		floor_fail(name, "cannot listen on %s: %s", g.sock_path, strerror(errno));
	do
		conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	while (conn < 0 && errno == EINTR);
	if (conn < 0)
		floor_fail(name, "accept: %s", strerror(errno));
	close(lfd);
	while ((c = fc_json_next(buf, len, &end)) == 0) {
		union {
			char b[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} ctrl;
		struct iovec iov = {.iov_base = buf + len,
		                    .iov_len = FC_HANDSHAKE_MAX_BYTES + 1 - len};
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = ctrl.b,
		                    .msg_controllen = sizeof(ctrl.b)};
		ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			floor_fail(name, "reading the hand-off: %s",
			           n ? strerror(errno) : "end of file");
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && uffd < 0)
				memcpy(&uffd, CMSG_DATA(cm), sizeof(int));
		len += (size_t)n;
		if (len > FC_HANDSHAKE_MAX_BYTES)
			floor_fail(name, "hand-off larger than %u bytes", FC_HANDSHAKE_MAX_BYTES);
	}
	if (c < 0)
		floor_fail(name, "the hand-off is not JSON");
	if (fc_handshake_parse(buf, end, g.file_size, hs, err, sizeof(err)) < 0)
		floor_fail(name, "bad hand-off: %s", err);
	if (uffd < 0)
		floor_fail(name, "the hand-off carried no file descriptor");
	for (size_t i = 0; i < hs->nregions; i++)
		if (hs->regions[i].page_size != PAGE)
			floor_fail(name, "only 4 KiB pages are supported");
	free(buf);
	*conn_out = conn;
	return uffd;
}

/* The client closed the connection (it destroyed its VM, or exited). */
static bool floor_peer_gone(int conn)
{
	char c;
	ssize_t n = recv(conn, &c, 1, MSG_DONTWAIT);

	return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Serves one message: pread the page, UFFDIO_COPY it. Returns false when the
 * address space is gone. */
static bool floor_serve(const char *name, const struct fc_handshake *hs, int uffd, int mem_fd,
                        const struct uffd_msg *msg, unsigned char *page)
{
	uint64_t addr, off = UINT64_MAX;

	if (msg->event != UFFD_EVENT_PAGEFAULT)
		return true; /* reading a non-fault event is all the kernel needs */
	addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	for (size_t i = 0; i < hs->nregions; i++)
		if (addr - hs->regions[i].base_host_virt_addr < hs->regions[i].size)
			off = hs->regions[i].offset + (addr - hs->regions[i].base_host_virt_addr);
	if (off == UINT64_MAX)
		floor_fail(name, "fault at 0x%" PRIx64 " outside every region", addr);
	if (pread(mem_fd, page, PAGE, (off_t)off) != PAGE)
		floor_fail(name, "pread of the memory file at %" PRIu64 " failed", off);

	struct uffdio_copy cp = {.dst = addr, .src = (uint64_t)(uintptr_t)page, .len = PAGE};
	if (ioctl(uffd, UFFDIO_COPY, &cp) == 0)
		return true;
	if (errno == EEXIST || errno == EAGAIN) {
		/* Already there, or the mm is changing: wake the waiter, it retries. */
		struct uffdio_range r = {.start = addr, .len = PAGE};
		ioctl(uffd, UFFDIO_WAKE, &r);
		return true;
	}
	if (errno == ESRCH || errno == ENOENT || errno == ENOSPC)
		return false;
	floor_fail(name, "UFFDIO_COPY at 0x%" PRIx64 ": %s", addr, strerror(errno));
}

void floor_main(const struct variant *v)
{
	static unsigned char page[PAGE] __attribute__((aligned(PAGE)));
	struct fc_handshake hs;
	struct uffd_msg msg;
	int conn, uffd = floor_accept(v->name, &hs, &conn);
	int mem_fd = open(g.mem_path, O_RDONLY | O_CLOEXEC);

	if (mem_fd < 0)
		floor_fail(v->name, "cannot open %s: %s", g.mem_path, strerror(errno));
	if (v->intake == BLOCK) {
		struct pollfd p[2] = {{.fd = uffd, .events = POLLIN},
		                      {.fd = conn, .events = POLLIN}};

		for (;;) {
			if (poll(p, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				floor_fail(v->name, "poll: %s", strerror(errno));
			}
			if (p[0].revents & POLLIN) {
				ssize_t n = read(uffd, &msg, sizeof(msg));

				if (n == (ssize_t)sizeof(msg)) {
					if (!floor_serve(v->name, &hs, uffd, mem_fd, &msg, page))
						_exit(0);
				} else if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
					floor_fail(v->name, "reading the userfaultfd: %s",
					           n < 0 ? strerror(errno) : "short read");
				}
			} else if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
				floor_fail(v->name,
				           "the userfaultfd reports an error (revents 0x%x)",
				           p[0].revents);
			}
			if (p[1].revents && floor_peer_gone(conn))
				_exit(0);
		}
	}
	for (unsigned empty = 0;;) {
		ssize_t n = read(uffd, &msg, sizeof(msg)); /* the UFFD is O_NONBLOCK */

		if (n == (ssize_t)sizeof(msg)) {
			if (!floor_serve(v->name, &hs, uffd, mem_fd, &msg, page))
				_exit(0);
			continue;
		}
		if (n >= 0 || (errno != EAGAIN && errno != EINTR))
			floor_fail(v->name, "reading the userfaultfd: %s",
			           n < 0 ? strerror(errno) : "short read");
		if (++empty % FLOOR_EOF_CHECK == 0 && floor_peer_gone(conn))
			_exit(0);
	}
}
