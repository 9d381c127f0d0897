"""The engine's behaviours for sync and async workflows alike (one test, both kinds):
checkpoints, cancel, timeouts, durable sleep, messages, children, events; the errors of
a primitive of the wrong kind; and the async client against a running worker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import TestCluster, id_on, wait_until
from tests.apps import twins
from tests.apps.twins import app


@pytest.fixture(autouse=True)
def _reset_twins() -> Iterator[None]:
    twins.reset()
    yield
    twins.reset()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> SimpleNamespace:
    flavor: SimpleNamespace = twins.FLAVORS[request.param]
    return flavor


def test_steps_are_checkpointed_once_each(cluster: Cluster, kind: SimpleNamespace) -> None:
    handles = [cluster.submit(kind.three_steps, i) for i in range(30)]
    with shardflow.Worker(cluster, app, concurrency=4, async_concurrency=50):
        results = [h.result(timeout=30) for h in handles]
    assert results == [{"result": i + 3} for i in range(30)]
    assert twins.CALLS["add"] == 90
    steps = cluster.steps(handles[7].workflow_id)
    assert [(s.step_no, s.name, s.output) for s in steps] == [
        (0, "add", 8),
        (1, "add", 9),
        (2, "add", 10),
    ]
    assert handles[7].status().attempt == 1


def test_cancel_stops_at_the_next_step_and_resume_replays(
    cluster: Cluster, kind: SimpleNamespace
) -> None:
    twins.CONTROL.update(started=threading.Event(), gate=threading.Event())
    handle = cluster.submit(kind.gated, "g")
    worker = shardflow.Worker(cluster, app, concurrency=2)
    with EventRecorder(worker) as events, worker:
        assert twins.CONTROL["started"].wait(20)
        assert cluster.cancel(handle.workflow_id, reason="user").state is WorkflowState.CANCELLED
        events.wait_for((EventKind.CANCEL_OBSERVED, EventKind.LEASE_LOST))
        twins.CONTROL["gate"].set()
        [stopped] = events.wait_for(EventKind.INTERRUPTED)
        assert stopped.workflow_id == handle.workflow_id
    assert handle.status().state is WorkflowState.CANCELLED
    assert twins.CALLS["gate:before"] == 1 and twins.CALLS["gate:after"] == 0
    assert [s.name for s in cluster.steps(handle.workflow_id)] == ["gate_step"]
    cluster.resume(handle.workflow_id)
    with shardflow.Worker(cluster, app, concurrency=2):
        assert handle.result(timeout=20) == "g"
    assert twins.CALLS["gate:before"] == 1 and twins.CALLS["gate:after"] == 1


def test_timeout_cancels_a_running_workflow(cluster: Cluster, kind: SimpleNamespace) -> None:
    handle = cluster.submit(kind.ticker, timeout_seconds=1.5)
    worker = shardflow.Worker(cluster, app, concurrency=2, heartbeat_seconds=0.3)
    with EventRecorder(worker) as events, worker:
        with pytest.raises(shardflow.WorkflowCancelled) as info:
            handle.result(timeout=30)
        assert info.value.reason == "timeout"
        [stopped] = events.wait_for(EventKind.INTERRUPTED)
        assert stopped.workflow_id == handle.workflow_id
    assert 1 <= twins.CALLS["tick"] < 100
    assert handle.status().state is WorkflowState.CANCELLED


def test_long_sleep_suspends_and_wakes(cluster: Cluster, kind: SimpleNamespace) -> None:
    handles = [cluster.submit(kind.sleeper, 1.0) for _ in range(20)]
    worker = shardflow.Worker(cluster, app, concurrency=2)
    with EventRecorder(worker) as events, worker:
        events.wait_for(EventKind.SUSPENDED, count=20, timeout=30)
        results = [h.result(timeout=60) for h in handles]
    assert all(r["after"] - r["before"] >= 1.0 for r in results)
    names = [s.name for s in cluster.steps(handles[0].workflow_id)]
    assert names == ["now", "shardflow.sleep", "now"]


def test_messages_arrive_in_order_once(cluster: Cluster, kind: SimpleNamespace) -> None:
    rx = id_on(cluster, "shard0", "rx")
    receiver = cluster.submit(kind.receiver, 5, "orders", workflow_id=rx)
    with shardflow.Worker(cluster, app, concurrency=4):
        sent = cluster.submit(
            kind.sender, rx, [1, 2, 3], "orders", workflow_id=id_on(cluster, "shard2", "tx")
        )
        assert sent.result(timeout=30) == 3
        cluster.send(rx, 4, topic="orders")
        cluster.send(rx, "noise", topic="other")
        cluster.send(rx, 5, topic="orders")
        assert receiver.result(timeout=60) == [1, 2, 3, 4, 5]


def test_child_result_and_events(cluster: Cluster, kind: SimpleNamespace) -> None:
    parent_id = next(
        p
        for p in (f"parent-{i}" for i in range(1000))
        if cluster.route(p) != cluster.route(f"{p}:child:0")
    )
    pub = id_on(cluster, "shard1", "pub")
    reader = cluster.submit(kind.event_reader, pub)
    handle = cluster.submit(kind.parent, 4, workflow_id=parent_id)
    with shardflow.Worker(cluster, app, concurrency=4):
        assert handle.result(timeout=30) == 41
        cluster.submit(kind.publisher, {"ok": True}, workflow_id=pub).result(timeout=20)
        assert reader.result(timeout=30) == {"ok": True}
    child = cluster.get(f"{parent_id}:child:0")
    assert child.parent_id == parent_id and child.state is WorkflowState.SUCCESS
    assert twins.CALLS["add"] == 1  # the child's one step, never repeated


@pytest.mark.parametrize(
    ("workflow", "says"),
    [
        (twins.sync_sleep_in_async, "await shardflow.sleep_async(...)"),
        (twins.sync_step_in_async, "call_async"),
        (twins.async_step_in_sync, "is async"),
        (twins.async_sleep_in_sync, "shardflow.sleep(...)"),
    ],
)
def test_a_primitive_of_the_wrong_kind_fails_clearly(
    cluster: Cluster, workflow: shardflow.engine.Workflow[Any, Any], says: str
) -> None:
    handle = cluster.submit(workflow)
    with (
        shardflow.Worker(cluster, app, concurrency=2),
        pytest.raises(shardflow.WorkflowFailed) as info,
    ):
        handle.result(timeout=20)
    assert says in str(info.value)
    assert handle.status().state is WorkflowState.ERROR


def test_async_client_against_a_running_worker(test_cluster: TestCluster, cluster: Cluster) -> None:
    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            handle = await aclient.submit(twins.three_steps_async, 1, workflow_id="aio-1")
            again = await aclient.submit(twins.three_steps_async, 1, workflow_id="aio-1")
            assert again.workflow_id == handle.workflow_id
            many = await aclient.submit_many(
                [shardflow.Submission(twins.three_steps, (i,)) for i in range(5)]
            )
            results = await asyncio.gather(
                handle.result(timeout=30), *(h.result(timeout=30) for h in many)
            )
            assert results == [{"result": 4}] + [{"result": i + 3} for i in range(5)]
            assert (await aclient.get("aio-1")).state is WorkflowState.SUCCESS
            page = await aclient.list_workflows(name="twins.async.three_steps")
            assert [s.workflow_id for s in page.items] == ["aio-1"]
            rx = await aclient.submit(twins.receiver_async, 1, None)
            assert await aclient.send(rx.workflow_id, "hi") is True
            assert await rx.result(timeout=30) == ["hi"]
            pub = await aclient.submit(twins.publisher_async, 7)
            assert await pub.result(timeout=30) == "done"
            assert await aclient.get_event(pub.workflow_id, "status") == 7
            forked = await aclient.fork("aio-1", 2)
            assert await forked.result(timeout=30) == {"result": 4}
            gated = await aclient.submit(twins.gated_async, "x", delay_seconds=3600)
            assert (await aclient.cancel(gated.workflow_id)).state is WorkflowState.CANCELLED
            with pytest.raises(shardflow.WorkflowCancelled):
                await gated.result(timeout=5)
            # Resumed, it runs again on the worker (which may claim it at once) to its end.
            resumed = await aclient.resume(gated.workflow_id)
            assert resumed.state is not WorkflowState.CANCELLED
            assert await gated.result(timeout=30) == "x"

    twins.CONTROL.update(started=threading.Event(), gate=threading.Event())
    twins.CONTROL["gate"].set()  # the resumed gated run passes its gate
    with shardflow.Worker(cluster, app, concurrency=2):
        asyncio.run(scenario())
    # The fork replayed steps 0 and 1 and ran only step 2.
    assert twins.CALLS["add"] == 3 + 15 + 1


def test_stop_hands_back_a_run_once_it_has_stopped(cluster: Cluster, kind: SimpleNamespace) -> None:
    twins.CONTROL.update(started=threading.Event(), gate=threading.Event())
    handle = cluster.submit(kind.gated, "r")
    worker = shardflow.Worker(cluster, app, concurrency=2)
    events = EventRecorder(worker)
    worker.start()
    assert twins.CONTROL["started"].wait(20)
    stopper = threading.Thread(target=worker.stop, kwargs={"grace_seconds": 0.2})
    stopper.start()
    wait_until(
        lambda: any(r.interrupted.is_set() for r in list(worker._running.values())),
        timeout=20,
        message="stop() interrupting the run",
    )
    assert handle.status().state is WorkflowState.RUNNING  # its step still runs
    twins.CONTROL["gate"].set()
    stopper.join(20)
    assert not stopper.is_alive()
    [released] = events.events(EventKind.RELEASED)
    assert (released.workflow_id, released.attempt) == (handle.workflow_id, 1)
    assert handle.status().state is WorkflowState.ENQUEUED
    with shardflow.Worker(cluster, app, concurrency=2):
        assert handle.result(timeout=20) == "r"
    assert twins.CALLS["gate:before"] == 1  # replayed from its checkpoint
    assert handle.status().attempt == 2


def test_a_step_longer_than_the_lease_keeps_it(cluster: Cluster, kind: SimpleNamespace) -> None:
    handle = cluster.submit(kind.outlasting, 4.0)
    worker = shardflow.Worker(cluster, app, concurrency=2, lease_seconds=1.5)
    with EventRecorder(worker) as events, worker:
        assert handle.result(timeout=30) == 4.0
        renewed = events.events(EventKind.RENEWED)
    # The heartbeat renewed this run's lease while its step awaited: no other attempt.
    assert len([e for e in renewed if e.workflow_id == handle.workflow_id]) >= 2
    assert twins.CALLS["slow"] == 1
    status = handle.status()
    assert status.attempt == 1 and status.recoveries == 0


def test_workflow_and_step_methods_run_on_the_bound_instance(
    cluster: Cluster, kind: SimpleNamespace
) -> None:
    by_class = cluster.submit(kind.billing_class.charge, 5)
    by_instance = cluster.submit(kind.billing.charge, 2)
    with pytest.raises(TypeError, match="too many positional"):
        cluster.submit(kind.billing_class.charge, 1, 2)
    with shardflow.Worker(cluster, app, concurrency=2):
        assert by_class.result(timeout=30) == {"total": 60}
        assert by_instance.result(timeout=30) == {"total": 30}
    assert [(s.name, s.output) for s in cluster.steps(by_class.workflow_id)] == [
        ("billing.price", 50),
        ("billing.price", 10),
    ]
    assert twins.CALLS["price"] == 4
    # Outside a worker, a method call is a plain call on its instance (not durable).
    direct = kind.billing.charge(1)
    assert (asyncio.run(direct) if asyncio.iscoroutine(direct) else direct) == {"total": 20}


def test_a_workflow_method_without_a_bound_instance_fails_clearly(cluster: Cluster) -> None:
    handle = cluster.submit(twins.Unbound.run)
    with (
        shardflow.Worker(cluster, app, concurrency=2),
        pytest.raises(shardflow.WorkflowFailed) as info,
    ):
        handle.result(timeout=30)
    assert "app.bind(instance)" in str(info.value)


def test_async_waits_are_woken_by_notifications(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    """Many coroutines await result() and get_event at once: each is woken by its
    workflow's notification (the re-check interval is set far beyond the test), and
    waiting holds no thread (more waiters than the loop's executor has threads)."""
    waiters = 40

    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            listeners = aclient.sync.listeners
            listeners.recheck_seconds = 600.0
            receivers = [
                await aclient.submit(twins.receiver_async, 1, None) for _ in range(waiters)
            ]
            publisher = await aclient.submit(twins.publisher_async, 7)
            loop = asyncio.get_running_loop()
            # Fewer threads than waiters: a wait that held one would starve the others.
            loop.set_default_executor(ThreadPoolExecutor(4))
            # Every shard's listener in place first: its first LISTEN wakes every waiter.
            for shard in test_cluster.config.shard_names:
                listeners.listen_to(shard)
            shards = set(test_cluster.config.shard_names)

            def all_listening() -> bool:
                health = listeners.health()
                return set(health) == shards and all(h.listening for h in health.values())

            await asyncio.to_thread(wait_until, all_listening, timeout=30)
            results = [asyncio.ensure_future(h.result(timeout=60)) for h in receivers]
            event = asyncio.ensure_future(aclient.get_event(publisher.workflow_id, "status", 60))
            # Every waiter read its row (found nothing) and sleeps: from now on only a
            # notification (or a re-check) wakes it.
            await asyncio.to_thread(
                wait_until, lambda: listeners.sleeping() == waiters + 1, timeout=30
            )
            before = listeners.stats()
            worker = shardflow.Worker(cluster, app, concurrency=2, async_concurrency=100)
            await asyncio.to_thread(worker.start)
            try:
                for h in receivers:
                    await aclient.send(h.workflow_id, h.workflow_id)
                assert await asyncio.wait_for(event, 60) == 7
                done = await asyncio.wait_for(asyncio.gather(*results), 60)
            finally:
                await asyncio.to_thread(worker.stop)
            assert done == [[h.workflow_id] for h in receivers]
            after = listeners.stats()
            # No re-check interval passed and no listener reconnected: notifications
            # woke every one of them.
            assert (after.rechecks, after.resynced) == (before.rechecks, before.resynced)
            assert after.notified - before.notified >= waiters + 1
            assert listeners.waiting() == 0

    asyncio.run(scenario())
