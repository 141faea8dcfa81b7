#!/usr/bin/env python3
"""Time to live DAGs: from `git push` to the link showing the pushed commit, for a repository of
--files files (bench.py's DAG-like files), measured in one run for:

- dagsnap polling with --period (the Airflow chart's git-sync default is 10 s);
- the same loop, and a `POST /sync` sent right after the push (what a push webhook does);
- git-sync v4 polling with the same period (tests/fixtures/git-sync-v4.sh, a step-for-step
  model of git-sync's publish: git-sync itself is not packaged here).

Each push changes one file. The clock starts before `git push` and stops when the link's
target names the commit (checked every 2 ms). The remote is a bare repository over file://.

Usage: bench/ttl.py [--files 10000] [--period 10] [--pushes 5] [--triggered 10]
"""

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GIT_SYNC = os.path.join(HERE, "..", "tests", "fixtures", "git-sync-v4.sh")


def shows(link, commit):
    try:
        return os.path.basename(os.readlink(link)) == commit
    except OSError:
        return False


def wait_for(link, commit, timeout=120):
    deadline = time.perf_counter() + timeout
    while not shows(link, commit):
        if time.perf_counter() > deadline:
            sys.exit(f"{link} never showed {commit}")
        time.sleep(0.002)
    return time.perf_counter()


def push(work, bare, serial, dirs):
    bench.change_one(work, serial, dirs)
    commit = bench.git_out("rev-parse", "HEAD", cwd=work)
    start = time.perf_counter()
    bench.git("push", "-q", bare, "main", cwd=work)
    return commit, start


def trigger(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/sync")
    connection.getresponse().read()
    connection.close()


def measure(name, link, work, bare, dirs, pushes, period, serial, after_push=None):
    times = []
    rng = random.Random(name)
    for _ in range(pushes):
        # Pushes land anywhere in the polling period, as they do in real life.
        time.sleep(rng.uniform(0, period))
        serial += 1
        commit, start = push(work, bare, serial, dirs)
        if after_push:
            after_push()
        times.append(wait_for(link, commit) - start)
    return name, times, serial


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--period", type=float, default=10)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--triggered", type=int, default=10)
    args = bench.parse_args(parser)
    binary = args.binary
    results = []
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-ttl-") as tmp:
        work = os.path.join(tmp, "work")
        bench.make_repo(work, args.files, args.dirs, binaries=0)
        bare = os.path.join(tmp, "dags.git")
        bench.git("clone", "-q", "--bare", work, bare, cwd=tmp)
        url = f"file://{bare}"
        serial = 0
        period = f"{args.period:g}s"

        port = bench.free_port()
        root = os.path.join(tmp, "dagsnap-root")
        log = open(os.path.join(tmp, "dagsnap.log"), "w")
        loop = subprocess.Popen(
            [binary, "sync", "--repo", url, "--root", root, "--cache-dir", os.path.join(tmp, "cache"),
             "--period", period, "--http-bind", f"127.0.0.1:{port}"],
            env=bench.env(), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            link = os.path.join(root, "current")
            wait_for(link, bench.git_out("rev-parse", "HEAD", cwd=work))
            name, times, serial = measure(f"dagsnap, --period {period}", link, work, bare, args.dirs,
                                          args.pushes, args.period, serial)
            results.append((name, times))
            name, times, serial = measure(f"dagsnap, --period {period} + POST /sync after the push",
                                          link, work, bare, args.dirs, args.triggered, 1.0, serial,
                                          after_push=lambda: trigger(port))
            results.append((name, times))
        finally:
            loop.terminate()
            loop.wait(timeout=30)
            log.close()

        gs_root = os.path.join(tmp, "git-sync-root")
        gs = subprocess.Popen(["sh", GIT_SYNC, url, gs_root, "dags", str(int(args.period))],
                              env=bench.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        try:
            link = os.path.join(gs_root, "dags")
            wait_for(link, bench.git_out("rev-parse", "HEAD", cwd=work), timeout=600)
            name, times, serial = measure(f"git-sync v4 (model), --period {period}", link, work, bare,
                                          args.dirs, args.pushes, args.period, serial)
            results.append((name, times))
        finally:
            os.killpg(gs.pid, 15)
            gs.wait(timeout=30)

    print(f"{args.files} files; time from `git push` to the link showing the commit\n")
    print("| publisher | pushes | median | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in results:
        print(f"| {name} | {len(times)} | {statistics.median(times):.2f} s | {min(times):.2f} s | "
              f"{max(times):.2f} s |")


if __name__ == "__main__":
    main()
