"""The async client: ``cluster = await shardflow.connect_async("cluster.yaml")``.

An :class:`AsyncCluster` offers the client calls of :class:`~shardflow.engine.cluster.
Cluster` as coroutines, for code that runs on an event loop (a FastAPI handler, an agent
loop). Each read or write runs the sync client's call in a worker thread
(``asyncio.to_thread``, so routing follows slot moves exactly as the sync client does):
the loop is never blocked, and a call holds a thread only while its statement runs.

Waiting holds no thread: :meth:`AsyncWorkflowHandle.result` and
:meth:`AsyncCluster.get_event` register with the client's LISTEN connection of the
shard (one per shard per client, shared with the sync calls; see
:mod:`~shardflow.engine.listeners`), read the row, and await a notification for their
workflow on the loop, reading the row again after each wake-up and at least once per
re-check interval (a notification lost costs at most that interval).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from shardflow.config.model import ClusterConfig
from shardflow.engine.app import Workflow
from shardflow.engine.cluster import DEFAULT_RETRY_SECONDS, Cluster, connect
from shardflow.engine.handles import Page, Submission, WorkflowHandle
from shardflow.engine.listeners import WaitFor
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.serialization import Serializer

__all__ = ["AsyncCluster", "AsyncWorkflowHandle", "connect_async"]

R = TypeVar("R")


class AsyncWorkflowHandle(Generic[R]):
    """A submitted workflow, seen from async code; ``R`` is its result type."""

    def __init__(self, cluster: Cluster, workflow_id: str, shard: str) -> None:
        self.cluster = cluster
        self.workflow_id = workflow_id
        self.shard = shard

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle({self.workflow_id!r}, shard={self.shard!r})"

    async def status(self) -> WorkflowStatus:
        status = await asyncio.to_thread(self.cluster.get, self.workflow_id)
        self.shard = status.shard
        return status

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to end and return its result (see
        :meth:`WorkflowHandle.result`: the same errors, and an outage of the shard is
        waited out up to ``timeout``). Woken by the workflow's final write (LISTEN/NOTIFY),
        with a re-check of the row at least once per re-check interval."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listeners = self.cluster.listeners
        reader: WorkflowHandle[R] = WorkflowHandle(self.cluster, self.workflow_id, self.shard)
        loop = asyncio.get_running_loop()
        with listeners.watch(WaitFor.DONE, self.workflow_id, loop) as waiter:
            # Registered before the first read (see WorkflowHandle.result).
            while True:
                outcome = await asyncio.to_thread(reader.read_outcome, deadline, timeout)
                self.shard = reader.shard
                if outcome is not None:
                    return outcome.value
                remaining = None if deadline is None else deadline - time.monotonic()
                await listeners.wait_async(
                    waiter,
                    self.shard,
                    listeners.recheck_seconds if remaining is None else remaining,
                )


def _wrap(cluster: Cluster, handle: WorkflowHandle[Any]) -> AsyncWorkflowHandle[Any]:
    return AsyncWorkflowHandle(cluster, handle.workflow_id, handle.shard)


class AsyncCluster:
    """The client calls of a :class:`Cluster` as coroutines. Use ``async with``, or
    ``await cluster.close()``."""

    def __init__(self, cluster: Cluster) -> None:
        #: The sync client underneath (for calls not offered here yet).
        self.sync = cluster

    async def __aenter__(self) -> AsyncCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    @overload
    async def submit(
        self, workflow: Workflow[Any, Coroutine[Any, Any, R]], *args: Any, **kwargs: Any
    ) -> AsyncWorkflowHandle[R]: ...

    @overload
    async def submit(
        self, workflow: Workflow[Any, R], *args: Any, **kwargs: Any
    ) -> AsyncWorkflowHandle[R]: ...

    @overload
    async def submit(
        self, workflow: str, *args: Any, **kwargs: Any
    ) -> AsyncWorkflowHandle[Any]: ...

    async def submit(
        self, workflow: Workflow[Any, Any] | str, *args: Any, **kwargs: Any
    ) -> AsyncWorkflowHandle[Any]:
        """Start a workflow (see :meth:`Cluster.submit`: the same options, such as
        ``workflow_id=``, ``queue=``, ``delay_seconds=``)."""
        handle = await asyncio.to_thread(self.sync.submit, workflow, *args, **kwargs)
        return _wrap(self.sync, handle)

    async def submit_many(
        self, submissions: Iterable[Submission | tuple[Any, ...]]
    ) -> list[AsyncWorkflowHandle[Any]]:
        """Submit many workflows: one insert statement per shard."""
        handles = await asyncio.to_thread(self.sync.submit_many, list(submissions))
        return [_wrap(self.sync, h) for h in handles]

    async def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives (WorkflowNotFound if none)."""
        return await asyncio.to_thread(self.sync.get, workflow_id)

    async def handle(self, workflow_id: str) -> AsyncWorkflowHandle[Any]:
        """A handle to an existing workflow (checked)."""
        return _wrap(self.sync, await asyncio.to_thread(self.sync.handle, workflow_id))

    async def list_workflows(self, *args: Any, **kwargs: Any) -> Page:
        """One page of workflows (see :meth:`Cluster.list_workflows`)."""
        return await asyncio.to_thread(self.sync.list_workflows, *args, **kwargs)

    async def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        return await asyncio.to_thread(self.sync.cancel, workflow_id, reason)

    async def resume(self, workflow_id: str) -> WorkflowStatus:
        return await asyncio.to_thread(self.sync.resume, workflow_id)

    async def fork(
        self, workflow_id: str, from_step: int, new_workflow_id: str | None = None
    ) -> AsyncWorkflowHandle[Any]:
        """A new workflow that reruns ``workflow_id`` from step ``from_step``."""
        handle = await asyncio.to_thread(self.sync.fork, workflow_id, from_step, new_workflow_id)
        return _wrap(self.sync, handle)

    async def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``message`` to a workflow (False: ``idempotency_key`` was sent before)."""
        return await asyncio.to_thread(self.sync.send, workflow_id, message, topic, idempotency_key)

    async def get_event(self, workflow_id: str, key: str, timeout: float = 0.0) -> Any:
        """The value a workflow published under ``key``, waiting up to ``timeout``
        seconds (None if nothing was published by then). Woken by the publication
        (LISTEN/NOTIFY); the wait holds no thread."""
        deadline = time.monotonic() + timeout
        listeners = self.sync.listeners
        loop = asyncio.get_running_loop()
        with listeners.watch(WaitFor.EVENT, workflow_id, loop) as waiter:
            # Registered before the first read: a later publication wakes this wait.
            while True:
                remaining = max(deadline - time.monotonic(), 0.0)
                # One read, up to the time left (a shard restarting is waited out).
                found, value, shard = await asyncio.to_thread(
                    self.sync.waits.read_event_once, workflow_id, key, remaining
                )
                if found:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await listeners.wait_async(waiter, shard, remaining)


async def connect_async(
    config: ClusterConfig | str | os.PathLike[str],
    *,
    serializer: Serializer | None = None,
    pool_max_size: int | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> AsyncCluster:
    """Connect to a cluster from async code (see :func:`shardflow.connect`)."""
    cluster = await asyncio.to_thread(
        connect,
        config,
        serializer=serializer,
        pool_max_size=pool_max_size,
        retry_seconds=retry_seconds,
    )
    return AsyncCluster(cluster)
