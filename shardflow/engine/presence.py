"""What a worker tells the world about itself: its row in the live-worker registry on each
shard it serves, a start-up banner, and a periodic one-line summary while it is busy.

The registry (``shardflow.workers``, migration 0005) is what lets a client tell work that
no live worker can run (an unregistered or misspelled workflow name, a queue nobody
claims, no worker at all) from work that is merely waiting its turn; see
:mod:`shardflow.engine.coverage`. A worker upserts its row with each heartbeat and deletes
it when it stops; rows of workers that vanished (SIGKILL) age out of the "live" window and
are purged after a day. Registry writes are best effort: a failure never stops a worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from typing import Protocol

from shardflow.config.model import QueueConfig
from shardflow.engine.app import App
from shardflow.engine.store import Store
from shardflow.engine.store.rows import WorkerRecord
from shardflow.engine.store_errors import StoreError


class _Client(Protocol):
    @property
    def store(self) -> Store: ...


class _Counts(Protocol):
    @property
    def claimed(self) -> int: ...

    @property
    def recovered(self) -> int: ...

    @property
    def dead_lettered(self) -> int: ...

    @property
    def finished(self) -> Counter[str]: ...


class Worker(Protocol):
    """What presence reads of its :class:`~shardflow.engine.worker.Worker` (a protocol,
    so that the worker, which owns a Presence, is not imported back from here)."""

    _lock: threading.Condition
    _closed: threading.Event

    @property
    def worker_id(self) -> str: ...

    @property
    def app(self) -> App: ...

    @property
    def queues(self) -> Sequence[QueueConfig]: ...

    @property
    def shards(self) -> Sequence[str]: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def lease_seconds(self) -> float: ...

    @property
    def stats(self) -> _Counts: ...

    @property
    def cluster(self) -> _Client: ...

    @property
    def running(self) -> int: ...


log = logging.getLogger(__name__)

# Seconds between summaries (only while busy); `shardflow worker --summary-seconds`.
SUMMARY_SECONDS = 60.0
# Registry rows of workers silent for this long are deleted by any live worker.
PURGE_AFTER_SECONDS = 86_400.0
_PURGE_EVERY_SECONDS = 3_600.0
_MISSING_TABLE = ("UndefinedTable", "InsufficientPrivilege")


def package_version() -> str:
    try:
        return metadata.version("shardflow")
    except metadata.PackageNotFoundError:
        return "unknown"


class Presence:
    """A worker's registry row, banner and summaries. ``seen``/``gone`` are called from
    each shard's heartbeat thread; :meth:`start` from :meth:`Worker.start`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.summary_seconds = SUMMARY_SECONDS
        self.record = WorkerRecord(
            worker_id=worker.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=package_version(),
            app=worker.app.name,
            workflows=tuple(sorted(worker.app.workflows)),
            queues=tuple(q.name for q in worker.queues),
        )
        self._without_registry: set[str] = set()
        self._next_purge: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._registered = {shard: threading.Event() for shard in worker.shards}

    # -- registry -------------------------------------------------------------------------

    def seen(self, shard: str) -> None:
        """Upsert this worker's row on ``shard``. Never raises."""
        if shard in self._without_registry:
            return
        store = self.worker.cluster.store
        try:
            store.worker_seen(shard, self.record)
            self._registered[shard].set()
            now = time.monotonic()
            if now >= self._next_purge.get(shard, 0.0):
                self._next_purge[shard] = now + _PURGE_EVERY_SECONDS
                store.purge_stale_workers(shard, PURGE_AFTER_SECONDS)
        except StoreError as exc:
            if type(exc.__cause__).__name__ in _MISSING_TABLE:
                # A shard migrated before 0005, or a worker role granted before it.
                self._without_registry.add(shard)
                log.warning(
                    "shard %s has no worker registry this worker may write (%s): run"
                    " `shardflow migrate` (and --create-worker-role again); clients cannot"
                    " tell whether this worker serves their workflows",
                    shard,
                    exc,
                )
            else:
                log.debug("worker registry on %s: %s", shard, exc)
        except Exception as exc:
            # The heartbeat's own statement reports outages; this one stays quiet.
            log.debug("worker registry on %s: %s", shard, exc)
        finally:
            if shard in self._without_registry:
                self._registered[shard].set()

    def gone(self, shard: str) -> None:
        """Delete this worker's row on ``shard`` (it stopped). Never raises."""
        if shard in self._without_registry:
            return
        try:
            self.worker.cluster.store.worker_gone(shard, self.worker.worker_id)
        except Exception as exc:
            log.debug("worker registry on %s: %s", shard, exc)

    # -- logging --------------------------------------------------------------------------

    def start(self, wait_seconds: float = 2.0) -> None:
        """Log the banner and start the summary thread (ends when the worker closes).

        Waits up to ``wait_seconds`` for the heartbeat threads' first registry rows, so
        that a submit right after :meth:`Worker.start` finds this worker registered (a
        shard that does not answer costs only the wait)."""
        deadline = time.monotonic() + wait_seconds
        for event in self._registered.values():
            event.wait(max(deadline - time.monotonic(), 0.0))
        for line in self.banner():
            log.info("%s", line)
        for name in self.record.workflows:
            if name.startswith("__main__."):
                log.warning(
                    "workflow %r was registered by a script run as __main__: a program"
                    " that imports the module submits it under the module's name, which"
                    " this worker does not serve. Put workflows in a module (see"
                    " examples/orders) or give them name=...",
                    name,
                )
        served = set(self.record.queues)
        for wf in sorted(self.worker.app.workflows.values(), key=lambda w: w.name):
            if wf.queue not in served:
                log.warning(
                    "workflow %s is declared on queue %r, which this worker does not claim"
                    " from (--queues %s)",
                    wf.name,
                    wf.queue,
                    ",".join(sorted(served)),
                )
        self._thread = threading.Thread(
            target=self._summary_loop, name="shardflow-summary", daemon=True
        )
        self._thread.start()

    def banner(self) -> list[str]:
        w = self.worker
        workflows = sorted(w.app.workflows.values(), key=lambda wf: wf.name)
        return [
            f"worker {w.worker_id} started (shardflow {self.record.version}, pid"
            f" {self.record.pid}): app {w.app.name!r}, shards {','.join(w.shards)}, queues"
            f" {','.join(self.record.queues)}, concurrency {w.concurrency}, lease"
            f" {w.lease_seconds:g}s",
            f"worker {w.worker_id} serves {len(workflows)} workflow(s): "
            + ", ".join(f"{wf.name} [{wf.queue}]" for wf in workflows),
        ]

    def summary(self, since: _Totals) -> tuple[str | None, _Totals]:
        """The summary line for what happened since ``since`` (None when idle)."""
        w = self.worker
        now = _Totals.of(w)
        finished = now.finished - since.finished
        claimed = now.claimed - since.claimed
        running = w.running
        if not finished and not claimed and not running:
            return None, now
        states = ", ".join(f"{n} {state}" for state, n in sorted(finished.items()))
        line = (
            f"worker {w.worker_id}: {sum(finished.values())} finished"
            + (f" ({states})" if states else "")
            + f", {claimed} claimed, {now.recovered - since.recovered} recovered,"
            f" {now.dead_lettered - since.dead_lettered} dead-lettered in the last"
            f" {now.at - since.at:.0f}s; {running} running"
        )
        return line, now

    def _summary_loop(self) -> None:
        totals = _Totals.of(self.worker)
        while not self.worker._closed.wait(self.summary_seconds):
            try:
                line, totals = self.summary(totals)
                if line is not None:
                    log.info("%s", line)
            except Exception as exc:  # a report must never take a worker down
                log.debug("summary failed: %s", exc)


class _Totals:
    __slots__ = ("at", "claimed", "dead_lettered", "finished", "recovered")

    def __init__(
        self, at: float, claimed: int, recovered: int, dead: int, finished: Counter[str]
    ) -> None:
        self.at = at
        self.claimed = claimed
        self.recovered = recovered
        self.dead_lettered = dead
        self.finished = finished

    @classmethod
    def of(cls, worker: Worker) -> _Totals:
        with worker._lock:
            s = worker.stats
            return cls(
                time.monotonic(), s.claimed, s.recovered, s.dead_lettered, Counter(s.finished)
            )
