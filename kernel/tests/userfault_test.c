// SPDX-License-Identifier: GPL-2.0-only
/*
 * KVM_MEM_USERFAULT (kernel/patches/0001-0003): a tiny real-mode guest per case,
 * in the manner of KVM's selftests. Every ioctl result is checked; a failed
 * check prints the expression, file and line and exits 1. Exit 0 when every
 * case passed, 77 when the kernel has no KVM_CAP_USERFAULT (stock KVM).
 *
 * The guest: at gpa 0, "mov al, [0x1000]; hlt; jmp 0" (each KVM_RUN reads
 * the data page once and halts). Slot 0 is 2 MiB at gpa 0, so a huge mapping
 * would be possible without the flag.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm_test.h"
#include "lazyvm/compat.h"

#ifndef KVM_CAP_USERFAULT
#define KVM_CAP_USERFAULT 245
#endif

#define MEM_SIZE  (2ul << 20)
#define DATA_GPA  0x1000ul
#define DATA_BYTE 0x5a

struct vm {
	int kvm, fd, vcpu;
	struct kvm_run *run;
	uint8_t *mem;
	unsigned long *bitmap; /* MEM_SIZE / 4096 bits */
};

static int set_region(struct vm *vm, uint32_t flags, uint64_t bitmap)
{
	struct kvm_userspace_memory_region2 r = {.slot = 0,
	                                         .flags = flags,
	                                         .guest_phys_addr = 0,
	                                         .memory_size = MEM_SIZE,
	                                         .userspace_addr = (uint64_t)(uintptr_t)vm->mem,
	                                         .userfault_bitmap = bitmap};

	return ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION2, &r) < 0 ? -errno : 0;
}

