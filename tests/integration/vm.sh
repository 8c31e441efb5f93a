#!/bin/bash
# The VMM, the bundled guest, snapshot and restore in every load mode, and
# refusals of bad snapshots. Guest work is kept small: this KVM emulates every
# guest instruction (~0.5 us each).
set -u
B=${B:-build}
LAZYVM=$(realpath "$B/lazyvm")
T=$(mktemp -d /tmp/lazyvm-vm-test.XXXXXX)
trap 'rm -rf "$T"' EXIT
failures=0
. "$(dirname "$0")/lib/expect.bash"
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

W="scan:2M+random:2M:100+compute:2000"

echo "# straight through"
expect "1 vCPU runs prepare and run phases and verifies" 0 "ok: 3 task\(s\) verified" \
    "$LAZYVM" run --mem 32M --workload "$W"
expect "2 vCPUs and 3 memslots" 0 "ok: 4 task\(s\) verified" \
    "$LAZYVM" run --mem 48M --mem-slots 3 --vcpus 2 --workload "$W+scan:1M"
expect "serial console reaches stdout" 0 "lazyvm guest v1 on 1 vCPU" \
    "$LAZYVM" run --mem 16M --workload compute:100

echo "# exceptions are reported, not hung"
expect "ud2 reported as #UD (vector 6)" 1 "guest exception on vCPU 0: vector 6," \
    "$LAZYVM" run --mem 16M --workload crash:ud
expect "access beyond the map reported as #PF (vector 14) with CR2" 1 "vector 14, .*CR2 0x200000000" \
    "$LAZYVM" run --mem 16M --workload crash:pf
expect "division by zero reported as #DE (vector 0)" 1 "vector 0," \
    "$LAZYVM" run --mem 16M --workload crash:div
expect "a workload that fits --mem but not the guest heap is refused by the guest" 1 "workload needs" \
    "$LAZYVM" run --mem 16M --workload scan:15M

echo "# snapshot, then restore in each load mode"
for vcpus in 1 2; do
    snap="$T/snap-$vcpus"
    expect "snapshot at the snapshot point ($vcpus vCPU)" 0 "snapshot written" \
        "$LAZYVM" run --mem 32M --mem-slots 2 --vcpus "$vcpus" --workload "$W" --snapshot-dir "$snap"
    [ -f "$snap/state" ] && [ "$(stat -c %s "$snap/memory")" -eq $((32 << 20)) ] &&
        ok "snapshot has a state file and a 32 MiB memory file" || not_ok "snapshot files missing"
    for load in eager mmap lazy; do
        out=$(timeout 60 "$LAZYVM" restore "$snap" --load "$load" --json 2>"$T/err"); rc=$?
        if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] &&
            [ "$(json_field results <<<"$out")" -eq 3 ]; then
            ok "restore --load $load ($vcpus vCPU): guest verified all data (restore_ms $(json_field restore_ms <<<"$out"), run_ms $(json_field run_ms <<<"$out"))"
        else
            not_ok "restore --load $load ($vcpus vCPU): status $rc: $out $(tail -5 "$T/err")"
        fi
        if [ "$load" = lazy ]; then
            faults=$(json_field faults <<<"$out" 2>/dev/null || echo 0)
            read_bytes=$(json_field bytes_read <<<"$out" 2>/dev/null || echo 0)
            [ "$faults" -gt 0 ] && [ "$read_bytes" -lt $((32 << 20)) ] &&
                ok "lazy restore fetched only what was touched ($faults faults, $read_bytes bytes)" ||
                not_ok "lazy restore numbers: faults $faults, bytes $read_bytes"
        fi
    done
done
snap="$T/snap-1"
expect "lazy restore with 200us source latency, 2 busy handler threads" 0 "ok: 3 task" \
    "$LAZYVM" restore "$snap" --load lazy --source-latency 200us --handler-threads 2 --intake busy

