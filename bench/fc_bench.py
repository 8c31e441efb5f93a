#!/usr/bin/env python3
"""fc_bench: Firecracker-style restores through lazyvm fc-handler.

--experiment remote (default): a 128 MiB memory file served from nbdkit on
loopback with 1 ms a request (its delay filter); fc-client (playing Firecracker
v1.12) uses 25% of it (--touch-percent 25: the same pages every run, in a
random order per run, like a function's working set) from 2 threads. Cases:
plain lazy, lazy + background prefetch, working-set replay (recorded once by a
first VM), replay + background, against fully resident (the local file,
--populate all, the client waits until every page is in before it touches).
Each rep runs every case once in a shuffled order, each with its own handler;
cells are medians of the client's touch time.

--experiment fleet: N VMs of one 16 MiB snapshot at once (a local memory file
in the page cache) against 1 VM: wall time, faults a second over all VMs, the
handler's peak RSS, and how much of the memory file is in the page cache
afterwards (fincore; drop_caches first): it is read once whatever N is.
"""
import argparse, os, random, re, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from restore_bench import header, nbdkit_delayed  # noqa: E402  (same report shape)


def wait_for(path, proc, what):
    for _ in range(200):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            sys.exit(f"fc_bench: {what} exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.025)
    sys.exit(f"fc_bench: {what} did not start")


class Handler:
    def __init__(self, lazyvm, tmp, name, args):
        self.sock = os.path.join(tmp, name + ".sock")
        self.err = open(os.path.join(tmp, name + ".err"), "w")
        self.out_path = os.path.join(tmp, name + ".out")
        self.out = open(self.out_path, "w")
        self.p = subprocess.Popen([lazyvm, "fc-handler", "--socket", self.sock] + args,
                                  stdout=self.out, stderr=self.err)
        wait_for(self.sock, self.p, "fc-handler " + name)

    def peak_rss_kib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)
        self.out.close()
        self.err.close()
        return open(self.out_path).read()


def client(lazyvm, sock, mem, extra):
    r = subprocess.run([lazyvm, "fc-client", "--socket", sock, "--mem-file", mem,
                        "--no-remove-check"] + extra, capture_output=True, text=True, timeout=600)
    m = re.search(r"page touches in ([0-9.]+) s", r.stdout)
    if r.returncode != 0 or not m or "every byte matches" not in r.stdout:
        sys.exit(f"fc_bench: fc-client failed ({r.returncode}): {r.stdout}{r.stderr}")
    return float(m.group(1))


def totals(metrics_out, field):
    m = re.findall(r'"totals":\{.*?"' + field + r'":([0-9]+)', metrics_out)
    return int(m[-1]) if m else 0


