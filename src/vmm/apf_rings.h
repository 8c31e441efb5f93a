/* The exitless async page fault rings, in the layout of Firecracker's
 * experimental KVM_SET_APF_EVENTFD interface (SYSTEM.md section 2): one page
 * per vCPU holding a header and two rings of 64 16-byte entries, a *notify*
 * ring (fault intake -> I/O task) and a *complete* ring (I/O task -> the side
 * that delivers "page ready"). NOTIFY_ARMED is the io_uring wake-up idiom: the
 * I/O task sets it only when it found the notify ring empty and is about to
 * sleep, then looks again; a producer signals the eventfd only when it is set,
 * so an I/O task serving many vCPUs is woken only when it had nothing to do. */
#ifndef LAZYVM_APF_RINGS_H
#define LAZYVM_APF_RINGS_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define APF_RINGS_VERSION      1u
#define APF_RING_ENTRIES       64u
#define APF_RINGS_NOTIFY_ARMED 1u

struct apf_ring_entry {
	uint64_t gpa;
	uint64_t flags; /* bits 31:0: the token */
};

struct apf_ring {
	_Atomic uint32_t head; /* consumer */
	uint8_t pad0[60];
	_Atomic uint32_t tail; /* producer */
	uint8_t pad1[60];
	struct apf_ring_entry e[APF_RING_ENTRIES];
};

struct apf_rings_page {
	uint32_t version;       /* APF_RINGS_VERSION */
	uint32_t ring_size;     /* APF_RING_ENTRIES */
	uint32_t entry_size;    /* sizeof(struct apf_ring_entry) */
	_Atomic uint32_t flags; /* APF_RINGS_NOTIFY_ARMED */
	uint64_t reserved[6];
	struct apf_ring notify;
	struct apf_ring complete;
};

_Static_assert(sizeof(struct apf_ring_entry) == 16, "ring entry layout");
_Static_assert(offsetof(struct apf_ring, tail) == 64, "ring layout");
_Static_assert(offsetof(struct apf_ring, e) == 128, "ring layout");
_Static_assert(offsetof(struct apf_rings_page, notify) == 64, "rings page layout");
_Static_assert(sizeof(struct apf_rings_page) <= 4096, "rings page fits a page");

void apf_rings_init(struct apf_rings_page *p);

/* Single producer / single consumer. push fails when full, pop when empty. */
bool apf_ring_push(struct apf_ring *r, const struct apf_ring_entry *e);
bool apf_ring_pop(struct apf_ring *r, struct apf_ring_entry *e);
bool apf_ring_empty(struct apf_ring *r);
uint32_t apf_ring_count(struct apf_ring *r);

/* Producer side of the wake-up rule, after a push: true when the consumer had
 * armed the ring (it is asleep or about to be) and must be signalled; the
 * flag is cleared so that one wake-up is sent per sleep. */
bool apf_rings_need_wakeup(struct apf_rings_page *p);

#endif
