#!/bin/bash
# Hostile and odd peers against `lazyvm fc-handler` (issue 10: nothing hangs,
# nothing wrong gets through). Every client runs under `timeout`, so a hang is a
# failure, not a stuck test. Every check prints "ok" or "not ok"; exit 1 if any
# failed.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-fc-hostile.XXXXXX)
failures=0
handler_pid=""
extra_pids=""

cleanup() {
    [ -n "$handler_pid" ] && kill -9 "$handler_pid" 2>/dev/null
    for p in $extra_pids; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
. "$(dirname "$0")/lib/fc.bash"

client() { timeout 30 "$LAZYVM" fc-client "$@"; }

# wait_for FILE PATTERN [TENTHS]: until grep -E finds PATTERN in FILE
wait_for() {
    for _ in $(seq "${3:-100}"); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# stop_handler NAME: SIGTERM must end it with status 0 within 5 s
stop_handler() {
    local name=$1 rc=0
    kill -TERM "$handler_pid"
    for _ in $(seq 50); do kill -0 "$handler_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$handler_pid" 2>/dev/null; then
        not_ok "$name: SIGTERM did not stop the handler within 5 s"
        kill -9 "$handler_pid"
    fi
    wait "$handler_pid"; rc=$?
    handler_pid=""
    check "$name: SIGTERM stops the handler with status 0 within 5 s (got $rc)" [ "$rc" -eq 0 ]
}

good_vm() { # good_vm NAME DESCRIPTION: a VM that must verify every byte
    local out rc
    out=$(client --socket "$T/$1.sock" --mem-file "$T/mem.img" --threads 2 2>&1); rc=$?
    check "$2 (status $rc)" bash -c "[ $rc -eq 0 ] && grep -q 'every byte matches' <<<'$out'"
}

head -c 8M /dev/urandom >"$T/mem.img"

echo "# 1. a userfaultfd without O_NONBLOCK cannot freeze the handler"
start_handler block --mem-file "$T/mem.img" --intake busy --threads 2 --on-fatal report || exit 1
out=$(client --socket "$T/block.sock" --mem-file "$T/mem.img" --bad blocking 2>&1); rc=$?
check "a blocking userfaultfd is refused at the hand-off, naming O_NONBLOCK (status $rc)" \
    bash -c "[ $rc -eq 3 ] && grep -q 'not O_NONBLOCK' <<<'$out'"
out=$(client --socket "$T/block.sock" --mem-file "$T/mem.img" --threads 2 --clear-nonblock 2>&1); rc=$?
echo "$out"
check "a peer that clears O_NONBLOCK after the hand-off is still served, busy intake (status $rc)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'cleared O_NONBLOCK' <<<'$out' && grep -q 'every byte matches' <<<'$out'"
good_vm block "the handler serves the next VM afterwards"
stop_handler block
# Without O_NONBLOCK a userfaultfd always polls as POLLERR: a blocking-intake
# worker (and a busy one that fell back to blocking when idle, which under
# load is a matter of timing) must go on serving, not give the VM up.
start_handler blockpoll --mem-file "$T/mem.img" --intake block --threads 2 --on-fatal report || exit 1
out=$(client --socket "$T/blockpoll.sock" --mem-file "$T/mem.img" --threads 2 --clear-nonblock 2>&1); rc=$?
check "block intake: a peer that clears O_NONBLOCK is still served, with a warning (status $rc)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'every byte matches' <<<'$out' && grep -q 'lost O_NONBLOCK' '$T/blockpoll.err'"
good_vm blockpoll "the blocking-intake handler serves the next VM afterwards"
stop_handler blockpoll

echo "# 4. userfaultfd features lazyvm does not handle are refused by name"
start_handler feat --mem-file "$T/mem.img" --on-fatal report || exit 1
out=$(client --socket "$T/feat.sock" --mem-file "$T/mem.img" --bad event-fork 2>&1); rc=$?
check "UFFD_FEATURE_EVENT_FORK is refused by name (status $rc)" \
    bash -c "[ $rc -eq 3 ] && grep -q 'feature(s) lazyvm does not handle: EVENT_FORK' <<<'$out'"
good_vm feat "a VM with Firecracker's features is served afterwards"
stop_handler feat

echo "# 2. the connecting process is not always the VM"
start_handler conn --mem-file "$T/mem.img" --on-fatal kill || exit 1
out=$(client --socket "$T/conn.sock" --mem-file "$T/mem.img" --threads 2 --connector child-exit 2>&1); rc=$?
echo "$out"
check "a VM whose connecting child exited at once is served to the last byte (status $rc)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'every byte matches' <<<'$out'"
check "the handler says it could not identify that VM" grep -qE 'the VM is not identified: process [0-9]+, which connected, (does not hold the page|has exited)' "$T/conn.err"
good_vm conn "a VM that connects itself is served too"
check "and that one is identified" grep -q 'the VM is the connecting process: process [0-9]* holds the page installed' "$T/conn.err"
stop_handler conn

cp "$T/mem.img" "$T/shrinks.img"
start_handler fatal --mem-file "$T/shrinks.img" --on-fatal kill || exit 1
truncate -s 4096 "$T/shrinks.img" # after the handler opened it: reads beyond now fail
"$LAZYVM" fc-client --socket "$T/fatal.sock" --mem-file "$T/mem.img" --threads 1 \
    --connector child >"$T/fatal-client.out" 2>&1 &
vm=$!
extra_pids="$extra_pids $vm"
wait_for "$T/fatal-client.out" 'sent by child process [0-9]+'
bystander=$(sed -n 's/.*sent by child process \([0-9]*\);.*/\1/p' "$T/fatal-client.out")
extra_pids="$extra_pids $bystander"
check "the engine fails on the unreadable page and the handler refuses to guess" \
    wait_for "$T/fatal.err" 'cannot be served: reading page .*; cannot prove which process is the VM \(process [0-9]+, which connected, does not hold'
sleep 1
check "the bystander that connected ($bystander) was not killed" kill -0 "$bystander"
check "the VM ($vm) was not killed either: it waits for its page" kill -0 "$vm"
check "and it never read a zero page where data belongs (no verdict yet)" bash -c "! grep -q 'contents:' '$T/fatal-client.out'"
kill -USR1 "$handler_pid"
check "the failed VM is counted as failed and unserved" wait_for "$T/fatal.out" '"vms_failed":1,"vms_pending":0,"vms_unserved":1'
kill -9 "$vm"; wait "$vm" 2>/dev/null
check "the VM's exit is noticed from its memory, without its pid" wait_for "$T/fatal.err" 'its memory is gone: the VM has exited' 30
kill -USR1 "$handler_pid"
check "and it leaves the handler" wait_for "$T/fatal.out" '"vms_unserved":0'
client --socket "$T/fatal.sock" --mem-file "$T/mem.img" --threads 1 >/dev/null 2>&1; rc=$?
check "a VM that connects itself is proven to be the VM, and killed when it cannot be served (status $rc)" [ "$rc" -eq 137 ]
check "the kill names the reason once" grep -qE 'cannot be served: reading page .*; killed it \(SIGKILL\)' "$T/fatal.err"
stop_handler fatal
kill -9 "$bystander" 2>/dev/null

echo "# 3. pending hand-offs do not count against --max-vms"
start_handler max --mem-file "$T/mem.img" --max-vms 1 --max-pending 2 --handshake-timeout 20s \
    --on-fatal report || exit 1
client --socket "$T/max.sock" --mem-file "$T/mem.img" --bad silent >/dev/null 2>&1 & s1=$!
extra_pids="$extra_pids $s1"
wait_for "$T/max.err" 'vm 1 .*connected'
good_vm max "with --max-vms 1 and a silent connection pending, a VM is still served"
client --socket "$T/max.sock" --mem-file "$T/mem.img" --bad silent >/dev/null 2>&1 & s2=$!
extra_pids="$extra_pids $s2"
wait_for "$T/max.err" 'vm 3 .*connected'
out=$(client --socket "$T/max.sock" --mem-file "$T/mem.img" --bad silent 2>&1); rc=$?
check "a third pending hand-off is refused by --max-pending (status $rc)" \
    bash -c "[ $rc -eq 3 ] && grep -q 'too many hand-offs pending' <<<'$out'"
kill -9 "$s1" "$s2" 2>/dev/null; wait "$s1" "$s2" 2>/dev/null
stop_handler max

echo "# 5. a live handler's socket is not taken over; a stale one is"
start_handler live --mem-file "$T/mem.img" --on-fatal report || exit 1
first=$handler_pid
timeout 10 "$LAZYVM" fc-handler --socket "$T/live.sock" --mem-file "$T/mem.img" 2>"$T/second.err"; rc=$?
check "a second handler on a live socket fails (status $rc)" [ "$rc" -eq 1 ]
check "naming the listener" grep -q 'another process is listening on this socket' "$T/second.err"
check "the first handler's socket is still there" [ -S "$T/live.sock" ]
good_vm live "the first handler still serves VMs"
check "the probe was not counted as a refused hand-off" bash -c "kill -USR1 $first; sleep 0.3; grep -q '\"handshakes_rejected\":0' '$T/live.out'"
kill -9 "$first"; wait "$first" 2>/dev/null; handler_pid=""
check "a killed handler leaves a stale socket" [ -S "$T/live.sock" ]
start_handler live --mem-file "$T/mem.img" --on-fatal report || exit 1
good_vm live "a new handler replaces the stale socket and serves"
stop_handler live

echo "# 6. each message carries its context once"
doubled=$(cat "$T"/*.err | grep -E '(vm [0-9]+ \(pid [0-9]+\)).*\1')
check "no message names its VM twice${doubled:+: $doubled}" [ -z "$doubled" ]

echo "fc_hostile: $failures failure(s)"
[ "$failures" -eq 0 ]
