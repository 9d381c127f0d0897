"""The run a thread is executing, if any: how step calls find their checkpoints."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardflow.engine.runner import WorkflowRun

_current: contextvars.ContextVar[WorkflowRun | None] = contextvars.ContextVar(
    "shardflow_run", default=None
)


def current_run() -> WorkflowRun | None:
    return _current.get()


def enter(run: WorkflowRun) -> contextvars.Token[WorkflowRun | None]:
    return _current.set(run)


def leave(token: contextvars.Token[WorkflowRun | None]) -> None:
    _current.reset(token)


def current_workflow_id() -> str | None:
    """The ID of the workflow this thread is running, or None outside a workflow."""
    run = _current.get()
    return None if run is None else run.workflow_id
