#!/bin/bash
# Post-copy live migration between two lazyvm processes on loopback: the
# guest verifies all its data at the destination; refusals, a destination or
# source that dies mid-transfer, and peers that do not speak the protocol.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-migrate-test.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT
failures=0
. "$(dirname "$0")/lib/expect.bash"
WL="scan:4M+random:4M:300+compute:2000+edge:64k"

# dest NAME ARGS...: a destination on an ephemeral loopback port, in the
# background; sets $dst_pid and $addr (from its "listening on" line).
dest() {
    local name=$1; shift
    # No timeout wrapper: $dst_pid must be lazyvm itself (tests kill it);
    # --accept-timeout and the test runner's timeout bound it.
    { "$@" >"$T/$name.out" 2>"$T/$name.err" & } 2>/dev/null
    dst_pid=$!
    pids+=($dst_pid)
    addr=""
    for _ in $(seq 100); do
        addr=$(cat "$T/$name.out" "$T/$name.err" | sed -n 's/^lazyvm migrate: listening on //p')
        [ -n "$addr" ] && return 0
        sleep 0.05
    done
    echo "destination $name did not listen: $(cat "$T/$name.err")"; return 1
}

# 1. At the snapshot point, 2 vCPUs, mixed workload: the run phase verifies
#    every byte at the destination; the source exits 0 once every page is there.
dest snap "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --json || exit 1
src=$(timeout 120 "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" --json 2>"$T/src.err"); src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?; d=$(cat "$T/snap.out")
if [ "$src_rc" -eq 0 ] && grep -q '"migrated":true' <<<"$src" && [ "$rc" -eq 0 ] &&
    grep -q '"ok":true' <<<"$d" && grep -q '"results":4,"results_failed":0' <<<"$d"; then
    ok "migration at the snapshot point, 2 vCPUs: the guest verified all 4 tasks at the destination"
else
    not_ok "snapshot-point migration: source $src_rc $src / destination $rc $d $(tail -3 "$T/snap.err")"
fi
# Every non-zero page crossed once; zero pages never; blocktime per vCPU reported.
python3 - "$src" "$d" <<'PY' && ok "accounting: non-zero pages sent once, zero pages not sent, blocktime for 2 vCPUs" || not_ok "accounting: $src / $d"
import json, sys
s, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
nonzero = s["pages"] - s["pages_zero"]
assert s["pages"] == 64 * 256, s
assert s["pages_zero"] > 0 and nonzero > 2 * 256, s           # 8 MiB+ of data was written
assert s["bytes_sent"] == nonzero * 4096, (s["bytes_sent"], nonzero)
assert d["bytes_read"] == s["bytes_sent"], (d["bytes_read"], s["bytes_sent"])
assert d["pages_zero_known"] == s["pages_zero"], d
assert len(d["blocktime_ms"]) == 2 and len(d["blocktime_faults"]) == 2, d
assert sum(d["blocktime_faults"]) > 0 and d["blocktime_all_ms"] <= max(d["blocktime_ms"]), d
assert s["downtime_ms"] > 0 and s["transfer_ms"] > 0 and d["transfer_ms"] > 0, (s, d)
PY

# 2. At an arbitrary time (mid-workload, wherever the vCPUs are).
dest timed "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s || exit 1
src=$(timeout 120 "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" --migrate-after 300ms 2>"$T/src.err"); src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?; d=$(cat "$T/timed.out")
if [ "$src_rc" -eq 0 ] && grep -q "migrated: downtime" <<<"$src" && [ "$rc" -eq 0 ] && grep -q "ok: 4 task(s) verified" <<<"$d"; then
    ok "migration 300 ms into the run: the guest verified all 4 tasks at the destination"
else
    not_ok "timed migration: source $src_rc $src $(tail -3 "$T/src.err") / destination $rc $d $(tail -3 "$T/timed.err")"
fi

