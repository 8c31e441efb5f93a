/* The Firecracker-playing client: see include/lazyvm/fc_client.h. */
#include "lazyvm/fc_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lazyvm/fdio.h"
#include "lazyvm/uffd.h"
#include "lazyvm/units.h"

static const char *const bad_names[FC_BAD_COUNT] = {
    [FC_BAD_NO_FD] = "no-fd",           [FC_BAD_TWO_FDS] = "two-fds",
    [FC_BAD_NOT_UFFD] = "not-uffd",     [FC_BAD_GARBAGE] = "garbage",
    [FC_BAD_TRUNCATED] = "truncated",   [FC_BAD_OVERSIZED] = "oversized",
    [FC_BAD_OVERLAP] = "overlap",       [FC_BAD_BEYOND_FILE] = "beyond-file",
    [FC_BAD_UNALIGNED] = "unaligned",   [FC_BAD_UNKNOWN_FIELD] = "unknown-field",
    [FC_BAD_SILENT] = "silent",         [FC_BAD_BLOCKING] = "blocking",
    [FC_BAD_EVENT_FORK] = "event-fork",
};

const char *fc_bad_name(enum fc_bad b)
{
	return b < FC_BAD_COUNT ? bad_names[b] : NULL;
}

int fc_bad_parse(const char *name, enum fc_bad *out)
{
	for (int b = 1; b < FC_BAD_COUNT; b++)
		if (strcmp(name, bad_names[b]) == 0) {
			*out = (enum fc_bad)b;
			return 0;
		}
	return -EINVAL;
}

int fc_vm_create(struct fc_vm *vm, const char *mem_file, unsigned nregions, uint64_t page_size,
                 char *why, size_t whylen)
{
	struct stat st;
	uint64_t pages, per, off = 0;
	int r;

	*vm = (struct fc_vm){
	    .uffd = -1, .mem_fd = -1, .sock = -1, .lifeline = -1, .page_size = page_size};
	if (nregions < 1 || nregions > sizeof(vm->regions) / sizeof(vm->regions[0]) ||
	    (page_size != 4096 && page_size != (2u << 20))) {
		snprintf(why, whylen, "1 to 16 regions of 4 KiB or 2 MiB pages");
		return -EINVAL;
	}
	if ((r = vm->mem_fd = lv_open_input(mem_file, 0, &st, why, whylen)) < 0)
		goto err;
	vm->size = (uint64_t)st.st_size;
	pages = vm->size / page_size;
	if (vm->size % page_size || pages < nregions) {
		snprintf(why, whylen,
		         "memory file %s (%llu bytes) is not %u or more whole %llu-byte pages",
		         mem_file, (unsigned long long)vm->size, nregions,
		         (unsigned long long)page_size);
		r = -EINVAL;
		goto err;
	}
	uint64_t features =
	    UFFD_FEATURE_EVENT_REMOVE | (page_size > 4096 ? UFFD_FEATURE_MISSING_HUGETLBFS : 0);
	vm->uffd = uffd_open(features, NULL, why, whylen);
	if (vm->uffd < 0) {
		r = vm->uffd;
		if (!why[0])
			snprintf(why, whylen, "userfaultfd: %s", strerror(-r));
		goto err;
	}
	/* Like Firecracker: each region its own mapping, registered separately. */
	per = pages / nregions;
	for (unsigned i = 0; i < nregions; i++) {
		uint64_t size =
		    (i == nregions - 1 ? pages - per * (nregions - 1) : per) * page_size;
		int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
		            (page_size > 4096 ? MAP_HUGETLB : 0);
		void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);

		if (p == MAP_FAILED) {
			r = -errno;
			snprintf(why, whylen, "mapping region %u (%llu bytes): %s", i,
			         (unsigned long long)size, strerror(errno));
			goto err;
		}
		vm->regions[i] = (struct fc_region){.base_host_virt_addr = (uint64_t)(uintptr_t)p,
		                                    .size = size,
		                                    .offset = off,
		                                    .page_size = page_size};
		vm->nregions++;
		off += size;
		char missing[64] = "";
		r = uffd_register(vm->uffd, (uint64_t)(uintptr_t)p, size,
		                  UFFDIO_REGISTER_MODE_MISSING, 1ull << _UFFDIO_COPY, missing,
		                  sizeof(missing));
		if (r < 0) {
			snprintf(why, whylen, "registering region %u: %s %s", i, strerror(-r),
			         missing);
			goto err;
		}
	}
	return 0;
err:
	fc_vm_destroy(vm);
	return r;
}

