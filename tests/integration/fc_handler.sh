#!/bin/bash
# Integration tests of `lazyvm fc-handler` against `lazyvm fc-client`, which does
# exactly what Firecracker does on a UFFD snapshot load. Every check prints
# "ok" or "not ok"; the script exits 1 if any check failed.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-fc-test.XXXXXX)
failures=0
handler_pid=""

cleanup() {
    [ -n "$handler_pid" ] && kill -9 "$handler_pid" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
. "$(dirname "$0")/lib/fc.bash"

# stop_handler: SIGTERM, which must end it with status 0 within 10 s
stop_handler() {
    local name=$1 rc
    kill -TERM "$handler_pid"
    for _ in $(seq 200); do kill -0 "$handler_pid" 2>/dev/null || break; sleep 0.05; done
    wait "$handler_pid"; rc=$?
    handler_pid=""
    check "$name: SIGTERM stops the handler with status 0 (got $rc)" [ "$rc" -eq 0 ]
    check "$name: socket removed on exit" [ ! -e "$T/$name.sock" ]
    check "$name: metrics JSON printed at exit" grep -q '"totals":{"faults":' "$T/$name.out"
}

client() { "$LAZYVM" fc-client "$@"; }

head -c 16M /dev/urandom >"$T/mem.img"

echo "# one VM, three regions, four threads, balloon check"
start_handler main --mem-file "$T/mem.img" --on-fatal report || exit 1
out=$(client --socket "$T/main.sock" --mem-file "$T/mem.img" --regions 3 --threads 4); rc=$?
echo "$out"
check "VM verifies every byte and reads zeros after MADV_DONTNEED" [ "$rc" -eq 0 ]
check "client reports every byte matching" grep -q "every byte matches" <<<"$out"
check "client reports removed pages read zeros" grep -q "all read zeros" <<<"$out"

echo "# older releases' hand-offs: no page size field (v1.4), page_size_kib only (v1.7)"
check "hand-off of Firecracker v1.4" client --socket "$T/main.sock" --mem-file "$T/mem.img" --fc-version 1.4 --threads 2
check "hand-off of Firecracker v1.7" client --socket "$T/main.sock" --mem-file "$T/mem.img" --fc-version 1.7 --threads 2

echo "# two VMs at once"
client --socket "$T/main.sock" --mem-file "$T/mem.img" --regions 2 --seed 5 >"$T/a.out" 2>&1 & a=$!
client --socket "$T/main.sock" --mem-file "$T/mem.img" --regions 4 --seed 9 >"$T/b.out" 2>&1 & b=$!
wait $a; ra=$?; wait $b; rb=$?
check "first of two concurrent VMs verifies" [ "$ra" -eq 0 ]
check "second of two concurrent VMs verifies" [ "$rb" -eq 0 ]

echo "# SIGUSR1 prints metrics"
kill -USR1 "$handler_pid"; sleep 0.3
check "SIGUSR1 writes a metrics line" grep -q '"vms_served":5' "$T/main.out"
stop_handler main
check "every VM was served" grep -q '"vms_served":5,"handshakes_rejected":0' "$T/main.out"

echo "# bad hand-offs are refused while a good VM keeps working"
start_handler refuse --mem-file "$T/mem.img" --on-fatal report --source-latency 300us \
    --handshake-timeout 1s || exit 1
client --socket "$T/refuse.sock" --mem-file "$T/mem.img" --threads 2 >"$T/good.out" 2>&1 & good=$!
sleep 0.2
declare -A expect=(
    [no-fd]="no userfaultfd came with the handshake"
    [two-fds]="2 file descriptors sent"
    [not-uffd]="is not a userfaultfd"
    [garbage]="invalid JSON at byte 0"
    [truncated]="truncated handshake"
    [oversized]="larger than the 262144 bytes allowed"
    [overlap]="overlaps region 0"
    [beyond-file]="ends beyond the memory file"
    [unaligned]="not a multiple of page_size"
    [wrong-type]='field "size" in region 0 is a string, not a non-negative integer'
    [silent]="no complete handshake within 1.0 s"
)
for mode in "${!expect[@]}"; do
    out=$(client --socket "$T/refuse.sock" --mem-file "$T/mem.img" --bad "$mode" 2>&1); rc=$?
    if [ "$rc" -eq 3 ] && grep -qF "${expect[$mode]}" <<<"$out"; then
        ok "--bad $mode refused: ${expect[$mode]}"
    else
        not_ok "--bad $mode: status $rc, output: $out"
    fi
done
wait $good; rc=$?
cat "$T/good.out"
check "the good VM verified every byte while 11 bad ones were refused" [ "$rc" -eq 0 ]
check "refusals are logged with the peer's pid" grep -q 'vm [0-9]* (pid [0-9]*): handshake rejected' "$T/refuse.err"
check "report policy names VMs left without a server" grep -q 'left without a page server' "$T/refuse.err"
stop_handler refuse
check "eleven refusals counted" grep -q '"handshakes_rejected":11' "$T/refuse.out"

echo "# --on-fatal kill: a refused VM proven to be the connector is killed, not left to hang"
start_handler kill --mem-file "$T/mem.img" || exit 1
client --socket "$T/kill.sock" --mem-file "$T/mem.img" --bad silent >/dev/null 2>&1 &
victim=$!
sleep 0.2
timeout 20 "$LAZYVM" fc-client --socket "$T/kill.sock" --mem-file "$T/mem.img" --bad blocking >/dev/null 2>&1; rc=$?
check "a VM whose valid regions came with a bad userfaultfd is killed (status $rc, want 137 = SIGKILL)" [ "$rc" -eq 137 ]
check "the kill is logged with the reason" grep -q 'handshake rejected: the userfaultfd is not O_NONBLOCK .*; killed it (SIGKILL)' "$T/kill.err"
out=$(timeout 20 "$LAZYVM" fc-client --socket "$T/kill.sock" --mem-file "$T/mem.img" --bad overlap 2>&1); rc=$?
check "a hand-off whose regions are invalid proves nobody the VM: not killed, refused (status $rc, want 3)" [ "$rc" -eq 3 ]
check "and the log says why it does not kill" grep -q 'overlaps region 0.*; cannot prove which process is the VM (no valid regions to prove it with); not killing' "$T/kill.err"

echo "# an unreadable page: the engine stops and the VM is killed, never given zeros"
cp "$T/mem.img" "$T/shrinks.img"
stop_handler kill
kill -9 $victim 2>/dev/null; wait $victim 2>/dev/null
start_handler fail --mem-file "$T/shrinks.img" || exit 1
truncate -s 4096 "$T/shrinks.img" # after the handler opened it: reads beyond now fail
client --socket "$T/fail.sock" --mem-file "$T/mem.img" --threads 1 >"$T/fail-client.out" 2>&1; rc=$?
check "VM whose page cannot be read is killed (status $rc)" [ "$rc" -eq 137 ]
check "the failure names the page, the offset, the file and that it shrank" \
    grep -qE 'reading page 0x[0-9a-f]+ \(source offset 0x[0-9a-f]+, [0-9]+ bytes\) from file .*shrinks.img: .*shrinks.img ends early: it is now 4096 bytes, shorter than the [0-9]+ it had when it was opened' "$T/fail.err"
stop_handler fail
check "the failed VM is counted" grep -q '"vms_failed":1' "$T/fail.out"

echo "# busy intake, io_uring, two handler threads per VM"
start_handler busy --mem-file "$T/mem.img" --intake busy --io-uring --threads 2 || exit 1
check "busy intake + io_uring VM verifies" client --socket "$T/busy.sock" --mem-file "$T/mem.img" --threads 3
stop_handler busy

echo "# 2 MiB pages (hugetlbfs)"
need=24
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free:-0}" -lt "$need" ]; then
    echo $((have + need)) >/proc/sys/vm/nr_hugepages 2>/dev/null
    free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
