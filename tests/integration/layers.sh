#!/bin/bash
# The way of an exit reads in one direction (docs/ARCHITECTURE.md, "The way of
# an exit"): every #include "..." in src/vmm names a header of the includer's
# own layer or one below it, so no cycle can form. Checked with grep over the
# sources; a header not given a layer here fails the check (a new one must be
# placed). 0 when every include goes down or across, 1 otherwise.
set -u
cd "$(dirname "$0")/../.."
# layer of each header: larger = higher
declare -A layer=(
    [vmm.h]=0 [guest_abi.h]=0 [x86_64/decode.h]=0 [apf_rings.h]=0
    [dev/pio.h]=0 [dev/uart.h]=0 [dev/i8042.h]=0 [dev/rtc.h]=0 [x86_64/mptable.h]=0
    [x86_64/linux_boot.h]=0
    [ufpages.h]=1
    [apf.h]=2 [apf_internal.h]=2
    [exit.h]=3 [exit_backend.h]=3
    [vcpu.h]=4 [linux.h]=4
    [snapshot.h]=5 [restore.h]=5 [migrate.h]=5 [devices.h]=5
)
# vm.c is the VM's life (it starts the vCPU threads and a migration), above
# the vCPU loop; what the layers below call of it is declared in vmm.h
# layer of each source file: that of its own header, else given here
declare -A own=(
    [vcpu.c]=4 [vm.c]=5 [mem.c]=0 [kvm.c]=0 [probe.c]=3 [exit.c]=3 [exit_native.c]=3
    [exit_sigbus.c]=3 [exit_kick.c]=3 [apf.c]=2 [apf_lazyvm.c]=2 [apf_kvm.c]=2
    [apf_rings.c]=0 [ufpages.c]=1 [x86_64/decode.c]=0 [x86_64/boot.c]=4
    [x86_64/report.c]=4 [x86_64/state.c]=5 [linux.c]=4 [x86_64/linux_boot.c]=0
)
bad=0 n=0
for f in $(cd src/vmm && ls *.c *.h x86_64/*.c x86_64/*.h dev/*.c dev/*.h); do
    l=${own[$f]:-${layer[$f]:-${layer[${f%.c}.h]:-5}}}
    while read -r inc; do
        [ -n "$inc" ] || continue
        inc=${inc#../}
        case $f in x86_64/*) [ -f "src/vmm/x86_64/$inc" ] && inc=x86_64/$inc ;; esac
        case $f in dev/*) [ -f "src/vmm/dev/$inc" ] && inc=dev/$inc ;; esac
        case $inc in lazyvm/*) continue ;; esac
        n=$((n + 1))
        il=${layer[$inc]:-}
        if [ -z "$il" ]; then
            echo "layers: $f includes $inc, which has no layer in $0"
            bad=1
        elif [ "$il" -gt "$l" ]; then
            echo "layers: $f (layer $l) includes $inc (layer $il, above it)"
            bad=1
        fi
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "src/vmm/$f")
done
# and apf.c's layer calls nothing of the layers above by name
if grep -nE '\b(exit_[a-z_]+|vcpu_thread|userfault_[a-z_]+)\(' src/vmm/apf*.c src/vmm/ufpages.c; then
    echo "layers: the async PF or page layer calls into an exit backend or the vCPU loop"
    bad=1
fi
[ $n -gt 20 ] || { echo "layers: only $n includes seen: the check looks at the wrong files"; bad=1; }
echo "layers: $n includes checked, $([ $bad = 0 ] && echo "all go down or across" || echo "FAILED")"
exit $bad
