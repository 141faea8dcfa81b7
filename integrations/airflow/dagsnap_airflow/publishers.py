"""Asking a running publisher of the root for a version the root does not hold.

Each ``dagsnap sync`` with ``--http-bind`` says in its record (``.dagsnap/publishers.d/``) where
it answers; ``POST /versions/<commit>`` makes it fetch that commit by id if its cache lacks it,
build the snapshot under the root's rules and lease it, without moving the link. Publishers on
this host are asked first, through loopback; a publisher on another host only through its other
addresses. The request is authenticated as ``POST /sync`` is: the bearer token of the
publisher's ``--trigger-token-file``.

Nothing here depends on Airflow.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# A publisher that does not accept a connection within this is not reachable.
CONNECT_TIMEOUT = 3.0


class Unavailable(RuntimeError):
    """No publisher could provide the version: why, in the words an operator needs."""


@dataclass
class Publisher:
    host: str
    urls: list[str]
    last_cycle_at: str = ""


@dataclass
class Outcome:
    """What the publishers said, for the error when none could help."""

    tried: list[str] = field(default_factory=list)


def running_publishers(store: Path) -> list[Publisher]:
    """The publishers that announce where they answer, newest heartbeat first, those on this
    host first. Records are input: damaged ones, and any that is not a small regular file,
    are skipped."""
    here = socket.gethostname()
    found = []
    try:
        names = sorted((store / "publishers.d").iterdir())
    except OSError:
        return []
    for path in names:
        if path.suffix != ".json" or path.is_symlink():
            continue
        try:
            if not path.is_file() or path.stat().st_size > 1 << 20:
                continue
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("stopped_at"):
            continue
        urls = [u for u in record.get("serves") or [] if isinstance(u, str) and u.startswith("http://")]
        host = str(record.get("host", ""))
        if host != here:
            # Loopback on this host is another process than the one that wrote the record.
            urls = [u for u in urls if not _loopback(u)]
        if urls:
            found.append(Publisher(host=host, urls=urls, last_cycle_at=str(record.get("last_cycle_at", ""))))
    found.sort(key=lambda p: p.last_cycle_at, reverse=True)
    found.sort(key=lambda p: p.host != here)
    return found


def _loopback(url: str) -> bool:
    rest = url[len("http://") :]
    return rest.startswith("127.") or rest.startswith("[::1]") or rest.startswith("localhost")


def materialize(
    store: Path,
    commit: str,
    *,
    lease_seconds: int,
    timeout: float,
    token: str | None,
) -> None:
    """Ask the root's publishers, in turn, for ``commit`` until one has it in the root, within
    ``timeout`` seconds. Raises :class:`Unavailable` with every publisher's answer otherwise; a
    commit the remote does not have, or that the check rejected, ends the search at once."""
    deadline = time.monotonic() + timeout
    publishers = running_publishers(store)
    if not publishers:
        raise Unavailable(
            f"no running publisher of the root announces where it answers (records in {store / 'publishers.d'}); "
            f"run `dagsnap sync` with --http-bind for this root"
        )
    tried = []
    for publisher in publishers:
        for url in publisher.urls:
            answer = _ask(url, commit, lease_seconds, deadline, token)
            if answer is None:
                return
            final, why = answer
            tried.append(f"{url} ({publisher.host}): {why}")
            if final:
                raise Unavailable(why)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"no publisher had it ready within {timeout:.0f} s: " + "; ".join(tried)
                )
    raise Unavailable("no publisher of the root could provide it: " + "; ".join(tried))


def _ask(url: str, commit: str, lease_seconds: int, deadline: float, token: str | None):
    """One publisher, asked until it answers or the deadline passes. ``None`` when the version
    is ready; else ``(final, why)``: ``final`` when asking another publisher cannot help."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, "no answer before the deadline"
        wait = max(int(remaining), 1)
        request = urllib.request.Request(
            f"{url}/versions/{commit}?lease={lease_seconds}&wait={wait}", method="POST", data=b""
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with _opener().open(request, timeout=remaining + CONNECT_TIMEOUT) as response:
                response.read(1 << 20)
                return None
        except urllib.error.HTTPError as e:
            body = e.read(1 << 16).decode("utf-8", "replace").strip()
            try:
                reason = json.loads(body).get("reason", body)
            except ValueError:
                reason = body
            if e.code == 404:
                return True, f"commit {commit} is not in the repository: {reason}"
            if e.code == 409:
                return True, reason
            if e.code == 401:
                return False, (
                    "the publisher refused the request (401): give the bundle the publisher's "
                    "--trigger-token-file (kwarg token_file, or DAGSNAP_TRIGGER_TOKEN_FILE)"
                )
            if e.code in (503, 504):
                # Busy, or not ready within the wait: the request is not lost; ask again.
                time.sleep(min(float(e.headers.get("Retry-After") or 1), max(deadline - time.monotonic(), 0)))
                continue
            return False, f"HTTP {e.code}: {reason}"
        except (OSError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            return False, f"not reachable ({reason})"


def _opener():
    # A publisher is asked directly, never through a proxy the environment names.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))
