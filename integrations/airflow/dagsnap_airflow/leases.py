"""Leases: a reader asking dagsnap's GC to keep a snapshot while it uses it.

A lease is ``.dagsnap/leases/<commit>.<holder>.json``: ``{"commit", "holder", "expires_at"}``.
A task's lease is short (``lease_seconds``, 5 minutes by default) and renewed in the background
every third of that while the task's process lives, so that it lapses minutes after the task
ends, however long the task ran. GC keeps a leased snapshot until its lease expires (30 days at
most after the file was written) and removes expired leases.

Leases are written only where the volume is writable for the reader; on a read-only mount,
retention (``--keep``, ``--grace``) must cover the longest task.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import weakref
from pathlib import Path


def holder() -> str:
    """This process, as a lease names it: ``<host>.<pid>``."""
    return f"{socket.gethostname()}.{os.getpid()}"


def take(store: Path, commit: str, seconds: int) -> bool:
    """Write (or renew) this process's lease on ``commit`` for ``seconds``; whether it was
    written (a read-only volume cannot hold one)."""
    leases = store / "leases"
    name = f"{commit}.{holder()}.json"
    record = {"commit": commit, "holder": holder(), "expires_at": int(time.time()) + max(seconds, 0)}
    try:
        leases.mkdir(mode=0o755, exist_ok=True)
        temp = leases / f".tmp-{name}"
        temp.write_text(json.dumps(record))
        os.replace(temp, leases / name)
        return True
    except OSError:
        return False


class Renewal:
    """Keeps a lease on ``commit`` while ``owner`` lives in this process: taken now, renewed
    every third of ``seconds`` by a daemon thread, which ends with the process (the lease then
    lapses within ``seconds``) or once ``owner`` is gone."""

    def __init__(self, owner: object, store: Path, commit: str, seconds: int) -> None:
        self.store, self.commit, self.seconds = store, commit, seconds
        self.held = take(store, commit, seconds)
        self.renewals = 0
        alive = weakref.ref(owner)
        interval = max(seconds / 3.0, 1.0)
        self._stop = threading.Event()

        def renew() -> None:
            while not self._stop.wait(interval):
                if alive() is None:
                    return
                if take(store, commit, seconds):
                    self.renewals += 1

        if self.held:
            threading.Thread(target=renew, name=f"dagsnap-lease-{commit[:12]}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
