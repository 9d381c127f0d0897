"""What the client hands out: a :class:`Submission` to send, a :class:`Page` of a
listing, a :class:`WorkflowHandle` to follow one workflow.

A handle needs little from the client (:class:`HandleClient`: look a workflow up, know
how long to ride out an outage, and say why work waits); it never imports the client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from shardflow.engine.app import Workflow
from shardflow.engine.coverage import CoverageClient, why_waiting
from shardflow.engine.listeners import Waiter, WaitFor, WaitListeners
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import TransientStoreError
from shardflow.errors import (
    ShardflowError,
    ShardUnavailable,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTimeout,
)
from shardflow.retry import budget

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Submission:
    """One workflow to submit with :meth:`Cluster.submit_many`."""

    workflow: Workflow[Any, Any] | str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    queue: str | None = None
    priority: int = 0
    dedup_key: str | None = None
    delay_seconds: float | None = None
    timeout_seconds: float | None = None
    partition_key: str | None = None
    debounce_key: str | None = None
    debounce_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`Cluster.list_workflows`; pass ``next_cursor`` for the next."""

    items: list[WorkflowStatus]
    next_cursor: str | None
    # Shards skipped because they were down (only with ``skip_unavailable=True``).
    unavailable: tuple[str, ...] = ()


class HandleClient(CoverageClient, Protocol):
    """What a handle needs from the client that made it."""

    @property
    def retry_seconds(self) -> float:
        """How long a read rides out a shard's restart before ShardUnavailable."""
        ...

    @property
    def listeners(self) -> WaitListeners:
        """What wakes a waiting handle (notifications of final writes)."""
        ...

    @property
    def codec(self) -> Codec:
        """Decodes a result a notification carried."""
        ...

    def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives (WorkflowNotFound if none)."""
        ...


class WorkflowHandle(Generic[R]):
    """A reference to one submitted workflow; ``R`` is the workflow's return type."""

    def __init__(self, cluster: HandleClient, workflow_id: str, shard: str) -> None:
        self.cluster = cluster
        self.workflow_id = workflow_id
        self.shard = shard

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, shard={self.shard!r})"

    def status(self) -> WorkflowStatus:
        status = self.cluster.get(self.workflow_id)
        self.shard = status.shard
        return status

    def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to end and return its result.

        Raises WorkflowFailed (ERROR or dead-lettered), WorkflowCancelled, or
        WorkflowTimeout if ``timeout`` seconds pass first (the workflow goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        listeners = self.cluster.listeners
        with listeners.watch(WaitFor.DONE, self.workflow_id) as waiter:
            # Registered before the first read: a final write committed from now on
            # wakes this wait; one committed earlier is what the read finds.
            while True:
                outcome = self.read_outcome(deadline, timeout)
                if outcome is not None:
                    return outcome.value
                remaining = None if deadline is None else deadline - time.monotonic()
                listeners.wait(
                    waiter,
                    self.shard,
                    listeners.recheck_seconds if remaining is None else remaining,
                )
                carried: WaitOutcome[R] | None = carried_outcome(self.cluster.codec, waiter)
                if carried is not None:
                    return carried.value

    def read_outcome(self, deadline: float | None, timeout: float | None) -> WaitOutcome[R] | None:
        """Read the row once: the result if the workflow ended (raising what ended it
        badly), None if it goes on; WorkflowTimeout once ``deadline`` has passed."""
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        status: WorkflowStatus | None = None
        unavailable: ShardflowError | None = None
        try:
            # A shard restarting or failing over is waited out, up to this call's own
            # timeout, not only the client's retry budget.
            with budget(self.cluster.retry_seconds if remaining is None else remaining):
                status = self.status()
        except (ShardUnavailable, TransientStoreError) as exc:
            unavailable = exc
        return judge_outcome(self.cluster, self.workflow_id, status, unavailable, deadline, timeout)


def carried_outcome(codec: Codec, waiter: Waiter) -> WaitOutcome[Any] | None:
    """The result the final write's notification carried to ``waiter``, if it did (a
    small success's result: no read of the row needed)."""
    return None if waiter.carried is None else WaitOutcome(codec.loads(waiter.carried))


def judge_outcome(
    cluster: CoverageClient,
    workflow_id: str,
    status: WorkflowStatus | None,
    unavailable: ShardflowError | None,
    deadline: float | None,
    timeout: float | None,
) -> WaitOutcome[Any] | None:
    """What one read of a waited-for workflow means: its result if it ended (raising
    what ended it badly), None if it goes on; WorkflowTimeout once ``deadline`` passed
    (only then does it ask the shard's worker registry why, for the message)."""
    if status is not None:
        if status.state is WorkflowState.SUCCESS:
            return WaitOutcome(status.output)
        if status.state is WorkflowState.ERROR:
            raise WorkflowFailed(workflow_id, status.error)
        if status.state is WorkflowState.DEAD:
            raise WorkflowFailed(
                workflow_id, {"type": "DeadLettered", "message": status.reason or ""}
            )
        if status.state is WorkflowState.CANCELLED:
            raise WorkflowCancelled(workflow_id, status.reason)
    if deadline is not None and time.monotonic() >= deadline:
        if unavailable is not None:
            raise WorkflowTimeout(
                f"workflow {workflow_id!r}: no answer after {timeout}s ({unavailable})"
            )
        state = status.state.value if status is not None else "unknown"
        why = None if status is None else why_waiting(cluster, status)
        raise WorkflowTimeout(
            f"workflow {workflow_id!r} still {state} after {timeout}s" + (f": {why}" if why else "")
        )
    return None


@dataclass(frozen=True, slots=True)
class WaitOutcome(Generic[R]):
    value: R
