/* Kernel constants newer than the Linux 6.1 headers installed on our build
 * machines. Every such constant lives here and nowhere else; each is guarded so
 * that newer headers win. */
#ifndef LAZYVM_COMPAT_H
#define LAZYVM_COMPAT_H

#include <linux/userfaultfd.h>
#include <sys/socket.h>

/* userfaultfd features after 6.1 (include/uapi/linux/userfaultfd.h). */
#ifndef UFFD_FEATURE_EXACT_ADDRESS
#define UFFD_FEATURE_EXACT_ADDRESS (1 << 11)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* 6.4 */
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14) /* 6.6 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15) /* 6.7 */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16) /* 6.8 */
#endif

/* /dev/userfaultfd (6.1 has the device, but not every libc header names it). */
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* SO_PEERPIDFD (6.5): a pidfd for the peer of a unix socket, race-free. */
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* A spin-wait hint. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#endif
}

#endif
