"""result() and get_event wake on the final write's notification (LISTEN/NOTIFY), share
one listener connection per shard, and end through the re-check when a notification is
lost."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import shardflow
from shardflow.engine.cluster import Cluster
from shardflow.errors import WorkflowCancelled
from shardflow.testing.servers import TestCluster, wait_until
from tests.apps import waits
from tests.apps.waits import app
from tests.integration.backends import count_backends, terminate_backends
from tests.integration.background import Background

LISTENER = "shardflow-waits"


@pytest.fixture
def worker(cluster: Cluster) -> Iterator[shardflow.Worker]:
    made = shardflow.Worker(cluster, app, concurrency=4)
    yield made
    made.stop(grace_seconds=0)


def listening(cluster: Cluster, shard: str) -> bool:
    health = cluster.listeners.health().get(shard)
    return health is not None and health.listening


def listener_connections(cluster: Cluster, shard: str) -> int:
    return count_backends(cluster.config.shard(shard).dsn, LISTENER)


def test_result_is_woken_by_the_final_write_not_by_a_recheck(
    cluster: Cluster, worker: shardflow.Worker
) -> None:
    # A re-check interval far longer than the test: only the notification can end it.
    cluster.listeners.recheck_seconds = 600
    handle = cluster.submit(waits.steps5, "a")
    waiting = Background(lambda: handle.result(timeout=60))
    wait_until(lambda: cluster.listeners.waiting() == 1 and listening(cluster, handle.shard))
    before = cluster.listeners.stats()
    worker.start()
    assert waiting.join() == ["a:0", "a:1", "a:2", "a:3", "a:4"]
    after = cluster.listeners.stats()
    assert after.notified - before.notified == 1
    assert after.rechecks == before.rechecks == 0
    assert cluster.listeners.waiting() == 0


def test_cancel_wakes_a_waiting_result(cluster: Cluster) -> None:
    cluster.listeners.recheck_seconds = 600
    handle = cluster.submit(waits.steps5, "c")  # no worker: it stays ENQUEUED
    waiting = Background(lambda: handle.result(timeout=60))
    wait_until(lambda: cluster.listeners.waiting() == 1 and listening(cluster, handle.shard))
    before = cluster.listeners.stats()
    assert cluster.cancel(handle.workflow_id, reason="test")
    with pytest.raises(WorkflowCancelled):
        waiting.join()
    after = cluster.listeners.stats()
    assert after.notified - before.notified == 1
    assert after.rechecks == 0


def test_get_event_is_woken_by_set_event(cluster: Cluster, worker: shardflow.Worker) -> None:
    cluster.listeners.recheck_seconds = 600
    handle = cluster.submit(waits.publisher, "ready")
    # Waits for the first value published ("started"): the workflow has not run yet.
    reading = Background(lambda: cluster.get_event(handle.workflow_id, "status", timeout=60))
    wait_until(lambda: cluster.listeners.waiting() == 1 and listening(cluster, handle.shard))
    worker.start()
    assert reading.join() in ("started", "ready")
    stats = cluster.listeners.stats()
    assert stats.notified >= 1
    assert stats.rechecks == 0
    assert handle.result(timeout=30) == "done"


def test_many_waiters_share_one_listener_connection_per_shard(
    cluster: Cluster, worker: shardflow.Worker
) -> None:
    handles = cluster.submit_many(
        [shardflow.Submission(waits.steps5, (f"w{i}",)) for i in range(30)]
    )
    shards = {h.shard for h in handles}
    assert len(shards) == 3  # 30 random IDs over 3 shards
    waiting = [Background(functools.partial(h.result, timeout=60)) for h in handles]
    wait_until(
        lambda: cluster.listeners.waiting() == 30 and all(listening(cluster, s) for s in shards)
    )
    assert {s: listener_connections(cluster, s) for s in shards} == {s: 1 for s in shards}
    worker.start()
    assert sorted(w.join()[0] for w in waiting) == sorted(f"w{i}:0" for i in range(30))
    worker.stop(grace_seconds=0)
    cluster.close()
    wait_until(lambda: all(listener_connections(cluster, s) == 0 for s in shards))


def test_a_lost_notification_still_ends_the_wait_and_the_listener_reconnects(
    cluster: Cluster, worker: shardflow.Worker
) -> None:
    cluster.listeners.recheck_seconds = 0.5
    handle = cluster.submit(waits.steps5, "lost")
    waiting = Background(lambda: handle.result(timeout=60))
    wait_until(lambda: cluster.listeners.waiting() == 1 and listening(cluster, handle.shard))
    # Kill the listener's connection on the server, then let the workflow end while it
    # may still be reconnecting (its notification is then lost).
    killed = terminate_backends(cluster.config.shard(handle.shard).dsn, LISTENER)
    assert killed == 1
    worker.start()
    assert waiting.join()[-1] == "lost:4"
    wait_until(lambda: cluster.listeners.health()[handle.shard].connections_lost == 1)
    wait_until(lambda: listening(cluster, handle.shard))
    health = cluster.listeners.health()[handle.shard]
    assert health.last_error
    assert listener_connections(cluster, handle.shard) == 1


# A result the notification carries (None, a small value) and one it does not (big).
ECHOED = [None, {"k": "é\u2028\\", "n": [1, 2.5]}, "x" * 2000]


@pytest.mark.parametrize("value", ECHOED, ids=["none", "small", "big"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_small_result_comes_in_the_notification_a_big_one_from_the_row(
    test_cluster: TestCluster, cluster: Cluster, worker: shardflow.Worker, kind: str, value: Any
) -> None:
    cluster.listeners.recheck_seconds = 600  # only the notification can end the wait
    handle = cluster.submit(waits.echo, value)  # no worker yet: it stays ENQUEUED
    if kind == "sync":
        waiting = Background(lambda: handle.result(timeout=60))
        listeners = cluster.listeners
    else:
        aclient_ready = threading.Event()
        holder: dict[str, Any] = {}

        async def wait_async() -> Any:
            async with await shardflow.connect_async(test_cluster.config) as aclient:
                aclient.sync.listeners.recheck_seconds = 600
                holder["listeners"] = aclient.sync.listeners
                aclient_ready.set()
                return await (await aclient.handle(handle.workflow_id)).result(timeout=60)

        waiting = Background(lambda: asyncio.run(wait_async()))
        assert aclient_ready.wait(30)
        listeners = holder["listeners"]
    # It read its row (still ENQUEUED) and sleeps, LISTEN in place.
    wait_until(lambda: listeners.sleeping() == 1)
    wait_until(lambda: listeners.health()[handle.shard].listening)
    before = listeners.stats()
    worker.start()
    assert waiting.join() == value
    after = listeners.stats()
    assert after.rechecks == before.rechecks == 0
    assert after.notified - before.notified == 1
    assert after.carried - before.carried == (0 if value == ECHOED[2] else 1)


def test_an_async_result_of_none_already_written_is_returned_at_once(
    test_cluster: TestCluster, cluster: Cluster, worker: shardflow.Worker
) -> None:
    handle = cluster.submit(waits.echo, None)
    worker.start()
    wait_until(lambda: cluster.get(handle.workflow_id).state.value == "SUCCESS")

    async def read() -> Any:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            aclient.sync.listeners.recheck_seconds = 600
            got = await (await aclient.handle(handle.workflow_id)).result(timeout=30)
            return got, aclient.sync.listeners.stats()

    got, stats = asyncio.run(read())
    assert got is None
    assert (stats.notified, stats.rechecks) == (0, 0)  # the first read answered
