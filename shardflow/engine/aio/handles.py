"""The async client's handle to one workflow: its status, and its result awaited on
the event loop (woken by the workflow's final write, LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import time
from typing import Generic, Protocol, TypeVar

from shardflow.engine.cluster import Cluster
from shardflow.engine.handles import WaitOutcome, carried_outcome, judge_outcome
from shardflow.engine.listeners import WaitFor
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.store import TransientStoreError
from shardflow.errors import ShardflowError, ShardUnavailable

R = TypeVar("R")


class HandleClient(Protocol):
    """What a handle uses of its client (:class:`~shardflow.engine.aio.client.AsyncCluster`)."""

    @property
    def sync(self) -> Cluster: ...

    async def get(self, workflow_id: str) -> WorkflowStatus: ...

    async def find(self, workflow_id: str, seconds: float | None = None) -> WorkflowStatus: ...


class AsyncWorkflowHandle(Generic[R]):
    """A submitted workflow, seen from async code; ``R`` is its result type."""

    def __init__(self, client: HandleClient, workflow_id: str, shard: str) -> None:
        self.client = client
        self.cluster = client.sync
        self.workflow_id = workflow_id
        self.shard = shard

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle({self.workflow_id!r}, shard={self.shard!r})"

    async def status(self) -> WorkflowStatus:
        status = await self.client.get(self.workflow_id)
        self.shard = status.shard
        return status

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to end and return its result (see
        :meth:`WorkflowHandle.result`: the same errors, and an outage of the shard is
        waited out up to ``timeout``). Woken by the workflow's final write (LISTEN/NOTIFY),
        with a re-check of the row at least once per re-check interval. The row reads
        are native (no thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listeners = self.cluster.listeners
        loop = asyncio.get_running_loop()
        with listeners.watch(WaitFor.DONE, self.workflow_id, loop) as waiter:
            # Registered before the first read (see WorkflowHandle.result).
            while True:
                outcome = await self._read_outcome(deadline, timeout)
                if outcome is not None:
                    return outcome.value
                remaining = None if deadline is None else deadline - time.monotonic()
                await listeners.wait_async(
                    waiter,
                    self.shard,
                    listeners.recheck_seconds if remaining is None else remaining,
                )
                carried: WaitOutcome[R] | None = carried_outcome(self.cluster.codec, waiter)
                if carried is not None:
                    return carried.value

    async def _read_outcome(
        self, deadline: float | None, timeout: float | None
    ) -> WaitOutcome[R] | None:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        status: WorkflowStatus | None = None
        unavailable: ShardflowError | None = None
        try:
            # A shard restarting is waited out up to this call's own timeout.
            status = await self.client.find(self.workflow_id, remaining)
            self.shard = status.shard
        except (ShardUnavailable, TransientStoreError) as exc:
            unavailable = exc
        judge = (self.cluster, self.workflow_id, status, unavailable, deadline, timeout)
        if deadline is not None and time.monotonic() >= deadline:
            # Timed out: the message asks the shard's worker registry why (sync, rare).
            outcome = await asyncio.to_thread(judge_outcome, *judge)
        else:
            outcome = judge_outcome(*judge)
        return outcome
