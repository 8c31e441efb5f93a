/* fc-client's hand-off: the JSON each release sends, the fds beside it, and
 * who connects (the VM process itself or a forked child, as the release
 * does). See include/lazyvm/fc_client.h. */

#include "lazyvm/fc_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fdio.h"
#include "lazyvm/uffd.h"

/* exitless_apf:N sends 3 fds a vCPU; fc-client plays up to 32 vCPUs. */
#define FC_CLIENT_MAX_FDS 96

/* Sends `len` bytes with `nfds` fds attached (0 to FC_CLIENT_MAX_FDS). */
static int send_with_fds(int sock, const char *buf, size_t len, const int *fds, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(FC_CLIENT_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

	if (nfds > FC_CLIENT_MAX_FDS)
		return -E2BIG;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (nfds)
		fc_attach_fds(&mh, ctrl.buf, fds, nfds);
	while (len) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		/* Only the first chunk carries the fds. */
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		iov.iov_base = (char *)iov.iov_base + n;
		iov.iov_len -= (size_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* Inserts `text` right after every region's opening brace. */
static int insert_in_regions(char *buf, size_t cap, int n, const char *text)
{
	size_t add = strlen(text);

	for (char *p = buf; (p = strchr(p, '{'));) {
		if ((size_t)n + add + 1 > cap)
			return -ENOSPC;
		memmove(p + 1 + add, p + 1, (size_t)n - (size_t)(p + 1 - buf) + 1);
		memcpy(p + 1, text, add);
		n += (int)add;
		p += 1 + add;
	}
	return n;
}

/* Builds the JSON, correct or broken on purpose. Returns a malloc'd string. */
static char *build_json(const struct fc_vm *vm, enum fc_bad bad, size_t *len)
{
	static const enum fc_shape shapes[FC_VERSION_COUNT] = {
	    [FC_V1_4] = FC_SHAPE_V1_4,
	    [FC_V1_7] = FC_SHAPE_V1_7,
	    [FC_V1_12] = FC_SHAPE_V1_12,
	    [FC_V_MAIN] = FC_SHAPE_V1_12,
	    [FC_V_SECRET_HIDING] = FC_SHAPE_SECRET_HIDING,
	};
	struct fc_region regs[16];
	size_t cap = FC_HANDSHAKE_MAX_BYTES + 4096;
	char *buf = malloc(cap);
	int n;

	if (!buf)
		return NULL;
	memcpy(regs, vm->regions, sizeof(regs));
	if (bad == FC_BAD_OVERLAP && vm->nregions > 1)
		regs[1].base_host_virt_addr = regs[0].base_host_virt_addr;
	if (bad == FC_BAD_BEYOND_FILE)
		regs[vm->nregions - 1].size += vm->page_size;
	if (bad == FC_BAD_UNALIGNED)
		regs[0].base_host_virt_addr += 512;
	n = fc_handshake_format(regs, vm->nregions, shapes[vm->cfg.version], buf, cap);
	if (n >= 0 && vm->cfg.unknown_fields)
		n = insert_in_regions(buf, cap, n,
		                      "\"memory_slot\":3,\"tags\":{\"a\":[1,\"x\",null]},"
		                      "\"ratio\":-0.5,");
	if (n >= 0 && bad == FC_BAD_WRONG_TYPE) {
		char *p = strstr(buf, "\"size\":");
		char *end = p ? p + 7 + strspn(p + 7, "0123456789") : NULL;

		if (p && (size_t)n + 3 < cap) {
			memmove(end + 1, end, strlen(end) + 1);
			*end = '"';
			memmove(p + 8, p + 7, strlen(p + 7) + 1);
			p[7] = '"';
			n += 2;
		}
	}
	if (n < 0) {
		free(buf);
		return NULL;
	}
	if (bad == FC_BAD_GARBAGE)
		n = snprintf(buf, cap, "GET /snapshot HTTP/1.1\r\n\r\n");
	if (bad == FC_BAD_TRUNCATED)
		n /= 2;
	if (bad == FC_BAD_OVERSIZED) {
		/* Valid JSON that is simply too big: white space inside the array. */
		memmove(buf + FC_HANDSHAKE_MAX_BYTES, buf + 1, (size_t)n);
		memset(buf + 1, ' ', FC_HANDSHAKE_MAX_BYTES - 1);
		n += FC_HANDSHAKE_MAX_BYTES - 1;
	}
	*len = (size_t)n;
	return buf;
}

static int replace_uffd(struct fc_vm *vm, uint64_t extra, bool blocking, char *why, size_t whylen)
{
	int fd = fc_client_open_uffd(vm, vm->features | extra, why, whylen), r;

	if (fd < 0)
		return fd;
	if (blocking && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		r = -errno;
		snprintf(why, whylen, "clearing O_NONBLOCK: %s", strerror(errno));
		close(fd);
		return r;
	}
	for (unsigned i = 0; i < vm->nregions; i++) {
		const struct fc_region *g = &vm->regions[i];

		uffd_unregister(vm->uffd, g->base_host_virt_addr, g->size);
		r = uffd_register(fd, g->base_host_virt_addr, g->size, UFFDIO_REGISTER_MODE_MISSING,
		                  0, why, whylen);
		if (r < 0) {
			snprintf(why, whylen, "registering region %u again: %s", i, strerror(-r));
			close(fd);
			return r;
		}
	}
	close(vm->uffd);
	vm->uffd = fd;
	return 0;
}

static int handoff_self(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, char *why,
                        size_t whylen);

/* The hand-off from a forked child (see enum fc_connector). The child reports
 * its result as one byte (0 ok, else errno), then waits on the lifeline or
 * exits; the parent keeps the memory and the userfaultfd. */
static int handoff_child(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, char *why,
                         size_t whylen)
{
	int status[2], life[2], r;
	unsigned char res = 0;
	pid_t pid;

	if (pipe2(status, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(life, O_CLOEXEC) < 0) {
		r = -errno;
		close(status[0]);
		close(status[1]);
		return r;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		r = -errno;
		snprintf(why, whylen, "fork: %s", strerror(errno));
		close(status[0]);
		close(status[1]);
		close(life[0]);
		close(life[1]);
		return r;
	}
	if (pid == 0) {
		char c;

		close(status[0]);
		close(life[1]);
		r = handoff_self(vm, socket_path, bad, why, whylen);
		res = (unsigned char)(r < 0 ? -r : 0);
		if (write(status[1], &res, 1) < 0)
			_exit(1);
		if (vm->connector == FC_CONNECTOR_CHILD)
			while (read(life[0], &c, 1) < 0 && errno == EINTR)
				;
		_exit(0);
	}
	close(status[1]);
	close(life[0]);
	vm->child = pid;
	vm->lifeline = life[1];
	r = (int)read(status[0], &res, 1);
	close(status[0]);
	if (r != 1) {
		snprintf(why, whylen, "the connecting child %d died before reporting", (int)pid);
		return -EIO;
	}
	if (res) {
		snprintf(why, whylen, "the connecting child %d: %s", (int)pid, strerror(res));
		return -(int)res;
	}
	return 0;
}

int fc_vm_handoff(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, char *why,
                  size_t whylen)
{
	int r;

	if (bad == FC_BAD_BLOCKING || bad == FC_BAD_EVENT_FORK) {
		r = replace_uffd(vm, bad == FC_BAD_EVENT_FORK ? UFFD_FEATURE_EVENT_FORK : 0,
		                 bad == FC_BAD_BLOCKING, why, whylen);
		if (r < 0)
			return r;
	}
	if (vm->connector != FC_CONNECTOR_SELF)
		r = handoff_child(vm, socket_path, bad, why, whylen);
	else
		r = handoff_self(vm, socket_path, bad, why, whylen);
	if (r < 0 || bad != FC_BAD_NONE)
		return r;
	/* What the release does next. Before v1.12 the socket is dropped as soon
	 * as the message is out; since, it is kept (and never used again). */
	if (vm->cfg.version <= FC_V1_7 && vm->sock >= 0) {
		close(vm->sock);
		vm->sock = -1;
	}
	/* v1.14's restore makes unplugged slots PROT_NONE after the hand-off. */
	for (unsigned i = 0; i < vm->nholes; i++)
		if (mprotect((void *)(uintptr_t)vm->holes[i].addr, vm->holes[i].len, PROT_NONE) <
		    0) {
			r = -errno;
			snprintf(why, whylen, "protecting the unplugged slot: %s", strerror(errno));
			return r;
		}
	return 0;
}

int fc_vm_clear_nonblock(struct fc_vm *vm)
{
	int fl = fcntl(vm->uffd, F_GETFL);

	if (fl < 0 || fcntl(vm->uffd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* The secret-hiding branch's fds: the userfaultfd, then for a guest_memfd VM
 * the guest_memfd and the userfault bitmap's memfd. A guest_memfd needs a
 * KVM VM; plain memfds stand in for both (a handler that refuses guest_memfd
 * memory, as lazyvm does, never uses them). */
static unsigned handoff_fds(const struct fc_vm *vm, enum fc_bad bad, int fds[3])
{
	fds[0] = bad == FC_BAD_NOT_UFFD ? vm->mem_fd : vm->uffd;
	if (bad == FC_BAD_NO_FD)
		return 0;
	if (bad == FC_BAD_TWO_FDS) {
		fds[1] = vm->uffd;
		return 2;
	}
	if (!vm->cfg.guest_memfd)
		return 1;
	fds[1] = memfd_create("guest_memfd stand-in", MFD_CLOEXEC);
	fds[2] = memfd_create("userfault bitmap stand-in", MFD_CLOEXEC);
	return fds[1] < 0 || fds[2] < 0 ? 1 : 3;
}

/* "exitless_apf:N" and, for each vCPU, its notify eventfd, complete eventfd
 * and vCPU fd (eventfds stand in for the vCPU fds: there is no KVM VM here). */
static int send_exitless_apf(struct fc_vm *vm)
{
	unsigned n = vm->cfg.exitless_apf, nfds = 3 * n;
	int *fds = calloc(nfds, sizeof(int)), r = 0;
	char text[32];

	if (!fds)
		return -ENOMEM;
	for (unsigned i = 0; i < nfds && !r; i++)
		if ((fds[i] = eventfd(0, EFD_CLOEXEC)) < 0)
			r = -errno;
	snprintf(text, sizeof(text), "exitless_apf:%u", n);
	if (!r)
		r = send_with_fds(vm->sock, text, strlen(text), fds, nfds);
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] > 0)
			close(fds[i]);
	free(fds);
	return r;
}

static int handoff_self(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, char *why,
                        size_t whylen)
{
	/* secret-hiding: "no_exitless_apf" follows the hand-off (the other
	 * answer, "exitless_apf:N", carries three fds per vCPU). */
	static const char no_apf[] = "no_exitless_apf";
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fds[3] = {-1, -1, -1};
	unsigned nfds;
	size_t len = 0;
	char *json;
	int r;

	if (strlen(socket_path) >= sizeof(sa.sun_path)) {
		snprintf(why, whylen, "socket path too long: %s", socket_path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, socket_path);
	vm->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (vm->sock < 0 || connect(vm->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		snprintf(why, whylen, "cannot connect to %s: %s", socket_path, strerror(errno));
		if (vm->sock >= 0)
			close(vm->sock);
		vm->sock = -1;
		return r;
	}
	if (bad == FC_BAD_SILENT)
		return 0;
	json = build_json(vm, bad, &len);
	if (!json) {
		snprintf(why, whylen, "out of memory building the handshake");
		return -ENOMEM;
	}
	nfds = handoff_fds(vm, bad, fds);
	r = send_with_fds(vm->sock, json, len, fds, nfds);
	free(json);
	for (unsigned i = 1; i < nfds; i++)
		if (fds[i] != vm->uffd)
			close(fds[i]);
	/* A handler that refused the hand-off may have closed the socket
	 * already; its reply is still there to read. */
	if (r == 0 && vm->cfg.version == FC_V_SECRET_HIDING && bad == FC_BAD_NONE) {
		r = vm->cfg.exitless_apf
		        ? send_exitless_apf(vm)
		        : send_with_fds(vm->sock, no_apf, sizeof(no_apf) - 1, NULL, 0);
		if (r == -EPIPE || r == -ECONNRESET)
			r = 0;
	}
	if (r < 0) {
		snprintf(why, whylen, "sending the handshake: %s", strerror(-r));
		return r;
	}
	if (bad == FC_BAD_TRUNCATED)
		shutdown(vm->sock, SHUT_WR);
	return 0;
}
