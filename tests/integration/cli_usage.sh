#!/bin/bash
# The command line refuses what it cannot do, at once and by name (issue 10):
# bad usage exits 2 with a message naming the option and the value; a file of
# the wrong kind (FIFO, directory, device, socket) exits 1 naming the file and
# what it is, and never blocks (every command runs under a short timeout:
# status 124 is a hang); a memory file that shrinks under a lazy restore stops
# the VM with the file, the offset and both sizes, never zeros.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-cli-test.XXXXXX)
trap 'rm -rf "$T"' EXIT
failures=0
ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; failures=$((failures + 1)); }
# expect DESCRIPTION STATUS PATTERN COMMAND...: exit status and a line of
# output (stdout and stderr) matching PATTERN, within 10 s.
expect() {
    local what=$1 want=$2 pattern=$3; shift 3
    local out rc
    out=$(timeout -k 2 10 "$@" 2>&1 </dev/null); rc=$?
    if [ "$rc" -eq "$want" ] && grep -qE -- "$pattern" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what (status $rc, want $want; no line matching '$pattern')"
        sed 's/^/    | /' <<<"$out" | tail -8
    fi
}
usage() { local what=$1 pattern=$2; shift 2; expect "usage: $what" 2 "$pattern" "$LAZYVM" "$@"; }

have_kvm=0
[ -r /dev/kvm ] && [ -w /dev/kvm ] && have_kvm=1

echo "# files of the wrong kind: refused by name, never waited on"
mkfifo "$T/fifo"
mkdir "$T/dir"
python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" "$T/sock"
expect "fc-handler --mem-file FIFO" 1 "$T/fifo is a FIFO, not a regular file or block device" \
    "$LAZYVM" fc-handler --socket "$T/h.sock" --mem-file "$T/fifo"
expect "fc-handler --mem-file directory" 1 "$T/dir is a directory" \
    "$LAZYVM" fc-handler --socket "$T/h.sock" --mem-file "$T/dir"
expect "fc-handler --mem-file character device" 1 "/dev/zero is a character device" \
    "$LAZYVM" fc-handler --socket "$T/h.sock" --mem-file /dev/zero
expect "fc-handler --mem-file socket" 1 "$T/sock is a socket" \
    "$LAZYVM" fc-handler --socket "$T/h.sock" --mem-file "$T/sock"
expect "fc-client --mem-file FIFO" 1 "$T/fifo is a FIFO" \
    "$LAZYVM" fc-client --socket "$T/h.sock" --mem-file "$T/fifo"
expect "restore of a FIFO directory" 1 "$T/fifo/state: Not a directory" \
    "$LAZYVM" restore "$T/fifo"

if [ "$have_kvm" -eq 1 ]; then
    snap="$T/snap"
    expect "a small snapshot to work on" 0 "snapshot written" \
        "$LAZYVM" run --mem 16M --workload scan:1M --snapshot-dir "$snap"
    for f in state checksums memory; do
        rm -rf "$T/bad"; cp -r "$snap" "$T/bad"; rm "$T/bad/$f"; mkfifo "$T/bad/$f"
        for load in eager mmap lazy; do
            expect "restore --load $load: $f is a FIFO" 1 "$T/bad/$f is a FIFO, not a regular file" \
                "$LAZYVM" restore "$T/bad" --load "$load"
        done
        rm "$T/bad/$f"; mkdir "$T/bad/$f"
        expect "restore: $f is a directory" 1 "$T/bad/$f is a directory" "$LAZYVM" restore "$T/bad"
    done
    expect "restore --prefetch-ws FIFO: a warning, then a plain lazy restore" 0 \
        "working set: $T/fifo is a FIFO, not a regular file: plain lazy restore" \
        "$LAZYVM" restore "$snap" --prefetch-ws "$T/fifo"
    mkdir "$T/out"; mkfifo "$T/out/memory"
    expect "run --snapshot-dir with a FIFO for its memory file" 1 "$T/out/memory is a FIFO" \
        "$LAZYVM" run --mem 16M --workload scan:1M --snapshot-dir "$T/out"

    echo "# a memory file that shrinks under a lazy restore"
    rm -rf "$T/shrink"; cp -r "$snap" "$T/shrink"
    (sleep 1; truncate -s 1M "$T/shrink/memory") &
    expect "the VM stops naming the file, the offset and both sizes" 1 \
        "source offset 0x[0-9a-f]+.*$T/shrink/memory ends early: it is now 1048576 bytes, shorter than the 16777216 it had when it was opened" \
        "$LAZYVM" restore "$T/shrink" --source-latency 20ms --fault-around 1
    wait
else
    echo "# SKIP the restore and run cases: no usable /dev/kvm"
fi

echo "# $failures failure(s)"
[ "$failures" -eq 0 ]
