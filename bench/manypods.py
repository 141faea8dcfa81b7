#!/usr/bin/env python3
"""Many pods, one volume: N publishers (`dagsnap sync` loops, each with its own cache, as N pods
would run) on one root on bench/slowfs.c's volume (1 ms per metadata operation, as an NFS
client waits for its server), R readers reading every file through the link, a commit pushed
every 0.5 s for D seconds.

Reports: failed reads, reader passes (and how many mixed two commits, as a pass through the link
may when it straddles a swap), backward link moves, the lag from each push until the link names
that commit or a newer one (p50/p95/max), CPU per publisher, and what the publishers cost the
volume while idle (metadata operations per poll, from slowfs's count, the readers stopped):
what hurts an NFS server when 100 pods poll it.

Needs libfuse3-dev and pkg-config (to build bench/slowfs.c) and /dev/fuse.

Usage: bench/manypods.py [--publishers 8] [--readers 100] [--seconds 120] [--every 0.5]
                         [--period 1s] [--files 50] [--idle 30]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netvol  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DAGSNAP = os.path.join(HERE, "..", "target", "release", "dagsnap")


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--period", default="1s")
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--idle", type=float, default=30)
    parser.add_argument("--delay", default="1ms")
    parser.add_argument("--binary", default=DAGSNAP,
                        help="the dagsnap to run (operation counts do not depend on the build)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        count_file = os.path.join(work, "slowfs.count")
        os.environ["SLOWFS_COUNT_FILE"] = count_file
        volume = netvol.Volume(work, args.delay)
        processes = []
        try:
            remote = os.path.join(work, "remote.git")
            git("init", "-q", "--bare", "-b", "main", remote)
            worktree = os.path.join(work, "worktree")
            git("clone", "-q", remote, worktree)
            git("config", "user.name", "Bench", cwd=worktree)
            git("config", "user.email", "bench@example.com", cwd=worktree)

            def push(n):
                os.makedirs(os.path.join(worktree, "dags"), exist_ok=True)
                for k in range(args.files):
                    with open(os.path.join(worktree, "dags", f"dag_{k}.py"), "w") as f:
                        f.write(f"COMMIT = {n}\n")
                git("add", "-A", cwd=worktree)
                git("commit", "-q", "-m", f"commit {n}", cwd=worktree)
                commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=worktree, check=True,
                                        capture_output=True, text=True).stdout.strip()
                git("push", "-q", "origin", "HEAD:main", cwd=worktree)
                return commit

            numbers = {push(0): 0}
            root = os.path.join(volume.mount, "root")
            for i in range(args.publishers):
                log = open(os.path.join(work, f"publisher-{i}.log"), "w")
                processes.append(subprocess.Popen(
                    [os.path.abspath(args.binary), "sync", "--repo", f"file://{remote}", "--root", root,
                     "--cache-dir", os.path.join(work, f"cache-{i}"), "--period", args.period],
                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))
            link = os.path.join(root, "current")
            deadline = time.time() + 60
            while not os.path.exists(os.path.join(link, "dags", "dag_0.py")):
                if time.time() > deadline:
                    sys.exit("no publisher published the first commit within 60 s")
                time.sleep(0.05)

            stop = threading.Event()
            seen = []  # (time, commit number) of the link, as it changes
            reads = {"passes": 0, "mixed": 0, "failed": 0, "errors": []}
            lock = threading.Lock()

            def watch_link():
                last = None
                while not stop.is_set():
                    try:
                        target = os.path.basename(os.readlink(link))
                    except OSError:
                        target = None
                    if target != last and target in numbers:
                        seen.append((time.time(), numbers[target]))
                        last = target
                    time.sleep(0.005)

            def read_passes():
                while not stop.is_set():
                    try:
                        names = os.listdir(os.path.join(link, "dags"))
                        commits = set()
                        for name in names:
                            with open(os.path.join(link, "dags", name)) as f:
                                commits.add(f.read())
                        with lock:
                            reads["passes"] += 1
                            reads["mixed"] += len(commits) > 1
                    except OSError as e:
                        with lock:
                            reads["failed"] += 1
                            if len(reads["errors"]) < 5:
                                reads["errors"].append(repr(e))

            threads = [threading.Thread(target=watch_link)]
            threads += [threading.Thread(target=read_passes) for _ in range(args.readers)]
            for t in threads:
                t.start()
            cpu_before = [cpu_seconds(p.pid) for p in processes]
            pushes = []  # (time, number)
            started = time.time()
            n = 0
            while time.time() - started < args.seconds:
                n += 1
                commit = push(n)
                numbers[commit] = n
                pushes.append((time.time(), n))
                time.sleep(max(0.0, started + n * args.every - time.time()))
            time.sleep(10)
            stop.set()
            for t in threads:
                t.join()
            busy_cpu = [cpu_seconds(p.pid) - b for p, b in zip(processes, cpu_before)]

            backward = sum(1 for (_, a), (_, b) in zip(seen, seen[1:]) if b < a)
            lags = []
            for pushed_at, number in pushes:
                live = next((t for t, m in seen if m >= number and t >= pushed_at), None)
                if live is not None:
                    lags.append(live - pushed_at)
            missed = len(pushes) - len(lags)

            # The publishers alone, idle: metadata operations per poll.
            time.sleep(3)
            with open(count_file) as f:
                before_idle = int(f.read())
            idle_cpu_before = [cpu_seconds(p.pid) for p in processes]
            time.sleep(args.idle)
            with open(count_file) as f:
                after_idle = int(f.read())
            idle_cpu = [cpu_seconds(p.pid) - b for p, b in zip(processes, idle_cpu_before)]
            period = float(args.period.rstrip("s"))
            polls = args.publishers * args.idle / period
        finally:
            for p in processes:
                p.terminate()
            for p in processes:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
            volume.close()

    print(f"{args.publishers} publishers (--period {args.period}), {args.readers} readers, a commit every "
          f"{args.every} s for {args.seconds:.0f} s on a {args.delay} volume:\n")
    print("| | value |")
    print("| --- | ---: |")
    print(f"| commits pushed | {len(pushes)} |")
    print(f"| reader passes | {reads['passes']} |")
    print(f"| failed reads | {reads['failed']} |")
    print(f"| passes that mixed two commits | {reads['mixed']} ({100 * reads['mixed'] / max(reads['passes'], 1):.1f} %) |")
    print(f"| backward link moves | {backward} |")
    print(f"| push to live: p50 / p95 / max | {percentile(lags, 50):.2f} / {percentile(lags, 95):.2f} / {max(lags, default=float('nan')):.2f} s |")
    print(f"| pushes never seen live (superseded within 5 ms) | {missed} |")
    print(f"| CPU per publisher while commits arrived | {statistics.mean(busy_cpu) / args.seconds * 100:.1f} % of a core |")
    print(f"| CPU per publisher, idle | {statistics.mean(idle_cpu) / args.idle * 1000 / (1 / period):.2f} ms per poll |")
    print(f"| volume metadata operations per idle poll | {(after_idle - before_idle) / polls:.1f} |")
    if reads["errors"]:
        print("\nread errors:", "; ".join(reads["errors"]))


if __name__ == "__main__":
    main()
