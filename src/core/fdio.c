/* lv_write_all, lv_open_input, lv_open_output (include/lazyvm/fdio.h). */
#include "lazyvm/fdio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int lv_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	bool sock = true;

	while (len) {
		ssize_t n = sock ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);
		if (n < 0) {
			if (errno == ENOTSOCK && sock) {
				sock = false;
				continue;
			}
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

const char *lv_file_kind(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return "a regular file";
	case S_IFDIR: return "a directory";
	case S_IFIFO: return "a FIFO";
	case S_IFSOCK: return "a socket";
	case S_IFCHR: return "a character device";
	case S_IFBLK: return "a block device";
	case S_IFLNK: return "a symbolic link";
	default: return "a file of unknown kind";
	}
}

/* 0 when st is a kind of file we read or write, else -errno with why. */
static int check_kind(const char *path, const struct stat *st, bool blockdev, char *why,
                      size_t whylen)
{
	if (S_ISREG(st->st_mode) || (blockdev && S_ISBLK(st->st_mode)))
		return 0;
	snprintf(why, whylen, "%s is %s, not a regular file%s", path, lv_file_kind(st->st_mode),
	         blockdev ? " or block device" : "");
	return S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
}

/* Clears O_NONBLOCK (wanted for the open only); 0 or -errno with why. */
static int make_blocking(int fd, const char *path, char *why, size_t whylen)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		snprintf(why, whylen, "%s: fcntl: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

/* Both opens: never blocking (O_NONBLOCK, cleared once the file is known to
 * be regular), close-on-exec, refusing any other kind of file. A device is
 * refused from a stat() before it is opened, so the open has no side effects;
 * the fstat after it closes the race with a file replaced in between. */
static int open_checked(const char *path, int oflags, mode_t mode, bool blockdev, struct stat *st,
                        char *why, size_t whylen)
{
	struct stat s;
	int fd, r;

	if (!path || !*path) {
		snprintf(why, whylen, "empty file name");
		return -EINVAL;
	}
	if (stat(path, &s) == 0 && (r = check_kind(path, &s, blockdev, why, whylen)) < 0)
		return r;
	fd = open(path, oflags | O_CLOEXEC | O_NONBLOCK, mode);
	if (fd < 0) {
		r = -errno;
		snprintf(why, whylen, "cannot %s %s: %s", oflags & O_CREAT ? "create" : "open",
		         path, strerror(errno));
		return r;
	}
	if (fstat(fd, &s) < 0) {
		r = -errno;
		snprintf(why, whylen, "%s: fstat: %s", path, strerror(errno));
		goto err;
	}
	if ((r = check_kind(path, &s, blockdev, why, whylen)) < 0 ||
	    (r = make_blocking(fd, path, why, whylen)) < 0)
		goto err;
	if (st)
		*st = s;
	return fd;
err:
	close(fd);
	return r;
}

int lv_open_input(const char *path, unsigned flags, struct stat *st, char *why, size_t whylen)
{
	return open_checked(path, O_RDONLY, 0, flags & LV_OPEN_BLOCKDEV, st, why, whylen);
}

int lv_open_output(const char *path, mode_t mode, char *why, size_t whylen)
{
	/* A FIFO that appears after the stat fails with ENXIO (no reader) or is
	 * refused by the fstat, instead of blocking until a reader comes. */
	return open_checked(path, O_WRONLY | O_CREAT | O_TRUNC, mode, false, NULL, why, whylen);
}
