#!/usr/bin/env python3
"""Memory flat in the file size: dagsnap's own peak RSS when a repository holds one --gib GiB
file of random bytes, served over smart HTTP (nginx + git-http-backend, so the server is not a
child of the measured process), for the first publish and for an update that adds a second file
of the same size; against `git clone --depth 1` and `git fetch --depth 1` of the same server in
the same run (their largest process, usually `git index-pack`).

dagsnap's peak is the kernel's high-water mark of its resident memory (VmHWM, which counts the
pages of mapped files such as packs), read every 5 ms (bench/memory.py's `peaks`). After the
update, the published files are compared with the repository's.

Needs nginx and fcgiwrap, and about 6 x --gib GiB of free disk.
Usage: bench/bigfile.py [--gib 1]
"""

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import idle_http  # noqa: E402
import memory  # noqa: E402

MIB = 1024


def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            piece = min(left, 1 << 20)
            f.write(os.urandom(piece))
            left -= piece


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1)
    args = bench.parse_args(parser)
    size = int(args.gib * (1 << 30))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-bigfile-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        bench.git("init", "-q", "-b", "main", cwd=work)
        random_file(os.path.join(work, "model-1.bin"), size)
        bench.git("add", ".", cwd=work)
        bench.git("commit", "-q", "-m", "one large file", cwd=work)
        projects = os.path.join(tmp, "projects")
        os.makedirs(projects)
        bare = os.path.join(projects, "big.git")
        bench.git("clone", "-q", "--bare", work, bare, cwd=tmp)
        server = idle_http.Server(tmp, projects)
        try:
            url = f"http://127.0.0.1:{server.port}/big.git"
            root, cache = os.path.join(tmp, "root"), os.path.join(tmp, "cache")
            sync = [args.binary, "sync", "--one-time", "--repo", url, "--root", root, "--cache-dir", cache]
            clone = os.path.join(tmp, "clone")
            rows.append(("first publish", "dagsnap", memory.isolated(sync)))
            rows.append(("first publish", "git clone --depth 1",
                         memory.isolated(["git", "clone", "-q", "--depth", "1", url, clone])))

            random_file(os.path.join(work, "model-2.bin"), size)
            bench.git("add", ".", cwd=work)
            bench.git("commit", "-q", "-m", "a second large file", cwd=work)
            bench.git("fetch", "-q", work, "+refs/heads/*:refs/heads/*", cwd=bare)
            rows.append(("update adding a second file", "dagsnap", memory.isolated(sync)))
            rows.append(("update adding a second file", "git fetch --depth 1",
                         memory.isolated(["git", "fetch", "-q", "--depth", "1", "origin", "main"], cwd=clone)))
            for name in ("model-1.bin", "model-2.bin"):
                if not filecmp.cmp(os.path.join(work, name), os.path.join(root, "current", name), shallow=False):
                    sys.exit(f"the published {name} differs from the repository's")
        finally:
            server.close()
    print(f"One file of {args.gib:g} GiB of random bytes over smart HTTP, then a second one; peak RSS\n")
    print("| operation | tool | wall | own peak RSS | largest process | target (own) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for label, tool, (wall, own, tree) in rows:
        if tool == "dagsnap":
            verdict = f"≤ 64 MiB: {'met' if own / MIB <= 64 else 'NOT met'}"
            own_text = f"**{own / MIB:.1f} MiB**"
        else:
            verdict, own_text = "", f"{own / MIB:.1f} MiB"
        print(f"| {label} | {tool} | {bench.fmt_s(wall)} | {own_text} | {tree / MIB:.1f} MiB | {verdict} |")


if __name__ == "__main__":
    main()
