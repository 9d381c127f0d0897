"""Filtered listing, bulk actions and the dashboard's views, at the storage boundary.

One method per named query (``shardflow/sql/queries/admin.sql``), each against one
shard; :mod:`shardflow.engine.bulk` goes across shards. Driver errors leave classified
as everywhere in the store (:mod:`~shardflow.engine.store._conn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import WorkflowState
from shardflow.engine.store._conn import ShardAccess
from shardflow.engine.store_errors import DedupConflict, StoreError
from shardflow.sql import query

ACTIVE = ("ENQUEUED", "RUNNING", "SUSPENDED")
RESUMABLE = ("CANCELLED", "ERROR", "DEAD")


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

    ``by_state`` is exact for every state but SUCCESS, which is estimated (the table's
    row estimate minus the exact counts: counting it exactly reads every row);
    ``success_estimated`` says so.
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
        params = filters.sql_params()
        params.update(
            after_created=after[0] if after else None,
            after_id=after[1] if after else None,
            limit=limit,
        )
        with self._conn(shard) as conn:
            # Unprepared: a generic plan could not see which filters are set.
            rows = conn.execute(query("admin_list_workflows"), params, prepare=False).fetchall()
        return [self._status(shard, row) for row in rows]

    def count_matching(self, shard: str, filters: WorkflowFilter, states: Sequence[str]) -> int:
        """How many workflows of ``shard`` match ``filters`` and are in one of ``states``."""
        params = filters.sql_params()
        params["states"] = list(states)
        with self._conn(shard) as conn:
            row = conn.execute(query("admin_count_matching"), params, prepare=False).fetchone()
        return int(row[0]) if row else 0

    # -- bulk actions (one batch, one transaction) --------------------------------------

    def cancel_matching(
        self, shard: str, filters: WorkflowFilter, batch: int, reason: str
    ) -> list[Cancelled]:
        """Cancel up to ``batch`` active workflows of ``shard`` that match ``filters``."""
        params = filters.sql_params()
        params.update(batch=batch, reason=reason)
        with self._conn(shard) as conn:
            rows = conn.execute(query("admin_cancel_matching"), params, prepare=False).fetchall()
        return [Cancelled(str(r[0]), r[1], bool(r[2])) for r in rows]

    def resume_matching(self, shard: str, filters: WorkflowFilter, batch: int) -> list[str]:
        """Resume up to ``batch`` resumable workflows of ``shard`` that match ``filters``.
        Raises DedupConflict if one of them would take an active workflow's dedup key
        (the whole batch is then left as it was)."""
        params = filters.sql_params()
        params["batch"] = batch
        try:
            with self._conn(shard) as conn:
                rows = conn.execute(
                    query("admin_resume_matching"), params, prepare=False
                ).fetchall()
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise DedupConflict(str(exc)) from exc
            raise
        return [str(r[0]) for r in rows]

    # -- the dashboard's views --------------------------------------------------------------

    def shard_info(self, shard: str, recent_seconds: float = 60.0) -> ShardInfo:
        """The overview of one shard: a few index-only reads, no scan of the table."""
        exact = ["ENQUEUED", "RUNNING", "SUSPENDED", "ERROR", "CANCELLED", "DEAD"]
        with self._conn(shard) as conn, conn.transaction():
            row = conn.execute(query("admin_shard_info"), {"seconds": recent_seconds}).fetchone()
            counts = conn.execute(query("admin_state_counts"), {"states": exact}).fetchall()
            estimate = conn.execute(query("admin_row_estimate")).fetchone()
            ready = conn.execute(query("admin_queue_ready")).fetchall()
            running = conn.execute(query("admin_queue_running")).fetchall()
            delayed = conn.execute(query("admin_delayed")).fetchone()
        assert row is not None
        by_state = {str(r[0]): int(r[1]) for r in counts}
        total = int(estimate[0]) if estimate and estimate[0] is not None else 0
        by_state["SUCCESS"] = max(total - sum(by_state.values()), 0)
        queues: dict[str, QueueLoad] = {}
        for r in ready:
            queues[str(r[0])] = QueueLoad(str(r[0]), int(r[1]), float(r[2]))
        for r in running:
            seen = queues.get(str(r[0]), QueueLoad(str(r[0])))
            queues[str(r[0])] = QueueLoad(
                seen.queue, seen.ready, seen.oldest_ready_seconds, int(r[1]), int(r[2])
            )
        return ShardInfo(
            server_version=str(row[0]),
            map_epoch=None if row[1] is None else int(row[1]),
            owned_slots=int(row[2]),
            finished_recently=int(row[3]),
            by_state=by_state,
            queues=queues,
            delayed=int(delayed[0]) if delayed else 0,
        )

    def latest_plan(self, shard: str) -> LatestPlan | None:
        with self._conn(shard) as conn:
            row = conn.execute(query("admin_latest_plan")).fetchone()
        if row is None:
            return None
        return LatestPlan(str(row[0]), list(row[1]), int(row[2]), row[3], row[4], row[5])

    def failures(self, shard: str, within_seconds: float, limit: int) -> list[FailureGroup]:
        with self._conn(shard) as conn:
            rows = conn.execute(
                query("admin_failures"), {"seconds": within_seconds, "limit": limit}
            ).fetchall()
        return [
            FailureGroup(shard, str(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4], str(r[5]), r[6])
            for r in rows
        ]

    def workflow_extra(self, shard: str, workflow_id: str) -> WorkflowExtra | None:
        with self._conn(shard) as conn:
            row = conn.execute(
                query("admin_workflow_extra"), {"workflow_id": workflow_id}
            ).fetchone()
        if row is None:
            return None
        return WorkflowExtra(str(row[0]), row[1], row[2], row[3], row[4], int(row[5]))

    def messages(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[MessageRecord]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            rows = conn.execute(query("admin_messages"), params).fetchall()
        return [
            MessageRecord(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), bool(r[5]), r[6])
            for r in rows
        ]

    def events(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[EventRecord]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            rows = conn.execute(query("admin_events"), params).fetchall()
        return [EventRecord(str(r[0]), str(r[1]), int(r[2]), r[3]) for r in rows]

    def stored_steps(
        self, shard: str, workflow_id: str, *, limit: int, max_chars: int
    ) -> list[StoredStep]:
        params = {"workflow_id": workflow_id, "limit": limit, "max_chars": max_chars}
        with self._conn(shard) as conn:
            rows = conn.execute(query("admin_steps"), params).fetchall()
        return [
            StoredStep(int(r[0]), str(r[1]), r[2], int(r[3] or 0), r[4], r[5], r[6], r[7])
            for r in rows
        ]

    def _status(self, shard: str, row: Sequence[Any]) -> WorkflowStatus:
        # Columns as in list_workflows (workflows.sql); row[16] (moved_to) is unused here.
        return WorkflowStatus(
            workflow_id=row[0],
            shard=shard,
            name=row[1],
            queue=row[2],
            state=WorkflowState(row[3]),
            priority=row[4],
            attempt=row[5],
            recoveries=row[6],
            output=self.codec.loads(row[7]),
            error=row[8],
            reason=row[9],
            created_at=row[10],
            updated_at=row[11],
            started_at=row[12],
            finished_at=row[13],
            parent_id=row[14],
            dedup_key=row[15],
            deadline=row[17],
            lease_owner=row[18],
        )