/* Sends `len` bytes with `nfds` fds attached (0, 1 or 2). */
static int send_with_fds(int sock, const char *buf, size_t len, const int *fds, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

	if (nfds) {
		memset(&ctrl, 0, sizeof(ctrl));
		mh.msg_control = ctrl.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
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

/* Builds the JSON, correct or broken on purpose. Returns a malloc'd string. */
static char *build_json(const struct fc_vm *vm, enum fc_bad bad, enum fc_fields fields, size_t *len)
{
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
	n = fc_handshake_format(regs, vm->nregions, buf, cap);
	if (n < 0) {
		free(buf);
		return NULL;
	}
	/* fc_handshake_format writes both fields, as Firecracker 1.x does; older
	 * and newer releases send one of them: strip the other. */
	const char *drop = fields == FC_FIELDS_PAGE_SIZE ? ",\"page_size_kib\":"
	                   : fields == FC_FIELDS_KIB     ? ",\"page_size\":"
	                                                 : NULL;
	for (char *p; drop && (p = strstr(buf, drop));) {
		char *end = p + strlen(drop);
		while (*end >= '0' && *end <= '9')
			end++;
		memmove(p, end, strlen(end) + 1);
	}
	n = (int)strlen(buf);
	if (bad == FC_BAD_UNKNOWN_FIELD) {
		memmove(buf + 2 + 12, buf + 2, (size_t)n - 1); /* after "[{" */
		memcpy(buf + 2, "\"balloon\":1,", 12);
		n += 12;
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

/* Moves every region to a new userfaultfd with `extra` features, blocking
 * when asked: the hand-offs a handler must refuse by their userfaultfd. */
static int replace_uffd(struct fc_vm *vm, uint64_t extra, bool blocking, char *why, size_t whylen)
{
	uint64_t features = UFFD_FEATURE_EVENT_REMOVE | extra |
	                    (vm->page_size > 4096 ? UFFD_FEATURE_MISSING_HUGETLBFS : 0);
	int fd = uffd_open(features, NULL, why, whylen), r;

	if (fd < 0) {
		if (!why[0])
			snprintf(why, whylen, "userfaultfd: %s", strerror(-fd));
		return fd;
	}
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
		                  1ull << _UFFDIO_COPY, why, whylen);
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

static int handoff_self(struct fc_vm *vm, const char *socket_path, enum fc_bad bad,
                        enum fc_fields fields, char *why, size_t whylen);

/* The hand-off from a forked child (see enum fc_connector). The child reports
 * its result as one byte (0 ok, else errno), then waits on the lifeline or
 * exits; the parent keeps the memory and the userfaultfd. */
static int handoff_child(struct fc_vm *vm, const char *socket_path, enum fc_bad bad,
                         enum fc_fields fields, char *why, size_t whylen)
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
		r = handoff_self(vm, socket_path, bad, fields, why, whylen);
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

int fc_vm_handoff(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, enum fc_fields fields,
                  char *why, size_t whylen)
{
	int r;

	if (bad == FC_BAD_BLOCKING || bad == FC_BAD_EVENT_FORK) {
		r = replace_uffd(vm, bad == FC_BAD_EVENT_FORK ? UFFD_FEATURE_EVENT_FORK : 0,
		                 bad == FC_BAD_BLOCKING, why, whylen);
		if (r < 0)
			return r;
	}
	if (vm->connector != FC_CONNECTOR_SELF)
		return handoff_child(vm, socket_path, bad, fields, why, whylen);
	return handoff_self(vm, socket_path, bad, fields, why, whylen);
}

int fc_vm_clear_nonblock(struct fc_vm *vm)
{
	int fl = fcntl(vm->uffd, F_GETFL);

	if (fl < 0 || fcntl(vm->uffd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static int handoff_self(struct fc_vm *vm, const char *socket_path, enum fc_bad bad,
                        enum fc_fields fields, char *why, size_t whylen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fds[2] = {vm->uffd, vm->uffd};
	unsigned nfds = 1;
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
	json = build_json(vm, bad, fields, &len);
	if (!json) {
		snprintf(why, whylen, "out of memory building the handshake");
		return -ENOMEM;
	}
	if (bad == FC_BAD_NO_FD)
		nfds = 0;
	if (bad == FC_BAD_TWO_FDS)
		nfds = 2;
	if (bad == FC_BAD_NOT_UFFD)
		fds[0] = vm->mem_fd;
	r = send_with_fds(vm->sock, json, len, fds, nfds);
	free(json);
	if (r < 0) {
		snprintf(why, whylen, "sending the handshake: %s", strerror(-r));
		return r;
	}
	if (bad == FC_BAD_TRUNCATED)
		shutdown(vm->sock, SHUT_WR);
	return 0;
}

int fc_vm_read_reply(struct fc_vm *vm, char *buf, size_t len, int timeout_ms)
{
	struct pollfd p = {.fd = vm->sock, .events = POLLIN};
	size_t got = 0;

	while (got + 1 < len) {
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		ssize_t n = read(vm->sock, buf + got, len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(buf, '\n', got))
			break;
	}
	buf[got] = '\0';
	return (int)got;
}

struct touch_arg {
	struct fc_vm *vm;
	unsigned seed;
	uint64_t mismatches;
};

/* Page i of the whole memory, whatever region holds it. */
static unsigned char *page_ptr(struct fc_vm *vm, uint64_t i)
{
	uint64_t off = i * vm->page_size;

	for (unsigned r = 0; r < vm->nregions; r++)
		if (off - vm->regions[r].offset < vm->regions[r].size)
			return (unsigned char *)(uintptr_t)vm->regions[r].base_host_virt_addr +
			       (off - vm->regions[r].offset);
	return NULL;
}

static int page_matches(struct fc_vm *vm, uint64_t i, unsigned char *scratch)
{
	if (pread(vm->mem_fd, scratch, vm->page_size, (off_t)(i * vm->page_size)) !=
	    (ssize_t)vm->page_size)
		return 0;
	return memcmp(page_ptr(vm, i), scratch, vm->page_size) == 0;
}

static void *touch_thread(void *p)
{
	struct touch_arg *a = p;
	uint64_t pages = a->vm->size / a->vm->page_size;
	uint64_t *order = malloc(pages * sizeof(*order));
	unsigned char *scratch = malloc(a->vm->page_size);

	if (!order || !scratch) {
		a->mismatches = UINT64_MAX;
		goto out;
	}
	for (uint64_t i = 0; i < pages; i++)
		order[i] = i;
	for (uint64_t i = pages - 1; i > 0; i--) {
		uint64_t j =
		    ((uint64_t)rand_r(&a->seed) << 31 ^ (uint64_t)rand_r(&a->seed)) % (i + 1);
		uint64_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (uint64_t i = 0; i < pages; i++)
		a->mismatches += !page_matches(a->vm, order[i], scratch);
out:
	free(order);
	free(scratch);
	return NULL;
}

int fc_vm_touch_verify(struct fc_vm *vm, unsigned threads, unsigned seed, bool check_remove,
                       struct fc_touch_result *res)
{
	pthread_t th[64];
	struct touch_arg args[64];
	uint64_t pages = vm->size / vm->page_size, t0;
	unsigned char *scratch;
	int r;

	memset(res, 0, sizeof(*res));
	if (threads < 1 || threads > 64)
		return -EINVAL;
	t0 = lv_now_ns();
	for (unsigned i = 0; i < threads; i++) {
		args[i] = (struct touch_arg){.vm = vm, .seed = seed + i * 7919};
		r = -pthread_create(&th[i], NULL, touch_thread, &args[i]);
		if (r < 0) {
			threads = i;
			break;
		}
	}
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		res->mismatches += args[i].mismatches;
	}
	res->touch_s = (double)(lv_now_ns() - t0) / 1e9;
	res->touches = pages * threads;
	if (!check_remove)
		return 0;
	/* A balloon takes back the second quarter of every region. */
	scratch = malloc(vm->page_size);
	if (!scratch)
		return -ENOMEM;
	for (unsigned i = 0; i < vm->nregions; i++) {
		struct fc_region *g = &vm->regions[i];
		uint64_t q = g->size / 4 / vm->page_size * vm->page_size;

		if (!q)
			continue;
		if (madvise((char *)(uintptr_t)g->base_host_virt_addr + q, q, MADV_DONTNEED) < 0) {
			free(scratch);
			return -errno;
		}
		res->removed_pages += q / vm->page_size;
	}
	for (uint64_t p = 0; p < pages; p++) {
		uint64_t off = p * vm->page_size;
		bool removed = false;

		for (unsigned i = 0; i < vm->nregions; i++) {
			struct fc_region *g = &vm->regions[i];
			uint64_t q = g->size / 4 / vm->page_size * vm->page_size;
			if (off - g->offset < g->size)
				removed = off - g->offset >= q && off - g->offset < 2 * q;
		}
		if (!removed) {
			res->mismatches += !page_matches(vm, p, scratch);
			continue;
		}
		const unsigned char *m = page_ptr(vm, p);
		for (uint64_t b = 0; b < vm->page_size; b++)
			if (m[b]) {
				res->nonzero++;
				break;
			}
	}
	free(scratch);
	return 0;
}

void fc_vm_destroy(struct fc_vm *vm)
{
	for (unsigned i = 0; i < vm->nregions; i++)
		munmap((void *)(uintptr_t)vm->regions[i].base_host_virt_addr, vm->regions[i].size);
	vm->nregions = 0;
	if (vm->sock >= 0)
		close(vm->sock);
	if (vm->uffd >= 0)
		close(vm->uffd);
	if (vm->mem_fd >= 0)
		close(vm->mem_fd);
	if (vm->lifeline >= 0)
		close(vm->lifeline); /* a waiting connecting child exits */
	if (vm->child > 0)
		waitpid(vm->child, NULL, 0);
	vm->sock = vm->uffd = vm->mem_fd = vm->lifeline = -1;
	vm->child = 0;
}
