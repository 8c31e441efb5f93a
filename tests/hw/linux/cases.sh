# The Linux guest suite, sourced by tests/hw/init (hwtest.suite=linux) in an
# L1 of its own (tests/hw/run --smp 1, see docs/LINUX.md): Debian's own
# vmlinuz, the tier's L1 kernel, boots as an L2 guest of `lazyvm run --kernel`
# with a busybox initramfs (tests/hw/linux/init, workload.c).
# Uses init's run_start, run_bounded, pass, fail, detail, info, json_*, $T, $LAZYVM.
LK=/linux/vmlinuz
LI=/linux/initrd.cpio.gz
# The L2's RAM: enough for the initramfs and the workload's 32 MiB; each
# snapshot keeps a copy of it in the L1's tmpfs, and eager restores read it all
LMEM=128M
LCMD="console=ttyS0 quiet reboot=k panic=-1 nokaslr tsc=reliable no_timer_check pci=off i8042.noaux"
# hwtest.lverbose=1: the L2 kernel's messages on the console too (not quiet)
[ "$(arg hwtest.lverbose)" = 1 ] && LCMD=$(echo "$LCMD" | sed 's/ quiet / /')
info "L2 kernel $(wc -c <$LK) bytes, L2 initramfs $(wc -c <$LI) bytes; cmdline: $LCMD"

# hwtest.linux=PATTERN (tests/hw/run --append): only the cases whose name
# matches the shell pattern (e.g. 'linux-snapshot-1vcpu|linux-restore-lazy-1vcpu';
# '*' for every case). Without it, every case but those in $FULL_ONLY, which
# repeat what another case covers on a path the vCPU count does not change
# (boot with 1 vCPU: every 1-vCPU snapshot boots first; eager and mmap at 2
# vCPUs: the load mode does not look at vCPUs): make test's budget.
FULL_ONLY="linux-boot-1vcpu linux-restore-eager-2vcpu linux-restore-mmap-2vcpu"
sel=$(arg hwtest.linux)
want() {
    if [ -z "$sel" ]; then
        case " $FULL_ONLY " in *" $1 "*) return 1 ;; esac
        return 0
    fi
    for p in $(echo "$sel" | tr '|' ' '); do
        case $1 in $p) return 0 ;; esac
    done
    return 1
}
# uptime in seconds, one decimal, since A
since() { awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }'; }

# linux_run NAME SECONDS ARGS...: lazyvm run --kernel ... ARGS, at most SECONDS
linux_run() {
    name=$1 secs=$2
    shift 2
    run_start "$name"
    at=$(cut -d' ' -f1 /proc/uptime)
    tmo_saved=$TMO
    TMO=$secs
    run_bounded $LAZYVM run --kernel $LK --initrd $LI --mem $LMEM --stall-timeout 40s "$@"
    rc=$?
    TMO=$tmo_saved
    took=$(since "$at")
    init_at=$(sed -n 's/.*lazyvm: init at \([0-9.]*\)s.*/\1/p' $T/out | head -n 1)
    cpus=$(sed -n 's/.*lazyvm: init at [0-9.]*s, \([0-9]*\) CPU(s).*/\1/p' $T/out | head -n 1)
}

# ---- boot to /init and reset cleanly -----------------------------------------
for nv in 1 2; do
    want linux-boot-${nv}vcpu || continue
    linux_run linux-boot-${nv}vcpu 90 --vcpus $nv --cmdline "$LCMD lazyvm.work=boot"
    if [ "$rc" -eq 0 ] && grep -q "lazyvm run: ok" $T/out && [ "$cpus" = "$nv" ]; then
        pass "/init at ${init_at}s guest uptime with $cpus CPU(s), reset after ${took}s (lazyvm start to exit)"
    else
        fail "status $rc after ${took}s, /init at ${init_at:-never}, CPUs ${cpus:-?} (want $nv)" $T/out
    fi
    [ "$(arg hwtest.lverbose)" = 1 ] && detail $T/out
done

# a damaged bzImage is refused with what is wrong
if want linux-bad-bzimage; then
    run_start linux-bad-bzimage
    head -c 4096 $LK >$T/bad-bzimage
    printf 'XXXX' | dd of=$T/bad-bzimage bs=1 seek=514 conv=notrunc 2>/dev/null
    run_bounded $LAZYVM run --kernel $T/bad-bzimage --initrd $LI --mem $LMEM
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q 'no "HdrS" at offset 0x202' $T/out; then
        pass "$(grep -m1 HdrS $T/out | cut -c1-150)"
    else
        fail "status $rc, no 'no \"HdrS\"' message" $T/out
    fi
