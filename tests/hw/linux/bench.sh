# The Linux guest's benchmarks (bench/hw_linux_bench.sh), sourced by
# tests/hw/init in the Linux L1 (hwtest.suite=linux, -smp 1) when the kernel
# command line has hwbench=linux, after tests/hw/linux/cases.sh (whose LK, LI
# and LCMD it uses; the bench boot selects none of its cases). Every restore
# is one line, all with the same fields:
#   bench-linux | CASE | restore_ms | total_ms | guest A | guest B | guest C | faults | guest HYP | apf_impl | status
# restore_ms: lazyvm restore start to the first guest instruction; total_ms:
# to the guest's reset (after its verdict); guest A/B/C: the workload's own
# times (mem cases: "verified" ms and -, -; rfc cases: cpu-bound, memory-bound,
# both done ms); guest HYP: the guest's own "page ready" interrupts since the
# snapshot line (its /proc/interrupts HYP line).
# Uses init's run_bounded, info, detail, json_num, json_str, $T, $LAZYVM.
BL=$T/bench-linux
mkdir -p $BL
# hwbench.reps=N (default 3), hwbench.mems="256 512 1024" (MiB), hwbench.rfc=MIB
# (default 1), hwbench.latency=DUR (default 10ms): smaller runs for a try;
# hwbench.mems=none: only the RFC experiment; hwbench.msteps=N: the RFC's
# CPU-bound process N million steps (default: calibrated, see below)
reps=$(arg hwbench.reps)
mems=$(arg hwbench.mems | tr , ' ')
rfcmib=$(arg hwbench.rfc)
lat=$(arg hwbench.latency)
msteps=$(arg hwbench.msteps)
: "${reps:=3}" "${mems:=256 512 1024}" "${rfcmib:=1}" "${lat:=10ms}"
FILLB=16 # MiB the mem cases fill and verify after the restore

# lbsnap NAME MIB WORK [ARGS]: boot Linux with --mem MIB and lazyvm.work=WORK,
# snapshot at its line into $BL/NAME; status in $lrc
lbsnap() {
    lbn=$1 lbm=$2 lbw=$3
    shift 3
    current="bench snapshot $lbn" # for run_bounded's "still running" lines
    rm -rf $BL/$lbn
    at=$(cut -d' ' -f1 /proc/uptime)
    tmo=$TMO
    TMO=180
    run_bounded $LAZYVM run --kernel $LK --initrd $LI --mem ${lbm}M --stall-timeout 40s \
        --snapshot-dir $BL/$lbn --cmdline "$LCMD${lbextra:+ $lbextra} lazyvm.work=$lbw" "$@"
    lrc=$?
    TMO=$tmo
    if [ "$lrc" -ne 0 ] || [ ! -f $BL/$lbn/state ]; then
        info "bench-linux-note | snapshot $lbn failed (status $lrc)"
        tail -n 20 $T/out | detail
        lrc=1
        return
    fi
    info "bench-linux-note | snapshot $lbn: ${lbm} MiB guest, lazyvm.work=$lbw${lbextra:+ $lbextra} $*, written after $(awk -v a="$at" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s; memory file $(stat -c %s $BL/$lbn/memory) bytes; $(grep -m1 'lazyvm: filled' $T/out | sed 's/.*lazyvm: //')"
}

# guest_ms PATTERN: the number after PATTERN in the guest's console lines
guest_ms() { sed -n "s/.*lazyvm: $1 \([0-9.]*\) ms.*/\1/p" $T/out | head -n 1; }

# lbcase CASE SNAPSHOT ARGS...: one restore, one line
lbcase() {
    lbc=$1 lbs=$2
    shift 2
    current="bench $lbc"
    tmo=$TMO
    TMO=240
    run_bounded $LAZYVM restore $BL/$lbs --stall-timeout 60s --json "$@"
    lbst=$?
    TMO=$tmo
    if [ "$lbst" -eq 0 ] && grep -q '"ok":true' $T/out && grep -q 'lazyvm: result pass' $T/out; then
        lbst=ok
    else
        lbst="failed (status $lbst) $(json_str error $T/out)"
    fi
    case $lbc in
    rfc*) a=$(guest_ms "rfc cpu-bound") b=$(guest_ms "rfc memory-bound") g=$(guest_ms "rfc both done") ;;
    *) a=$(sed -n 's/.*lazyvm: verified [0-9]* MiB in \([0-9.]*\) ms.*/\1/p' $T/out | head -n 1) b=- g=- ;;
    esac
    # the guest's own count: "lazyvm: apf: N page-ready interrupts" (workload)
    # or /init's "lazyvm: apf HYP: N ..." (since boot: nothing before the
    # snapshot line waits for a page)
    hyp=$(sed -n 's/.*lazyvm: apf: \([0-9-]*\) page-ready.*/\1/p' $T/out | head -n 1)
    [ -n "$hyp" ] || hyp=$(sed -n 's/.*lazyvm: apf HYP: *\([0-9]*\).*/\1/p' $T/out | head -n 1)
    info "bench-linux | $lbc | $(json_num restore_ms $T/out) | $(json_num total_ms $T/out) | ${a:--} | ${b:--} | ${g:--} | $(json_num faults $T/out) | ${hyp:--} | $(json_str apf_impl $T/out) | $lbst"
    [ "$lbst" = ok ] || tail -n 30 $T/out | detail
}

