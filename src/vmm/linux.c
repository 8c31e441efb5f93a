/* A Linux guest's devices and console verdicts (linux.h). */
#include "linux.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "vcpu.h"

static void set_irq4(void *ctx, bool level)
{
	struct linux_devs *d = ctx;
	struct kvm_irq_level irq = {.irq = LINUX_UART0_IRQ, .level = level};

	if (ioctl(d->vm->fd, KVM_IRQ_LINE, &irq) < 0)
		lv_warn("KVM_IRQ_LINE %u level %d: %s", LINUX_UART0_IRQ, level, strerror(errno));
}

static void set_action(struct linux_devs *d, enum linux_action a, const char *text)
{
	if (d->action == LINUX_FAIL)
		return; /* the first failure stands */
	d->action = a;
	snprintf(d->action_text, sizeof(d->action_text), "%s", text);
}

/* A complete console line (under d->lock): printed, then read for verdicts. */
static void console_line(struct linux_devs *d)
{
	struct vm *vm = d->vm;
	FILE *out = vm->cfg.quiet_console ? stderr : stdout;
	char *line = d->line, *p;

	while (d->len && (line[d->len - 1] == '\n' || line[d->len - 1] == '\r'))
		d->len--;
	line[d->len] = '\0';
	d->len = 0;
	atomic_store_explicit(&vm->progress_ns, lv_now_ns(), memory_order_relaxed);
	pthread_mutex_lock(&vm->console_lock);
	fprintf(out, "%s\n", line);
	fflush(out);
	pthread_mutex_unlock(&vm->console_lock);
	if (strstr(line, "Kernel panic")) {
		vm->report.panicked = true;
		set_action(d, LINUX_FAIL, line);
	} else if ((p = strstr(line, "lazyvm: result "))) {
		p += strlen("lazyvm: result ");
		pthread_mutex_lock(&vm->lock);
		vm->report.results++;
		if (strncmp(p, "pass", 4) != 0)
			vm->report.results_failed++;
		pthread_mutex_unlock(&vm->lock);
		if (strncmp(p, "pass", 4) != 0)
			set_action(d, LINUX_FAIL, line);
	} else if (strstr(line, "lazyvm: snapshot")) {
		set_action(d, LINUX_SNAPSHOT, line);
	}
}

static void uart_tx(void *ctx, uint8_t c)
{
	struct linux_devs *d = ctx;

	if (c == '\r')
		return;
	d->line[d->len++] = (char)c;
	if (c == '\n' || d->len == sizeof(d->line) - 1)
		console_line(d);
}

/* What a console line or a reset asked for, from the vCPU thread that did it,
 * with no device lock held. */
static int take_action(struct linux_devs *d, struct vcpu *v)
{
	struct vm *vm = d->vm;
	enum linux_action a;
	char text[sizeof(d->action_text)];

	pthread_mutex_lock(&d->lock);
	a = d->action;
	memcpy(text, d->action_text, sizeof(text));
	if (a != LINUX_FAIL)
		d->action = LINUX_NONE;
	pthread_mutex_unlock(&d->lock);
	switch (a) {
	case LINUX_NONE: return 0;
	case LINUX_FAIL: vm_fail(vm, "the Linux guest: %s", text); return -EIO;
	case LINUX_SNAPSHOT:
		vm->report.prepared = true;
		if (!vm->cfg.snapshot_dir && !vm->cfg.migrate) {
			/* a restored guest's trigger line is already past: go on */
			lv_debug("console: '%s' without --snapshot-dir: ignored", text);
			return 0;
		}
		return vcpu_snapshot_point(v);
	case LINUX_RESET:
		pthread_mutex_lock(&vm->lock);
		vm->report.done = true;
		vm->report.done_status = 0;
		vm->report.t_done_ns = lv_now_ns();
		pthread_mutex_unlock(&vm->lock);
		lv_info("the Linux guest reset the machine (i8042 0xfe): the VM ends");
		vm_set_state(vm, VM_STOPPING);
		return 1;
	}
	return 0;
}

