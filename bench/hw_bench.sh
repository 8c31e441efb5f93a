#!/usr/bin/env bash
# The hardware-model column: the RFC's async page fault experiment on the
# hardware-model KVM host (Debian 6.12 under QEMU TCG, kvm-amd with nested
# paging; tests/hw), where guest code runs ~1000x faster than on the PVM host,
# kick exits and KVM's own async PF work. Boots the tier with HW_APPEND=hwbench
# and turns its "bench |" lines into a Markdown table (medians of 3 reps).
# Compare modes by ratio within this host, never across hosts.
set -euo pipefail
B=${B:-build}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
HW_APPEND=hwbench make -s hwtest B="$B" >"$log" 2>&1 || { tail -30 "$log" >&2; echo "hw_bench: the hardware-model tier failed" >&2; exit 1; }
# The raw serial lines of the boot that just ran.
serial=$(ls -t "$B"/hw/logs/serial-*.log | head -n 1)
cp "$serial" "$log"
echo "## Async page faults on the hardware-model host (kvm-amd under QEMU TCG)"
echo
echo "- Command: \`bench/hw_bench.sh\` (\`HW_APPEND=hwbench make hwtest\`)"
grep -m1 'INFO uname -r' "$log" | sed 's/.*INFO /- Host: /' || true
grep -m1 'bench | calibration' "$log" | sed 's/.*bench | /- /' || true
echo "- 1 vCPU, 64 MiB, lazy restore, --fault-around 1, --source-latency 10ms; 3 reps; cells are medians"
echo
echo "| case | run_ms | faults | guest took (not-present) |"
echo "|---|---:|---:|---:|"
grep 'bench | ' "$log" | grep -v calibration | sed 's/.*bench | //' | awk -F' [|] ' '
    { n[$1]++; run[$1, n[$1]] = $2; f[$1] = $3; g[$1] = $4; order[$1] = order[$1] ? order[$1] : ++k; names[k] = $1 }
    END {
        for (i = 1; i <= k; i++) {
            c = names[i]; m = n[c]
            for (a = 1; a <= m; a++) v[a] = run[c, a] + 0
            for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (v[b] < v[a]) { t = v[a]; v[a] = v[b]; v[b] = t }
            med[c] = v[int((m + 1) / 2)]
            printf "| %s | %.1f | %s | %s |\n", c, med[c], f[c], g[c]
        }
        off = med["both, apf off"]; cpu = med["cpu task alone"]; io = med["io task alone"]
        ideal = cpu > io ? cpu : io
        printf "\n"
        split("both, apf kernel|both, apf user (kick)|both, apf exitless (kick)", ms, "|")
        for (i = 1; i <= 3; i++) if (med[ms[i]] > 0)
            printf "- %s: **%.0f%%** faster than off, **%.2fx** of the ideal overlap max(cpu, io) = %.0f ms\n", ms[i], (off / med[ms[i]] - 1) * 100, med[ms[i]] / ideal, ideal
    }'
echo
echo "Benchmark wall time: $(( $(date +%s) - start )) s"
echo
