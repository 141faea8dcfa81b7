#!/usr/bin/env python3
"""Measure dagsnap against the git CLI on a synthetic DAG repository.

Everything runs in one process tree on one disk, so the ratios compare like with like on a noisy
machine. Each figure is the median of --runs runs. CPU and peak RSS come from wait4(2), which
includes the child processes a command waits for (git's upload-pack and index-pack; the
upload-pack that gix starts for a file:// remote).

Usage: bench/bench.py [--files 10000] [--dirs 200] [--runs 5] [--dagsnap target/release/dagsnap]
"""

import argparse
import os
import platform
import shutil
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


def env():
    e = dict(os.environ)
    e.update(GIT_ENV)
    e["DAGSNAP_LOG_FORMAT"] = "json"
    return e


class Measure:
    def __init__(self, wall, cpu, rss_kib):
        self.wall, self.cpu, self.rss_kib = wall, cpu, rss_kib


def run(cmd, cwd=None):
    """Run `cmd`; return wall seconds, CPU seconds (user+sys incl. waited-for children) and the
    peak RSS of the largest process involved.

    Dirty pages are flushed first so that no measurement pays for the writes of the previous one
    (dagsnap's syncfs would otherwise flush what the git baseline left in the page cache). Peak
    RSS comes from GNU time, because a child forked from this Python process inherits the
    parent's high-water mark until it execs."""
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
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(rss_file.name) as f:
        rss_kib = int(f.read().strip().splitlines()[-1] or 0)
    os.unlink(rss_file.name)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr.decode(errors='replace')}")
    return Measure(wall, usage.ru_utime + usage.ru_stime, rss_kib)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, env=env(), check=True, stdout=subprocess.DEVNULL)


def make_repo(path, files, dirs):
    """A repository of `files` Python files of about 1 KiB in `dirs` directories, via fast-import."""
    os.makedirs(path)
    git("init", "-q", "-b", "main", cwd=path)
    lines = ["commit refs/heads/main", "committer bench <bench@example.com> 1700000000 +0000", "data 7", "initial"]
    chunks = ["\n".join(lines) + "\n"]
    for i in range(files):
        body = (f"# dag {i}\nfrom airflow import DAG\n" + f"TASKS = {list(range(i % 50, i % 50 + 40))}\n" * 8).encode()
        chunks.append(f"M 100644 inline dags/d{i % dirs:03}/dag_{i:05}.py\ndata {len(body)}\n")
        chunks.append(body.decode() + "\n")
    chunks.append("done\n")
    subprocess.run(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=path,
        env=env(),
        input="".join(chunks).encode(),
        check=True,
    )
    git("checkout", "-q", "main", cwd=path)


def commit_one_file(repo, n):
    target = os.path.join(repo, "dags/d000/dag_00000.py")
    with open(target, "a") as f:
        f.write(f"# change {n}\n")
    git("commit", "-q", "-am", f"change {n}", cwd=repo)


