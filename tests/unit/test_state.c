/* A vCPU's and the VM's device state through a snapshot (snapshot_build,
 * then arch_vcpu_load and devices_load into a second VM) on this host's KVM,
 * without running a guest: the restored vCPU reads back the TSC deadline,
 * the async PF MSRs and the exact CPUID it was given, the PIT its counter.
 * Also the KVM behaviour the load order rests on: a TSC deadline written
 * before the LAPIC is in TSC-deadline mode is dropped. */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "../../src/vmm/devices.h"
#include "../../src/vmm/restore.h"
#include "../../src/vmm/snapshot.h"
#include "../../src/vmm/vmm.h"
#include "test.h"

#define MSR_IA32_TSC          0x10u
#define MSR_IA32_TSC_DEADLINE 0x6e0u
#define APIC_SPIV             0xf0u
#define APIC_LVTT             0x320u
#define LVTT_TSC_DEADLINE     (2u << 17)
#define APF_AREA_GPA          0x2000u

static struct kvm_sys sys;

static void open_kvm(void)
{
	char why[256];

	if (access("/dev/kvm", R_OK | W_OK) < 0)
		SKIP("no usable /dev/kvm (%s)", strerror(errno));
	CHECK_OK(kvm_sys_open(&sys, why, sizeof(why)));
}

static void make_vm(struct vm *vm, bool pit, bool cpuid_later)
{
	struct vm_config vc = {.mem_size = 16u << 20,
	                       .nslots = 1,
	                       .nvcpus = 1,
	                       .workload = "",
	                       .pit = pit,
	                       .cpuid_later = cpuid_later};

	memset(vm, 0, sizeof(*vm));
	CHECK_OK(guest_mem_map(&vm->mem, vc.mem_size, 1, MEM_ANON, -1));
	CHECK_OK(vm_create(vm, &sys, &vc));
}

static void free_vm(struct vm *vm)
{
	vm_destroy(vm);
	guest_mem_unmap(&vm->mem);
}

static uint64_t get_msr(struct vcpu *v, uint32_t index)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} m = {.hdr.nmsrs = 1, .e.index = index};

	CHECK_EQ(ioctl(v->fd, KVM_GET_MSRS, &m), 1);
	return m.e.data;
}

static void set_msr(struct vcpu *v, uint32_t index, uint64_t data)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} m = {.hdr.nmsrs = 1, .e = {.index = index, .data = data}};

	CHECK_EQ(ioctl(v->fd, KVM_SET_MSRS, &m), 1);
}

/* The LAPIC software-enabled with its timer in TSC-deadline mode. */
static void lapic_tsc_deadline_mode(struct vcpu *v, struct kvm_lapic_state *out)
{
	struct kvm_lapic_state l;

	CHECK_EQ(ioctl(v->fd, KVM_GET_LAPIC, &l), 0);
	*(uint32_t *)&l.regs[APIC_SPIV] = 0x1ff;
	*(uint32_t *)&l.regs[APIC_LVTT] = LVTT_TSC_DEADLINE | 0xef;
	if (out)
		*out = l;
	else
		CHECK_EQ(ioctl(v->fd, KVM_SET_LAPIC, &l), 0);
}

static struct kvm_cpuid2 *get_cpuid(struct vcpu *v)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 512 * sizeof(c->entries[0]));

	CHECK(c != NULL);
	c->nent = 512;
	CHECK_EQ(ioctl(v->fd, KVM_GET_CPUID2, c), 0);
	return c;
}

static void test_vcpu_and_devices_round_trip(void)
{
	struct vm *src = calloc(1, sizeof(*src)), *dst = calloc(1, sizeof(*dst)),
	          *fresh = calloc(1, sizeof(*fresh));
	struct snap_image img;
	struct snap_reader rd;
	char why[512];
	bool changed = false;

	CHECK(src && dst && fresh);
	open_kvm();
	make_vm(src, true, false);
	struct vcpu *v = &src->vcpus[0];
	/* A CPUID that is not what KVM supports: KVM's PV leaf without its
	 * PV-unhalt bit (7), which a restore must keep, not recompute. */
	struct kvm_cpuid2 *c = get_cpuid(v);
	for (unsigned i = 0; i < c->nent; i++)
		if (c->entries[i].function == 0x40000001 && (c->entries[i].eax & (1u << 7))) {
			c->entries[i].eax &= ~(1u << 7);
			changed = true;
		}
	CHECK(changed);
	CHECK_EQ(ioctl(v->fd, KVM_SET_CPUID2, c), 0);
	lapic_tsc_deadline_mode(v, NULL);
	uint64_t deadline = get_msr(v, MSR_IA32_TSC) + 1000000000000000ull;
	set_msr(v, MSR_IA32_TSC_DEADLINE, deadline);
	CHECK_EQ(get_msr(v, MSR_IA32_TSC_DEADLINE), deadline);
	set_msr(v, MSR_KVM_ASYNC_PF_INT, 0xec);
	uint64_t apf_en = APF_AREA_GPA | KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_DELIVERY_AS_INT;
	set_msr(v, MSR_KVM_ASYNC_PF_EN, apf_en);
	struct kvm_pit_state2 pit;
	CHECK_EQ(ioctl(src->fd, KVM_GET_PIT2, &pit), 0);
	pit.channels[0].count = 0x1234;
	pit.channels[0].mode = 2;
	CHECK_EQ(ioctl(src->fd, KVM_SET_PIT2, &pit), 0);

	CHECK_OK(snapshot_build(src, &img, why, sizeof(why)));
	CHECK_OK(snap_reader_init(&rd, img.w.buf, img.w.len, why, sizeof(why)));
	uint64_t len;
	CHECK(snap_find(&rd, SNAP_DEVICE, SNAP_DEV_PIT, &len) && len == sizeof(pit));
	CHECK(snap_find(&rd, SNAP_TSC_KHZ, 0, &len) && len == sizeof(struct snap_tsc));

	make_vm(dst, true, true);
	CHECK_OK(devices_load(dst, &rd, why, sizeof(why)));
	if (arch_vcpu_load(&dst->vcpus[0], &rd, why, sizeof(why)) < 0) {
		fprintf(stderr, "  arch_vcpu_load: %s\n", why);
		CHECK(0);
	}
	struct vcpu *w = &dst->vcpus[0];
	CHECK_EQ(get_msr(w, MSR_IA32_TSC_DEADLINE), deadline);
	CHECK_EQ(get_msr(w, MSR_KVM_ASYNC_PF_INT), 0xec);
	CHECK_EQ(get_msr(w, MSR_KVM_ASYNC_PF_EN), apf_en);
	struct kvm_cpuid2 *got = get_cpuid(w);
	CHECK_EQ(got->nent, c->nent);
	CHECK(!memcmp(got->entries, c->entries, c->nent * sizeof(c->entries[0])));
	struct kvm_pit_state2 pit2;
	CHECK_EQ(ioctl(dst->fd, KVM_GET_PIT2, &pit2), 0);
	CHECK_EQ(pit2.channels[0].count, 0x1234);
	CHECK_EQ(pit2.channels[0].mode, 2);

	/* What vm_create would have set instead: KVM's own set, bit 7 on. */
	make_vm(fresh, false, false);
	struct kvm_cpuid2 *rec = get_cpuid(&fresh->vcpus[0]);
	CHECK(rec->nent != c->nent ||
	      memcmp(rec->entries, c->entries, c->nent * sizeof(c->entries[0])));
	/* A snapshot with a PIT into a VM without one is refused by name. */
	CHECK_EQ(devices_load(fresh, &rd, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "device pit: the snapshot has a PIT but the VM has none") != NULL);
	free(rec);
	free(got);
	free(c);
	snapshot_image_free(&img);
	free_vm(fresh);
	free_vm(dst);
	free_vm(src);
}

