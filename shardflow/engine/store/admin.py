"""Filtered listing, bulk actions and the dashboard's views, at the storage boundary.

One method per named query (``shardflow/sql/queries/admin.sql``), each against one
shard; :mod:`shardflow.engine.bulk` goes across shards. Driver errors leave classified
as everywhere in the store (:mod:`~shardflow.engine.store._conn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory, class_row, dict_row, kwargs_row, scalar_row

from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import statements
from shardflow.engine.store._conn import ShardAccess, fetch_all, fetch_one
from shardflow.engine.store_errors import DedupConflict, StoreError
from shardflow.sql import query

R = TypeVar("R")
# Up to this many SUCCESS workflows a shard counts them exactly; past it, the overview
# shows the planner's estimate (counting exactly would read them all).
EXACT_SUCCESS = 100_000

# The states a bulk cancel and a bulk resume act on.
ACTIVE = tuple(
    s.value for s in (WorkflowState.ENQUEUED, WorkflowState.RUNNING, WorkflowState.SUSPENDED)
)
RESUMABLE = tuple(
    s.value for s in (WorkflowState.CANCELLED, WorkflowState.ERROR, WorkflowState.DEAD)
)


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """One queue on one shard: ready ENQUEUED workflows, the age of the oldest, RUNNING
    ones and those among them whose lease expired."""

    queue: str
    ready: int = 0
    oldest_ready_seconds: float | None = None
    running: int = 0
    expired_leases: int = 0


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What the overview shows of one shard.

    ``by_state`` is exact for every state. SUCCESS, usually most of the table, is exact
    up to ``EXACT_SUCCESS`` workflows and estimated past it (the table's row estimate
    minus the exact counts: counting it exactly would read every row);
    ``success_estimated`` says which.
    """

    server_version: str
    map_epoch: int | None
    owned_slots: int
    finished_recently: int
    by_state: dict[str, int]
    queues: dict[str, QueueLoad]
    delayed: int
    success_estimated: bool = True

    @property
    def oldest_ready_seconds(self) -> float | None:
        ages = [q.oldest_ready_seconds for q in self.queues.values() if q.ready]
        return max((a for a in ages if a is not None), default=None)

    @property
    def expired_leases(self) -> int:
        return sum(q.expired_leases for q in self.queues.values())


