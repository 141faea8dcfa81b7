#!/usr/bin/env python3
"""Check a dagsnap snapshot with Airflow before it goes live: dagsnap's --check-command.

    dagsnap sync ... --check-command "python /opt/dagsnap/check_dags.py --min-dags 10"

Run it with the Python of the Airflow installation that will read the DAGs (the sidecar runs
Airflow's image, see docs/operations.md "A gate before the link moves"): the same Airflow
version, providers and packages, so that what fails here would fail in the scheduler.

It loads the folder (default: the snapshot dagsnap is checking, $DAGSNAP_SNAPSHOT, else the
current directory) with Airflow's DagBag, as the DAG processor does, and exits

  0  when every file imports and at least --min-dags DAGs were found;
  1  when a file has an import error (each is printed, with its traceback), or fewer DAGs
     than --min-dags were found;
  2  when Airflow cannot be loaded from this Python (the check is misconfigured).

The first line it prints is a summary; each import error follows, with its traceback; when it
rejects, the last line names the first failing file and its error (dagsnap shows the last line
in the journal and the error file, the first lines in `status`). What Airflow logs while loading
is held back (--show-log prints it before the last line).

Nothing is written into the snapshot (it is read-only): dagsnap sets PYTHONDONTWRITEBYTECODE=1
for the check, so Python reads Airflow's installed bytecode and writes none.
"""

import argparse
import inspect
import os
import sys
import tempfile
import time


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Load a DAG folder with Airflow's DagBag; fail on import errors."
    )
    parser.add_argument(
        "folder",
        nargs="?",
        default=os.environ.get("DAGSNAP_SNAPSHOT") or ".",
        help="the DAG folder (default: $DAGSNAP_SNAPSHOT, else the current directory); a "
        "relative path is taken inside $DAGSNAP_SNAPSHOT when that is set",
    )
    parser.add_argument(
        "--min-dags",
        type=int,
        default=1,
        help="fail when fewer DAGs than this are found (default 1: an empty folder is a "
        "mistake; 0 allows it)",
    )
    parser.add_argument(
        "--max-errors-shown",
        type=int,
        default=20,
        help="print at most this many import errors (all are counted)",
    )
    parser.add_argument(
        "--show-log",
        action="store_true",
        help="print what Airflow logged while loading (it is printed anyway when no DAGs are "
        "found)",
    )
    return parser.parse_args(argv)


class CapturedOutput:
    """Everything written to fds 1 and 2 (Airflow's logging, prints of DAG files) while active,
    kept in a temporary file so that the summary can come first."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        return False

    def text(self):
        self.file.seek(0)
        return self.file.read().decode("utf-8", "replace")


def load_dagbag(folder):
    """DagBag from where this Airflow keeps it (airflow.dag_processing.dagbag since 3.1,
    airflow.models.dagbag before), with the arguments this version takes."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    accepted = inspect.signature(DagBag.__init__).parameters
    kwargs = {"dag_folder": folder}
    if "include_examples" in accepted:
        kwargs["include_examples"] = False
    if "bundle_path" in accepted:
        # Airflow 3 names import errors relative to the bundle, as the UI shows them.
        kwargs["bundle_path"] = folder
    # Helper modules next to the DAGs import as they do under the DAG processor.
    if folder not in sys.path:
        sys.path.append(folder)
    return DagBag(**kwargs)


def main(argv):
    args = parse_args(argv)
    folder = args.folder
    snapshot = os.environ.get("DAGSNAP_SNAPSHOT")
    if snapshot and not os.path.isabs(folder):
        folder = os.path.join(snapshot, folder)
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        print(f"check_dags: {folder} is not a directory; give the DAG folder inside the snapshot")
        return 1

    started = time.monotonic()
    with CapturedOutput() as captured:
        try:
            dagbag = load_dagbag(folder)
            failure = None
        except ImportError as e:
            dagbag, failure = None, e
    elapsed = time.monotonic() - started
    logs = captured.text().strip()

    if dagbag is None:
        print(
            f"check_dags: cannot load Airflow with {sys.executable} ({failure}); run the check "
            "with the Python of the Airflow installation that reads the DAGs"
        )
        if logs:
            print(logs)
        return 2

    errors = dict(sorted(dagbag.import_errors.items()))
    dags = len(dagbag.dags)
    files = len({getattr(dag, "fileloc", None) for dag in dagbag.dags.values()})
    counts = f"{dags} DAG(s) from {files} file(s) in {elapsed:.1f}s"
    if errors:
        print(f"check_dags: {len(errors)} file(s) with import errors; {counts}")
    elif dags < args.min_dags:
        print(
            f"check_dags: found {dags} DAG(s), fewer than --min-dags {args.min_dags}, in "
            f"{folder}; {counts}"
        )
    else:
        print(f"check_dags: no import errors; {counts}")

    for number, (path, error) in enumerate(errors.items()):
        if number == args.max_errors_shown:
            print(f"... and {len(errors) - number} more file(s) with import errors")
            break
        print(f"--- {shown(path, folder)}:")
        print(str(error).rstrip())
    # The import errors carry their tracebacks; Airflow's log matters when none explains a
    # failure (a folder without DAGs), or when asked for.
    if logs and (args.show_log or (not errors and dags < args.min_dags)):
        lines = logs.splitlines()
        print(f"--- what Airflow logged while loading ({len(lines)} line(s); the last 200):")
        print("\n".join(lines[-200:]))
    if errors:
        path, error = next(iter(errors.items()))
        last = [l.strip() for l in str(error).splitlines() if l.strip()]
        more = f" (and {len(errors) - 1} more file(s))" if len(errors) > 1 else ""
        print(f"check_dags: rejected: {shown(path, folder)}: {last[-1] if last else error}{more}")
        return 1
    if dags < args.min_dags:
        print(f"check_dags: rejected: {dags} DAG(s) found, fewer than --min-dags {args.min_dags}")
        return 1
    return 0


def shown(path, folder):
    """A file as the operator knows it: relative to the DAG folder."""
    return os.path.relpath(path, folder) if os.path.isabs(path) else path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
