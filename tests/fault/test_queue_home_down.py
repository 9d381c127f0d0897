"""A queue's home shard goes down (docs/queues.md#concurrency): the queue's running
workflow stops within about a lease and is handed back, nothing of the queue starts
while the home is away, other queues go on, and the queue resumes when it is back."""

from __future__ import annotations

from pathlib import Path

import shardflow
from shardflow import WorkflowState
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.router.hashing import home_shard
from shardflow.testing.events import EventRecorder
from shardflow.testing.faults import proxied_cluster
from shardflow.testing.servers import ClusterFactory, id_on
from tests.apps import flow


def test_a_queue_whose_home_shard_is_down_stops_and_resumes(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    flow.reset(seconds=0.05)
    made = cluster_factory.make(3, extra={"queues": {"default": {}, "single": {"concurrency": 1}}})
    proxied = proxied_cluster(made.path, tmp_path / "proxied.yaml")
    try:
        config = shardflow.load(proxied.path)
        home = home_shard("single", config.shard_names, config.hash.seed)
        other = next(s for s in config.shard_names if s != home)
        with Cluster(config) as client:
            paced_id = id_on(client, other, "paced")
            handle = client.submit(flow.paced, 120, workflow_id=paced_id)
            worker = shardflow.Worker(
                client, flow.app, concurrency=4, lease_seconds=3, poll_interval_seconds=0.05
            )
            with EventRecorder(worker) as events, worker:
                events.wait_for(
                    EventKind.COMMITTED, lambda e: e.workflow_id == paced_id, count=3, timeout=30
                )
                proxied.proxies[home].blackhole()
                # Its queue lease can no longer be renewed: the run stops and hands back.
                events.wait_for(EventKind.RELEASED, lambda e: e.workflow_id == paced_id, timeout=30)
                # Other queues go on meanwhile (a default-queue workflow on a healthy shard).
                free = client.submit(flow.latest, "free", workflow_id=id_on(client, other, "free"))
                assert free.result(timeout=30) == "free"
                # ... while the queue's workflow waits: nobody can take its place.
                assert client.get(paced_id).state is WorkflowState.ENQUEUED
                proxied.proxies[home].heal()
                assert handle.result(timeout=60) == 120
            claims = [e for e in events.events(EventKind.CLAIMED) if e.workflow_id == paced_id]
            assert [c.detail for c in claims] == ["new", "new"]
            assert client.store.queue_leases_live(home) == {}
    finally:
        proxied.close()
        cluster_factory.drop(made)