fi
if [ "${free:-0}" -ge "$need" ]; then
    start_handler huge --mem-file "$T/mem.img" || exit 1
    out=$(client --socket "$T/huge.sock" --mem-file "$T/mem.img" --page-size 2M --regions 2 --threads 2); rc=$?
    echo "$out"
    check "2 MiB-page VM verifies every byte and the balloon check" [ "$rc" -eq 0 ]
    stop_handler huge
    check "one fault per huge page: 8 pages copied for 16 MiB" grep -q '"pages_copied":8,' "$T/huge.out"
else
    echo "SKIP: 2 MiB pages: only ${free:-0} free huge pages and none could be reserved"
fi

echo "# usage and start-up errors"
"$LAZYVM" fc-handler --mem-file "$T/mem.img" 2>"$T/u.err"; rc=$?
check "missing --socket is a usage error (2)" [ "$rc" -eq 2 ]
"$LAZYVM" fc-handler --socket "$T/x.sock" --mem-file "$T/mem.img" --intake fast 2>"$T/u.err"; rc=$?
check "bad --intake is a usage error (2)" [ "$rc" -eq 2 ]
"$LAZYVM" fc-handler --socket "$T/x.sock" --mem-file "$T/none.img" 2>"$T/u.err"; rc=$?
check "missing memory file: status 1 and named" bash -c "[ $rc -eq 1 ] && grep -q 'memory file: cannot open .*none.img: No such file' '$T/u.err'"
touch "$T/regular"
"$LAZYVM" fc-handler --socket "$T/regular" --mem-file "$T/mem.img" 2>"$T/u.err"; rc=$?
check "refuses to replace a regular file with its socket" bash -c "[ $rc -eq 1 ] && grep -q 'is not a socket' '$T/u.err' && [ -f '$T/regular' ]"
check "fc-handler --help exits 0" bash -c "\"$LAZYVM\" fc-handler --help >/dev/null"
check "fc-client --help exits 0" bash -c "\"$LAZYVM\" fc-client --help >/dev/null"

echo "fc_handler: $failures failure(s)"
[ "$failures" -eq 0 ]
