#!/usr/bin/env python3
"""What an unchanged refresh of the Airflow bundle costs: `DagsnapBundle.refresh()` when the
link did not move, in system calls (counted by strace between two markers) and in time per
call, against what Airflow's GitDagBundle must do at least to learn that nothing changed (ask
the remote: `git ls-remote` of a local repository, with the process it starts), in one run.

Needs Airflow 3's virtual environment with the bundle (scripts/test provisions
target/tools/airflow3) and strace.

Usage: bench/refresh.py [--calls 10000]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = os.path.join(ROOT, "target/tools/airflow3/bin/python")
DAGSNAP = os.path.join(ROOT, "target/release/dagsnap")

SCRIPT = r"""
import os, sys, time
from dagsnap_airflow import DagsnapBundle
bundle = DagsnapBundle(name="dags", root=sys.argv[1])
bundle.initialize()
calls = int(sys.argv[2])
for _ in range(100):
    bundle.refresh()
try:
    os.stat("/dagsnap-bench-start")
except OSError:
    pass
started = time.perf_counter()
for _ in range(calls):
    bundle.refresh()
elapsed = time.perf_counter() - started
try:
    os.stat("/dagsnap-bench-end")
except OSError:
    pass
print(elapsed / calls)
"""


def git(repo, *args):
    subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10000)
    args = parser.parse_args()
    if not os.path.exists(PYTHON):
        sys.exit(f"{PYTHON} is missing: run scripts/test once (it provisions Airflow 3)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        os.makedirs(os.path.join(repo, "dags"))
        git(tmp, "init", "-q", "-b", "main", repo)
        for k in range(40):
            with open(os.path.join(repo, "dags", f"dag_{k}.py"), "w") as f:
                f.write(f"VERSION = {k}\n")
        git(repo, "add", "-A")
        git(repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "one")
        root = os.path.join(tmp, "root")
        subprocess.run([DAGSNAP, "sync", "--one-time", "--repo", repo, "--root", root,
                        "--cache-dir", os.path.join(tmp, "cache")], check=True,
                       capture_output=True)
        env = dict(os.environ, AIRFLOW_HOME=os.path.join(tmp, "airflow"))

        # Time per unchanged refresh.
        out = subprocess.run([PYTHON, "-c", SCRIPT, root, str(args.calls)], env=env,
                             check=True, capture_output=True, text=True)
        refresh_us = float(out.stdout.split()[-1]) * 1e6

        # System calls per unchanged refresh, between the two markers.
        trace = os.path.join(tmp, "trace")
        subprocess.run(["strace", "-f", "-qq", "-o", trace, PYTHON, "-c", SCRIPT, root,
                        str(args.calls)], env=env, check=True, capture_output=True)
        counting, calls = False, {}
        for line in open(trace):
            if "dagsnap-bench-start" in line:
                counting = True
                continue
            if "dagsnap-bench-end" in line:
                break
            if counting:
                name = line.split(None, 1)[-1].split("(", 1)[0].strip()
                calls[name] = calls.get(name, 0) + 1
        per_call = {name: count / args.calls for name, count in calls.items()}

        # The baseline: asking the remote whether it moved.
        runs = 50
        started = time.perf_counter()
        for _ in range(runs):
            subprocess.run(["git", "ls-remote", repo, "HEAD"], check=True, capture_output=True)
        ls_remote_us = (time.perf_counter() - started) / runs * 1e6

    shown = ", ".join(f"{name} {n:.2f}" for name, n in sorted(per_call.items()))
    print(f"| unchanged `DagsnapBundle.refresh()` | {refresh_us:.1f} µs | {shown} |")
    print(f"| `git ls-remote` of a local repository (GitDagBundle's least) | {ls_remote_us:.0f} µs | (a process) |")
    print(f"\nratio: a refresh costs {refresh_us / ls_remote_us:.5f} of an ls-remote "
          f"({ls_remote_us / refresh_us:.0f} times less)")


if __name__ == "__main__":
    main()
