"""The run a thread is executing, if any: how step calls find their checkpoints.

The context knows a run only by the :class:`ActiveRun` protocol (what a step call and a
log line need), so that it sits below both the registry (:mod:`~shardflow.engine.app`)
and the runner (:mod:`~shardflow.engine.runner`), which sets it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from shardflow.engine.policy import RetryPolicy

T = TypeVar("T")


class ActiveRun(Protocol):
    """A workflow run in progress on this thread (a :class:`~shardflow.engine.runner.
    WorkflowRun`)."""

    @property
    def workflow_id(self) -> str: ...

    @property
    def shard(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def next_step(self) -> int:
        """The position the next step call takes (a step's body sees its own + 1)."""
        ...

    @property
    def is_async(self) -> bool:
        """True for an async workflow's run (its steps are awaited on an event loop)."""
        ...

    def run_step(self, name: str, retry: RetryPolicy, fn: Callable[[], T]) -> T:
        """Replay step ``name`` from its record, or run ``fn`` and record it."""
        ...


class ActiveAsyncRun(ActiveRun, Protocol):
    """An async workflow's run (:class:`~shardflow.engine.aio.run.AsyncWorkflowRun`)."""

    async def run_step_async(
        self, name: str, retry: RetryPolicy, fn: Callable[[], Awaitable[T]]
    ) -> T:
        """Replay step ``name`` from its record, or await ``fn()`` and record it."""
        ...

    def in_thread(self, fn: Callable[[], T]) -> Awaitable[T]:
        """Run blocking ``fn`` in the run's thread pool, in this run's context."""
        ...


_current: contextvars.ContextVar[ActiveRun | None] = contextvars.ContextVar(
    "shardflow_run", default=None
)


def current_run() -> ActiveRun | None:
    return _current.get()


def enter(run: ActiveRun) -> contextvars.Token[ActiveRun | None]:
    return _current.set(run)


def leave(token: contextvars.Token[ActiveRun | None]) -> None:
    _current.reset(token)


def current_workflow_id() -> str | None:
    """The ID of the workflow this thread is running, or None outside a workflow."""
    run = _current.get()
    return None if run is None else run.workflow_id