@dataclass(frozen=True, slots=True)
class LatestPlan:
    """The newest rebalance plan a shard has recorded."""

    plan_id: str
    target: list[Any]  # slot ranges [[first, last, shard], ...]
    moves: int
    created_at: datetime
    finished_at: datetime | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Recent ERROR or DEAD workflows of one shard with one name and error type."""

    shard: str
    name: str
    state: str
    error_type: str
    count: int
    last_at: datetime | None
    example_id: str
    example_message: str


@dataclass(frozen=True, slots=True)
class WorkflowExtra:
    """A workflow's stored values as text (a claim-check reference stays a reference)
    and what it waits for."""

    inputs: str
    output: str | None
    wait_for: str | None
    wake_at: datetime | None
    lease_expires_at: datetime | None
    slot: int


@dataclass(frozen=True, slots=True)
class MessageRecord:
    seq: int
    topic: str
    message_id: str
    payload: str  # at most ``max_chars`` characters
    size: int
    consumed: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    key: str
    value: str  # at most ``max_chars`` characters
    size: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredStep:
    """A recorded step with its output as stored (at most ``max_chars`` characters)."""

    step_no: int
    name: str
    output: str | None
    size: int
    error: dict[str, Any] | None
    started_at: datetime | None
    duration_ms: float | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """One workflow a bulk cancel ended, with what the client must do after it."""

    workflow_id: str
    parent_id: str | None
    has_children: bool


class AdminStore(ShardAccess):
    """Named queries of the filtered, bulk and dashboard operations of one cluster."""

    # -- listing and counting -------------------------------------------------------------

    def list_filtered(
        self,
        shard: str,
        filters: WorkflowFilter,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[WorkflowStatus]:
        """The next ``limit`` workflows of ``shard`` matching ``filters`` after the keyset
        position ``after``, newest first."""
        return self.perform(
            shard, statements.list_filtered(shard, self.codec, filters, after, limit)
        )

    def count_matching(self, shard: str, filters: WorkflowFilter, states: Sequence[str]) -> int:
        """How many workflows of ``shard`` match ``filters`` and are in one of ``states``."""
        params = filters.sql_params()
        params["states"] = list(states)
        counts = self._unprepared(shard, "admin_count_matching", params, scalar_row)
        return int(counts[0]) if counts else 0

    # -- bulk actions (one batch, one transaction) --------------------------------------

    def cancel_matching(
        self, shard: str, filters: WorkflowFilter, batch: int, reason: str
    ) -> list[Cancelled]:
        """Cancel up to ``batch`` active workflows of ``shard`` that match ``filters``."""
        params = filters.sql_params()
        params.update(batch=batch, reason=reason)
        return self._unprepared(shard, "admin_cancel_matching", params, kwargs_row(_cancelled))

    def resume_matching(self, shard: str, filters: WorkflowFilter, batch: int) -> list[str]:
        """Resume up to ``batch`` resumable workflows of ``shard`` that match ``filters``.
        Raises DedupConflict if one of them would take an active workflow's dedup key
        (the whole batch is then left as it was)."""
        params = filters.sql_params()
        params["batch"] = batch
        try:
            return self._unprepared(shard, "admin_resume_matching", params, scalar_row)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise DedupConflict(str(exc)) from exc
            raise

    # -- the dashboard's views --------------------------------------------------------------

    def shard_info(self, shard: str, recent_seconds: float = 60.0) -> ShardInfo:
        """The overview of one shard: a few index-only reads, no scan of the table."""
        exact = [*ACTIVE, *RESUMABLE]
        with self._conn(shard) as conn, conn.transaction():
            head = fetch_one(conn, "admin_shard_info", {"seconds": recent_seconds}, dict_row)
            counts = fetch_all(conn, "admin_state_counts", {"states": exact}, dict_row)
            estimate = fetch_one(conn, "admin_row_estimate", None, scalar_row)
            ready = fetch_all(conn, "admin_queue_ready", None, dict_row)
            running = fetch_all(conn, "admin_queue_running", None, dict_row)
            delayed = fetch_one(conn, "admin_delayed", None, scalar_row)
            bounded = fetch_one(conn, "admin_success_bounded", {"cap": EXACT_SUCCESS}, scalar_row)
        assert head is not None
        by_state = {str(c["state"]): int(c["workflows"]) for c in counts}
        success = int(bounded or 0)
        estimated = success >= EXACT_SUCCESS
        if estimated:
            success = max(int(estimate or 0) - sum(by_state.values()), EXACT_SUCCESS)
        by_state[WorkflowState.SUCCESS.value] = success
        queues: dict[str, QueueLoad] = {}
        for r in ready:
            queues[r["queue"]] = QueueLoad(
                r["queue"], int(r["ready"]), float(r["oldest_ready_seconds"])
            )
        for r in running:
            seen = queues.get(r["queue"], QueueLoad(r["queue"]))
            queues[r["queue"]] = QueueLoad(
                seen.queue,
                seen.ready,
                seen.oldest_ready_seconds,
                int(r["running"]),
                int(r["expired_leases"]),
            )
        epoch = head["map_epoch"]
        return ShardInfo(
            # "15.18 (Debian 15.18-0+deb12u1)": the version, without the packager's note.
            server_version=str(head["server_version"]).split(" ", 1)[0],
            map_epoch=None if epoch is None else int(epoch),
            owned_slots=int(head["owned_slots"]),
            finished_recently=int(head["finished_recently"]),
            by_state=by_state,
            queues=queues,
            delayed=int(delayed or 0),
            success_estimated=estimated,
        )

    def latest_plan(self, shard: str) -> LatestPlan | None:
        with self._conn(shard) as conn:
            return fetch_one(conn, "admin_latest_plan", None, class_row(LatestPlan))

    def failures(self, shard: str, within_seconds: float, limit: int) -> list[FailureGroup]:
        params = {"seconds": within_seconds, "limit": limit}
        with self._conn(shard) as conn:
            groups = fetch_all(conn, "admin_failures", params, dict_row)
        return [FailureGroup(shard=shard, **group) for group in groups]

    def workflow_extra(self, shard: str, workflow_id: str) -> WorkflowExtra | None:
        params = {"workflow_id": workflow_id}
        with self._conn(shard) as conn:
            return fetch_one(conn, "admin_workflow_extra", params, class_row(WorkflowExtra))

    def messages(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[MessageRecord]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            return fetch_all(conn, "admin_messages", params, class_row(MessageRecord))

    def events(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[EventRecord]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            return fetch_all(conn, "admin_events", params, class_row(EventRecord))

    def stored_steps(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[StoredStep]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            return fetch_all(conn, "admin_steps", params, class_row(StoredStep))

    def _unprepared(
        self, shard: str, name: str, params: dict[str, Any], rows: RowFactory[R]
    ) -> list[R]:
        """Run the named query ``name`` unprepared (a custom plan per call: the planner
        sees which filters are set) and read every row with ``rows``."""
        with self._conn(shard) as conn, conn.cursor(row_factory=rows) as cur:
            return cur.execute(query(name), params, prepare=False).fetchall()


def _cancelled(
    *, workflow_id: str, parent_id: str | None, has_children: bool, notified: Any
) -> Cancelled:
    return Cancelled(workflow_id, parent_id, bool(has_children))
