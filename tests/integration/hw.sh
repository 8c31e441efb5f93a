#!/bin/bash
# test-timeout: 480
# The hardware-model tier (tests/hw/README.md): Debian's stock 6.12 kernel under
# QEMU/TCG with -cpu max runs kvm-amd with nested paging, like a real AMD host;
# an initramfs with a static lazyvm runs the restore tests there. Builds the
# pieces (the kernel is downloaded once into build/hw/cache), boots, and passes
# the runner's status through: 0 all passed, 1 otherwise. Never skips: a QEMU
# that cannot start is a failure.
set -u
cd "$(dirname "$0")/../.."
HW_B=${HW_B:-build/hw}
start=$EPOCHREALTIME
if ! make -s hwtest-build; then
    echo "hw: ERROR: building the hardware-model host failed (static lazyvm, kernel download or initramfs)"
    exit 1
fi
echo "hw: built in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s (kernel $(cat "$HW_B/cache/kernel.abi"))"
# 72 s of tests alone (2026-12-03, since the kick host's async PF cases
# inject ~2100 each); a shared machine has run it 1.7x slower (121.5 s in
# make test): 200 s
tests/hw/run --kernel "$HW_B/vmlinuz" --initrd "$HW_B/initramfs.cpio.gz" --logs "$HW_B/logs" --test-timeout 200
