"""The DAG processor's view: one private symlink that the bundle moves at each refresh.

Airflow 3.3's processor remembers, for every file it queues, the bundle's ``path`` at the time it
was queued, and labels each parse result with the bundle version of its *last refresh* when the
result is collected. With ``path`` the snapshot directory itself, a file queued before a refresh
is parsed from the older snapshot and labelled with the newer commit: the DAG run then records a
commit whose code is not the code that was parsed (a median of 40 commits apart under churn).

So the processor is given a path that does not change, ``<tmp>/dagsnap-view-<pid>-<random>/dags``,
a symlink to the snapshot of the last refresh, moved atomically (a new symlink renamed over the
old) by ``refresh()``, right before the processor lists the files and labels what follows with
the new version. A file is read from the snapshot current when its parse starts, which is the
version its result is labelled with; only a parse in flight across a refresh can still differ.

The view lives on local disk (never the shared volume), is private to the process, and is
removed when the bundle goes. Its directory holds a lock the process keeps while it lives: a
view whose lock can be taken belongs to a process that died, and the next one removes it
(whatever process ids containers sharing ``/tmp`` reuse).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import weakref
from pathlib import Path

_PREFIX = "dagsnap-view-"


class View:
    def __init__(self, owner: object) -> None:
        _remove_dead_views()
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self.path = self.dir / "dags"
        self._lock = open(self.dir / ".lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        weakref.finalize(owner, _remove, str(self.dir), self._lock)

    def show(self, snapshot: Path) -> None:
        """Point the view at ``snapshot`` (absolute), atomically."""
        temp = self.dir / ".next"
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        os.symlink(snapshot, temp)
        os.replace(temp, self.path)


def _remove(path: str, lock) -> None:
    shutil.rmtree(path, ignore_errors=True)
    lock.close()


def _remove_dead_views() -> None:
    """Views of processes that no longer run (killed before they could clean up): their lock
    can be taken."""
    base = Path(tempfile.gettempdir())
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(_PREFIX) or entry.is_symlink():
            continue
        try:
            if not entry.is_dir() or entry.stat().st_uid != os.getuid():
                continue
            # Read-only: a view whose lock is not there yet is being made, not abandoned.
            with open(entry / ".lock") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            # Held: its process lives. Or not ours to remove.
            continue
