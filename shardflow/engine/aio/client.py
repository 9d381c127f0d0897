"""The async client: ``cluster = await shardflow.connect_async("cluster.yaml")``.

An :class:`AsyncCluster` offers the client calls of :class:`~shardflow.engine.cluster.
Cluster` as coroutines, for code that runs on an event loop (a FastAPI handler, an agent
loop). ``submit``, ``submit_many`` (plain rows), ``get``, ``handle``, ``send`` and the
row reads of ``result()``, ``list_workflows``, ``cancel`` and ``resume`` are native:
they await psycopg async connections of one ``psycopg_pool.AsyncConnectionPool`` per
shard (:mod:`~shardflow.router.apools`, the same connection settings as the sync pools)
and run the sync client's own plans (:mod:`~shardflow.engine.driving`: the Locator's
rules for following slot moves, the listing's scatter-gather, cancel and resume),
holding no thread; so are the reads of ``get_event``. The other calls (``fork``,
debounced submits) still run the sync client's call in a worker thread
(``asyncio.to_thread``); so does activating a staged copy whose move was decided (a
rare step of a move, safe for anyone, that a ``cancel`` or ``resume`` may meet).

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
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, overload

from shardflow import tracing
from shardflow.config.model import ClusterConfig
from shardflow.engine.aio.group_submit import AsyncSubmitGroups
from shardflow.engine.aio.handles import AsyncWorkflowHandle
from shardflow.engine.app import Workflow
from shardflow.engine.cluster import DEFAULT_RETRY_SECONDS, Cluster, connect
from shardflow.engine.coverage import needs_warn_check, warn_unserved
from shardflow.engine.driving import Plan, drive_async
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.handles import Page, Submission
from shardflow.engine.listeners import WaitFor
from shardflow.engine.listing import query_plan
from shardflow.engine.placement import IdSource
from shardflow.engine.records import NewWorkflow, WorkflowStatus
from shardflow.engine.serialization import Serializer
from shardflow.engine.states import WorkflowState
from shardflow.engine.store.aio import AsyncStore
from shardflow.engine.submits import check_unique, place_debounced
from shardflow.errors import (
    ClientClosed,
    ShardUnavailable,
    WorkflowNotFound,
    WrongEventLoop,
)
from shardflow.retry import retrying_async, with_retries
from shardflow.router.apools import AsyncShardPools

__all__ = ["AsyncCluster", "AsyncWorkflowHandle", "connect_async"]

R = TypeVar("R")
T = TypeVar("T")

# Keyword arguments of submit() that are options, not the workflow's arguments.
_OPTIONS = (
    "workflow_id",
    "queue",
    "priority",
    "dedup_key",
    "delay_seconds",
    "timeout_seconds",
    "partition_key",
    "debounce_key",
    "debounce_seconds",
)


class AsyncCluster:
    """The client calls of a :class:`Cluster` as coroutines. Use ``async with``, or
    ``await cluster.close()``."""

    def __init__(self, cluster: Cluster, *, pool_max_size: int | None = None) -> None:
        #: The sync client underneath (for calls not offered here yet).
        self.sync = cluster
        self.retry_seconds = cluster.retry_seconds
        # Sized and set up as the sync pools (pool_max_size, or each shard's pool.max).
        self.pools = AsyncShardPools(
            cluster.config, max_size=pool_max_size, limits=cluster.pools.limits
        )
        self.store = AsyncStore(self.pools, cluster.codec)
        # Concurrent single submits share one insert per shard (group commit).
        self.submit_groups = AsyncSubmitGroups(self._place_plain)
        self._closed = False
        # The loop the pools belong to: the first one a call was made on.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> None:
        """Check the client may be used here: not closed, and on its own event loop."""
        if self._closed:
            raise ClientClosed("the cluster client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise WrongEventLoop(
                "this AsyncCluster belongs to another event loop (its connection pools do):"
                " connect one client per event loop"
            )

    async def _drive(self, plan: Plan[T]) -> T:
        """Run a Locator plan natively (callers retry by making a fresh plan)."""
        return await drive_async(plan, self.store)

    async def find(self, workflow_id: str, seconds: float | None = None) -> WorkflowStatus:
        """The workflow's status, wherever it lives, riding out an outage for
        ``seconds`` (default ``retry_seconds``)."""
        self._open()
        budget = self.retry_seconds if seconds is None else seconds
        locator = self.sync.locator
        return await retrying_async(
            lambda: self._drive(locator.find_plan(workflow_id)),
            deadline=time.monotonic() + budget,
        )

    async def _place_plain(self, rows: list[NewWorkflow]) -> dict[str, tuple[str, str]]:
        """Place plain rows natively. Every ID is fixed before the first attempt and an
        insert of an existing ID does nothing: a retry after a lost commit answer
        creates nothing twice."""
        locator = self.sync.locator
        shards = await retrying_async(
            lambda: self._drive(locator.place_plan(rows)),
            deadline=time.monotonic() + self.retry_seconds,
        )
        return {wid: (wid, shard) for wid, shard in shards.items()}

    def _handle(self, workflow_id: str, shard: str) -> AsyncWorkflowHandle[Any]:
        return AsyncWorkflowHandle(self, workflow_id, shard)

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
        self._closed = True
        await self.pools.close()
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
        ``workflow_id=``, ``queue=``, ``delay_seconds=``); idempotent on
        ``workflow_id``. Native (no thread), except a debounced submit."""
        options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
        sub = Submission(workflow, args, kwargs, **options)
        return (await self.submit_many([sub]))[0]

    @tracing.traced_submit_async
    async def submit_many(
        self, submissions: Iterable[Submission | tuple[Any, ...]]
    ) -> list[AsyncWorkflowHandle[Any]]:
        """Submit many workflows: one insert statement per shard. Plain rows are placed
        natively; debounced ones (an upsert each) in a thread."""
        self._open()
        sync, new_ids, trace_context = self.sync, IdSource(), tracing.carrier()
        rows = [
            sync._new_row(
                s if isinstance(s, Submission) else Submission(s[0], s[1:]), new_ids, trace_context
            )
            for s in submissions
        ]
        check_unique(rows)
        plain = [r for r in rows if r.debounce_key is None]
        placed: dict[str, tuple[str, str]] = {}
        if len(plain) == 1 and len(rows) == 1:
            # A single submit joins the other tasks' submits (one insert per shard).
            row = plain[0]
            owner = sync.router.slot_map.owner(row.slot)
            placed[row.workflow_id] = await self.submit_groups.submit(owner, row)
        elif plain:
            placed = await self._place_plain(plain)
        for row in rows:
            if row.debounce_key is not None:
                placed[row.workflow_id] = await asyncio.to_thread(
                    with_retries,
                    lambda r=row: place_debounced(sync.locator, sync.store, r),
                    self.retry_seconds,
                )
        landed = [(r.name, r.queue, placed[r.workflow_id][1]) for r in rows]
        if needs_warn_check(sync, landed):
            await asyncio.to_thread(warn_unserved, sync, landed)
        return [self._handle(*placed[r.workflow_id]) for r in rows]

    async def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives (WorkflowNotFound if none).
        Native: follows tombstones and slot redirects as :meth:`Cluster.get` does."""
        return await self.find(workflow_id)

    async def handle(self, workflow_id: str) -> AsyncWorkflowHandle[Any]:
        """A handle to an existing workflow (checked)."""
        status = await self.get(workflow_id)
        return self._handle(workflow_id, status.shard)

    async def list_workflows(
        self,
        state: str | WorkflowState | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        skip_unavailable: bool = False,
        *,
        id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        parent_id: str | None = None,
        forked_from: str | None = None,
        app_version: str | None = None,
        filters: WorkflowFilter | None = None,
    ) -> Page:
        """One page of workflows (see :meth:`Cluster.list_workflows`: the same arguments,
        filters, cursor and ``skip_unavailable``). Native: the shards' pages are read
        side by side on the loop, each retried through an outage."""
        self._open()
        plan = query_plan(
            self.sync,
            state,
            name,
            queue,
            limit,
            cursor,
            skip_unavailable,
            id_prefix=id_prefix,
            created_after=created_after,
            created_before=created_before,
            parent_id=parent_id,
            forked_from=forked_from,
            app_version=app_version,
            filters=filters,
        )
        return await self._drive(plan)

    async def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        """Cancel a workflow and its children (see :meth:`Cluster.cancel`). Native:
        follows the workflow across moves, and wakes a parent waiting for it."""
        self._open()
        control = self.sync.control
        return await retrying_async(
            lambda: self._drive(control.cancel_plan(workflow_id, reason)),
            deadline=time.monotonic() + self.retry_seconds,
        )

    async def resume(self, workflow_id: str) -> WorkflowStatus:
        """Re-queue a cancelled, failed or dead-lettered workflow from its last
        checkpoint (see :meth:`Cluster.resume`). Native: follows the workflow across
        moves."""
        self._open()
        control = self.sync.control
        return await retrying_async(
            lambda: self._drive(control.resume_plan(workflow_id)),
            deadline=time.monotonic() + self.retry_seconds,
        )

    async def fork(
        self, workflow_id: str, from_step: int, new_workflow_id: str | None = None
    ) -> AsyncWorkflowHandle[Any]:
        """A new workflow that reruns ``workflow_id`` from step ``from_step``. Runs the
        sync client's call in a thread: the fork and its copied steps are inserted in
        one transaction of the sync store."""
        self._open()
        handle = await asyncio.to_thread(self.sync.fork, workflow_id, from_step, new_workflow_id)
        return self._handle(handle.workflow_id, handle.shard)

    async def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``message`` to a workflow (False: ``idempotency_key`` was sent before).
        Native: follows the workflow across moves as :meth:`Cluster.send` does."""
        self._open()
        waits = self.sync.waits
        fixed = waits.prepare_send(workflow_id, message, topic, idempotency_key)
        return await retrying_async(
            lambda: self._drive(waits.send_plan(*fixed)),
            deadline=time.monotonic() + self.retry_seconds,
        )

    async def get_event(self, workflow_id: str, key: str, timeout: float = 0.0) -> Any:
        """The value a workflow published under ``key``, waiting up to ``timeout``
        seconds (None if nothing was published by then). Woken by the publication
        (LISTEN/NOTIFY); the wait holds no thread."""
        self._open()
        deadline = time.monotonic() + timeout
        listeners = self.sync.listeners
        loop = asyncio.get_running_loop()
        with listeners.watch(WaitFor.EVENT, workflow_id, loop) as waiter:
            # Registered before the first read: a later publication wakes this wait.
            while True:
                remaining = max(deadline - time.monotonic(), 0.0)
                # One read, up to the time left (a shard restarting is waited out).
                found, value, shard = await self._read_event_once(workflow_id, key, remaining)
                if found:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await listeners.wait_async(waiter, shard, remaining)

    async def _read_event_once(
        self, workflow_id: str, key: str, remaining: float
    ) -> tuple[bool, Any, str]:
        """One native read of :meth:`get_event`'s loop (see ``Waits.read_event_once``):
        (found, value, the shard to listen to); an outage is ridden out up to
        ``remaining`` seconds, a workflow not there yet is not found yet."""
        deadline = time.monotonic() + remaining
        waits, shard = self.sync.waits, None
        try:
            shard, found, value = await retrying_async(
                lambda: self._drive(waits.read_event_plan(workflow_id, key)),
                deadline=time.monotonic() + max(min(remaining, self.retry_seconds), 0.0),
            )
        except WorkflowNotFound:
            found, value = False, None
        except ShardUnavailable:
            if deadline - time.monotonic() <= 0:
                raise
            found, value = False, None
        return found, value, shard or self.sync.router.route(workflow_id)


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
    return AsyncCluster(cluster, pool_max_size=pool_max_size)
