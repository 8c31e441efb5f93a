/* lazyvm's own async PF injection for guests other than the bundled one: the
 * CPL policy (a Linux guest without SEND_ALWAYS must only get user-mode
 * faults async) and exitless routing that keeps the irqchip routes a Linux
 * guest's devices interrupt through. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include "../../src/vmm/apf.h"
#include "test.h"

static void test_cpl_policy(void)
{
	/* what Linux 6.12 writes: ENABLED | DELIVERY_AS_INT, no SEND_ALWAYS */
	uint64_t linux_en = 0x7ffe1000 | KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_DELIVERY_AS_INT;
	/* what the bundled guest writes (guest/apf.c) */
	uint64_t bundled_en = linux_en | KVM_ASYNC_PF_SEND_ALWAYS;

	CHECK(apf_cpl_allows_async(linux_en, 3));
	CHECK(!apf_cpl_allows_async(linux_en, 0));
	CHECK(!apf_cpl_allows_async(linux_en, 1));
	CHECK(!apf_cpl_allows_async(linux_en, 2));
	for (unsigned cpl = 0; cpl < 4; cpl++)
		CHECK(apf_cpl_allows_async(bundled_en, cpl));
}

/* Exitless routing on a real VM: a level on an ISA IRQ (the PIT's 0, the
 * UART's 4) must still reach the irqchips after the async PF MSI routes
 * went in. KVM_IRQ_LINE_STATUS says -1 for a GSI with no route, and also for
 * one that only reaches a masked IOAPIC pin, so GSIs 16-23 cannot be told
 * apart here; 0-15 reach the PIC too, which answers. */
static void test_exitless_routing_keeps_irqchip(void)
{
	static struct apf a;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vmfd;
	struct vm *vm = calloc(1, sizeof(*vm));

	if (kvm < 0)
		SKIP("no usable /dev/kvm (%s)", strerror(errno));
	CHECK(vm);
	vmfd = ioctl(kvm, KVM_CREATE_VM, 0);
	CHECK(vmfd >= 0);
	CHECK_EQ(ioctl(vmfd, KVM_CREATE_IRQCHIP, 0), 0);
	vm->fd = vmfd;
	vm->nvcpus = 1;
	a.vm = vm;
	a.mode = APF_EXITLESS;
	a.impl = APF_IMPL_LAZYVM;
	a.vcpus[0].vector = 0xec;
	a.vcpus[0].complete_efd = eventfd(0, EFD_CLOEXEC);
	CHECK(a.vcpus[0].complete_efd >= 0);
	CHECK_OK(apf_route_irqfds(&a));
	for (uint32_t irq = 0; irq < 16; irq++) {
		struct kvm_irq_level l = {.irq = irq, .level = 1};

		if (irq == 2)
			continue; /* the PIC cascade */
		CHECK_EQ(ioctl(vmfd, KVM_IRQ_LINE_STATUS, &l), 0);
		if (l.status < 0)
			fprintf(stderr, "  GSI %u has no route\n", irq);
		CHECK(l.status >= 0);
		l.level = 0;
		CHECK_EQ(ioctl(vmfd, KVM_IRQ_LINE_STATUS, &l), 0);
	}
	/* and the async PF route itself: GSI 32 is an MSI to vCPU 0 now */
	int vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
	struct kvm_irq_level msi = {.irq = 32, .level = 1};
	CHECK_EQ(ioctl(vmfd, KVM_IRQ_LINE_STATUS, &msi), 0);
	CHECK(msi.status >= 0);
	close(vcpu);
	close(a.vcpus[0].complete_efd);
	close(vmfd);
	close(kvm);
	free(vm);
}

TEST_MAIN(TEST(test_cpl_policy), TEST(test_exitless_routing_keeps_irqchip))
