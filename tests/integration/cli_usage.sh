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
EXPECT_TIMEOUT=10
. "$(dirname "$0")/lib/expect.bash"
usage() { local what=$1 pattern=$2; shift 2; expect "usage: $what" 2 "$pattern" "$LAZYVM" "$@"; }

echo "# bad usage: status 2, the option and the value named"
long=$(printf 'scan:4k+%.0s' $(seq 40))scan:4k
usage "no command" "Usage: lazyvm COMMAND"
usage "unknown command" "unknown command 'nosuch'" nosuch
for cmd in run restore migrate fc-handler fc-client; do
    usage "$cmd: unknown option" "lazyvm $cmd: unknown or ambiguous option '--no-such-option'" $cmd --no-such-option
    expect "$cmd --help" 0 "^Usage: lazyvm $cmd" "$LAZYVM" $cmd --help
done
usage "probe: unknown argument" "unknown argument '--x'" probe --x
usage "run --mem 0" "--mem: '0' is not 16M to 4G" run --mem 0
usage "run --mem 17M (not whole 2 MiB)" "--mem: '17M' is not 16M to 4G in whole 2 MiB" run --mem 17M
usage "run --mem 8G" "--mem: '8G' is not 16M to 4G" run --mem 8G
usage "run --mem lots" "--mem: 'lots' is not a size" run --mem lots
usage "run --mem without a value" "--mem needs a value" run --mem
usage "run --json=yes" "--json takes no value \\(got '--json=yes'\\)" run --json=yes
usage "run --vcpus 9" "--vcpus: '9' is not a whole number from 1 to 8" run --vcpus 9
usage "run --initrd without --kernel" "--initrd and --cmdline need --kernel" run --initrd /etc/hostname
usage "run --kernel with --workload" "are the bundled guest's; not with --kernel" run --kernel /etc/hostname --workload scan:4M
usage "run --kernel --mem 4G" "a Linux guest takes at most 3G" run --kernel /etc/hostname --mem 4G
expect "run --kernel: too short for a bzImage" 1 "3 bytes is too short for a bzImage" "$LAZYVM" run --kernel /etc/hostname
expect "run --kernel: not a bzImage" 1 "no \"HdrS\" at offset 0x202" "$LAZYVM" run --kernel "$LAZYVM"
expect "run --kernel: a directory" 1 "is a directory" "$LAZYVM" run --kernel /etc
usage "run --vcpus +2" "--vcpus: '\\+2' is not a whole number" run --vcpus +2
usage "run --mem-slots 0" "--mem-slots: '0' is not a whole number from 1 to 8" run --mem-slots 0
usage "run --seed -1" "--seed: '-1' is not a whole number" run --seed -1
usage "run --timeslice 5 (no unit)" "--timeslice: '5' is not a duration" run --timeslice 5
usage "run --timeslice 100us" "--timeslice: '100us' is not 200us to 1s" run --timeslice 100us
usage "run --apf maybe" "--apf: 'maybe' is not off or on" run --apf maybe
usage "run --workload scan:x" "--workload: bad part 'scan:x' of 'scan:x': SIZE is not a number" run --workload scan:x
usage "run --workload scan:5000" "bad part 'scan:5000'.*multiple of 4k" run --workload scan:5000
usage "run --workload random:1M" "bad part 'random:1M'.*expected random:SIZE:COUNT" run --workload random:1M
usage "run --workload edge:32k" "edge:SIZE needs a multiple of 16k, at least 64k" run --workload edge:32k
usage "run --workload crash:segv" "expected crash:ud, crash:pf, crash:div or crash:hang" run --workload crash:segv
usage "run --workload rescan:0 (no earlier scan)" "bad part 'rescan:0'.*not the index \\(from 0\\) of an earlier scan task" run --workload rescan:0
usage "run --workload scan:1M+ (empty part)" "bad part '' of 'scan:1M\\+': empty part" run --workload scan:1M+
usage "run --workload dance:1" "unknown task" run --workload dance:1
usage "run --workload too long for the boot info" "\\(${#long} characters\\) is longer than the guest's boot info holds \\(255 characters\\)" run --workload "$long"
usage "run: a workload larger than --mem" "--workload 'scan:32M' needs 32 MiB of guest memory; --mem is 16 MiB" run --mem 16M --workload scan:32M
usage "run --snapshot-dir ''" "--snapshot-dir: the path is empty" run --snapshot-dir ""
usage "run --migrate-to without a port" "--migrate-to 'localhost': 'localhost' is not HOST:PORT" run --migrate-to localhost
usage "run --migrate-to port 70000" "--migrate-to 'h:70000': port 70000 is out of range" run --migrate-to h:70000
usage "run --migrate-after without --migrate-to" "--migrate-after needs --migrate-to" run --migrate-after 1s
usage "run --migrate-after 0" "--migrate-after: '0': must be more than 0" run --migrate-to h:1 --migrate-after 0
usage "run --migrate-to with --snapshot-dir" "give one" run --migrate-to h:1 --snapshot-dir "$T/x"
usage "run: a stray argument" "unexpected argument 'extra'" run extra
usage "restore without DIR" "the snapshot directory is missing" restore
usage "restore with two DIRs" "give one snapshot directory, not 2" restore a b
usage "restore ''" "DIR: the path is empty" restore ""
usage "restore --load fast" "--load: 'fast' is not eager, mmap or lazy" restore d --load fast
usage "restore --fault-around 0" "--fault-around: '0' is not a whole number from 1 to 64" restore d --fault-around 0
usage "restore --handler-threads 65" "--handler-threads: '65'" restore d --handler-threads 65
usage "restore --source-latency 3" "--source-latency: '3' is not a duration" restore d --source-latency 3
usage "restore --source http://" "--source: 'http://x/y' is not an NBD URI" restore d --source http://x/y
usage "restore --record-ws ''" "--record-ws: the path is empty" restore d --record-ws ""
for opt in "--record-ws f" "--prefetch-ws f" "--background-prefetch" "--handler-threads 2" "--intake busy" \
    "--fault-around 4" "--apf kernel" "--source-latency 1ms"; do
    for load in eager mmap; do
        # shellcheck disable=SC2086
        usage "restore --load $load $opt" "${opt%% *} does nothing with --load $load: it works with --load lazy" \
            restore d --load $load $opt
    done
