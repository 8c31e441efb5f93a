#!/usr/bin/env bash
# The Linux guest on the hardware-model host (Debian 6.12 under QEMU TCG,
# kvm-amd with nested paging; tests/hw, docs/LINUX.md): Debian's own vmlinuz
# as an L2 guest of `lazyvm run --kernel`, in an L1 of its own with -smp 1 (as
# tests/integration/hw_linux.sh). Boots the tier's Linux suite with
# hwbench=linux (tests/hw/linux/bench.sh, none of the suite's cases) and turns
# its "bench-linux |" lines into two Markdown tables, medians of the
# interleaved reps:
#   1. restore to the first guest instruction and to the guest's reset vs
#      guest memory size, lazy vs eager vs mmap
#   2. the RFC's experiment with Linux processes (a CPU-bound and a
#      memory-bound process on one vCPU, every page a fault of 10 ms): async
#      page faults off, KVM's own, lazyvm's user and exitless
# --patched: the same on lazyvm's patched KVM (native exits, KVM's async PF
# for userfaults). --lines FILE: only the tables, from a kept boot's lines.
# HWBENCH_LINUX_APPEND="hwbench.reps=1 hwbench.mems=256" etc. for a shorter try.
# Compare modes by ratio within this host, never across hosts.
set -euo pipefail
B=${B:-build}
cd "$(dirname "$0")/.."
start=$(date +%s)
target=hwtest-linux-build initrd=initramfs-linux.cpio.gz kvm="stock KVM"
# --patched: the Linux L1 with lazyvm's KVM (kernel/): --intake exit is native
# userfault exits there, --apf user|exitless KVM's async PF for userfaults
patched='' from=''
while [ $# -gt 0 ]; do
    case $1 in
    --patched) patched=--patched; shift ;;
    --lines) from=${2:?--lines wants the lines file of a run}; shift 2 ;;
    *) echo "usage: bench/hw_linux_bench.sh [--patched] [--lines FILE]" >&2; exit 2 ;;
    esac
done
if [ -n "$patched" ]; then
    target=hwtest-linux-patched-build initrd=initramfs-linux-patched.cpio.gz kvm="lazyvm's patched KVM"
fi
# bench-linux | CASE | restore_ms | total_ms | guest A | guest B | guest C | faults | guest HYP | apf_impl | status
if [ -n "$from" ]; then
    # --lines FILE: the tables of a boot already made (the "lines" file
    # hw_bench_rows keeps with the logs of a run with failed restores):
    # the restores that failed are listed, not tabulated
    lines=$from
    [ -f "$lines" ] || { echo "hw_linux_bench: no lines file $lines" >&2; exit 2; }
    logs=$(mktemp -d /tmp/lazyvm-hw_linux_bench.XXXXXX)
    rows=$logs/rows
    grep "bench-linux | " "$lines" | sed "s/.*bench-linux | //" | awk -F' [|] ' 'NF == 10 && $10 == "ok"' >"$rows"
    failed=$(grep "bench-linux | " "$lines" | sed "s/.*bench-linux | //" | awk -F' [|] ' 'NF == 10 && $10 != "ok"')
else
    # shellcheck source=bench/lib/hw_rows.sh
    . bench/lib/hw_rows.sh
    hw_run_args="--smp 1 --append hwtest.suite=linux --append hwtest.linux=none"
    for a in ${HWBENCH_LINUX_APPEND:-}; do hw_run_args="$hw_run_args --append $a"; done
    failed=
    HW_TEST_TIMEOUT=${HW_TEST_TIMEOUT:-1800} hw_bench_rows hw_linux_bench "$target" "$initrd" linux bench-linux 10
fi

