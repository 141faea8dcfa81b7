#!/usr/bin/env python3
"""The gate's cost: contrib/airflow/check_dags.py on a 100-DAG snapshot, against Airflow's own
DagBag loading the same folder (what any Airflow check costs at least), and a one-file update
published with and without the check, all in the same run with the same Python.

- DagBag: `python -c "DagBag(folder)"` (without examples), a fresh process each time (the
  check is a fresh process too, so Airflow's import is in both).
- check_dags.py: the script as dagsnap runs it, on the same snapshot (PYTHONDONTWRITEBYTECODE=1),
  and once more with a fresh PYTHONPYCACHEPREFIX (what dagsnap does not set, and why).
- update: `dagsnap sync --one-time` of a commit that changes one DAG file, on a root where the
  previous commit is live; without a check, and with `--check-command "<python> check_dags.py"`.

Each figure is the median of --runs runs; wall time, and CPU (user + system, children included).
The DAG files are like the tests' (tests/stories/airflow.rs): a DAG with a few tasks each.

Usage: bench/check.py [--airflow target/tools/airflow3] [--dags 100] [--runs 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "..", "contrib", "airflow", "check_dags.py")


def dag_file(k, version):
    return f"""from datetime import datetime
try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG
try:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:
    from airflow.operators.empty import EmptyOperator
    from airflow.operators.bash import BashOperator

VERSION = {version}

with DAG(dag_id="dag_{k}", start_date=datetime(2024, 1, 1), schedule="@daily", catchup=False,
         tags=["bench"], params={{"version": VERSION}}):
    start = EmptyOperator(task_id="start")
    steps = [BashOperator(task_id=f"step_{{i}}", bash_command=f"echo {{i}}") for i in range(5)]
    end = EmptyOperator(task_id="end")
    start >> steps >> end
"""


def make_repo(path, dags):
    os.makedirs(os.path.join(path, "dags"))
    bench.git("init", "-q", "-b", "main", cwd=path)
    for k in range(dags):
        with open(os.path.join(path, "dags", f"dag_{k}.py"), "w") as f:
            f.write(dag_file(k, 0))
    bench.git("add", "-A", cwd=path)
    bench.git("commit", "-q", "-m", "dags", cwd=path)


def change_one(path, serial):
    with open(os.path.join(path, "dags", "dag_0.py"), "w") as f:
        f.write(dag_file(0, serial))
    bench.git("commit", "-q", "-am", f"change {serial}", cwd=path)


def median(measures):
    return (statistics.median(m.wall for m in measures), statistics.median(m.cpu for m in measures))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--airflow", default=os.path.join(HERE, "..", "target", "tools", "airflow3"))
    parser.add_argument("--dags", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = bench.parse_args(parser)
    python = os.path.abspath(os.path.join(args.airflow, "bin", "python"))
    if not os.path.exists(python):
        sys.exit(f"no Airflow at {args.airflow} (scripts/test installs it into target/tools/)")
    version = subprocess.run([python, "-c", "import airflow; print(airflow.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-check-") as work:
        remote = os.path.join(work, "remote")
        make_repo(remote, args.dags)
        url = f"file://{remote}"
        home = os.path.join(work, "airflow-home")
        os.environ.update({"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                           "PYTHONDONTWRITEBYTECODE": "1"})
        check = f"{python} {os.path.abspath(CHECK)} --min-dags {args.dags}"
        plain = os.path.join(work, "plain")
        gated = os.path.join(work, "gated")
        for root in (plain, gated):
            bench.dagsnap_once(args.binary, url, os.path.join(root, "root"), os.path.join(root, "cache"))
        snapshot = os.path.realpath(os.path.join(plain, "root", "current"))
        folder = os.path.join(snapshot, "dags")

        dagbag, checked, prefixed, update, update_checked = [], [], [], [], []
        load = ("import inspect, sys\ntry:\n    from airflow.dag_processing.dagbag import DagBag\n"
                "except ImportError:\n    from airflow.models.dagbag import DagBag\n"
                "kwargs = {'dag_folder': sys.argv[1]}\n"
                "if 'include_examples' in inspect.signature(DagBag.__init__).parameters:\n"
                "    kwargs['include_examples'] = False\n"
                "bag = DagBag(**kwargs)\n"
                "assert len(bag.dags) == int(sys.argv[2]) and not bag.import_errors, bag.import_errors\n")
        for run in range(args.runs):
            dagbag.append(bench.run([python, "-c", load, folder, str(args.dags)]))
            checked.append(bench.run([python, os.path.abspath(CHECK), "--min-dags", str(args.dags), folder]))
            # Why dagsnap sets no PYTHONPYCACHEPREFIX: Python then ignores installed bytecode.
            os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(work, f"pycache-{run}")
            prefixed.append(bench.run([python, os.path.abspath(CHECK), "--min-dags", str(args.dags), folder]))
            del os.environ["PYTHONPYCACHEPREFIX"]
            change_one(remote, run + 1)
            update.append(bench.dagsnap_once(args.binary, url, os.path.join(plain, "root"),
                                             os.path.join(plain, "cache")))
            update_checked.append(bench.dagsnap_once(args.binary, url, os.path.join(gated, "root"),
                                                     os.path.join(gated, "cache"), "--check-command", check))
        rows = [
            ("Airflow's DagBag loading the folder (baseline)", dagbag),
            ("`check_dags.py` on the snapshot", checked),
            ("`check_dags.py` with an empty `PYTHONPYCACHEPREFIX`", prefixed),
            ("one-file update, no check", update),
            ("one-file update with `--check-command` check_dags.py", update_checked),
        ]
        base_wall, _ = median(dagbag)
        print(f"Airflow {version}, {args.dags} DAGs of 7 tasks, median of {args.runs} runs\n")
        print("| | wall | CPU | vs DagBag |")
        print("| --- | ---: | ---: | ---: |")
        for name, measures in rows:
            wall, cpu = median(measures)
            print(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {wall / base_wall:.2f}x |")
        plain_wall, _ = median(update)
        gated_wall, _ = median(update_checked)
        print(f"\nThe check adds {gated_wall - plain_wall:.2f} s to a one-file update "
              f"({plain_wall:.2f} s without it).")


if __name__ == "__main__":
    main()
