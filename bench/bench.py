#!/usr/bin/env python3
"""Benchmark suite: dagsnap against the git CLI and the `cp -al` floor, on synthetic DAG repos.

For each repository shape (1k, 10k, 100k files of about 4 KiB, plus three 8 MiB binary files),
in the same run and on the same disk, against the same file:// remote:

- first publish: dagsnap vs `git clone --depth 1` vs `git clone --no-checkout` + `checkout-index`
- updates after 1 changed file, after 1% changed files, after a directory rename: dagsnap vs
  `git fetch` + `git reset --hard` in a clone, vs a fresh `git worktree add`, vs the floor
  (`cp -al` of the previous tree plus writing the change)
- an unchanged poll: dagsnap (whole process, and per poll inside a running loop) vs
  `git ls-remote` and `git fetch`
- disk used by 5 retained snapshots vs 5 full checkouts
- peak RSS of every command

Each figure is the median of --runs runs. Before every measured command the page cache's dirty
data is flushed (sync), so no command pays for the previous one's writeback. CPU is user+system
including waited-for children; peak RSS is the largest process's (GNU time).

Usage: bench/bench.py [--shapes 1k,10k,100k] [--runs 5] [--idle-seconds 20]
"""

import argparse
import itertools
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}

SHAPES = {
    "1k": (1_000, 50),
    "10k": (10_000, 200),
    "100k": (100_000, 2_000),
}
FILE_BYTES = 4096
BINARIES = 3
BINARY_BYTES = 8 << 20


def env():
    e = dict(os.environ)
    e.update(GIT_ENV)
    e["DAGSNAP_LOG_FORMAT"] = "json"
    return e


class Measure:
    def __init__(self, wall, cpu, rss_kib):
        self.wall, self.cpu, self.rss_kib = wall, cpu, rss_kib

    def __add__(self, other):
        return Measure(self.wall + other.wall, self.cpu + other.cpu, max(self.rss_kib, other.rss_kib))


def run(cmd, cwd=None):
    """Run `cmd` after flushing dirty pages; return wall, CPU (incl. children) and peak RSS."""
    os.sync()
    rss_file = tempfile.NamedTemporaryFile(prefix="rss-", delete=False)
    rss_file.close()
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-q", "-f", "%M", "-o", rss_file.name, *cmd],
        cwd=cwd,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(rss_file.name) as f:
        lines = f.read().strip().splitlines()
    os.unlink(rss_file.name)
    if code != 0:
        sys.exit(f"command failed ({code}): {' '.join(cmd)}\n{stderr.decode(errors='replace')}")
    return Measure(wall, usage.ru_utime + usage.ru_stime, int(lines[-1]) if lines else 0)


def timed_python(fn):
    """Time Python work (the floor's file writes) the same way: flush first, wall and CPU."""
    os.sync()
    before = os.times()
    start = time.perf_counter()
    fn()
    after = os.times()
    return Measure(time.perf_counter() - start, (after.user - before.user) + (after.system - before.system), 0)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, env=env(), check=True, stdout=subprocess.DEVNULL)


def git_out(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, env=env(), check=True, capture_output=True, text=True).stdout.strip()


