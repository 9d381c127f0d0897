"""Finding a workflow mid-move only reads; a write finishes a decided move first.

The rebalancer dies right after tombstoning a batch (step 3 committed, step 4 not yet):
the workflows of that batch exist only as staged copies whose source holds a tombstone
of the same move, which makes each copy the workflow (docs/rebalancing.md).
"""

from __future__ import annotations

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.cluster import Cluster
from shardflow.errors import WorkflowConflict
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.rebalance.mover import MoveStep
from shardflow.testing.servers import TestCluster
from tests.apps import basic
from tests.integration.test_rebalance import live_rows
from tests.integration.test_rebalance_crash import (
    Crash,
    crash_at,
    populated,
    staged_and_split,
)

__all__ = ["populated"]  # the fixture, used by name below


def test_get_reports_a_decided_staged_copy_without_writing_and_a_write_activates_it(
    populated: TestCluster,
) -> None:
    config = populated.config
    ids = [f"f-{i}" for i in range(40)] + [f"q-{i}" for i in range(40)]
    crash = crash_at(MoveStep.TOMBSTONED, 2)
    with Rebalancer(config, on_step=crash) as rebalancer, pytest.raises(Crash):
        rebalancer.apply(ApplyOptions(batch=3))
    staged, _ = staged_and_split(config)
    decided = sorted(set(ids) - set(live_rows(config)))
    assert staged > 0 and len(decided) == staged

    with shardflow.connect(config) as cluster:
        for wid in decided:
            status = cluster.get(wid)
            expected = WorkflowState.SUCCESS if wid.startswith("f-") else WorkflowState.ENQUEUED
            assert status.state is expected
            assert cluster.handle(wid).status().state is expected
        # Reads reported the copies; none of them was activated.
        assert staged_and_split(config)[0] == staged
        assert set(decided).isdisjoint(live_rows(config))

        # A write aimed at the workflow activates its copy first (step 4, idempotent).
        first = decided[0]
        woken = cluster.wake(first)
        assert woken is False  # not suspended: nothing to wake, but the copy is live now
        assert staged_and_split(config)[0] == staged - 1
        assert live_rows(config)[first] == 1
        assert cluster.get(first).state is (
            WorkflowState.SUCCESS if first.startswith("f-") else WorkflowState.ENQUEUED
        )

    with Rebalancer(config) as rebalancer:
        result = rebalancer.run(rebalancer.prepare(), ApplyOptions(batch=3))
    assert result.complete
    assert result.recovered.activated == staged - 1
    assert live_rows(config) == {wid: 1 for wid in ids}


def test_fork_goes_through_the_placement_loop_and_never_reuses_an_id(cluster: Cluster) -> None:
    original = cluster.submit(basic.three_steps, 1, workflow_id="loc-original")
    other = cluster.submit(basic.three_steps, 2, workflow_id="loc-other")
    for taken in (other.workflow_id, original.workflow_id):
        with pytest.raises(WorkflowConflict, match="exists already"):
            cluster.fork(original.workflow_id, from_step=0, new_workflow_id=taken)
    fork = cluster.fork(original.workflow_id, from_step=0, new_workflow_id="loc-fork")
    assert fork.shard == cluster.route("loc-fork")
    status = cluster.get("loc-fork")
    assert (status.name, status.state, status.shard) == (
        "basic.three_steps",
        WorkflowState.ENQUEUED,
        fork.shard,
    )
