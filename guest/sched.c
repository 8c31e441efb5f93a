/* Tasks and the round-robin scheduler.
 *
 * Every vCPU has its own run queue (an array of the tasks pinned to it, which
 * never migrate) and its own idle task (its boot context). A switch happens
 * only in trap context: the timer interrupt preempts, sched_yield() (isr.S)
 * enters the same path by hand. Either way the task is saved as a trap frame
 * on its own stack, and
 * sched_switch() returns the frame of the next runnable task of this vCPU's
 * queue after the current one, or the idle task's when none is.
 *
 * The queue's lock serialises a task blocking against a wake from another
 * vCPU; everything else about a vCPU is touched only by that vCPU.
 */
#include "guest.h"

#define RFLAGS_RESERVED (1ull << 1)

static struct task tasks[GUEST_MAX_TASKS];
static uint8_t task_stacks[GUEST_MAX_TASKS][TASK_STACK_SIZE] __attribute__((aligned(4096)));
static unsigned tasks_used;

/* Where every task starts; returning from fn means the task is done. */
static __attribute__((noreturn)) void task_start(struct task *t)
{
	t->fn(t->arg);
	task_exit();
}

struct task *task_create(uint32_t vcpu, void (*fn)(void *), void *arg, const char *name)
{
	struct cpu *c = &cpus[vcpu];
	struct task *t;
	uint64_t *top, flags;
	struct trap_frame *f;

	if (tasks_used == GUEST_MAX_TASKS || vcpu >= GUEST_MAX_VCPUS)
		return NULL;
	t = &tasks[tasks_used];
	top = (uint64_t *)(task_stacks[tasks_used] + TASK_STACK_SIZE);
	tasks_used++;

	/* A first frame as if the task had been interrupted at task_start's
	 * entry: RSP 8 below a 16-byte boundary, as after a call, with a 0
	 * return address that nothing uses. */
	*--top = 0;
	f = (struct trap_frame *)top - 1;
	memset(f, 0, sizeof(*f));
	f->rip = (uint64_t)(uintptr_t)task_start;
	f->cs = GUEST_CS_SELECTOR;
	f->rflags = RFLAGS_IF | RFLAGS_RESERVED;
	f->rsp = (uint64_t)(uintptr_t)top;
	f->ss = GUEST_DS_SELECTOR;
	f->rdi = (uint64_t)(uintptr_t)t;

	t->frame = f;
	t->state = TASK_RUNNABLE;
	t->vcpu = vcpu;
	t->fn = fn;
	t->arg = arg;
	t->name = name;

	flags = irq_save();
	spin_lock(&c->lock);
	c->tasks[c->ntasks++] = t;
	spin_unlock(&c->lock);
	irq_restore(flags);
	return t;
}

void sched_start_cpu(void)
{
	struct cpu *c = this_cpu();

	c->idle.state = TASK_RUNNABLE;
	c->idle.vcpu = c->index;
	c->idle.name = "idle";
	c->current = &c->idle;
}

struct trap_frame *sched_switch(struct trap_frame *f)
{
	struct cpu *c = this_cpu();
	struct task *next = &c->idle;

	c->current->frame = f;
	spin_lock(&c->lock);
	/* From the one after the last picked, round to itself. */
	for (uint32_t i = 1; i <= c->ntasks; i++) {
		uint32_t k = c->rr + i;

		if (k >= c->ntasks)
			k -= c->ntasks;
		if (c->tasks[k]->state == TASK_RUNNABLE) {
			next = c->tasks[k];
			c->rr = k;
			break;
		}
	}
	c->current = next;
	spin_unlock(&c->lock);
	return next->frame;
}

void sched_block_current(uint64_t key)
{
	struct cpu *c = this_cpu();

	spin_lock(&c->lock);
	c->current->wait_key = key;
	c->current->state = TASK_BLOCKED;
	spin_unlock(&c->lock);
}

/* The yield happens with interrupts off: the task is marked blocked, and a
 * timer switch in between would just do the yield's work. It resumes here,
 * after the `int`, once woken, and gets its interrupt flag back. */
void sched_block_on(uint64_t key)
{
	uint64_t flags = irq_save();

	sched_block_current(key);
	sched_yield();
	irq_restore(flags);
}

void sched_wait(uint64_t key, const volatile uint32_t *word, uint32_t expected)
{
	uint64_t flags = irq_save();
	struct cpu *c = this_cpu();
	bool block;

	spin_lock(&c->lock);
	block = *word == expected;
	if (block) {
		c->current->wait_key = key;
		c->current->state = TASK_BLOCKED;
	}
	spin_unlock(&c->lock);
	if (block)
		sched_yield();
	irq_restore(flags);
}

void task_exit(void)
{
	struct cpu *c = this_cpu();

	cli();
	spin_lock(&c->lock);
	c->current->state = TASK_DONE;
	spin_unlock(&c->lock);
	sched_yield();
	halt_forever(); /* not reached: a done task is never picked again */
}

/* Keys in [first, last], inclusive so that the whole key space is a range. */
static unsigned wake_cpu(struct cpu *c, uint64_t first, uint64_t last)
{
	uint64_t flags = irq_save();
	unsigned n = 0;

	spin_lock(&c->lock);
	for (uint32_t i = 0; i < c->ntasks; i++) {
		struct task *t = c->tasks[i];

		if (t->state == TASK_BLOCKED && t->wait_key >= first && t->wait_key <= last) {
			t->state = TASK_RUNNABLE;
			n++;
		}
	}
	spin_unlock(&c->lock);
	irq_restore(flags);
	return n;
}

static unsigned wake(uint64_t first, uint64_t last)
{
	unsigned n = 0;

	for (unsigned v = 0; v < GUEST_MAX_VCPUS; v++)
		n += wake_cpu(&cpus[v], first, last);
	return n;
}

unsigned sched_wake(uint64_t key)
{
	return wake(key, key);
}

unsigned sched_wake_all(void)
{
	return wake(0, UINT64_MAX);
}

void sched_blocked_keys(uint32_t vcpu, uint64_t first, uint64_t last, uint32_t *keys, uint32_t max,
                        uint32_t *count)
{
	struct cpu *c = &cpus[vcpu];
	uint64_t flags = irq_save();
	uint32_t n = 0;

	spin_lock(&c->lock);
	for (uint32_t i = 0; i < c->ntasks; i++) {
		const struct task *t = c->tasks[i];

		if (t->state != TASK_BLOCKED || t->wait_key < first || t->wait_key > last)
			continue;
		if (n < max)
			keys[n] = (uint32_t)t->wait_key;
		n++;
	}
	*count = n;
	spin_unlock(&c->lock);
	irq_restore(flags);
}

unsigned sched_wake_cpu(uint32_t vcpu, uint64_t first, uint64_t last)
{
	if (vcpu >= GUEST_MAX_VCPUS)
		return 0;
	return wake_cpu(&cpus[vcpu], first, last);
}