bt0=$(cut -d' ' -f1 /proc/uptime)
info "bench-linux-note | reps $reps, memory sizes $mems MiB (fill and verify $FILLB MiB), rfc $rfcmib MiB at $lat a fault"

# ---- 1. restore to first instruction vs memory size, lazy vs eager vs mmap --
# One snapshot a size (the tier's /tmp holds one memory file at a time), its
# reps interleaved. Eager needs the whole guest in anonymous memory besides
# the memory file in tmpfs: a size it cannot fit is said, not run.
[ "$mems" = none ] && mems=
for m in $mems; do
    lbsnap mem$m $m fill:$FILLB
    [ "$lrc" = 0 ] || continue
    avail=$(sed -n 's/MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    eager=1
    if [ $((avail / 1024)) -lt $((m + 128)) ]; then
        eager=0
        info "bench-linux-note | eager at $m MiB not run: $((avail / 1024)) MiB available with the memory file in tmpfs, eager needs $m MiB more"
    fi
    i=0
    while [ $i -lt "$reps" ]; do
        i=$((i + 1))
        lbcase "mem $m MiB, lazy" mem$m --load lazy
        [ $eager = 1 ] && lbcase "mem $m MiB, eager" mem$m --load eager
        lbcase "mem $m MiB, mmap" mem$m --load mmap
    done
    rm -rf $BL/mem$m
done

# ---- 2. the RFC's experiment with Linux processes ---------------------------
# lazyvm-work rfc: after the restore a CPU-bound process (fixed length) and a
# memory-bound one (verifying $rfcmib MiB) on one vCPU, every page its own
# fault of $lat. The snapshot is taken with --apf on where this lazyvm has it
# (lazyvm holds the guest's PV async PF MSRs, so a restore can give them to
# its own injection), else without (KVM holds them: then KVM's own async PF
# runs on every restore of it, whatever --apf says). The baseline without
# any async PF: a second snapshot whose guest never enabled it (no-kvmapf).
L="--load lazy --fault-around 1 --source-latency $lat"
# The CPU-bound process is given the length of the I/O it is to cover, or the
# most async PF could win is small and the experiment says nothing (BENCHMARKS
# 16's first runs: 0.5 s of CPU against 7 s of faults, a 1.07x ceiling). The
# calibration: a snapshot with 200M steps, one eager restore (the CPU-bound
# process's time with no faults) and one lazy --apf off (nothing async: its
# "both done" less the CPU time is the I/O), then msteps = 200 * io / cpu.
if [ -z "$msteps" ]; then
    msteps=200
    lbsnap rfc-cal 256 rfc:$rfcmib:200
    if [ "$lrc" = 0 ]; then
        lbcase "calibration, eager" rfc-cal --load eager
        ccpu=$(guest_ms "rfc cpu-bound")
        # shellcheck disable=SC2086 # L's words
        lbcase "calibration, apf off" rfc-cal $L --apf off
        cboth=$(guest_ms "rfc both done")
        msteps=$(awk -v c="$ccpu" -v b="$cboth" 'BEGIN {
            if (c > 0 && b > c) { n = int(200 * (b - c) / c + 0.5); print (n < 1 ? 1 : n) } else print 200 }')
        info "bench-linux-note | calibration: 200M steps took ${ccpu:-?} ms with no faults, both done ${cboth:-?} ms at $lat a fault with nothing async: the CPU-bound process gets ${msteps}M steps"
        rm -rf $BL/rfc-cal
    fi
fi
lbsnap rfc 256 rfc:$rfcmib:$msteps --apf on
if [ "$lrc" != 0 ]; then
    info "bench-linux-note | retrying the rfc snapshot without --apf on"
    lbsnap rfc 256 rfc:$rfcmib:$msteps
fi
rfcok=$lrc
lbextra=no-kvmapf
lbsnap rfc-noapf 256 rfc:$rfcmib:$msteps
lbextra=
noapf=$lrc
if [ "$rfcok" = 0 ]; then
    i=0
    while [ $i -lt "$reps" ]; do
        i=$((i + 1))
        # no faults at all: the CPU-bound process next to a verification of
        # resident memory (what the workload offers closest to "alone")
        lbcase "rfc, eager (no faults)" rfc --load eager
        # shellcheck disable=SC2086 # L's words
        [ "$noapf" = 0 ] && lbcase "rfc, guest no-kvmapf, apf off" rfc-noapf $L --apf off
        # shellcheck disable=SC2086 # L's words
        {
            lbcase "rfc, apf off" rfc $L --apf off
            lbcase "rfc, apf kernel" rfc $L --apf kernel
            lbcase "rfc, apf user" rfc $L --intake exit --apf user --policy hybrid
            lbcase "rfc, apf exitless" rfc $L --intake exit --apf exitless --policy hybrid
        }
    done
    grep -E 'apf|exit backend' $T/out | head -n 4 | detail
    rm -rf $BL/rfc $BL/rfc-noapf
fi
info "bench-linux-note | done in $(awk -v a="$bt0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
rm -rf $BL
