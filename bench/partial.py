#!/usr/bin/env python3
"""A monorepo's DAG folder over smart HTTP: the bytes the server sends for `--subdir dags`,
from a server that filters (git's uploadpack.allowFilter, as GitHub and GitLab) and from one
that does not (dagsnap then fetches whole commits, as it did before filtered fetches), against
the floor computed by git in the same run: a pack of exactly the commit, its trees and
dags/'s blobs. git's own partial clone (`git clone --filter=blob:none --depth 1 --sparse`,
then `git sparse-checkout set dags`) is measured beside them.

The monorepo holds --files files of 3,750 random bytes (incompressible: 20,000 of them make the
issue's 75 MB repository) under services/, and --dag-files of bench.py's DAG-like files under dags/.
Three steps, each a `dagsnap sync --one-time` on the same cache: the first publish, a commit
changing 200 files outside dags/, a commit changing one file in dags/. Bytes are response
bodies in nginx's access log (ref listings included).

Needs nginx and fcgiwrap. Usage: bench/partial.py [--files 20000] [--dag-files 500]
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import idle_http  # noqa: E402


def outside_body(i, seed):
    rng = random.Random(seed * 1_000_003 + i)
    return rng.randbytes(3750)


def monorepo(path, files, dag_files):
    services = ((f"services/s{i % 200:03}/f{i:06}.txt", outside_body(i, 0)) for i in range(files))
    dags = ((f"dags/dag_{i:04}.py", bench.file_body(i, 0)) for i in range(dag_files))
    bench.import_repo(path, (*services, *dags))


def floor_bytes(repo, commit, subdir):
    """A pack of exactly the commit, its trees and the blobs under `subdir`/."""
    listing = bench.git_out("ls-tree", "-r", "-t", commit, cwd=repo)
    objects = [commit, bench.git_out("rev-parse", f"{commit}^{{tree}}", cwd=repo)]
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        _, kind, oid = meta.split()
        if kind == "tree" or path.startswith(subdir + "/"):
            objects.append(oid)
    pack = subprocess.run(["git", "pack-objects", "--stdout", "-q"], cwd=repo, env=bench.env(),
                          input=("\n".join(objects) + "\n").encode(), capture_output=True, check=True)
    return len(pack.stdout)


class Log:
    """Bytes nginx sent since the last call."""

    def __init__(self, path):
        self.path, self.seen = path, 0

    def take(self):
        lines = open(self.path).read().splitlines() if os.path.exists(self.path) else []
        new, self.seen = lines[self.seen:], len(lines)
        return sum(int(line.split()[3]) for line in new)


def commit_outside(work, serial):
    for i in range(200):
        path = os.path.join(work, f"services/s{i % 200:03}/f{i:06}.txt")
        with open(path, "wb") as f:
            f.write(outside_body(i, serial))
    bench.git("commit", "-q", "-am", f"200 files outside dags/ ({serial})", cwd=work)


def commit_one_dag(work, serial):
    with open(os.path.join(work, "dags/dag_0007.py"), "wb") as f:
        f.write(bench.file_body(7, serial))
    bench.git("commit", "-q", "-am", f"one dag ({serial})", cwd=work)


def push(work, bares):
    for bare in bares:
        bench.git("fetch", "-q", work, "+refs/heads/*:refs/heads/*", cwd=bare)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dag-files", type=int, default=500)
    args = bench.parse_args(parser)
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-partial-") as tmp:
        work = os.path.join(tmp, "work")
        monorepo(work, args.files, args.dag_files)
        projects = os.path.join(tmp, "projects")
        os.makedirs(projects)
        bares = {}
        for name, allow in (("filtering", "true"), ("plain", "false")):
            bare = os.path.join(projects, f"{name}.git")
            bench.git("clone", "-q", "--bare", work, bare, cwd=tmp)
            bench.git("config", "uploadpack.allowFilter", allow, cwd=bare)
            bench.git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
            bares[name] = bare
        access_log = os.path.join(tmp, "access.log")
        server = idle_http.Server(tmp, projects, access_log=access_log)
        log = Log(access_log)
        rows = []
        try:
            first = bench.git_out("rev-parse", "HEAD", cwd=work)
            whole = bench.du_kib(bares["plain"]) * 1024
            floors = [floor_bytes(work, first, "dags")]
            runs = {}
            for name in bares:
                url = f"http://127.0.0.1:{server.port}/{name}.git"
                runs[name] = (url, os.path.join(tmp, name, "root"), os.path.join(tmp, name, "cache"))
            step = {}

            def publish_all(label):
                log.take()
                for name, (url, root, cache) in runs.items():
                    out = subprocess.run([args.binary, "sync", "--one-time", "--repo", url, "--root", root,
                                          "--cache-dir", cache, "--subdir", "dags"],
                                         env=bench.env(), capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"dagsnap failed: {out.stderr}")
                    step[(label, name)] = log.take()

            publish_all("first")
            # git's own partial clone of the folder, as the floor a git user gets.
            clone = os.path.join(tmp, "git-clone")
            url = runs["filtering"][0]
            bench.git("clone", "-q", "--filter=blob:none", "--depth", "1", "--sparse", url, clone, cwd=tmp)
            bench.git("sparse-checkout", "set", "dags", cwd=clone)
            git_first = log.take()

            commit_outside(work, 1)
            push(work, bares.values())
            publish_all("outside")
            commit_one_dag(work, 2)
            push(work, bares.values())
            publish_all("one")
        finally:
            server.close()
    floor = floors[0]
    print(f"{args.files:,} files outside dags/, {args.dag_files} in dags/ (server's repository: {whole / 1e6:.1f} MB), over smart HTTP\n")
    print("| step | filtered fetch (server filters) | whole commits (server does not) | floor / target |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| first publish `--subdir dags` | {step[('first', 'filtering')]:,} B | {step[('first', 'plain')]:,} B "
          f"| floor {floor:,} B; target <= {2 * floor + 256 * 1024:,} B "
          f"({step[('first', 'filtering')] / floor:.2f}x the floor) |")
    print(f"| update: 200 files outside dags/ | {step[('outside', 'filtering')]:,} B | {step[('outside', 'plain')]:,} B | target <= 65,536 B |")
    print(f"| update: one file in dags/ | {step[('one', 'filtering')]:,} B | {step[('one', 'plain')]:,} B | target <= 65,536 B |")
    print(f"\ngit clone --filter=blob:none --depth 1 --sparse + sparse-checkout set dags: {git_first:,} B")


if __name__ == "__main__":
    main()
