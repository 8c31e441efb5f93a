# The hardware-model KVM test host, included by the top Makefile.
#   make hwtest        build everything below and boot it: tests/hw/run
#   make hwtest-build  only build (static lazyvm, kernel + busybox cache, initramfs)
#   make hwtest-clean  remove build/hw except the download cache
#   make hwtest-patched        the same host with lazyvm's patched kvm.ko and
#                              kvm-amd.ko (kernel/build), /init's "patched" run
#   make hwtest-patched-build  only build those (modules, initramfs-patched)
#   make hwtest-linux  the Linux guest suite (tests/hw/linux, docs/LINUX.md): the
#                      tier's own vmlinuz boots as an L2 guest of lazyvm, in an L1
#                      of its own with -smp 1
#   make hwtest-linux-build    only build it (L2 initramfs, initramfs-linux)
#
# Everything lives under $(HW_B) (build/hw), never in $(B):
#   $(HW_B)/lazyvm             the static lazyvm (make static, static.mk)
#   $(HW_B)/cache/             Debian's kernel and busybox-static, unpacked (tests/hw/fetch)
#   $(HW_B)/vmlinuz            the kernel that boots
#   $(HW_B)/initramfs.cpio.gz  busybox, modules, lazyvm, tests/hw/init
#   $(HW_B)/logs/              serial console of each boot
# HW_KERNEL=6.12.111 picks a kernel version (default: kernel/BASE, the patch
# series' base; `newest` is the newest 6.12 apt-cache lists). The patched
# tier builds only on kernel/BASE's version.

ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

HW_B       ?= build/hw
HW_CACHE   ?= $(HW_B)/cache

# The static lazyvm of `make static` (static.mk), copied in.
$(HW_B)/lazyvm: $(STATIC_B)/lazyvm
	@mkdir -p $(@D)
	$(call say,CP,$@)cp $< $@

# Fetching always runs (fast and silent once cached); it rewrites kernel.abi
# and busybox.dir only when they change, so nothing downstream rebuilds.
$(HW_CACHE)/kernel.abi $(HW_CACHE)/busybox.dir: hw-fetch
	@:
hw-fetch:
	@tests/hw/fetch $(HW_CACHE)

$(HW_B)/vmlinuz: $(HW_CACHE)/kernel.abi
	$(call say,CP,$@)abi=$$(cat $<); cp $(HW_CACHE)/kernel-$$abi/boot/vmlinuz-$$abi $@

$(HW_B)/initramfs.cpio.gz: $(HW_B)/lazyvm tests/hw/init tests/hw/mkinitramfs \
		$(HW_CACHE)/kernel.abi $(HW_CACHE)/busybox.dir
	$(call say,CPIO,$@)abi=$$(cat $(HW_CACHE)/kernel.abi); \
	    tests/hw/mkinitramfs $@ $(HW_B)/root $(HW_CACHE)/kernel-$$abi $$abi \
	    $(HW_CACHE)/$$(cat $(HW_CACHE)/busybox.dir)/bin/busybox $(HW_B)/lazyvm tests/hw/init

hwtest-build: $(HW_B)/vmlinuz $(HW_B)/initramfs.cpio.gz

# ---- the patched KVM (kernel/, docs/KERNEL.md) ---------------------------------
KERNEL_B ?= build/kernel
# kernel/build always runs (a cache hit when the kernel and patches are the
# same); it rewrites $(KERNEL_B)/current only when the build key changes.
$(KERNEL_B)/current: kernel-modules
	@:
kernel-modules: $(HW_CACHE)/kernel.abi
	@KERNEL_ABI=$$(cat $(HW_CACHE)/kernel.abi) kernel/build $(KERNEL_B) >/dev/null

$(HW_B)/userfault_test: kernel/tests/userfault_test.c kernel/tests/kvm_test.h include/lazyvm/compat.h
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) -std=gnu11 -Wall -Wextra -Werror -O2 -static -Iinclude -o $@ $<

# One static binary: main and the vCPU driving, the guest and its VM, the
# exitful and the exitless cases (kernel/tests/apf_test.h says which is where).
APF_TEST_SRCS := kernel/tests/apf_test.c kernel/tests/apf_guest.c kernel/tests/apf_exitful.c \
                 kernel/tests/apf_exitless.c
$(HW_B)/apf_test: $(APF_TEST_SRCS) kernel/tests/apf_test.h kernel/tests/kvm_test.h \
		include/lazyvm/compat.h
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) -std=gnu11 -Wall -Wextra -Werror -O2 -static -pthread -Iinclude -o $@ \
	    $(APF_TEST_SRCS)

$(HW_B)/initramfs-patched.cpio.gz: $(HW_B)/lazyvm tests/hw/init tests/hw/mkinitramfs \
		$(HW_CACHE)/kernel.abi $(HW_CACHE)/busybox.dir $(KERNEL_B)/current $(HW_B)/userfault_test \
		$(HW_B)/apf_test
	$(call say,CPIO,$@)abi=$$(cat $(HW_CACHE)/kernel.abi); \
	    HW_KVM_MODULES=$(KERNEL_B)/$$(cat $(KERNEL_B)/current) \
	    HW_EXTRA_BIN="$(HW_B)/userfault_test $(HW_B)/apf_test" \
	    tests/hw/mkinitramfs $@ $(HW_B)/root-patched $(HW_CACHE)/kernel-$$abi $$abi \
	    $(HW_CACHE)/$$(cat $(HW_CACHE)/busybox.dir)/bin/busybox $(HW_B)/lazyvm tests/hw/init

hwtest-patched-build: $(HW_B)/vmlinuz $(HW_B)/initramfs-patched.cpio.gz