echo "# userfault exits (--intake exit)"
# This machine's KVM (PVM flavour, see SYSTEM.md): sigbus works, kick does not,
# native KVM userfault is absent. The hardware-model tier checks its own host.
expect "probe: native KVM userfault absent" 0 "exit backend native: unavailable" "$LAZYVM" probe --all
expect "probe: sigbus works (MMIO exit with the gpa)" 0 "exit backend sigbus: works \(a missing page exits as KVM_EXIT_MMIO" "$LAZYVM" probe --all
expect "probe: kick does not work here" 0 "exit backend kick: +unavailable \(the signal was ignored" "$LAZYVM" probe --all
expect "probe: sigbus chosen" 0 "in use for --intake exit: sigbus" "$LAZYVM" probe
for vcpus in 1 2; do
    for fa in 1 16; do
        out=$(timeout 60 "$LAZYVM" restore "$T/snap-$vcpus" --intake exit --fault-around "$fa" --json 2>"$T/err"); rc=$?
        if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] &&
            [ "$(json_field exit_backend <<<"$out")" = sigbus ] && [ "$(json_field faults <<<"$out")" -gt 0 ]; then
            ok "exit intake, $vcpus vCPU, fault-around $fa: guest verified all data ($(json_field faults <<<"$out") exits)"
        else
            not_ok "exit intake, $vcpus vCPU, fault-around $fa: status $rc: $out $(tail -5 "$T/err")"
        fi
    done
done

# Pages KVM writes for PV MSRs are installed before the first entry: the
# guest's own async PF area, and a steal-time area (MSR 0x4b564d03, enabled)
# put at 31 MiB, a page this workload never touches
expect "exit intake: the guest's async PF area installed before the run" 0 \
    "vCPU 1: async PF area at 0x[0-9a-f]+ installed before the run" "$LAZYVM" restore "$T/snap-2" --intake exit
pv="$T/pv"; rm -rf "$pv"; cp -r "$T/snap-1" "$pv"
python3 tests/tools/state_edit.py "$pv/state" set-msr 0 0x4b564d03 0x1f00001
expect "exit intake: a steal-time page installed before the run, guest verified" 0 \
    "vCPU 0: steal time at 0x1f00000 installed before the run" "$LAZYVM" restore "$pv" --intake exit
out=$(timeout 60 "$LAZYVM" restore "$pv" 2>&1); rc=$?
if [ "$rc" -eq 0 ] && grep -q "ok: 3 task" <<<"$out" && ! grep -q "installed before the run" <<<"$out"; then
    ok "UFFD intake: nothing installed first (its engine serves KVM's own writes), guest verified"
else
    not_ok "UFFD intake with a steal-time page: status $rc $(tail -5 <<<"$out")"
fi

echo "# async page faults"
apf="$T/snap-apf"
expect "snapshot of a guest with async PF on" 0 "snapshot written" \
    "$LAZYVM" run --mem 32M --vcpus 2 --workload "compute:4000+random:2M:40+scan:1M+random:1M:30" --snapshot-dir "$apf"
# apf_check NAME ARGS: runs a restore, prints "injected guest_np guest_ready spurious ok"
apf_run() { timeout 120 "$LAZYVM" restore "$apf" --intake exit --fault-around 1 --json "$@" 2>"$T/err" |
    python3 -c "import json,sys; j=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(j['apf_not_present'], j['guest_apf_not_present'], j['guest_apf_ready'], j['apf_spurious'], j['ok'], j['apf_note'] or '-')"; }
read -r inj gnp grd spur okv note <<<"$(apf_run --apf user --policy async --source-latency 2ms)"
if [ "$okv" = True ] && [ "$inj" -gt 0 ] && [ "$inj" = "$gnp" ] && [ "$grd" -ge "$gnp" ]; then
    ok "user APF, slow source, 2 vCPUs: $inj not-present injected, the guest took $gnp and $grd ready; data verified"
else
    not_ok "user APF, slow source: injected $inj, guest $gnp/$grd, ok $okv $(tail -3 "$T/err")"
fi
# By the CPL at the fault: the bundled guest runs in kernel mode and set
# SEND_ALWAYS, so every injection is a kernel-mode one. Without SEND_ALWAYS
# (its SNAP_APF edited, as a Linux guest sets it) every fault is served sync.
cpl_run() { timeout 120 "$LAZYVM" restore "$1" --intake exit --fault-around 1 --json --apf user --policy async --source-latency 2ms 2>"$T/err" |
    python3 -c "import json,sys; j=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(j['apf_not_present'], j['apf_user_async'], j['apf_kernel_async'], j['apf_kernel_sync'], j['ok'])"; }
