# nbdkit on loopback for the integration scripts (sourced, not run). Needs T
# set; fills pids (to kill at exit), nbd_pid and port.
command -v nbdkit >/dev/null || { echo "nbdkit is missing: run 'make deps'"; exit 1; }
pids=()
port=$((20000 + RANDOM % 20000))
# serve ARGS...: nbdkit ARGS on 127.0.0.1:$port (a new port each time), in the
# background; returns once it accepts connections.
serve() {
    port=$((port + 1))
    { nbdkit -f -i 127.0.0.1 -p "$port" "$@" 2>"$T/nbdkit-$port.err" & } 2>/dev/null
    pids+=($!)
    nbd_pid=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "nbdkit did not start: $(cat "$T/nbdkit-$port.err")"; return 1
}
