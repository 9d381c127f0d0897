"""The client and the rebalancer judge a staged copy by the same rule
(shardflow.router.moves.copy_verdict), on real shards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.rebalance.mover import Recovery, ShardLink, move_batch, recover_staged
from shardflow.sql import query
from shardflow.testing.servers import ClusterFactory, TestCluster
from tests.apps import basic


@pytest.fixture
def three(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    made = cluster_factory.make(3, slots=64)
    yield made
    cluster_factory.drop(made)


def test_a_copy_whose_source_moved_the_workflow_elsewhere_is_not_the_workflow(
    three: TestCluster,
) -> None:
    links = {shard.name: ShardLink(shard) for shard in three.config.shards}
    try:
        with shardflow.connect(three.config) as cluster:
            handle = cluster.submit(basic.three_steps, 1, workflow_id="w-1")
            a = cluster.get("w-1").shard
            b, c = [name for name in links if name != a]
            slot = cluster.hasher.slot("w-1")
            # The workflow moves A -> C: A holds a tombstone (this move), C the workflow.
            assert move_batch(links[a], links[c], [slot], 10).moved == 1
            # A stale copy on B claims to come from A under another move.
            row = links[c].conn.execute(query("status_rows"), {"ids": ["w-1"]}).fetchone()
            assert row is not None
            staged = (
                links[b]
                .conn.execute(
                    query("stage_workflows"),
                    {"rows": f"[{row[0]}]", "move_id": str(uuid.uuid4()), "source": a},
                )
                .fetchall()
            )
            assert staged == [("w-1",)]

            # The client: the copy is not the workflow; follow A's tombstone to C.
            copy = cluster.store.find_copy(b, "w-1")
            assert copy is not None and copy.status.state is WorkflowState.IMPORTING
            assert cluster.locator._staged(copy, settle=False) == c
            assert cluster.locator._staged(copy, settle=True) == c
            status = cluster.get("w-1")
            assert (status.shard, status.state) == (c, WorkflowState.ENQUEUED)
            assert handle.status().shard == c

            # The rebalancer: the same verdict, so it discards the copy.
            assert recover_staged(links[b], links) == Recovery(discarded=1)
            assert cluster.store.find_copy(b, "w-1") is None
            assert cluster.get("w-1").shard == c
    finally:
        for link in links.values():
            link.close()
