/* Writing a whole buffer to a file or a socket. */
#ifndef LAZYVM_FDIO_H
#define LAZYVM_FDIO_H

#include <stddef.h>

/* Writes all len bytes (retrying short writes and EINTR). On a socket it
 * sends with MSG_NOSIGNAL, so a peer that went away is -EPIPE, never a
 * SIGPIPE. 0 or -errno. */
int lv_write_all(int fd, const void *buf, size_t len);

#endif