hwtest-patched: hwtest-patched-build
	tests/hw/run --kernel $(HW_B)/vmlinuz --initrd $(HW_B)/initramfs-patched.cpio.gz --logs $(HW_B)/logs-patched

hwtest: hwtest-build
	tests/hw/run --kernel $(HW_B)/vmlinuz --initrd $(HW_B)/initramfs.cpio.gz --logs $(HW_B)/logs

# ---- the Linux guest suite (tests/hw/linux) -----------------------------------
$(HW_B)/lazyvm-work: tests/hw/linux/workload.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) -std=gnu11 -Wall -Wextra -Werror -O2 -static -o $@ $<

# /linux in the L1 initramfs: the L2 kernel (the tier's own), its initramfs, the cases
$(HW_B)/linux/initrd.cpio.gz: $(HW_B)/lazyvm-work tests/hw/linux/init tests/hw/linux/mkinitrd \
		$(HW_CACHE)/busybox.dir
	@mkdir -p $(@D)
	$(call say,CPIO,$@)tests/hw/linux/mkinitrd $@ $(HW_B)/root-l2 \
	    $(HW_CACHE)/$$(cat $(HW_CACHE)/busybox.dir)/bin/busybox $(HW_B)/lazyvm-work tests/hw/linux/init

$(HW_B)/linux/vmlinuz: $(HW_B)/vmlinuz
	@mkdir -p $(@D)
	$(call say,CP,$@)cp $< $@

$(HW_B)/linux/cases.sh: tests/hw/linux/cases.sh
	@mkdir -p $(@D)
	$(call say,CP,$@)cp $< $@

# the Linux benchmarks (bench/hw_linux_bench.sh: hwbench=linux)
$(HW_B)/linux/bench.sh: tests/hw/linux/bench.sh
	@mkdir -p $(@D)
	$(call say,CP,$@)cp $< $@

$(HW_B)/initramfs-linux.cpio.gz: $(HW_B)/lazyvm tests/hw/init tests/hw/mkinitramfs \
		$(HW_CACHE)/kernel.abi $(HW_CACHE)/busybox.dir $(HW_B)/linux/initrd.cpio.gz \
		$(HW_B)/linux/vmlinuz $(HW_B)/linux/cases.sh $(HW_B)/linux/bench.sh
	$(call say,CPIO,$@)abi=$$(cat $(HW_CACHE)/kernel.abi); \
	    HW_LINUX_DIR=$(HW_B)/linux \
	    tests/hw/mkinitramfs $@ $(HW_B)/root-linux $(HW_CACHE)/kernel-$$abi $$abi \
	    $(HW_CACHE)/$$(cat $(HW_CACHE)/busybox.dir)/bin/busybox $(HW_B)/lazyvm tests/hw/init

hwtest-linux-build: $(HW_B)/vmlinuz $(HW_B)/initramfs-linux.cpio.gz

# The Linux L1 with lazyvm's patched KVM (bench/hw_linux_bench.sh --patched):
# the Linux pieces of initramfs-linux and the modules and tests of initramfs-patched
$(HW_B)/initramfs-linux-patched.cpio.gz: $(HW_B)/lazyvm tests/hw/init tests/hw/mkinitramfs \
		$(HW_CACHE)/kernel.abi $(HW_CACHE)/busybox.dir $(HW_B)/linux/initrd.cpio.gz \
		$(HW_B)/linux/vmlinuz $(HW_B)/linux/cases.sh $(HW_B)/linux/bench.sh $(KERNEL_B)/current \
		$(HW_B)/userfault_test $(HW_B)/apf_test
	$(call say,CPIO,$@)abi=$$(cat $(HW_CACHE)/kernel.abi); \
	    HW_LINUX_DIR=$(HW_B)/linux HW_KVM_MODULES=$(KERNEL_B)/$$(cat $(KERNEL_B)/current) \
	    HW_EXTRA_BIN="$(HW_B)/userfault_test $(HW_B)/apf_test" \
	    tests/hw/mkinitramfs $@ $(HW_B)/root-linux-patched $(HW_CACHE)/kernel-$$abi $$abi \
	    $(HW_CACHE)/$$(cat $(HW_CACHE)/busybox.dir)/bin/busybox $(HW_B)/lazyvm tests/hw/init

hwtest-linux-patched-build: $(HW_B)/vmlinuz $(HW_B)/initramfs-linux-patched.cpio.gz

# -smp 1: with an L1 of 2 CPUs most L2 Linux boots after the first hung (docs/LINUX.md)
hwtest-linux: hwtest-linux-build
	tests/hw/run --smp 1 --kernel $(HW_B)/vmlinuz --initrd $(HW_B)/initramfs-linux.cpio.gz \
	    --append hwtest.suite=linux --logs $(HW_B)/logs-linux

hwtest-clean:
	rm -rf $(HW_B)/root $(HW_B)/logs $(HW_B)/lazyvm $(HW_B)/vmlinuz $(HW_B)/initramfs.cpio.gz \
	    $(HW_B)/root-patched $(HW_B)/logs-patched $(HW_B)/initramfs-patched.cpio.gz $(HW_B)/userfault_test \
	    $(HW_B)/apf_test $(HW_B)/lazyvm-work $(HW_B)/linux $(HW_B)/root-l2 $(HW_B)/root-linux \
	    $(HW_B)/initramfs-linux.cpio.gz $(HW_B)/logs-linux $(HW_B)/root-linux-patched \
	    $(HW_B)/initramfs-linux-patched.cpio.gz

.PHONY: hwtest hwtest-build hwtest-clean hw-fetch kernel-modules hwtest-patched hwtest-patched-build \
	hwtest-linux hwtest-linux-build hwtest-linux-patched-build

