/* The userfaultfd layer: open and probe, register, read events in batches,
 * install pages, and ONE place that classifies install errors.
 * All calls return 0 (or a count) or -errno. */
#ifndef LAZYVM_UFFD_H
#define LAZYVM_UFFD_H

#include <linux/userfaultfd.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/compat.h"

/* Opens a userfaultfd (O_CLOEXEC | O_NONBLOCK), through /dev/userfaultfd when
 * the syscall is refused to unprivileged users, and runs UFFDIO_API asking for
 * `features`. On -EINVAL from the kernel (a feature it lacks) the missing
 * features are named in `why` (may be NULL). *supported gets every feature the
 * kernel offers (may be NULL). */
int uffd_open(uint64_t features, uint64_t *supported, char *why, size_t whylen);

/* Writes the names of the feature bits in `mask` ("EVENT_REMOVE MISSING_HUGETLBFS").*/
void uffd_feature_names(uint64_t mask, char *buf, size_t len);

/* Registers [addr, addr + len) with `mode` (UFFDIO_REGISTER_MODE_*) and checks
 * that the returned ioctl mask holds every bit of `need_ioctls` (1 << _UFFDIO_*);
 * if not, returns -EOPNOTSUPP with the missing ioctls named in `why`. */
int uffd_register(int fd, uint64_t addr, uint64_t len, uint64_t mode, uint64_t need_ioctls,
                  char *why, size_t whylen);
int uffd_unregister(int fd, uint64_t addr, uint64_t len);

/* Reads up to `max` messages without blocking: returns how many (0 = none
 * pending), or -errno. */
int uffd_read_events(int fd, struct uffd_msg *msgs, unsigned max);

/* Installs `len` bytes from `src` at `dst` (UFFDIO_COPY), zeros (UFFDIO_ZEROPAGE),
 * or the page cache's page (UFFDIO_CONTINUE), waking the faulting threads.
 * A partial copy is continued. Return -errno as the kernel gave it: pass it to
 * uffd_classify(). */
int uffd_copy(int fd, uint64_t dst, const void *src, uint64_t len);
int uffd_zeropage(int fd, uint64_t dst, uint64_t len);
int uffd_continue(int fd, uint64_t dst, uint64_t len);
int uffd_wake(int fd, uint64_t addr, uint64_t len);

enum uffd_outcome {
	UFFD_DONE,   /* installed */
	UFFD_EXISTS, /* already there (EEXIST): still wake the waiters */
	UFFD_RETRY,  /* EAGAIN: mm changing or an event pending: drain events, retry */
	UFFD_GONE,   /* ESRCH/ENOSPC: the target process or mapping is gone */
	UFFD_FATAL,  /* anything else: a bug or a broken peer; report with context */
};

/* The one classification of an install result (0 or -errno). */
enum uffd_outcome uffd_classify(int err);
const char *uffd_outcome_name(enum uffd_outcome o);

/* Is `fd` a userfaultfd? 1 yes, 0 no, -errno. Needs no /proc (see uffd.c). */
int uffd_fd_check(int fd);

/* What kind of file `fd` is, in words, for an error message ("anon_inode:
 * [eventfd]" where /proc says, "a regular file of 4096 bytes" otherwise). */
const char *uffd_fd_kind(int fd, char *buf, size_t len);

#endif
