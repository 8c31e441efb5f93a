/* The VM's devices whose state a snapshot carries (SNAP_DEVICE sections,
 * index = the device's id, enum snap_device_id in snapshot.h). One static
 * table in devices.c; a device that is not part of a given VM saves nothing
 * and finds nothing to load. */
#ifndef LAZYVM_DEVICES_H
#define LAZYVM_DEVICES_H

#include <stddef.h>
#include <stdint.h>

#include "snapshot.h"

struct vm;

struct vm_device_ops {
	const char *name;
	uint32_t id; /* enum snap_device_id: its SNAP_DEVICE index */
	/* Appends the device's SNAP_DEVICE section when the VM has the device
	 * (nothing otherwise). 0 or -errno. The vCPUs are parked. */
	int (*save)(struct vm *vm, struct snap_writer *w);
	/* Puts the device's state back from its section, before any vCPU
	 * runs; a VM without the device needs no section, a VM with it
	 * insists. 0 or -errno with why filled. */
	int (*load)(struct vm *vm, const struct snap_reader *r, char *why, size_t whylen);
};

/* Every device of the table, in order. 0, or the first -errno (logged with
 * the device's name). */
int devices_save(struct vm *vm, struct snap_writer *w);
/* Every device of the table, in order, after the irqchip and before the
 * vCPUs. A SNAP_DEVICE section of an id no entry knows is refused (the
 * snapshot holds a device this lazyvm cannot put back). 0 or -errno, why
 * naming the device. */
int devices_load(struct vm *vm, const struct snap_reader *r, char *why, size_t whylen);

#endif
