/* The snapshot format (docs/SNAPSHOT.md): a directory with
 *   state   header, typed sections (regions, vCPU state, VM state, page
 *           checksums), trailer with a CRC-32C of everything before it
 *   memory  raw guest memory, regions concatenated in gpa order (Firecracker's
 *           layout, so `lazyvm fc-handler` can serve it too)
 *   checksums  uint32_t CRC-32C of every 4 KiB page of memory, in order; read
 *           lazily in chunks, each chunk checked against the state file
 */
#ifndef LAZYVM_SNAPSHOT_H
#define LAZYVM_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#define SNAP_MAGIC "LAZYVMSN"
/* 2: per-vCPU CPUID and TSC frequency, device sections (the PIT); a
 * format-1 snapshot is refused by name (docs/SNAPSHOT.md) */
#define SNAP_FORMAT_VERSION 2u
#define SNAP_TRAILER_MAGIC  0x444e455au /* "ZEND" */
#define SNAP_PAGE_SIZE      4096u
#define SNAP_STATE_MAX      (64u << 20)

struct snap_header {
	char magic[8];           /* SNAP_MAGIC, no NUL */
	uint32_t format_version; /* SNAP_FORMAT_VERSION */
	uint32_t guest_abi_version;
	uint64_t mem_size;
	uint32_t nr_vcpus;
	uint32_t nr_regions;
	uint32_t page_size; /* of the checksums: SNAP_PAGE_SIZE */
	uint32_t reserved0;
	uint64_t reserved[3];
};
_Static_assert(sizeof(struct snap_header) == 64, "snapshot header");

/* Each section: this header, then len bytes, then zero padding to 8. */
struct snap_section {
	uint32_t type;
	uint32_t index; /* vCPU or region number; 0 for VM-wide sections */
	uint64_t len;
};

enum snap_section_type {
	SNAP_REGION = 1,     /* struct snap_region */
	SNAP_REGS = 10,      /* struct kvm_regs */
	SNAP_SREGS = 11,     /* struct kvm_sregs */
	SNAP_FPU = 12,       /* struct kvm_fpu */
	SNAP_XSAVE = 13,     /* struct kvm_xsave region (4096 bytes or KVM_CAP_XSAVE2) */
	SNAP_XCRS = 14,      /* struct kvm_xcrs */
	SNAP_MSRS = 15,      /* struct snap_msr[] */
	SNAP_LAPIC = 16,     /* struct kvm_lapic_state */
	SNAP_EVENTS = 17,    /* struct kvm_vcpu_events */
	SNAP_MP_STATE = 18,  /* struct kvm_mp_state */
	SNAP_DEBUGREGS = 19, /* struct kvm_debugregs */
	SNAP_APF = 20,       /* struct snap_apf: the guest's async PF MSRs as the VMM holds them */
	SNAP_CPUID = 21,     /* struct kvm_cpuid_entry2[]: what the VMM gave KVM_SET_CPUID2 */
	SNAP_TSC_KHZ = 22,   /* struct snap_tsc: KVM_GET_TSC_KHZ */
	SNAP_IRQCHIP = 30,   /* struct kvm_irqchip, index = chip id (PIC master, slave, IOAPIC) */
	SNAP_CLOCK = 31,     /* struct kvm_clock_data */
	SNAP_DEVICE = 32,    /* a device's state, index = enum snap_device_id (devices.h) */
	SNAP_CSUM_CHUNKS = 40, /* u32 CRC-32C of each 4 KiB chunk of the checksums file */
	SNAP_ZERO_PAGES = 41,  /* optional: u64 bitmap, bit i set = page i is all zeros (the
	                        * restore never reads it; written by migration) */
};

struct snap_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t file_off;
};

struct snap_msr {
	uint32_t index;
	uint32_t reserved;
	uint64_t data;
};

struct snap_apf {
	uint64_t msr_en; /* MSR_KVM_ASYNC_PF_EN */
	uint64_t vector; /* MSR_KVM_ASYNC_PF_INT */
};

struct snap_tsc {
	uint32_t khz;
	uint32_t reserved;
};

/* SNAP_DEVICE's index: which device. Ids are never reused. */
enum snap_device_id {
	SNAP_DEV_PIT = 0,   /* struct kvm_pit_state2 (KVM_GET_PIT2) */
	SNAP_DEV_UART0 = 1, /* the 16550 at 0x3f8 (src/vmm/dev/uart.c) */
};

struct snap_trailer {
	uint32_t magic; /* SNAP_TRAILER_MAGIC */
	uint32_t crc;   /* CRC-32C of every byte before the trailer */
};

/* Builds a state file in memory. */
struct snap_writer {
	uint8_t *buf;
	size_t len, cap;
	int error; /* first -errno; later puts do nothing */
};

void snap_put(struct snap_writer *w, uint32_t type, uint32_t index, const void *data, uint64_t len);

/* A validated state file in memory. */
struct snap_reader {
	const uint8_t *buf;
	size_t len; /* without the trailer */
	struct snap_header hdr;
};

/* Creates path with those bytes, fsynced. 0 or -errno with why filled. */
int snap_write_file(const char *path, const void *buf, size_t len, char *why, size_t whylen);

struct vm;
/* What a paused VM's snapshot is made of, besides the memory itself. */
struct snap_image {
	struct snap_writer w; /* the sealed state file */
	uint32_t *crcs;       /* CRC-32C of every page: the checksums file */
	uint64_t *zero;       /* a bit a page: all zeros (also in the state, SNAP_ZERO_PAGES) */
	uint64_t npages, pages_zero;
};

/* Builds the image of a paused VM. 0 or -errno with why set; either way
 * snapshot_image_free releases what was built. */
int snapshot_build(struct vm *vm, struct snap_image *img, char *why, size_t whylen);
void snapshot_image_free(struct snap_image *img);

/* Checks magic, versions, trailer, and that the sections tile the file
 * exactly. Returns 0 or -EINVAL with the problem in why. */
int snap_reader_init(struct snap_reader *r, const uint8_t *buf, size_t len, char *why,
                     size_t whylen);

/* Finds a section: NULL when absent; *len gets its length. */
const void *snap_find(const struct snap_reader *r, uint32_t type, uint32_t index, uint64_t *len);

/* Walks the sections in file order: *off starts at 0; returns the next
 * section's data (its header in *s), NULL after the last. */
const void *snap_next(const struct snap_reader *r, size_t *off, struct snap_section *s);

#endif
