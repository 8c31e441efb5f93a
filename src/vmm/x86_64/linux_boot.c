/* The Linux x86 boot protocol: setup header, zero page, e820, 64-bit entry
 * (see linux_boot.h; the offsets are those of Documentation/arch/x86/boot.rst
 * and arch/x86/include/uapi/asm/bootparam.h). */
#include "linux_boot.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

/* Offsets in the bzImage file, the same in the zero page for the header. */
#define HDR_START          0x1f1
#define HDR_SETUP_SECTS    0x1f1
#define HDR_BOOT_FLAG      0x1fe
#define HDR_JUMP_LEN       0x201 /* header end = 0x202 + this byte */
#define HDR_MAGIC          0x202
#define HDR_VERSION        0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS      0x211
#define HDR_RAMDISK_IMAGE  0x218
#define HDR_RAMDISK_SIZE   0x21c
#define HDR_CMD_LINE_PTR   0x228
#define HDR_INITRD_MAX     0x22c
#define HDR_KERNEL_ALIGN   0x230
#define HDR_RELOCATABLE    0x234
#define HDR_XLOADFLAGS     0x236
#define HDR_CMDLINE_SIZE   0x238
#define HDR_PREF_ADDRESS   0x258
#define HDR_INIT_SIZE      0x260
#define HDR_END_MAX        0x290 /* edd_mbr_sig_buffer follows in the zero page */

/* Zero page fields outside the header. */
#define ZP_EXT_RAMDISK_IMAGE 0x0c0
#define ZP_EXT_RAMDISK_SIZE  0x0c4
#define ZP_EXT_CMD_LINE_PTR  0x0c8
#define ZP_E820_ENTRIES      0x1e8
#define ZP_E820_TABLE        0x2d0
#define ZP_E820_MAX          128

#define XLF_KERNEL_64 (1u << 0)
#define LOADED_HIGH   (1u << 0)

static uint16_t get16(const uint8_t *p, size_t off)
{
	return (uint16_t)(p[off] | p[off + 1] << 8);
}

static uint32_t get32(const uint8_t *p, size_t off)
{
	return (uint32_t)get16(p, off) | (uint32_t)get16(p, off + 2) << 16;
}

static uint64_t get64(const uint8_t *p, size_t off)
{
	return (uint64_t)get32(p, off) | (uint64_t)get32(p, off + 4) << 32;
}

