/* lazyvm run --kernel: boot an unmodified Linux (docs/LINUX.md). */
#include "lazyvm/vmm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/fdio.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "apf.h"
#include "linux.h"
#include "vcpu.h"
#include "vmm.h"
#include "x86_64/linux_boot.h"
#include "x86_64/mptable.h"

/* Why each one is there: docs/LINUX.md. */
const char vmm_linux_default_cmdline[] =
    "console=ttyS0 quiet reboot=k panic=-1 nokaslr tsc=reliable no_timer_check pci=off "
    "i8042.noaux";

struct file_map {
	void *p;
	size_t len;
};

static int map_file(const char *what, const char *path, struct file_map *f, char *why,
                    size_t whylen)
{
	struct stat st;
	char w[300];
	int fd = lv_open_input(path, 0, &st, w, sizeof(w));

	f->p = NULL;
	f->len = 0;
	if (fd < 0) {
		snprintf(why, whylen, "%s: %s", what, w);
		return fd;
	}
	if (st.st_size <= 0) {
		close(fd);
		snprintf(why, whylen, "%s %s is empty", what, path);
		return -EINVAL;
	}
	f->len = (size_t)st.st_size;
	f->p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (f->p == MAP_FAILED) {
		int err = errno;
		f->p = NULL;
		snprintf(why, whylen, "%s %s: mmap: %s", what, path, strerror(err));
		return -err;
	}
	return 0;
}

static void unmap_file(struct file_map *f)
{
	if (f->p)
		munmap(f->p, f->len);
	f->p = NULL;
}

int vmm_run_linux(const struct vmm_run_config *cfg, struct vmm_outcome *out)
{
	struct vm_config vc = {.mem_size = cfg->mem_size,
	                       .nslots = cfg->mem_slots,
	                       .nvcpus = cfg->vcpus,
	                       .snapshot_dir = cfg->snapshot_dir,
	                       .quiet_console = cfg->console_to_stderr,
	                       .stall_ns = cfg->stall_ns,
	                       .linux_guest = true,
	                       /* Linux checks the PIT's IRQ 0 at boot and
	                        * calibrates against it */
	                       .pit = true,
	                       .capture_apf_msrs = cfg->apf != VMM_APF_OFF,
	                       .workload = ""};
	struct file_map kern = {0}, initrd = {0};
	struct linux_image img;
	struct kvm_sys sys;
	struct vm *vm = NULL;
	char why[400];
	int r;

	memset(out, 0, sizeof(*out));
	if ((r = map_file("--kernel", cfg->kernel_path, &kern, out->error, sizeof(out->error))) < 0)
		return r;
	if ((r = linux_image_parse(kern.p, kern.len, &img, why, sizeof(why))) < 0) {
		snprintf(out->error, sizeof(out->error), "--kernel %s: %s", cfg->kernel_path, why);
		goto out_files;
	}
	if (cfg->initrd_path && (r = map_file("--initrd", cfg->initrd_path, &initrd, out->error,
	                                      sizeof(out->error))) < 0)
		goto out_files;
	if ((r = kvm_sys_open(&sys, out->error, sizeof(out->error))) < 0)
		goto out_files;
	if (!(vm = calloc(1, sizeof(*vm)))) {
		r = -ENOMEM;
		goto out_sys;
	}
	if ((r = guest_mem_map(&vm->mem, cfg->mem_size, cfg->mem_slots, MEM_ANON, -1)) < 0) {
		snprintf(out->error, sizeof(out->error),
		         "cannot lay out %llu bytes of guest RAM: %s",
		         (unsigned long long)cfg->mem_size, strerror(-r));
		goto out_free;
	}
	if ((r = vm_create(vm, &sys, &vc)) < 0) {
		snprintf(out->error, sizeof(out->error), "creating the VM: %s", strerror(-r));
		goto out_vm;
	}
	/* --apf on: lazyvm holds the guest's PV async PF MSRs from boot, so the
	 * snapshot carries them for a restore with --apf user|exitless|kernel;
	 * otherwise KVM holds them and a restore cannot turn KVM's off. */
	struct apf apf;
	bool have_apf = false;
	if (cfg->apf != VMM_APF_OFF) {
		if ((r = apf_init(&apf, vm, NULL, APF_OFF, APF_IMPL_LAZYVM, APF_POLICY_SYNC, 0, why,
		                  sizeof(why))) < 0) {
			snprintf(out->error, sizeof(out->error), "async page faults: %s", why);
			goto out_apf;
		}
		vm->apf = &apf;
		have_apf = true;
	}
	r = linux_boot_load(&vm->mem, kern.p, kern.len, initrd.p, initrd.len,
	                    cfg->cmdline ? cfg->cmdline : vmm_linux_default_cmdline, why,
	                    sizeof(why));
	if (r < 0) {
		snprintf(out->error, sizeof(out->error), "loading %s: %s", cfg->kernel_path, why);
		goto out_apf;
	}
	void *mp = guest_mem_ptr(&vm->mem, LINUX_EBDA_GPA, 1024);
	if (!mp || (r = mptable_write(mp, 1024, LINUX_EBDA_GPA, vm->nvcpus)) < 0) {
		snprintf(out->error, sizeof(out->error), "writing the MP table: %s",
		         strerror(mp ? -r : EFAULT));
		r = r < 0 ? r : -EFAULT;
		goto out_apf;
	}
	lv_info("Linux: boot protocol %u.%02u, kernel %zu bytes at 0x%llx (needs %u), initrd %zu "
	        "bytes, %u vCPU(s), %llu MiB",
	        img.version >> 8, img.version & 0xff, img.kernel_len,
	        (unsigned long long)img.pref_address, img.init_size, initrd.len, vm->nvcpus,
	        (unsigned long long)(cfg->mem_size >> 20));
	if ((r = linux_vcpu_boot_regs(&vm->vcpus[0], &img)) < 0) {
		snprintf(out->error, sizeof(out->error), "vCPU 0 boot registers: %s", strerror(-r));
		goto out_apf;
	}
	r = vm_run(vm);
	fill_vm_outcome(vm, r, out);
	if (!out->ok && !out->error[0])
		snprintf(out->error, sizeof(out->error), "the Linux guest stopped without a reset");
	r = out->ok ? 0 : -EIO;
out_apf:
	if (have_apf)
		apf_destroy(&apf);
out_vm:
	vm_destroy(vm);
	guest_mem_unmap(&vm->mem);
out_free:
	free(vm);
out_sys:
	kvm_sys_close(&sys);
out_files:
	unmap_file(&kern);
	unmap_file(&initrd);
	return r;
}
