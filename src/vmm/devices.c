/* Device state in snapshots (devices.h): the table, and KVM's in-kernel PIT. */
#include "devices.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lazyvm/log.h"
#include "linux.h"
#include "vmm.h"

/* The i8254 KVM emulates (KVM_CREATE_PIT2, vm_config.pit): its counters,
 * modes and the speaker/channel-2 gate. */
static int pit_save(struct vm *vm, struct snap_writer *w)
{
	struct kvm_pit_state2 ps;

	if (!vm->cfg.pit)
		return 0;
	memset(&ps, 0, sizeof(ps));
	if (ioctl(vm->fd, KVM_GET_PIT2, &ps) < 0)
		return -errno;
	snap_put(w, SNAP_DEVICE, SNAP_DEV_PIT, &ps, sizeof(ps));
	return 0;
}

static int pit_load(struct vm *vm, const struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len;
	const struct kvm_pit_state2 *ps = snap_find(r, SNAP_DEVICE, SNAP_DEV_PIT, &len);

	if (!ps && !vm->cfg.pit)
		return 0;
	if (!ps || !vm->cfg.pit) {
		snprintf(why, whylen, "%s",
		         ps ? "the snapshot has a PIT but the VM has none"
		            : "the VM has a PIT but the snapshot has no state for it");
		return -EINVAL;
	}
	if (len != sizeof(*ps)) {
		snprintf(why, whylen, "PIT state of %llu bytes, want %zu", (unsigned long long)len,
		         sizeof(*ps));
		return -EINVAL;
	}
	if (ioctl(vm->fd, KVM_SET_PIT2, ps) < 0) {
		int e = errno;

		snprintf(why, whylen, "KVM_SET_PIT2: %s", strerror(e));
		return -e;
	}
	return 0;
}

/* A Linux guest's COM1 (dev/uart.h): its struct uart_state as one blob. The
 * i8042 and the RTC are not saved: between two accesses they hold nothing a
 * guest waits on (a snapshot is taken at a console line, not mid-command). */
static int uart0_save(struct vm *vm, struct snap_writer *w)
{
	if (!vm->lx)
		return 0;
	struct uart_state st;
	linux_uart_state(vm->lx, &st);
	snap_put(w, SNAP_DEVICE, SNAP_DEV_UART0, &st, sizeof(st));
	return 0;
}

static int uart0_load(struct vm *vm, const struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len;
	const struct uart_state *st = snap_find(r, SNAP_DEVICE, SNAP_DEV_UART0, &len);

	if (!st && !vm->lx)
		return 0;
	if (!st || !vm->lx) {
		snprintf(why, whylen, "%s",
		         st ? "the snapshot has a Linux guest's UART but the VM has none"
		            : "the VM has a UART but the snapshot has no state for it");
		return -EINVAL;
	}
	if (len != sizeof(*st) || st->version != UART_STATE_VERSION) {
		snprintf(why, whylen, "UART state of %llu bytes, version %u; want %zu, version %u",
		         (unsigned long long)len, len ? st->version : 0, sizeof(*st),
		         UART_STATE_VERSION);
		return -EINVAL;
	}
	return linux_uart_load(vm->lx, st);
}

static const struct vm_device_ops devices[] = {
    {.name = "pit", .id = SNAP_DEV_PIT, .save = pit_save, .load = pit_load},
    {.name = "uart0", .id = SNAP_DEV_UART0, .save = uart0_save, .load = uart0_load},
};

#define NDEVICES (sizeof(devices) / sizeof(devices[0]))

int devices_save(struct vm *vm, struct snap_writer *w)
{
	for (size_t i = 0; i < NDEVICES; i++) {
		int r = devices[i].save(vm, w);

		if (r < 0) {
			lv_err("saving device %s: %s", devices[i].name, strerror(-r));
			return r;
		}
	}
	return 0;
}

static const struct vm_device_ops *device_by_id(uint32_t id)
{
	for (size_t i = 0; i < NDEVICES; i++)
		if (devices[i].id == id)
			return &devices[i];
	return NULL;
}

int devices_load(struct vm *vm, const struct snap_reader *r, char *why, size_t whylen)
{
	struct snap_section s;
	size_t off = 0;
	char what[200];

	while (snap_next(r, &off, &s))
		if (s.type == SNAP_DEVICE && !device_by_id(s.index)) {
			snprintf(
			    why, whylen,
			    "the snapshot holds the state of device %u, which this lazyvm does "
			    "not know",
			    s.index);
			return -EINVAL;
		}
	for (size_t i = 0; i < NDEVICES; i++) {
		int e = devices[i].load(vm, r, what, sizeof(what));

		if (e < 0) {
			snprintf(why, whylen, "device %s: %s", devices[i].name, what);
			return e;
		}
	}
	return 0;
}
