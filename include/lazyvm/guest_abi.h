/* The guest/host ABI of lazyvm's reference VMM and its bundled guest kernel.
 *
 * Self-contained (C99 fixed-width types only) and included by both sides: the
 * VMM (src/vmm/) and the freestanding guest (guest/). Change anything here and
 * bump GUEST_ABI_VERSION: a snapshot records it and refuses to restore across
 * versions.
 *
 * Guest-physical memory layout:
 *   0x0000 - 0x0fff  unused (a null page)
 *   0x1000           struct guest_boot_info, written by the VMM before boot
 *   0x2000 - 0x7fff  identity page tables built by the VMM: PML4 (0x2000),
 *                    PDPT (0x3000), four page directories (0x4000-0x7fff) of
 *                    2 MiB pages mapping [0, min(mem, 4 GiB)) read/write/exec
 *   0x8000           the VMM's boot GDT (null, 64-bit code 0x08, data 0x10);
 *                    the guest loads its own GDT before reloading segments
 *   0x100000         the guest image, loaded flat; its first byte is the entry
 *   image end ..     the guest's own: stacks, heap, workload data
 *
 * Entry state of every vCPU (no INIT/SIPI: all vCPUs start together):
 *   64-bit long mode, CR0.PG|PE|WP, CR4.PAE|OSFXSR|OSXMMEXCPT, EFER.LME|LMA|NXE,
 *   CR3 = 0x2000, CS = 0x08, DS = ES = SS = FS = GS = 0x10, RFLAGS = 0x2
 *   (interrupts off), RIP = GUEST_IMAGE_GPA, RSP = 0 (the guest sets its own),
 *   RDI = vCPU index (0 .. nr_vcpus - 1), RSI = GUEST_BOOT_INFO_GPA.
 *   CPUID is KVM's supported set (x2APIC included); the LAPIC is in-kernel;
 *   the guest drives it in x2APIC mode through MSRs (no MMIO mapping needed).
 *
 * Ports (I/O space):
 *   GUEST_PORT_SERIAL (0x3f8) outb: one console byte (the VMM prints it)
 *   GUEST_PORT_CTRL   (0x500) outl: the guest-physical address of a
 *                     struct guest_msg; the VMM has handled the message when the
 *                     OUT instruction completes.
 */
#ifndef LAZYVM_GUEST_ABI_H
#define LAZYVM_GUEST_ABI_H

#include <stdint.h>

#define GUEST_ABI_VERSION 1u

#define GUEST_BOOT_INFO_GPA 0x1000u
#define GUEST_PML4_GPA      0x2000u
#define GUEST_PDPT_GPA      0x3000u
#define GUEST_PD_GPA        0x4000u /* four of them, 0x4000 - 0x7fff */
#define GUEST_GDT_GPA       0x8000u
#define GUEST_IMAGE_GPA     0x100000u
#define GUEST_IMAGE_MAX     (4u << 20) /* image + bss must end below 5 MiB */
#define GUEST_MEM_MIN       (16u << 20)
#define GUEST_MEM_MAX       (4ull << 30)

#define GUEST_CS_SELECTOR 0x08u
#define GUEST_DS_SELECTOR 0x10u

#define GUEST_PORT_SERIAL 0x3f8u
#define GUEST_PORT_CTRL   0x500u

#define GUEST_MAX_VCPUS    8u
#define GUEST_WORKLOAD_MAX 256u

#define GUEST_BOOT_MAGIC 0x544f4f42594c5a4cull /* "LZYBOOT" + 'T' */
#define GUEST_MSG_MAGIC  0x4d59564cu           /* "LVYM" */

/* Written by the VMM at GUEST_BOOT_INFO_GPA. */
struct guest_boot_info {
	uint64_t magic;            /* GUEST_BOOT_MAGIC */
	uint32_t abi_version;      /* GUEST_ABI_VERSION */
	uint32_t nr_vcpus;         /* 1 .. GUEST_MAX_VCPUS */
	uint64_t mem_size;         /* bytes of guest RAM from gpa 0 */
	uint64_t seed;             /* for the workloads' patterns and random choices */
	uint32_t timeslice_us;     /* LAPIC timer period for preemption */
	uint32_t apic_ns_per_tick; /* LAPIC timer: ns per count at divide-by-1 */
	uint32_t flags;            /* GUEST_BOOT_* */
	uint32_t reserved0;
	/* Written by the guest at boot: the end of its core (kernel image, bss
	 * with stacks, IDT and GDT), the memory KVM itself touches when it
	 * delivers an event; a VMM whose exit intake cannot serve such accesses
	 * installs [0, core_end) before the guest runs. 0: not told. */
	uint64_t core_end;
	uint64_t reserved[3];
	/* Tasks joined with '+', e.g. "scan:16M+random:8M:1000+compute:100000";
	 * NUL-terminated. Sizes take k/M/G suffixes (binary). */
	char workload[GUEST_WORKLOAD_MAX];
};

/* Stop after the prepare phases and ask for a snapshot at that point
 * (GUEST_MSG_SNAPSHOT); without it the guest reports GUEST_MSG_PREPARED and
 * goes straight on to the run phases. */
#define GUEST_BOOT_SNAPSHOT (1u << 0)

enum guest_msg_type {
	GUEST_MSG_BOOTED = 1,   /* vCPU arg0 is up; text: "lazyvm guest v<abi>" */
	GUEST_MSG_PREPARED = 2, /* every prepare phase done (no snapshot asked) */
	GUEST_MSG_SNAPSHOT = 3, /* the snapshot point: every other vCPU is parked;
	                         * the VMM saves the VM now. After a restore the
	                         * guest continues right after this message. */
	GUEST_MSG_RESULT = 4,   /* one task's run phase: status 0 pass, else fail;
	                         * arg0 = task index, arg1 = bytes verified,
	                         * arg2 = checkable value (compute), text = task spec */
	GUEST_MSG_DONE = 5,     /* all tasks finished: status 0 = every one passed */
	GUEST_MSG_PANIC = 6,    /* an exception: arg0 = vector, arg1 = error code,
	                         * arg2 = RIP, arg3 = CR2; the vCPU halts for ever */
	GUEST_MSG_LOG = 7,      /* text is a line for the VMM's log */
};

/* Sent by writing its guest-physical address to GUEST_PORT_CTRL. Must not
 * cross a page boundary (the guest aligns it to 256 bytes). */
struct guest_msg {
	uint32_t magic;   /* GUEST_MSG_MAGIC */
	uint16_t version; /* GUEST_ABI_VERSION */
	uint16_t type;    /* enum guest_msg_type */
	uint32_t vcpu;
	int32_t status;
	uint64_t arg[4];
	char text[88]; /* NUL-terminated */
};

_Static_assert(sizeof(struct guest_boot_info) == 336, "boot info layout");
_Static_assert(sizeof(struct guest_msg) == 136, "guest_msg layout");
_Static_assert(__builtin_offsetof(struct guest_msg, arg) == 16, "guest_msg layout");
_Static_assert(__builtin_offsetof(struct guest_boot_info, workload) == 80, "boot info layout");

#endif
