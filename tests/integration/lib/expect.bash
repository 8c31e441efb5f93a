# Shared by the integration scripts (sourced, not run): TAP-style results and
# `expect`. Needs `failures` set to 0 by the script.

ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; failures=$((failures + 1)); }

# expect DESCRIPTION STATUS PATTERN COMMAND...: the exit status and a line of
# output (stdout and stderr) matching PATTERN (grep -E), within EXPECT_TIMEOUT
# seconds (default 60; a hang is status 124 and fails). Stdin is /dev/null.
expect() {
    local what=$1 want=$2 pattern=$3; shift 3
    local out rc t0=$EPOCHREALTIME secs
    out=$(timeout -k 2 "${EXPECT_TIMEOUT:-60}" "$@" 2>&1 </dev/null); rc=$?
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq "$want" ] && grep -qE -- "$pattern" <<<"$out"; then
        ok "$what (${secs}s)"
    else
        not_ok "$what (status $rc, want $want; no line matching '$pattern'; ${secs}s)"
        sed 's/^/    | /' <<<"$out" | tail -15
    fi
}
