"""The rows the store returns: small frozen values, read from result rows by column name
(psycopg row factories), never by position."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import RowFactory, kwargs_row

from shardflow.engine.records import Claim, StepRecord, WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState

# -- leases -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one heartbeat statement did to a worker's leases on a shard: those renewed,
    those lost. An ID in neither was locked by another transaction at that moment (its
    own commit, most often) and is decided at the next heartbeat."""

    renewed: frozenset[str]
    lost: frozenset[str]


# -- topology ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotOwnership:
    """One ``slot_ownership`` row of a shard."""

    slot: int
    state: str
    peer: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class SlotHolding:
    """A shard's part in one slot: its state (OWNED, IMPORTING, MIGRATING_OUT) and the
    peer shard a move sends the slot to or takes it from."""

    state: str
    peer: str | None


NO_HOLDING = SlotHolding("", None)


# -- workflows ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Existing:
    """A workflow ID found on a shard: its workflow name, state, and (for a tombstone)
    the shard it moved to."""

    name: str
    state: str
    moved_to: str | None


@dataclass(frozen=True, slots=True)
class Located:
    """A workflow row as found on one shard, with where a move has taken it.

    ``moved_to``: set on a tombstone (state MOVED). ``moved_from`` and ``import_state``:
    set on a staged copy (state IMPORTING), which is not the workflow until its source
    holds a tombstone for it.
    """

    status: WorkflowStatus
    moved_to: str | None
    moved_from: str | None
    import_state: str | None
    move_id: str | None


@dataclass(frozen=True, slots=True)
class ForkSource:
    """What a fork copies from its source workflow."""

    name: str
    queue: str
    priority: int
    inputs: str


@dataclass(frozen=True, slots=True)
class QueueUsage:
    """A queue on one shard: RUNNING workflows, and those started within the period."""

    running: int
    started: int


# -- waits --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of a message: ``outcome`` is "sent", "duplicate" (this message ID was
    delivered before) or "moved" (the workflow moved to ``moved_to``; send it there)."""

    outcome: str
    moved_to: str | None = None


@dataclass(frozen=True, slots=True)
class RunState:
    state: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Target:
    """A locked status row that a write is aimed at."""

    state: str
    moved_to: str | None
    queue: str


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    payload: str


# -- operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnqueuedCount:
    """Ready ENQUEUED workflows of one (name, queue) on one shard."""

    name: str
    queue: str
    count: int


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Workflows of one queue in one state on one shard.

    ``oldest_seconds``: age of the oldest (since created for ENQUEUED, started for
    RUNNING, suspended for SUSPENDED). ``due``: ENQUEUED ones past any delay, SUSPENDED
    ones whose wake-up time has come. ``expired_leases``: RUNNING ones whose lease ran
    out (a worker died; any worker recovers them).
    """

    queue: str
    state: str
    workflows: int
    oldest_seconds: float
    due: int
    expired_leases: int


@dataclass(frozen=True, slots=True)
class ShardCounts:
    """One shard's queue depths, slot-ownership rows by state, and workflows finished
    in the last ``recent_seconds`` by final state (metrics, ``shardflow status``)."""

    depths: tuple[QueueDepth, ...]
    slots: dict[str, int]
    finished_recently: dict[str, int]


@dataclass(frozen=True, slots=True)
class RetentionBatch:
    """One retention batch: workflows deleted, and the deleted values that were blob
    references (to remove from the blob store once the batch committed)."""

    workflows: int
    blob_refs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker as a shard last saw it."""

    worker_id: str
    host: str
    pid: int
    version: str
    app: str
    workflows: tuple[str, ...]
    queues: tuple[str, ...]
    # Seconds since its last heartbeat on this shard (database clock).
    age_seconds: float = 0.0


# -- row factories that need more than the row ----------------------------------------------


def claim_rows(shard: str, sent: float | None) -> RowFactory[Claim]:
    """:class:`Claim` from a claim query's ``RETURNING`` row (see workflows.sql);
    ``sent`` is ``time.monotonic()`` taken before the claim statement was sent."""

    def make(
        *,
        workflow_id: str,
        name: str,
        queue: str,
        inputs: str,
        attempt: int,
        recoveries: int,
        parent_id: str | None,
        state: str,
        db_epoch: Any,
        slot: int | None = None,
        trace_context: dict[str, str] | None = None,
    ) -> Claim:
        return Claim(
            workflow_id=workflow_id,
            shard=shard,
            name=name,
            queue=queue,
            inputs=inputs,
            attempt=attempt,
            recoveries=recoveries,
            parent_id=parent_id,
            state=WorkflowState(state),
            clock_offset=float(db_epoch) - time.time(),
            lease_from=sent,
            slot=slot,
            trace_context=trace_context,
        )

    return kwargs_row(make)


def located_rows(shard: str, codec: Codec) -> RowFactory[Located]:
    """:class:`Located` from a ``get_workflow`` or ``list_workflows`` row."""

    def make(
        *,
        workflow_id: str,
        name: str,
        queue: str,
        state: str,
        priority: int,
        attempt: int,
        recoveries: int,
        output: str | None,
        error: dict[str, Any] | None,
        reason: str | None,
        created_at: datetime,
        updated_at: datetime,
        started_at: datetime | None,
        finished_at: datetime | None,
        parent_id: str | None,
        dedup_key: str | None,
        moved_to: str | None,
        deadline: datetime | None,
        lease_owner: str | None,
        moved_from: str | None = None,
        import_state: str | None = None,
        move_id: Any = None,
        forked_from: str | None = None,
        app_version: str | None = None,
    ) -> Located:
        status = WorkflowStatus(
            workflow_id=workflow_id,
            shard=shard,
            name=name,
            queue=queue,
            state=WorkflowState(state),
            priority=priority,
            attempt=attempt,
            recoveries=recoveries,
            output=codec.loads(output),
            error=error,
            reason=reason,
            created_at=created_at,
            updated_at=updated_at,
            started_at=started_at,
            finished_at=finished_at,
            parent_id=parent_id,
            dedup_key=dedup_key,
            deadline=deadline,
            lease_owner=lease_owner,
            forked_from=forked_from,
            app_version=app_version,
        )
        return Located(
            status, moved_to, moved_from, import_state, None if move_id is None else str(move_id)
        )

    return kwargs_row(make)


def step_rows(codec: Codec) -> RowFactory[StepRecord]:
    """:class:`StepRecord` from a ``load_steps`` or ``get_step`` row."""

    def make(
        *,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
        started_at: datetime | None = None,
        duration_ms: float | None = None,
        attempt: int | None = None,
    ) -> StepRecord:
        return StepRecord(
            step_no, name, codec.loads(output), error, started_at, duration_ms, attempt
        )

    return kwargs_row(make)


def worker_rows() -> RowFactory[WorkerRecord]:
    def make(
        *,
        worker_id: str,
        host: str,
        pid: int | None,
        version: str,
        app: str,
        workflows: list[str] | None,
        queues: list[str] | None,
        age_seconds: float | None,
    ) -> WorkerRecord:
        return WorkerRecord(
            worker_id=worker_id,
            host=host,
            pid=pid if isinstance(pid, int) else 0,
            version=version,
            app=app,
            workflows=tuple(str(w) for w in workflows or ()),
            queues=tuple(str(q) for q in queues or ()),
            age_seconds=float(age_seconds) if age_seconds is not None else 0.0,
        )

    return kwargs_row(make)
