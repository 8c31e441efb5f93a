/* Port I/O: a table of port ranges and their handlers, one per VM, through
 * which every KVM_EXIT_IO goes (vcpu.c). The bundled guest's table is strict:
 * a port nobody claims fails the VM, naming the port and RIP. A Linux guest
 * pokes at legacy ports that are not there (other COM ports, PCI config
 * space, the CMOS, the POST port): its table answers an unclaimed read with
 * all ones, what an ISA bus gives for an absent device, and ignores writes. */
#ifndef LAZYVM_PIO_H
#define LAZYVM_PIO_H

#include <stdbool.h>
#include <stdint.h>

struct vcpu;

/* One access of `size` bytes (1, 2 or 4) at `port`: `data` holds what the
 * guest wrote, or receives what it reads. Returns 0, or < 0 to stop the vCPU
 * (the handler has failed the VM with the reason). */
typedef int (*pio_fn)(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data,
                      unsigned size);

struct pio_range {
	uint16_t first, last; /* inclusive */
	const char *name;
	pio_fn fn; /* NULL: an absent device (reads all ones, writes ignored) */
	void *ctx;
};

#define PIO_MAX_RANGES 24

struct pio_table {
	struct pio_range r[PIO_MAX_RANGES];
	unsigned n;
	bool strict; /* an unclaimed port fails the VM */
};

void pio_init(struct pio_table *t, bool strict);
/* Claims [first, last] for fn (NULL: absent, see pio_range). -EINVAL when
 * first > last, -EEXIST when it overlaps a claimed range, -ENOSPC when full. */
int pio_add(struct pio_table *t, uint16_t first, uint16_t last, const char *name, pio_fn fn,
            void *ctx);
/* The range that claims port, NULL if none. */
const struct pio_range *pio_find(const struct pio_table *t, uint16_t port);
/* One KVM_EXIT_IO: `count` accesses of `size` bytes at `port` (string I/O
 * repeats the port), data laid out one after the other. Returns 0, the first
 * handler's < 0, or -ENOENT when the port is unclaimed in a strict table
 * (the caller names it). */
int pio_dispatch(const struct pio_table *t, struct vcpu *v, uint16_t port, bool out, unsigned size,
                 unsigned count, uint8_t *data);

#endif
