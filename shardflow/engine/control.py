"""Operator control of existing workflows: cancel (with their children) and resume.

A part of :class:`~shardflow.engine.cluster.Cluster`. Each write locks the workflow's
row and checks its state in its own transaction; zero rows affected means the workflow
ended or moved meanwhile, so it is looked up again (following the tombstone) and the
write retried where it is now. Each call is a plan (:mod:`~shardflow.engine.driving`):
the sync client drives it, the async client awaits the same plan on its async store.
"""

from __future__ import annotations

from shardflow.engine.driving import Plan, Read, Transact, drive
from shardflow.engine.locator import MAX_HOPS, Locator
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import RESUMABLE
from shardflow.engine.store import DedupConflict, Store, statements
from shardflow.engine.waits import Waits
from shardflow.errors import ShardflowError, WorkflowDeduplicated, WorkflowNotFound
from shardflow.retry import idempotent


class Control:
    """Cancel and resume, each written once as a plan (:mod:`~shardflow.engine.driving`):
    the sync client drives it here, the async client awaits the same plan."""

    def __init__(self, store: Store, locator: Locator, waits: Waits, retry_seconds: float) -> None:
        self.store = store
        self.locator = locator
        self.waits = waits
        self.retry_seconds = retry_seconds

    @idempotent
    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        """See :meth:`Cluster.cancel`."""
        return drive(self.cancel_plan(workflow_id, reason), self.store)

    @idempotent
    def cancel_children(self, workflow_id: str, reason: str) -> int:
        """See :meth:`Cluster.cancel_children`."""
        return drive(self.cancel_children_plan(workflow_id, reason), self.store)

    @idempotent
    def resume(self, workflow_id: str) -> WorkflowStatus:
        """See :meth:`Cluster.resume`."""
        return drive(self.resume_plan(workflow_id), self.store)

    def cancel_plan(self, workflow_id: str, reason: str) -> Plan[WorkflowStatus]:
        """Cancel a workflow and its children; wake a parent waiting for it. Safe to
        repeat (callers retry the whole plan)."""
        locator = self.locator
        for _ in range(MAX_HOPS):
            status = yield from locator.find_plan(workflow_id, settle=True)
            if not status.state.is_active:
                break
            # Zero rows updated means the workflow ended, or moved while this waited on
            # its row lock: look it up again (following the tombstone) and retry there.
            if (yield Read(status.shard, statements.cancel(workflow_id, reason))):
                break
        yield from self.cancel_children_plan(workflow_id, reason)
        # A parent waiting for this child learns of its end now, not at its next re-check.
        yield from self.waits.wake_parent_plan(workflow_id)
        return (yield from locator.find_plan(workflow_id))

    def cancel_children_plan(self, workflow_id: str, reason: str) -> Plan[int]:
        """Cancel the children (and theirs) a workflow started; how many were active."""
        locator = self.locator
        status = yield from locator.find_plan(workflow_id)
        child_ids: list[str] = yield Read(
            status.shard, statements.child_ids(self.store.codec, workflow_id)
        )
        cancelled = 0
        for child_id in child_ids:
            try:
                child = yield from locator.find_plan(child_id, settle=True)
            except WorkflowNotFound:
                continue  # recorded, but its submit never landed
            if child.parent_id != workflow_id:
                continue  # a fork's copied record names the original's child
            if child.state.is_active:
                yield Read(child.shard, statements.cancel(child_id, reason))
                cancelled += 1
            cancelled += yield from self.cancel_children_plan(child_id, reason)
        return cancelled

    def resume_plan(self, workflow_id: str) -> Plan[WorkflowStatus]:
        """Re-queue a CANCELLED, ERROR or DEAD workflow where it is now (following it
        if it moves meanwhile). Safe to repeat."""
        locator = self.locator
        status = yield from locator.find_plan(workflow_id, settle=True)
        for _ in range(MAX_HOPS):
            if status.state not in RESUMABLE:
                break
            try:
                if (yield Transact(status.shard, statements.resume(workflow_id))):
                    break
            except DedupConflict:
                raise WorkflowDeduplicated(status.queue, status.dedup_key or "") from None
            # Zero rows updated: it moved (or changed) meanwhile; retry where it is now.
            status = yield from locator.find_plan(workflow_id, settle=True)
        if status.state not in RESUMABLE and not status.state.is_active:
            raise ShardflowError(f"workflow {workflow_id!r} is {status.state.value}; cannot resume")
        return (yield from locator.find_plan(workflow_id))