/* The old order: MSRs, then the LAPIC. KVM drops the deadline (measured on
 * this host's KVM; the reason the LAPIC now goes first). */
static void test_deadline_before_lapic_is_dropped(void)
{
	struct vm *vm = calloc(1, sizeof(*vm));
	struct kvm_lapic_state l;

	CHECK(vm);
	open_kvm();
	make_vm(vm, false, false);
	struct vcpu *v = &vm->vcpus[0];
	uint64_t deadline = get_msr(v, MSR_IA32_TSC) + 1000000000000000ull;
	lapic_tsc_deadline_mode(v, &l);
	set_msr(v, MSR_IA32_TSC_DEADLINE, deadline);
	CHECK_EQ(ioctl(v->fd, KVM_SET_LAPIC, &l), 0);
	CHECK_EQ(get_msr(v, MSR_IA32_TSC_DEADLINE), 0);
	set_msr(v, MSR_IA32_TSC_DEADLINE, deadline);
	CHECK_EQ(get_msr(v, MSR_IA32_TSC_DEADLINE), deadline);
	free_vm(vm);
}

/* Where KVM writes for each PV MSR, as a restore installs it first. */
static void test_pv_ranges(void)
{
	struct pv_range pr;

	/* kvmclock: bit 0 enables, the rest is the address */
	CHECK_EQ(restore_pv_ranges(0x4b564d01, 0x3fff2001, &pr), 1);
	CHECK_EQ(pr.gpa, 0x3fff2000);
	CHECK_EQ(pr.len, 32);
	CHECK(!strcmp(pr.name, "kvmclock"));
	CHECK_EQ(restore_pv_ranges(0x4b564d01, 0x3fff2000, &pr), 0); /* disabled */
	CHECK_EQ(restore_pv_ranges(0x12, 0x5001, &pr), 1);
	CHECK_EQ(pr.gpa, 0x5000);
	/* wall clock: any address, no enable bit */
	CHECK_EQ(restore_pv_ranges(0x4b564d00, 0x7008, &pr), 1);
	CHECK_EQ(pr.gpa, 0x7008);
	CHECK_EQ(restore_pv_ranges(0x4b564d00, 0, &pr), 0);
	/* steal time and async PF: 64-byte areas, flags in the low 6 bits */
	CHECK_EQ(restore_pv_ranges(0x4b564d03, 0x9043, &pr), 1);
	CHECK_EQ(pr.gpa, 0x9040);
	CHECK_EQ(pr.len, 64);
	CHECK_EQ(restore_pv_ranges(MSR_KVM_ASYNC_PF_EN,
	                           0x106100 | KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_DELIVERY_AS_INT,
	                           &pr),
	         1);
	CHECK_EQ(pr.gpa, 0x106100);
	CHECK_EQ(
	    restore_pv_ranges(MSR_KVM_ASYNC_PF_EN, 0x106100 | KVM_ASYNC_PF_DELIVERY_AS_INT, &pr),
	    0);
	/* PV EOI: a word */
	CHECK_EQ(restore_pv_ranges(0x4b564d04, 0xa005, &pr), 1);
	CHECK_EQ(pr.gpa, 0xa004);
	CHECK_EQ(pr.len, 4);
	/* not a PV MSR */
	CHECK_EQ(restore_pv_ranges(MSR_KVM_ASYNC_PF_INT, 0xec, &pr), 0);
	CHECK_EQ(restore_pv_ranges(0x10, 1, &pr), 0);
}

TEST_MAIN(TEST(test_vcpu_and_devices_round_trip), TEST(test_deadline_before_lapic_is_dropped),
          TEST(test_pv_ranges))
