"""Operator control of existing workflows: cancel (with their children) and resume.

A part of :class:`~shardflow.engine.cluster.Cluster`. Each write locks the workflow's
row and checks its state in its own transaction; zero rows affected means the workflow
ended or moved meanwhile, so it is looked up again (following the tombstone) and the
write retried where it is now.
"""

from __future__ import annotations

from shardflow.engine.locator import MAX_HOPS, Locator
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import RESUMABLE
from shardflow.engine.store import DedupConflict, Store
from shardflow.engine.waits import Waits
from shardflow.errors import ShardflowError, WorkflowDeduplicated, WorkflowNotFound
from shardflow.retry import idempotent


class Control:
    """Cancel and resume."""

    def __init__(self, store: Store, locator: Locator, waits: Waits, retry_seconds: float) -> None:
        self.store = store
        self.locator = locator
        self.waits = waits
        self.retry_seconds = retry_seconds

    @idempotent
    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        """See :meth:`Cluster.cancel`."""
        for _ in range(MAX_HOPS):
            status = self.locator.find_to_write(workflow_id)
            # Zero rows updated means the workflow ended, or moved while this waited on
            # its row lock: look it up again (following the tombstone) and retry there.
            if not status.state.is_active or self.store.cancel(status.shard, workflow_id, reason):
                break
        self.cancel_children(workflow_id, reason)
        # A parent waiting for this child learns of its end now, not at its next re-check.
        self.waits.wake_parent_of(workflow_id)
        return self.locator.find(workflow_id)

    @idempotent
    def cancel_children(self, workflow_id: str, reason: str) -> int:
        """See :meth:`Cluster.cancel_children`."""
        status = self.locator.find(workflow_id)
        cancelled = 0
        for child_id in self.store.child_ids(status.shard, workflow_id):
            try:
                child = self.locator.find_to_write(child_id)
            except WorkflowNotFound:
                continue  # recorded, but its submit never landed
            if child.parent_id != workflow_id:
                continue  # a fork's copied record names the original's child
            if child.state.is_active:
                self.store.cancel(child.shard, child_id, reason)
                cancelled += 1
            cancelled += self.cancel_children(child_id, reason)
        return cancelled

    @idempotent
    def resume(self, workflow_id: str) -> WorkflowStatus:
        """See :meth:`Cluster.resume`."""
        status = self.locator.find_to_write(workflow_id)
        for _ in range(MAX_HOPS):
            if status.state not in RESUMABLE:
                break
            try:
                if self.store.resume(status.shard, workflow_id):
                    break
            except DedupConflict:
                raise WorkflowDeduplicated(status.queue, status.dedup_key or "") from None
            status = self.locator.find_to_write(workflow_id)  # moved: retry where it is now
        if status.state not in RESUMABLE and not status.state.is_active:
            raise ShardflowError(f"workflow {workflow_id!r} is {status.state.value}; cannot resume")
        return self.locator.find(workflow_id)
