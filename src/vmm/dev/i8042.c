/* The i8042 model (i8042.h). Command numbers from the 8042 controller's
 * documentation, as Linux's drivers/input/serio/i8042.h names them. */
#include "i8042.h"

#include <string.h>

#define STR_OBF           0x01 /* output buffer full */
#define STR_SYSFLAG       0x04 /* self test passed since power-on */
#define STR_KEYLOCK       0x10 /* set: the keyboard is not locked */
#define CMD_READ_CTR      0x20
#define CMD_WRITE_CTR     0x60
#define CMD_AUX_TEST      0xa9
#define CMD_SELF_TEST     0xaa
#define CMD_KBD_TEST      0xab
#define CMD_WRITE_KBD_OUT 0xd2
#define CMD_WRITE_AUX_OUT 0xd3
#define CMD_WRITE_AUX     0xd4
#define CMD_RESET         0xfe

void i8042_init(struct i8042_state *s)
{
	memset(s, 0, sizeof(*s));
	s->ctr = 0x30; /* both ports' clocks disabled, no interrupts */
	s->version = I8042_STATE_VERSION;
}

static void put_out(struct i8042_state *s, uint8_t v)
{
	s->out = v;
	s->has_out = 1;
}

uint8_t i8042_read(struct i8042_state *s, uint16_t port)
{
	if (port == I8042_CMD_PORT) /* input buffer never full: writes are taken at once */
		return (uint8_t)(STR_SYSFLAG | STR_KEYLOCK | (s->has_out ? STR_OBF : 0));
	s->has_out = 0;
	return s->out;
}

bool i8042_write(struct i8042_state *s, uint16_t port, uint8_t val)
{
	if (port == I8042_DATA_PORT) {
		uint8_t cmd = s->pending;

		s->pending = 0;
		if (cmd == CMD_WRITE_CTR)
			s->ctr = val;
		else if (cmd == CMD_WRITE_KBD_OUT || cmd == CMD_WRITE_AUX_OUT)
			put_out(s, val); /* loops back, as the driver's AUX probe expects */
		/* bytes for the keyboard or the mouse: nobody there, no answer */
		return false;
	}
	switch (val) {
	case CMD_READ_CTR: put_out(s, s->ctr); break;
	case CMD_WRITE_CTR:
	case CMD_WRITE_KBD_OUT:
	case CMD_WRITE_AUX_OUT:
	case CMD_WRITE_AUX: s->pending = val; break;
	case CMD_SELF_TEST: put_out(s, 0x55); break;
	case CMD_KBD_TEST:
	case CMD_AUX_TEST: put_out(s, 0x00); break; /* interface test: no error */
	case CMD_RESET: s->reset = 1; return true;
	default: break; /* enable/disable ports and the rest: nothing to model */
	}
	return false;
}
