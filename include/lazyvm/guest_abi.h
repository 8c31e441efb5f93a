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
/* Enable the PV async PF protocol if the host advertises it (the Linux PV
 * async PF ABI below): every vCPU probes CPUID and, when both feature bits
 * are there, enables it at boot. Without this flag the guest never writes
 * the async PF MSRs. */
#define GUEST_BOOT_APF (1u << 1)

enum guest_msg_type {
	GUEST_MSG_BOOTED = 1,   /* vCPU arg0 is up; text: "lazyvm guest v<abi>" */
	GUEST_MSG_PREPARED = 2, /* every prepare phase done (no snapshot asked) */
	GUEST_MSG_SNAPSHOT = 3, /* the snapshot point: every other vCPU is parked;
	                         * the VMM saves the VM now. After a restore the
	                         * guest continues right after this message. */
	GUEST_MSG_RESULT = 4,   /* one task's run phase: status 0 pass, else fail;
	                         * arg0 = task index, arg1 = bytes verified,
	                         * arg2 = checkable value (compute), text = task spec */
	GUEST_MSG_DONE = 5,     /* all tasks finished: status 0 = every one passed;
	                         * arg0 = tasks, arg1 = tasks that failed,
	                         * arg2 = async PF "page not present" events and
	                         * arg3 = "page ready" events (wake-all included)
	                         * the guest took, summed over its vCPUs (0 with
	                         * async PF off); one LOG line per vCPU with async
	                         * PF on, sent just before, has the details */
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

/* ---- Linux PV async PF ABI ----
 *
 * What a stock Linux guest speaks (Linux Documentation/virt/kvm/x86/msr.rst
 * and cpuid.rst). KVM implements it itself; lazyvm's VMM implements the same
 * MSRs and injects the same events. The names and values are Linux's: the
 * macros are spelled token for token as in <asm/kvm_para.h>, so a file may
 * include both; the struct, however, clashes with that header's (which has a
 * guest-internal field after the 64 bytes): include one or the other.
 *
 * Discovery: CPUID KVM_CPUID_SIGNATURE gives "KVMKVMKVM\0\0\0" in EBX, ECX,
 * EDX; CPUID KVM_CPUID_FEATURES EAX has KVM_FEATURE_ASYNC_PF and
 * KVM_FEATURE_ASYNC_PF_INT. Set-up, per vCPU, in this order:
 *   MSR_KVM_ASYNC_PF_INT = the "page ready" vector (bits 7:0)
 *   MSR_KVM_ASYNC_PF_EN  = GPA of the vCPU's struct kvm_vcpu_pv_apf_data
 *                          (64-byte aligned: bits 63:6) | ENABLED |
 *                          SEND_ALWAYS | DELIVERY_AS_INT
 * SEND_ALWAYS: this guest runs every task at CPL0, and without it a host only
 * makes a fault asynchronous at CPL3. A host makes a fault asynchronous only
 * when the vCPU has interrupts enabled and is not delivering an event;
 * otherwise it resolves it synchronously and the guest sees nothing.
 *
 * "Page not present": the host writes flags = KVM_PV_REASON_PAGE_NOT_PRESENT
 * and injects #PF with CR2 = the token (32 bits). The guest reads CR2, clears
 * flags, and parks the task that faulted until that token is ready.
 * "Page ready": only while token == 0 (the slot is free) and no earlier one
 * is unacknowledged, the host writes the token and raises the vector (a fixed
 * LAPIC interrupt). The guest reads token, writes 0 to it, wakes the token's
 * tasks (KVM_ASYNC_PF_READY_ALL_TOKEN: every parked task), writes 1 to
 * MSR_KVM_ASYNC_PF_ACK, and EOIs. KVM sends a "ready all" when the protocol is
 * enabled (also by a restore that sets MSR_KVM_ASYNC_PF_EN). */
#define KVM_CPUID_SIGNATURE 0x40000000
#define KVM_SIGNATURE       "KVMKVMKVM\0\0\0"
#define KVM_CPUID_FEATURES  0x40000001

#define KVM_FEATURE_ASYNC_PF     4  /* bit of KVM_CPUID_FEATURES EAX */
#define KVM_FEATURE_ASYNC_PF_INT 14 /* bit of KVM_CPUID_FEATURES EAX */

#define MSR_KVM_ASYNC_PF_EN  0x4b564d02
#define MSR_KVM_ASYNC_PF_INT 0x4b564d06 /* bits 7:0: the "page ready" vector */
#define MSR_KVM_ASYNC_PF_ACK 0x4b564d07 /* write 1: "page ready" consumed */

/* MSR_KVM_ASYNC_PF_EN bits; bits 63:6 are the area's GPA */
#define KVM_ASYNC_PF_ENABLED         (1 << 0)
#define KVM_ASYNC_PF_SEND_ALWAYS     (1 << 1) /* also at CPL0 */
#define KVM_ASYNC_PF_DELIVERY_AS_INT (1 << 3) /* "page ready" as an interrupt */
#define KVM_ASYNC_PF_GPA_MASK        (~0x3full)

/* kvm_vcpu_pv_apf_data.flags */
#define KVM_PV_REASON_PAGE_NOT_PRESENT 1
/* kvm_vcpu_pv_apf_data.token of a "page ready": wake every parked task */
#define KVM_ASYNC_PF_READY_ALL_TOKEN 0xffffffffu

/* One per vCPU, 64-byte aligned, in guest RAM; written by the host, read and
 * cleared by the guest. The guest keeps its areas inside its core (below
 * guest_boot_info.core_end). */
struct kvm_vcpu_pv_apf_data {
	uint32_t flags; /* "page not present": KVM_PV_REASON_PAGE_NOT_PRESENT */
	uint32_t token; /* "page ready": the token; 0 = slot free */
	uint8_t pad[56];
};

/* The bundled guest's own async PF bookkeeping, right after each vCPU's area
 * (at the area's GPA + 64): not part of the PV ABI. The guest keeps its
 * counters there for its own end-of-run report, and a host can read them for
 * a stall report. A host checks the magic before it believes anything else
 * in it (so a guest without it is simply not reported on, and adding it
 * needed no new ABI version); the guest updates it as it goes, so a report
 * taken while it runs may be torn. */
#define GUEST_APF_DIAG_MAGIC  0x47414944u /* "DIAG" */
#define GUEST_APF_DIAG_TOKENS 8u
struct guest_apf_diag {
	uint32_t magic;  /* GUEST_APF_DIAG_MAGIC */
	uint32_t parked; /* tasks of this vCPU parked on a token now */
	uint64_t not_present, ready, ready_before_wait, wake_all; /* events taken */
	uint32_t last_not_present, last_ready;                    /* their last tokens */
	uint32_t nparked_tokens; /* parked tasks counted with parked_tokens (may exceed it) */
	uint32_t reserved;
	uint32_t parked_tokens[GUEST_APF_DIAG_TOKENS]; /* what the first of them wait for */
};

/* The "page ready" vector the bundled guest programs into
 * MSR_KVM_ASYNC_PF_INT (a host must take whatever the guest writes there). */
#define GUEST_APF_VECTOR 0xecu

_Static_assert(sizeof(struct kvm_vcpu_pv_apf_data) == 64, "async PF area layout");
_Static_assert(__builtin_offsetof(struct kvm_vcpu_pv_apf_data, token) == 4, "async PF area layout");

_Static_assert(sizeof(struct guest_apf_diag) == 88, "async PF diag layout");
_Static_assert(sizeof(struct guest_boot_info) == 336, "boot info layout");
_Static_assert(sizeof(struct guest_msg) == 136, "guest_msg layout");
_Static_assert(__builtin_offsetof(struct guest_msg, arg) == 16, "guest_msg layout");
_Static_assert(__builtin_offsetof(struct guest_boot_info, workload) == 80, "boot info layout");

#endif
