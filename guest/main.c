/* Boot of every vCPU, the phases of the run, and the idle task.
 *
 * All vCPUs enter together (no INIT/SIPI). vCPU 0 checks the boot info and
 * builds the shared IDT while the others wait; then each vCPU loads the IDT,
 * starts its x2APIC timer and reports BOOTED; vCPU 0 creates the tasks; every
 * vCPU becomes its idle task.
 *
 * Phases: every task prepares, counts itself in `prepared` and blocks until
 * `phase` becomes PHASE_RUN. vCPU 0's idle task coordinates: once every task
 * has prepared and every other vCPU has parked in its idle loop, it sends
 * SNAPSHOT (or PREPARED), releases the tasks, and once every task is done
 * sends DONE. The coordinator lives in the idle task because vCPU 0 only
 * idles when none of its own tasks can run, i.e. exactly when a phase may
 * have ended, and it costs no task slot.
 *
 * Everything that lasts across the snapshot is in memory, registers or the
 * LAPIC, which the snapshot restores: nothing here asks the host anything.
 */
#include "apf.h"
#include "workload.h"

#define MSR_GS_BASE      0xc0000101
#define HEAP_ALIGN       (2ull << 20)
#define IDENTITY_MAP_END (4ull << 30) /* the VMM maps [0, min(mem, 4 GiB)) */

_Static_assert(LAYOUT_KERNEL_CS == GUEST_CS_SELECTOR, "layout.h and guest_abi.h disagree");
_Static_assert(LAYOUT_KERNEL_DS == GUEST_DS_SELECTOR, "layout.h and guest_abi.h disagree");
_Static_assert(LAYOUT_MAX_VCPUS == GUEST_MAX_VCPUS, "layout.h and guest_abi.h disagree");

enum { BOOT_PENDING, BOOT_OK, BOOT_FAILED };
enum { PHASE_PREPARE = 1, PHASE_RUN, PHASE_FINISHED };

struct cpu cpus[GUEST_MAX_VCPUS];
struct guest_boot_info boot;

extern char _start[], _end[]; /* entry.S, linker.ld */

static volatile uint32_t boot_state = BOOT_PENDING;
static volatile uint32_t phase = PHASE_PREPARE;
static volatile uint32_t tasks_ready; /* ntasks is final */
static uint32_t ntasks;
/* Atomic counters shared by all vCPUs. */
static uint32_t prepared, done, failed, parked;
static uint32_t booted_mask;      /* bit v: vCPU v sent BOOTED */
#define BOOT_WAIT_WARN_US 2000000 /* then say which vCPUs never came up */

static uint32_t counter(uint32_t *c)
{
	return __atomic_load_n(c, __ATOMIC_ACQUIRE);
}

static void count(uint32_t *c)
{
	__atomic_add_fetch(c, 1, __ATOMIC_ACQ_REL);
}

void guest_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	msg_vlog(fmt, ap);
	va_end(ap);
	msg_send(GUEST_MSG_DONE, 1, 0, 0, 0, 0, "failed");
	__atomic_store_n(&phase, PHASE_FINISHED, __ATOMIC_RELEASE);
	__atomic_store_n(&boot_state, BOOT_FAILED, __ATOMIC_RELEASE);
	halt_forever();
}

static bool has_nul(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!s[i])
			return true;
	return false;
}

/* vCPU 0. The boot info is the VMM's, so it is checked field by field. */
static void check_boot_info(const struct guest_boot_info *bi)
{
	if (bi->magic != GUEST_BOOT_MAGIC)
		guest_fail("boot info: bad magic 0x%lx", bi->magic);
	if (bi->abi_version != GUEST_ABI_VERSION)
		guest_fail("boot info: ABI version %u, guest speaks %u", bi->abi_version,
		           GUEST_ABI_VERSION);
	if (bi->nr_vcpus < 1 || bi->nr_vcpus > GUEST_MAX_VCPUS)
		guest_fail("boot info: nr_vcpus %u not in 1..%u", bi->nr_vcpus, GUEST_MAX_VCPUS);
	if (!bi->timeslice_us || !bi->apic_ns_per_tick)
		guest_fail("boot info: timeslice_us %u and apic_ns_per_tick %u must be > 0",
		           bi->timeslice_us, bi->apic_ns_per_tick);
	if (!has_nul(bi->workload, sizeof(bi->workload)))
		guest_fail("boot info: workload not NUL-terminated");
	if ((uintptr_t)_start != GUEST_IMAGE_GPA ||
	    (uintptr_t)_end > GUEST_IMAGE_GPA + GUEST_IMAGE_MAX)
		guest_fail("guest image at 0x%lx..0x%lx, outside its ABI window",
		           (uint64_t)(uintptr_t)_start, (uint64_t)(uintptr_t)_end);
	boot = *bi;
}

static void task_main(void *arg)
{
	struct job *j = arg;

	job_prepare(j, boot.seed);
	count(&prepared);
	while (phase == PHASE_PREPARE)
		sched_wait(WAIT_KEY_PHASE, &phase, PHASE_PREPARE);
	if (job_run(j, boot.seed))
		count(&failed);
	count(&done);
}

/* A vCPU the VMM never really started stalls the run for ever (its tasks never
 * prepare, it never parks): after a while vCPU 0 names it, once. The only
 * clock is vCPU 0's idle wake-ups, at most one per timer period. */
static void check_booted(void)
{
	static uint64_t idle_wakeups;
	uint32_t all = (uint32_t)((1ull << boot.nr_vcpus) - 1), mask = counter(&booted_mask);

	if (mask != all && ++idle_wakeups == BOOT_WAIT_WARN_US / boot.timeslice_us + 1)
		msg_log("vCPUs 0x%x of 0x%x never booted; is the VMM running them?", all & ~mask,
		        all);
}