read -r inj ua ka ks okv <<<"$(cpl_run "$apf")"
if [ "$okv" = True ] && [ "$inj" -gt 0 ] && [ "$ka" = "$inj" ] && [ "$ua" = 0 ] && [ "$ks" = 0 ]; then
    ok "CPL policy, guest with SEND_ALWAYS: $ka kernel-mode async faults, none kept sync; data verified"
else
    not_ok "CPL policy with SEND_ALWAYS: injected $inj, user $ua, kernel $ka, kernel sync $ks, ok $okv $(tail -3 "$T/err")"
fi
noall="$T/snap-apf-noall"; rm -rf "$noall"; cp -r "$apf" "$noall"
for v in 0 1; do python3 tests/tools/state_edit.py "$noall/state" and-u32 20 "$v" 0 0xfffffffd; done
read -r inj ua ka ks okv <<<"$(cpl_run "$noall")"
if [ "$okv" = True ] && [ "$inj" = 0 ] && [ "$ks" -gt 0 ]; then
    ok "CPL policy, guest without SEND_ALWAYS: no async fault in kernel mode, $ks served sync; data verified"
else
    not_ok "CPL policy without SEND_ALWAYS: injected $inj, user $ua, kernel $ka, kernel sync $ks, ok $okv $(tail -3 "$T/err")"
fi
read -r inj gnp grd spur okv note <<<"$(apf_run --apf exitless --policy async --source-latency 2ms)"
if [ "$okv" = True ] && [ "$inj" -gt 0 ] && [ "$inj" = "$gnp" ] && [ "$grd" -ge "$gnp" ]; then
    ok "exitless APF (rings + eventfds + irqfd), 2 vCPUs: $inj not-present, the guest took $gnp and $grd ready; data verified"
else
    not_ok "exitless APF: injected $inj, guest $gnp/$grd, ok $okv $(tail -3 "$T/err")"
fi
read -r inj gnp grd spur okv note <<<"$(apf_run --apf user --policy hybrid)"
[ "$okv" = True ] && [ "$inj" -eq 0 ] && [ "$gnp" -eq 0 ] &&
    ok "hybrid policy, local file: no async page fault at all (no spurious pairs), data verified" ||
    not_ok "hybrid policy, local file: injected $inj, guest $gnp, ok $okv"
read -r inj gnp grd spur okv note <<<"$(apf_run --apf user --policy sync --source-latency 2ms)"
[ "$okv" = True ] && [ "$inj" -eq 0 ] && ok "sync policy: no async page fault, data verified" ||
    not_ok "sync policy: injected $inj, ok $okv"
read -r inj gnp grd spur okv note <<<"$(apf_run --apf user --policy async)"
[ "$okv" = True ] && [ "$inj" -gt 0 ] && [ "$inj" = "$gnp" ] &&
    ok "async policy on short faults: $inj APFs ($spur counted spurious), data verified" ||
    not_ok "async policy, short faults: injected $inj, guest $gnp, ok $okv"
out=$(timeout 60 "$LAZYVM" restore "$apf" --apf kernel --json 2>"$T/err")
if [ "$(json_field ok <<<"$out")" = True ] && grep -q "kernel async PF unavailable" <<<"$out"; then
    ok "kernel APF: reported unavailable on this KVM, never faked (guest verified its data)"
else
    not_ok "kernel APF: $out $(tail -3 "$T/err")"
fi
# A named exit backend that does not work here fails the restore, saying why
# (the probe's words), rather than falling back to another one.
expect "--exit-backend native on a KVM without KVM_MEM_USERFAULT: refused with the reason" 1 \
    "--exit-backend native does not work on this host: KVM_SET_USER_MEMORY_REGION2 rejects KVM_MEM_USERFAULT" \
    "$LAZYVM" restore "$apf" --intake exit --exit-backend native
expect "--apf user without --intake exit is refused (usage)" 2 "needs --intake exit" "$LAZYVM" restore "$apf" --apf user

# Tokens are unique while outstanding and recycled at the guest's ACK: more
# async faults than there are tokens (1024) must all be delivered.
many="$T/snap-many"
expect "snapshot: a 6 MiB scan (1536 pages)" 0 "snapshot written" \
    "$LAZYVM" run --mem 32M --workload "scan:6M" --snapshot-dir "$many"
