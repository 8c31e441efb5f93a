#!/bin/bash
# test-timeout: 720
# The hardware-model tier again, with lazyvm's patched KVM (kernel/,
# docs/KERNEL.md): kernel/build makes kvm.ko and kvm-amd.ko from Debian's
# pinned 6.12 packages (cached in build/kernel; ~45 s from nothing), the
# initramfs carries and insmods them instead of the stock ones, and /init adds
# the patched run's cases (the kernel-side userfault test, the native exit
# backend chosen by the probe, --intake exit restores at 1 and 2 vCPUs) to the
# stock run's. 0 all passed, 1 otherwise; never skips.
set -u
cd "$(dirname "$0")/../.."
HW_B=${HW_B:-build/hw}
start=$EPOCHREALTIME
if ! make -s hwtest-patched-build; then
    echo "hw_patched: ERROR: building the patched host failed (kernel/build, static lazyvm or initramfs; kernel/build says which step)"
    exit 1
fi
echo "hw_patched: built in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s (kvm $(cat build/kernel/current))"
HW_TEST_TIMEOUT=${HW_TEST_TIMEOUT:-400} \
    tests/hw/run --kernel "$HW_B/vmlinuz" --initrd "$HW_B/initramfs-patched.cpio.gz" --logs "$HW_B/logs-patched"
