#!/usr/bin/env python3
"""Publishing onto a high-latency volume: dagsnap against `cp -r` and `cp -al` on a FUSE
passthrough that waits --delay before every metadata operation (bench/slowfs.c), as an NFS
client waits for its server; and the same dagsnap commands on local disk, to show that the
parallel build costs nothing there.

For a repository of --files files of about 4 KiB in --dirs directories (bench.py's DAG-like
files), in one run:

- first publish: `cp -r` of a checkout onto the volume (one file at a time: the floor a
  single-threaded copy gets), and `dagsnap sync --one-time` with each of --jobs;
- a one-file update: `cp -al` of the published tree within the volume plus writing the one file
  (what a single-threaded hard-link copy costs), and dagsnap's update with each of --jobs;
- on local disk, dagsnap's first publish and update with each of --jobs (median of at least 3).

Needs root (or FUSE for the user), a C compiler and libfuse 3 (apt-get install libfuse3-dev
pkg-config); slowfs is built into target/bench/.

Usage: bench/netvol.py [--files 10000] [--dirs 200] [--delay 1ms] [--jobs 1,8,16,32] [--runs 1]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def build_slowfs():
    out = os.path.join(HERE, "..", "target", "bench", "slowfs")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["cc", "-O2", "-Wall", "-o", out, os.path.join(HERE, "slowfs.c"), *flags], check=True)
    return out


def parse_delay_us(text):
    for suffix, scale in (("us", 1), ("ms", 1000), ("s", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(float(text) * 1_000_000)


class Volume:
    """bench/slowfs.c mounted over a fresh backing directory."""

    def __init__(self, work, delay):
        self.backing = os.path.join(work, "backing")
        self.mount = os.path.join(work, "volume")
        os.makedirs(self.backing)
        os.makedirs(self.mount)
        self.log = open(os.path.join(work, "slowfs.log"), "w")
        env = dict(os.environ, SLOWFS_DELAY_US=str(parse_delay_us(delay)))
        self.proc = subprocess.Popen(
            [build_slowfs(), self.backing, self.mount, "-f", "-o", "allow_other,default_permissions"],
            stdout=self.log, stderr=self.log, start_new_session=True, env=env)
        deadline = time.time() + 20
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"slowfs did not mount; see {self.log.name}")
            time.sleep(0.1)

    def close(self):
        subprocess.run(["fusermount3", "-u", self.mount], check=False)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
        self.log.close()


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=bench.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def dagsnap(binary, url, root, cache, jobs):
    return timed([binary, "sync", "--one-time", "--repo", url, "--root", root, "--cache-dir", cache,
                  "--build-jobs", str(jobs)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--delay", default="1ms")
    parser.add_argument("--jobs", default="1,8,16,32")
    parser.add_argument("--runs", type=int, default=1)
    args = bench.parse_args(parser)
    binary = args.binary
    jobs = [int(j) for j in args.jobs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-netvol-") as work:
        repo = os.path.join(work, "repo")
        bench.make_repo(repo, args.files, args.dirs, binaries=0)
        url = f"file://{repo}"
        checkout = os.path.join(work, "checkout")
        shutil.copytree(repo, checkout, ignore=shutil.ignore_patterns(".git"))
        volume = Volume(work, args.delay)
        serial = 0
        try:
            for run in range(args.runs):
                v = volume.mount
                rows.append(("volume", "first publish", "cp -r (single-threaded)",
                             timed(["cp", "-r", checkout, os.path.join(v, f"cp-{run}")])))
                for j in jobs:
                    base = os.path.join(work, f"first-{run}-{j}")
                    rows.append(("volume", "first publish", f"dagsnap --build-jobs {j}",
                                 dagsnap(binary, url, os.path.join(v, f"root-{run}-{j}"),
                                         os.path.join(base, "cache"), j)))
                serial += 1
                name = bench.change_one(repo, serial, args.dirs)

                def cp_al():
                    start = time.perf_counter()
                    copy = os.path.join(v, f"cp-{run}-al")
                    subprocess.run(["cp", "-al", os.path.join(v, f"cp-{run}"), copy], check=True)
                    target = os.path.join(copy, name)
                    os.unlink(target)
                    with open(target, "wb") as f:
                        f.write(bench.file_body(serial, serial + 1))
                    return time.perf_counter() - start

                rows.append(("volume", "1 file changed", "cp -al + the file (single-threaded)", cp_al()))
                for j in jobs:
                    base = os.path.join(work, f"first-{run}-{j}")
                    rows.append(("volume", "1 file changed", f"dagsnap --build-jobs {j}",
                                 dagsnap(binary, url, os.path.join(v, f"root-{run}-{j}"),
                                         os.path.join(base, "cache"), j)))
        finally:
            volume.close()
        for run in range(max(args.runs, 3)):
            for j in jobs:
                base = os.path.join(work, f"local-{run}-{j}")
                rows.append(("local disk", "first publish", f"dagsnap --build-jobs {j}",
                             dagsnap(binary, url, os.path.join(base, "root"), os.path.join(base, "cache"), j)))
            serial += 1
            bench.change_one(repo, serial, args.dirs)
            for j in jobs:
                base = os.path.join(work, f"local-{run}-{j}")
                rows.append(("local disk", "1 file changed", f"dagsnap --build-jobs {j}",
                             dagsnap(binary, url, os.path.join(base, "root"), os.path.join(base, "cache"), j)))
                bench.rm_tree(base)

    grouped = {}
    for where, case, what, seconds in rows:
        grouped.setdefault((where, case, what), []).append(seconds)
    print(f"{args.files} files in {args.dirs} directories; volume: FUSE passthrough, {args.delay} "
          f"per metadata operation; median of the runs\n")
    print("| where | case | command | wall |")
    print("| --- | --- | --- | ---: |")
    for (where, case, what), times in grouped.items():
        print(f"| {where} | {case} | {what} | {statistics.median(times):.2f} s |")


if __name__ == "__main__":
    main()