read -r inj gnp grd spur okv note <<<"$(apf=$many; timeout 120 "$LAZYVM" restore "$many" --intake exit --fault-around 1 --json --apf user --policy async 2>"$T/err" |
    python3 -c "import json,sys; j=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(j['apf_not_present'], j['guest_apf_not_present'], j['guest_apf_ready'], j['apf_spurious'], j['ok'], '-')")"
[ "$okv" = True ] && [ "$inj" -gt 1024 ] && [ "$inj" = "$gnp" ] && [ "$grd" -ge "$gnp" ] &&
    ok "tokens recycled: $inj async faults (more than the 1024 tokens) all delivered and taken" ||
    not_ok "token recycling: injected $inj, guest $gnp/$grd, ok $okv $(tail -3 "$T/err")"

# Two tasks faulting on the same pages at once (rescan:0 reads scan 0's pages),
# on one vCPU and on two: each fault its own token, both tasks verify.
for vcpus in 1 2; do
    twin="$T/snap-twin-$vcpus"
    "$LAZYVM" run --mem 32M --vcpus "$vcpus" --workload "scan:1M+rescan:0+compute:2000" --snapshot-dir "$twin" >/dev/null 2>&1
    out=$(timeout 120 "$LAZYVM" restore "$twin" --intake exit --fault-around 1 --apf user --policy async --source-latency 1ms --json 2>"$T/err"); rc=$?
    inj=$(json_field apf_not_present <<<"$out" 2>/dev/null || echo 0)
    if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] && [ "$(json_field results <<<"$out")" -eq 3 ] &&
        [ "$inj" -gt 256 ] && [ "$inj" = "$(json_field guest_apf_not_present <<<"$out")" ]; then
        ok "two tasks on the same pages, $vcpus vCPU(s): $inj APFs for 256 pages, both verified"
    else
        not_ok "two tasks on the same pages, $vcpus vCPU(s): status $rc $out $(tail -3 "$T/err")"
    fi
done

echo "# every intake x apf x policy on a mixed workload with the hard instructions"
# edge:SIZE does a rep movsb across missing source and destination pages, an
# add and a lock xadd (read-modify-write) on missing pages, and repe cmpsq.
mix="$T/snap-mix"
expect "snapshot: scan + random + compute + edge on 2 vCPUs" 0 "snapshot written" \
    "$LAZYVM" run --mem 32M --vcpus 2 --workload "scan:1M+random:1M:40+compute:2000+edge:64k+edge:128k" --snapshot-dir "$mix"
combos=("--intake block --apf off" "--intake busy --apf off" "--intake block --apf kernel"
        "--intake exit --apf off")
for apfm in user exitless; do
    for pol in sync async hybrid; do
        combos+=("--intake exit --apf $apfm --policy $pol --source-latency 1ms")
    done
done
for c in "${combos[@]}"; do
    # shellcheck disable=SC2086
    out=$(timeout 120 "$LAZYVM" restore "$mix" --fault-around 1 --json $c 2>"$T/err"); rc=$?
    if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] && [ "$(json_field results <<<"$out")" -eq 5 ]; then
        ok "$c: all 5 tasks verified ($(json_field faults <<<"$out") faults, $(json_field apf_not_present <<<"$out") APFs, $(json_field apf_refused_unsafe <<<"$out") not undoable)"
    else
        not_ok "$c: status $rc: $out $(tail -3 "$T/err")"
    fi
done

echo "# working-set record and replay (REAP)"
ws="$T/ws.bin"
out=$(timeout 60 "$LAZYVM" restore "$T/snap-1" --record-ws "$ws" --json 2>"$T/err"); rc=$?
rec=$(json_field ws_recorded <<<"$out" 2>/dev/null || echo 0)
[ "$rc" -eq 0 ] && [ "$rec" -gt 0 ] && [ -s "$ws" ] && ok "recorded a working set of $rec pages" ||
    not_ok "record: status $rc $out"
