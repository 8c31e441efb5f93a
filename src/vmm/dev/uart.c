/* The 16550A register model (uart.h). */
#include "uart.h"

#include <errno.h>
#include <string.h>

enum {
	REG_DATA = 0, /* RBR / THR, DLL with DLAB */
	REG_IER = 1,  /* DLM with DLAB */
	REG_IIR = 2,  /* read; FCR on write */
	REG_LCR = 3,
	REG_MCR = 4,
	REG_LSR = 5,
	REG_MSR = 6,
	REG_SCR = 7,
};

#define IER_RDI      0x01 /* received data available */
#define IER_THRI     0x02 /* transmitter holding register empty */
#define IIR_NO_INT   0x01
#define IIR_THRI     0x02
#define IIR_RDI      0x04
#define IIR_FIFO     0xc0 /* FIFOs enabled: a 16550A */
#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define LCR_DLAB     0x80
#define MCR_DTR      0x01
#define MCR_RTS      0x02
#define MCR_OUT1     0x04
#define MCR_OUT2     0x08
#define MCR_LOOP     0x10
#define LSR_DR       0x01
#define LSR_THRE     0x20
#define LSR_TEMT     0x40
#define MSR_CTS      0x10
#define MSR_DSR      0x20
#define MSR_RI       0x40
#define MSR_DCD      0x80

static uint8_t iir_id(const struct uart_state *s)
{
	if (s->rx_full && (s->ier & IER_RDI))
		return IIR_RDI;
	if (s->thri && (s->ier & IER_THRI))
		return IIR_THRI;
	return IIR_NO_INT;
}

/* On a PC the UART's interrupt pin reaches the PIC/IOAPIC through OUT2, and
 * loopback disconnects it. */
static void update_irq(struct uart *u)
{
	uint8_t level =
	    iir_id(&u->s) != IIR_NO_INT && (u->s.mcr & MCR_OUT2) && !(u->s.mcr & MCR_LOOP);

	if (level != u->s.irq) {
		u->s.irq = level;
		u->set_irq(u->ctx, level);
	}
}

void uart_init(struct uart *u, void (*tx)(void *, uint8_t), void (*set_irq)(void *, bool),
               void *ctx)
{
	memset(u, 0, sizeof(*u));
	u->s.lcr = 0x03;
	u->s.dll = 1;
	u->s.version = UART_STATE_VERSION;
	u->tx = tx;
	u->set_irq = set_irq;
	u->ctx = ctx;
}

uint8_t uart_read(struct uart *u, unsigned reg)
{
	struct uart_state *s = &u->s;
	uint8_t v;

	switch (reg) {
	case REG_DATA:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		v = s->rbr;
		s->rx_full = 0;
		update_irq(u);
		return v;
	case REG_IER: return s->lcr & LCR_DLAB ? s->dlm : s->ier;
	case REG_IIR:
		v = iir_id(s);
		if (v == IIR_THRI) { /* reading IIR acknowledges "transmitter empty" */
			s->thri = 0;
			update_irq(u);
		}
		return (uint8_t)(v | (s->fcr & FCR_ENABLE ? IIR_FIFO : 0));
	case REG_LCR: return s->lcr;
	case REG_MCR: return s->mcr;
	case REG_LSR: return (uint8_t)(LSR_THRE | LSR_TEMT | (s->rx_full ? LSR_DR : 0));
	case REG_MSR:
		if (s->mcr & MCR_LOOP) /* the modem outputs wired back to the inputs */
			return (uint8_t)((s->mcr & MCR_DTR ? MSR_DSR : 0) |
			                 (s->mcr & MCR_RTS ? MSR_CTS : 0) |
			                 (s->mcr & MCR_OUT1 ? MSR_RI : 0) |
			                 (s->mcr & MCR_OUT2 ? MSR_DCD : 0));
		return MSR_DCD | MSR_DSR | MSR_CTS; /* a peer is always there */
	case REG_SCR: return s->scr;
	default: return 0xff;
	}
}

void uart_write(struct uart *u, unsigned reg, uint8_t val)
{
	struct uart_state *s = &u->s;

	switch (reg) {
	case REG_DATA:
		if (s->lcr & LCR_DLAB) {
			s->dll = val;
			return;
		}
		if (s->mcr & MCR_LOOP) {
			s->rbr = val;
			s->rx_full = 1;
		} else {
			u->tx(u->ctx, val);
		}
		/* THR filled and sent at once: the pending interrupt drops and
		 * comes back, an edge for an edge-triggered ISA line */
		s->thri = 0;
		update_irq(u);
		s->thri = 1;
		update_irq(u);
		return;
	case REG_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = val;
			return;
		}
		/* enabling "transmitter empty" while THR is empty raises it at
		 * once (the 8250 driver tests this: UART_BUG_THRE otherwise) */
		if ((val & IER_THRI) && !(s->ier & IER_THRI))
			s->thri = 1;
		s->ier = val & 0x0f;
		update_irq(u);
		return;
	case REG_IIR:
		s->fcr = val & 0xc9; /* enable, DMA mode, trigger level; clear bits self-clear */
		if (val & FCR_CLEAR_RX)
			s->rx_full = 0;
		update_irq(u);
		return;
	case REG_LCR: s->lcr = val; return;
	case REG_MCR:
		s->mcr = val & 0x1f;
		update_irq(u);
		return;
	case REG_SCR: s->scr = val; return;
	default: return; /* LSR and MSR are read-only */
	}
}

int uart_load(struct uart *u, const struct uart_state *s)
{
	if (s->version != UART_STATE_VERSION)
		return -EINVAL;
	u->s = *s;
	/* a new VM's line starts low: raise it if it was high (an edge the
	 * 8250 driver takes as one more "transmitter empty", which is true) */
	u->set_irq(u->ctx, s->irq != 0);
	return 0;
}
