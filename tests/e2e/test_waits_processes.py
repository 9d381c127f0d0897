"""Time and communication across real worker processes, with SIGKILL."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import psycopg

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import EFFECTS_TABLE
from shardflow.testing.servers import TestCluster, wait_until
from tests.apps import waits
from tests.e2e.procs import start_worker, stop


def _effects(dsn: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT workflow_id, step, pid FROM demo_effects ORDER BY at"
        ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def _setup(test_cluster: TestCluster) -> tuple[str, dict[str, str]]:
    dsn = test_cluster.config.shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    return dsn, {"SHARDFLOW_DEMO_EFFECTS_DSN": dsn}


def _id_on(cluster: shardflow.Cluster, shard: str, prefix: str) -> str:
    i = 0
    while cluster.route(f"{prefix}-{i}") != shard:
        i += 1
    return f"{prefix}-{i}"


def test_messages_survive_a_killed_receiver(test_cluster: TestCluster, tmp_path: Path) -> None:
    dsn, env = _setup(test_cluster)
    with shardflow.connect(test_cluster.config) as cluster:
        rx = _id_on(cluster, "shard1", "rx")
        handle = cluster.submit(waits.receiver, 40, None, 60.0, workflow_id=rx)
        victim = start_worker(
            test_cluster.path,
            "tests.apps.waits:app",
            "--worker-id",
            "victim",
            env=env,
            log=tmp_path / "victim.log",
        )
        survivor = None
        try:
            for i in range(20):
                cluster.send(rx, i)
            wait_until(lambda: sum(1 for e in _effects(dsn) if e[0] == rx) >= 5, timeout=60)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            for i in range(20, 40):
                cluster.send(rx, i)
            survivor = start_worker(
                test_cluster.path, "tests.apps.waits:app", env=env, log=tmp_path / "survivor.log"
            )
            got = handle.result(timeout=90)
        finally:
            if victim.poll() is None:
                victim.kill()
            if survivor is not None:
                assert stop(survivor) == 0
    assert got == list(range(40))  # in order, none lost, none twice
    received = Counter(step for wid, step, _ in _effects(dsn) if wid == rx)
    # A receipt whose checkpoint committed is never repeated; at most the one in flight
    # at the kill ran twice.
    assert set(received) == {f"recv:{i}" for i in range(40)}
    assert sum(received.values()) - 40 <= 1


def test_events_are_visible_from_another_process(test_cluster: TestCluster, tmp_path: Path) -> None:
    _, env = _setup(test_cluster)
    worker = start_worker(
        test_cluster.path, "tests.apps.waits:app", env=env, log=tmp_path / "w.log"
    )
    try:
        with shardflow.connect(test_cluster.config) as cluster:
            pub = cluster.submit(waits.publisher, [1, 2])
            assert cluster.get_event(pub.workflow_id, "status", timeout=30) in ("started", [1, 2])
            assert pub.result(timeout=30) == "done"
            assert cluster.get_event(pub.workflow_id, "status") == [1, 2]
    finally:
        assert stop(worker) == 0


def test_child_result_after_parent_worker_killed(test_cluster: TestCluster, tmp_path: Path) -> None:
    dsn, env = _setup(test_cluster)
    gate = tmp_path / "gate"
    with shardflow.connect(test_cluster.config) as cluster:
        i = 0
        while cluster.route(f"p-{i}") == cluster.route(f"p-{i}:child:0"):
            i += 1
        parent_id = f"p-{i}"
        handle = cluster.submit(waits.parent, 7, str(gate), workflow_id=parent_id)
        victim = start_worker(
            test_cluster.path, "tests.apps.waits:app", env=env, log=tmp_path / "victim.log"
        )
        survivor = None
        try:
            # The parent started its child and blocks before reading the result.
            wait_until(
                lambda: any(e[1] == "parent:started-child" for e in _effects(dsn)), timeout=60
            )
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            gate.touch()
            survivor = start_worker(
                test_cluster.path, "tests.apps.waits:app", env=env, log=tmp_path / "survivor.log"
            )
            assert handle.result(timeout=90) == 71
        finally:
            if victim.poll() is None:
                victim.kill()
            if survivor is not None:
                assert stop(survivor) == 0
        children = [s for s in cluster.list_workflows(limit=100).items if s.parent_id == parent_id]
        assert [c.workflow_id for c in children] == [f"{parent_id}:child:0"]
        assert children[0].state is WorkflowState.SUCCESS
    # The victim may have been killed inside the child's step, before its checkpoint: that
    # execution may run again (at-least-once), once per attempt that did not checkpoint;
    # a checkpointed step never does. So at most one execution per attempt of the child.
    executions = Counter(e[1] for e in _effects(dsn))["child:7"]
    assert 1 <= executions <= children[0].attempt


def test_schedule_fires_once_per_tick_with_three_workers(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    dsn, env = _setup(test_cluster)
    workers = [
        start_worker(
            test_cluster.path, "tests.apps.ticker:app", env=env, log=tmp_path / f"w{i}.log"
        )
        for i in range(3)
    ]
    try:

        def ticks() -> int:
            return len({e[1] for e in _effects(dsn) if e[1].startswith("tick:")})

        wait_until(lambda: ticks() >= 5, timeout=60, interval=0.2, message="5 ticks")
    finally:
        assert [stop(w) for w in workers] == [0, 0, 0]
    per_tick = Counter(e[1] for e in _effects(dsn) if e[1].startswith("tick:"))
    assert len(per_tick) >= 5
    assert set(per_tick.values()) == {1}, per_tick  # each tick ran exactly once
    with shardflow.connect(test_cluster.config) as cluster:
        runs = [s for s in cluster.list_workflows(limit=1000).items if s.name == "ticker.tick"]
    assert len(runs) == len({r.workflow_id for r in runs})
    assert {r.workflow_id.split(":", 2)[2] for r in runs} >= {
        t.removeprefix("tick:")[:19] + "Z" for t in per_tick
    } or len(runs) >= len(per_tick)