# 2b. The destination with userfault exits and async page faults: while a
#     page comes from the source, the guest runs another task.
dest apf "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --json --intake exit --apf user --policy async --source-latency 1ms || exit 1
src=$(timeout 120 "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" 2>"$T/src.err"); src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?; d=$(cat "$T/apf.out")
if [ "$src_rc" -eq 0 ] && [ "$rc" -eq 0 ] && python3 -c '
import json, sys; d = json.loads(sys.argv[1])
assert d["ok"] and d["results"] == 4 and d["results_failed"] == 0, d
assert d["exit_backend"] and d["guest_apf_not_present"] > 0 and d["pages_background"] > 0, d' "$d"; then
    ok "destination with --intake exit --apf user: $(grep -o '"guest_apf_not_present":[0-9]*' <<<"$d"), all 4 tasks verified"
else
    not_ok "apf destination: source $src_rc / destination $rc $d $(tail -3 "$T/apf.err")"
fi

# 3. A destination that cannot take the VM (no KVM there) refuses; the VM
#    goes on at the source, verifies its data, and the status says it did not move.
dest nokvm unshare -m sh -c "mount --bind /dev/null /dev/kvm && exec $LAZYVM migrate --listen 127.0.0.1:0 --accept-timeout 60s" || exit 1
src=$(timeout 120 "$LAZYVM" run --mem 32M --vcpus 2 --workload "$WL" --migrate-to "$addr" 2>&1); src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?
if [ "$src_rc" -eq 1 ] && grep -q "the guest finished here because the migration failed: .*refused" <<<"$src" &&
    grep -q "random:4M:300: pass" <<<"$src" && [ "$rc" -eq 1 ]; then
    ok "destination without KVM refused: the VM went on at the source and verified its data (status 1)"
else
    not_ok "refusal: source $src_rc $(tail -4 <<<"$src") / destination $rc $(tail -2 "$T/nokvm.out")"
fi

# 4. The destination dies after taking the VM over: the source says the VM is
#    lost and exits 1 (it cannot run it: the destination may have changed it).
dest dies "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --source-latency 20ms || exit 1
{ "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" >"$T/src4.out" 2>&1 & } 2>/dev/null
src_pid=$!; pids+=($src_pid)
for _ in $(seq 200); do grep -q "took the VM over" "$T/src4.out" && break; sleep 0.05; done
kill -9 "$dst_pid"
{ wait "$src_pid"; } 2>/dev/null; src_rc=$?
if [ "$src_rc" -eq 1 ] && grep -q "failed before it had every page.*the VM is lost" "$T/src4.out"; then
    ok "destination killed mid-transfer: source reports the VM lost, status 1"
else
    not_ok "destination killed: source $src_rc $(tail -3 "$T/src4.out")"
fi

# 5. The source dies mid-transfer: the destination's page reads fail, are
#    retried within bounds, then the VM stops with the reason; no page is
#    made up.
dest orphan "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --source-latency 20ms || exit 1
{ "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" >"$T/src5.out" 2>&1 & } 2>/dev/null
src_pid=$!; pids+=($src_pid)
for _ in $(seq 200); do grep -q "took the VM over" "$T/src5.out" && break; sleep 0.05; done
kill -9 "$src_pid"; { wait "$src_pid"; } 2>/dev/null
start=$(date +%s); { wait "$dst_pid"; } 2>/dev/null; rc=$?; took=$(( $(date +%s) - start ))
d=$(cat "$T/orphan.out" "$T/orphan.err")
if [ "$rc" -eq 1 ] && grep -q "lazyvm migrate: serving guest memory: .*nbd://.*Input/output error" <<<"$d" && ! grep -q "FAIL\|mismatch" <<<"$d" && [ "$took" -lt 60 ]; then
    ok "source killed mid-transfer: destination stopped the VM with the reason after ${took}s, status 1"
else
    not_ok "source killed: destination $rc after ${took}s: $(tail -4 <<<"$d")"
fi

