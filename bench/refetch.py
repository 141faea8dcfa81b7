#!/usr/bin/env python3
"""Bytes over the wire for many consecutive updates: a dagsnap loop follows a repository served
by nginx + git-http-backend while --updates commits (one changed file each) are pushed one at a
time, each announced with `POST /sync` and waited for until it is live. The server's access log gives the bytes it sent for
every request; the baseline, computed by git in the same run, is what the changes themselves
weigh: the first commit's full pack (the initial fetch) plus, for every update, the thin pack
of that commit against the one before it (`git pack-objects --revs --thin`).

Also reports the cache's size at the end and how often it was consolidated.

Needs nginx and fcgiwrap. Usage: bench/refetch.py [--files 10000] [--updates 1000]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import idle_http  # noqa: E402
import ttl  # noqa: E402



def thin_pack_bytes(repo, revs):
    """The size of the pack git would send for `revs` (e.g. `new ^old`)."""
    pack = subprocess.run(["git", "pack-objects", "--revs", "--thin", "--stdout", "-q"], cwd=repo,
                          env=bench.env(), input=("\n".join(revs) + "\n").encode(), capture_output=True,
                          text=False, check=True)
    return len(pack.stdout)


def du_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=1000)
    args = bench.parse_args(parser)
    binary = args.binary
    dirs = max(1, args.files // 50)
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-refetch-") as tmp:
        work = os.path.join(tmp, "work")
        bench.make_repo(work, args.files, dirs, binaries=0)
        projects = os.path.join(tmp, "projects")
        os.makedirs(projects)
        bare = os.path.join(projects, "dags.git")
        bench.git("clone", "-q", "--bare", work, bare, cwd=tmp)
        first = bench.git_out("rev-parse", "HEAD", cwd=work)
        changes = thin_pack_bytes(work, [first])
        access_log = os.path.join(tmp, "access.log")
        server = idle_http.Server(tmp, projects, access_log=access_log)
        url = f"http://127.0.0.1:{server.port}/dags.git"
        root, cache = os.path.join(tmp, "root"), os.path.join(tmp, "cache")
        log = open(os.path.join(tmp, "dagsnap.log"), "w")
        # Each push is followed by `POST /sync` (as a webhook would), so the log counts one cycle
        # per update rather than the idle polls between them.
        port = bench.free_port()
        loop = subprocess.Popen([binary, "sync", "--repo", url, "--root", root, "--cache-dir", cache,
                                 "--period", "1h", "--http-bind", f"127.0.0.1:{port}"],
                                env=bench.env(), stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        started = time.perf_counter()
        try:
            link = os.path.join(root, "current")
            ttl.wait_for(link, first)
            previous = first
            for serial in range(1, args.updates + 1):
                commit, _ = ttl.push(work, bare, serial, dirs)
                ttl.trigger(port)
                changes += thin_pack_bytes(work, [commit, f"^{previous}"])
                ttl.wait_for(link, commit)
                previous = commit
        finally:
            loop.terminate()
            loop.wait(timeout=30)
            log.close()
            server.close()
        elapsed = time.perf_counter() - started
        sent = 0
        by_kind = {}
        with open(access_log) as f:
            for line in f:
                method, uri, status, size = line.split()
                sent += int(size)
                kind = f"{method} {uri.rsplit('/', 1)[-1]}"
                count, total = by_kind.get(kind, (0, 0))
                by_kind[kind] = (count + 1, total + int(size))
        consolidations = open(os.path.join(tmp, "dagsnap.log")).read().count("consolidated the cache")
        recreations = open(os.path.join(tmp, "dagsnap.log")).read().count("re-creating it")
        cache_size = du_bytes(cache)
        bare_size = du_bytes(bare)
    print(f"{args.files} files, {args.updates} one-file updates over HTTP, in {elapsed:.0f} s\n")
    print("| | bytes |")
    print("| --- | ---: |")
    print(f"| sent by the server to dagsnap (every request: ref listings and packs) | {sent:,} |")
    print(f"| the changes: initial full pack + each update's thin pack (git) | {changes:,} |")
    print(f"| ratio | {sent / changes:.3f}x |")
    for kind, (count, total) in sorted(by_kind.items()):
        print(f"| ... of which `{kind}`: {count} responses | {total:,} |")
    print(f"| cache at the end (consolidated {consolidations} time(s), re-created {recreations}) | {cache_size:,} |")
    print(f"| the server's repository (full history) | {bare_size:,} |")


if __name__ == "__main__":
    main()
