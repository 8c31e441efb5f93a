#!/bin/bash
# tests/hw/qmon --kick against a stand-in QEMU monitor (a unix socket that
# answers `info registers -a`, `info lapic N`, `info pic` and `nmi` in QEMU
# 7.2's words, from a real session's transcript). It sends the NMI to an L1
# whose every CPU is halted at one RIP, or whose CPU runs while an interrupt
# waits in IRR that nobody takes, never to a running one; it says whether a
# LAPIC timer still counted (idle) or none did (stuck); status 4 when the
# interrupt still waits after the NMI (stuck for good); it names an L2's RIP
# apart from the L1's (QMON_L1_TEXT) and the idle HLT. The real thing is
# exercised by tests/hw/run whenever a hardware-model L1 gets stuck.
set -u
T=$(mktemp -d /tmp/lazyvm-qmon-test.XXXXXX)
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null; done; rm -rf "$T"' EXIT
QMON=$(dirname "$0")/../hw/qmon
failures=0

# monitor SOCKET STATE: serve one qmon connection; STATE stuck (an NMI wakes
# it) | dead (it does not) | empty (as dead, but nothing in IRR: only idle)
# | spinning (a CPU runs, the timer's interrupt waits in IRR, an NMI changes
# nothing) | idle (halted, its timer counts) | running
monitor() {
    python3 - "$1" "$2" <<'EOF' &
import os, socket, sys
path, state = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
srv.settimeout(30)
c, _ = srv.accept()
c.settimeout(30)
c.sendall(b"QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ")
count = 1000
buf = b""
while True:
    d = c.recv(4096)
    if not d:
        break
    buf += d
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd = line.decode().strip()
        if cmd == "info registers -a":
            rip, hlt = ("ffffffff81ce5fff", 1) if state not in ("running", "spinning") else ("ffffffff811b7150", 0)
            if state == "running":
                count += 1
            out = ("\r\nCPU#0\r\nRAX=0000000000000000 RBX=0000000000000000\r\n"
                   "RIP=%s RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=%d\r\n"
                   "CR0=80050033 CR2=0000000000000000 CR3=0000000002c22000 CR4=00711ef0\r\n"
                   "EFER=0000000000001d01\r\n" % (rip, hlt))
        elif cmd.startswith("info lapic"):
            if state == "idle":
                count -= 100
            cur = 0 if state in ("stuck", "dead", "empty", "spinning") else count
            out = ("\r\ndumping local APIC state for CPU 0 \r\n\r\n"
                   "LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\r\n"
                   "Timer\t DCR=0x3 (divide by 16) initial_count = 171346 current_count = %d\r\n"
                   "ISR\t (none)\r\nIRR\t %s\r\n\r\nAPR 0x00 TPR 0x10 DFR 0x0f LDR 0x00 PPR 0x10\r\n"
                   % (cur, "236" if state in ("stuck", "dead", "spinning") else "(none)"))
        elif cmd == "info pic":
            out = "\r\npic0: irr=13 imr=ff isr=00 hprio=0 irq_base=30 rr_sel=0 elcr=00 fnm=0\r\n"
        elif cmd == "nmi":
            open(path + ".nmi", "w").close()
            if state not in ("dead", "empty", "spinning"):  # what QEMU 7.2 did on 2026-12-03
                state = "running"
            out = "\r\n"
        else:
            out = "\r\nunknown command: '%s'\r\n" % cmd
        c.sendall(out.encode() + b"(qemu) ")
EOF
    pids="$pids $!"
    for _ in $(seq 50); do [ -S "$1" ] && return; sleep 0.1; done
}

check() { # NAME STATE WANT_RC WANT_NMI(0|1) PATTERN
    local name=$1 state=$2 want_rc=$3 want_nmi=$4 pattern=$5 sock=$T/$1.sock rc nmi=0
    [ "$state" = none ] || monitor "$sock" "$state"
    QMON_L1_TEXT="_text ffffffffa7000000 pv_native_safe_halt ffffffffa7ce5ff0 _etext ffffffffa8000000" \
        timeout 30 python3 "$QMON" --kick "$sock" >"$T/$name.out" 2>&1
    rc=$?
    [ -e "$sock.nmi" ] && nmi=1
    if [ "$rc" -eq "$want_rc" ] && [ "$nmi" -eq "$want_nmi" ] && grep -q -E "$pattern" "$T/$name.out"; then
        echo "PASS  $name: status $rc, NMI sent $nmi"
    else
        echo "FAIL  $name: status $rc (want $want_rc), NMI sent $nmi (want $want_nmi), /$pattern/ in:"
        sed 's/^/    | /' "$T/$name.out"
        failures=$((failures + 1))
    fi
}

check stuck stuck 0 1 "L2 \(in guest mode\) _text\+0xce5fff \(pv_native_safe_halt: the idle HLT\)"
check stuck-lapic stuck 0 1 "CPU 0 lapic: IRR.*236"
check stuck-said stuck 0 1 "every CPU halted, an interrupt waits in IRR, no LAPIC timer counting \(stuck\): sent an NMI; then CPU 0 RIP ffffffff811b7150 HLT 0"
check dead dead 4 1 "stuck for good: after the NMI the interrupt still waits in IRR"
check empty empty 0 1 "every CPU halted, no LAPIC timer counting: sent an NMI"
check spinning spinning 4 1 "a CPU runs, an interrupt waits in IRR, no LAPIC timer counting \(stuck\): sent an NMI"
check idle idle 0 1 "every CPU halted, a LAPIC timer counting \(idle, console silent\): sent an NMI"
check running running 3 0 "a CPU runs: no NMI"
check no-monitor none 1 0 "no monitor at"
[ "$failures" -eq 0 ]