for intake in block exit; do
    out=$(timeout 60 "$LAZYVM" restore "$T/snap-1" --prefetch-ws "$ws" --intake "$intake" --json 2>"$T/err"); rc=$?
    if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] &&
        # exit intake: the pages installed first (the guest's core) are in
        # before the replay, which installs the rest
        pre=$(json_field ws_prefetched <<<"$out")
        [ "$pre" -le "$rec" ] && [ "$pre" -gt $((rec / 2)) ] && [ "$(json_field faults <<<"$out")" -eq 0 ] &&
        [ "$(json_field huge_collapsed <<<"$out")" -gt 0 ]; then
        ok "replay ($intake intake): $pre of the $rec pages installed by the replay before the guest ran, $(json_field huge_collapsed <<<"$out") fully replayed 2 MiB piece(s) made huge pages, then no fault at all"
    else
        not_ok "replay ($intake): status $rc $out"
    fi
done
out=$(timeout 60 "$LAZYVM" restore "$T/snap-2" --prefetch-ws "$ws" --json 2>"$T/err"); rc=$?
[ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] && grep -q "recorded for another snapshot (stale)" "$T/err" &&
    [ "$(json_field ws_prefetched <<<"$out")" -eq 0 ] &&
    ok "a stale working set: a warning, then a plain lazy restore that verifies" || not_ok "stale ws: $rc $out $(cat "$T/err")"
head -c 20 "$ws" >"$T/ws-short"
out=$(timeout 60 "$LAZYVM" restore "$T/snap-1" --prefetch-ws "$T/ws-short" --json 2>"$T/err"); rc=$?
[ "$rc" -eq 0 ] && grep -q "working set: .* is not a working-set file: plain lazy restore" "$T/err" &&
    ok "a damaged working-set file: a warning, plain lazy restore" || not_ok "damaged ws: $rc $(cat "$T/err")"

echo "# background prefetch"
out=$(timeout 60 "$LAZYVM" restore "$T/snap-2" --background-prefetch --json 2>"$T/err"); rc=$?
bg=$(json_field pages_background <<<"$out" 2>/dev/null || echo 0)
if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] && [ "$bg" -gt 0 ]; then
    ok "background prefetch, 2 vCPUs: $bg pages fetched in the background, $(json_field faults <<<"$out") demand faults, data verified"
else
    not_ok "background prefetch: status $rc $out $(tail -3 "$T/err")"
fi
out=$(timeout 60 "$LAZYVM" restore "$T/snap-2" --background-prefetch --intake exit --json 2>"$T/err"); rc=$?
bg=$(json_field pages_background <<<"$out" 2>/dev/null || echo 0)
if [ "$rc" -eq 0 ] && [ "$(json_field ok <<<"$out")" = True ] && [ "$bg" -gt 0 ]; then
    ok "background prefetch with userfault exits, 2 vCPUs: $bg pages in the background, data verified"
else
    not_ok "background prefetch with exit intake: status $rc $out $(tail -3 "$T/err")"
fi
expect "background prefetch with --load eager is refused (usage)" 2 "works with --load lazy" \
    "$LAZYVM" restore "$T/snap-2" --background-prefetch --load eager

echo "# bad snapshots are refused before the guest runs"
bad="$T/bad"
reset_bad() { rm -rf "$bad"; cp -r "$snap" "$bad"; }
reset_bad; truncate -s 16M "$bad/memory"
expect "truncated memory file" 1 "memory is 16777216 bytes but the snapshot's memory layout needs exactly 33554432 \(truncated\)" \
    "$LAZYVM" restore "$bad" --load lazy
reset_bad; truncate -s 64M "$bad/memory"
expect "memory file larger than the layout" 1 "not this snapshot's file" "$LAZYVM" restore "$bad"
reset_bad; python3 - "$bad/state" <<'PY'
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)
PY
expect "flipped byte in the state file" 1 "state file is corrupt: CRC-32C" "$LAZYVM" restore "$bad"
reset_bad; python3 - "$bad/state" <<'PY'
import struct, sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[8:12] = struct.pack('<I', 99); open(p, 'wb').write(b)
PY
expect "wrong format version" 1 "snapshot format 99, written by a newer lazyvm; this lazyvm reads format 2" "$LAZYVM" restore "$bad"
# Format 1 (before CPUID, TSC frequency and devices): this file with its header
# saying 1 and the trailer re-sealed, so only the version is wrong.
reset_bad; python3 tests/tools/state_edit.py "$bad/state" version 1
expect "format-1 snapshot refused by name" 1 "snapshot format 1, written by an older lazyvm; this lazyvm reads format 2: take the snapshot again" \
    "$LAZYVM" restore "$bad"
