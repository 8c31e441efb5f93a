/* Opening files by path without blocking, and writing a whole buffer to a
 * file or a socket. */
#ifndef LAZYVM_FDIO_H
#define LAZYVM_FDIO_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Writes all len bytes (retrying short writes and EINTR). On a socket it
 * sends with MSG_NOSIGNAL, so a peer that went away is -EPIPE, never a
 * SIGPIPE. 0 or -errno. */
int lv_write_all(int fd, const void *buf, size_t len);

enum {
	LV_OPEN_BLOCKDEV = 1u << 0, /* lv_open_input: a block device will do too */
};

/* Opens an input file by path: read-only and close-on-exec. The open never
 * blocks (it is O_NONBLOCK: a FIFO would wait for a writer for ever, and a
 * process blocked in open cannot even take its SIGTERM), and anything but a
 * regular file (with LV_OPEN_BLOCKDEV, or a block device) is refused before a
 * byte is read: a directory, FIFO, socket or character device. Devices are
 * refused from a stat() before the open, so opening one has no side effects.
 * O_NONBLOCK is cleared again before returning. Returns the fd, its fstat in
 * *st (when st is not NULL), or -errno: -EINVAL for an empty path or a file of
 * the wrong kind, -EISDIR for a directory, else open(2)'s error; `why` (whylen
 * >= 1) then names the path and says what it is ("/x/memory is a FIFO, not a
 * regular file"). */
int lv_open_input(const char *path, unsigned flags, struct stat *st, char *why, size_t whylen);

/* Creates or truncates an output file: write-only, close-on-exec, `mode` for a
 * new one. An existing file of another kind is refused as lv_open_input does
 * (a FIFO would block the open until a reader came). Returns the fd or -errno
 * with `why` naming the path and the reason. */
int lv_open_output(const char *path, mode_t mode, char *why, size_t whylen);

/* "a directory", "a FIFO", "a socket", "a character device", "a block device",
 * "a regular file", ...: the kind of file st_mode names, for messages. */
const char *lv_file_kind(mode_t mode);

#endif
