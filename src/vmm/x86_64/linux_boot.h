/* The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): a bzImage's
 * setup header, the "zero page" (struct boot_params) with the e820 map built
 * from the memslots, the command line and the initrd, and the 64-bit entry.
 *
 * Only the facts lazyvm uses are modelled: offsets into the zero page, not a
 * copy of the kernel's struct. Pure functions over a buffer and a guest_mem,
 * so the outer machine's unit tests (tests/unit/test_linux_boot.c) can build
 * a zero page from a tiny fake bzImage. */
#ifndef LAZYVM_LINUX_BOOT_H
#define LAZYVM_LINUX_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "../vmm.h"

/* Where lazyvm puts things in low guest memory for a Linux guest. Linux
 * reserves the whole first MiB for itself at boot, so none of this is lost. */
#define LINUX_GDT_GPA       0x0500u /* 4 descriptors: null, null, __BOOT_CS, __BOOT_DS */
#define LINUX_ZERO_PAGE_GPA 0x7000u /* struct boot_params, one page; RSI at entry */
#define LINUX_PML4_GPA      0x9000u /* identity page tables for the 64-bit entry */
#define LINUX_PDPT_GPA      0xa000u
#define LINUX_PD_GPA        0xb000u /* four pages, 0xb000-0xefff: 4 GiB of 2 MiB pages */
#define LINUX_CMDLINE_GPA   0x20000u
#define LINUX_CMDLINE_MAX   0x10000u      /* bytes, NUL included, before the MP table area */
#define LINUX_EBDA_GPA      0x9fc00u      /* the last KiB of base memory: MP table here */
#define LINUX_HOLE_START    0xc0000000ull /* [3 GiB, 4 GiB): IOAPIC, LAPIC, no RAM */
#define LINUX_BOOT_CS       0x10u
#define LINUX_BOOT_DS       0x18u

#define E820_RAM      1u
#define E820_RESERVED 2u

/* What lazyvm needs of a bzImage's setup header. */
struct linux_image {
	uint16_t version;    /* boot protocol, e.g. 0x020f */
	uint8_t setup_sects; /* 512-byte sectors of real-mode setup after the boot sector */
	uint8_t loadflags;
	uint16_t xloadflags;
	uint8_t relocatable;
	uint32_t kernel_alignment;
	uint32_t initrd_addr_max;
	uint32_t cmdline_size; /* without the NUL */
	uint64_t pref_address; /* where the kernel is loaded */
	uint32_t init_size;    /* bytes it needs from there while it decompresses */
	size_t hdr_len;        /* bytes of setup header from 0x1f1, copied into the zero page */
	size_t kernel_off;     /* the protected-mode kernel in the file: (setup_sects + 1) * 512 */
	size_t kernel_len;
};

/* Parses the setup header of the bzImage in [buf, buf + len). Returns 0, or
 * -ENOEXEC / -EINVAL with why saying what is wrong: no "HdrS" (not a bzImage),
 * a protocol older than 2.12 (no 64-bit entry), no XLF_KERNEL_64, a header or
 * kernel past the end of the file, a preferred address that is not aligned. */
int linux_image_parse(const void *buf, size_t len, struct linux_image *img, char *why,
                      size_t whylen);

/* Builds the e820 map of guest RAM from the memslots: [0, EBDA) RAM, [EBDA,
 * 1 MiB) reserved (the MP table, where a BIOS would be), then each slot's RAM
 * from 1 MiB on, merged where slots touch. Writes at most `max` entries of 20
 * bytes (u64 addr, u64 size, u32 type) into `out`; returns the count, or
 * -ERANGE when a slot reaches into the hole below 4 GiB (RAM there would hide
 * the IOAPIC and LAPIC), -ENOSPC when `max` is too small. */
int linux_e820_build(const struct guest_mem *m, uint8_t *out, unsigned max);

/* Everything the kernel finds in guest memory at its entry: the kernel at
 * pref_address, the initrd as high as it may go below the hole and
 * initrd_addr_max, the command line, the zero page (setup header copied from
 * the image, e820, loader id 0xff), the boot GDT and identity page tables.
 * Returns 0, or -errno with why (kernel or initrd does not fit in RAM, a
 * command line longer than the kernel takes). */
int linux_boot_load(struct guest_mem *m, const void *bzimage, size_t bzlen, const void *initrd,
                    size_t initrd_len, const char *cmdline, char *why, size_t whylen);

/* The 64-bit entry state of the boot protocol on vCPU 0 (long mode, flat
 * __BOOT_CS/__BOOT_DS, RSI = the zero page, RIP = pref_address + 0x200,
 * interrupts off); application processors are left waiting for INIT/SIPI. */
int linux_vcpu_boot_regs(struct vcpu *v, const struct linux_image *img);

#endif
