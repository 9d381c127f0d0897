"""Is anyone going to run this? Work that no live worker can run, and why.

A workflow stays ENQUEUED for ever, silently, when its name is misspelled or registered
by no running app, when it was submitted from a script run as ``__main__`` (named
``__main__.fn``, which no worker imports), when no worker claims its queue, or when no
worker runs at all. Workers record what they serve in the live-worker registry
(:mod:`shardflow.engine.presence`); this module compares ENQUEUED work with it, for
:meth:`Cluster.submit` (a warning, once per workflow name), ``shardflow status``,
``shardflow workflows list`` and the timeout message of ``WorkflowHandle.result``.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shardflow.config.model import ClusterConfig
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.engine.store.rows import WorkerRecord

log = logging.getLogger(__name__)

# A worker counts as live if it heartbeated within max(3 heartbeats, this).
LIVE_FLOOR_SECONDS = 30.0
# How long submit() trusts what it last read of a shard's live workers.
_CACHE_SECONDS = 5.0


class CoverageClient(Protocol):
    """What these checks read through: the client's config and store."""

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def store(self) -> Store: ...


def live_window(config: ClusterConfig) -> float:
    """Seconds since its last heartbeat within which a worker counts as live."""
    return max(3 * config.worker.heartbeat_seconds, LIVE_FLOOR_SECONDS)


@dataclass(frozen=True, slots=True)
class Unserved:
    """ENQUEUED workflows of one name and queue on one shard that no live worker runs."""

    shard: str
    name: str
    queue: str
    count: int
    reason: str


def live_workers(cluster: CoverageClient, shard: str) -> list[WorkerRecord] | None:
    """The live workers of ``shard``; None if the shard has no registry (not migrated to
    0005). Raises ShardUnavailable and store errors like any read."""
    store = cluster.store
    if not store.has_worker_registry(shard):
        return None
    return store.live_workers(shard, live_window(cluster.config))


def diagnose(
    name: str, queue: str, shard: str, workers: Sequence[WorkerRecord], window: float
) -> str | None:
    """Why no worker among ``workers`` (the live ones of ``shard``) can run workflow
    ``name`` on ``queue``; None if one can."""
    if not workers:
        return (
            f"no live worker on shard {shard} (none heartbeated in the last {window:.0f}s);"
            " start one: shardflow --config FILE worker --app MODULE:ATTR"
        )
    serving = [w for w in workers if name in w.workflows]
    if not serving:
        if name.startswith("__main__."):
            return (
                f"workflow {name!r} was submitted from a script run as __main__, and no"
                " worker imports that; define workflows in a module that both the"
                " submitter and the worker import (see examples/orders)"
            )
        known = sorted({n for w in workers for n in w.workflows})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        apps = ", ".join(sorted({w.app for w in workers}))
        return (
            f"no live worker on shard {shard} serves workflow {name!r} ({len(workers)} live"
            f" worker(s) of app(s) {apps} serve {len(known)} other workflow(s){hint})"
        )
    if not any(queue in w.queues for w in serving):
        claimed = ", ".join(sorted({q for w in serving for q in w.queues}))
        return (
            f"the live workers on shard {shard} that serve {name!r} do not claim from queue"
            f" {queue!r} (they claim: {claimed})"
        )
    return None


def why_waiting(cluster: CoverageClient, status: WorkflowStatus) -> str | None:
    """For an ENQUEUED workflow: why no live worker can run it (None if one can, or if
    nobody can tell). Never raises."""
    if status.state is not WorkflowState.ENQUEUED:
        return None
    try:
        workers = live_workers(cluster, status.shard)
    except Exception as exc:
        log.debug("could not read the workers of %s: %s", status.shard, exc)
        return None
    if workers is None:
        return None
    window = live_window(cluster.config)
    return diagnose(status.name, status.queue, status.shard, workers, window)


def unserved(
    cluster: CoverageClient, shards: Iterable[str] | None = None
) -> tuple[list[Unserved], list[str]]:
    """ENQUEUED work no live worker can run, per shard, name and queue; and the shards
    that could not be asked."""
    found: list[Unserved] = []
    failed: list[str] = []
    window = live_window(cluster.config)
    for shard in shards if shards is not None else cluster.config.shard_names:
        try:
            workers = live_workers(cluster, shard)
            if workers is None:
                continue
            enqueued = cluster.store.enqueued_by_name(shard)
        except Exception as exc:
            log.debug("could not read the workers of %s: %s", shard, exc)
            failed.append(shard)
            continue
        for name, queue, count in sorted((e.name, e.queue, e.count) for e in enqueued):
            reason = diagnose(name, queue, shard, workers, window)
            if reason is not None:
                found.append(Unserved(shard, name, queue, count, reason))
    return found, failed


class _SubmitCheck:
    """Per client: which (name, queue, shard) were checked, which names warned about."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked: set[tuple[str, str, str]] = set()
        self.warned: set[str] = set()
        self.workers: dict[str, tuple[float, list[WorkerRecord] | None]] = {}


_checks: weakref.WeakKeyDictionary[CoverageClient, _SubmitCheck] = weakref.WeakKeyDictionary()
_checks_lock = threading.Lock()


def needs_warn_check(cluster: CoverageClient, placed: Iterable[tuple[str, str, str]]) -> bool:
    """Whether :func:`warn_unserved` would ask a shard anything for ``placed`` (no I/O):
    the async client runs the check in a thread only then."""
    check = _checks.get(cluster)
    if check is None:
        return True
    return any(key not in check.checked and key[0] not in check.warned for key in placed)


def warn_unserved(cluster: CoverageClient, placed: Iterable[tuple[str, str, str]]) -> None:
    """After a submit: log a warning, once per workflow name and client, if no live
    worker of the shard it landed on can run it. ``placed``: (name, queue, shard).
    Best effort and cheap: each (name, queue, shard) is checked once per client."""
    with _checks_lock:
        check = _checks.get(cluster)
        if check is None:
            check = _checks[cluster] = _SubmitCheck()
    todo: dict[tuple[str, str, str], int] = {}
    for key in placed:
        if key not in check.checked and key[0] not in check.warned:
            todo[key] = todo.get(key, 0) + 1
    if not todo:
        return
    window = live_window(cluster.config)
    for (name, queue, shard), count in todo.items():
        asked, workers = _cached_workers(cluster, check, shard)
        if not asked:
            continue  # could not ask; try again on a later submit
        with check.lock:
            check.checked.add((name, queue, shard))
            if workers is None or name in check.warned:
                continue
            reason = diagnose(name, queue, shard, workers, window)
            if reason is None:
                continue
            check.warned.add(name)
        log.warning(
            "submitted %d workflow(s) %r to shard %s, but %s; they stay ENQUEUED until a"
            " worker that serves them runs",
            count,
            name,
            shard,
            reason,
        )


def _cached_workers(
    cluster: CoverageClient, check: _SubmitCheck, shard: str
) -> tuple[bool, list[WorkerRecord] | None]:
    now = time.monotonic()
    with check.lock:
        cached = check.workers.get(shard)
    if cached is not None and now - cached[0] < _CACHE_SECONDS:
        return True, cached[1]
    try:
        workers = live_workers(cluster, shard)
    except Exception as exc:
        log.debug("could not read the workers of %s: %s", shard, exc)
        return False, None
    with check.lock:
        check.workers[shard] = (now, workers)
    return True, workers
