#!/bin/bash
# Nothing hangs, nothing wrong gets through: restores that meet bad data end
# with a clear error within a bounded time. Every case runs under `timeout`,
# so a hang is a failure (status 124), never a stuck suite.
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-hangs-test.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT
failures=0
. "$(dirname "$0")/lib/expect.bash"
flip() { # flip FILE OFFSET: one byte of FILE changed
    python3 - "$1" "$2" <<'PY'
import sys; p, off = sys.argv[1], int(sys.argv[2], 0)
with open(p, 'r+b') as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0xff]))
PY
}

snap="$T/snap"
"$LAZYVM" run --mem 32M --workload "scan:2M+compute:2000" --snapshot-dir "$snap" >/dev/null 2>&1 ||
    { echo "snapshot failed"; exit 1; }

echo "# a damaged page the VMM itself reads (page 1: the guest's boot information)"
# The vCPU thread reads it while checking a compute result: it must not sleep
# on a page the stopped engine will never install (the old deadlock against
# the stop path's revoke of guest RAM).
bad="$T/bad-page1"
cp -r "$snap" "$bad"
flip "$bad/memory" $((0x1000 + 8))
for intake in block busy exit; do
    expect "page 1 damaged, --intake $intake: stops with the checksum error" 1 \
        "(serving guest memory|installing the guest's core page 0x1000).*(offset 0x1000|page 0x1000).*Bad message" \
        "$LAZYVM" restore "$bad" --load lazy --intake "$intake"
done
expect "page 1 damaged, --apf kernel: stops with the checksum error" 1 \
    "serving guest memory: .*offset 0x1000.*Bad message" \
    "$LAZYVM" restore "$bad" --load lazy --apf kernel
expect "page 1 damaged, --background-prefetch: stops with the checksum error" 1 \
    "serving guest memory: .*offset 0x1000.*Bad message" \
    "$LAZYVM" restore "$bad" --load lazy --background-prefetch
expect "page 1 damaged, eager: refused before running" 1 "page 1 \(offset 0x1000\) fails its checksum" \
    "$LAZYVM" restore "$bad" --load eager

if command -v nbdkit >/dev/null; then
    port=$((20000 + RANDOM % 20000))
    { nbdkit -f -i 127.0.0.1 -p "$port" file "$bad/memory" 2>"$T/nbdkit.err" & } 2>/dev/null
    pids+=($!)
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    for intake in block exit; do
        expect "page 1 damaged, from NBD, --intake $intake: stops with the checksum error" 1 \
            "(serving guest memory|installing the guest's core page 0x1000).*offset 0x1000.*Bad message" \
            "$LAZYVM" restore "$bad" --source "nbd://127.0.0.1:$port/" --load lazy --intake "$intake"
    done
else
    not_ok "nbdkit is missing: run 'make deps'"
fi

echo "# data nobody checked"
# A zero-page map that marks a data page zero would install zeros unread: the
# map must agree with the checksums, or the restore is refused.
zb="$T/bad-zero"
cp -r "$snap" "$zb"
page=$(python3 tests/tools/state_edit.py "$zb/state" first-data-page "$zb/memory")
python3 tests/tools/state_edit.py "$zb/state" zero-bit "$page"
expect "zero-page map marks data page $page zero: lazy restore refused" 1 \
    "page $page .* is marked zero, but its checksum is not a zero page's" \
    "$LAZYVM" restore "$zb" --load lazy
expect "zero-page map marks data page $page zero: exit intake refused" 1 \
    "zero-page map and the page checksums disagree" \
    "$LAZYVM" restore "$zb" --load lazy --intake exit
# --load mmap runs on the file's pages through the page cache: they are all
# checked through the mapping before the guest runs.
bad="$T/bad-mmap"
cp -r "$snap" "$bad"
flip "$bad/memory" $((0x300000 + 5))
expect "flipped byte, --load mmap: refused before running" 1 \
    "page 768 \(offset 0x300000\) fails its checksum" "$LAZYVM" restore "$bad" --load mmap
other="$T/other"
"$LAZYVM" run --mem 32M --workload "random:1M:50+compute:100" --seed 7 --snapshot-dir "$other" >/dev/null 2>&1 ||
    not_ok "second snapshot failed"
mix="$T/mix"
cp -r "$snap" "$mix"
cp "$other/memory" "$mix/memory"
for load in mmap eager lazy; do
    expect "another snapshot's memory file of the same size, --load $load: refused" 1 \
        "fails its checksum|does not match the snapshot's checksums" "$LAZYVM" restore "$mix" --load "$load"
done

echo "# a guest that stops without a word is noticed (--stall-timeout)"
expect "run: a guest halted with interrupts off is stopped" 1 "the guest made no progress for" \
    "$LAZYVM" run --mem 16M --workload crash:hang --stall-timeout 2s
hs="$T/hang-snap"
"$LAZYVM" run --mem 16M --workload "compute:100+crash:hang" --snapshot-dir "$hs" >/dev/null 2>&1 ||
    not_ok "snapshot of the hanging guest failed"
for mode in "--load lazy" "--load mmap" "--load eager" "--load lazy --intake exit"; do
    # shellcheck disable=SC2086
    expect "restored guest that hangs, $mode: stopped with the reason" 1 \
        "the guest made no progress for .*--stall-timeout 2.0 s" \
        "$LAZYVM" restore "$hs" $mode --stall-timeout 2s
done

[ "$failures" -eq 0 ]
