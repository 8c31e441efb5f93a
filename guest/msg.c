/* Messages to the VMM (struct guest_msg over GUEST_PORT_CTRL) and the serial
 * console.
 *
 * A message is one OUT, i.e. one VM exit. The serial console costs an exit per
 * byte, so it only carries vCPU 0's banner and panics.
 */
#include "guest.h"

static spinlock_t serial_lock;

static void fill(struct guest_msg *m, uint32_t vcpu, uint16_t type, int32_t status, uint64_t a0,
                 uint64_t a1, uint64_t a2, uint64_t a3, const char *text)
{
	size_t i = 0;

	m->magic = GUEST_MSG_MAGIC;
	m->version = GUEST_ABI_VERSION;
	m->type = type;
	m->vcpu = vcpu;
	m->status = status;
	m->arg[0] = a0;
	m->arg[1] = a1;
	m->arg[2] = a2;
	m->arg[3] = a3;
	for (; text && text[i] && i < MSG_TEXT_MAX - 1; i++)
		m->text[i] = text[i];
	memset(m->text + i, 0, MSG_TEXT_MAX - i);
}

/* Interrupts stay off from the first byte to the OUT: the buffer is this
 * vCPU's, and another task on it must not fill it in between. */
void msg_send(uint16_t type, int32_t status, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
              const char *text)
{
	uint64_t flags = irq_save();
	struct cpu *c = this_cpu();

	fill(&c->msg, c->index, type, status, a0, a1, a2, a3, text);
	outl(GUEST_PORT_CTRL, (uint32_t)(uintptr_t)&c->msg);
	irq_restore(flags);
}

void msg_vlog(const char *fmt, va_list ap)
{
	char text[MSG_TEXT_MAX];

	fmt_vformat(text, sizeof(text), fmt, ap);
	msg_send(GUEST_MSG_LOG, 0, 0, 0, 0, 0, text);
}

void msg_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	msg_vlog(fmt, ap);
	va_end(ap);
}

void serial_puts(const char *s)
{
	uint64_t flags = irq_save();

	spin_lock(&serial_lock);
	for (; *s; s++)
		outb(GUEST_PORT_SERIAL, (uint8_t)*s);
	spin_unlock(&serial_lock);
	irq_restore(flags);
}

/* Its own buffer: a fault inside msg_send() must not report over a half
 * written message. A second panic on the same vCPU only halts. */
void msg_panic(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2, const char *text)
{
	struct cpu *c = this_cpu();
	char line[MSG_TEXT_MAX + 32];

	cli();
	if (c->in_panic)
		halt_forever();
	c->in_panic = true;
	/* Console first: the VMM stops the vCPU on the PANIC message. */
	fmt_format(line, sizeof(line), "lazyvm guest: vCPU %u panic: %s\n", c->index, text);
	serial_puts(line);
	fill(&c->panic_msg, c->index, GUEST_MSG_PANIC, 1, vector, error, rip, cr2, text);
	outl(GUEST_PORT_CTRL, (uint32_t)(uintptr_t)&c->panic_msg);
	halt_forever();
}
