"""``DagsnapBundle``: an Airflow 3 DAG bundle that reads a dagsnap root.

Airflow resolves ``dags_folder`` again for every file it opens, so a parsing pass that
straddles a link swap reads some files from one commit and some from the next (and misses
files that the newer commit renamed). This bundle resolves the link once per refresh:

- ``refresh()`` reads where the link points, once; ``path`` is that snapshot's directory until
  the next refresh, and ``get_current_version()`` is its commit. Every file Airflow parses in
  between comes from one complete, read-only snapshot, whatever the link does meanwhile.
- Initialized with a version (a worker running a task of a DAG run), ``path`` is that commit's
  snapshot: the task runs exactly the code its DAG run was scheduled with, with no git, no clone
  and no credentials on the worker. A version whose snapshot retention removed is an error that
  says which retention setting to raise.
- When the volume is writable where the bundle runs, a worker leaves a lease on the version it
  uses (``.dagsnap/leases/``); dagsnap's GC keeps leased snapshots until the lease expires
  (``lease_seconds``, 24 hours by default). On a read-only mount, retention alone (``--keep``,
  ``--grace``) must cover the longest DAG run.

Snapshots that stop being live stay for dagsnap's ``--grace`` (10 minutes by default): the DAG
processor may still read one up to a parsing pass after it was replaced, so ``--grace`` must
exceed the longest parsing pass.

Nothing here writes into a snapshot, and the bundle works on a read-only mount.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

try:  # Airflow 3.3 and later: a structured version.
    from airflow.dag_processing.bundles.base import BundleVersion
except ImportError:  # Airflow 3.0 to 3.2: a plain string.
    BundleVersion = None

_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_STORE = ".dagsnap"


class SnapshotGone(RuntimeError):
    """The snapshot of a version a task needs is not in the root (any more)."""


class DagsnapBundle(BaseDagBundle):
    """DAGs from a dagsnap root: ``root`` (the directory ``dagsnap sync --root`` publishes into)
    and optionally ``link`` (the link inside it; default: the one the root records, else
    ``current``). ``lease_seconds`` is how long a worker's lease on a version lasts."""

    supports_versioning = True

    def __init__(
        self,
        *,
        root: str,
        link: str | None = None,
        lease_seconds: int = 24 * 3600,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.link = self.root / (link or self._recorded_link() or "current")
        self.lease_seconds = int(lease_seconds)
        self._snapshot: Path | None = None
        self._commit: str | None = None

    # -- the BaseDagBundle contract -------------------------------------------------------

    def initialize(self) -> None:
        if self.version:
            self._use_version(self.version)
        else:
            self._resolve_link()
        super().initialize()

    @property
    def path(self) -> Path:
        if self._snapshot is not None:
            return self._snapshot
        if self.version:
            return self._snapshots() / self.version
        # Not initialized yet: where the link points now.
        return self.link

    def get_current_version(self):
        if self._commit is None:
            return None
        if BundleVersion is not None:
            return BundleVersion(version=self._commit)
        return self._commit

    def refresh(self) -> None:
        if self.version:
            # A task's bundle stays on its version.
            return
        self._resolve_link()

    # -- dagsnap's root --------------------------------------------------------------------

    def _snapshots(self) -> Path:
        return self.root / _STORE / "snapshots"

    def _recorded_link(self) -> str | None:
        try:
            text = (self.root / _STORE / "link").read_text().strip()
        except OSError:
            return None
        # Input: only a relative path that stays inside the root.
        if not text or text.startswith("/") or ".." in Path(text).parts:
            return None
        return text

    def _resolve_link(self) -> None:
        """Resolve the link once: path and version stay on that snapshot until the next refresh."""
        try:
            target = os.readlink(self.link)
        except OSError as e:
            raise SnapshotGone(
                f"{self.link} is not a dagsnap link ({e.strerror}); is `dagsnap sync --root {self.root}` "
                f"publishing there, and is the volume mounted?"
            ) from e
        snapshot = Path(os.path.normpath(self.link.parent / target))
        commit = snapshot.name
        inside = self._snapshots() in snapshot.parents
        if not _COMMIT.match(commit) or not inside or not snapshot.is_dir():
            raise SnapshotGone(
                f"{self.link} points to {target}, which is not a complete dagsnap snapshot under {self.root}"
            )
        self._snapshot = snapshot
        self._commit = commit

    def _use_version(self, version: str) -> None:
        if not _COMMIT.match(version):
            raise SnapshotGone(f"bundle version {version!r} is not a commit id that dagsnap published")
        snapshot = self._snapshots() / version
        if not snapshot.is_dir():
            raise SnapshotGone(
                f"the snapshot of commit {version} is no longer in {self.root}: dagsnap's retention removed it. "
                f"Raise `dagsnap sync --keep` (snapshots kept for rollback) or `--grace` (how long a replaced "
                f"snapshot stays) so that they cover the longest DAG run, or let workers lease versions by "
                f"mounting the volume writable for them"
            )
        self._snapshot = snapshot
        self._commit = version
        self._take_lease(version)

    def _take_lease(self, commit: str) -> None:
        """Ask dagsnap's GC to keep ``commit`` for ``lease_seconds`` (only where the volume is
        writable; a read-only mount relies on retention)."""
        leases = self.root / _STORE / "leases"
        holder = f"{socket.gethostname()}.{os.getpid()}"
        record = {
            "commit": commit,
            "holder": holder,
            "expires_at": int(time.time()) + max(self.lease_seconds, 0),
        }
        name = f"{commit}.{holder}.json"
        try:
            leases.mkdir(mode=0o755, exist_ok=True)
            temp = leases / f".tmp-{name}"
            temp.write_text(json.dumps(record))
            os.replace(temp, leases / name)
        except OSError:
            pass