static void put32(uint8_t *p, size_t off, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		p[off + i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, size_t off, uint64_t v)
{
	put32(p, off, (uint32_t)v);
	put32(p, off + 4, (uint32_t)(v >> 32));
}

int linux_image_parse(const void *buf, size_t len, struct linux_image *img, char *why,
                      size_t whylen)
{
	const uint8_t *b = buf;

	memset(img, 0, sizeof(*img));
	if (len < HDR_END_MAX) {
		snprintf(why, whylen,
		         "%zu bytes is too short for a bzImage (its setup header ends at 0x%x)",
		         len, HDR_END_MAX);
		return -ENOEXEC;
	}
	if (get32(b, HDR_MAGIC) != 0x53726448u) { /* "HdrS" */
		snprintf(why, whylen,
		         "no \"HdrS\" at offset 0x202 (found 0x%08" PRIx32
		         "): not a bzImage (an ELF "
		         "vmlinux or a compressed file is not loaded)",
		         get32(b, HDR_MAGIC));
		return -ENOEXEC;
	}
	if (get16(b, HDR_BOOT_FLAG) != 0xaa55)
		snprintf(why, whylen, "boot flag 0x%04x, not 0xaa55 (ignored)",
		         get16(b, HDR_BOOT_FLAG));
	img->version = get16(b, HDR_VERSION);
	/* 2.12 brought xloadflags, which says whether the 64-bit entry exists. */
	if (img->version < 0x020c) {
		snprintf(
		    why, whylen,
		    "boot protocol %u.%02u is older than 2.12: no xloadflags, so no 64-bit entry "
		    "lazyvm can use (Linux 3.8 or later is needed)",
		    img->version >> 8, img->version & 0xff);
		return -ENOEXEC;
	}
	img->setup_sects = b[HDR_SETUP_SECTS] ? b[HDR_SETUP_SECTS] : 4;
	img->loadflags = b[HDR_LOADFLAGS];
	img->xloadflags = get16(b, HDR_XLOADFLAGS);
	img->relocatable = b[HDR_RELOCATABLE];
	img->kernel_alignment = get32(b, HDR_KERNEL_ALIGN);
	img->initrd_addr_max = get32(b, HDR_INITRD_MAX);
	img->cmdline_size = get32(b, HDR_CMDLINE_SIZE);
	img->pref_address = get64(b, HDR_PREF_ADDRESS);
	img->init_size = get32(b, HDR_INIT_SIZE);
	img->hdr_len = 0x202u + b[HDR_JUMP_LEN] - HDR_START;
	if (HDR_START + img->hdr_len > HDR_END_MAX) {
		snprintf(why, whylen, "setup header of %zu bytes runs past 0x%x", img->hdr_len,
		         HDR_END_MAX);
		return -EINVAL;
	}
	if (!(img->xloadflags & XLF_KERNEL_64)) {
		snprintf(why, whylen,
		         "xloadflags 0x%04x has no XLF_KERNEL_64: the kernel has no 64-bit entry "
		         "(a 32-bit kernel is not supported)",
		         img->xloadflags);
		return -ENOEXEC;
	}
	if (!(img->loadflags & LOADED_HIGH)) {
		snprintf(why, whylen,
		         "loadflags 0x%02x: not a bzImage loaded at 1 MiB or above (a zImage)",
		         img->loadflags);
		return -ENOEXEC;
	}
	img->kernel_off = (size_t)(img->setup_sects + 1) * 512;
	if (img->kernel_off >= len) {
		snprintf(why, whylen,
		         "%u setup sectors put the kernel at offset %zu, past the file's %zu bytes",
		         img->setup_sects, img->kernel_off, len);
		return -EINVAL;
	}
	img->kernel_len = len - img->kernel_off;
	/* lazyvm loads the kernel at pref_address, where a non-relocatable one
	 * must run and a relocatable one may; it must then be aligned. */
	if (img->pref_address < (1u << 20) || img->pref_address >= LINUX_HOLE_START ||
	    (img->kernel_alignment && (img->kernel_alignment & (img->kernel_alignment - 1)) == 0 &&
	     img->pref_address % img->kernel_alignment)) {
		snprintf(why, whylen,
		         "preferred load address 0x%" PRIx64 " is not between 1 MiB and 3 GiB "
		         "aligned to 0x%" PRIx32 " (relocatable: %s)",
		         img->pref_address, img->kernel_alignment, img->relocatable ? "yes" : "no");
		return -EINVAL;
	}
	if (img->init_size < img->kernel_len)
		img->init_size = (uint32_t)img->kernel_len;
	return 0;
}

int linux_e820_build(const struct guest_mem *m, uint8_t *out, unsigned max)
{
	unsigned n = 0;
	uint64_t start = 0, end = 0; /* the RAM range being merged above 1 MiB */

#define E820_ADD(a, s, t)                                                                          \
	do {                                                                                       \
		if (n == max)                                                                      \
			return -ENOSPC;                                                            \
		put64(out, n * 20u, (a));                                                          \
		put64(out, n * 20u + 8, (s));                                                      \
		put32(out, n * 20u + 16, (t));                                                     \
		n++;                                                                               \
	} while (0)

	if (!guest_mem_ptr(m, 0, LINUX_EBDA_GPA))
		return -ERANGE; /* the first slot must hold low memory */
	E820_ADD(0, LINUX_EBDA_GPA, E820_RAM);
	E820_ADD(LINUX_EBDA_GPA, (1u << 20) - LINUX_EBDA_GPA, E820_RESERVED);
	for (unsigned i = 0; i < m->nslots; i++) {
		uint64_t a = m->slots[i].gpa, e = a + m->slots[i].size;

		if (a < (4ull << 30) && e > LINUX_HOLE_START)
			return -ERANGE;
		if (e <= (1u << 20))
			continue;
		if (a < (1u << 20))
			a = 1u << 20;
		if (end && a == end) {
			end = e;
			continue;
		}
		if (end)
			E820_ADD(start, end - start, E820_RAM);
		start = a;
		end = e;
	}
	if (end)
		E820_ADD(start, end - start, E820_RAM);
#undef E820_ADD
	return (int)n;
}

/* Copies into guest RAM across slot boundaries; -EFAULT if a byte is not RAM. */
static int to_guest(struct guest_mem *m, uint64_t gpa, const void *src, size_t len)
{
	const uint8_t *s = src;

	while (len) {
		size_t chunk = 0;
		void *dst = NULL;

		for (unsigned i = 0; i < m->nslots && !dst; i++) {
			const struct mem_slot *sl = &m->slots[i];
			if (gpa >= sl->gpa && gpa - sl->gpa < sl->size) {
				chunk = sl->size - (gpa - sl->gpa) < len
				            ? sl->size - (gpa - sl->gpa)
				            : len;
				dst = guest_mem_ptr(m, gpa, chunk);
			}
		}
		if (!dst)
			return -EFAULT;
		memcpy(dst, s, chunk);
		s += chunk;
		gpa += chunk;
		len -= chunk;
	}
	return 0;
}

/* The end of RAM that starts at gpa 0 and runs without a gap, below the hole. */
static uint64_t low_ram_top(const struct guest_mem *m)
{
	uint64_t top = 0;
	bool grew = true;

	while (grew) {
		grew = false;
		for (unsigned i = 0; i < m->nslots; i++)
			if (m->slots[i].gpa == top && m->slots[i].size) {
				top += m->slots[i].size;
				grew = true;
			}
	}
	return top < LINUX_HOLE_START ? top : LINUX_HOLE_START;
}

static int write_tables(struct guest_mem *m)
{
	uint64_t *pml4 = guest_mem_ptr(m, LINUX_PML4_GPA, 4096);
	uint64_t *pdpt = guest_mem_ptr(m, LINUX_PDPT_GPA, 4096);
	uint64_t *pd = guest_mem_ptr(m, LINUX_PD_GPA, 4 * 4096);
	uint64_t *gdt = guest_mem_ptr(m, LINUX_GDT_GPA, 4 * 8);

	if (!pml4 || !pdpt || !pd || !gdt)
		return -EFAULT;
	memset(pml4, 0, 4096);
	memset(pdpt, 0, 4096);
	pml4[0] = LINUX_PDPT_GPA | 3;
	for (unsigned i = 0; i < 4; i++)
		pdpt[i] = (LINUX_PD_GPA + i * 4096ull) | 3;
	/* identity, 2 MiB pages, the first 4 GiB: the protocol wants the kernel,
	 * the zero page and the command line mapped; the kernel builds its own */
	for (uint64_t i = 0; i < 2048; i++)
		pd[i] = (i << 21) | 0x83;
	gdt[0] = 0;
	gdt[1] = 0;
	gdt[2] = 0x00af9b000000ffffull; /* __BOOT_CS: 64-bit code */
	gdt[3] = 0x00cf93000000ffffull; /* __BOOT_DS */
	return 0;
}

int linux_boot_load(struct guest_mem *m, const void *bzimage, size_t bzlen, const void *initrd,
                    size_t initrd_len, const char *cmdline, char *why, size_t whylen)
{
	const uint8_t *b = bzimage;
	struct linux_image img;
	uint64_t top = low_ram_top(m), kend, iaddr = 0;
	uint8_t *zp;
	size_t clen = strlen(cmdline);
	int r, n;

	if ((r = linux_image_parse(bzimage, bzlen, &img, why, whylen)) < 0)
		return r;
	why[0] = '\0';
	kend = img.pref_address + img.init_size;
	if (kend > top) {
		snprintf(why, whylen,
		         "the kernel needs [0x%" PRIx64 ", 0x%" PRIx64
		         ") while it decompresses, but RAM "
		         "below 3 GiB ends at 0x%" PRIx64 ": give more --mem",
		         img.pref_address, kend, top);
		return -ENOSPC;
	}
	if (clen + 1 > LINUX_CMDLINE_MAX || (img.cmdline_size && clen > img.cmdline_size)) {
		snprintf(why, whylen, "the command line has %zu bytes; this kernel takes %" PRIu32,
		         clen,
		         img.cmdline_size < LINUX_CMDLINE_MAX - 1 ? img.cmdline_size
		                                                  : LINUX_CMDLINE_MAX - 1);
		return -E2BIG;
	}
	if (initrd_len) {
		uint64_t itop = top;
		if (img.initrd_addr_max && (uint64_t)img.initrd_addr_max + 1 < itop)
			itop = (uint64_t)img.initrd_addr_max + 1;
		if (initrd_len > itop || ((itop - initrd_len) & ~0xfffull) < kend) {
			snprintf(why, whylen,
			         "the initrd (%zu bytes) does not fit between the kernel's end "
			         "0x%" PRIx64 " and 0x%" PRIx64 ": give more --mem",
			         initrd_len, kend, itop);
			return -ENOSPC;
		}
		iaddr = (itop - initrd_len) & ~0xfffull;
	}
	if ((r = to_guest(m, img.pref_address, b + img.kernel_off, img.kernel_len)) < 0 ||
	    (initrd_len && (r = to_guest(m, iaddr, initrd, initrd_len)) < 0) ||
	    (r = to_guest(m, LINUX_CMDLINE_GPA, cmdline, clen + 1)) < 0 ||
	    (r = write_tables(m)) < 0 || !(zp = guest_mem_ptr(m, LINUX_ZERO_PAGE_GPA, 4096))) {
		snprintf(why, whylen, "writing the kernel, initrd or boot tables: not RAM");
		return r < 0 ? r : -EFAULT;
	}
	memset(zp, 0, 4096);
	memcpy(zp + HDR_START, b + HDR_START, img.hdr_len);
	zp[HDR_TYPE_OF_LOADER] = 0xff; /* "undefined" loader */
	put32(zp, HDR_CMD_LINE_PTR, LINUX_CMDLINE_GPA);
	put32(zp, ZP_EXT_CMD_LINE_PTR, 0);
	put32(zp, HDR_RAMDISK_IMAGE, (uint32_t)iaddr);
	put32(zp, ZP_EXT_RAMDISK_IMAGE, (uint32_t)(iaddr >> 32));
	put32(zp, HDR_RAMDISK_SIZE, (uint32_t)initrd_len);
	put32(zp, ZP_EXT_RAMDISK_SIZE, (uint32_t)((uint64_t)initrd_len >> 32));
	n = linux_e820_build(m, zp + ZP_E820_TABLE, ZP_E820_MAX);
	if (n < 0) {
		snprintf(why, whylen,
		         n == -ERANGE
		             ? "guest RAM reaches into [3 GiB, 4 GiB), where the IOAPIC and "
		               "LAPIC live: at most 3G of --mem for a Linux guest"
		             : "more memslots than e820 entries");
		return n;
	}
	zp[ZP_E820_ENTRIES] = (uint8_t)n;
	return 0;
}

int linux_vcpu_boot_regs(struct vcpu *v, const struct linux_image *img)
{
	const struct arch_long_mode lm = {.cs = LINUX_BOOT_CS,
	                                  .ds = LINUX_BOOT_DS,
	                                  .gdt = LINUX_GDT_GPA,
	                                  .gdt_limit = 4 * 8 - 1,
	                                  .cr3 = LINUX_PML4_GPA};
	struct kvm_regs regs;
	int r;

	if (v->index != 0)
		return 0; /* waits for INIT/SIPI in the in-kernel LAPIC */
	if ((r = arch_vcpu_long_mode(v, &lm)) < 0)
		return r;
	memset(&regs, 0, sizeof(regs));
	regs.rip = img->pref_address + 0x200; /* startup_64 */
	regs.rsi = LINUX_ZERO_PAGE_GPA;
	regs.rflags = 0x2;
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}
