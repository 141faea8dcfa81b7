"""``DagsnapBundle``: an Airflow 3 DAG bundle that reads a dagsnap root.

Airflow resolves ``dags_folder`` again for every file it opens, so a parsing pass that
straddles a link swap reads some files from one commit and some from the next (and misses
files that the newer commit renamed). This bundle resolves the link once per refresh:

- ``refresh()`` reads where the link points: one ``readlink`` when nothing changed. When it
  moved, the processor's view (``view``: a private symlink, the bundle's ``path``) is moved to
  the new snapshot, and ``get_current_version()`` is its commit. A file is read from the
  snapshot of the last refresh when its parse starts, and its result is labelled with that
  commit: Airflow 3.3's processor labels results with the version of its last refresh.
- Initialized with a version (a worker running a task of a DAG run), ``path`` is that commit's
  snapshot: the task runs exactly the code its DAG run recorded, with no git, no clone and no
  credentials on the worker. A version the root does not hold (retention removed it, or this
  node's root never saw it) is asked of a running publisher of the root (``publishers``), which
  fetches and builds it without moving the link; only when none can provide it is it an error
  (:class:`SnapshotGone`) that says why.
- A task leases its version (``leases``): a short lease (``lease_seconds``, 5 minutes) renewed
  while the task's process lives, so that the snapshot stays as long as the task runs and goes
  minutes after. Leases need the volume writable where the task runs; on a read-only mount,
  retention (``--keep``, ``--grace``) must cover the longest task.

- ``subdir`` (optional) is where the DAGs are inside each snapshot (``dags``): the bundle's
  ``path`` is that folder of the snapshot, while its version still names the whole snapshot,
  so that the DAG folder, and the plugins and libraries beside it in the same snapshot, always
  go together (a root publishing a whole repository, or several repositories as one).

Snapshots that stop being live stay for dagsnap's ``--grace`` (10 minutes by default): the DAG
processor may still read one up to a parsing pass after it was replaced, so ``--grace`` must
exceed the longest parsing pass.

Nothing here writes into a snapshot, and the bundle works on a read-only mount.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

from dagsnap_airflow import leases, publishers
from dagsnap_airflow.view import View

try:  # Airflow 3.3 and later: a structured version.
    from airflow.dag_processing.bundles.base import BundleVersion
except ImportError:  # Airflow 3.0 to 3.2: a plain string.
    BundleVersion = None

_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_STORE = ".dagsnap"


class SnapshotGone(RuntimeError):
    """The snapshot of a version a task needs is not in the root, and no publisher of the root
    could provide it."""


class DagsnapBundle(BaseDagBundle):
    """DAGs from a dagsnap root: ``root`` (the directory ``dagsnap sync --root`` publishes into)
    and optionally ``link`` (the link inside it; default: the one the root records, else
    ``current``).

    For tasks: ``lease_seconds`` is how long a task's lease outlives its process (renewed every
    third of it while the task runs); ``token_file`` holds the publisher's
    ``--trigger-token-file`` token (default: ``$DAGSNAP_TRIGGER_TOKEN_FILE``), to ask it for a
    version the root does not hold; ``materialize_timeout`` bounds that wait in seconds.
    ``subdir`` is the DAG folder inside each snapshot (default: the snapshot's top)."""

    supports_versioning = True

    def __init__(
        self,
        *,
        root: str,
        link: str | None = None,
        lease_seconds: int = 300,
        token_file: str | None = None,
        materialize_timeout: float = 600,
        subdir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.subdir = _relative_folder(subdir)
        self.root = Path(root)
        self.link = self.root / (link or self._recorded_link() or "current")
        self.lease_seconds = int(lease_seconds)
        self.token_file = token_file or os.environ.get("DAGSNAP_TRIGGER_TOKEN_FILE")
        self.materialize_timeout = float(materialize_timeout)
        self._snapshot: Path | None = None
        self._commit: str | None = None
        self._target: str | None = None
        self._view: View | None = None
        self._lease: leases.Renewal | None = None

    # -- the BaseDagBundle contract -------------------------------------------------------

    def initialize(self) -> None:
        if self.version:
            self._use_version(self.version)
        else:
            self._resolve_link()
        super().initialize()

    @property
    def path(self) -> Path:
        return self._top() / self.subdir if self.subdir else self._top()

    def _top(self) -> Path:
        """The snapshot as the bundle shows it: the view, the version's snapshot, or the link."""
        if self._view is not None:
            return self._view.path
        if self._snapshot is not None:
            return self._snapshot
        if self.version:
            return self._snapshots() / self.version
        # Not initialized yet: where the link points now.
        return self.link

    def _check_subdir(self, snapshot: Path, commit: str) -> None:
        """The DAG folder must be in the snapshot, or the processor would find no DAGs and
        deactivate every one."""
        if self.subdir and not (snapshot / self.subdir).is_dir():
            raise SnapshotGone(
                f"the snapshot of {commit} has no folder {self.subdir}; check the bundle's subdir= "
                f"against what the root publishes (`dagsnap status --root {self.root}`)"
            )

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
        """Where the link points; unchanged since the last refresh costs one ``readlink``."""
        try:
            target = os.readlink(self.link)
        except OSError as e:
            raise SnapshotGone(
                f"{self.link} is not a dagsnap link ({e.strerror}); is `dagsnap sync --root {self.root}` "
                f"publishing there, and is the volume mounted?"
            ) from e
        if target == self._target:
            return
        snapshot = Path(os.path.normpath(self.link.parent / target))
        commit = snapshot.name
        inside = self._snapshots() in snapshot.parents
        if not _COMMIT.match(commit) or not inside or not snapshot.is_dir():
            raise SnapshotGone(
                f"{self.link} points to {target}, which is not a complete dagsnap snapshot under {self.root}"
            )
        self._check_subdir(snapshot, commit)
        if self._view is None:
            try:
                self._view = View(self)
            except OSError:
                # No writable temporary directory: each refresh's snapshot directly.
                self._view = None
        if self._view is not None:
            self._view.show(snapshot.absolute())
        self._snapshot = snapshot
        self._commit = commit
        self._target = target

    def _use_version(self, version: str) -> None:
        if not _COMMIT.match(version):
            raise SnapshotGone(f"bundle version {version!r} is not a commit id that dagsnap published")
        snapshot = self._snapshots() / version
        store = self.root / _STORE
        # The lease first: a GC that would retire the snapshot sees it.
        self._lease = leases.Renewal(self, store, version, self.lease_seconds)
        if not snapshot.is_dir():
            self._materialize(version)
        self._check_subdir(snapshot, version)
        self._snapshot = snapshot
        self._commit = version

    def _materialize(self, version: str) -> None:
        """Ask a running publisher of the root for ``version``'s snapshot."""
        token = None
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip() or None
            except OSError as e:
                raise SnapshotGone(f"cannot read token_file {self.token_file}: {e.strerror}") from e
        try:
            publishers.materialize(
                self.root / _STORE,
                version,
                lease_seconds=self.lease_seconds,
                timeout=self.materialize_timeout,
                token=token,
            )
        except publishers.Unavailable as e:
            raise SnapshotGone(
                f"the snapshot of commit {version} is not in {self.root}, and no publisher could provide it: {e}. "
                f"Where no publisher can be asked, raise `dagsnap sync --keep` (snapshots kept for rollback) or "
                f"`--grace` (how long a replaced snapshot stays) so that they cover the longest DAG run"
            ) from e
        # Built by a publisher that may mount the root elsewhere, on a network volume whose
        # clients cache a directory's absence for a moment.
        snapshot = self._snapshots() / version
        for _ in range(50):
            if snapshot.is_dir():
                return
            time.sleep(0.1)
        raise SnapshotGone(
            f"a publisher materialized commit {version}, but {snapshot} does not appear here: "
            f"is {self.root} the same volume the publisher writes?"
        )


def _relative_folder(subdir: str | None) -> Path | None:
    """``subdir=`` checked: a folder inside the snapshot, never a way out of it."""
    if subdir is None or subdir.strip("/") in ("", "."):
        return None
    path = Path(subdir.strip("/"))
    if subdir.startswith("/") or ".." in path.parts:
        raise ValueError(
            f"DagsnapBundle subdir={subdir!r}: give a folder inside the snapshot, like 'dags'"
        )
    return path
