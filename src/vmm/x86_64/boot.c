/* x86-64 boot: identity page tables, a boot GDT, the boot info and the image in
 * guest memory, and long-mode registers for every vCPU (see guest_abi.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lazyvm/log.h"
#include "../vmm.h"

#define PTE_P  (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_PS (1ull << 7)

#define CR0_PE         (1ull << 0)
#define CR0_MP         (1ull << 1)
#define CR0_ET         (1ull << 4)
#define CR0_NE         (1ull << 5)
#define CR0_WP         (1ull << 16)
#define CR0_PG         (1ull << 31)
#define CR4_PAE        (1ull << 5)
#define CR4_OSFXSR     (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define EFER_LME       (1ull << 8)
#define EFER_LMA       (1ull << 10)
#define EFER_NXE       (1ull << 11)

int arch_load_guest(struct vm *vm, const void *image, size_t image_len)
{
	struct guest_mem *m = &vm->mem;
	uint64_t *pml4 = guest_mem_ptr(m, GUEST_PML4_GPA, 4096);
	uint64_t *pdpt = guest_mem_ptr(m, GUEST_PDPT_GPA, 4096);
	uint64_t *pd = guest_mem_ptr(m, GUEST_PD_GPA, 4 * 4096);
	uint64_t *gdt = guest_mem_ptr(m, GUEST_GDT_GPA, 3 * 8);
	struct guest_boot_info *bi = guest_mem_ptr(m, GUEST_BOOT_INFO_GPA, sizeof(*bi));
	void *dst = guest_mem_ptr(m, GUEST_IMAGE_GPA, image_len);
	uint64_t mapped = m->size < GUEST_MEM_MAX ? m->size : GUEST_MEM_MAX;

	if (!pml4 || !pdpt || !pd || !gdt || !bi || !dst || image_len > GUEST_IMAGE_MAX)
		return -ENOSPC;
	memset(pml4, 0, 4096);
	memset(pdpt, 0, 4096);
	memset(pd, 0, 4 * 4096);
	pml4[0] = GUEST_PDPT_GPA | PTE_P | PTE_RW;
	for (unsigned i = 0; i < 4; i++)
		pdpt[i] = (GUEST_PD_GPA + i * 4096ull) | PTE_P | PTE_RW;
	/* 2 MiB pages over RAM only: anything beyond faults in the guest. */
	for (uint64_t a = 0; a < mapped; a += 2ull << 20)
		pd[a >> 21] = a | PTE_P | PTE_RW | PTE_PS;
	gdt[0] = 0;
	gdt[1] = 0x00af9a000000ffffull; /* 0x08: 64-bit code, DPL 0 */
	gdt[2] = 0x00cf92000000ffffull; /* 0x10: data, DPL 0 */

	memset(bi, 0, sizeof(*bi));
	bi->magic = GUEST_BOOT_MAGIC;
	bi->abi_version = GUEST_ABI_VERSION;
	bi->nr_vcpus = vm->nvcpus;
	bi->mem_size = m->size;
	bi->seed = vm->cfg.seed;
	bi->timeslice_us = vm->cfg.timeslice_us;
	bi->apic_ns_per_tick = 1; /* KVM's emulated APIC bus: 1 GHz */
	bi->flags = (vm->cfg.snapshot_dir || (vm->cfg.migrate && !vm->cfg.migrate_timed)
	                 ? GUEST_BOOT_SNAPSHOT
	                 : 0) |
	            (vm->apf ? GUEST_BOOT_APF : 0);
	if (strlen(vm->cfg.workload) >= sizeof(bi->workload))
		return -ENAMETOOLONG;
	strcpy(bi->workload, vm->cfg.workload);
	memcpy(dst, image, image_len);
	return 0;
}

static void arch_flat_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	*s = (struct kvm_segment){.base = 0,
	                          .limit = 0xffffffff,
	                          .selector = sel,
	                          .type = type,
	                          .present = 1,
	                          .dpl = 0,
	                          .db = code ? 0 : 1,
	                          .s = 1,
	                          .l = code ? 1 : 0,
	                          .g = 1};
}

int arch_vcpu_long_mode(struct vcpu *v, const struct arch_long_mode *lm)
{
	struct kvm_sregs sregs;

	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	arch_flat_seg(&sregs.cs, lm->cs, 11, true);
	arch_flat_seg(&sregs.ds, lm->ds, 3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.gdt.base = lm->gdt;
	sregs.gdt.limit = lm->gdt_limit;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_ET | CR0_PG | lm->cr0_more;
	sregs.cr3 = lm->cr3;
	sregs.cr4 = CR4_PAE | lm->cr4_more;
	sregs.efer = EFER_LME | EFER_LMA | lm->efer_more;
	return ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0 ? -errno : 0;
}

int arch_vcpu_boot_regs(struct vcpu *v)
{
	const struct arch_long_mode lm = {.cs = GUEST_CS_SELECTOR,
	                                  .ds = GUEST_DS_SELECTOR,
	                                  .gdt = GUEST_GDT_GPA,
	                                  .gdt_limit = 3 * 8 - 1,
	                                  .cr3 = GUEST_PML4_GPA,
	                                  .cr0_more = CR0_MP | CR0_NE | CR0_WP,
	                                  .cr4_more = CR4_OSFXSR | CR4_OSXMMEXCPT,
	                                  .efer_more = EFER_NXE};
	struct kvm_regs regs;
	int r;

	if ((r = arch_vcpu_long_mode(v, &lm)) < 0)
		return r;
	memset(&regs, 0, sizeof(regs));
	regs.rip = GUEST_IMAGE_GPA;
	regs.rflags = 0x2;
	regs.rdi = v->index;
	regs.rsi = GUEST_BOOT_INFO_GPA;
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	/* With the in-kernel LAPIC, every vCPU but the first waits for INIT/SIPI;
	 * the ABI starts them all at the entry together. */
	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
	if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
		return -errno;
	return 0;
}

int arch_vcpu_set_cpuid(struct vcpu *v)
{
	const struct kvm_cpuid2 *sup = v->vm->sys->cpuid;
	size_t bytes = sizeof(*sup) + sup->nent * sizeof(sup->entries[0]);
	struct kvm_cpuid2 *c = malloc(bytes);
	int r = 0;

	if (!c)
		return -ENOMEM;
	memcpy(c, sup, bytes);
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		/* Each vCPU its own APIC id, in the legacy and the x2APIC leaf. */
		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffffu) | (v->index << 24);
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = v->index;
		/* Linux looks for KVM's leaves (kvmclock, PV async PF, PV EOI)
		 * only under the hypervisor bit. */
		if (e->function == 1 && v->vm->cfg.linux_guest)
			e->ecx |= 1u << 31;
	}
	/* KVM_SET_CPUID2 also makes the LAPIC timer's periodic mode work
	 * (measured: without it periodic mode is dropped). */
	if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0)
		r = -errno;
	free(c);
	return r;
}
