"""The client's side of durable waits: messages, events, wake-ups, children, fork.

Mixed into :class:`~shardflow.engine.cluster.Cluster`; kept apart so that each module
reads as one concern.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shardflow.engine.app import Workflow
from shardflow.engine.records import NewWorkflow, WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.errors import (
    RoutingError,
    ShardUnavailable,
    WorkflowConflict,
    WorkflowNotFound,
)
from shardflow.retry import budget, idempotent
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap

if TYPE_CHECKING:
    from shardflow.engine.cluster import Cluster, Submission, WorkflowHandle

# Lookups follow at most this many tombstones or redirects; placements retry this often.
MAX_HOPS = 4
REDIRECTS = 8


class WaitsClient:
    """Messages, events, wake-ups, children and fork, for :class:`Cluster`."""

    codec: Codec
    store: Store
    router: Router
    retry_seconds: float

    if TYPE_CHECKING:

        def get(self, workflow_id: str) -> WorkflowStatus: ...

        def check_identity(self, shard: str) -> None: ...

        def refresh_topology(self) -> SlotMap: ...

        def _new_row(self, sub: Submission, new_ids: Any = None) -> NewWorkflow: ...

        def _insert(self, rows: list[NewWorkflow]) -> dict[str, str]: ...

    def _client(self) -> Cluster:
        from shardflow.engine.cluster import Cluster

        assert isinstance(self, Cluster)
        return self

    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``message`` to a workflow. With an ``idempotency_key``, sending again is a
        no-op. Returns False for such a duplicate. Follows the workflow if it moved.

        Without a key, one is drawn per call before the first attempt, so a retry after a
        lost commit answer never delivers the message twice."""
        payload = self.codec.dumps(message, f"message to {workflow_id!r}")
        message_id = idempotency_key or str(uuid.uuid4())
        return self._send(workflow_id, topic or "", message_id, payload)

    @idempotent
    def _send(self, workflow_id: str, topic: str, message_id: str, payload: str) -> bool:
        shard = self.get(workflow_id).shard
        for _ in range(MAX_HOPS):
            delivery = self.store.send_message(
                shard,
                workflow_id=workflow_id,
                topic=topic,
                message_id=message_id,
                payload=payload,
            )
            if delivery.outcome != "moved":
                return delivery.outcome == "sent"
            shard = delivery.moved_to or self.get(workflow_id).shard
        raise RoutingError(f"workflow {workflow_id!r} kept moving while a message was sent")

    def get_event(
        self,
        workflow_id: str,
        key: str,
        timeout: float = 0.0,
        *,
        interrupt: threading.Event | None = None,
    ) -> Any:
        """The value a workflow published under ``key``, waiting up to ``timeout``
        seconds for it; None if it is not set by then. A workflow that does not exist
        yet, or whose shard is unreachable for a while, is waited for the same way."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            remaining = deadline - time.monotonic()
            try:
                with budget(max(min(remaining, self.retry_seconds), 0.0)):
                    found, value = self._read_event(workflow_id, key)
            except WorkflowNotFound:
                found, value = False, None
            except ShardUnavailable:
                if deadline - time.monotonic() <= 0:
                    raise
                found, value = False, None
            if found:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = min(delay, remaining)
            if interrupt is not None:
                if interrupt.wait(pause):
                    return None
            else:
                time.sleep(pause)
            delay = min(delay * 1.5, 0.25)

    @idempotent
    def _read_event(self, workflow_id: str, key: str) -> tuple[bool, Any]:
        shard = self.get(workflow_id).shard
        return self.store.get_event(shard, workflow_id, key)

    @idempotent
    def wake_parent_of(self, workflow_id: str) -> bool:
        """Wake the parent of a workflow that ended, if the parent waits for a child."""
        try:
            parent_id = self.get(workflow_id).parent_id
            return parent_id is not None and self.wake(parent_id, wait_for="child")
        except WorkflowNotFound:
            return False

    @idempotent
    def wake(self, workflow_id: str, wait_for: str | None = None) -> bool:
        """Wake a suspended workflow now (if it waits for ``wait_for``)."""
        for _ in range(MAX_HOPS):
            status = self.get(workflow_id)
            if status.state is not WorkflowState.SUSPENDED:
                return False
            if self.store.wake(status.shard, workflow_id, wait_for):
                return True
            if self.get(workflow_id).shard == status.shard:
                return False  # not waiting for that
        return False

    def submit_child(
        self,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        workflow_id: str,
        parent_id: str,
    ) -> WorkflowHandle[Any]:
        from shardflow.engine.cluster import Submission, WorkflowHandle

        row = dataclasses.replace(
            self._new_row(Submission(workflow, args, kwargs, workflow_id)), parent_id=parent_id
        )
        placed = self._insert([row])
        return WorkflowHandle(self._client(), workflow_id, placed[workflow_id])

    def fork(
        self, workflow_id: str, from_step: int, new_workflow_id: str | None = None
    ) -> WorkflowHandle[Any]:
        """A new workflow with the same inputs that reuses the recorded outputs of steps
        before ``from_step`` and runs again from there."""
        if from_step < 0:
            raise ValueError("from_step must be >= 0")
        status = self.get(workflow_id)
        source = self.store.fork_source(status.shard, workflow_id)
        if source is None:
            raise WorkflowNotFound(workflow_id)
        name, queue, priority, inputs = source.name, source.queue, source.priority, source.inputs
        new_id = new_workflow_id or f"{workflow_id}:fork:{uuid.uuid4().hex[:12]}"
        from shardflow.engine.cluster import WorkflowHandle, _check_id

        _check_id(new_id)
        # The fork owns its values: a claim-checked input is copied to a new blob, and
        # step outputs are serialized again (a large one to a new blob), so retention of
        # either workflow leaves the other's values in place.
        inputs = self.codec.copy_stored(inputs)
        steps = [
            (s.step_no, s.name, self.codec.dumps(s.output, "step output"), s.error)
            for s in self.store.steps(status.shard, workflow_id)
            if s.step_no < from_step
        ]
        route_hash, slot, _ = self.router.locate(new_id)
        row = NewWorkflow(
            workflow_id=new_id,
            slot=slot,
            route_hash=route_hash,
            name=name,
            queue=queue,
            priority=priority,
            inputs=inputs,
            delay_seconds=None,
            timeout_seconds=None,
            dedup_key=None,
            parent_id=None,
        )
        delay = 0.05
        for _ in range(REDIRECTS):
            shard = self.router.slot_map.owner(slot)
            self.check_identity(shard)
            if self.store.insert_fork(shard, row, steps):
                return WorkflowHandle(self._client(), new_id, shard)
            if self.store.existing(shard, [new_id]):
                raise WorkflowConflict(f"workflow id {new_id!r} exists already")
            # Not this shard's slot, or the slot is being moved: wait for the map to settle.
            self.refresh_topology()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise RoutingError(
            f"could not place fork {new_id!r}: its slot is being moved; try again later"
        )
