#!/bin/bash
# Restores whose memory comes from a real NBD server (nbdkit, on loopback),
# and the ways a server can fail: killed, slow, erroring, serving wrong bytes.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-nbd-test.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT
failures=0
ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; failures=$((failures + 1)); }
command -v nbdkit >/dev/null || { echo "nbdkit is missing: run 'make deps'"; exit 1; }

port=$((20000 + RANDOM % 20000))
# serve NAME ARGS...: nbdkit on 127.0.0.1:$port in the foreground of a job
serve() {
    port=$((port + 1))
    { nbdkit -f -i 127.0.0.1 -p "$port" "$@" 2>"$T/nbdkit-$port.err" & } 2>/dev/null
    pids+=($!)
    nbd_pid=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "nbdkit did not start: $(cat "$T/nbdkit-$port.err")"; return 1
}
restore() { timeout 120 "$LAZYVM" restore "$T/snap" --source "nbd://127.0.0.1:$port/" "$@" 2>&1; }

"$LAZYVM" run --mem 32M --workload "scan:2M+random:2M:100+compute:2000+edge:64k" --snapshot-dir "$T/snap" >/dev/null 2>&1 ||
    { echo "snapshot failed"; exit 1; }

serve file "$T/snap/memory" || exit 1
for mode in "--load lazy" "--load lazy --intake busy" "--load eager" "--load lazy --intake exit" "--load lazy --intake exit --apf user --policy async" "--load lazy --background-prefetch" "--load lazy --intake exit --background-prefetch"; do
    # shellcheck disable=SC2086
    out=$(restore $mode); rc=$?
    if [ "$rc" -eq 0 ] && grep -q "ok: 4 task" <<<"$out"; then ok "NBD $mode: guest verified all data"
    else not_ok "NBD $mode: status $rc: $(tail -3 <<<"$out")"; fi
done
out=$(restore --load mmap); rc=$?
[ "$rc" -eq 2 ] && grep -q "cannot read from --source" <<<"$out" && ok "mmap with --source refused (usage, status 2)" ||
    not_ok "mmap with --source: $rc $out"
kill "$nbd_pid"

# A slow server (nbdkit's delay filter): still correct, just slower.
serve --filter=delay file "$T/snap/memory" rdelay=20ms || exit 1
out=$(restore --load lazy --json); rc=$?
[ "$rc" -eq 0 ] && grep -q '"ok":true' <<<"$out" && ok "server answering every read 20 ms late: data verified" ||
    not_ok "delayed server: $rc $out"
kill "$nbd_pid"

# A server that returns errors on every read: bounded retries, then a clear
# failure; no page is installed in place of the data.
serve --filter=error file "$T/snap/memory" error=EIO error-pread-rate=100% || exit 1
start=$(date +%s)
out=$(restore --load lazy); rc=$?
took=$(( $(date +%s) - start ))
if [ "$rc" -eq 1 ] && grep -q "giving up after 6 attempts" <<<"$out" && [ "$took" -lt 30 ]; then
    ok "erroring server: gave up after 6 attempts in ${took}s with the reason, status 1"
else
    not_ok "erroring server: status $rc after ${took}s: $(tail -4 <<<"$out")"
fi
kill "$nbd_pid"

# The server is killed while the guest runs (the restore reads slowly so that
# it is still faulting): reconnects fail, the VM stops, non-zero, named.
serve file "$T/snap/memory" || exit 1
restore --load lazy --source-latency 20ms >"$T/killed.out" 2>&1 &
rpid=$!
sleep 1
kill -9 "$nbd_pid"
wait "$nbd_pid" 2>/dev/null
wait "$rpid"; rc=$?
if [ "$rc" -eq 1 ] && grep -qE "giving up after 6 attempts|Connection refused" "$T/killed.out"; then
    ok "server killed mid-restore: the VM stopped with the reason, status 1"
else
    not_ok "server killed mid-restore: status $rc: $(tail -4 "$T/killed.out")"
fi

# A server serving one wrong byte: the page fails its checksum and is never
# installed.
cp "$T/snap/memory" "$T/corrupt"
python3 -c "import sys; p='$T/corrupt'; b=bytearray(open(p,'rb').read()); b[0x200000+9]^=1; open(p,'wb').write(b)"
serve file "$T/corrupt" || exit 1
out=$(restore --load lazy); rc=$?
[ "$rc" -eq 1 ] && grep -q "page 512 (offset 0x200000) fails its checksum" <<<"$out" &&
    ok "server serving a wrong byte: checksum mismatch, VM stopped, status 1" ||
    not_ok "corrupt server: $rc $(tail -3 <<<"$out")"
kill "$nbd_pid"

# An export of the wrong size is refused before the guest runs.
head -c 16M "$T/snap/memory" >"$T/short"
serve file "$T/short" || exit 1
out=$(restore --load lazy); rc=$?
[ "$rc" -eq 1 ] && grep -q "is 16777216 bytes but the snapshot's memory layout needs exactly 33554432" <<<"$out" &&
    ok "export of the wrong size refused" || not_ok "short export: $rc $out"
kill "$nbd_pid"
out=$(restore --load lazy); rc=$?
[ "$rc" -eq 1 ] && grep -q "cannot open the NBD export" <<<"$out" && ok "no server: refused with the reason" ||
    not_ok "no server: $rc $out"

echo "nbd: $failures failure(s)"
[ "$failures" -eq 0 ]