note() { grep -E "bench-linux-note [|] ($1)" "$lines" | sed 's/.*bench-linux-note | /- /' || true; }
echo "## A Linux guest on the hardware-model host, $kvm (kvm-amd under QEMU TCG)"
echo
echo "- Command: \`bash bench/hw_linux_bench.sh${patched:+ $patched}\` (\`make $target\`, then \`tests/hw/run --smp 1 --append 'hwtest.suite=linux hwtest.linux=none hwbench=linux'\`)"
grep -m1 'INFO uname -r' "$lines" | sed 's/.*INFO uname -r: /- L1 host: Linux /; s/$/; the L2 guest: the same vmlinuz/' || true
note reps
echo "- 1 vCPU, the L1 at -smp 1; cells are medians of the reps (faults, HYP, APF by: the last rep)"
echo
# (not indented: the heredoc ends at a bare AWK)
if grep -q "^mem " "$rows"; then
echo "### Restore vs guest memory size"
echo
note "snapshot mem"
note "eager at"
echo
echo "| case | first instruction ms | guest verified ms | to the reset ms | faults |"
echo "|---|---:|---:|---:|---:|"
awk -F' [|] ' -f bench/lib/median.awk -f - "$rows" <<'AWK'
    $1 ~ /^mem / {
        c = $1
        if (!(c in n)) names[++k] = c
        n[c]++; R[c, n[c]] = $2; T[c, n[c]] = $3; V[c, n[c]] = $4; f[c] = $7
    }
    END {
        for (i = 1; i <= k; i++) {
            c = names[i]
            printf "| %s | %.1f | %.1f | %.1f | %s |\n", c, median_at(R, c), median_at(V, c), median_at(T, c), f[c]
        }
        printf "\n"
        for (i = 1; i <= k; i++) {
            c = names[i]
            if (c !~ /, lazy$/) continue
            m = c; sub(/, lazy$/, "", m)
            for (j = 1; j <= 2; j++) {
                o = m (j == 1 ? ", eager" : ", mmap")
                if (!(o in n)) continue
                printf "- %s: %s to the first instruction **%.0fx** lazy's (per-rep median), to the reset %.2fx\n", m, o == m ", eager" ? "eager" : "mmap", rep_ratio(R, o, c), rep_ratio(T, o, c)
            }
        }
    }
AWK
echo
fi
echo "### The RFC's experiment with Linux processes"
echo
note "snapshot rfc|retrying|calibration"
echo "- \`lazyvm-work rfc\` after the restore: a CPU-bound process (xorshift steps, as many as the calibration line says: its time with no faults matched to the I/O of --apf off) and a memory-bound one (verifying its pages) at once on 1 vCPU; lazy restores with \`--fault-around 1 --source-latency\` as in the snapshot line above; user/exitless with \`--intake exit --policy hybrid\` (the probe's exit backend: kick on stock KVM, native on the patched one; APF by says whose async PF ran); the eager row has no faults"
echo "- HYP: the guest's own \"page ready\" interrupts after the snapshot line (its /proc/interrupts HYP line), the evidence that it took async page faults"
echo
echo "| case | cpu-bound ms | memory-bound ms | both done ms | to the reset ms | faults | guest HYP | APF by |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
awk -F' [|] ' -f bench/lib/median.awk -f - "$rows" <<'AWK'
    $1 ~ /^rfc/ {
        c = $1
        if (!(c in n)) names[++k] = c
        n[c]++; T[c, n[c]] = $3; C[c, n[c]] = $4; M[c, n[c]] = $5; G[c, n[c]] = $6
        f[c] = $7; h[c] = $8; impl[c] = $9
    }
    END {
        for (i = 1; i <= k; i++) {
            c = names[i]
            printf "| %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %s |\n", c, median_at(C, c), median_at(M, c), median_at(G, c), median_at(T, c), f[c], h[c], impl[c] == "" ? "-" : impl[c]
        }
        printf "\n"
        # against the true baseline (a guest that never enabled async PF)
        # where there is one, and against --apf off on the same snapshot
        nb = split("rfc, guest no-kvmapf, apf off|rfc, apf off", base, "|")
        split("rfc, apf off|rfc, apf kernel|rfc, apf user|rfc, apf exitless", ms, "|")
        for (b = 1; b <= nb; b++) {
            off = base[b]
            if (!(off in n)) continue
            for (i = 1; i <= 4; i++) if (ms[i] in n && ms[i] != off)
                printf "- %s: both done **%.2fx** faster than %s (%+.0f%%; per rep: median %.2fx, %s)\n", ms[i], 1 / rep_ratio(G, ms[i], off), off, (1 / rep_ratio(G, ms[i], off) - 1) * 100, 1 / rep_ratio(G, ms[i], off), rep_spread(G, off, ms[i])
        }
        off = ("rfc, guest no-kvmapf, apf off" in n) ? "rfc, guest no-kvmapf, apf off" : "rfc, apf off"
        if (!(off in n)) exit
        cpu = median_at(C, "rfc, eager (no faults)"); both = median_at(G, off)
        io = both - cpu
        ideal = cpu > io ? cpu : io
        if (cpu > 0)
            printf "- the best any overlap can do here: max(cpu %.0f ms (eager), io = both - cpu = %.0f ms) = %.0f ms, **%.2fx** faster than %s (%+.0f%%)\n", cpu, io, ideal, both / ideal, off, (both / ideal - 1) * 100
    }
AWK
if [ -n "$failed" ]; then
    echo
    echo "Restores that failed (not in the tables):"
    echo
    echo "$failed" | awk -F' [|] ' '{ printf "- %s: %s\n", $1, $10 }' | sort | uniq -c | sed 's/^ *\([0-9]*\) - /- (x\1) /'
fi
echo
note 'done'
echo
[ -n "$from" ] || echo "Benchmark wall time: $(( $(date +%s) - start )) s"
echo
rm -rf "$logs"
