/* The PS/2 controller (i8042) as far as a Linux guest needs one: its probe
 * (read and write the configuration byte, self tests) answers at once instead
 * of timing out, and the "pulse reset line" command (0xfe, which Linux's
 * reboot=k sends) is the guest's way to end the VM. No keyboard or mouse
 * behind it. Pure model; the caller locks. */
#ifndef LAZYVM_I8042_H
#define LAZYVM_I8042_H

#include <stdbool.h>
#include <stdint.h>

#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT  0x64

struct i8042_state {
	uint8_t ctr;     /* the controller configuration byte */
	uint8_t out;     /* the output buffer */
	uint8_t has_out; /* output buffer full */
	uint8_t pending; /* a command waiting for its data byte, 0 if none */
	uint8_t reset;   /* the guest asked for a reset */
	uint8_t version;
};
#define I8042_STATE_VERSION 1u

void i8042_init(struct i8042_state *s);
uint8_t i8042_read(struct i8042_state *s, uint16_t port);
/* Returns true when this write asked for a CPU reset. */
bool i8042_write(struct i8042_state *s, uint16_t port, uint8_t val);

#endif