# 5a. The source is stopped (SIGSTOP) before it offers the VM: TCP keepalive
#     cannot tell (its kernel answers); its heartbeat stops, and the
#     destination gives up after 10 s of silence. The VM is still the source's.
dest prestop "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s || exit 1
# The guest halts for good (crash:hang), so the source waits for its time.
{ "$LAZYVM" run --mem 64M --workload "scan:1M+crash:hang" --stall-timeout 0 --migrate-to "$addr" --migrate-after 120s >"$T/src5a.out" 2>&1 & } 2>/dev/null
src_pid=$!; pids+=($src_pid)
for _ in $(seq 200); do grep -q "source 127.0.0.1 connected" "$T/prestop.err" && break; sleep 0.05; done
sleep 2 # heartbeats flow: the destination must not give up on a live source
kill -0 "$dst_pid" 2>/dev/null && alive=yes || alive=no
kill -STOP "$src_pid"; start=$(date +%s)
for _ in $(seq 400); do kill -0 "$dst_pid" 2>/dev/null || break; sleep 0.1; done
took=$(( $(date +%s) - start ))
kill -9 "$dst_pid" 2>/dev/null; { wait "$dst_pid"; } 2>/dev/null; rc=$?
kill -9 "$src_pid"; kill -CONT "$src_pid" 2>/dev/null; { wait "$src_pid"; } 2>/dev/null
d=$(cat "$T/prestop.out" "$T/prestop.err")
if [ "$alive" = yes ] && [ "$rc" -eq 1 ] && grep -q "sent nothing for 10 s, not even its heartbeat" <<<"$d" && [ "$took" -ge 8 ] && [ "$took" -lt 30 ]; then
    ok "source stopped before its offer: destination waited while it was alive, gave up ${took}s after the stop, status 1"
else
    not_ok "source stopped before its offer: alive $alive, destination $rc after ${took}s: $(tail -3 <<<"$d")"
fi

# 5a'. The destination is stopped after it took the VM over: the source must
#      not give up (the VM runs there); it warns and, once the destination
#      goes on, the migration completes.
# 20 ms a read at the destination: the transfer lasts seconds, so the stop
# lands before the last page (it took 31 ms without, under ASan too).
dest dststop "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --source-latency 20ms || exit 1
{ "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" >"$T/src5c.out" 2>&1 & } 2>/dev/null
src_pid=$!; pids+=($src_pid)
for _ in $(seq 200); do grep -q "took the VM over" "$T/src5c.out" && break; sleep 0.05; done
kill -STOP "$dst_pid"
grep -q "every page there" "$T/src5c.out" && echo "# note: the transfer had ended before the stop"
for _ in $(seq 300); do grep -q "has sent nothing for 10 s" "$T/src5c.out" && break; sleep 0.1; done
kill -CONT "$dst_pid"
for _ in $(seq 600); do kill -0 "$src_pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$src_pid" 2>/dev/null; { wait "$src_pid"; } 2>/dev/null; src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?
if grep -q "has sent nothing for 10 s, not even its heartbeat" "$T/src5c.out" && [ "$src_rc" -eq 0 ] && [ "$rc" -eq 0 ] &&
    grep -q "ok: 4 task(s) verified" "$T/dststop.out"; then
    ok "destination stopped after ACCEPT: the source warned, kept serving, and the migration completed"
else
    not_ok "destination stopped after ACCEPT: source $src_rc, destination $rc: $(tail -3 "$T/src5c.out") / $(tail -3 "$T/dststop.out")"
fi

# 5b. The source is stopped (SIGSTOP) mid-transfer: its kernel still accepts
#     connections and nothing answers. Every wait is bounded (--source-timeout):
#     the VM stops within 6 x 1 s + 1.55 s of back-off (+ slack), with the reason.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
dest stopped "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s --source-latency 20ms --source-timeout 1s || exit 1
{ "$LAZYVM" run --mem 64M --vcpus 2 --workload "$WL" --migrate-to "$addr" >"$T/src5b.out" 2>&1 & } 2>/dev/null
src_pid=$!; pids+=($src_pid)
for _ in $(seq 200); do grep -q "took the VM over" "$T/src5b.out" && break; sleep 0.05; done
kill -STOP "$src_pid"; start=$(now_ms)
# A hang here would be the bug: bound the wait (the test runner's timeout is the backstop).
for _ in $(seq 600); do kill -0 "$dst_pid" 2>/dev/null || break; sleep 0.1; done
took=$(( $(now_ms) - start ))
kill -9 "$dst_pid" 2>/dev/null; { wait "$dst_pid"; } 2>/dev/null; rc=$?
kill -9 "$src_pid"; { wait "$src_pid"; } 2>/dev/null
d=$(cat "$T/stopped.out" "$T/stopped.err")
if [ "$rc" -eq 1 ] && grep -q "giving up after 6 attempts: .*\\(nothing for 1000 ms\\|handshake within 1000 ms\\)" <<<"$d" &&
    grep -q "lazyvm migrate: serving guest memory: .*nbd://.*Connection timed out" <<<"$d" && [ "$took" -lt 20000 ]; then
    ok "source stopped mid-transfer: destination stopped the VM ${took} ms later with the reason, status 1"
