#!/bin/bash
# fc-handler against every Firecracker release's side of the hand-off, as
# `lazyvm fc-client --fc-version` plays it from that release's source (the
# table in docs/SNAPSHOT.md), and inside a jail: a mount namespace with /proc
# hidden and a chroot that holds only the static binary, its socket and the
# memory file, started the way Firecracker's harness starts a handler
# (`HANDLER SOCKET MEMFILE`). Every check prints "ok" or "not ok"; the script
# exits 1 if any failed.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-fcv-test.XXXXXX)
failures=0
handler_pid=""
jail_pid=""

cleanup() {
    [ -n "$handler_pid" ] && kill -9 "$handler_pid" 2>/dev/null
    [ -n "$jail_pid" ] && kill -9 "$jail_pid" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT
. "$(dirname "$0")/lib/fc.bash"


stop() { # stop PID: SIGTERM, then wait (bounded)
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    wait "$1" 2>/dev/null
}

head -c 16M /dev/urandom >"$T/mem.img"

echo "# every release's hand-off, each verified byte for byte"
start_handler v --mem-file "$T/mem.img" --on-fatal report --log-level debug || exit 1
for v in 1.4 1.7 1.12 main secret-hiding; do
    expect "Firecracker $v: served, every byte right" 0 "every byte matches" \
        "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version $v --threads 2
done
check "v1.4 recognised (no page size field)" grep -q "Firecracker v1.4-v1.6 (no page size field" "$T/v.err"
check "v1.7 recognised (page_size_kib only)" grep -q "Firecracker v1.7-v1.11 (page_size_kib only)" "$T/v.err"
check "secret-hiding recognised" grep -q "Firecracker secret-hiding (gpa_start, is_guest_memfd)" "$T/v.err"
check "secret-hiding's second message is read, not taken for garbage" \
    grep -q "Firecracker says no_exitless_apf: lazyvm does no exitless.*(0 fd(s) closed)" "$T/v.err"
check "no socket closed for bytes it could not read" bash -c "! grep -q 'closing the socket' '$T/v.err'"

echo "# what the secret-hiding branch sends after the hand-off"
expect "exitless_apf:4 with its 12 fds is read, the fds closed" 0 "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version secret-hiding --exitless-apf 4 --threads 2
check "exitless_apf:4 logged with its fds" grep -q "Firecracker says exitless_apf:4 .*(12 fd(s) closed)" "$T/v.err"
expect "a JSON fault request (the older protocol) is answered once the page is in" 0 \
    'fault request for offset 20480: \{"vcpu":0,"offset":20480,"len":[0-9]+,"flags":0,"token":42,"zero":false\}; the page is resident' \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version secret-hiding --fault-request 20480 --threads 2

echo "# balloons: before v1.11 a fresh mapping over the range (no event), after it a REMOVE"
for v in 1.4 1.7; do
    expect "v$v with a balloon: EVENT_REMOVE asked for, the remapped quarter reads zeros" 0 \
        "fresh mapping over the range.*all read zeros" \
        "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version $v --balloon --threads 2
done
expect "v1.7 without a balloon: no EVENT_REMOVE, nothing removed" 0 "features 0x0.*socket closed" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version 1.7 --threads 2

echo "# memory hotplug: an unplugged PROT_NONE slot inside the registered hotplug area"
expect "main with hotplug: served around the hole, every byte right" 0 \
    "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version main --hotplug --regions 2 --threads 3
expect "v1.12 with hotplug and 1-thread touches" 0 "pages of the unplugged slot left alone" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version 1.12 --hotplug --threads 1

echo "# fields no release sends are accepted and logged at debug level"
expect "unknown fields accepted" 0 "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --unknown-fields --threads 2
check "unknown field names logged once each" \
    grep -q "field(s) lazyvm does not use, ignored: memory_slot, tags, ratio$" "$T/v.err"

echo "# a guest_memfd VM (secret-hiding) is refused, saying what is missing"
expect "guest_memfd refused with the reason" 3 "is_guest_memfd: true.*needs UFFD minor faults" \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --fc-version secret-hiding --guest-memfd
expect "a wrong type is still refused" 3 'field "size" in region 0 is a string' \
    "$LAZYVM" fc-client --socket "$T/v.sock" --mem-file "$T/mem.img" --bad wrong-type
expect "a hand-off trickled in 500 pieces is read whole" 0 \
    "85741 bytes in 500 chunks.*handshake rejected: the file descriptor sent is not a userfaultfd" \
    python3 tests/tools/fc_trickle.py "$T/v.sock" 500
stop "$handler_pid"; handler_pid=""
check "metrics at exit count the three refusals" grep -q '"handshakes_rejected":3' "$T/v.out"

echo "# --populate all: every page installed from the hand-off on"
start_handler pop --mem-file "$T/mem.img" --populate all --source-latency 200us || exit 1
expect "populate all: every byte right" 0 "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/pop.sock" --mem-file "$T/mem.img" --threads 2 --no-remove-check
stop "$handler_pid"; handler_pid=""
bg=$(grep -o '"pages_background":[0-9]*' "$T/pop.out" | tail -1 | cut -d: -f2)
check "the background pass installed pages (${bg:-none} of 4096)" [ "${bg:-0}" -gt 0 ]
check "the log says it populates all" grep -q "populating all" "$T/pop.err"

echo "# Firecracker's calling convention: HANDLER SOCKET MEMFILE"
cp "$LAZYVM" "$T/fc-handler"
"$T/fc-handler" "$T/pos.sock" "$T/mem.img" >"$T/pos.out" 2>"$T/pos.err" & handler_pid=$!
for _ in $(seq 100); do [ -S "$T/pos.sock" ] && break; sleep 0.05; done
expect "a copy named fc-handler takes SOCKET MEMFILE" 0 "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/pos.sock" --mem-file "$T/mem.img" --threads 2
stop "$handler_pid"; handler_pid=""
"$LAZYVM" fc-handler --threads 2 "$T/pos2.sock" "$T/mem.img" >"$T/pos2.out" 2>"$T/pos2.err" & handler_pid=$!
for _ in $(seq 100); do [ -S "$T/pos2.sock" ] && break; sleep 0.05; done
expect "lazyvm fc-handler [OPTIONS] SOCKET MEMFILE" 0 "every byte matches" \
    "$LAZYVM" fc-client --socket "$T/pos2.sock" --mem-file "$T/mem.img" --threads 2
stop "$handler_pid"; handler_pid=""

echo "# in a jail: no /proc, no shared libraries, nothing but the handler, its socket, the file"
if ! make -s --no-print-directory static B="$B" >"$T/static.log" 2>&1; then
    not_ok "make static failed: $(tail -5 "$T/static.log")"
else
    J=$T/jail
    mkdir -p "$J"
    cp build/static/lazyvm "$J/fc-handler"
    cp "$T/mem.img" "$J/mem"
    check "the static binary needs no shared library" bash -c "! ldd '$J/fc-handler' 2>/dev/null | grep -q '=>'"
    unshare --mount --propagation private sh -c \
        'mount -t tmpfs none /proc && exec chroot "$1" /fc-handler --log-level debug /firecracker-uffd.sock /mem' \
        sh "$J" >"$T/jail.out" 2>"$T/jail.err" & jail_pid=$!
    for _ in $(seq 200); do [ -S "$J/firecracker-uffd.sock" ] && break; sleep 0.05; done
    check "the jailed handler listens" [ -S "$J/firecracker-uffd.sock" ]
    for v in 1.4 1.12 secret-hiding; do
        expect "jailed: Firecracker $v served, every byte right" 0 "every byte matches" \
            "$LAZYVM" fc-client --socket "$J/firecracker-uffd.sock" --mem-file "$T/mem.img" --fc-version $v --threads 2
    done
    expect "jailed: a file that is not a userfaultfd is named without /proc" 3 \
        "not a userfaultfd \(it is a regular file of 16777216 bytes\)" \
        "$LAZYVM" fc-client --socket "$J/firecracker-uffd.sock" --mem-file "$T/mem.img" --bad not-uffd
    expect "jailed: a blocking userfaultfd is still refused" 3 "not O_NONBLOCK" \
        "$LAZYVM" fc-client --socket "$J/firecracker-uffd.sock" --mem-file "$T/mem.img" --bad blocking
    # The three served VMs have exited; the handler sees it from their memory
    # (a UFFDIO_COPY probe every 0.5 s).
    for _ in $(seq 100); do
        [ "$(grep -c 'its memory is gone' "$T/jail.err")" -ge 3 ] && break
        sleep 0.05
    done
    stop "$jail_pid"; jail_pid=""
    check "jailed: features checked as messages arrive (no fdinfo)" \
        grep -q "features not checked up front (no /proc/self/fdinfo)" "$T/jail.err"
    check "jailed: an unprovable VM is said so, never killed" \
        grep -q "there is no /proc here (a jail?)" "$T/jail.err"
    check "jailed: VMs leave when their memory goes (no /proc needed)" \
        [ "$(grep -c 'its memory is gone: the VM has exited' "$T/jail.err")" -ge 3 ]
    check "jailed: metrics at exit" grep -q '"vms_served":3' "$T/jail.out"
fi

echo "fc_versions: $failures failure(s)"
[ "$failures" -eq 0 ]
