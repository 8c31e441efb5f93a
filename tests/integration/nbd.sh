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
. "$(dirname "$0")/lib/expect.bash"
. "$(dirname "$0")/lib/nbdkit.bash"
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

# Every wait on the server is bounded (--source-timeout, default 5 s),
# connecting included. now_ms: a clock for the elapsed-time bounds.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# A listener that accepts and never speaks (a stuck server, or not an NBD
# server at all): the restore fails at open after the timeout, naming it.
{ python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
held, end = [], time.time() + 90
s.settimeout(1)
while time.time() < end:
    try: held.append(s.accept()[0])
    except socket.timeout: pass
' >"$T/silent.port" 2>/dev/null & } 2>/dev/null
pids+=($!)
for _ in $(seq 50); do [ -s "$T/silent.port" ] && break; sleep 0.1; done
silent=$(cat "$T/silent.port")
for case in "1s 1000 800 6000" "default 5000 4500 12000"; do
    read -r label ms lo hi <<<"$case"
    opt=(); [ "$label" = default ] || opt=(--source-timeout "$label")
    start=$(now_ms)
    out=$(timeout 60 "$LAZYVM" restore "$T/snap" --source "nbd://127.0.0.1:$silent/" "${opt[@]}" 2>&1); rc=$?
    took=$(( $(now_ms) - start ))
    if [ "$rc" -eq 1 ] && grep -q "cannot open the NBD export nbd://127.0.0.1:$silent/: the server did not complete the NBD handshake within $ms ms" <<<"$out" &&
        [ "$took" -ge "$lo" ] && [ "$took" -lt "$hi" ]; then
        ok "server that accepts and never speaks, --source-timeout $label: refused after ${took} ms, named"
    else
        not_ok "silent server ($label): status $rc after ${took} ms: $(tail -3 <<<"$out")"
    fi
done

# A server stopped (SIGSTOP) mid-restore: the kernel still accepts its
# connections, nothing answers. Each attempt ends after the timeout; after 6
# the VM stops with the reason, within 6 x 1 s + 1.55 s of back-off (+ slack).
serve file "$T/snap/memory" || exit 1
start=$(now_ms)
timeout 60 "$LAZYVM" restore "$T/snap" --source "nbd://127.0.0.1:$port/" --load lazy \
    --source-latency 20ms --source-timeout 1s >"$T/stopped.out" 2>&1 &
rpid=$!
sleep 1
kill -STOP "$nbd_pid"
stopped=$(now_ms)
wait "$rpid"; rc=$?
took=$(( $(now_ms) - stopped ))
kill -CONT "$nbd_pid"; kill "$nbd_pid"
if [ "$rc" -eq 1 ] && grep -q "nbd nbd://127.0.0.1:$port/: giving up after 6 attempts: .*\(nothing for 1000 ms\|handshake within 1000 ms\)" "$T/stopped.out" &&
    grep -q "serving guest memory: .*from nbd nbd://127.0.0.1:$port/.*: Connection timed out" "$T/stopped.out" &&
    [ "$took" -ge 5000 ] && [ "$took" -lt 20000 ]; then
    ok "server stopped mid-restore: the VM stopped ${took} ms later (bound 7.6 s + slack), named the server and the wait"
else
    not_ok "stopped server: status $rc ${took} ms after SIGSTOP: $(tail -4 "$T/stopped.out")"
fi

# Slow but alive is not dead: a handshake taking 600 ms and every read
# 300 ms, under a 1 s timeout, restores correctly.
rm -rf "$T/small"
"$LAZYVM" run --mem 16M --workload scan:256k --snapshot-dir "$T/small" >/dev/null 2>&1 || not_ok "small snapshot"
serve --filter=delay file "$T/small/memory" rdelay=300ms delay-open=600ms || exit 1
start=$(now_ms)
out=$(timeout 60 "$LAZYVM" restore "$T/small" --source "nbd://127.0.0.1:$port/" --source-timeout 1s 2>&1); rc=$?
took=$(( $(now_ms) - start ))
[ "$rc" -eq 0 ] && grep -q "ok: 1 task" <<<"$out" && ok "slow server (600 ms handshake, 300 ms reads, 1 s timeout): verified in ${took} ms" ||
    not_ok "slow server under the timeout: status $rc: $(tail -3 <<<"$out")"
kill "$nbd_pid"
out=$("$LAZYVM" restore "$T/snap" --source-timeout 5 2>&1); rc=$?
[ "$rc" -eq 2 ] && ok "--source-timeout without a unit: usage error" || not_ok "--source-timeout 5: $rc $out"

echo "nbd: $failures failure(s)"
[ "$failures" -eq 0 ]
