"""Regression tests of the fault-hardening issue that need a shard to go away: behind a
fault proxy (defect 11) or by restarting this suite's own servers (defect 18)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.worker import EventKind
from shardflow.local import LocalCluster
from shardflow.testing.events import EventRecorder
from shardflow.testing.faults import ProxiedCluster, restart_server
from shardflow.testing.servers import (
    ClusterFactory,
    TestCluster,
    id_on,
    wait_until,
    with_worker_settings,
)
from tests.apps import faults
from tests.apps.faults import app

pytestmark = pytest.mark.chaos


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    faults.reset()
    yield
    faults.reset()


def _state_row(dsn: str, workflow_id: str) -> tuple[str, str | None, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state, wait_for, recoveries FROM shardflow.workflow_status"
            " WHERE workflow_id = %s",
            (workflow_id,),
        ).fetchone()
    assert row is not None
    return str(row[0]), row[1], int(row[2])


def test_defect11_a_down_shard_parks_the_workflows_that_talk_to_it(
    proxied: ProxiedCluster,
) -> None:
    """shard1 is unreachable for longer than max_recoveries leases: a workflow on shard0
    that sends to a workflow on shard1 waits (parked, no lease, no recovery counted) and
    finishes once shard1 is back; it is never dead-lettered."""
    config = with_worker_settings(
        proxied.path, lease_seconds=3, heartbeat_seconds=0.5, max_recoveries=1
    )
    with shardflow.connect(config, retry_seconds=2) as cluster:
        target = cluster.submit(faults.listener, workflow_id=id_on(cluster, "shard1", "rx"))
        sender_id = id_on(cluster, "shard0", "tx")
        worker = shardflow.Worker(cluster, app, concurrency=4, lease_seconds=3)
        with EventRecorder(worker) as events, worker:
            events.wait_for(
                EventKind.SUSPENDED, lambda e: e.workflow_id == target.workflow_id, timeout=30
            )
            assert target.status().state is WorkflowState.SUSPENDED
            proxied.proxies["shard1"].blackhole()
            proxied.proxies["shard1"].reset()
            sender = cluster.submit(faults.talker, "tx", target.workflow_id, workflow_id=sender_id)
            direct0 = proxied.direct_dsns["shard0"]
            wait_until(
                lambda: _state_row(direct0, sender_id)[:2] == ("SUSPENDED", "shard:shard1"),
                timeout=30,
                message="the sender parked, waiting for shard1",
            )
            # Longer than (max_recoveries + 1) leases: a crash-counted run would be DEAD.
            outage_end = time.monotonic() + 8
            while time.monotonic() < outage_end:
                state, _, recoveries = _state_row(direct0, sender_id)
                assert state in ("SUSPENDED", "RUNNING") and recoveries == 0
                time.sleep(0.2)
            proxied.heal_all()
            assert sender.result(timeout=60) == "after_send:tx"
            assert target.result(timeout=60) == "hello from tx"
            assert worker.stats.dead_lettered == 0
            assert events.count(EventKind.DEAD_LETTERED) == 0
    assert _state_row(direct0, sender_id) == ("SUCCESS", None, 0)
    assert faults.started("before_send", "tx") == 1


def test_defect18_a_client_rides_through_a_shard_restart(
    fault_factory: ClusterFactory, fault_servers: LocalCluster
) -> None:
    made: TestCluster = fault_factory.make(3)
    try:
        config = with_worker_settings(made.path, lease_seconds=3, heartbeat_seconds=0.5)
        server = fault_servers.servers[0]
        with shardflow.connect(config) as cluster:
            assert config.shards[0].dsn.split("@")[-1].split("/")[0] in server.dsn("postgres")
            handle = cluster.submit(
                faults.long_step, "rs", 2.0, workflow_id=id_on(cluster, "shard0", "rs")
            )
            assert cluster.get(handle.workflow_id).state is WorkflowState.ENQUEUED  # pooled
            restart_server(server)
            # Stale pooled connections are replaced: the next read just works.
            assert cluster.get(handle.workflow_id).state is WorkflowState.ENQUEUED
            got: list[Any] = []
            waiter = threading.Thread(target=lambda: got.append(handle.result(timeout=120)))
            waiter.start()
            with shardflow.Worker(cluster, app, concurrency=2, lease_seconds=3):
                wait_until(lambda: faults.started("long", "rs") >= 1, timeout=30)
                # Restarted while the step runs and while result() waits.
                restart_server(server)
                waiter.join(120)
            assert got == ["long:rs"]
            # A step interrupted before its checkpoint may run again; once committed never.
            assert faults.started("after", "rs") == 1
    finally:
        fault_factory.drop(made)
