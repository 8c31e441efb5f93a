/* A Linux guest's devices and console (linux.c): the 16550 UART on COM1 with
 * IRQ 4 through the in-kernel irqchip, the i8042 (its reset ends the VM), the
 * legacy ports Linux probes answered as absent, and the console lines that
 * carry the guest's verdicts:
 *   a line containing "Kernel panic"        fails the VM with that line
 *   "lazyvm: snapshot"                      the snapshot point (--snapshot-dir)
 *   "lazyvm: result pass"                   one result, passed
 *   "lazyvm: result fail: WHY"              one result, failed: the VM stops with WHY
 * The i8042 reset (Linux's reboot=k) is the clean end of the run. */
#ifndef LAZYVM_LINUX_H
#define LAZYVM_LINUX_H

#include <pthread.h>

#include "dev/i8042.h"
#include "dev/rtc.h"
#include "dev/uart.h"
#include "vmm.h"

#define LINUX_UART0_PORT 0x3f8u
#define LINUX_UART0_IRQ  4u

enum linux_action { LINUX_NONE, LINUX_FAIL, LINUX_SNAPSHOT, LINUX_RESET };

struct linux_devs {
	struct vm *vm;
	pthread_mutex_t lock; /* the UART, the i8042, the RTC */
	struct uart uart;
	struct i8042_state kbd;
	struct rtc_state rtc;
	char line[240];
	size_t len;
	/* what the last console line asks for, taken by the vCPU that wrote it
	 * once it has let go of the lock (a snapshot waits for the others) */
	enum linux_action action;
	char action_text[sizeof(((struct vm_report *)0)->error)];
};

/* vm_create with cfg.linux_guest: allocates vm->lx and fills vm->pio (not
 * strict). The VM fd exists. 0 or -errno. */
int linux_devs_create(struct vm *vm);
/* vm_destroy: frees vm->lx (NULL is fine). */
void linux_devs_free(struct vm *vm);
/* The UART's state for a snapshot (devices.c), and putting it back. */
void linux_uart_state(struct linux_devs *d, struct uart_state *st);
int linux_uart_load(struct linux_devs *d, const struct uart_state *st);
/* Whatever is left of the console's last line, printed (at the VM's end). */
void linux_console_flush(struct linux_devs *d);

#endif
