"""Group commit of submits: threads calling ``Cluster.submit`` at the same time share one
insert statement (one commit) per shard, and each call still returns only once its own
row is durable, with its own answer.

Leader and followers, no thread of its own: a submit queues its row under the shard that
owns its slot; if no submit of that shard is committing, it leads: it takes the queued
rows (its own first, at most ``max_rows``, each ID once) and places them with
:func:`~shardflow.engine.submits.place_rows` (redirects, retries and all). Rows queued
meanwhile wait; when the leader's batch is answered, it hands the lead to the first of
them, whose batch holds every row queued by then. So a lone submit commits at once, and
under load the number of commits per shard follows the commit rate, not the number of
callers.

One row's error is its own: if a batch of several rows fails for a reason other than
the shard being unavailable (one row's dedup key taken, its ID held by another workflow,
a value the database refuses), every row of it is placed again on its own (IDs are fixed
before the first attempt, so a row the failed batch did create is found, not created
twice) and each caller gets its own outcome. A shard that stays unavailable through the
retries fails every row of its batch: each would fail alike. No caller waits for ever:
whatever ends a leader's batch (even an interrupt) answers every row it took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from shardflow.engine.locator import Locator
from shardflow.engine.records import NewWorkflow
from shardflow.engine.store import Store
from shardflow.engine.submits import place_rows
from shardflow.errors import ShardUnavailable
from shardflow.router.router import Router

# Rows of one insert statement at most (as submit_many's batches in the benchmarks).
MAX_ROWS = 500

Place = Callable[[list[NewWorkflow]], dict[str, tuple[str, str]]]


W = TypeVar("W", threading.Event, asyncio.Event)


class Pending(Generic[W]):
    """One caller's row waiting in a group: its answer, and how the caller is woken
    (a thread's Event, or a task's asyncio.Event in the async client's groups)."""

    __slots__ = ("done", "error", "lead", "placed", "row", "wake")

    def __init__(self, row: NewWorkflow, wake: W) -> None:
        self.row = row
        self.wake: W = wake
        self.done = False
        self.lead = False
        self.placed: tuple[str, str] | None = None
        self.error: BaseException | None = None


P = TypeVar("P", bound=Pending[Any])


def take_batch(queued: list[P], max_rows: int) -> tuple[list[P], list[P]]:
    """The next batch of ``queued`` (at most ``max_rows``) and what stays queued. The
    same ID twice waits for the next batch: it then finds the first."""
    batch: list[P] = []
    rest: list[P] = []
    ids: set[str] = set()
    for p in queued:
        if len(batch) < max_rows and p.row.workflow_id not in ids:
            batch.append(p)
            ids.add(p.row.workflow_id)
        else:
            rest.append(p)
    return batch, rest


class SubmitGroups:
    """The queued submits of one client, per shard (a part of
    :class:`~shardflow.engine.cluster.Cluster`)."""

    def __init__(
        self,
        locator: Locator,
        store: Store,
        router: Router,
        retry_seconds: float,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.router = router
        self.max_rows = max_rows
        # rows -> {row ID: (ID of the workflow it names, shard)}
        self._place: Place = lambda rows: place_rows(locator, store, rows, retry_seconds)
        self._lock = threading.Lock()
        self._queued: dict[str, list[Pending[threading.Event]]] = {}
        self._leading: set[str] = set()
        self._open = 0
        self.commits = 0  # batches placed (each one insert per shard it touched)

    def place(self, rows: list[NewWorkflow]) -> dict[str, tuple[str, str]]:
        """Place ``rows`` (see :func:`~shardflow.engine.submits.place_rows`): a single
        plain row joins the other threads' submits; several rows (one submit_many) are
        a batch already, and a debounced row is an upsert of its own."""
        if len(rows) != 1 or rows[0].debounce_key is not None:
            return self._place(rows)
        row = rows[0]
        return {row.workflow_id: self.submit(self.router.slot_map.owner(row.slot), row)}

    def submit(self, shard: str, row: NewWorkflow) -> tuple[str, str]:
        """Place ``row`` (grouped under ``shard``, the owner of its slot when queued);
        returns ``(workflow ID, shard)`` once it is durable, or raises its error."""
        me = Pending(row, threading.Event())
        with self._lock:
            self._open += 1
            self._queued.setdefault(shard, []).append(me)
            me.lead = shard not in self._leading
            self._leading.add(shard)
        while not me.lead and not me.done:
            me.wake.wait()
            me.wake.clear()
        if not me.done:
            self._lead(shard)
        if me.error is not None:
            raise me.error
        assert me.placed is not None
        return me.placed

    def waiting(self) -> int:
        """Submits of this client queued or being committed now."""
        with self._lock:
            return self._open

    def _lead(self, shard: str) -> None:
        with self._lock:
            batch, self._queued[shard] = take_batch(self._queued[shard], self.max_rows)
        try:
            self._commit(batch)
        finally:
            for p in batch:
                if p.error is None and p.placed is None:
                    p.error = ShardUnavailable(shard, "the submitting thread was interrupted")
                p.done = True
                p.wake.set()
            with self._lock:
                self.commits += 1
                self._open -= len(batch)
                rest = self._queued[shard]
                if rest:
                    rest[0].lead = True
                    rest[0].wake.set()
                else:
                    del self._queued[shard]
                    self._leading.discard(shard)

    def _commit(self, batch: list[Pending[threading.Event]]) -> None:
        try:
            placed = self._place([p.row for p in batch])
        except ShardUnavailable as exc:
            for p in batch:
                p.error = exc
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for p in batch:
                try:
                    p.placed = self._place([p.row])[p.row.workflow_id]
                except Exception as own:
                    p.error = own
            return
        for p in batch:
            p.placed = placed[p.row.workflow_id]
