/* SPDX-License-Identifier: GPL-2.0-only */
/* What the kernel-side tests share, in the manner of KVM's selftests. */
#ifndef LAZYVM_KVM_TEST_H
#define LAZYVM_KVM_TEST_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <linux/kvm.h>

/* A failed check prints the expression, file and line, and exits 1. */
#define TEST_ASSERT(cond, fmt, ...)                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: FAILED: %s: " fmt " (errno %d %s)\n", __FILE__,    \
			        __LINE__, #cond, ##__VA_ARGS__, errno, strerror(errno));           \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

/* vCPU 0 of VM fd vm, with its kvm_run mapped. */
static inline int vcpu_create_mapped(int kvm, int vm, struct kvm_run **run)
{
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	int size;

	TEST_ASSERT(vcpu >= 0, "KVM_CREATE_VCPU");
	size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	TEST_ASSERT(size > 0, "KVM_GET_VCPU_MMAP_SIZE");
	*run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	TEST_ASSERT(*run != MAP_FAILED, "mmap kvm_run");
	return vcpu;
}

#endif
