#!/usr/bin/env python3
"""Peak memory of dagsnap's own process where it used to grow with the repository, against the
git CLI doing the same job, in one run on local disk against file:// remotes.

- first publish of bench.py's 100k repository (100,000 files of 4 KiB in 2,000 directories and
  three 8 MiB binaries; 80 MB packed, 98% of the blobs deltas): dagsnap vs `git clone --depth 1`;
- a one-file update of it: dagsnap vs `git fetch --depth 1` + `git reset --hard` in a clone;
- first publish of a repository holding one --blob-mb MB file of random bytes: dagsnap vs
  `git clone --depth 1`.

dagsnap's own peak is the kernel's high-water mark of its resident memory (VmHWM of the dagsnap
process, which counts the pages of mapped files such as packs), read from /proc every 5 ms until
it exits. The other column is the largest process of the command's tree (what GNU time and
`wait4` report): for dagsnap and for git alike it includes the `git upload-pack` serving the
file:// remote, which in production runs on the git server; for `git clone` it is usually
`git index-pack`. Median of --runs runs; the targets are issue 18's.

Usage: bench/memory.py [--runs 3] [--blob-mb 200]
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

MIB = 1024


def peaks(cmd, cwd=None):
    """Run `cmd`; its wall time, its own peak RSS and its tree's largest process's (KiB)."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=bench.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    own = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                found = re.search(r"VmHWM:\s+(\d+)", f.read())
            if found:
                own = max(own, int(found.group(1)))
        except OSError:
            pass
        time.sleep(0.005)
    wall = time.perf_counter() - start
    # poll() reaped it; the tree's largest process is in the children's totals, which hold
    # only this command (see `isolated`).
    tree = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode(errors='replace')}")
    return wall, own, tree


def isolated(cmd, cwd=None):
    """`peaks` in a fresh child process, so RUSAGE_CHILDREN holds this command alone."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        result = peaks(cmd, cwd)
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not text:
        sys.exit(f"measuring failed: {' '.join(cmd)}")
    return tuple(json.loads(text))


def dagsnap(binary, url, root, cache):
    return isolated([binary, "sync", "--one-time", "--repo", url, "--root", root, "--cache-dir", cache])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blob-mb", type=int, default=200)
    args = bench.parse_args(parser)
    binary = args.binary
    files, dirs = bench.SHAPES["100k"]
    rows = {}

    def record(label, tool, measure):
        rows.setdefault((label, tool), []).append(measure)

    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-memory-") as work:
        source = os.path.join(work, "source")
        bench.make_repo(source, files, dirs)
        big = os.path.join(work, "big")
        blob_bytes = args.blob_mb * 1_000_000
        with open(os.path.join(work, "blob"), "wb") as f:
            left = blob_bytes
            while left:
                piece = min(left, 1 << 20)
                f.write(os.urandom(piece))
                left -= piece
        os.makedirs(big)
        bench.git("init", "-q", "-b", "main", cwd=big)
        os.rename(os.path.join(work, "blob"), os.path.join(big, "model.bin"))
        bench.git("add", ".", cwd=big)
        bench.git("commit", "-q", "-m", "one large file", cwd=big)
        url, big_url = f"file://{source}", f"file://{big}"

        for run in range(args.runs):
            root, cache = os.path.join(work, f"root{run}"), os.path.join(work, f"cache{run}")
            record("100k: first publish", "dagsnap", dagsnap(binary, url, root, cache))
            clone = os.path.join(work, f"clone{run}")
            record("100k: first publish", "git clone --depth 1", isolated(["git", "clone", "-q", "--depth", "1", url, clone]))

            bench.change_one(source, run + 1, dirs)
            record("100k: 1-file update", "dagsnap", dagsnap(binary, url, root, cache))
            fetch = ["git", "fetch", "-q", "--depth", "1", "origin", "main"]
            record(
                "100k: 1-file update",
                "git fetch --depth 1 + reset --hard",
                sum_of(isolated(fetch, cwd=clone), isolated(["git", "reset", "-q", "--hard", "FETCH_HEAD"], cwd=clone)),
            )
            for path in (root, cache, clone):
                bench.rm_tree(path)

            root, cache = os.path.join(work, f"broot{run}"), os.path.join(work, f"bcache{run}")
            label = f"{args.blob_mb} MB file: first publish"
            record(label, "dagsnap", dagsnap(binary, big_url, root, cache))
            clone = os.path.join(work, f"bclone{run}")
            record(label, "git clone --depth 1", isolated(["git", "clone", "-q", "--depth", "1", big_url, clone]))
            for path in (root, cache, clone):
                bench.rm_tree(path)

    blob_mib = blob_bytes / (1 << 20)
    targets = {
        "100k: first publish": 64,
        "100k: 1-file update": 48,
        f"{args.blob_mb} MB file: first publish": blob_mib + 48,
    }
    print("| operation | tool | wall | own peak RSS | largest process | target (own) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (label, tool), measures in rows.items():
        wall = statistics.median(m[0] for m in measures)
        own = statistics.median(m[1] for m in measures) / MIB
        tree = statistics.median(m[2] for m in measures) / MIB
        if tool == "dagsnap":
            target = targets[label]
            verdict = f"≤ {target:.0f} MiB: {'met' if own <= target else 'NOT met'}"
            own_text = f"**{own:.1f} MiB**"
        else:
            verdict, own_text = "", f"{own:.1f} MiB"
        print(f"| {label} | {tool} | {bench.fmt_s(wall)} | {own_text} | {tree:.1f} MiB | {verdict} |")


def sum_of(first, second):
    """Two commands run one after the other: wall adds up, peaks do not."""
    return first[0] + second[0], max(first[1], second[1]), max(first[2], second[2])


if __name__ == "__main__":
    main()
