"""The sync client or the async one behind the same blocking calls, for tests of
``list_workflows``, ``cancel`` and ``resume`` parametrized over both (``["sync",
"async"]``): the async client's calls each run to their end on the client's own event
loop (one :class:`asyncio.Runner` kept open for the client's life)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import shardflow
from shardflow.config import ClusterConfig
from shardflow.engine.aio.client import AsyncCluster
from shardflow.engine.cluster import Cluster
from shardflow.engine.handles import Page
from shardflow.engine.records import WorkflowStatus

KINDS = ["sync", "async"]


class CountingExecutor(ThreadPoolExecutor):
    """An event loop's default executor, counting what is handed to a thread
    (``asyncio.to_thread`` and ``run_in_executor(None, ...)`` both land here)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(repr(args[0] if args else fn))
        return super().submit(fn, *args, **kwargs)


class SyncCalls:
    """The calls on a sync :class:`Cluster`."""

    kind = "sync"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def list_workflows(self, *args: Any, **kwargs: Any) -> Page:
        return self.cluster.list_workflows(*args, **kwargs)

    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        return self.cluster.cancel(workflow_id, reason)

    def resume(self, workflow_id: str) -> WorkflowStatus:
        return self.cluster.resume(workflow_id)


class AsyncCalls:
    """The calls on an :class:`AsyncCluster`, awaited on its loop. ``threads`` counts
    what the loop handed to a thread since the client connected."""

    kind = "async"

    def __init__(self, config: ClusterConfig, retry_seconds: float) -> None:
        self.runner = asyncio.Runner()
        self.client: AsyncCluster = self.runner.run(
            shardflow.connect_async(config, retry_seconds=retry_seconds)
        )
        self.threads = CountingExecutor()
        self.runner.get_loop().set_default_executor(self.threads)

    def list_workflows(self, *args: Any, **kwargs: Any) -> Page:
        return self.runner.run(self.client.list_workflows(*args, **kwargs))

    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        return self.runner.run(self.client.cancel(workflow_id, reason))

    def resume(self, workflow_id: str) -> WorkflowStatus:
        return self.runner.run(self.client.resume(workflow_id))

    def close(self) -> None:
        try:
            self.runner.run(self.client.close())
        finally:
            self.runner.close()


@contextmanager
def control_calls(kind: str, cluster: Cluster) -> Iterator[SyncCalls | AsyncCalls]:
    """``cluster`` itself (``"sync"``), or an async client of the same cluster with the
    same retry budget (``"async"``)."""
    if kind == "sync":
        yield SyncCalls(cluster)
        return
    calls = AsyncCalls(cluster.config, cluster.retry_seconds)
    try:
        yield calls
    finally:
        calls.close()
