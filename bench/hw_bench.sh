#!/usr/bin/env bash
# The hardware-model column: the RFC's async page fault experiment on the
# hardware-model KVM host (Debian 6.12 under QEMU TCG, kvm-amd with nested
# paging; tests/hw), where guest code runs ~1000x faster than on the PVM host,
# kick exits and KVM's own async PF work. Boots the tier with HW_APPEND=hwbench
# and turns its "bench |" lines into a Markdown table (medians of 3 reps).
# --patched boots it with lazyvm's KVM (kernel/): native userfault exits and
# KVM's async PF for userfaults join (exitful, exitless), plus short faults.
# Compare modes by ratio within this host, never across hosts.
set -euo pipefail
B=${B:-build}
cd "$(dirname "$0")/.."
start=$(date +%s)
target=hwtest-build initrd=initramfs.cpio.gz kvm="stock KVM"
if [ "${1:-}" = --patched ]; then
    target=hwtest-patched-build initrd=initramfs-patched.cpio.gz kvm="lazyvm's patched KVM"
fi
# shellcheck source=bench/lib/hw_rows.sh
. bench/lib/hw_rows.sh
# bench | CASE | run_ms | faults | guest not-present | apf_impl | async_ms | sync_ms | sync | status
hw_bench_rows hw_bench "$target" "$initrd" apf bench 9

echo "## Async page faults on the hardware-model host, $kvm (kvm-amd under QEMU TCG)"
echo
echo "- Command: \`bash bench/hw_bench.sh${1:+ $1}\` (\`make $target\`, then \`HW_APPEND=hwbench tests/hw/run\`)"
grep -m1 'INFO uname -r' "$lines" | sed 's/.*INFO uname -r: /- Host: Linux /' || true
grep -m1 'bench | calibration' "$lines" | sed 's/.*bench | /- /' || true
echo "- 1 vCPU, 64 MiB, lazy restore, --fault-around 1, --source-latency 10ms (the short cases: 0, a 2048-page scan); 3 reps interleaved; cells are medians (the other columns: the last rep)"
echo "- APF by: who injected the async page faults (apf_impl in the restore's JSON); vCPU ms: the time lazyvm's vCPU threads spent on faults that went async / stayed sync"
echo
echo "| case | run_ms | faults | guest took (not-present) | APF by | vCPU ms async / sync | sync faults |"
echo "|---|---:|---:|---:|---|---:|---:|"
awk -F' [|] ' -f bench/lib/median.awk -f - "$rows" <<'AWK'
    {
        c = $1
        if (!(c in n)) names[++k] = c
        n[c]++; run[c, n[c]] = $2; f[c] = $3; g[c] = $4; impl[c] = $5; am[c] = $6; sm[c] = $7; sy[c] = $8
    }
    END {
        for (i = 1; i <= k; i++) {
            c = names[i]; med[c] = median_at(run, c)
            printf "| %s | %.1f | %s | %s | %s | %s / %s | %s |\n", c, med[c], f[c], g[c], impl[c] == "" ? "-" : impl[c], am[c], sm[c], sy[c]
        }
        off = med["both, apf off"]; cpu = med["cpu task alone"]; io = med["io task alone"]
        ideal = cpu > io ? cpu : io
        printf "\n"
        split("both, apf kernel|both, apf user (kick)|both, apf exitless (kick)|both, apf user (native)|both, apf exitless (native)", ms, "|")
        for (i = 1; i <= 5; i++) if (med[ms[i]] > 0)
            printf "- %s: **%.2fx** faster than off (%.0f%%), **%.2fx** of the ideal overlap max(cpu, io) = %.0f ms\n", ms[i], off / med[ms[i]], (off / med[ms[i]] - 1) * 100, med[ms[i]] / ideal, ideal
        so = med["short: native, apf off"]; sh = med["short: native, apf user hybrid"]
        if (so > 0 && sh > 0)
            printf "- short faults, per-fault decision (hybrid) against async PF off: **%.3fx** the run time (per-rep ratios: median %.3fx, %s), policy sync %.3fx; guest took %s async page faults\n", sh / so, rep_ratio(run, "short: native, apf user hybrid", "short: native, apf off"), rep_spread(run, "short: native, apf user hybrid", "short: native, apf off"), rep_ratio(run, "short: native, apf user, policy sync", "short: native, apf off"), g["short: native, apf user hybrid"]
        ef = med["short: native, every fault async, exitful"]; el = med["short: native, every fault async, exitless"]
        if (ef > 0 && el > 0)
            printf "- every short fault async: exitful %.1f ms, exitless %.1f ms for 2048 pages (exitless/exitful per rep: median %.3fx, %s); in the last rep the vCPU thread spent %.1f us a fault exitful (exit + ACCEPT), 0 exitless, and %.1f us a sync fault (hybrid)\n", ef, el, rep_ratio(run, "short: native, every fault async, exitless", "short: native, every fault async, exitful"), rep_spread(run, "short: native, every fault async, exitless", "short: native, every fault async, exitful"), am["short: native, every fault async, exitful"] * 1000 / 2048, sm["short: native, apf user hybrid"] * 1000 / 2048
    }
AWK
echo
echo "Benchmark wall time: $(( $(date +%s) - start )) s"
echo
rm -rf "$logs"