/* vCPU 0's idle task, interrupts off. Returns true when it woke tasks. */
static bool coordinate(void)
{
	char text[MSG_TEXT_MAX];

	if (phase == PHASE_PREPARE)
		check_booted();
	/* No task parked on an async page fault: its token would not survive
	 * into the restored VM, and nothing would ever wake it there. */
	if (phase == PHASE_PREPARE && counter(&prepared) == ntasks &&
	    counter(&parked) == boot.nr_vcpus - 1 && apf_parked() == 0) {
		bool snap = boot.flags & GUEST_BOOT_SNAPSHOT;

		fmt_format(text, sizeof(text), "%u tasks prepared", ntasks);
		/* A restored snapshot resumes right after this OUT. */
		msg_send(snap ? GUEST_MSG_SNAPSHOT : GUEST_MSG_PREPARED, 0, ntasks, 0, 0, 0, text);
		__atomic_store_n(&phase, PHASE_RUN, __ATOMIC_RELEASE);
		return sched_wake(WAIT_KEY_PHASE) > 0;
	}
	if (phase == PHASE_RUN && counter(&done) == ntasks) {
		uint32_t bad = counter(&failed);
		uint64_t not_present, ready;

		apf_report(&not_present, &ready); /* LOG lines: before DONE stops the VM */
		for (uint32_t v = 0; v < boot.nr_vcpus; v++)
			if (cpus[v].masked_irqs)
				msg_log("vcpu%u: dropped %u interrupt(s) delivered with interrupts "
				        "off (a second delivery by the host, trap.c)",
				        v, cpus[v].masked_irqs);
		fmt_format(text, sizeof(text), "%u tasks, %u failed", ntasks, bad);
		msg_send(GUEST_MSG_DONE, bad ? 1 : 0, ntasks, bad, not_present, ready, text);
		__atomic_store_n(&phase, PHASE_FINISHED, __ATOMIC_RELEASE);
		halt_forever();
	}
	return false;
}

/* Runs only when no task of this vCPU can run; the timer tick (or a wake by
 * vCPU 0 followed by our next tick) brings tasks back. */
static __attribute__((noreturn)) void idle_loop(void)
{
	struct cpu *c = this_cpu();

	for (;;) {
		cli();
		if (phase == PHASE_FINISHED)
			halt_forever();
		bool ready = __atomic_load_n(&tasks_ready, __ATOMIC_ACQUIRE);

		if (ready && c->index == 0 && coordinate()) {
			sched_yield(); /* run the tasks just woken now, not a tick later */
			continue;
		}
		/* Parked: all of this vCPU's tasks have prepared and blocked
		 * (or it has none); it only takes timer ticks from here on. */
		if (ready && c->index != 0 && !c->parked && phase == PHASE_PREPARE &&
		    counter(&prepared) == ntasks) {
			c->parked = true;
			count(&parked);
		}
		sti_hlt();
	}
}

void guest_main(uint64_t vcpu, const struct guest_boot_info *bi);

/* entry.S: on this vCPU's boot stack with our GDT loaded, vcpu checked
 * against GUEST_MAX_VCPUS. */
void guest_main(uint64_t vcpu, const struct guest_boot_info *bi)
{
	struct cpu *c = &cpus[vcpu];
	char text[MSG_TEXT_MAX];
	uint32_t timer_count;

	c->self = c;
	c->index = (uint32_t)vcpu;
	wrmsr(MSR_GS_BASE, (uint64_t)(uintptr_t)c);

	if (vcpu == 0) {
		check_boot_info(bi);
		/* See guest_abi.h: tell the VMM where our core ends. */
		((struct guest_boot_info *)bi)->core_end = ((uintptr_t)_end + 4095) & ~4095ull;
		idt_build();
		__atomic_store_n(&boot_state, BOOT_OK, __ATOMIC_RELEASE);
	} else {
		while (__atomic_load_n(&boot_state, __ATOMIC_ACQUIRE) == BOOT_PENDING)
			cpu_relax();
		if (boot_state != BOOT_OK)
			halt_forever();
	}
	idt_load();
	if (vcpu >= boot.nr_vcpus)
		halt_forever(); /* more vCPUs than the boot info says: not ours */

	if (!apic_has_x2apic())
		guest_fail("vCPU %lu: no x2APIC (CPUID.1:ECX[21]), needed for the timer", vcpu);
	timer_count = apic_init(boot.timeslice_us, boot.apic_ns_per_tick);
	fmt_format(text, sizeof(text), "lazyvm guest v%u", GUEST_ABI_VERSION);
	msg_send(GUEST_MSG_BOOTED, 0, vcpu, timer_count, 0, 0, text);
	__atomic_or_fetch(&booted_mask, 1u << vcpu, __ATOMIC_ACQ_REL);
	sched_start_cpu();
	apf_init(); /* after the IDT, and with a current task for its events */

	if (vcpu == 0) {
		uint64_t heap = ((uintptr_t)_end + HEAP_ALIGN - 1) & ~(HEAP_ALIGN - 1);
		uint64_t end = boot.mem_size < IDENTITY_MAP_END ? boot.mem_size : IDENTITY_MAP_END;

		fmt_format(text, sizeof(text), "lazyvm guest v%u on %u vCPUs\n", GUEST_ABI_VERSION,
		           boot.nr_vcpus);
		serial_puts(text);
		ntasks = workload_setup(heap, end, task_main);
		__atomic_store_n(&tasks_ready, 1, __ATOMIC_RELEASE);
	}
	idle_loop();
}
