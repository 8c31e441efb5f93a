#!/usr/bin/env bash
# Fault intake on the hardware-model host with lazyvm's patched KVM (kernel/,
# docs/KERNEL.md): pages per second through a UFFD handler thread, native
# userfault exits (KVM_MEM_USERFAULT) and kick exits, 1 and 2 vCPUs, one boot,
# side by side (the userfault series reported 1.8x over UFFD at 2 vCPUs).
# Boots the patched tier with HW_APPEND=hwbench=intake (the experiment is in
# tests/hw/init) and turns its "bench-intake |" lines into a Markdown table of
# medians over 3 interleaved reps. Compare within this host, never across.
set -euo pipefail
B=${B:-build}
cd "$(dirname "$0")/.."
start=$(date +%s)
# shellcheck source=bench/lib/hw_rows.sh
. bench/lib/hw_rows.sh
# bench-intake | CASE | vcpus | faults | run_ms | status
hw_bench_rows hw_intake_bench hwtest-patched-build initramfs-patched.cpio.gz intake bench-intake 5

echo "## Fault intake on the hardware-model host, patched KVM (kvm-amd under QEMU TCG)"
echo
echo "- Command: \`bash bench/hw_intake_bench.sh\` (\`make hwtest-patched-build\`, then \`HW_APPEND=hwbench=intake tests/hw/run\` on the patched initramfs)"
grep -m1 'INFO uname -r' "$lines" | sed 's/.*INFO uname -r: /- Host: Linux /' || true
echo "- Guest: 64 MiB; each vCPU scans its own 16 MiB once (4096 pages); lazy restore from the local memory file, \`--fault-around 1\` (every page its own fault); 3 reps interleaved; cells are medians; pages/s = the 4096 pages a vCPU scans x vCPUs / run phase"
echo "- \"faults through the intake\" counts the faults the named intake resolved. With kick exits, KVM's own async PF (its \"artificial halt\" for a guest that did not enable PV async PF) takes nearly every fault first: a KVM worker faults the page on the userfaultfd, the kick intake thread serves it there (it is not a vCPU thread, so nothing is kicked) and the vCPU halts in KVM until the page is ready"
echo
echo "| intake | vCPUs | faults through the intake | run_ms | pages/s (16 MiB a vCPU / run phase) |"
echo "|---|---:|---:|---:|---:|"
awk -F' [|] ' -f bench/lib/median.awk -f - "$rows" <<'AWK'
    function median(key,   a, v) {
        for (a = 1; a <= n[key]; a++) v[a] = ms[key, a] + 0
        return median_of(v, n[key])
    }
    {
        key = $1 SUBSEP $2
        if (!(key in n)) { keys[++k] = key }
        n[key]++; ms[key, n[key]] = $4; f[key] = $3
    }
    END {
        for (i = 1; i <= k; i++) {
            split(keys[i], kv, SUBSEP)
            med = median(keys[i]); pps[keys[i]] = med > 0 ? 4096 * kv[2] / (med / 1000) : 0
            printf "| %s | %s | %s | %.1f | %.0f |\n", kv[1], kv[2], f[keys[i]], med, pps[keys[i]]
        }
        printf "\n"
        u = "UFFD handler thread"
        for (v = 1; v <= 2; v++) {
            nat = "native userfault exits" SUBSEP v; kick = "kick exits" SUBSEP v; uf = u SUBSEP v
            if (pps[uf] > 0 && pps[nat] > 0)
                printf "- %d vCPU: native exits **%.2fx** the UFFD handler thread's pages/s, kick **%.2fx**\n", v, pps[nat] / pps[uf], pps[kick] / pps[uf]
        }
    }
AWK
echo
echo "Benchmark wall time: $(( $(date +%s) - start )) s"
echo
rm -rf "$logs"
