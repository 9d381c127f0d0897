"""A shard stopped with `pg_ctl stop -m immediate` while workers run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import app
from shardflow.engine.worker import EventKind
from shardflow.local import LocalCluster
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import wait_until

pytestmark = pytest.mark.chaos

# An immediate stop is a PostgreSQL crash: keep synchronous_commit on so committed work
# survives it (fsync only matters if the operating system crashes too).
SETTINGS = {"fsync": "off"}


def test_a_stopped_shard_fails_only_its_own_work(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "cluster")
    config_path = local.up(shards=3, name="down", settings=SETTINGS)
    text = config_path.read_text() + (
        "worker: {lease_seconds: 2, heartbeat_seconds: 0.5, poll_interval_seconds: 0.05}\n"
    )
    config = shardflow.config.parse(text)
    try:
        # A client rides through a shard's outage for retry_seconds, then gives up.
        with shardflow.connect(config, retry_seconds=2.0) as cluster:
            by_shard: dict[str, list[str]] = {s: [] for s in config.shard_names}
            i = 0
            while any(len(v) < 30 for v in by_shard.values()):
                wid = f"doc-{i}"
                i += 1
                if len(by_shard[cluster.route(wid)]) < 30:
                    by_shard[cluster.route(wid)].append(wid)
            for ids in by_shard.values():
                cluster.submit_many(
                    [
                        shardflow.Submission(
                            app.lookup("demo.process_document"), (w,), workflow_id=w
                        )
                        for w in ids
                    ]
                )
            down = local.servers[1]
            assert config.shard_names[1] == "shard1"
            worker = shardflow.Worker(cluster, app, concurrency=12)
            with EventRecorder(worker) as events, worker:
                # Stop shard1 while workflows run on it.
                events.wait_for(EventKind.CLAIMED, count=10)
                down.stop("immediate")
                started = time.monotonic()
                with pytest.raises(shardflow.ShardUnavailable):
                    cluster.submit(
                        app.lookup("demo.process_document"),
                        "x",
                        workflow_id=_id_on(cluster, "shard1"),
                    )
                # Gives up after its retry budget, does not hang.
                assert time.monotonic() - started < 6.0
                # The other shards keep accepting and completing work.
                extra = cluster.submit(
                    app.lookup("demo.process_document"), "y", workflow_id=_id_on(cluster, "shard0")
                )
                for shard in ("shard0", "shard2"):
                    for wid in by_shard[shard]:
                        assert cluster.handle(wid).result(timeout=60).startswith("published")
                assert extra.result(timeout=30).startswith("published")
                with pytest.raises(shardflow.ShardUnavailable):
                    cluster.get(by_shard["shard1"][0])
                # Back up: its workflows resume (interrupted ones after their lease).
                local.up(shards=3, name="down", settings=SETTINGS)
                for wid in by_shard["shard1"]:
                    handle = cluster.handle(wid) if _reachable(cluster, wid) else None
                    assert handle is not None
                    assert handle.result(timeout=60).startswith("published")
            for ids in by_shard.values():
                for wid in ids:
                    status = cluster.get(wid)
                    assert status.state is WorkflowState.SUCCESS
                    assert [s.name for s in cluster.steps(wid)] == [
                        "extract",
                        "enrich",
                        "render",
                        "publish",
                    ]
    finally:
        local.destroy()


def _id_on(cluster: shardflow.Cluster, shard: str) -> str:
    i = 0
    while cluster.route(f"probe-{shard}-{i}") != shard:
        i += 1
    return f"probe-{shard}-{i}"


def _reachable(cluster: shardflow.Cluster, wid: str) -> bool:
    def ok() -> bool:
        try:
            cluster.get(wid)
            return True
        except shardflow.ShardUnavailable:
            return False

    return bool(wait_until(ok, timeout=30, interval=0.2, message="shard back"))
