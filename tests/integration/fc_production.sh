#!/bin/bash
# fc-handler as serverless platforms would run it: memory from a real NBD
# server (nbdkit on loopback: its delay and error filters, a server killed
# mid-restore, a filter that changes bytes), every page checked against a
# `lazyvm checksum` file, known-zero pages served unread, working sets recorded
# and replayed, many snapshots and 32 VMs at once, Prometheus metrics.
# fc-client plays Firecracker (v1.12). Every check prints "ok" or "not ok"; the
# script exits 1 if any failed.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-fcp-test.XXXXXX)
failures=0
handler_pid=""

. "$(dirname "$0")/lib/fc.bash"
. "$(dirname "$0")/lib/nbdkit.bash"
cleanup() {
    [ -n "$handler_pid" ] && kill -9 "$handler_pid" 2>/dev/null
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT

FCC=("$LAZYVM" fc-client --threads 2 --no-remove-check)
stop() { # stop: SIGTERM the handler, wait (bounded)
    kill -TERM "$handler_pid" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$handler_pid" 2>/dev/null || break; sleep 0.05; done
    wait "$handler_pid" 2>/dev/null
    handler_pid=""
}
metric() { # metric NAME FILE: the last value of a totals counter in the JSON metrics
    grep -o "\"totals\":{.*" "$2" | tail -1 | grep -o "\"$1\":[0-9]*" | cut -d: -f2
}

head -c 16M /dev/urandom >"$T/mem.img"
head -c 16M /dev/urandom >"$T/mem2.img"
"$LAZYVM" checksum "$T/mem.img" >/dev/null && "$LAZYVM" checksum "$T/mem2.img" >/dev/null ||
    { echo "lazyvm checksum failed"; exit 1; }

echo "# memory from an NBD server, every page checked"
serve file "$T/mem.img" || exit 1
start_handler nbd --source "nbd://127.0.0.1:$port/" --checksums "$T/mem.img.lvsum" \
    --metrics-prom "$T/nbd.prom" || exit 1
expect "NBD source with checksums: every byte right" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/nbd.sock" --mem-file "$T/mem.img"
check "the log says where the memory comes from" grep -q "from nbd nbd://127.0.0.1:$port/, checksummed" "$T/nbd.err"
sleep 1.2 # the Prometheus file is rewritten every second
check "Prometheus: per-VM series and the total" \
    bash -c "grep -q '^lazyvm_pages_copied_total{vm=\"all\"} [0-9]' '$T/nbd.prom' && grep -q '^lazyvm_fault_latency_seconds_bucket{vm=\"all\",le=\"+Inf\"} [0-9]' '$T/nbd.prom'"
check "Prometheus: every sample line is name{labels} value" \
    bash -c "! grep -v '^#' '$T/nbd.prom' | grep -vE '^[a-z_]+(\{[a-z]+=\"[^\"]*\"(,[a-z]+=\"[^\"]*\")*\})? [0-9.e+-]+$'"
cpids=()
for i in $(seq 8); do # each VM reads on its own connection
    "$LAZYVM" fc-client --socket "$T/nbd.sock" --mem-file "$T/mem.img" --threads 1 --seed "$i" \
        --no-remove-check >"$T/n$i.out" 2>&1 & cpids+=($!)
done
bad=0
for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
check "8 VMs at once from one NBD export: all verified ($bad failed)" [ "$bad" -eq 0 ]
stop
kill "$nbd_pid"

echo "# a slow server (the delay filter): still right"
serve --filter=delay file "$T/mem.img" rdelay=5ms || exit 1
start_handler slow --source "nbd://127.0.0.1:$port/" --checksums "$T/mem.img.lvsum" \
    --fault-around 1 --metrics-prom "$T/slow.prom" || exit 1
"$LAZYVM" fc-client --socket "$T/slow.sock" --mem-file "$T/mem.img" --threads 1 --no-remove-check \
    >"$T/slow.out" 2>&1 & c=$!
labelled=no
for _ in $(seq 40); do
    grep -qE '^lazyvm_faults_total\{vm="[0-9]+",pid="[0-9]+",snapshot="0"\} [0-9]+' "$T/slow.prom" 2>/dev/null &&
        { labelled=yes; break; }
    sleep 0.1
done
check "Prometheus while a VM is served: its own series, labelled" [ "$labelled" = yes ]
wait $c; rc=$?
check "5 ms a read: every byte right (status $rc)" [ "$rc" -eq 0 ]
stop
kill "$nbd_pid"

echo "# a page the server changes (the swab filter) is never installed"
# Pages whose bytes come in equal pairs survive byte-swapping unchanged;
# page 2000 is random, so only it changes: the proof of identity (on the first
# pages) succeeds, the VM is proven, and the mismatch kills it.
python3 -c "
import os, sys
out = bytearray()
for p in range(4096):
    r = os.urandom(4096) if p == 2000 else bytes(b for x in os.urandom(2048) for b in (x, x))
    out += r
open(sys.argv[1], 'wb').write(out)" "$T/pairs.img"
"$LAZYVM" checksum "$T/pairs.img" >/dev/null
serve --filter=swab file "$T/pairs.img" swab-bits=16 || exit 1
start_handler swab --source "nbd://127.0.0.1:$port/" --checksums "$T/pairs.img.lvsum" || exit 1
timeout 60 "${FCC[@]}" --socket "$T/swab.sock" --mem-file "$T/pairs.img" >/dev/null 2>&1; rc=$?
check "the VM is killed, not given the changed page (status $rc, want 137)" [ "$rc" -eq 137 ]
check "the log names the page and its checksum" grep -q "page 2000 (offset 0x7d0000) fails its checksum" "$T/swab.err"
stop
kill "$nbd_pid"

echo "# a server that starts failing reads (the error filter), and one killed mid-restore"
serve --filter=error file "$T/mem.img" error-rate=100% error-file="$T/fail-now" || exit 1
start_handler err --source "nbd://127.0.0.1:$port/" --source-timeout 1s --source-latency 1ms || exit 1
( sleep 0.3; touch "$T/fail-now" ) &
t0=$EPOCHREALTIME
timeout 60 "$LAZYVM" fc-client --socket "$T/err.sock" --mem-file "$T/mem.img" --threads 1 >/dev/null 2>&1; rc=$?
secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
check "reads failing: the VM is killed after the retries ($rc, ${secs}s), never given zeros" [ "$rc" -eq 137 ]
check "the log says the reads failed" grep -q "cannot be served: reading page" "$T/err.err"
stop
kill "$nbd_pid"
serve --filter=delay file "$T/mem.img" rdelay=5ms || exit 1
start_handler kill --source "nbd://127.0.0.1:$port/" --source-timeout 1s || exit 1
"$LAZYVM" fc-client --socket "$T/kill.sock" --mem-file "$T/mem.img" --threads 1 >/dev/null 2>&1 & c=$!
sleep 1
kill -9 "$nbd_pid"
t0=$EPOCHREALTIME
wait $c; rc=$?
secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
check "server killed: the VM is stopped within the bounded waits ($rc after ${secs}s)" \
    bash -c "[ $rc -eq 137 ] && awk 'BEGIN { exit !($secs < 15) }'"
stop

echo "# known-zero pages (holes and pages of zeros) are served without a read"
truncate -s 32M "$T/sparse.img"
dd if="$T/mem.img" of="$T/sparse.img" bs=1M count=4 seek=8 conv=notrunc status=none
out=$("$LAZYVM" checksum "$T/sparse.img"); echo "$out"
check "lazyvm checksum finds the holes without reading them" grep -q "7168 zero (7168 in holes, not read), 4 MiB read" <<<"$out"
start_handler zero --mem-file "$T/sparse.img" --checksums "$T/sparse.img.lvsum" || exit 1
expect "holes read as zeros, the data as written" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/zero.sock" --mem-file "$T/sparse.img"
stop
check "the VM's zero pages were known" grep -q "7168 known-zero pages" "$T/zero.err"
check "only the data was read (bytes_read $(metric bytes_read "$T/zero.out"))" \
    [ "$(metric bytes_read "$T/zero.out")" -le $((4 * 1048576 + 65536)) ]

echo "# working sets: record the first VM's touch order, replay it for the next"
serve --filter=delay file "$T/mem.img" rdelay=1ms || exit 1
start_handler rec --source "nbd://127.0.0.1:$port/" --record-ws "$T/ws" || exit 1
"${FCC[@]}" --socket "$T/rec.sock" --mem-file "$T/mem.img" >/dev/null 2>&1
stop
check "a working set was written, packed, when the VM left" \
    grep -q "working set of [0-9]* pages ([0-9]* MiB, with their bytes) written to $T/ws" "$T/rec.err"
start_handler rep --source "nbd://127.0.0.1:$port/" --prefetch-ws "$T/ws" --background-prefetch || exit 1
check "the replay reads the working set's own file" grep -q "working set replayed from its file" "$T/rep.err"
expect "replayed: every byte right" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/rep.sock" --mem-file "$T/mem.img"
stop
check "the replay installed pages (pages_prefetched $(metric pages_prefetched "$T/rep.out"))" \
    [ "$(metric pages_prefetched "$T/rep.out")" -gt 0 ]
kill "$nbd_pid"
start_handler stale --mem-file "$T/mem2.img" --prefetch-ws "$T/ws" || exit 1
expect "a working set of another snapshot: a warning, then plain lazy, right" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/stale.sock" --mem-file "$T/mem2.img"
stop
check "the stale working set was named" grep -q "was recorded for another snapshot (stale): VMs are served without it" "$T/stale.err"
# A packed working set whose bytes were changed: with checksums, found and not used.
cp "$T/ws" "$T/ws-bad"
size=$(stat -c %s "$T/ws-bad")
printf 'Z' | dd of="$T/ws-bad" bs=1 seek=$((size - 100)) conv=notrunc status=none
start_handler wsbad --mem-file "$T/mem.img" --checksums "$T/mem.img.lvsum" --prefetch-ws "$T/ws-bad" || exit 1
expect "a packed working set with a changed byte: its pages come from the memory, right" 0 \
    "every byte matches" "${FCC[@]}" --socket "$T/wsbad.sock" --mem-file "$T/mem.img"
stop
check "the changed page was named and the file's bytes not used" \
    grep -q "bytes fail their checksum: its pages are read from the memory instead" "$T/wsbad.err"
head -c 30 "$T/ws" >"$T/ws-short"
start_handler short --mem-file "$T/mem.img" --prefetch-ws "$T/ws-short" || exit 1
expect "a damaged working set: a warning, then plain lazy, right" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/short.sock" --mem-file "$T/mem.img"
stop
check "the damaged working set was named" grep -q "is not a working-set file: VMs are served without it" "$T/short.err"

echo "# several snapshots, each on its own socket; 32 VMs of one at once"
head -c 4M /dev/urandom >"$T/small.img"
start_handler multi --mem-file "$T/mem.img" \
    --snapshot "$T/b.sock=$T/mem2.img,checksums=$T/mem2.img.lvsum" \
    --snapshot "$T/c.sock=$T/small.img" || exit 1
expect "snapshot a: its own memory" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/multi.sock" --mem-file "$T/mem.img"
expect "snapshot b: its own memory" 0 "every byte matches" \
    "${FCC[@]}" --socket "$T/b.sock" --mem-file "$T/mem2.img"
expect "a VM of b checked against a's file does not match (so the routing is real)" 1 "MISMATCH" \
    "${FCC[@]}" --socket "$T/b.sock" --mem-file "$T/mem.img"
cpids=()
for i in $(seq 32); do
    "$LAZYVM" fc-client --socket "$T/c.sock" --mem-file "$T/small.img" --regions 1 --threads 1 \
        --seed "$i" >"$T/c$i.out" 2>&1 & cpids+=($!)
done
bad=0
for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
check "32 VMs of one snapshot at once: all verified ($bad failed)" [ "$bad" -eq 0 ]
stop
check "35 VMs served in all" grep -q '"vms_served":35' "$T/multi.out"

echo "# a lazyvm snapshot's own checksums, for fc-handler"
if timeout 120 "$LAZYVM" run --mem 16M --workload "scan:2M" --snapshot-dir "$T/snap" >"$T/run.out" 2>&1; then
    expect "lazyvm checksum --from-snapshot" 0 "snapshot $T/snap: 4096 pages \(16 MiB\), [0-9]+ zero -> $T/snap/memory.lvsum" \
        "$LAZYVM" checksum --from-snapshot "$T/snap"
    start_handler fs --mem-file "$T/snap/memory" --checksums "$T/snap/memory.lvsum" || exit 1
    expect "the snapshot's memory served with its checksums" 0 "every byte matches" \
        "${FCC[@]}" --socket "$T/fs.sock" --mem-file "$T/snap/memory"
    stop
    printf 'XXXX' | dd of="$T/snap/checksums" bs=1 seek=100 conv=notrunc status=none
    expect "a damaged snapshot checksums file is refused by name" 1 "checksums: chunk 0 is damaged" \
        "$LAZYVM" checksum --from-snapshot "$T/snap" -o "$T/x.lvsum"
else
    not_ok "lazyvm run for a snapshot failed: $(tail -3 "$T/run.out")"
fi
expect "checksum file of another size is refused by name" 1 "was made for a 16777216-byte memory file; this one is 33554432 bytes" \
    "$LAZYVM" fc-handler --socket "$T/y.sock" --mem-file "$T/sparse.img" --checksums "$T/mem.img.lvsum"

echo "fc_production: $failures failure(s)"
[ "$failures" -eq 0 ]
