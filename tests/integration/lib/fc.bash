# Shared by the fc-handler integration scripts (sourced, not run): the check
# helpers and start_handler. Needs T, LAZYVM, failures and handler_pid set.

. "$(dirname "${BASH_SOURCE[0]}")/expect.bash"
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# start_handler NAME ARGS...: runs a handler on $T/NAME.sock, logs in $T/NAME.{out,err}.
# Ready once it says it serves: a stale socket left by a killed handler is
# there before the new one has replaced it.
start_handler() {
    local name=$1; shift
    "$LAZYVM" fc-handler --socket "$T/$name.sock" "$@" >"$T/$name.out" 2>"$T/$name.err" &
    handler_pid=$!
    for _ in $(seq 100); do
        [ -S "$T/$name.sock" ] && grep -q "fc-handler serving" "$T/$name.err" && return 0
        kill -0 "$handler_pid" 2>/dev/null || break
        sleep 0.05
    done
    not_ok "handler $name did not start: $(cat "$T/$name.err")"
    return 1
}
