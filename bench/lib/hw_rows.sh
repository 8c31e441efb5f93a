# shellcheck shell=bash
# Sourced by the hardware-model benchmarks (bench/hw_*_bench.sh).
# hw_bench_rows NAME TARGET INITRD EXPERIMENT TAG FIELDS: builds the tier
# (`make TARGET`), boots it with HW_APPEND=hwbench=EXPERIMENT (tests/hw/init runs
# its tests, then the experiment) in a logs directory of its own (a `make
# hwtest` running at the same time does not mix its serial log in), and leaves
# in $rows the experiment's "TAG | ..." lines that have FIELDS fields (the
# last one the status), in $lines every HWTEST line of the boot and in $logs
# the directory holding them. Exits naming what failed: the build, the boot, a
# restore whose status is not "ok", or no lines at all. Environment: B, HW_TEST_TIMEOUT (default 300 here).
# hw_run_args (optional, split into words): more tests/hw/run arguments, e.g.
# "--smp 1 --append hwtest.suite=linux" (bench/hw_linux_bench.sh).
hw_bench_rows() {
    local name=$1 target=$2 initrd=$3 experiment=$4 tag=$5 fields=$6 out serial bad
    logs=$(mktemp -d "/tmp/lazyvm-$name.XXXXXX")
    out=$logs/run.out
    make -s "$target" B="$B" >"$out" 2>&1 || { tail -30 "$out" >&2; echo "$name: building the tier ($target) failed" >&2; exit 1; }
    # shellcheck disable=SC2086 # hw_run_args is split on purpose
    if ! HW_APPEND=hwbench=$experiment HW_TEST_TIMEOUT=${HW_TEST_TIMEOUT:-300} tests/hw/run \
        --kernel "$B"/hw/vmlinuz --initrd "$B/hw/$initrd" --logs "$logs" ${hw_run_args:-} >>"$out" 2>&1; then
        grep -E '^(FAIL|hwtest:)' "$out" >&2 || true
        echo "$name: the hardware-model tier failed (serial logs and output kept in $logs)" >&2
        exit 1
    fi
    # The raw serial lines of the boot that finished (a hung first boot is retried).
    serial=$(ls -t "$logs"/serial-*.log | head -n 1)
    lines=$logs/lines
    tr -d '\r' <"$serial" | grep -a -o 'HWTEST .*' >"$lines"
    rows=$logs/rows
    grep "$tag | " "$lines" | sed "s/.*$tag | //" | awk -F' [|] ' -v n="$fields" 'NF == n' >"$rows"
    bad=$(awk -F' [|] ' -v n="$fields" '$n != "ok"' "$rows" | wc -l)
    if [ ! -s "$rows" ] || [ "$bad" -gt 0 ]; then
        awk -F' [|] ' -v n="$fields" '$n != "ok"' "$rows" >&2
        echo "$name: $bad failed restore(s) or no $tag lines (serial logs kept in $logs)" >&2
        exit 1
    fi
}