fi

# ---- snapshot at the console line, restore in each load mode ------------------
# lazyvm-work fills $FILL MiB, prints "lazyvm: snapshot" (the VMM saves the VM
# there and stops), and after the restore verifies every byte.
FILL=32
for nv in 1 2; do
    snap=$T/linux-snap-$nv
    want "linux-snapshot-${nv}vcpu" || continue
    rm -rf $snap
    linux_run linux-snapshot-${nv}vcpu 90 --vcpus $nv --snapshot-dir $snap \
        --cmdline "$LCMD lazyvm.work=fill:$FILL"
    if [ "$rc" -eq 0 ] && grep -q "snapshot written" $T/out && [ -f $snap/state ]; then
        pass "$(grep -m1 'lazyvm: filled' $T/out | sed 's/.*lazyvm: //'); snapshot written after ${took}s"
    else
        fail "status $rc after ${took}s, no snapshot" $T/out
        continue
    fi
    for mode in "eager" "mmap" "lazy" "lazy --intake exit"; do
        tag=$(echo "$mode" | sed 's/ --intake /-/')
        want linux-restore-$tag-${nv}vcpu || continue
        run_start linux-restore-$tag-${nv}vcpu
        at=$(cut -d' ' -f1 /proc/uptime)
        tmo_saved=$TMO
        TMO=60
        # shellcheck disable=SC2086 # the mode's words
        run_bounded $LAZYVM restore $snap --load $mode --stall-timeout 40s --json
        rc=$?
        TMO=$tmo_saved
        took=$(since "$at")
        first=$(json_num restore_ms $T/out)
        if [ "$rc" -eq 0 ] && grep -q '"ok":true' $T/out && grep -q "lazyvm: verified $FILL MiB" $T/out &&
            grep -q "lazyvm: result pass" $T/out; then
            pass "$(grep -m1 'lazyvm: verified' $T/out | sed 's/.*lazyvm: //'); first instruction ${first:-?} ms, reset after ${took}s"
        else
            fail "status $rc after ${took}s" $T/out
        fi
    done
done