reset_bad; python3 tests/tools/state_edit.py "$bad/state" version 3
expect "format-3 snapshot refused by name" 1 "snapshot format 3, written by a newer lazyvm; this lazyvm reads format 2" \
    "$LAZYVM" restore "$bad" --load lazy
# TSC_KHZ (22) of vCPU 0 at 1 MHz, below this host's rate: a KVM without TSC
# scaling refuses it (a faster rate it accepts, catching the TSC up on entry)
reset_bad; python3 tests/tools/state_edit.py "$bad/state" set-u32 22 0 0 1000
tsc_control=$(python3 -c 'import fcntl, os; print(fcntl.ioctl(os.open("/dev/kvm", os.O_RDWR), 0xAE03, 60))')
if [ "$tsc_control" = 0 ]; then
    expect "a TSC rate KVM cannot run is refused, naming both rates" 1 \
        "vCPU 0: the snapshot's TSC runs at 1000 kHz, this host's at [0-9]+ kHz, and KVM refused to scale it" \
        "$LAZYVM" restore "$bad"
else
    expect "a TSC rate KVM scales to (KVM_CAP_TSC_CONTROL)" 0 "ok: 3 task" "$LAZYVM" restore "$bad"
fi
reset_bad; python3 tests/tools/state_edit.py "$bad/state" add-section 32 77 16
expect "a device this lazyvm does not know is refused" 1 "the snapshot holds the state of device 77, which this lazyvm does not know" \
    "$LAZYVM" restore "$bad"
reset_bad; python3 tests/tools/state_edit.py "$bad/state" add-section 32 0 16
expect "PIT state of the wrong size is refused" 1 "device pit: PIT state of 16 bytes" \
    "$LAZYVM" restore "$bad"
reset_bad; head -c 4096 "$snap/state" >"$bad/state"
expect "truncated state file" 1 "truncated or damaged" "$LAZYVM" restore "$bad"
reset_bad; head -c 8192 /dev/urandom >"$bad/state"
expect "foreign state file" 1 "not a lazyvm snapshot" "$LAZYVM" restore "$bad"
expect "missing directory" 1 "cannot open .*/nonexistent/state" "$LAZYVM" restore "$T/nonexistent"
# A corrupt page of memory: eager refuses before running; lazy stops the VM at
# the fetch; neither lets the guest see the page.
reset_bad; python3 - "$bad/memory" <<'PY'
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[0x200000 + 100] ^= 0xff; open(p, 'wb').write(b)
PY
expect "corrupt memory page refused by eager restore" 1 "page 512 \(offset 0x200000\) fails its checksum" \
    "$LAZYVM" restore "$bad" --load eager
expect "corrupt memory page stops a lazy restore" 1 "serving guest memory: .*source offset 0x200000" \
    "$LAZYVM" restore "$bad" --load lazy
expect "corrupt memory page stops an exit-intake restore" 1 "(fetching guest page 0x200000|source offset 0x200000).*Bad message" \
    "$LAZYVM" restore "$bad" --load lazy --intake exit

reset_bad; rm "$bad/checksums"
expect "missing checksums file" 1 "cannot open .*/checksums" "$LAZYVM" restore "$bad"
reset_bad; python3 - "$bad/checksums" <<'PY'
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[2048 + 1] ^= 0x40; open(p, 'wb').write(b)
PY
expect "damaged checksum chunk stops an eager restore" 1 "checksum chunk 0 \(pages 0\.\.\) is damaged" \
    "$LAZYVM" restore "$bad" --load eager
expect "damaged checksum chunk stops a lazy restore" 1 "checksum chunk 0 \(pages 0\.\.\) is damaged" \
    "$LAZYVM" restore "$bad" --load lazy

echo "# usage"
expect "restore without a directory is a usage error" 2 "the snapshot directory is missing" "$LAZYVM" restore
expect "bad --load" 2 "not eager, mmap or lazy" "$LAZYVM" restore "$snap" --load sometimes
expect "--mem too small (usage)" 2 "16M to 4G" "$LAZYVM" run --mem 8M
expect "run --help" 0 "Usage: lazyvm run" "$LAZYVM" run --help
expect "restore --help" 0 "Usage: lazyvm restore" "$LAZYVM" restore --help

echo "vm: $failures failure(s)"
[ "$failures" -eq 0 ]
