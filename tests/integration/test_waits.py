"""Durable sleep, messages, events, children, timeouts and fork on three shards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import EFFECTS_TABLE
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import TestCluster, id_on, wait_until
from tests.apps import waits
from tests.apps.waits import app


@pytest.fixture
def effects(test_cluster: TestCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    dsn = test_cluster.config.shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    monkeypatch.setenv("SHARDFLOW_DEMO_EFFECTS_DSN", dsn)
    yield dsn


def effect_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT step, count(*) FROM demo_effects GROUP BY step").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def test_sleeping_workflows_hold_no_thread_and_wake_on_time(cluster: Cluster) -> None:
    handles = cluster.submit_many([shardflow.Submission(waits.sleeper, (2.0,)) for _ in range(200)])
    started = time.monotonic()
    worker = shardflow.Worker(cluster, app, concurrency=4)
    events = EventRecorder(worker)
    worker.start()
    try:
        # All 200 park within moments although only 4 threads exist.
        parked = events.wait_for(EventKind.SUSPENDED, count=200, timeout=30)
        assert sorted(e.workflow_id for e in parked) == sorted(h.workflow_id for h in handles)
        assert worker.running == 0
        # Restart the worker while they sleep: a new one still wakes them.
        worker.stop()
        worker = shardflow.Worker(cluster, app, concurrency=4)
        worker.start()
        results = [h.result(timeout=60) for h in handles]
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"200 x 2 s sleeps on 4 threads took {elapsed:.1f}s"
    for r in results:
        assert r["after"] - r["before"] >= 2.0
    statuses = [h.status() for h in handles]
    assert all(s.state is WorkflowState.SUCCESS for s in statuses)


def test_messages_across_shards_in_order_once(cluster: Cluster, effects: str) -> None:
    rx = id_on(cluster, "shard0", "rx")
    tx = id_on(cluster, "shard2", "tx")
    receiver = cluster.submit(waits.receiver, 6, "orders", workflow_id=rx)
    with shardflow.Worker(cluster, app, concurrency=4):
        cluster.submit(waits.sender, rx, [1, 2, 3], "orders", workflow_id=tx)
        for m in (4, 5):
            cluster.send(rx, m, topic="orders")
        assert cluster.send(rx, 6, topic="orders", idempotency_key="six") is True
        assert cluster.send(rx, 6, topic="orders", idempotency_key="six") is False
        cluster.send(rx, "other-topic", topic="noise")
        got = receiver.result(timeout=30)
    # Each sender's messages arrive in the order sent; the two senders interleave.
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [m for m in got if m <= 3] == [1, 2, 3]
    assert [m for m in got if m > 3] == [4, 5, 6]
    counts = effect_counts(effects)
    assert all(counts[f"recv:{m}"] == 1 for m in range(1, 7))
    assert "recv:other-topic" not in counts


def test_recv_timeout_returns_none(cluster: Cluster) -> None:
    short = cluster.submit(waits.receiver, 1, None, 0.3)
    long = cluster.submit(waits.receiver, 1, None, 1.5)  # suspends, then times out
    with shardflow.Worker(cluster, app, concurrency=2):
        assert short.result(timeout=20) == [None]
        assert long.result(timeout=20) == [None]


def test_events_and_get_event_inside_a_workflow(cluster: Cluster) -> None:
    pub = id_on(cluster, "shard1", "pub")
    reader = cluster.submit(waits.event_reader, pub, workflow_id=id_on(cluster, "shard2", "rd"))
    with shardflow.Worker(cluster, app, concurrency=4):
        cluster.submit(waits.publisher, {"ok": True}, workflow_id=pub).result(timeout=20)
        assert cluster.get_event(pub, "status", timeout=5) == {"ok": True}
        value = reader.result(timeout=60)
    assert value in ("started", {"ok": True})
    assert cluster.get_event(pub, "missing", timeout=0.2) is None


def test_child_on_another_shard_returns_its_result(cluster: Cluster, effects: str) -> None:
    i = 0
    while True:
        parent_id = f"parent-{i}"
        child_id = f"{parent_id}:child:0"
        if cluster.route(parent_id) != cluster.route(child_id):
            break
        i += 1
    handle = cluster.submit(waits.parent, 4, workflow_id=parent_id)
    with shardflow.Worker(cluster, app, concurrency=4):
        assert handle.result(timeout=30) == 41
    child = cluster.get(child_id)
    assert child.parent_id == parent_id and child.state is WorkflowState.SUCCESS
    assert effect_counts(effects)["child:4"] == 1


def test_timeout_cancels_a_running_workflow_and_its_child(cluster: Cluster) -> None:
    handle = cluster.submit(waits.slow_parent, timeout_seconds=1.5)
    worker = shardflow.Worker(cluster, app, concurrency=4)
    with EventRecorder(worker) as events, worker:
        with pytest.raises(shardflow.WorkflowCancelled) as info:
            handle.result(timeout=30)
        assert info.value.reason == "timeout"
        child_id = f"{handle.workflow_id}:child:0"
        wait_until(lambda: cluster.get(child_id).state is WorkflowState.CANCELLED)
        assert cluster.get(child_id).reason == "timeout"
        # Both runs stop at their next step boundary without recording an end.
        stopped = events.wait_for(
            EventKind.INTERRUPTED,
            lambda e: e.workflow_id in (handle.workflow_id, child_id),
            count=2,
        )
        assert {e.workflow_id for e in stopped} == {handle.workflow_id, child_id}
        assert worker.running == 0
    steps = cluster.steps(handle.workflow_id)
    assert len(steps) < 20  # stopped well before its 100 steps


def test_fork_reruns_only_from_step_n(cluster: Cluster, effects: str) -> None:
    original = cluster.submit(waits.steps5, "orig")
    with shardflow.Worker(cluster, app, concurrency=4):
        assert original.result(timeout=20) == [f"orig:{i}" for i in range(5)]
        fork = cluster.fork(original.workflow_id, from_step=3)
        assert fork.result(timeout=20) == [f"orig:{i}" for i in range(5)]
    counts = effect_counts(effects)
    # Steps 0-2 reused from the record; 3 and 4 ran again.
    assert [counts[f"orig:{i}"] for i in range(5)] == [1, 1, 1, 2, 2]
    assert [s.name for s in cluster.steps(fork.workflow_id)] == ["effect"] * 5
