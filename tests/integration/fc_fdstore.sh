#!/bin/bash
# fc-handler under systemd's fd store: four VMs fault while the service is
# restarted cleanly (SIGTERM) and then killed (SIGKILL) and restarted; every
# VM verifies every byte and its balloon's zeros. systemd is not PID 1 in the
# containers this runs in, so the service manager is tests/tools/fake_systemd.py,
# which follows the protocol of sd_notify(3) (FDSTORE=1, FDNAME=,
# FDSTOREREMOVE=1) and sd_listen_fds(3) (LISTEN_FDS, LISTEN_FDNAMES,
# LISTEN_PID) and restarts the service as Restart=always would.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
FAKE=$(realpath "$(dirname "$0")/../tools/fake_systemd.py")
T=$(mktemp -d /tmp/lazyvm-fdstore.XXXXXX)
failures=0
handler_pid=""
pids=()
fake=""
MAX_WAIT_MS=${MAX_WAIT_MS:-1000}

cleanup() {
    [ -n "$fake" ] && kill -9 "$fake" 2>/dev/null
    [ -f "$T/pid" ] && kill -9 "$(cat "$T/pid")" 2>/dev/null
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
. "$(dirname "$0")/lib/fc.bash"

until_log() { # until_log FILE PATTERN SECONDS
    for _ in $(seq $(($3 * 20))); do grep -qE -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    echo "# systemd is PID 1 here, but this test uses the stand-in all the same (no unit to install)"
else
    echo "# systemd is not PID 1 here ($(cat /proc/1/comm 2>/dev/null)): the service manager is $FAKE"
fi
head -c 32M /dev/urandom >"$T/mem.img"
HOPTS=(--socket "$T/vm.sock" --mem-file "$T/mem.img" --source-latency 1ms --fault-around 1
    --on-fatal report)

echo "# without systemd"
expect "no NOTIFY_SOCKET: the fd store is not used (said at debug level)" 0 \
    "no NOTIFY_SOCKET: not run by systemd" \
    env -u NOTIFY_SOCKET timeout --preserve-status -s INT 1 "$LAZYVM" fc-handler "${HOPTS[@]}" --log-level debug
expect "--fd-store on without systemd is an error" 1 "NOTIFY_SOCKET is not set" \
    env -u NOTIFY_SOCKET "$LAZYVM" fc-handler "${HOPTS[@]}" --fd-store on
expect "FDSTORE=0 (systemd 254+: no FileDescriptorStoreMax=): not used" 0 "fd store is off" \
    env NOTIFY_SOCKET="$T/nobody" FDSTORE=0 timeout --preserve-status -s INT 1 "$LAZYVM" fc-handler "${HOPTS[@]}"

echo "# four VMs across a clean restart and a crash"
python3 "$FAKE" --notify "$T/notify" --pid-file "$T/pid" --restarts 3 -- \
    "$LAZYVM" fc-handler "${HOPTS[@]}" >"$T/fake.out" 2>"$T/fake.err" &
fake=$!
check "the service is ready and has stored its socket" until_log "$T/fake.err" "FDSTORE lazyvm-listen-0" 5
for i in 1 2 3 4; do
    timeout -k 2 60 "$LAZYVM" fc-client --socket "$T/vm.sock" --mem-file "$T/mem.img" \
        --threads 1 --regions 2 --seed "$i" --remove-first >"$T/c$i.out" 2>&1 &
    pids+=($!)
done
check "every VM's userfaultfd is stored" until_log "$T/fake.err" "FDSTORE lazyvm-vm4-uffd" 5
sleep 1.5
first=$(cat "$T/pid")
kill -TERM "$first"
check "a clean stop says the VMs wait in the store" until_log "$T/fake.err" \
    "stopping: 4 VMs, their page maps and the sockets are in systemd's fd store" 5
check "the next instance takes the 4 VMs back, exactly" until_log "$T/fake.err" \
    "took back 4 VMs from systemd's fd store .*exact: written at a clean stop" 10
until_log "$T/fake.err" "generation 2" 5
sleep 1.5
second=$(cat "$T/pid")
kill -KILL "$second"
check "after a crash the next instance takes them back from the description written last" \
    until_log "$T/fake.err" "took back 4 VMs .*the previous instance did not stop cleanly" 10
all_ok=1
for p in "${pids[@]}"; do wait "$p" || all_ok=0; done
pids=()
for i in 1 2 3 4; do
    grep -q "every byte matches" "$T/c$i.out" && grep -q "all read zeros" "$T/c$i.out" || all_ok=0
done
check "every VM verified every byte and its balloon's zeros across both restarts" [ "$all_ok" -eq 1 ]
[ "$all_ok" -eq 1 ] || tail -n 4 "$T"/c*.out
touch_s=$(sed -n 's/.* page touches in \([0-9.]*\) s.*/\1/p' "$T"/c[1-4].out | sort -n | head -1)
check "the VMs were faulting through both restarts (shortest touch phase ${touch_s}s)" \
    awk -v a="$touch_s" 'BEGIN { exit !(a > 3.5) }'
max_us=$(sed -n 's/.*first touch of a page:.*max \([0-9.]*\) us.*/\1/p' "$T"/c[1-4].out |
    awk 'BEGIN { m = 0 } $1 > m { m = $1 } END { print m }')
echo "# the longest first touch over the 4 VMs (a restart's gap: process start included): ${max_us} us"
grep -h "took back" "$T/fake.err" | sed 's/^/#   /'
check "no fault waited more than ${MAX_WAIT_MS} ms across the restarts (max ${max_us} us)" \
    awk -v m="$max_us" -v b="$MAX_WAIT_MS" 'BEGIN { exit !(m < b * 1000) }'
check "a VM that has gone leaves the store" until_log "$T/fake.err" "FDSTOREREMOVE lazyvm-vm4-uffd" 5

echo "# the service stopped"
kill -TERM "$fake"
for _ in $(seq 200); do kill -0 "$fake" 2>/dev/null || break; sleep 0.05; done
wait "$fake"; rc=$?
fake=""
check "the service stops with status 0 (got $rc)" [ "$rc" -eq 0 ]

echo "fc_fdstore: $failures failure(s)"
[ "$failures" -eq 0 ]