else
    not_ok "source stopped: destination $rc after ${took} ms: $(tail -4 <<<"$d")"
fi

# 6. Nobody listening; a peer that is not lazyvm; a bad address.
out=$(timeout 30 "$LAZYVM" run --mem 32M --workload scan:1M --migrate-to 127.0.0.1:1 2>&1); rc=$?
[ "$rc" -eq 1 ] && grep -q "cannot reach 127.0.0.1:1" <<<"$out" && ok "no destination: refused at once, status 1" ||
    not_ok "no destination: $rc $out"
dest garbage "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s || exit 1
python3 - "$addr" <<'PY'
import socket, sys, time
h, p = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((h, int(p)))
s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 300)
time.sleep(0.5)
PY
src=$(timeout 120 "$LAZYVM" run --mem 32M --vcpus 2 --workload "$WL" --migrate-to "$addr" 2>&1); src_rc=$?
{ wait "$dst_pid"; } 2>/dev/null; rc=$?
if [ "$rc" -eq 0 ] && [ "$src_rc" -eq 0 ] && grep -q "ignored a connection from 127.0.0.1: the peer does not speak lazyvm migration" "$T/garbage.err" &&
    grep -q "ok: 4 task(s) verified" "$T/garbage.out"; then
    ok "a peer speaking HTTP is ignored with a warning; the real source that came next migrated"
else
    not_ok "garbage peer: destination $rc, source $src_rc: $(cat "$T/garbage.out" "$T/garbage.err" | tail -4)"