static int uart_io(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data, unsigned size)
{
	struct linux_devs *d = ctx;
	unsigned reg = port - LINUX_UART0_PORT;

	pthread_mutex_lock(&d->lock);
	if (out)
		uart_write(&d->uart, reg, data[0]);
	else
		data[0] = uart_read(&d->uart, reg);
	pthread_mutex_unlock(&d->lock);
	if (!out && size > 1)
		memset(data + 1, 0xff, size - 1);
	int r = take_action(d, v);
	return r < 0 ? r : 0;
}

static int kbd_io(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data, unsigned size)
{
	struct linux_devs *d = ctx;
	bool reset = false;

	pthread_mutex_lock(&d->lock);
	if (out)
		reset = i8042_write(&d->kbd, port, data[0]);
	else
		data[0] = i8042_read(&d->kbd, port);
	if (reset)
		d->action = d->action == LINUX_FAIL ? LINUX_FAIL : LINUX_RESET;
	pthread_mutex_unlock(&d->lock);
	if (!out && size > 1)
		memset(data + 1, 0xff, size - 1);
	/* > 0: the VM is ending; stop this vCPU without an error */
	return take_action(d, v) != 0 ? -ECANCELED : 0;
}

static int rtc_io(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data, unsigned size)
{
	struct linux_devs *d = ctx;

	(void)v;
	pthread_mutex_lock(&d->lock);
	if (out)
		rtc_write(&d->rtc, port, data[0]);
	else
		data[0] = rtc_read(&d->rtc, port, time(NULL));
	pthread_mutex_unlock(&d->lock);
	if (!out && size > 1)
		memset(data + 1, 0xff, size - 1);
	return 0;
}

int linux_devs_create(struct vm *vm)
{
	static const struct {
		uint16_t first, last;
		const char *name;
	} absent[] = {
	    {0x80, 0x80, "POST code"},
	    {0x2e8, 0x2ef, "COM4"},
	    {0x2f8, 0x2ff, "COM2"},
	    {0x3e8, 0x3ef, "COM3"},
	    {0xcf8, 0xcff, "PCI configuration (no PCI: all ones)"},
	};
	struct linux_devs *d = calloc(1, sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	vm->lx = d;
	d->vm = vm;
	pthread_mutex_init(&d->lock, NULL);
	uart_init(&d->uart, uart_tx, set_irq4, d);
	i8042_init(&d->kbd);
	rtc_init(&d->rtc);
	pio_init(&vm->pio, false);
	if ((r = pio_add(&vm->pio, LINUX_UART0_PORT, LINUX_UART0_PORT + 7, "COM1 16550", uart_io,
	                 d)) < 0 ||
	    (r = pio_add(&vm->pio, I8042_DATA_PORT, I8042_DATA_PORT, "i8042 data", kbd_io, d)) <
	        0 ||
	    (r = pio_add(&vm->pio, I8042_CMD_PORT, I8042_CMD_PORT, "i8042 command", kbd_io, d)) <
	        0 ||
	    (r = pio_add(&vm->pio, RTC_INDEX_PORT, RTC_DATA_PORT, "CMOS RTC", rtc_io, d)) < 0)
		return r;
	for (unsigned i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
		if ((r = pio_add(&vm->pio, absent[i].first, absent[i].last, absent[i].name, NULL,
		                 NULL)) < 0)
			return r;
	return 0;
}

void linux_uart_state(struct linux_devs *d, struct uart_state *st)
{
	pthread_mutex_lock(&d->lock);
	*st = d->uart.s;
	pthread_mutex_unlock(&d->lock);
}

int linux_uart_load(struct linux_devs *d, const struct uart_state *st)
{
	pthread_mutex_lock(&d->lock);
	int r = uart_load(&d->uart, st);
	pthread_mutex_unlock(&d->lock);
	return r;
}

void linux_console_flush(struct linux_devs *d)
{
	pthread_mutex_lock(&d->lock);
	if (d->len)
		console_line(d);
	pthread_mutex_unlock(&d->lock);
}

void linux_devs_free(struct vm *vm)
{
	struct linux_devs *d = vm->lx;

	if (!d)
		return;
	vm->lx = NULL;
	pthread_mutex_destroy(&d->lock);
	free(d);
}
