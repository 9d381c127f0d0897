"""Errors of the engine's storage boundary (internal; users see ShardflowError)."""

from __future__ import annotations

from shardflow.errors import ShardflowError


class StoreError(ShardflowError):
    """An unexpected database error on a shard (not a connectivity problem)."""


class TransientStoreError(StoreError):
    """A statement failed in a way worth retrying: deadlock, lock or statement timeout,
    serialization failure. The shard itself is fine."""


class Fenced(ShardflowError):
    """This run no longer owns the workflow: cancelled, finished, or claimed by another."""

    def __init__(self, workflow_id: str, state: str | None) -> None:
        self.workflow_id = workflow_id
        self.state = state
        super().__init__(f"workflow {workflow_id!r} is no longer ours (state {state})")


class DedupConflict(ShardflowError):
    """A dedup key is already held by an active workflow of the queue."""