def remote(a):
    reps = 1 if a.quick else a.reps
    size = 32 if a.quick else 128
    tmp = tempfile.mkdtemp(prefix="lazyvm-fc-bench.")
    server = None
    t_start = time.time()
    try:
        mem = os.path.join(tmp, "mem.img")
        with open(mem, "wb") as f:
            f.write(os.urandom(size << 20))
        server, uri = nbdkit_delayed(mem)
        ws = os.path.join(tmp, "ws")
        touch = ["--touch-percent", "25", "--threads", "2"]
        h = Handler(a.lazyvm, tmp, "record", ["--source", uri, "--record-ws", ws])
        client(a.lazyvm, h.sock, mem, touch + ["--seed", "999"])
        h.stop()
        cases = {
            "fully resident (local file, --populate all, waited)":
                (["--mem-file", mem, "--populate", "all"], ["--wait-resident"]),
            "nbd 1ms, plain lazy": (["--source", uri], []),
            "nbd 1ms, lazy + background prefetch": (["--source", uri, "--background-prefetch"], []),
            "nbd 1ms, working-set replay": (["--source", uri, "--prefetch-ws", ws], []),
            "nbd 1ms, replay + background": (["--source", uri, "--prefetch-ws", ws,
                                              "--background-prefetch"], []),
        }
        res = {k: [] for k in cases}
        faults = {k: [] for k in cases}
        for rep in range(reps):
            order = list(cases)
            random.shuffle(order)
            for k in order:
                hargs, cargs = cases[k]
                h = Handler(a.lazyvm, tmp, "case", hargs)
                t = client(a.lazyvm, h.sock, mem, touch + ["--seed", str(rep + 1)] + cargs)
                out = h.stop()
                res[k].append(t)
                faults[k].append(totals(out, "faults"))
                print(f"fc_bench: rep {rep + 1}/{reps} {k:<52} {t * 1000:8.1f} ms", file=sys.stderr)
        header("fc-handler: Firecracker-style restores from NBD at 1 ms a request",
               f"Memory: {size} MiB (random bytes), the VM uses 25% of it ({size // 4} MiB, the same "
               f"pages every run) from 2 threads; fc-client as Firecracker v1.12; nbdkit file plugin + "
               f"delay filter on loopback; {reps} reps interleaved; cells are medians")
        print("| case | touch time (ms) | vs resident | faults the handler read |")
        print("|---|---:|---:|---:|")
        med = {k: statistics.median(v) for k, v in res.items()}
        resident = med["fully resident (local file, --populate all, waited)"]
        for k in cases:
            print(f"| {k} | {med[k] * 1000:.1f} | {med[k] / resident:.2f}x | "
                  f"{statistics.median(faults[k]):.0f} |")
        lazy, replay = med["nbd 1ms, plain lazy"], med["nbd 1ms, working-set replay"]
        print(f"\n- working-set replay vs plain lazy: **{lazy / replay:.2f}x** faster (target 3x, REAP "
              f"reported 3.7x); replay vs fully resident: **{replay / resident:.2f}x** (target within 1.3x)")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        if server:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def file_cached_kib(path):
    """How much of path is in the page cache (util-linux fincore), or None."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                       capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0]) // 1024
    except (ValueError, IndexError):
        return None


def fleet(a):
    n_many = 8 if a.quick else a.vms
    tmp = tempfile.mkdtemp(prefix="lazyvm-fc-fleet.")
    t_start = time.time()
    rows = []
    try:
        mem = os.path.join(tmp, "mem.img")
        with open(mem, "wb") as f:
            f.write(os.urandom(16 << 20))
        for n in (1, n_many):
            os.sync()
            can_drop = os.geteuid() == 0
            if can_drop:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("1\n")
            c0 = file_cached_kib(mem)
            h = Handler(a.lazyvm, tmp, f"fleet{n}", ["--mem-file", mem, "--max-vms", str(n + 8)])
            t0 = time.time()
            procs = [subprocess.Popen([a.lazyvm, "fc-client", "--socket", h.sock, "--mem-file", mem,
                                       "--regions", "1", "--threads", "1", "--seed", str(i + 1),
                                       "--no-remove-check"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for i in range(n)]
            bad = sum(1 for p in procs if p.wait(timeout=600) != 0)
            wall = time.time() - t0
            c1 = file_cached_kib(mem)
            rss = h.peak_rss_kib()
            out = h.stop()
            if bad:
                sys.exit(f"fc_bench: {bad} of {n} VMs failed")
            f_ = totals(out, "faults")
            rows.append((n, wall, f_, f_ / wall, rss,
                         (c1 - c0) if can_drop and c0 is not None and c1 is not None else None))
            print(f"fc_bench: {n} VM(s): {wall:.2f} s, {f_} faults", file=sys.stderr)
        header(f"fc-handler: {n_many} VMs of one snapshot at once against 1",
               "Memory file: 16 MiB (random bytes), local, read through the page cache; each VM "
               "(fc-client, 1 region, 1 thread) touches every page in its own random order and "
               "checks it")
        print("| VMs | wall (s) | faults | faults/s | handler peak RSS (MiB) | memory file in the page cache (MiB) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n, wall, f_, fps, rss, cache in rows:
            cache_s = f"{cache / 1024:.1f}" if cache is not None else "n/a"
            print(f"| {n} | {wall:.2f} | {f_} | {fps:.0f} | {rss / 1024:.1f} | {cache_s} |")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", choices=["remote", "fleet"], default="remote")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vms", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    a = ap.parse_args()
    a.lazyvm = os.path.join(os.environ.get("B", "build"), "lazyvm")
    if a.experiment == "fleet":
        return fleet(a)
    return remote(a)


if __name__ == "__main__":
    main()
