/* /dev/kvm: open, check the API, fetch what every VM needs (vCPU mmap size,
 * supported CPUID, the MSR list). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vmm.h"

int kvm_cap(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

static int fetch_cpuid(struct kvm_sys *sys)
{
	for (unsigned n = 64; n <= 1024; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			return -ENOMEM;
		c->nent = n;
		if (ioctl(sys->fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			sys->cpuid = c;
			return 0;
		}
		int err = errno;
		free(c);
		if (err != E2BIG)
			return -err;
	}
	return -E2BIG;
}

static int fetch_msr_list(struct kvm_sys *sys)
{
	struct kvm_msr_list probe = {.nmsrs = 0}, *list;

	/* The first call fails with E2BIG and says how many there are. */
	if (ioctl(sys->fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return -errno;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	if (!list)
		return -ENOMEM;
	list->nmsrs = probe.nmsrs;
	if (ioctl(sys->fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
		int err = errno;
		free(list);
		return -err;
	}
	sys->nmsrs = list->nmsrs;
	sys->msr_index = malloc(list->nmsrs * sizeof(uint32_t));
	if (!sys->msr_index) {
		free(list);
		return -ENOMEM;
	}
	memcpy(sys->msr_index, list->indices, list->nmsrs * sizeof(uint32_t));
	free(list);
	return 0;
}

int kvm_sys_open(struct kvm_sys *sys, char *why, size_t whylen)
{
	static const struct {
		long cap;
		const char *name;
	} needed[] = {
	    {KVM_CAP_IRQCHIP, "IRQCHIP"},
	    {KVM_CAP_USER_MEMORY, "USER_MEMORY"},
	    {KVM_CAP_EXT_CPUID, "EXT_CPUID"},
	    {KVM_CAP_MP_STATE, "MP_STATE"},
	    {KVM_CAP_VCPU_EVENTS, "VCPU_EVENTS"},
	    {KVM_CAP_XSAVE, "XSAVE"},
	    {KVM_CAP_XCRS, "XCRS"},
	    {KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"},
	};
	int r;

	memset(sys, 0, sizeof(*sys));
	sys->fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (sys->fd < 0) {
		r = -errno;
		snprintf(why, whylen, "cannot open /dev/kvm: %s", strerror(errno));
		return r;
	}
	r = ioctl(sys->fd, KVM_GET_API_VERSION, 0);
	if (r != KVM_API_VERSION) {
		snprintf(why, whylen, "/dev/kvm speaks API version %d, lazyvm needs %d", r,
		         KVM_API_VERSION);
		r = -EPROTO;
		goto err;
	}
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++)
		if (!kvm_cap(sys->fd, needed[i].cap)) {
			snprintf(why, whylen, "KVM lacks capability KVM_CAP_%s (%ld)",
			         needed[i].name, needed[i].cap);
			r = -EOPNOTSUPP;
			goto err;
		}
	sys->vcpu_mmap_size = ioctl(sys->fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sys->vcpu_mmap_size < (int)sizeof(struct kvm_run)) {
		r = -EPROTO;
		snprintf(why, whylen, "KVM_GET_VCPU_MMAP_SIZE returned %d", sys->vcpu_mmap_size);
		goto err;
	}
	sys->xsave2_size = kvm_cap(sys->fd, KVM_CAP_XSAVE2);
	if ((r = fetch_cpuid(sys)) < 0) {
		snprintf(why, whylen, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-r));
		goto err;
	}
	if ((r = fetch_msr_list(sys)) < 0) {
		snprintf(why, whylen, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-r));
		goto err;
	}
	return 0;
err:
	kvm_sys_close(sys);
	return r;
}

void kvm_sys_close(struct kvm_sys *sys)
{
	if (sys->fd >= 0)
		close(sys->fd);
	free(sys->cpuid);
	free(sys->msr_index);
	memset(sys, 0, sizeof(*sys));
	sys->fd = -1;
}
