#!/usr/bin/env bash
# REAP-style working-set replay on the hardware-model KVM host (Debian 6.12
# under QEMU TCG, kvm-amd with nested paging; tests/hw), where guest code runs
# ~1000x faster than on the PVM host. bench/restore_bench.py's remote experiment
# (docs/BENCHMARKS.md section 6) with --source-latency standing for remote
# storage instead of NBD (the tier's static lazyvm is built without NBD).
# Boots the tier with HW_APPEND=hwbench=reap (tests/hw/init runs the normal
# tests, then the experiment) and turns its "bench-reap |" lines into a Markdown
# section (medians of 3 interleaved reps). Compare cases within this host only.
#
# Environment: B (build dir, default build), HW_TEST_TIMEOUT (seconds from boot
# to the end, default 300 here), plus tests/hw/run's own (HW_QEMU, ...).
set -euo pipefail
B=${B:-build}
cd "$(dirname "$0")/.."
start=$(date +%s)
# shellcheck source=bench/lib/hw_rows.sh
. bench/lib/hw_rows.sh
# bench-reap | CASE | total_ms | run_ms | restore_ms | faults | ws_prefetched | pages_background | prefetch_ms | status
hw_bench_rows hw_reap_bench hwtest-build initramfs.cpio.gz reap bench-reap 9

echo "## REAP working-set replay on the hardware-model host (kvm-amd under QEMU TCG)"
echo
echo "- Command: \`bash bench/hw_reap_bench.sh\` (\`make hwtest-build\`, then \`HW_APPEND=hwbench=reap tests/hw/run\`: the tier's tests, then the experiment in tests/hw/init)"
grep -m1 'INFO uname -r' "$lines" | sed 's/.*INFO uname -r: /- Host: Linux /' || true
echo "- Guest: 128 MiB, 1 vCPU, run phase scan:32M (the same 32 MiB every restore); lazy memory is the snapshot's file on the host's tmpfs behind \`--source-latency\` (every page read waits that long, a batch of reads waits once: stands for remote storage; no NBD in the tier's static build); fault-around 16 (default); working set recorded once with \`--source-latency 1ms --record-ws\`; 3 reps interleaved; cells are medians"
grep 'bench-reap | \(snapshot\|recorded\|done\)' "$lines" | sed 's/.*bench-reap | /- /' || true
echo
echo "| case | restore_ms | run_ms | total_ms | demand faults | prefetched up front | prefetch_ms | background |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
awk -F' [|] ' -f bench/lib/median.awk -f - "$rows" <<'AWK'
    function median(c, col,   a, v) {
        for (a = 1; a <= n[c]; a++) v[a] = x[c, a, col] + 0
        return median_of(v, n[c])
    }
    {
        c = $1
        if (!(c in n)) names[++k] = c
        n[c]++
        for (i = 2; i <= 8; i++) x[c, n[c], i] = $i
    }
    END {
        for (i = 1; i <= k; i++) {
            c = names[i]
            for (col = 2; col <= 8; col++) med[c, col] = median(c, col)
            printf "| %s | %.1f | %.1f | %.1f | %.0f | %.0f | %.1f | %.0f |\n", c, med[c, 4], med[c, 3], med[c, 2],
                med[c, 5], med[c, 6], med[c, 8], med[c, 7]
        }
        res = "fully resident (eager, local file)"; res4k = "fully resident, THP off (eager, local file)"
        l1 = "lazy 1ms"; r1 = "replay 1ms"; l2 = "lazy 200us"; r2 = "replay 200us"; loc = "lazy, local file"
        printf "\n"
        if (med[r1, 2] > 0)
            printf "- working-set replay vs plain lazy at 1 ms a read: **%.2fx** faster (%.0f vs %.0f ms total; target >= 3x, REAP reported 3.7x)\n", med[l1, 2] / med[r1, 2], med[r1, 2], med[l1, 2]
        if (med[r2, 2] > 0)
            printf "- working-set replay vs plain lazy at 200 us a read: **%.2fx** faster (%.0f vs %.0f ms)\n", med[l2, 2] / med[r2, 2], med[r2, 2], med[l2, 2]
        if (med[res, 2] > 0)
            printf "- working-set replay (1 ms) vs fully resident: **%.2fx** its total (%.0f vs %.0f ms; target within 1.3x); run phase alone %.0f vs %.0f ms (%.1fx)\n", med[r1, 2] / med[res, 2], med[r1, 2], med[res, 2], med[r1, 3], med[res, 3], med[r1, 3] / med[res, 3]
        if (med[res4k, 3] > 0)
            printf "- run phase, replay (1 ms) vs fully resident in 4 KiB pages (THP off): %.0f vs %.0f ms (**%.2fx**)\n", med[r1, 3], med[res4k, 3], med[r1, 3] / med[res4k, 3]
        if (med[loc, 5] > 0 && med[res4k, 3] > 0)
            printf "- where plain lazy time goes: its run phase from the local file, without any latency, is %.0f ms: %.0f ms of KVM mapping the pages 4 KiB at a time (the THP-off resident run phase) and %.0f ms for %.0f demand faults (%.1f ms a fault: the VMM and the userfaultfd under TCG); 1 ms a read adds %.0f ms, 200 us adds %.0f ms\n", med[loc, 3], med[res4k, 3], med[loc, 3] - med[res4k, 3], med[loc, 5], (med[loc, 3] - med[res4k, 3]) / med[loc, 5], med[l1, 3] - med[loc, 3], med[l2, 3] - med[loc, 3]
        nc = "replay 1ms, no huge-page collapse"
        if (med[nc, 2] > 0)
            printf "- making the replayed 2 MiB pieces huge pages (MADV_COLLAPSE): replay total %.0f ms with, %.0f ms without (**%.2fx**); run phase %.0f vs %.0f ms\n", med[r1, 2], med[nc, 2], med[nc, 2] / med[r1, 2], med[r1, 3], med[nc, 3]
        if (med[r1, 6] > 0)
            printf "- the replay installs %.0f pages up front in %.0f ms (1 ms) / %.0f ms (200 us): %.0f us a page\n", med[r1, 6], med[r1, 8], med[r2, 8], med[r1, 8] * 1000 / med[r1, 6]
    }
AWK
echo
echo "Benchmark wall time: $(( $(date +%s) - start )) s (boot, the tier's tests and the experiment)"
echo
rm -rf "$logs"
