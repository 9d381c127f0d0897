"""Values the engine passes around: status snapshots, claimed runs, recorded steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NewType

from shardflow.engine.states import WorkflowState

WorkflowId = NewType("WorkflowId", str)
ShardName = NewType("ShardName", str)


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A snapshot of one workflow's row."""

    workflow_id: str
    shard: str
    name: str
    queue: str
    state: WorkflowState
    priority: int
    attempt: int
    recoveries: int
    output: Any
    error: dict[str, Any] | None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_id: str | None
    dedup_key: str | None
    deadline: datetime | None
    lease_owner: str | None = None
    # The workflow this one was forked from (``cluster.fork``), or None.
    forked_from: str | None = None
    # The version of the app that ran the latest attempt (docs/upgrades.md), or None.
    app_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "shard": self.shard,
            "name": self.name,
            "queue": self.queue,
            "state": self.state.value,
            "priority": self.priority,
            "attempt": self.attempt,
            "recoveries": self.recoveries,
            "output": self.output,
            "error": self.error,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "parent_id": self.parent_id,
            "dedup_key": self.dedup_key,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "lease_owner": self.lease_owner,
            "forked_from": self.forked_from,
            "app_version": self.app_version,
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One recorded step: its output, or the error it ended with."""

    step_no: int
    name: str
    output: Any
    error: dict[str, Any] | None
    # When the step started (database clock), how long it ran (its retries included) and
    # the attempt that ran it; None for records written without them.
    started_at: datetime | None = None
    duration_ms: float | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_no": self.step_no,
            "name": self.name,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "duration_ms": self.duration_ms,
            "attempt": self.attempt,
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """A workflow claimed by a worker: what it needs to run it, fenced by ``attempt``."""

    workflow_id: str
    shard: str
    name: str
    queue: str
    inputs: str
    attempt: int
    recoveries: int
    parent_id: str | None
    state: WorkflowState
    # The database clock minus this process's clock, in seconds, measured at the claim:
    # durable timers are computed on the database clock (``WorkflowRun.db_time``).
    clock_offset: float = 0.0
    # time.monotonic() before the claim statement was sent. The database's lease runs
    # from the statement's start, so a lease counted locally from here never outlasts it,
    # however long the statement took (a lock wait, a frozen server).
    lease_from: float | None = None
    # The workflow's slot, and the trace context stored at submit (shardflow/tracing.py).
    slot: int | None = None
    trace_context: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A row to insert at submit time; values already routed and serialized."""

    workflow_id: str
    slot: int
    route_hash: int
    name: str
    queue: str
    priority: int
    inputs: str
    delay_seconds: float | None
    timeout_seconds: float | None
    dedup_key: str | None
    parent_id: str | None
    # The submitter's trace context (propagator headers), or None: shardflow/tracing.py.
    trace_context: dict[str, str] | None = None
    # The flow-control key (docs/queues.md#flow-control), or None.
    partition_key: str | None = None
    # A debounced submit (docs/queues.md#debounce): its key and window, or None.
    debounce_key: str | None = None
    debounce_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class StepWrite:
    """A step checkpoint (or a recorded value: sleep, recv, event) of one run."""

    workflow_id: str
    attempt: int
    step_no: int
    name: str
    output: str | None
    error: dict[str, Any] | None
    # Epoch seconds on the database clock; how long the step ran (None: not a step).
    started_at: float | None = None
    duration_ms: float | None = None


@dataclass(frozen=True, slots=True)
class FinishWrite:
    """A run's final state, recorded once."""

    workflow_id: str
    attempt: int
    state: WorkflowState
    output: str | None
    error: dict[str, Any] | None
    reason: str | None = None
