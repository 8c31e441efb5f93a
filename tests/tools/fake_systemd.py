#!/usr/bin/env python3
"""A stand-in for systemd's service manager, for testing fc-handler's fd store
where systemd is not PID 1 (containers, CI).

It does what systemd documents for a Type=notify service with
FileDescriptorStoreMax= and Restart=always, and nothing more:
  - sd_notify(3): a datagram socket at $NOTIFY_SOCKET; READY=1, STOPPING=1,
    STATUS=; FDSTORE=1 with FDNAME= and the fds (SCM_RIGHTS) keeps them;
    FDSTOREREMOVE=1 with FDNAME= drops every fd of that name;
  - sd_listen_fds(3): the next instance gets the stored fds from fd 3 on, with
    LISTEN_FDS, LISTEN_FDNAMES (colon-separated) and LISTEN_PID (its own pid).
When the service exits, for any reason, it is started again (at most
--restarts times); SIGTERM to this script stops the service and ends it.

  fake_systemd.py --notify PATH --pid-file FILE [--restarts N] -- CMD ARGS...

What it receives and does goes to stderr, one line each ("fake-systemd: ...").
Exit status: the service's last status (0 after a clean stop).
"""
import argparse
import array
import os
import select
import signal
import socket
import subprocess
import sys
import time


def log(msg):
    print(f"fake-systemd: {time.time():.3f} {msg}", file=sys.stderr, flush=True)


class Store:
    def __init__(self):
        self.fds = []  # [(name, fd)], in the order stored

    def add(self, name, fds):
        for fd in fds:
            self.fds.append((name, fd))

    def remove(self, name):
        keep = []
        for n, fd in self.fds:
            if n == name:
                os.close(fd)
            else:
                keep.append((n, fd))
        self.fds = keep


def handle(sock, store):
    """Reads every datagram waiting on the notify socket."""
    while True:
        try:
            msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(253 * 4), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        fds = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        fields = dict(line.split("=", 1) for line in msg.decode().split("\n") if "=" in line)
        name = fields.get("FDNAME", "stored")
        if fields.get("FDSTORE") == "1":
            store.add(name, list(fds))
            log(f"FDSTORE {name} ({len(fds)} fd)")
        elif fields.get("FDSTOREREMOVE") == "1":
            for fd in fds:
                os.close(fd)
            store.remove(name)
            log(f"FDSTOREREMOVE {name}")
        else:
            for fd in fds:
                os.close(fd)
        for key in ("READY", "STOPPING"):
            if fields.get(key) == "1":
                log(key)
        if "STATUS" in fields:
            log(f"STATUS {fields['STATUS']}")


def start(cmd, notify, store, generation):
    fds = [fd for _, fd in store.fds]
    env = dict(os.environ, NOTIFY_SOCKET=notify)
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if fds:
        env["LISTEN_FDS"] = str(len(fds))
        env["LISTEN_FDNAMES"] = ":".join(n for n, _ in store.fds)

    def place_fds():
        # Above everything first, then from 3 on: a target may be a source.
        high = [os.dup2(fd, 10000 + i) for i, fd in enumerate(fds)]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
        os.closerange(3 + len(fds), 20000)

    # LISTEN_PID must be the service's own pid: sh learns it and execs it.
    argv = ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"'] + cmd
    p = subprocess.Popen(argv, env=env, preexec_fn=place_fds, close_fds=False)
    log(f"started pid {p.pid} (generation {generation}, {len(fds)} fds passed)")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notify", required=True)
    ap.add_argument("--pid-file", required=True)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.path.exists(a.notify):
        os.unlink(a.notify)
    sock.bind(a.notify)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    store = Store()
    generation = 1
    p = start(cmd, a.notify, store, generation)
    with open(a.pid_file + ".tmp", "w") as f:
        f.write(f"{p.pid}\n")
    os.rename(a.pid_file + ".tmp", a.pid_file)
    signalled = False
    while True:
        r, _, _ = select.select([sock], [], [], 0.02)
        if r:
            handle(sock, store)
        if stopping and not signalled:
            log("stopping the service (SIGTERM)")
            p.send_signal(signal.SIGTERM)
            signalled = True
        rc = p.poll()
        if rc is None:
            continue
        handle(sock, store)  # what it said last, before it went
        log(f"pid {p.pid} exited with status {rc}; {len(store.fds)} fds in the store")
        if stopping or generation > a.restarts:
            return rc if rc >= 0 else 128 - rc
        generation += 1
        p = start(cmd, a.notify, store, generation)
        with open(a.pid_file + ".tmp", "w") as f:
            f.write(f"{p.pid}\n")
        os.rename(a.pid_file + ".tmp", a.pid_file)


if __name__ == "__main__":
    sys.exit(main())