# ---- a snapshot whose async PF MSRs KVM held ---------------------------------
# linux-snap-1 and -2 were taken without `run --apf on`: the guest enabled PV
# async PF with KVM, and the snapshot's MSR section carries it. --apf off must
# turn KVM's off (before: 4155 "page ready" reached the guest with off), and
# --apf user must take the MSRs over from KVM (before: the guest's ACK write
# hit an MSR filter with nobody behind it and the restore failed) and deliver
# them (--policy async: every user-mode fault, the source adds no latency),
# at 1 and 2 vCPUs (2: a guest whose PV spinlocks and IPIs meet HLT in the
# guest, exit.h).
for c in off:1 user:1 user:2; do
    apf=${c%:*} nv=${c#*:}
    name=linux-kvm-held-apf-$apf
    [ "$nv" = 2 ] && name=$name-2vcpu
    snap=$T/linux-snap-$nv
    want $name && [ -f $snap/state ] || continue
    intake=""
    [ $apf = user ] && intake="--intake exit --policy async"
    run_start $name
    tmo_saved=$TMO
    TMO=60
    # shellcheck disable=SC2086 # the intake's words
    run_bounded $LAZYVM restore $snap --load lazy $intake --apf $apf --stall-timeout 40s --json
    rc=$?
    TMO=$tmo_saved
    hyp=$(sed -n 's/.*lazyvm: apf: \([0-9-]*\) page-ready.*/\1/p' $T/out | head -n 1)
    line="the guest took ${hyp:-?} page-ready interrupts; lazyvm injected $(json_num apf_not_present $T/out), served sync at CPL 0 $(json_num apf_kernel_sync $T/out)"
    if [ "$rc" -eq 0 ] && grep -q '"ok":true' $T/out && grep -q "lazyvm: verified $FILL MiB" $T/out &&
        grep -q "lazyvm: result pass" $T/out && { [ $apf != off ] || [ "${hyp:-1}" -eq 0 ]; } &&
        { [ $apf = off ] || [ "${hyp:-0}" -gt 0 ]; }; then
        pass "$line"
    else
        fail "status $rc: $line: $(json_str error $T/out)" $T/out
    fi
done
rm -rf $T/linux-snap-2 # the last case that uses it: its memory back to the L1

# ---- a damaged Linux snapshot is refused before the guest runs ---------------
snap=$T/linux-snap-1
if want linux-damaged-snapshot && [ -f $snap/state ]; then
    bad=$T/linux-bad
    rm -rf $bad
    cp -r $snap $bad
    # one byte of the state file (past the header): its CRC-32C fails
    printf '\377' | dd of=$bad/state bs=1 seek=200 conv=notrunc 2>/dev/null
    expect linux-damaged-state 1 "state file is corrupt: CRC-32C" $LAZYVM restore $bad --load lazy
    rm -rf $bad
    cp -r $snap $bad
    # one byte of guest memory at 64 MiB: its page checksum fails
    printf '\377' | dd of=$bad/memory bs=1 seek=$((64 << 20)) conv=notrunc 2>/dev/null
    expect linux-damaged-memory 1 "page 16384 \(offset 0x4000000\) fails its checksum" \
        $LAZYVM restore $bad --load eager
    rm -rf $bad
fi
rm -rf $T/linux-snap-1

# ---- async page faults, and the RFC's experiment ------------------------------
# lazyvm-work rfc: after the restore one CPU-bound process (a fixed chain of
# steps) and one memory-bound process (verifying $RFC MiB, 1 ms a page read,
# one page a fault) run at the same time on one vCPU; with async page faults
# the CPU-bound one runs while the other waits for its pages. The evidence
# that the guest took them is its own: the HYP line of /proc/interrupts
# ("page ready" interrupts), printed by /init after the run.
RFC=4
rsnap=$T/linux-snap-rfc
if want "linux-rfc-*"; then
    rm -rf $rsnap
    linux_run linux-rfc-snapshot 90 --apf on --snapshot-dir $rsnap --cmdline "$LCMD lazyvm.work=rfc:$RFC"
    if [ "$rc" -eq 0 ] && [ -f $rsnap/state ]; then
        pass "snapshot written after ${took}s"
    else
        fail "status $rc after ${took}s, no snapshot" $T/out
    fi
fi
for apf in off kernel user exitless; do
    want linux-rfc-apf-$apf && [ -f $rsnap/state ] || continue
    intake=""
    case $apf in user | exitless) intake="--intake exit" ;; esac
    run_start linux-rfc-apf-$apf
    tmo_saved=$TMO
    TMO=90
    # shellcheck disable=SC2086 # the intake's words
    run_bounded $LAZYVM restore $rsnap --load lazy $intake --apf $apf --fault-around 1 \
        --source-latency 1ms --stall-timeout 40s --json
    rc=$?
    TMO=$tmo_saved
    cpu=$(sed -n 's/.*lazyvm: rfc cpu-bound \([0-9.]*\) ms.*/\1/p' $T/out | head -n 1)
    mem=$(sed -n 's/.*lazyvm: rfc memory-bound \([0-9.]*\) ms.*/\1/p' $T/out | head -n 1)
    both=$(sed -n 's/.*lazyvm: rfc both done \([0-9.]*\) ms.*/\1/p' $T/out | head -n 1)
    hyp=$(sed -n 's/.*lazyvm: apf: \([0-9-]*\) page-ready.*/\1/p' $T/out | head -n 1)
    impl=$(json_str apf_impl $T/out)
    hlt=$(json_bool hlt_in_guest $T/out)
    line="HLT in the guest ${hlt:-?}; cpu-bound ${cpu:-?} ms, memory-bound ${mem:-?} ms, both ${both:-?} ms; the guest took ${hyp:-?} page-ready interrupts; ${impl:-no apf impl}; lazyvm injected $(json_num apf_not_present $T/out), served sync at CPL 0 $(json_num apf_kernel_sync $T/out)"
    ok=0
    [ "$rc" -eq 0 ] && grep -q '"ok":true' $T/out && grep -q "lazyvm: result pass" $T/out && ok=1
    # off: none may reach the guest (lazyvm held its MSRs since boot, so KVM
    # has none armed). kernel, user, exitless: the guest's own counter must
    # show them (KVM's on kernel; user and exitless: lazyvm's injection on
    # stock KVM, whose kick intake sees user-mode faults because HLT stays
    # in the guest (exit.h), or KVM's for userfaults on the patched one).
    case $apf in
    off) [ "${hyp:-1}" -eq 0 ] || ok=0 ;;
    *) [ "${hyp:-0}" -gt 0 ] || ok=0 ;;
    esac
    if [ $ok = 1 ]; then
        pass "$line"
    else
        fail "status $rc: $line: $(json_str error $T/out)" $T/out
    fi
    grep -E 'lazyvm: apf' $T/out | head -n 3 | detail
done
