#!/usr/bin/env python3
"""A monorepo with a DAG folder: `--subdir` against the whole tree and against a repository of
the DAG folder alone, in the same run, on the same disk, against the same file:// remotes.

The monorepo holds --files files of about 4 KiB (bench.py's DAG-like files), --dag-files of
them under dags/ and the rest under services/. The baseline repository holds exactly the
dags/ files at its top. Measured (median of --runs runs, wall time; CPU includes git's
upload-pack):

- first publish: the whole monorepo; the monorepo with --subdir dags; the DAG-only repository;
- a one-file change inside dags/: published into a root of the whole monorepo, and into one
  with --subdir dags;
- a one-file change outside dags/ into the --subdir root: nothing is built, the link stays.

Usage: bench/shapes.py [--files 10000] [--dag-files 500] [--runs 5]
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402



def change(repo, name, serial):
    with open(os.path.join(repo, name), "wb") as f:
        f.write(bench.file_body(serial, serial + 7))
    bench.git("commit", "-q", "-am", f"change {serial}", cwd=repo)


def median(measures):
    return statistics.median(m.wall for m in measures), statistics.median(m.cpu for m in measures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dag-files", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = bench.parse_args(parser)
    binary = args.binary
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-shapes-") as work:
        dags = [(f"dags/d{i % 25:02}/dag_{i:05}.py", bench.file_body(i, 0)) for i in range(args.dag_files)]
        services = [(f"services/s{i % 200:03}/mod_{i:06}.py", bench.file_body(i + 1_000_000, 0))
                    for i in range(args.files - args.dag_files)]
        mono = os.path.join(work, "mono")
        bench.import_repo(mono, dags + services)
        alone = os.path.join(work, "alone")
        bench.import_repo(alone, [(name[len("dags/"):], body) for name, body in dags])
        urls = {"mono": f"file://{mono}", "alone": f"file://{alone}"}

        rows = {}
        for run in range(args.runs):
            for label, repo, extra in (
                ("whole monorepo", "mono", []),
                ("monorepo, --subdir dags", "mono", ["--subdir", "dags"]),
                ("the DAG folder as its own repository", "alone", []),
            ):
                base = os.path.join(work, f"first-{run}-{repo}-{len(extra)}")
                rows.setdefault(("first publish", label), []).append(
                    bench.dagsnap_once(binary, urls[repo], os.path.join(base, "root"),
                                       os.path.join(base, "cache"), *extra))
                bench.rm_tree(base)

        whole = os.path.join(work, "whole")
        sub = os.path.join(work, "sub")
        for base, extra in ((whole, []), (sub, ["--subdir", "dags"])):
            bench.dagsnap_once(binary, urls["mono"], os.path.join(base, "root"), os.path.join(base, "cache"), *extra)
        for run in range(args.runs):
            change(mono, dags[run * 7 % len(dags)][0], run)
            for base, label, extra in ((whole, "whole monorepo", []),
                                       (sub, "monorepo, --subdir dags", ["--subdir", "dags"])):
                rows.setdefault(("1 file changed in dags/", label), []).append(
                    bench.dagsnap_once(binary, urls["mono"], os.path.join(base, "root"),
                                       os.path.join(base, "cache"), *extra))
            change(mono, services[run * 11 % len(services)][0], run + 100)
            rows.setdefault(("1 file changed outside dags/", "monorepo, --subdir dags"), []).append(
                bench.dagsnap_once(binary, urls["mono"], os.path.join(sub, "root"),
                                   os.path.join(sub, "cache"), "--subdir", "dags"))
            rows.setdefault(("1 file changed outside dags/", "whole monorepo"), []).append(
                bench.dagsnap_once(binary, urls["mono"], os.path.join(whole, "root"),
                                   os.path.join(whole, "cache")))

        print(f"{args.files} files in the monorepo, {args.dag_files} under dags/; median of {args.runs} runs\n")
        print("| case | publisher | wall | CPU |")
        print("| --- | --- | ---: | ---: |")
        for (case, label), measures in rows.items():
            wall, cpu = median(measures)
            print(f"| {case} | {label} | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