static void vm_create(struct vm *vm)
{
	static const uint8_t code[] = {0xa0, 0x00, 0x10, 0xf4, 0xeb, 0xfa};
	struct kvm_sregs sregs;
	struct kvm_regs regs = {.rip = 0, .rflags = 2};

	vm->fd = ioctl(vm->kvm, KVM_CREATE_VM, 0);
	TEST_ASSERT(vm->fd >= 0, "KVM_CREATE_VM");
	/* 2 MiB aligned and THP-backed, so that without the flag KVM maps the
	 * slot with one huge page. */
	uint8_t *raw =
	    mmap(NULL, 2 * MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TEST_ASSERT(raw != MAP_FAILED, "mmap guest memory");
	vm->mem = (uint8_t *)(((uintptr_t)raw + MEM_SIZE - 1) & ~(uintptr_t)(MEM_SIZE - 1));
	madvise(vm->mem, MEM_SIZE, MADV_HUGEPAGE);
	memset(vm->mem, 0, MEM_SIZE);
	memcpy(vm->mem, code, sizeof(code));
	vm->mem[DATA_GPA] = DATA_BYTE;
	vm->bitmap = calloc(MEM_SIZE / 4096 / 64, sizeof(unsigned long));
	TEST_ASSERT(vm->bitmap, "calloc bitmap");
	TEST_ASSERT(set_region(vm, 0, 0) == 0, "plain slot");
	vm->vcpu = vcpu_create_mapped(vm->kvm, vm->fd, &vm->run);
	TEST_ASSERT(ioctl(vm->vcpu, KVM_GET_SREGS, &sregs) == 0, "KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	TEST_ASSERT(ioctl(vm->vcpu, KVM_SET_SREGS, &sregs) == 0, "KVM_SET_SREGS");
	TEST_ASSERT(ioctl(vm->vcpu, KVM_SET_REGS, &regs) == 0, "KVM_SET_REGS");
}

static void vm_destroy(struct vm *vm)
{
	close(vm->vcpu);
	close(vm->fd);
	/* the 2 MiB-aligned mapping sits inside twice its size: leaked to exit */
	free(vm->bitmap);
}

static void set_bit_(unsigned long *b, uint64_t gfn)
{
	b[gfn / 64] |= 1ul << (gfn % 64);
}
static void clear_bit_(unsigned long *b, uint64_t gfn)
{
	b[gfn / 64] &= ~(1ul << (gfn % 64));
}

/* One KVM_RUN that must halt after reading the data byte. */
static void run_to_hlt(struct vm *vm, const char *what)
{
	struct kvm_regs regs;

	TEST_ASSERT(ioctl(vm->vcpu, KVM_RUN, 0) == 0, "%s: KVM_RUN", what);
	TEST_ASSERT(vm->run->exit_reason == KVM_EXIT_HLT, "%s: exit reason %u, want HLT", what,
	            vm->run->exit_reason);
	TEST_ASSERT(ioctl(vm->vcpu, KVM_GET_REGS, &regs) == 0, "KVM_GET_REGS");
	TEST_ASSERT((regs.rax & 0xff) == DATA_BYTE, "%s: guest read 0x%llx", what,
	            (unsigned long long)(regs.rax & 0xff));
}

/* One KVM_RUN that must exit on a userfault at gpa. */
static void run_to_userfault(struct vm *vm, uint64_t gpa, const char *what)
{
	const struct lv_kvm_memory_fault *mf = kvm_run_memory_fault(vm->run);
	int r = ioctl(vm->vcpu, KVM_RUN, 0);

	TEST_ASSERT(r == -1 && errno == EFAULT, "%s: KVM_RUN returned %d, want -1/EFAULT", what, r);
	TEST_ASSERT(vm->run->exit_reason == KVM_EXIT_MEMORY_FAULT, "%s: exit reason %u", what,
	            vm->run->exit_reason);
	TEST_ASSERT(mf->flags & KVM_MEMORY_EXIT_FLAG_USERFAULT, "%s: flags 0x%llx", what,
	            (unsigned long long)mf->flags);
	TEST_ASSERT(mf->gpa == gpa && mf->size == 4096, "%s: gpa 0x%llx size 0x%llx, want 0x%llx",
	            what, (unsigned long long)mf->gpa, (unsigned long long)mf->size,
	            (unsigned long long)gpa);
}

/* A VM statistic by name (KVM_GET_STATS_FD), -1 when KVM has none by it. */
static int64_t vm_stat(struct vm *vm, const char *name)
{
	struct kvm_stats_header h;
	int64_t value = -1;
	int fd = ioctl(vm->fd, KVM_GET_STATS_FD, NULL);

	TEST_ASSERT(fd >= 0, "KVM_GET_STATS_FD");
	TEST_ASSERT(pread(fd, &h, sizeof(h), 0) == sizeof(h), "stats header");
	size_t dsize = sizeof(struct kvm_stats_desc) + h.name_size;
	struct kvm_stats_desc *d = malloc(dsize);

	TEST_ASSERT(d, "malloc");
	for (uint32_t i = 0; i < h.num_desc && value < 0; i++) {
		TEST_ASSERT(pread(fd, d, dsize, h.desc_offset + i * dsize) == (ssize_t)dsize,
		            "stats descriptor %u", i);
		if (strcmp(d->name, name) == 0) {
			uint64_t v;

			TEST_ASSERT(pread(fd, &v, 8, h.data_offset + d->offset) == 8, "stat %s",
			            name);
			value = (int64_t)v;
		}
	}
	free(d);
	close(fd);
	return value;
}

static int passed;
#define CASE(name) printf("userfault_test: case %s\n", name)
#define OK()       (passed++, printf("userfault_test: ok\n"))

int main(void)
{
	struct vm vm = {0};
	uint64_t bm;

	setvbuf(stdout, NULL, _IOLBF, 0);
	vm.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	TEST_ASSERT(vm.kvm >= 0, "open /dev/kvm");
	if (ioctl(vm.kvm, KVM_CHECK_EXTENSION, KVM_CAP_USERFAULT) <= 0) {
		printf("userfault_test: SKIP: no KVM_CAP_USERFAULT (%d): stock KVM\n",
		       KVM_CAP_USERFAULT);
		return 77;
	}
	vm_create(&vm);
	bm = (uint64_t)(uintptr_t)vm.bitmap;

	CASE("a userfault exit for the data page, then the guest runs once the bit is clear");
	run_to_hlt(&vm, "flag off"); /* also maps the data page before the flag */
	set_bit_(vm.bitmap, DATA_GPA >> 12);
	TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, bm) == 0, "flag on");
	/* The page was mapped before: only the zap on enabling makes this exit. */
	run_to_userfault(&vm, DATA_GPA, "mapped before, bit set");
	run_to_userfault(&vm, DATA_GPA, "again, bit still set");
	clear_bit_(vm.bitmap, DATA_GPA >> 12);
	run_to_hlt(&vm, "bit cleared");
	OK();

	CASE("an instruction fetch from a page whose bit is set exits too");
	set_bit_(vm.bitmap, 0);
	set_bit_(vm.bitmap, DATA_GPA >> 12);
	TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, bm + 0) == 0, "same bitmap again");
	/* the same flags and bitmap: nothing changes, so zap by switching off and on */
	TEST_ASSERT(set_region(&vm, 0, 0) == 0, "flag off");
	TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, bm) == 0, "flag on");
	run_to_userfault(&vm, 0, "code page");
	clear_bit_(vm.bitmap, 0);
	run_to_userfault(&vm, DATA_GPA, "then the data page");
	clear_bit_(vm.bitmap, DATA_GPA >> 12);
	run_to_hlt(&vm, "both clear");
	OK();

	CASE("bad bitmap pointers are refused with a clear error, the slot unchanged");
	{
		void *gone =
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int r;

		TEST_ASSERT(gone != MAP_FAILED, "mmap");
		munmap(gone, 4096);
		r = set_region(&vm, KVM_MEM_USERFAULT, 0);
		TEST_ASSERT(r == -EINVAL, "NULL bitmap: %d, want -EINVAL", r);
		r = set_region(&vm, KVM_MEM_USERFAULT, bm + 1);
		TEST_ASSERT(r == -EINVAL, "misaligned bitmap: %d, want -EINVAL", r);
		r = set_region(&vm, KVM_MEM_USERFAULT, 0xffffffff81000000ull);
		TEST_ASSERT(r == -EINVAL, "kernel-address bitmap: %d, want -EINVAL", r);
		r = set_region(&vm, KVM_MEM_USERFAULT, (uint64_t)(uintptr_t)gone);
		TEST_ASSERT(r == -EFAULT, "unmapped bitmap: %d, want -EFAULT", r);
		/* the slot still has the good bitmap: the guest runs through */
		run_to_hlt(&vm, "after the refusals");
	}
	OK();

	CASE("the flag through KVM_SET_USER_MEMORY_REGION (v1, no bitmap) is refused");
	{
		struct kvm_userspace_memory_region r1 = {.slot = 1,
		                                         .flags = KVM_MEM_USERFAULT,
		                                         .guest_phys_addr = 1ull << 30,
		                                         .memory_size = 4096,
		                                         .userspace_addr =
		                                             (uint64_t)(uintptr_t)vm.mem};
		int r = ioctl(vm.fd, KVM_SET_USER_MEMORY_REGION, &r1);

		TEST_ASSERT(r == -1 && errno == EINVAL, "v1 ioctl with the flag: %d", r);
	}
	OK();

	CASE("turning the flag off maps everything again, bits or not");
	set_bit_(vm.bitmap, DATA_GPA >> 12);
	TEST_ASSERT(set_region(&vm, 0, 0) == 0, "flag off");
	run_to_hlt(&vm, "flag off, bit set");
	OK();

	CASE("4 KiB mappings only while the flag is on; huge ones come back after");
	{
		int64_t huge_off, huge_on, small_on, huge_again;

		memset(vm.bitmap, 0, MEM_SIZE / 4096 / 8);
		run_to_hlt(&vm, "flag off");
		huge_off = vm_stat(&vm, "pages_2m");
		TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, bm) == 0, "flag on, all clear");
		run_to_hlt(&vm, "flag on");
		huge_on = vm_stat(&vm, "pages_2m");
		small_on = vm_stat(&vm, "pages_4k");
		TEST_ASSERT(set_region(&vm, 0, 0) == 0, "flag off");
		run_to_hlt(&vm, "flag off again");
		huge_again = vm_stat(&vm, "pages_2m");
		printf("userfault_test: pages_2m %lld with the flag off, %lld on (pages_4k %lld), "
		       "%lld off again\n",
		       (long long)huge_off, (long long)huge_on, (long long)small_on,
		       (long long)huge_again);
		TEST_ASSERT(huge_on == 0 && small_on > 0, "flag on: pages_2m %lld pages_4k %lld",
		            (long long)huge_on, (long long)small_on);
		/* Huge pages need THP under the slot: said, not failed, when the
		 * host gave none even without the flag. */
		if (huge_off > 0)
			TEST_ASSERT(huge_again > 0, "huge pages did not come back");
		else
			printf("userfault_test: note: no huge mapping even without the flag "
			       "(no THP here): only the 4 KiB half is checked\n");
	}
	OK();

	CASE("a bitmap unmapped while the slot uses it: userfault exits, the host intact");
	{
		unsigned long *b =
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		TEST_ASSERT(b != MAP_FAILED, "mmap");
		TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, (uint64_t)(uintptr_t)b) == 0,
		            "flag on, all clear");
		run_to_hlt(&vm, "all clear");
		TEST_ASSERT(set_region(&vm, 0, 0) == 0, "flag off");
		TEST_ASSERT(set_region(&vm, KVM_MEM_USERFAULT, (uint64_t)(uintptr_t)b) == 0,
		            "flag on again (zaps)");
		munmap(b, 4096);
		run_to_userfault(&vm, 0, "unreadable bitmap counts as set");
		TEST_ASSERT(set_region(&vm, 0, 0) == 0, "flag off");
		run_to_hlt(&vm, "flag off after the bitmap went");
	}
	OK();

	vm_destroy(&vm);
	printf("userfault_test: PASS %d cases\n", passed);
	return 0;
}
