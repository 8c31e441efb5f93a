#!/usr/bin/env python3
"""restore_bench: lazyvm restores side by side.

--experiment load (default): eager vs mmap vs lazy.

For each guest memory size, one snapshot of a guest whose working set is
--ws (a scan task: written before the snapshot point, read back and verified
after it). Then, per repetition, every (size, load mode) pair is restored once
in a shuffled order; each cell of the report is the median over repetitions.
restore_ms = command start to first guest instruction, run_ms = the run phase,
total_ms = command start to the guest's DONE, max_rss = peak RSS of the
restoring process. With --cold, the page cache is dropped before every restore
(root only), so the memory file is read from the disk.

--experiment apf: the RFC's experiment (a CPU-bound and a memory-bound task on
one vCPU, every fault 10 ms): run phase with async page faults off vs user,
next to each task alone, and the ideal overlap max(cpu, io); then short faults
(local file) under --policy async / hybrid / sync: spurious APFs and run time.

--experiment remote: memory from nbdkit on loopback with 1 ms per request (nbdkit 1.32 delays in whole ms)
(its delay filter): plain lazy, lazy + background prefetch, working-set replay
(REAP), against eager from the local file (fully resident) and lazy from it.

--experiment migrate: post-copy live migration between two lazyvm processes on
loopback (`lazyvm run --migrate-to` -> `lazyvm migrate --listen`), 2 vCPUs, a
fixed mixed workload, for growing guest memory: downtime (vCPUs parked at the
source -> running at the destination), transfer time (-> every page at the
destination, when the source may exit), blocktime (vCPU time waiting for pages)
and bytes sent, against memory size.

--experiment intake: how faults reach lazyvm, lazy restores with fault-around
off: a blocking UFFD handler thread, a busy-polling one, and userfault exits
(--intake exit), for 1 and 2 vCPUs; each vCPU runs a scan and a random task.
Reports run_ms, faults, faults per second of run phase, and the engine's median
resolve time (UFFD: message read -> installed; exits: resolve in the vCPU).
"""
import argparse, json, os, platform, random, shutil, statistics, subprocess, sys, tempfile, time

def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)

def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, Linux {platform.release()}"

def snapshot(a, d, mem, work, vcpus=1):
    """Boots a guest with `work` and snapshots it into d (exits on failure)."""
    print(f"restore_bench: snapshot, {mem}, {vcpus} vCPU(s), workload {work}", file=sys.stderr)
    r = sh([a.lazyvm, "run", "--mem", mem, "--vcpus", str(vcpus), "--workload", work, "--snapshot-dir", d])
    if r.returncode != 0:
        sys.exit(f"restore_bench: snapshot of {work} failed: {r.stdout}{r.stderr}")
    return d

def header(title, guest):
    print(f"## {title}\n")
    print(f"- Command: `{' '.join(sys.argv)}`")
    print(f"- Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- {guest}\n")

