/* The guest kernel's internal interfaces: per-vCPU data, tasks and the
 * scheduler, messages to the VMM, x2APIC, traps, workloads.
 *
 * Memory is identity-mapped (virtual == guest-physical) by the VMM's page
 * tables, so a pointer is also the GPA the VMM is told.
 */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lazyvm/guest_abi.h"
#include "arch.h"
#include "layout.h"

#define PAGE_SIZE       4096ull
#define GUEST_MAX_TASKS 32 /* WORKLOAD_MAX_TASKS: workload.h checks */
#define TASK_STACK_SIZE (16 * 1024)
#define MSG_TEXT_MAX    sizeof(((struct guest_msg *)0)->text)

#define VEC_TIMER    0x20
#define VEC_YIELD    LAYOUT_VEC_YIELD
#define VEC_SPURIOUS 0xff

/* ---- traps (trap.c, isr.S) ---- */

/* What isr.S pushes: the GPRs below the vector, the error code (0 when the
 * CPU pushes none) and the CPU's own interrupt frame. A task that is not
 * running is exactly one of these on its stack. */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* Builds the shared IDT; vCPU 0 only, before any vCPU calls idt_load(). */
void idt_build(void);
void idt_load(void);
/* Called by isr.S for every vector; returns the frame to resume, which is
 * another task's when the scheduler switched. */
struct trap_frame *trap_dispatch(struct trap_frame *f);

/* ---- tasks and scheduling (sched.c) ---- */

enum task_state { TASK_RUNNABLE, TASK_BLOCKED, TASK_DONE };

struct task {
	struct trap_frame *frame; /* saved context while not running */
	volatile uint32_t state;  /* enum task_state; written under the vCPU's lock */
	uint32_t vcpu;            /* tasks never migrate */
	uint64_t wait_key;        /* what a TASK_BLOCKED task waits for */
	void (*fn)(void *arg);
	void *arg;
	const char *name; /* for panics */
};

/* Keys below 2^32 are async page fault tokens (apf.c), and nothing else
 * may use them; internal ones are above. */
#define WAIT_KEY_APF_LAST 0xffffffffull
#define WAIT_KEY_PHASE    (1ull << 32)

/* Creates a runnable task on vCPU `vcpu`'s run queue; vCPU 0 only (creation
 * is not locked against itself). NULL when GUEST_MAX_TASKS are in use. */
struct task *task_create(uint32_t vcpu, void (*fn)(void *), void *arg, const char *name);
/* Makes the calling boot context this vCPU's idle task. */
void sched_start_cpu(void);
/* Trap context: save `f` as the current task's, return the next task's frame
 * (round robin over this vCPU's runnable tasks; its idle task if none). */
struct trap_frame *sched_switch(struct trap_frame *f);
/* Task context (isr.S): switch to the next runnable task, if any. */
void sched_yield(void);
void sched_block_on(uint64_t key);
/* Blocks on `key` only if *word == expected, checked under the same lock that
 * sched_wake() takes, so a wake after the caller's own check is never lost. */
void sched_wait(uint64_t key, const volatile uint32_t *word, uint32_t expected);
__attribute__((noreturn)) void task_exit(void);
/* Trap context (interrupts off): mark the current task blocked on `key`; the
 * caller then returns sched_switch(frame). For async page faults. */
void sched_block_current(uint64_t key);
/* Any context: make the tasks blocked on `key` (or all blocked tasks, those
 * parked on async page faults included) runnable; returns how many. A vCPU
 * that is idle notices at its next timer tick. */
unsigned sched_wake(uint64_t key);
unsigned sched_wake_all(void);
/* Any context: make vCPU `vcpu`'s tasks blocked on a key in [first, last]
 * runnable; returns how many. */
unsigned sched_wake_cpu(uint32_t vcpu, uint64_t first, uint64_t last);
/* Any context, for diagnostics: counts vCPU `vcpu`'s tasks blocked on a key in
 * [first, last] (a range within 32 bits) into *count and stores the keys of
 * the first `max` of them; both written under the run queue's lock. */
void sched_blocked_keys(uint32_t vcpu, uint64_t first, uint64_t last, uint32_t *keys, uint32_t max,
                        uint32_t *count);

/* ---- per-vCPU data ---- */

struct cpu {
	/* Per vCPU, so vCPUs never share a message; 256-aligned per the ABI. */
	struct guest_msg msg __attribute__((aligned(256)));
	struct guest_msg panic_msg __attribute__((aligned(256)));
	struct cpu *self; /* read through %gs by this_cpu() */
	uint32_t index;
	bool in_panic;
	bool parked;
	uint32_t masked_irqs; /* interrupts delivered with IF clear, dropped (trap.c) */
	spinlock_t lock;      /* the run queue and its tasks' state */
	struct task *current;
	struct task idle;
	uint32_t ntasks, rr;
	struct task *tasks[GUEST_MAX_TASKS];
} __attribute__((aligned(256)));

extern struct cpu cpus[GUEST_MAX_VCPUS];

/* GS base points at this vCPU's struct cpu (set once in main.c; GS base is
 * part of the vCPU's registers, so a snapshot restores it). */
static inline struct cpu *this_cpu(void)
{
	struct cpu *c;

	asm volatile("mov %%gs:%c1, %0" : "=r"(c) : "i"(offsetof(struct cpu, self)));
	return c;
}

/* ---- messages (msg.c) ---- */

void msg_send(uint16_t type, int32_t status, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
              const char *text);
__attribute__((format(printf, 1, 2))) void msg_log(const char *fmt, ...);
void msg_vlog(const char *fmt, va_list ap);
/* Trap context, once per vCPU: PANIC over the control port and the serial
 * console, then halt for ever. */
__attribute__((noreturn)) void msg_panic(uint64_t vector, uint64_t error, uint64_t rip,
                                         uint64_t cr2, const char *text);
void serial_puts(const char *s);

/* ---- formatting and memory (fmt.c) ---- */

__attribute__((format(printf, 3, 0))) size_t fmt_vformat(char *buf, size_t size, const char *fmt,
                                                         va_list ap);
__attribute__((format(printf, 3, 4))) size_t fmt_format(char *buf, size_t size, const char *fmt,
                                                        ...);
void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ---- x2APIC (apic.c) ---- */

bool apic_has_x2apic(void);
/* Enables x2APIC mode and starts the periodic timer on VEC_TIMER; returns the
 * initial count used. */
uint32_t apic_init(uint32_t timeslice_us, uint32_t ns_per_tick);
void apic_eoi(void);

/* ---- the run (main.c) ---- */

extern struct guest_boot_info boot; /* vCPU 0's validated copy */

/* Reports a LOG line and DONE with failure, stops every vCPU; never returns. */
__attribute__((noreturn, format(printf, 1, 2))) void guest_fail(const char *fmt, ...);

#endif
