#include "lazyvm/uffd.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct {
	uint64_t bit;
	const char *name;
} feature_names[] = {
    {UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"},
    {UFFD_FEATURE_EVENT_FORK, "EVENT_FORK"},
    {UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP"},
    {UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE"},
    {UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS"},
    {UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM"},
    {UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP"},
    {UFFD_FEATURE_SIGBUS, "SIGBUS"},
    {UFFD_FEATURE_THREAD_ID, "THREAD_ID"},
    {UFFD_FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS"},
    {UFFD_FEATURE_MINOR_SHMEM, "MINOR_SHMEM"},
    {UFFD_FEATURE_EXACT_ADDRESS, "EXACT_ADDRESS"},
    {UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"},
    {UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"},
    {UFFD_FEATURE_POISON, "POISON"},
    {UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"},
    {UFFD_FEATURE_MOVE, "MOVE"},
};

static const char *const ioctl_names[64] = {
    [_UFFDIO_REGISTER] = "REGISTER", [_UFFDIO_UNREGISTER] = "UNREGISTER",
    [_UFFDIO_WAKE] = "WAKE",         [_UFFDIO_COPY] = "COPY",
    [_UFFDIO_ZEROPAGE] = "ZEROPAGE", [_UFFDIO_WRITEPROTECT] = "WRITEPROTECT",
    [_UFFDIO_CONTINUE] = "CONTINUE", [_UFFDIO_API] = "API",
};

static void append(char *buf, size_t len, size_t *pos, const char *word)
{
	int n = snprintf(buf + *pos, len - *pos, "%s%s", *pos ? " " : "", word);

	if (n > 0 && (size_t)n < len - *pos)
		*pos += (size_t)n;
}

void uffd_feature_names(uint64_t mask, char *buf, size_t len)
{
	size_t pos = 0;

	if (!len)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++)
		if (mask & feature_names[i].bit) {
			append(buf, len, &pos, feature_names[i].name);
			mask &= ~feature_names[i].bit;
		}
	if (mask) {
		char unknown[32];

		snprintf(unknown, sizeof(unknown), "0x%llx", (unsigned long long)mask);
		append(buf, len, &pos, unknown);
	}
}

static int uffd_create_fd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd >= 0)
		return fd;
	/* vm.unprivileged_userfaultfd=0 refuses the syscall to the unprivileged;
	 * the device node (5.11+) is the sanctioned way around that. */
	if (errno == EPERM || errno == ENOSYS) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev < 0)
			return -errno;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		int saved = errno;
		close(dev);
		return fd < 0 ? -saved : fd;
	}
	return -errno;
}

int uffd_open(uint64_t features, uint64_t *supported, char *why, size_t whylen)
{
	struct uffdio_api api = {.api = UFFD_API, .features = 0};
	int fd, r;

	if (why && whylen)
		why[0] = '\0';
	/* Probe with features = 0 first: the kernel then reports all it has, and
	 * the API handshake may be done only once per fd. */
	fd = uffd_create_fd();
	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	close(fd);
	if (supported)
		*supported = api.features;
	if (features & ~api.features) {
		if (why) {
			char names[256];

			uffd_feature_names(features & ~api.features, names, sizeof(names));
			snprintf(why, whylen, "kernel lacks userfaultfd feature(s): %s", names);
		}
		return -EOPNOTSUPP;
	}
	fd = uffd_create_fd();
	if (fd < 0)
		return fd;
	api = (struct uffdio_api){.api = UFFD_API, .features = features};
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

int uffd_register(int fd, uint64_t addr, uint64_t len, uint64_t mode, uint64_t need_ioctls,
                  char *why, size_t whylen)
{
	struct uffdio_register reg = {.range = {.start = addr, .len = len}, .mode = mode};
	uint64_t missing;

	if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	missing = need_ioctls & ~reg.ioctls;
	if (missing) {
		size_t pos = 0;

		if (why && whylen) {
			why[0] = '\0';
			for (unsigned b = 0; b < 64; b++)
				if (missing & (1ull << b))
					append(why, whylen, &pos,
					       ioctl_names[b] ? ioctl_names[b] : "?");
		}
		uffd_unregister(fd, addr, len);
		return -EOPNOTSUPP;
	}
	return 0;
}

int uffd_unregister(int fd, uint64_t addr, uint64_t len)
{
	struct uffdio_range range = {.start = addr, .len = len};

	return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

int uffd_read_events(int fd, struct uffd_msg *msgs, unsigned max)
{
	for (;;) {
		ssize_t n = read(fd, msgs, sizeof(*msgs) * max);

		if (n >= 0)
			return (int)((size_t)n / sizeof(*msgs));
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? 0 : -errno;
	}
}

int uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len)
{
	uint64_t done = 0;

	while (done < len) {
		struct uffdio_copy c = {
		    .dst = dst + done, .src = (uint64_t)(uintptr_t)src + done, .len = len - done};

		if (ioctl(fd, UFFDIO_COPY, &c) == 0)
			return 0;
		/* The kernel reports progress in c.copy; keep going after a partial copy
		 * (e.g. interrupted by a signal), return the error otherwise. */
		if (c.copy > 0) {
			done += (uint64_t)c.copy;
			continue;
		}
		return c.copy < 0 ? (int)c.copy : -errno;
	}
	return 0;
}

/* UFFDIO_ZEROPAGE and UFFDIO_CONTINUE take the same layout: a range, a mode
 * and the bytes done (or -errno); one loop continues both after partial work. */
struct range_op {
	struct uffdio_range range;
	__u64 mode;
	__s64 done;
};
_Static_assert(sizeof(struct range_op) == sizeof(struct uffdio_zeropage) &&
                   offsetof(struct range_op, done) == offsetof(struct uffdio_zeropage, zeropage) &&
                   sizeof(struct range_op) == sizeof(struct uffdio_continue) &&
                   offsetof(struct range_op, done) == offsetof(struct uffdio_continue, mapped),
               "UFFDIO_ZEROPAGE and UFFDIO_CONTINUE layouts");

static int range_op(int fd, unsigned long req, uint64_t dst, uint64_t len)
{
	uint64_t done = 0;

	while (done < len) {
		struct range_op op = {.range = {.start = dst + done, .len = len - done}};

		if (ioctl(fd, req, &op) == 0)
			return 0;
		if (op.done > 0) {
			done += (uint64_t)op.done;
			continue;
		}
		return op.done < 0 ? (int)op.done : -errno;
	}
	return 0;
}

int uffd_zeropage(int fd, uint64_t dst, uint64_t len)
{
	return range_op(fd, UFFDIO_ZEROPAGE, dst, len);
}

int uffd_continue(int fd, uint64_t dst, uint64_t len)
{
	return range_op(fd, UFFDIO_CONTINUE, dst, len);
}

int uffd_wake(int fd, uint64_t addr, uint64_t len)
{
	struct uffdio_range range = {.start = addr, .len = len};

	return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? -errno : 0;
}

enum uffd_outcome uffd_classify(int err)
{
	switch (err) {
	case 0: return UFFD_DONE;
	case -EEXIST: return UFFD_EXISTS;
	case -EAGAIN: return UFFD_RETRY;
	case -ESRCH:  /* the mm is gone: the process exited */
	case -ENOSPC: /* the mapping is gone (older kernels said ENOENT for this) */
		return UFFD_GONE;
	default: return UFFD_FATAL;
	}
}

const char *uffd_outcome_name(enum uffd_outcome o)
{
	static const char *const names[] = {"done", "exists", "retry", "gone", "fatal"};

	return names[o];
}

/* Without /proc (a jail has none): the file must live on the anonymous-inode
 * file system, and answer a userfaultfd's own ioctl as only a userfaultfd
 * does. UFFDIO_WAKE of an empty range is refused with EINVAL by every
 * userfaultfd (before UFFDIO_API too) and wakes nothing; the other files there
 * (eventfd, epoll, signalfd, timerfd, io_uring, KVM, guest_memfd) do not know
 * the 0xAA ioctls and say ENOTTY. */
int uffd_fd_check(int fd)
{
	struct uffdio_range empty = {0, 0};
	struct statfs sf;

	if (fstatfs(fd, &sf) < 0)
		return -errno;
	if (sf.f_type != ANON_INODE_FS_MAGIC)
		return 0;
	return ioctl(fd, UFFDIO_WAKE, &empty) < 0 && errno == EINVAL;
}

const char *uffd_fd_kind(int fd, char *buf, size_t len)
{
	char path[64];
	struct stat st;
	struct statfs sf;
	ssize_t n;

	/* /proc names the file best, when there is one. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, buf, len - 1);
	if (n > 0) {
		buf[n] = '\0';
		return buf;
	}
	if (fstat(fd, &st) < 0) {
		snprintf(buf, len, "unknown: %s", strerror(errno));
		return buf;
	}
	if (fstatfs(fd, &sf) == 0 && sf.f_type == ANON_INODE_FS_MAGIC)
		snprintf(buf, len, "an anonymous-inode file such as an eventfd");
	else if (S_ISREG(st.st_mode))
		snprintf(buf, len, "a regular file of %lld bytes", (long long)st.st_size);
	else if (S_ISCHR(st.st_mode))
		snprintf(buf, len, "a character device");
	else if (S_ISSOCK(st.st_mode))
		snprintf(buf, len, "a socket");
	else if (S_ISFIFO(st.st_mode))
		snprintf(buf, len, "a pipe");
	else if (S_ISDIR(st.st_mode))
		snprintf(buf, len, "a directory");
	else
		snprintf(buf, len, "a file of type 0%o", st.st_mode & S_IFMT);
	return buf;
}
