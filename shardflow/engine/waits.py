"""The client's side of durable waits: messages, events, wake-ups, children, fork.

A part of :class:`~shardflow.engine.cluster.Cluster` (which delegates to it); it finds
workflows and places new ones through the :class:`~shardflow.engine.locator.Locator`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardflow import tracing
from shardflow.engine.app import Workflow
from shardflow.engine.driving import Plan, Read, Transact, drive
from shardflow.engine.handles import Submission
from shardflow.engine.listeners import WaitFor, WaitListeners
from shardflow.engine.locator import MAX_HOPS, Locator
from shardflow.engine.placement import check_id
from shardflow.engine.records import NewWorkflow
from shardflow.engine.serialization import Codec
from shardflow.engine.signals import RunEvent
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Delivery, Store, statements
from shardflow.errors import RoutingError, ShardUnavailable, WorkflowNotFound
from shardflow.retry import budget, idempotent


class Waits:
    """Messages, events, wake-ups, children and fork."""

    def __init__(
        self,
        codec: Codec,
        store: Store,
        locator: Locator,
        new_row: Callable[[Submission], NewWorkflow],
        retry_seconds: float,
        listeners: WaitListeners,
    ) -> None:
        self.codec = codec
        self.store = store
        self.locator = locator
        self.new_row = new_row
        self.retry_seconds = retry_seconds
        self.listeners = listeners

    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """See :meth:`Cluster.send`."""
        return self._send(*self.prepare_send(workflow_id, message, topic, idempotency_key))

    def prepare_send(
        self, workflow_id: str, message: Any, topic: str | None, idempotency_key: str | None
    ) -> tuple[str, str, str, str]:
        """``(workflow_id, topic, message_id, payload)`` of a send: the message encoded
        and its ID fixed before the first attempt (a retry never delivers it twice)."""
        payload = self.codec.dumps(message, f"message to {workflow_id!r}")
        return workflow_id, topic or "", idempotency_key or str(uuid.uuid4()), payload

    @idempotent
    def _send(self, workflow_id: str, topic: str, message_id: str, payload: str) -> bool:
        plan = self.send_plan(workflow_id, topic, message_id, payload)
        return drive(plan, self.store)

    def send_plan(self, workflow_id: str, topic: str, message_id: str, payload: str) -> Plan[bool]:
        """Deliver an encoded message under a fixed ``message_id``, following the
        workflow if it moves meanwhile; False if that message ID was delivered before.
        A plan (:mod:`~shardflow.engine.driving`): the async client awaits it."""
        # A staged copy whose move is decided takes the message (it wakes when activated).
        shard = (yield from self.locator.find_plan(workflow_id)).shard
        for _ in range(MAX_HOPS):
            delivery: Delivery = yield Transact(
                shard, statements.send_message(workflow_id, topic, message_id, payload)
            )
            if delivery.outcome != "moved":
                return delivery.outcome == "sent"
            shard = delivery.moved_to or (yield from self.locator.find_plan(workflow_id)).shard
        raise RoutingError(f"workflow {workflow_id!r} kept moving while a message was sent")

    def get_event(
        self,
        workflow_id: str,
        key: str,
        timeout: float = 0.0,
        *,
        interrupt: RunEvent | None = None,
    ) -> Any:
        """See :meth:`Cluster.get_event`."""
        deadline = time.monotonic() + timeout
        with self.listeners.watch(WaitFor.EVENT, workflow_id) as waiter:
            # Registered before the first read: an event published from now on wakes
            # this wait; one published earlier is what the read finds.
            while True:
                found, value, shard = self.read_event_once(
                    workflow_id, key, deadline - time.monotonic()
                )
                if found:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.listeners.wait(waiter, shard, remaining, interrupt)
                if interrupt is not None and interrupt.is_set():
                    return None

    def read_event_once(
        self, workflow_id: str, key: str, remaining: float
    ) -> tuple[bool, Any, str]:
        """One read of :meth:`get_event`'s loop, riding out an outage up to ``remaining``
        seconds: (found, value, the shard to listen to)."""
        deadline = time.monotonic() + remaining
        shard: str | None = None
        try:
            with budget(max(min(remaining, self.retry_seconds), 0.0)):
                shard, found, value = self._read_event(workflow_id, key)
        except WorkflowNotFound:
            found, value = False, None
        except ShardUnavailable:
            if deadline - time.monotonic() <= 0:
                raise
            found, value = False, None
        return found, value, shard or self.locator.router.route(workflow_id)

    @idempotent
    def _read_event(self, workflow_id: str, key: str) -> tuple[str, bool, Any]:
        return drive(self.read_event_plan(workflow_id, key), self.store)

    def read_event_plan(self, workflow_id: str, key: str) -> Plan[tuple[str, bool, Any]]:
        """Where the workflow is, and whether it published ``key`` (and the value)."""
        shard = (yield from self.locator.find_plan(workflow_id)).shard
        found: tuple[bool, Any] = yield Read(
            shard, statements.get_event(self.store.codec, workflow_id, key)
        )
        return (shard, *found)

    @idempotent
    def wake_parent_of(self, workflow_id: str) -> bool:
        """See :meth:`Cluster.wake_parent_of`."""
        return drive(self.wake_parent_plan(workflow_id), self.store)

    def wake_parent_plan(self, workflow_id: str) -> Plan[bool]:
        """Wake the parent of ``workflow_id`` if it waits for a child (False: none does)."""
        try:
            parent_id = (yield from self.locator.find_plan(workflow_id)).parent_id
            if parent_id is None:
                return False
            return (yield from self.wake_plan(parent_id, wait_for="child"))
        except WorkflowNotFound:
            return False

    @idempotent
    def wake(self, workflow_id: str, wait_for: str | None = None) -> bool:
        """See :meth:`Cluster.wake`."""
        with tracing.span("shardflow.wake", {tracing.TARGET_ID: workflow_id}, kind="client"):
            return drive(self.wake_plan(workflow_id, wait_for), self.store)

    def wake_plan(self, workflow_id: str, wait_for: str | None) -> Plan[bool]:
        """Wake a suspended workflow now (if it waits for ``wait_for``), following it
        if it moves meanwhile."""
        locator = self.locator
        for _ in range(MAX_HOPS):
            status = yield from locator.find_plan(workflow_id, settle=True)
            if status.state is not WorkflowState.SUSPENDED:
                return False
            if (yield Read(status.shard, statements.wake(workflow_id, wait_for))):
                return True
            if (yield from locator.find_plan(workflow_id)).shard == status.shard:
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
    ) -> str:
        """Place a child workflow; returns the shard it is on."""
        row = dataclasses.replace(
            self.new_row(Submission(workflow, args, kwargs, workflow_id)), parent_id=parent_id
        )
        return self.locator.place([row])[workflow_id]

    def fork(
        self, workflow_id: str, from_step: int, new_workflow_id: str | None = None
    ) -> tuple[str, str]:
        """Place a fork (see :meth:`Cluster.fork`); returns its ID and shard."""
        if from_step < 0:
            raise ValueError("from_step must be >= 0")
        status = self.locator.find(workflow_id)
        source = self.store.fork_source(status.shard, workflow_id)
        if source is None:
            raise WorkflowNotFound(workflow_id)
        name, queue, priority, inputs = source.name, source.queue, source.priority, source.inputs
        new_id = new_workflow_id or f"{workflow_id}:fork:{uuid.uuid4().hex[:12]}"
        check_id(new_id)
        # The fork owns its values: a claim-checked input is copied to a new blob, and
        # step outputs are serialized again (a large one to a new blob), so retention of
        # either workflow leaves the other's values in place.
        inputs = self.codec.copy_stored(inputs)
        steps = [
            (s.step_no, s.name, self.codec.dumps(s.output, "step output"), s.error)
            for s in self.store.steps(status.shard, workflow_id)
            if s.step_no < from_step
        ]
        route_hash, slot, _ = self.locator.router.hash_and_route(new_id)
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
            # The forker's trace, if it has one; else the fork starts a trace of its own.
            trace_context=tracing.carrier(),
        )

        def insert(shard: str, rows: list[NewWorkflow], checked: set[str]) -> set[str]:
            # The fork and its copied steps commit together, only in a slot the shard
            # owns outright (so the placement waits out a slot being imported).
            return {new_id} if self.store.insert_fork(shard, rows[0], steps, workflow_id) else set()

        placed = self.locator.place([row], insert, exists_ok=False, creates_while_importing=False)
        return new_id, placed[new_id]