done
usage "restore --load mmap --source" "--load mmap maps the local memory file; it cannot read from --source" \
    restore d --load mmap --source nbd://h:1/x
usage "restore --apf user without --intake exit" "--apf user needs --intake exit" restore d --apf user
usage "restore --apf exitless --intake busy" "--apf exitless needs --intake exit" restore d --apf exitless --intake busy
usage "restore --policy without --apf" "--policy chooses which faults become asynchronous: it needs --apf" restore d --policy async
usage "restore --handler-threads with --intake exit" "--handler-threads does nothing with --intake exit" \
    restore d --intake exit --handler-threads 2
usage "restore --exit-backend without --intake exit" "--exit-backend chooses how --intake exit works: it needs --intake exit" \
    restore d --exit-backend sigbus
usage "restore --exit-backend foo" "--exit-backend: 'foo' is not native, sigbus or kick" restore d --intake exit --exit-backend foo
usage "migrate without --listen" "--listen HOST:PORT is required" migrate
usage "migrate --listen without a port" "--listen 'nohost': 'nohost' is not HOST:PORT" migrate --listen nohost
usage "migrate --accept-timeout 0" "--accept-timeout: '0': must be more than 0" migrate --listen 127.0.0.1:0 --accept-timeout 0
usage "migrate --apf kernel" "--apf: 'kernel' is not off, user or exitless" migrate --listen 127.0.0.1:0 --apf kernel
usage "migrate --apf user without --intake exit" "--apf user needs --intake exit" migrate --listen 127.0.0.1:0 --apf user
usage "migrate --policy without --apf" "--policy chooses" migrate --listen 127.0.0.1:0 --policy sync
usage "migrate: a stray argument" "unexpected argument 'x'" migrate --listen 127.0.0.1:0 x
usage "fc-client without --socket" "--socket PATH is required" fc-client --mem-file m
usage "fc-client without --mem-file" "--mem-file PATH is required" fc-client --socket s
usage "fc-client: a stray argument" "unexpected argument 'z'" fc-client --socket s --mem-file m z
usage "fc-client --page-size 8k" "--page-size: '8k' is not 4k or 2M" fc-client --socket s --mem-file m --page-size 8k
usage "fc-client --regions 16" "--regions: '16' is not a whole number from 1 to 15" fc-client --socket s --mem-file m --regions 16
usage "fc-client --fc-version 1.3" "--fc-version: '1.3' is not 1.4, 1.7, 1.12, main or secret-hiding" fc-client --socket s --mem-file m --fc-version 1.3
usage "fc-client --hotplug before v1.14" "memory hotplug is Firecracker v1.14 and later" fc-client --socket s --mem-file /dev/zero --hotplug --fc-version 1.7
usage "fc-client --bad nonsense" "--bad: unknown mode 'nonsense'" fc-client --socket s --mem-file m --bad nonsense
usage "fc-handler without --mem-file" "--mem-file PATH \(or --source\) is required" fc-handler --socket s
usage "fc-handler --snapshot without a source" "--snapshot 'a': want SOCKET=SOURCE" fc-handler --snapshot a
usage "fc-handler --snapshot with an unknown option" "unknown option 'colour=red'" fc-handler --snapshot a=b,colour=red
usage "fc-handler: a socket twice" "socket a is given twice" fc-handler --snapshot a=b --snapshot a=c
usage "fc-handler --source-timeout 0" "must be more than 0" fc-handler --source-timeout 0 a b
usage "fc-handler --populate all --background-prefetch" "would add nothing" fc-handler --populate all --background-prefetch a b
usage "fc-handler: a third positional argument" "unexpected argument 'c'" fc-handler a b c
usage "fc-handler --populate some" "--populate" fc-handler --populate some a b
usage "fc-handler --busy-idle without --intake busy" "--busy-idle does nothing without --intake busy" \
    fc-handler --socket s --mem-file m --busy-idle 1ms
usage "fc-handler --handshake-timeout 0" "--handshake-timeout: '0': must be more than 0" \
    fc-handler --socket s --mem-file m --handshake-timeout 0
usage "fc-handler --handshake-timeout 5" "--handshake-timeout: '5' is not a duration" \
    fc-handler --socket s --mem-file m --handshake-timeout 5
usage "fc-handler --log-level loud" "--log-level: 'loud' is not error, warning, info or debug" \
    fc-handler --socket s --mem-file m --log-level loud
usage "fc-handler --threads without a value" "--threads needs a value" fc-handler --socket s --mem-file m --threads

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
    expect "restore --record-ws FIFO: refused before the guest runs" 1 \
        "--record-ws: $T/fifo is a FIFO, not a regular file" "$LAZYVM" restore "$snap" --record-ws "$T/fifo"
    expect "restore --record-ws directory: refused before the guest runs" 1 \
        "--record-ws: $T/dir is a directory, not a regular file" "$LAZYVM" restore "$snap" --record-ws "$T/dir"
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