fi
# 6b. Silent connections first (strays that never say HELLO), then the real
#     source: the destination reads every pending connection at once, so the
#     real HELLO is answered at once (a one-at-a-time reader spent 5 s a stray,
#     and the source gives up after 5 s). With 10 strays, more than the 8 read
#     at once, the oldest are pushed out (the source itself pushes out one).
#     Strays left silent for 5.5 s are dropped on their own 5 s deadline.
for case in "3 0" "10 0" "2 5.5"; do
    read -r nstray linger <<<"$case"
    dest "strays$nstray" "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 60s || exit 1
    { python3 -c '
import socket, sys, time
h, p = sys.argv[1].rsplit(":", 1)
held = [socket.create_connection((h, int(p))) for _ in range(int(sys.argv[2]))]
open(sys.argv[3], "w").close()
time.sleep(30)' "$addr" "$nstray" "$T/strays$nstray.ready" & } 2>/dev/null
    stray_pid=$!; pids+=($stray_pid)
    for _ in $(seq 100); do [ -e "$T/strays$nstray.ready" ] && break; sleep 0.05; done
    sleep 0.3 # let the destination accept them all
    sleep "$linger"
    start=$(now_ms)
    { timeout 60 "$LAZYVM" run --mem 32M --workload scan:1M --migrate-to "$addr" >"$T/src6b.out" 2>&1 & } 2>/dev/null
    src_pid=$!
    helloed=""
    for _ in $(seq 300); do
        grep -q "migration: source 127.0.0.1 connected" "$T/strays$nstray.err" && { helloed=$(( $(now_ms) - start )); break; }
        sleep 0.02
    done
    { wait "$src_pid"; } 2>/dev/null; src_rc=$?
    for _ in $(seq 300); do kill -0 "$dst_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$dst_pid" 2>/dev/null; { wait "$dst_pid"; } 2>/dev/null; rc=$?
    kill "$stray_pid" 2>/dev/null
    e="$T/strays$nstray.err"
    pushed=$(grep -c "more than 8 connections without a HELLO" "$e")
    lost=$(grep -c "another source said HELLO first" "$e")
    expired=$(grep -c "no HELLO within 5000 ms (0 of 256 bytes came)" "$e")
    # the source itself is one more connection: with 8 strays pending it pushes one out
    want_pushed=$(( nstray >= 8 ? nstray - 7 : 0 )) want_expired=0
    [ "$linger" = 0 ] || want_expired=$nstray
    if [ "$src_rc" -eq 0 ] && [ "$rc" -eq 0 ] && grep -q "ok: 1 task(s) verified" "$T/strays$nstray.out" &&
        [ -n "$helloed" ] && [ "$helloed" -lt 2000 ] && [ "$pushed" -eq "$want_pushed" ] &&
        [ "$expired" -eq "$want_expired" ] && [ $((pushed + lost + expired)) -eq "$nstray" ]; then
        ok "$nstray silent connections ${linger}s before the source: answered after ${helloed} ms and migrated; strays dropped with warnings ($pushed pushed out, $expired timed out, $lost after the HELLO)"
    else
        not_ok "$nstray strays: source $src_rc, destination $rc, HELLO after '${helloed}' ms, pushed $pushed expired $expired lost $lost: $(tail -3 "$e") $(tail -2 "$T/src6b.out")"
    fi
done

out=$(timeout 30 "$LAZYVM" migrate --listen 127.0.0.1:0 --accept-timeout 300ms 2>&1); rc=$?
[ "$rc" -eq 1 ] && grep -q "no migration source connected to 127.0.0.1:[0-9]* in time" <<<"$out" &&
    ok "no source within --accept-timeout: status 1, said so" || not_ok "accept timeout: $rc $out"
# 7. Malformed addresses are usage errors (status 2), refused before anything
#    listens or connects, naming the bad part; one parser for --listen,
#    --migrate-to and the server of an nbd:// --source (getaddrinfo and libnbd
#    would both take port 99999 as 34463).
while IFS='|' read -r args want; do
    # shellcheck disable=SC2086
    out=$(timeout 10 "$LAZYVM" $args 2>&1); rc=$?
    if [ "$rc" -eq 2 ] && grep -qF -- "$want" <<<"$out"; then ok "'$args': status 2, '$want'"
    else not_ok "'$args': status $rc: $out"; fi
done <<'EOF'
migrate --listen 127.0.0.1:99999|--listen '127.0.0.1:99999': port 99999 is out of range (0-65535)
migrate --listen 127.0.0.1:65536|port 65536 is out of range (0-65535)
migrate --listen 127.0.0.1:8o|port '8o' is not a number from 0 to 65535
migrate --listen 127.0.0.1:|port '' is not a number
migrate --listen 127.0.0.1|'127.0.0.1' is not HOST:PORT (no port)
migrate --listen 127.0.0.256:0|'127.0.0.256' is not an IPv4 address
migrate --listen ::1:0|an IPv6 address needs brackets ([::1]:PORT)
migrate --listen [::1:0|an IPv6 address is [ADDRESS]:PORT
migrate --listen bad_host:0|'bad_host' is not a host name or an address
run --migrate-to nowhere|--migrate-to 'nowhere': 'nowhere' is not HOST:PORT (no port)
run --migrate-to 127.0.0.1:99999|--migrate-to '127.0.0.1:99999': port 99999 is out of range (1-65535)
run --migrate-to 127.0.0.1:0|port 0 is out of range (1-65535)
restore /nonexistent --source nbd://127.0.0.1:99999/|--source 'nbd://127.0.0.1:99999/': port 99999 is out of range (1-65535)
restore /nonexistent --source nbd://1.2.3/|'1.2.3' is not an IPv4 address
EOF
out=$("$LAZYVM" run --migrate-after 1s 2>&1); rc=$?
[ "$rc" -eq 2 ] && ok "--migrate-after without --migrate-to: usage error" || not_ok "usage: $rc $out"

[ "$failures" -eq 0 ]
