"""A queue-wide ``concurrency`` held exactly across shards (docs/queues.md#concurrency):
queue leases on the queue's home shard, against three real shards and real worker
processes."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import shardflow
from shardflow.engine.cluster import Cluster
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.router.hashing import home_shard
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.apps import flow
from tests.e2e.procs import start_worker, stop
from tests.integration.test_engine import ids_per_shard
from tests.integration.test_rebalance import ids_in_slots, moving_slots

Interval = tuple[str, int, datetime, datetime | None]


@pytest.fixture
def single(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    made = cluster_factory.make(3, extra={"queues": {"default": {}, "single": {"concurrency": 1}}})
    dsn = made.config.shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(flow.INTERVALS_TABLE)
    saved = flow.INTERVALS_DSN[0], flow.HOLD_SECONDS[0]
    flow.INTERVALS_DSN[0] = dsn
    try:
        yield made
    finally:
        flow.INTERVALS_DSN[0], flow.HOLD_SECONDS[0] = saved
        cluster_factory.drop(made)


def intervals(made: TestCluster) -> list[Interval]:
    with psycopg.connect(made.config.shards[0].dsn) as conn:
        rows = conn.execute(
            "SELECT workflow_id, pid, started_at, ended_at FROM flow_intervals ORDER BY started_at"
        ).fetchall()
    return [(str(w), int(p), s, e) for w, p, s, e in rows]


def assert_one_at_a_time(runs: list[Interval], cut_at: datetime | None = None) -> None:
    """No two runs overlap; an unfinished run (its process was killed) ends at ``cut_at``."""
    spans = sorted((s, e if e is not None else cut_at, w) for w, _, s, e in runs)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        assert end is not None, f"{first} never ended"
        assert start >= end, f"{second} started {end - start} before {first} ended"


def test_concurrency_one_over_three_shards_never_runs_two_at_once(single: TestCluster) -> None:
    flow.HOLD_SECONDS[0] = 0.02
    with Cluster(single.config) as client:
        per = ids_per_shard(client, "one", 12)
        handles = [client.submit(flow.single, workflow_id=w) for ids in per.values() for w in ids]
        workers = [
            shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.02)
            for _ in range(3)
        ]
        for w in workers:
            w.start()
        try:
            assert sorted(h.result(timeout=120) for h in handles) == sorted(
                h.workflow_id for h in handles
            )
        finally:
            for w in workers:
                w.stop()
        home = home_shard("single", client.config.shard_names, client.config.hash.seed)
        assert client.store.queue_leases_live(home) == {}
    runs = intervals(single)
    assert len(runs) == 36 and {h.shard for h in handles} == set(client.config.shard_names)
    assert_one_at_a_time(runs)
    # The workers shared the queue (each took the place in turn, from every shard).
    assert sum(w.stats.claimed > 0 for w in workers) >= 2


def test_a_sigkilled_workers_place_is_freed_after_its_lease(
    single: TestCluster, tmp_path: Path
) -> None:
    config = single.config
    home = home_shard("single", config.shard_names, config.hash.seed)
    with Cluster(config) as client:
        per = ids_per_shard(client, "kill", 2)
        handles = [client.submit(flow.single, workflow_id=w) for ids in per.values() for w in ids]
        victim = start_worker(
            single.path,
            "tests.apps.flow:app",
            "--concurrency",
            "4",
            "--lease-seconds",
            "2",
            "--worker-id",
            "victim",
            env={
                "SHARDFLOW_FLOW_INTERVALS_DSN": config.shards[0].dsn,
                "SHARDFLOW_FLOW_HOLD_SECONDS": "600",
            },
            log=tmp_path / "victim.log",
        )
        try:
            held = wait_until(lambda: intervals(single), timeout=60, message="victim runs one")
            assert len(held) == 1 and held[0][1] == victim.pid
            assert client.store.queue_leases_live(home) == {"single": 1}
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        finally:
            stop(victim)
        with psycopg.connect(config.shards[0].dsn) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            killed_at: datetime = row[0]
        # The dead worker's place is still taken: nobody else may start before it expires.
        assert client.store.queue_leases_live(home) == {"single": 1}
        with shardflow.Worker(
            client, flow.app, concurrency=4, lease_seconds=2, poll_interval_seconds=0.05
        ):
            for h in handles:
                assert h.result(timeout=60) == h.workflow_id
        victims = [h for h in handles if h.workflow_id == held[0][0]]
        assert victims[0].status().recoveries >= 1
    runs = intervals(single)
    assert len(runs) == 7  # six workflows, one of them started twice
    assert_one_at_a_time(runs, cut_at=killed_at)
    # The survivor waited for the victim's queue lease to expire (2 s after its last
    # renewal, at most a heartbeat, 2/3 s, before the kill).
    first_after = min(s for _, pid, s, _ in runs if pid != victim.pid)
    assert first_after - killed_at >= timedelta(seconds=1.0), first_after - killed_at


def test_concurrency_holds_while_the_rebalancer_moves_the_queues_workflows(
    cluster_factory: ClusterFactory,
) -> None:
    """Workflows of a `concurrency: 1` queue alternate between running and sleeping
    (idle, movable) while a new shard takes its share of the slots: still one at a time,
    and the moved ones run on the new shard."""
    made = cluster_factory.make(
        3, slots=256, extra={"queues": {"default": {}, "single": {"concurrency": 1}}}
    )
    grown = cluster_factory.add_shard(made)
    dsn = grown.config.shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(flow.INTERVALS_TABLE)
    saved = flow.INTERVALS_DSN[0], flow.HOLD_SECONDS[0]
    flow.INTERVALS_DSN[0], flow.HOLD_SECONDS[0] = dsn, 0.02
    try:
        config = grown.config
        moving = ids_in_slots(config, moving_slots(config), "nap", 12)
        with Cluster(config) as client:
            handles = [client.submit(flow.napper, workflow_id=w) for w in moving]
            workers = [
                shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.02)
                for _ in range(2)
            ]
            for w in workers:
                w.start()
            try:
                wait_until(lambda: len(intervals(grown)) >= 3, message="some ran")
                with Rebalancer(config) as rebalancer:
                    assert rebalancer.apply(ApplyOptions(batch=4)).complete
                assert [h.result(timeout=120) for h in handles] == moving
            finally:
                for w in workers:
                    w.stop()
            shards = {h.workflow_id: client.get(h.workflow_id).shard for h in handles}
        runs = intervals(grown)
        assert len(runs) == 2 * len(moving)
        assert_one_at_a_time(runs)
        assert set(shards.values()) == {"shard3"}  # every one of them moved
    finally:
        flow.INTERVALS_DSN[0], flow.HOLD_SECONDS[0] = saved
        cluster_factory.drop(grown)