def dagsnap_once(binary, url, root, cache):
    return run([binary, "sync", "--one-time", "--repo", url, "--root", root, "--cache-dir", cache])


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11..14] = utime, stime, cutime, cstime (after the state field at index 0)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + stime, cutime + cstime


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def idle_loop(binary, url, root, cache, seconds, period="100ms"):
    """Per-poll CPU of a running loop with nothing new on the remote, and its memory."""
    log_path = os.path.join(os.path.dirname(root), "idle.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, "sync", "--repo", url, "--root", root, "--cache-dir", cache, "--period", period, "--log-level", "debug"],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.time() + 60
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
        rss = proc_status_kib(proc.pid, "VmRSS")
        hwm = proc_status_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait()
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    return {
        "polls": polls,
        "self_ms": (self_after - self_before) * tick * 1000 / max(polls, 1),
        "children_ms": (children_after - children_before) * tick * 1000 / max(polls, 1),
        "rss_kib": rss,
        "hwm_kib": hwm,
    }


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


def median(values):
    return statistics.median(values)


def fmt_s(seconds):
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=int, default=20)
    parser.add_argument("--dagsnap", default="target/release/dagsnap")
    parser.add_argument("--workdir", default=None, help="where to build repositories (default: a temp dir)")
    args = parser.parse_args()
    binary = os.path.abspath(args.dagsnap)
    if not os.access("/usr/bin/time", os.X_OK):
        sys.exit("GNU time is needed for peak RSS: apt-get install time")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found; run `cargo build --release` first (bench/run does)")

    work = tempfile.mkdtemp(prefix="dagsnap-bench-", dir=args.workdir)
    try:
        source = os.path.join(work, "source")
        started = time.perf_counter()
        make_repo(source, args.files, args.dirs)
        url = "file://" + source
        print(f"# repository: {args.files} files in {args.dirs} directories, built in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        rows = []

        # First publish vs git clone --depth 1 (which includes the checkout).
        first, clone = [], []
        for i in range(args.runs):
            run_dir = os.path.join(work, f"first-{i}")
            first.append(dagsnap_once(binary, url, os.path.join(run_dir, "root"), os.path.join(run_dir, "cache")))
            clone.append(run(["git", "clone", "-q", "--depth", "1", url, os.path.join(run_dir, "clone")]))
            rm_tree(run_dir)
        rows.append(("first publish", first, "git clone --depth 1", clone))

        # Update after a one-file commit: dagsnap with its cache and root from the previous
        # publish, vs a fresh shallow clone (what a checkout-per-revision tool does), and vs
        # fetch + reset in an existing clone (git-sync v3's in-place update, unsafe for readers).
        keep = os.path.join(work, "steady")
        root, cache, clone_dir = os.path.join(keep, "root"), os.path.join(keep, "cache"), os.path.join(keep, "clone")
        dagsnap_once(binary, url, root, cache)
        run(["git", "clone", "-q", "--depth", "1", url, clone_dir])
        update, fresh_clone, fetch_reset = [], [], []
        for i in range(args.runs):
            commit_one_file(source, i)
            update.append(dagsnap_once(binary, url, root, cache))
            fresh = os.path.join(work, f"fresh-{i}")
            fresh_clone.append(run(["git", "clone", "-q", "--depth", "1", url, fresh]))
            rm_tree(fresh)
            fr1 = run(["git", "fetch", "-q", "--depth", "1", "origin", "main"], cwd=clone_dir)
            fr2 = run(["git", "reset", "-q", "--hard", "FETCH_HEAD"], cwd=clone_dir)
            fetch_reset.append(Measure(fr1.wall + fr2.wall, fr1.cpu + fr2.cpu, max(fr1.rss_kib, fr2.rss_kib)))
        rows.append(("1-file update", update, "git clone --depth 1", fresh_clone))
        rows.append(("1-file update", update, "git fetch + reset --hard", fetch_reset))

        # Unchanged poll, as a whole process: dagsnap --one-time vs git ls-remote and git fetch.
        unchanged, ls_remote, fetch = [], [], []
        for _ in range(args.runs):
            unchanged.append(dagsnap_once(binary, url, root, cache))
            ls_remote.append(run(["git", "ls-remote", url, "refs/heads/main"]))
            fetch.append(run(["git", "fetch", "-q", "--depth", "1", "origin", "main"], cwd=clone_dir))
        rows.append(("unchanged poll (process)", unchanged, "git ls-remote", ls_remote))
        rows.append(("unchanged poll (process)", unchanged, "git fetch", fetch))

        idle = idle_loop(binary, url, root, cache, args.idle_seconds)

        print(f"## {args.files} files in {args.dirs} directories, median of {args.runs} runs\n")
        print("| operation | dagsnap wall | baseline | baseline wall | wall ratio | dagsnap CPU | baseline CPU | dagsnap peak RSS | baseline peak RSS |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, ours, base_name, base in rows:
            ow, bw = median([m.wall for m in ours]), median([m.wall for m in base])
            oc, bc = median([m.cpu for m in ours]), median([m.cpu for m in base])
            orss, brss = median([m.rss_kib for m in ours]), median([m.rss_kib for m in base])
            print(
                f"| {name} | {fmt_s(ow)} | {base_name} | {fmt_s(bw)} | {bw / ow:.1f}x faster | "
                f"{fmt_s(oc)} | {fmt_s(bc)} | {orss / 1024:.1f} MiB | {brss / 1024:.1f} MiB |"
            )
        ls_cpu = median([m.cpu for m in ls_remote]) * 1000
        fetch_cpu = median([m.cpu for m in fetch]) * 1000
        print()
        print(f"Idle loop (`--period 100ms`, {idle['polls']} unchanged polls in {args.idle_seconds} s):")
        print(f"- dagsnap CPU per poll: {idle['self_ms']:.2f} ms in dagsnap itself, "
              f"{idle['children_ms']:.2f} ms in the `git upload-pack` that serves a file:// remote "
              f"(on a network remote that runs on the server)")
        print(f"- whole-process baselines: `git ls-remote` {ls_cpu:.1f} ms CPU, `git fetch` {fetch_cpu:.1f} ms CPU "
              f"(both include their upload-pack): dagsnap's own work is {fetch_cpu / max(idle['self_ms'], 0.01):.0f}x less than `git fetch`")
        print(f"- memory of the idle loop: {idle['rss_kib'] / 1024:.1f} MiB resident, {idle['hwm_kib'] / 1024:.1f} MiB peak since start")
        print()
        print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
              f"{subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.strip()}; "
              f"date {time.strftime('%Y-%m-%d')}")
    finally:
        rm_tree(work)


if __name__ == "__main__":
    main()
