/* A 16550A UART as a Linux 8250 driver sees it: THR/RBR, IER, IIR with the
 * FIFO bits, FCR, LCR with DLAB, MCR (loopback, OUT2), LSR, MSR, SCR. Output
 * is sent at once (THR is always empty again), so "transmitter empty"
 * interrupts come right after each byte; there is no input except what
 * loopback feeds back. The register model is pure: the caller holds its own
 * lock around every call and supplies the byte sink and the IRQ line. */
#ifndef LAZYVM_UART_H
#define LAZYVM_UART_H

#include <stdbool.h>
#include <stdint.h>

/* Every bit of state, in one plain struct so that a snapshot saves it as one
 * blob (device section SNAP_DEV_UART0). Only uint8_t fields: no padding, the
 * same bytes on every build. */
struct uart_state {
	uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
	uint8_t rbr;     /* the received byte (loopback) */
	uint8_t rx_full; /* rbr holds a byte not read yet */
	uint8_t thri;    /* "transmitter empty" interrupt pending */
	uint8_t irq;     /* the level lazyvm last put on the IRQ line */
	uint8_t version; /* UART_STATE_VERSION */
};
#define UART_STATE_VERSION 1u

struct uart {
	struct uart_state s;
	void (*tx)(void *ctx, uint8_t byte);    /* a byte the guest sent */
	void (*set_irq)(void *ctx, bool level); /* the interrupt line changed */
	void *ctx;
};

/* Power-on state: everything 0, LCR 8N1, divisor 1 (115200 baud). */
void uart_init(struct uart *u, void (*tx)(void *, uint8_t), void (*set_irq)(void *, bool),
               void *ctx);
/* reg is the offset from the base port, 0-7; others read 0xff, write nothing. */
uint8_t uart_read(struct uart *u, unsigned reg);
void uart_write(struct uart *u, unsigned reg, uint8_t val);
/* Puts saved state back (a restore) and drives the IRQ line to match it.
 * -EINVAL when the blob is not of this version. */
int uart_load(struct uart *u, const struct uart_state *s);

#endif
