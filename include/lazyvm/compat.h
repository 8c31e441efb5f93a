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

/* madvise: synchronous collapse into transparent huge pages (Linux 6.1; glibc
 * 2.36 lacks the name). */
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* KVM after 6.1: memslots v2 (6.8) and the KVM userfault series (J. Houghton,
 * v1 Dec 2024 .. v3 Jun 2025, not upstream; values from the series). */
#include <linux/kvm.h>
#ifndef KVM_CAP_USER_MEMORY2
#define KVM_CAP_USER_MEMORY2 231
struct kvm_userspace_memory_region2 {
	__u32 slot;
	__u32 flags;
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
	__u64 guest_memfd_offset;
	__u32 guest_memfd;
	__u32 pad1;
	__u64 userfault_bitmap; /* the userfault series; pad2[0] upstream */
	__u64 pad2[13];
};
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#endif
#ifndef KVM_CAP_MEMORY_FAULT_INFO
#define KVM_CAP_MEMORY_FAULT_INFO 232
#endif
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif
#ifndef KVM_MEM_USERFAULT
#define KVM_MEM_USERFAULT (1u << 3)
#endif
/* kvm_run's memory_fault member (6.8+), at the start of the exit union. */
struct lv_kvm_memory_fault {
	__u64 flags;
	__u64 gpa;
	__u64 size;
};
static inline const struct lv_kvm_memory_fault *kvm_run_memory_fault(const struct kvm_run *run)
{
	return (const struct lv_kvm_memory_fault *)(const void *)&run->hw;
}
#ifndef KVM_MEMORY_EXIT_FLAG_USERFAULT
#define KVM_MEMORY_EXIT_FLAG_USERFAULT (1ull << 4)
#endif

/* Async page faults for userfault exits (lazyvm's KVM patches, kernel/; the
 * contract lazyvm and its patches share, after Firecracker's secret-hiding
 * userspace; docs/KERNEL.md). */
#ifndef KVM_MEMORY_EXIT_FLAG_APF
#define KVM_MEMORY_EXIT_FLAG_APF (1ull << 5) /* only with ..._USERFAULT */
#endif
#ifndef KVM_CAP_ASYNC_PF_USERFAULT
#define KVM_CAP_ASYNC_PF_USERFAULT 246 /* exitful: ENABLE_CAP on a vCPU fd */
#endif
#ifndef KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD
#define KVM_CAP_ASYNC_PF_USERFAULT_EVENTFD 247 /* exitless: KVM_SET_APF_EVENTFD */
#endif
#ifndef KVM_ASYNC_PF
struct kvm_async_pf_req {
	__u64 gpa; /* page aligned */
	__u32 op;  /* KVM_APF_OP_* */
	__u32 flags;
	__u64 reserved[2];
};
#define KVM_ASYNC_PF      _IOW(KVMIO, 0xd6, struct kvm_async_pf_req)
#define KVM_APF_OP_ACCEPT 1 /* make the vCPU's last userfault exit async */
#define KVM_APF_OP_READY  2 /* its page is in: KVM injects "page ready" */
struct kvm_apf_eventfd {
	__s32 fd;          /* notify eventfd, -1 off */
	__s32 complete_fd; /* complete eventfd, -1 off */
	__u32 flags;
	__u32 padding;
	__u64 reserved[2];
};
#define KVM_SET_APF_EVENTFD _IOW(KVMIO, 0xd9, struct kvm_apf_eventfd)
#define KVM_APF_PAGE_OFFSET 3 /* mmap(vcpu_fd) page: the notify and complete rings */
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