def rm_tree(path):
    """Delete a tree that holds read-only snapshots (as a non-root user too)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    if os.path.isdir(path):
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def file_path(i, dirs):
    return f"dags/d{i % dirs:04}/dag_{i:06}.py"


def file_body(i, rng_seed):
    """About 4 KiB of DAG-like Python; similar across files, as real DAG repositories are."""
    rng = random.Random(rng_seed * 1_000_003 + i)
    tasks = "\n".join(
        f"    t{j} = BashOperator(task_id='step_{j}_{rng.randrange(10**6)}', bash_command='run.sh {rng.randrange(10**9)}')"
        for j in range(28)
    )
    body = (
        f"# dag {i}\nfrom airflow import DAG\nfrom airflow.operators.bash import BashOperator\n\n"
        f"with DAG('dag_{i}', schedule='@hourly', catchup=False) as dag:\n{tasks}\n"
    )
    return (body + "#" * max(0, FILE_BYTES - len(body) - 1) + "\n")[:FILE_BYTES].encode()


def import_repo(path, files):
    """A repository of `files` ((path, bytes) pairs, any iterable) in one commit on `main`,
    made with git fast-import, checked out."""
    os.makedirs(path)
    git("init", "-q", "-b", "main", cwd=path)
    importer = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"], cwd=path, env=env(), stdin=subprocess.PIPE
    )
    out = importer.stdin
    out.write(b"commit refs/heads/main\ncommitter bench <bench@example.com> 1700000000 +0000\ndata 7\ninitial\n")
    for name, body in files:
        out.write(f"M 100644 inline {name}\ndata {len(body)}\n".encode() + body + b"\n")
    out.write(b"done\n")
    out.close()
    if importer.wait() != 0:
        sys.exit("fast-import failed")
    git("checkout", "-q", "main", cwd=path)


def dag_files(files, dirs):
    """`files` DAG-like files of about 4 KiB in `dirs` directories."""
    return ((file_path(i, dirs), file_body(i, 0)) for i in range(files))


def make_repo(path, files, dirs, binaries=BINARIES):
    """`files` DAG-like files in `dirs` directories, plus `binaries` random 8 MiB files."""
    blob_rng = random.Random(42)
    blobs = ((f"assets/model_{b}.bin", blob_rng.randbytes(BINARY_BYTES)) for b in range(binaries))
    import_repo(path, itertools.chain(dag_files(files, dirs), blobs))


def change_one(repo, serial, dirs):
    """Commit a new content for one of the first 1,000 files; its path."""
    name = file_path(serial * 37 % 1000, dirs)
    with open(os.path.join(repo, name), "wb") as f:
        f.write(file_body(serial, serial + 1))
    git("commit", "-q", "-am", f"change {serial}", cwd=repo)
    return name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Change:
    """One commit's worth of change to the source repo, replayable onto a plain tree (the floor)."""

    def __init__(self, kind, files, dirs, serial):
        self.kind, self.files, self.dirs, self.serial = kind, files, dirs, serial
        rng = random.Random(serial)
        if kind == "1 file":
            self.changed = [rng.randrange(files)]
        elif kind == "1% files":
            self.changed = rng.sample(range(files), max(1, files // 100))
        else:
            self.changed = []
        self.renamed = f"dags/d{serial % dirs:04}"

    def apply(self, tree):
        """Make the change in a working tree (the source checkout, or the floor's copy)."""
        if self.kind == "dir rename":
            target = os.path.join(tree, self.renamed)
            if os.path.isdir(target):
                os.rename(target, target + f"_r{self.serial}")
            return
        for i in self.changed:
            p = os.path.join(tree, file_path(i, self.dirs))
            if not os.path.exists(p):
                continue
            if os.path.exists(p) and not os.access(p, os.W_OK):
                os.unlink(p)  # hard-linked into the floor's copy: replace, never write through
            with open(p, "wb") as f:
                f.write(file_body(i, self.serial + 1))

    def commit(self, source):
        self.apply(source)
        git("add", "-A", cwd=source)
        git("commit", "-q", "-m", f"{self.kind} {self.serial}", cwd=source)
        return git_out("rev-parse", "HEAD", cwd=source)


def parse_args(parser):
    """`parser`'s arguments plus --binary, the dagsnap to measure (the release build by
    default), made absolute."""
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--binary", default=os.path.join(here, "..", "target", "release", "dagsnap"))
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    return args


def dagsnap_once(binary, url, root, cache, *extra):
    return run([binary, "sync", "--one-time", "--repo", url, "--root", root, "--cache-dir", cache, *extra])


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + stime, cutime + cstime


def proc_threads_cpu_ns(pid):
    """CPU time of each of `pid`'s threads, in nanoseconds (/proc/<pid>/task/*/schedstat): the
    precision /proc/<pid>/stat's clock ticks lack when a process spends a few ms a second."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return times


def cpu_between(pid, before_ns, before_ticks):
    """`pid`'s CPU seconds since `before_ns` (proc_threads_cpu_ns) and `before_ticks`
    (proc_cpu_ticks): exact from the threads' own counters when every thread measured at the
    start is still there, else from the process's clock ticks (which keep ended threads')."""
    after_ns, after_ticks = proc_threads_cpu_ns(pid), proc_cpu_ticks(pid)[0]
    if set(before_ns) <= set(after_ns):
        return sum(ns - before_ns.get(tid, 0) for tid, ns in after_ns.items()) / 1e9
    return (after_ticks - before_ticks) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def idle_loop(binary, url, root, cache, seconds, workdir, period="100ms"):
    """Per-poll CPU and wall of a running loop with nothing new on the remote, and its memory."""
    log_path = os.path.join(workdir, "idle.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, "sync", "--repo", url, "--root", root, "--cache-dir", cache, "--period", period,
             "--log-level", "debug"],
            env=env(), stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        deadline = time.time() + 120
        while "up to date" not in open(log_path).read():
            if time.time() > deadline:
                sys.exit("the idle loop never reported an unchanged poll")
            time.sleep(0.05)
        time.sleep(1)
        polls_before = open(log_path).read().count("up to date")
        self_before, children_before = proc_cpu_ticks(proc.pid)
        time.sleep(seconds)
        self_after, children_after = proc_cpu_ticks(proc.pid)
        polls = open(log_path).read().count("up to date") - polls_before
        rss, hwm = proc_status_kib(proc.pid, "VmRSS"), proc_status_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait()
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    return {
        "polls": polls,
        "self_ms": (self_after - self_before) * tick_ms / max(polls, 1),
        "children_ms": (children_after - children_before) * tick_ms / max(polls, 1),
        "rss_kib": rss,
        "hwm_kib": hwm,
    }


def du_kib(*paths):
    """Disk used, counting each hard-linked inode once (one du invocation)."""
    out = subprocess.run(["du", "-sck", *paths], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def med(measures, attr):
    return statistics.median(getattr(m, attr) for m in measures)


def fmt_s(seconds):
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def bench_shape(name, files, dirs, runs, idle_seconds, binary, workdir):
    work = tempfile.mkdtemp(prefix=f"dagsnap-bench-{name}-", dir=workdir)
    try:
        return _bench_shape(name, files, dirs, runs, idle_seconds, binary, work)
    finally:
        rm_tree(work)


def _bench_shape(name, files, dirs, runs, idle_seconds, binary, work):
    source = os.path.join(work, "source")
    started = time.perf_counter()
    make_repo(source, files, dirs)
    url = "file://" + source
    log = lambda msg: print(f"# [{name}] {msg}", file=sys.stderr, flush=True)
    log(f"repository built in {time.perf_counter() - started:.0f} s")
    rows = []  # (operation, tool, [Measure])

    # First publish.
    ours, shallow, checkout_index = [], [], []
    for i in range(runs):
        d = os.path.join(work, f"first-{i}")
        ours.append(dagsnap_once(binary, url, os.path.join(d, "root"), os.path.join(d, "cache")))
        shallow.append(run(["git", "clone", "-q", "--depth", "1", url, os.path.join(d, "shallow")]))
        full = os.path.join(d, "full")
        checkout_index.append(
            run(["git", "clone", "-q", "--no-checkout", url, full])
            + run(["git", "checkout-index", "-a", f"--prefix={os.path.join(d, 'tree')}/"], cwd=full)
        )
        rm_tree(d)
        log(f"first publish run {i + 1}/{runs}")
    rows += [("first publish", "dagsnap", ours), ("first publish", "git clone --depth 1", shallow),
             ("first publish", "git clone + checkout-index", checkout_index)]

    # Steady state for updates: a dagsnap root, a shallow clone, a full clone for worktrees.
    steady = os.path.join(work, "steady")
    root, cache = os.path.join(steady, "root"), os.path.join(steady, "cache")
    clone, full = os.path.join(steady, "clone"), os.path.join(steady, "full")
    dagsnap_once(binary, url, root, cache)
    git("clone", "-q", "--depth", "1", url, clone, cwd=work)
    git("clone", "-q", "--no-checkout", url, full, cwd=work)
    serial = 0
    for kind in ["1 file", "1% files", "dir rename"]:
        ours, fetch_reset, worktree, floor = [], [], [], []
        for i in range(runs):
            serial += 1
            change = Change(kind, files, dirs, serial)
            previous = os.path.realpath(os.path.join(root, "current"))
            change.commit(source)
            ours.append(dagsnap_once(binary, url, root, cache))
            fetch_reset.append(
                run(["git", "fetch", "-q", "--depth", "1", "origin", "main"], cwd=clone)
                + run(["git", "reset", "-q", "--hard", "FETCH_HEAD"], cwd=clone)
            )
            git("fetch", "-q", "origin", "main", cwd=full)
            wt = os.path.join(steady, f"wt-{serial}")
            worktree.append(run(["git", "worktree", "add", "-q", "--detach", wt, "FETCH_HEAD"], cwd=full))
            git("worktree", "remove", "--force", wt, cwd=full)
            copy = os.path.join(steady, f"floor-{serial}")
            floor.append(run(["cp", "-al", previous, copy]) + timed_python(lambda: change.apply(copy)))
            rm_tree(copy)
            log(f"update '{kind}' run {i + 1}/{runs}")
        rows += [(f"update: {kind}", "dagsnap", ours), (f"update: {kind}", "git fetch + reset --hard", fetch_reset),
                 (f"update: {kind}", "git worktree add (fresh)", worktree), (f"update: {kind}", "floor: cp -al + write change", floor)]

    # Unchanged poll.
    ours, ls_remote, fetch = [], [], []
    for _ in range(runs):
        ours.append(dagsnap_once(binary, url, root, cache))
        ls_remote.append(run(["git", "ls-remote", url, "refs/heads/main"]))
        fetch.append(run(["git", "fetch", "-q", "--depth", "1", "origin", "main"], cwd=clone))
    rows += [("unchanged poll (process)", "dagsnap", ours), ("unchanged poll (process)", "git ls-remote", ls_remote),
             ("unchanged poll (process)", "git fetch", fetch)]
    idle = idle_loop(binary, url, root, cache, idle_seconds, steady)
    log("idle loop measured")

    # Disk: 5 retained snapshots after 5 one-file updates vs 5 full checkouts.
    disk_root, disk_cache = os.path.join(work, "disk", "root"), os.path.join(work, "disk", "cache")
    dagsnap_once(binary, url, disk_root, disk_cache)
    for _ in range(4):
        serial += 1
        Change("1 file", files, dirs, serial).commit(source)
        dagsnap_once(binary, url, disk_root, disk_cache)
    snapshots = os.path.join(disk_root, ".dagsnap", "snapshots")
    retained = len([n for n in os.listdir(snapshots) if not n.startswith(".")])
    snapshots_kib = du_kib(snapshots)
    one_checkout_kib = du_kib(os.path.realpath(os.path.join(disk_root, "current")))
    disk = (retained, snapshots_kib, one_checkout_kib)
    return rows, idle, disk


def report(name, files, runs, rows, idle, disk):
    print(f"\n### {name}: {files:,} files of 4 KiB + {BINARIES} x {BINARY_BYTES >> 20} MiB binaries, median of {runs} runs\n")
    print("| operation | tool | wall | CPU | peak RSS | dagsnap is |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    ours_by_op = {op: ms for op, tool, ms in rows if tool == "dagsnap"}
    for op, tool, ms in rows:
        wall, cpu, rss = med(ms, "wall"), med(ms, "cpu"), med(ms, "rss_kib") / 1024
        if tool == "dagsnap":
            ratio = ""
        else:
            ours = med(ours_by_op[op], "wall")
            ratio = f"{wall / ours:.1f}x faster" if wall >= ours else f"{ours / wall:.1f}x slower"
        print(f"| {op} | {tool} | {fmt_s(wall)} | {fmt_s(cpu)} | {rss:.1f} MiB | {ratio} |")
    fetch_cpu = med(next(ms for op, tool, ms in rows if tool == "git fetch"), "cpu") * 1000
    print(
        f"\nIdle loop (`--period 100ms`, {idle['polls']} unchanged polls): "
        f"**{idle['self_ms']:.2f} ms CPU per poll in dagsnap**, plus {idle['children_ms']:.2f} ms in the "
        f"`git upload-pack` serving the file:// remote (server side on a real remote). `git fetch`: {fetch_cpu:.1f} ms "
        f"=> dagsnap's own poll is {fetch_cpu / max(idle['self_ms'], 0.01):.0f}x cheaper. "
        f"Memory: {idle['rss_kib'] / 1024:.1f} MiB resident, {idle['hwm_kib'] / 1024:.1f} MiB peak."
    )
    retained, snapshots_kib, one_kib = disk
    print(
        f"\nDisk: {retained} retained snapshots take {snapshots_kib / 1024:.1f} MiB = "
        f"**{snapshots_kib / one_kib:.2f}x one checkout** ({one_kib / 1024:.1f} MiB); "
        f"{retained} full checkouts would take {retained:.0f}x."
    )
    update_rows = {(op, tool): ms for op, tool, ms in rows}
    ours_1 = med(update_rows[("update: 1 file", "dagsnap")], "wall")
    wt_1 = med(update_rows[("update: 1 file", "git worktree add (fresh)")], "wall")
    floor_1 = med(update_rows[("update: 1 file", "floor: cp -al + write change")], "wall")
    print(
        f"\n1-file update: {wt_1 / ours_1:.1f}x faster than a fresh `git worktree add`, "
        f"{ours_1 / floor_1:.2f}x the `cp -al` floor."
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1k,10k,100k")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=int, default=20)
    parser.add_argument("--dagsnap", default="target/release/dagsnap")
    parser.add_argument("--workdir", default=None, help="where to build repositories (default: the temp dir)")
    args = parser.parse_args()
    binary = os.path.abspath(args.dagsnap)
    if not os.access("/usr/bin/time", os.X_OK):
        sys.exit("GNU time is needed for peak RSS: apt-get install time")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found; run `cargo build --release` first (bench/run does)")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"{git_out('--version', cwd='.')}, dagsnap {git_out('rev-parse', '--short', 'HEAD', cwd=os.path.dirname(os.path.abspath(__file__)))}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    for name in args.shapes.split(","):
        files, dirs = SHAPES[name]
        rows, idle, disk = bench_shape(name, files, dirs, args.runs, args.idle_seconds, binary, args.workdir)
        report(name, files, args.runs, rows, idle, disk)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
