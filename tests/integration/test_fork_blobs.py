"""Regression test for defect 7: a fork shared its original's claim-checked values."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.blobs import BlobRef
from shardflow.engine.cluster import Cluster
from shardflow.engine.retention import RetentionLeader
from shardflow.testing.servers import ClusterFactory, TestCluster

app = shardflow.App("fork_blobs")

BIG = 50_000  # characters: far above the 4096-byte inline limit below


@app.step()
def enlarge(text: str) -> str:
    return text + "!" * BIG


@app.step()
def measure(text: str) -> int:
    return len(text)


@app.workflow(name="fork_blobs.pipeline")
def pipeline(text: str) -> dict[str, Any]:
    big = enlarge(text)  # step 0: a large output, claim-checked
    return {"inputs": len(text), "output": measure(big), "tail": big[-3:]}


@pytest.fixture
def blob_cluster(cluster_factory: ClusterFactory, tmp_path: Path) -> Iterator[TestCluster]:
    made = cluster_factory.make(
        3,
        extra={
            "payloads": {
                "inline_max_bytes": 4096,
                "blob_store": {"kind": "filesystem", "path": str(tmp_path / "blobs")},
            },
            "retention": {"keep_finished_days": 1},
        },
    )
    yield made
    cluster_factory.drop(made)


def stored_refs(config: Any, shard: str, workflow_id: str) -> tuple[str, str]:
    """The blob keys of a workflow's inputs and of its step 0 output."""
    with psycopg.connect(config.shard(shard).dsn) as conn:
        row = conn.execute(
            "SELECT w.inputs, s.output FROM shardflow.workflow_status w"
            " JOIN shardflow.step_outputs s USING (workflow_id)"
            " WHERE w.workflow_id = %s AND s.step_no = 0",
            (workflow_id,),
        ).fetchone()
    assert row is not None
    inputs, output = (BlobRef.parse(row[0]), BlobRef.parse(row[1]))
    assert inputs is not None and output is not None, "both values should be claim checks"
    return inputs.key, output.key


def test_defect07_fork_keeps_its_blobs_when_retention_deletes_the_original(
    blob_cluster: TestCluster, tmp_path: Path
) -> None:
    """The fork reused the original's inputs reference, so retention of the original
    deleted the fork's inputs too, and the fork failed with BlobMissing. The fork now
    has its own copy of every claim-checked value: inputs and reused step outputs."""
    config = blob_cluster.config
    text = "x" * BIG
    expected = {"inputs": BIG, "output": 2 * BIG, "tail": "!!!"}
    with Cluster(config) as cluster:
        original = cluster.submit(pipeline, text)
        with shardflow.Worker(cluster, app, retention=False, queues=["default"]):
            assert original.result(timeout=60) == expected
        fork = cluster.fork(original.workflow_id, from_step=1)  # reuses step 0's output
        fork_keys = stored_refs(config, fork.shard, fork.workflow_id)
        original_keys = stored_refs(config, original.shard, original.workflow_id)

        # Retention's delete path removes the original and its blobs.
        with psycopg.connect(config.shard(original.shard).dsn) as conn:
            conn.execute(
                "UPDATE shardflow.workflow_status SET finished_at = now() - %s"
                " WHERE workflow_id = %s",
                (timedelta(days=2), original.workflow_id),
            )
        assert config.retention is not None
        leader = RetentionLeader(cluster, config.retention, config.shard_names, threading.Event())
        try:
            assert leader.run_once() == 1
        finally:
            leader.close()
        assert leader.stats.blobs_deleted == 2
        assert not any((tmp_path / "blobs" / key).exists() for key in original_keys)

        with shardflow.Worker(cluster, app, retention=False, queues=["default"]):
            assert fork.result(timeout=60) == expected
        assert set(fork_keys).isdisjoint(original_keys)
        assert fork.status().state is WorkflowState.SUCCESS
        steps = cluster.steps(fork.workflow_id)
        assert [s.name for s in steps] == ["enlarge", "measure"]
        assert steps[0].output == text + "!" * BIG
