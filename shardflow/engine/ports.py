"""What a workflow run needs from outside, as protocols.

The runner and the primitives (:mod:`~shardflow.engine.primitives`) talk to other
workflows only through :class:`RunClient` (:class:`~shardflow.engine.cluster.Cluster`
provides it; nothing below the client imports the client), and write checkpoints
through a :class:`RunWriter` (the store, or the worker's group committer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from shardflow.engine.app import Workflow
from shardflow.engine.records import FinishWrite, StepRecord, StepWrite, WorkflowStatus
from shardflow.engine.signals import RunEvent


class RunClient(Protocol):
    """The client calls a workflow makes: look up, message, events, children, wake."""

    def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives (WorkflowNotFound if none)."""
        ...

    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Deliver ``message``; False if ``idempotency_key`` was delivered before."""
        ...

    def get_event(
        self,
        workflow_id: str,
        key: str,
        timeout: float = 0.0,
        *,
        interrupt: RunEvent | None = None,
    ) -> Any:
        """The value another workflow published under ``key`` (None after ``timeout``)."""
        ...

    def submit_child(
        self,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        workflow_id: str,
        parent_id: str,
    ) -> object:
        """Start a child workflow under a fixed ID (idempotent)."""
        ...

    def wake(self, workflow_id: str, wait_for: str | None = None) -> bool:
        """Wake a suspended workflow if it waits for ``wait_for``."""
        ...


class RunWriter(Protocol):
    """Where a run's checkpoints and final state are written (fenced on the attempt)."""

    def record_step(self, shard: str, write: StepWrite) -> StepRecord | None:
        """None if written; the winning record if another run wrote this step first.
        Raises :class:`~shardflow.engine.store_errors.Fenced` if the run lost the
        workflow."""
        ...

    def finish(self, shard: str, write: FinishWrite) -> bool:
        """Record the final state once; False if the run was fenced off."""
        ...


class AsyncRunWriter(RunWriter, Protocol):
    """A writer whose checkpoints an async run can await without holding a thread (the
    worker's group committer)."""

    async def record_step_async(self, shard: str, write: StepWrite) -> StepRecord | None: ...

    async def finish_async(self, shard: str, write: FinishWrite) -> bool: ...
