/* The sigbus exit backend (exit.h): UFFD_FEATURE_SIGBUS, so KVM cannot fault
 * a missing page in and exits instead (on the PVM host: KVM_EXIT_MMIO with the
 * gpa for data, KVM_EXIT_INTERNAL_ERROR for instruction fetches). The access
 * has retired or failed by then: exit.c completes or undoes it. */
#include "exit_backend.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lazyvm/compat.h"
#include "lazyvm/uffd.h"

static int sigbus_probe(struct kvm_sys *sys, struct exit_probe *unused, char *why, size_t whylen)
{
	struct probe_vm p;

	(void)unused;
	int r = probe_vm_open(sys, &p, UFFD_FEATURE_SIGBUS, why, whylen);

	if (r == 0) {
		r = ioctl(p.vcpu, KVM_RUN, 0);
		int err = errno;
		uint32_t reason = p.run->exit_reason;

		if (r == 0 && reason == KVM_EXIT_MMIO && p.run->mmio.phys_addr == PROBE_GPA) {
			snprintf(why, whylen, "a missing page exits as KVM_EXIT_MMIO with its gpa");
			r = 1;
		} else if (r < 0 && err == EFAULT && reason == KVM_EXIT_MEMORY_FAULT &&
		           kvm_run_memory_fault(p.run)->gpa == PROBE_GPA) {
			snprintf(why, whylen,
			         "a missing page exits as KVM_EXIT_MEMORY_FAULT with its gpa");
			r = 1;
		} else {
			snprintf(why, whylen,
			         "a missing page gives KVM_RUN %d (%s), exit reason %u, no gpa: "
			         "unusable",
			         r, r < 0 ? strerror(err) : "ok", reason);
			r = 0;
		}
	}
	probe_vm_close(&p);
	return r;
}

const struct exit_backend_ops exit_sigbus_ops = {
    .id = EXIT_BACKEND_SIGBUS,
    .uffd_features = UFFD_FEATURE_SIGBUS,
    /* KVM's own accesses around the guest's (event delivery) cannot be
     * served: the guest's core is installed first */
    .needs_core = true,
    .probe = sigbus_probe,
    .on_exit = exit_retired,
};