def interleave(reps, cases, run_one):
    """Runs run_one(key) for every key, once a rep in shuffled order: {key: [json...]}."""
    results = {k: [] for k in cases}
    for rep in range(reps):
        order = list(cases)
        random.shuffle(order)
        for k in order:
            j = run_one(k)
            results[k].append(j)
            print(f"restore_bench: rep {rep + 1}/{reps} {k!s:<36} restore {j['restore_ms']:8.1f} ms"
                  f"  run {j['run_ms']:8.1f} ms  total {j['total_ms']:8.1f} ms", file=sys.stderr)
    return results

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lazyvm", default=os.path.join(os.environ.get("B", "build"), "lazyvm"))
    ap.add_argument("--sizes", default="256M,1G", help="guest memory sizes (default 256M,1G)")
    ap.add_argument("--ws", default="16M", help="working set: the scan task's size (default 16M)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every restore")
    ap.add_argument("--quick", action="store_true", help="32M/64M, 2M working set, 1 rep (smoke test)")
    ap.add_argument("--experiment", choices=["load", "intake", "apf", "remote", "migrate"],
                    default="load")
    a = ap.parse_args()
    if a.experiment == "intake":
        return intake_experiment(a)
    if a.experiment == "apf":
        return apf_experiment(a)
    if a.experiment == "remote":
        return remote_experiment(a)
    if a.experiment == "migrate":
        return migrate_experiment(a)
    if a.quick:
        a.sizes, a.ws, a.reps = "32M,64M", "2M", 1
    sizes = a.sizes.split(",")
    modes = ["eager", "mmap", "lazy"]
    tmp = tempfile.mkdtemp(prefix="lazyvm-restore-bench.")
    t_start = time.time()
    try:
        snaps = {size: snapshot(a, os.path.join(tmp, size), size, f"scan:{a.ws}") for size in sizes}

        def run_one(key):
            if a.cold:
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            return restore_json(a.lazyvm, snaps[key[0]], ["--load", key[1]])

        results = interleave(a.reps, [(s, m) for s in sizes for m in modes], run_one)
        med = lambda s, m, k: statistics.median(j[k] for j in results[(s, m)])
        cache = "cold: page cache dropped before each restore" if a.cold else "warm: memory file in the page cache"
        header(f"Restore: eager vs mmap vs lazy ({cache})",
               f"Guest: 1 vCPU, workload scan:{a.ws} (written before the snapshot point, every byte read"
               f" back and verified after restore); {a.reps} reps interleaved in shuffled order;"
               f" cells are medians")
        print("| memory | load | restore_ms | run_ms | total_ms | peak RSS (MiB) | faults | MiB read |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for s in sizes:
            for m in modes:
                print(f"| {s} | {m} | {med(s, m, 'restore_ms'):.1f} | {med(s, m, 'run_ms'):.1f} | "
                      f"{med(s, m, 'total_ms'):.1f} | {med(s, m, 'max_rss_kb') / 1024:.0f} | "
                      f"{med(s, m, 'faults'):.0f} | {med(s, m, 'bytes_read') / 2**20:.1f} |")
        print()
        lo, hi = sizes[0], sizes[-1]
        ratio = med(hi, "lazy", "restore_ms") / med(lo, "lazy", "restore_ms")
        print(f"- lazy restore_ms, {hi} / {lo}: **{ratio:.2f}x** (target: within 1.2x)")
        for s in sizes:
            lt, et = med(s, "lazy", "total_ms"), med(s, "eager", "total_ms")
            print(f"- {s}: lazy total / eager total: **{lt / et:.2f}x** ({lt:.0f} ms vs {et:.0f} ms; target below 1)")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

def restore_json(lazyvm, snap, args):
    r = sh([lazyvm, "restore", snap, "--json"] + args)
    try:
        j = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sys.exit(f"restore_bench: {snap} {args}: no JSON: {r.stdout}{r.stderr}")
    if r.returncode != 0 or not j["ok"]:
        sys.exit(f"restore_bench: {snap} {args}: the guest did not verify its data: {j['error']}")
    return j

def intake_experiment(a):
    ws = "2M" if a.quick else "4M"
    count = 100 if a.quick else 400
    reps = 1 if a.quick else a.reps
    intakes = {"uffd-block": ["--intake", "block"], "uffd-busy": ["--intake", "busy"],
               "exit": ["--intake", "exit"]}
    tmp = tempfile.mkdtemp(prefix="lazyvm-intake-bench.")
    t_start = time.time()
    try:
        snaps = {}
        for vcpus in (1, 2):
            work = "+".join([f"scan:{ws}+random:{ws}:{count}"] * vcpus)
            snaps[vcpus] = (snapshot(a, os.path.join(tmp, f"v{vcpus}"), "64M", work, vcpus), work)
        results = interleave(reps, [(v, i) for v in snaps for i in intakes],
                             lambda k: restore_json(a.lazyvm, snaps[k[0]][0],
                                                    ["--fault-around", "1"] + intakes[k[1]]))
        med = lambda v, i, f: statistics.median(f(j) for j in results[(v, i)])
        header("Fault intake: UFFD handler thread vs userfault exits",
               f"Guest: 64 MiB, per vCPU scan:{ws} + random:{ws}:{count}; lazy restore,"
               f" --fault-around 1; {reps} reps interleaved; cells are medians")
        print("| vCPUs | intake | run_ms | faults | faults/s of run | median resolve (us) | exit backend |")
        print("|---:|---|---:|---:|---:|---:|---|")
        for v in snaps:
            for i in intakes:
                print(f"| {v} | {i} | {med(v, i, lambda j: j['run_ms']):.1f} | "
                      f"{med(v, i, lambda j: j['faults']):.0f} | "
                      f"{med(v, i, lambda j: j['faults'] / (j['run_ms'] / 1000)):.0f} | "
                      f"{med(v, i, lambda j: j['fault_p50_us']):.1f} | "
                      f"{results[(v, i)][0]['exit_backend'] or '-'} |")
        print()
        for v in snaps:
            b = med(v, "uffd-block", lambda j: j["run_ms"])
            e = med(v, "exit", lambda j: j["run_ms"])
            bz = med(v, "uffd-busy", lambda j: j["run_ms"])
            print(f"- {v} vCPU(s): run phase, exit / uffd-block: **{e / b:.2f}x**, exit / uffd-busy: "
                  f"**{e / bz:.2f}x**")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

def apf_experiment(a):
    reps = 1 if a.quick else a.reps
    n, count = (20000, 10) if a.quick else (100000, 60)
    lat = "10ms"
    tmp = tempfile.mkdtemp(prefix="lazyvm-apf-bench.")
    t_start = time.time()
    try:
        snaps = {name: snapshot(a, os.path.join(tmp, name), "64M", work)
                 for name, work in (("both", f"compute:{n}+random:4M:{count}"), ("cpu", f"compute:{n}"),
                                    ("io", f"random:4M:{count}"),
                                    ("short", "scan:2M+random:2M:200+compute:4000"))}
        base = ["--intake", "exit", "--fault-around", "1"]
        cases = {
            "both, apf off": (snaps["both"], base + ["--source-latency", lat, "--apf", "off"]),
            "both, apf user": (snaps["both"], base + ["--source-latency", lat, "--apf", "user",
                                                      "--policy", "hybrid"]),
            "both, apf exitless": (snaps["both"], base + ["--source-latency", lat, "--apf", "exitless",
                                                          "--policy", "hybrid"]),
            "cpu task alone": (snaps["cpu"], base + ["--source-latency", lat, "--apf", "off"]),
            "io task alone": (snaps["io"], base + ["--source-latency", lat, "--apf", "off"]),
            "short, policy async": (snaps["short"], base + ["--apf", "user", "--policy", "async"]),
            "short, policy hybrid": (snaps["short"], base + ["--apf", "user", "--policy", "hybrid"]),
            "short, policy sync": (snaps["short"], base + ["--apf", "user", "--policy", "sync"]),
        }
        results = interleave(reps, cases, lambda k: restore_json(a.lazyvm, cases[k][0], cases[k][1]))
        med = lambda k, f: statistics.median(f(j) for j in results[k])
        run = lambda k: med(k, lambda j: j["run_ms"])
        header("Async page faults: the RFC's experiment and short faults",
               f"1 vCPU, 64 MiB; exit intake (sigbus), fault-around 1; {reps} reps interleaved;"
               f" cells are medians")
        print("| case | run_ms | faults | APFs injected | guest took | spurious | I/O wake-ups | eventfd signals |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k in cases:
            print(f"| {k} | {run(k):.1f} | {med(k, lambda j: j['faults']):.0f} | "
                  f"{med(k, lambda j: j['apf_not_present']):.0f} | "
                  f"{med(k, lambda j: j['guest_apf_not_present']):.0f} | "
                  f"{med(k, lambda j: j['apf_spurious']):.0f} | "
                  f"{med(k, lambda j: j['apf_io_wakeups']):.0f} | "
                  f"{med(k, lambda j: j['apf_notify_signals']):.0f} |")
        off, user = run("both, apf off"), run("both, apf user")
        exitless = run("both, apf exitless")
        ideal = max(run("cpu task alone"), run("io task alone"))
        print(f"\n- compute:{n} + random:4M:{count} at {lat} a fault: apf user is **{(off / user - 1) * 100:.0f}%"
              f" faster** than off ({user:.0f} vs {off:.0f} ms; the RFC reported 26%); ideal overlap"
              f" max(cpu, io) = {ideal:.0f} ms, user is **{user / ideal:.2f}x** of it; exitless"
              f" {exitless:.0f} ms (**{(off / exitless - 1) * 100:.0f}%** faster than off,"
              f" {exitless / ideal:.2f}x of ideal)")
        h, s_ = run("short, policy hybrid"), run("short, policy sync")
        print(f"- short faults: hybrid injects {med('short, policy hybrid', lambda j: j['apf_not_present']):.0f}"
              f" APFs and runs in **{h / s_:.2f}x** the time of sync; async injects"
              f" {med('short, policy async', lambda j: j['apf_not_present']):.0f}"
              f" ({med('short, policy async', lambda j: j['apf_spurious']):.0f} spurious) and runs in"
              f" {run('short, policy async') / s_:.2f}x")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

def nbdkit_delayed(path, delay="1ms"):
    """nbdkit serving path on a free loopback port, every read delayed: (process, uri)."""
    import socket
    s_ = socket.socket(); s_.bind(("127.0.0.1", 0)); port = s_.getsockname()[1]; s_.close()
    server = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--threads", "256",
                               "--filter=delay",
                               "file", path, f"rdelay={delay}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, f"nbd://127.0.0.1:{port}/"

def remote_experiment(a):
    reps = 1 if a.quick else a.reps
    ws_size = "4M" if a.quick else "32M"
    tmp = tempfile.mkdtemp(prefix="lazyvm-remote-bench.")
    t_start = time.time()
    server = None
    try:
        d = snapshot(a, os.path.join(tmp, "snap"), "128M", f"scan:{ws_size}")
        server, uri = nbdkit_delayed(os.path.join(d, "memory"))
        ws = os.path.join(tmp, "ws.bin")
        restore_json(a.lazyvm, d, ["--source", uri, "--record-ws", ws])
        cases = {
            "local file, eager (fully resident)": ["--load", "eager"],
            "local file, lazy": ["--load", "lazy"],
            "nbd 1ms, lazy": ["--source", uri],
            "nbd 1ms, lazy + background": ["--source", uri, "--background-prefetch"],
            "nbd 1ms, working-set replay": ["--source", uri, "--prefetch-ws", ws],
        }
        results = interleave(reps, cases, lambda k: restore_json(a.lazyvm, d, cases[k]))
        med = lambda k, f: statistics.median(f(j) for j in results[k])
        header("Remote memory: NBD with 1 ms a request, prefetch and working-set replay",
               f"Guest: 128 MiB, 1 vCPU, scan:{ws_size} (the same pages every restore); nbdkit file"
               f" plugin + delay filter on loopback; {reps} reps interleaved; cells are medians")
        print("| case | restore_ms | run_ms | total_ms | demand faults | prefetched up front | background |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k in cases:
            print(f"| {k} | {med(k, lambda j: j['restore_ms']):.1f} | {med(k, lambda j: j['run_ms']):.1f} | "
                  f"{med(k, lambda j: j['total_ms']):.1f} | {med(k, lambda j: j['faults']):.0f} | "
                  f"{med(k, lambda j: j['ws_prefetched']):.0f} | {med(k, lambda j: j['pages_background']):.0f} |")
        tot = lambda k: med(k, lambda j: j["total_ms"])
        lazy, replay, resident = tot("nbd 1ms, lazy"), tot("nbd 1ms, working-set replay"), \
            tot("local file, eager (fully resident)")
        print(f"\n- working-set replay vs plain lazy over NBD: **{lazy / replay:.2f}x** faster (target 3x);"
              f" replay vs fully resident: **{replay / resident:.2f}x** (target within 1.3x)")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        if server:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

def migrate_once(lazyvm, tmp, mem, work):
    """One migration on loopback: (source JSON, destination JSON)."""
    err = os.path.join(tmp, "dst.err")
    with open(err, "w") as ef:
        dst = subprocess.Popen([lazyvm, "migrate", "--listen", "127.0.0.1:0", "--accept-timeout", "60s",
                                "--json"], stdout=subprocess.PIPE, stderr=ef, text=True)
    addr = None
    for _ in range(200):
        for line in open(err):
            if line.startswith("lazyvm migrate: listening on "):
                addr = line.split()[-1]
        if addr:
            break
        time.sleep(0.02)
    if not addr:
        dst.kill()
        sys.exit(f"restore_bench: the destination did not listen: {open(err).read()}")
    src = sh([lazyvm, "run", "--mem", mem, "--vcpus", "2", "--workload", work, "--migrate-to", addr,
              "--json"])
    out, _ = dst.communicate(timeout=600)
    try:
        s, d = json.loads(src.stdout.strip().splitlines()[-1]), json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sys.exit(f"restore_bench: migration {mem}: no JSON: {src.stdout}{src.stderr} / {out}")
    if not (s["ok"] and d["ok"]):
        sys.exit(f"restore_bench: migration {mem} failed: {s['error']} / {d['error']}")
    return s, d

def migrate_experiment(a):
    reps = 1 if a.quick else a.reps
    sizes = ["32M", "64M"] if a.quick else ["128M", "512M", "2G"]
    work = "scan:2M+random:2M:100+compute:2000" if a.quick else "scan:16M+random:16M:1000+compute:20000"
    tmp = tempfile.mkdtemp(prefix="lazyvm-migrate-bench.")
    t_start = time.time()
    try:
        shm = tempfile.mkdtemp(prefix="lazyvm-migrate-bench.", dir="/dev/shm")

        def run_one(key):
            kind, mem = key
            if kind == "post-copy":
                s, d = migrate_once(a.lazyvm, tmp, mem, work)
                # interleave() prints restore/run/total; give it the destination's view.
                return dict(d, src=s)
            # Stop-and-copy, what a snapshot-based move does today: the whole
            # memory written to a shared tmpfs, then read back (eager restore).
            snap = os.path.join(shm, "snap")
            shutil.rmtree(snap, ignore_errors=True)
            r = sh([a.lazyvm, "run", "--mem", mem, "--vcpus", "2", "--workload", work,
                    "--snapshot-dir", snap, "--json"])
            s = json.loads(r.stdout.strip().splitlines()[-1])
            d = restore_json(a.lazyvm, snap, ["--load", "eager"])
            shutil.rmtree(snap, ignore_errors=True)
            return dict(d, src=s)
        try:
            results = interleave(reps, [(k, m) for m in sizes for k in ("post-copy", "stop-and-copy")],
                                 run_one)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        post = {m: results[("post-copy", m)] for m in sizes}
        stop = {m: results[("stop-and-copy", m)] for m in sizes}
        med = lambda k, f: statistics.median(f(j) for j in post[k])
        smed = lambda k, f: statistics.median(f(j) for j in stop[k])
        header("Post-copy live migration: downtime, transfer, blocktime and bytes vs memory size",
               f"Guest: 2 vCPUs, workload {work}, migrated at the snapshot point (the run phase runs"
               f" and verifies at the destination); both ends on loopback, NBD from the source's"
               f" built-in server; {reps} reps interleaved; cells are medians")
        print("| memory | downtime_ms | transfer_ms | dest run_ms | blocktime vCPU0 / vCPU1 (ms) | all blocked (ms)"
              " | waits | state KiB | pages sent | zero pages (not sent) | MiB sent | sent / memory |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in sizes:
            mib = int(m[:-1]) * (1024 if m.endswith("G") else 1)
            sent = med(m, lambda j: j["src"]["bytes_sent"])
            print(f"| {m} | {med(m, lambda j: j['src']['downtime_ms']):.1f} | "
                  f"{med(m, lambda j: j['src']['transfer_ms']):.1f} | {med(m, lambda j: j['run_ms']):.1f} | "
                  f"{med(m, lambda j: j['blocktime_ms'][0]):.1f} / {med(m, lambda j: j['blocktime_ms'][1]):.1f} | "
                  f"{med(m, lambda j: j['blocktime_all_ms']):.2f} | {med(m, lambda j: sum(j['blocktime_faults'])):.0f} | "
                  f"{med(m, lambda j: j['src']['state_bytes']) / 1024:.0f} | "
                  f"{med(m, lambda j: j['src']['pages'] - j['src']['pages_zero']):.0f} | "
                  f"{med(m, lambda j: j['src']['pages_zero']):.0f} | {sent / 2**20:.1f} | "
                  f"{sent / 2**20 / mib:.3f} |")
        print("\nAgainst stop-and-copy (the VM paused while its whole memory is written to a shared"
              " tmpfs and read back: `run --snapshot-dir` on /dev/shm, then `restore --load eager`):\n")
        print("| memory | post-copy downtime_ms | stop-and-copy downtime_ms (write + read) | ratio |"
              " post-copy MiB sent | stop-and-copy MiB moved |")
        print("|---|---:|---:|---:|---:|---:|")
        for m in sizes:
            mib = int(m[:-1]) * (1024 if m.endswith("G") else 1)
            pd = med(m, lambda j: j["src"]["downtime_ms"])
            sd = smed(m, lambda j: j["src"]["snapshot_ms"] + j["restore_ms"])
            print(f"| {m} | {pd:.1f} | {sd:.1f} ({smed(m, lambda j: j['src']['snapshot_ms']):.0f} + "
                  f"{smed(m, lambda j: j['restore_ms']):.0f}) | **{sd / pd:.0f}x** | "
                  f"{med(m, lambda j: j['src']['bytes_sent']) / 2**20:.1f} | {mib} |")
        lo, hi = sizes[0], sizes[-1]
        dt = lambda k: med(k, lambda j: j["src"]["downtime_ms"])
        print(f"\n- downtime {hi} / {lo}: **{dt(hi) / dt(lo):.2f}x** for "
              f"{int(hi[:-1]) * (1024 if hi.endswith('G') else 1) // int(lo[:-1])}x the memory")
        print(f"\nBenchmark wall time: {time.time() - t_start:.1f} s\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
