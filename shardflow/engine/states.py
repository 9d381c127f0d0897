"""Workflow states. The values match the CHECK constraint in migration 0001."""

from __future__ import annotations

import enum


class WorkflowState(str, enum.Enum):
    ENQUEUED = "ENQUEUED"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    # Dead-lettered: crashed more than max_recoveries times. Resumable.
    DEAD = "DEAD"
    # Rebalancer only; never runnable.
    IMPORTING = "IMPORTING"
    MOVED = "MOVED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_active(self) -> bool:
        return self in ACTIVE


TERMINAL = frozenset(
    {WorkflowState.SUCCESS, WorkflowState.ERROR, WorkflowState.CANCELLED, WorkflowState.DEAD}
)
ACTIVE = frozenset({WorkflowState.ENQUEUED, WorkflowState.RUNNING, WorkflowState.SUSPENDED})
RESUMABLE = frozenset({WorkflowState.CANCELLED, WorkflowState.ERROR, WorkflowState.DEAD})
