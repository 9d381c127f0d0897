"""The crash table of docs/rebalancing.md, one row per test: the rebalancer dies right
after a step, readers still see every workflow once, and the next run finishes the job."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.rebalance.mover import MoveStep
from shardflow.testing.servers import ClusterFactory, TestCluster
from tests.apps import basic
from tests.integration.test_rebalance import assert_settled_on_plan, live_rows


class Crash(Exception):
    """Stands in for the process dying: the open transaction is rolled back."""


@pytest.fixture
def populated(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """A grown cluster (fourth shard empty) with 40 finished and 40 queued workflows."""
    made = cluster_factory.make(3, slots=64)
    grown = cluster_factory.add_shard(made)
    with shardflow.connect(grown.config) as cluster:
        done = [cluster.submit(basic.three_steps, i, workflow_id=f"f-{i}") for i in range(40)]
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for h in done:
                h.result(timeout=30)
        cluster.submit_many(
            [shardflow.Submission(basic.three_steps, (i,), workflow_id=f"q-{i}") for i in range(40)]
        )
    basic.reset()
    yield grown
    cluster_factory.drop(grown)


def crash_at(step: MoveStep, nth: int) -> Callable[[MoveStep], None]:
    seen = Counter[MoveStep]()

    def hook(at: MoveStep) -> None:
        seen[at] += 1
        if at is step and seen[at] == nth:
            raise Crash(step.value)

    return hook


def staged_and_split(config: shardflow.ClusterConfig) -> tuple[int, int]:
    staged = split = 0
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM shardflow.workflow_status WHERE state = 'IMPORTING'),"
                " (SELECT count(*) FROM shardflow.slot_ownership WHERE state <> 'OWNED')"
            ).fetchone()
        assert row is not None
        staged += int(row[0])
        split += int(row[1])
    return staged, split


# step, occurrence, staged copies left behind, what the next run's recovery does
CRASHES = [
    (MoveStep.IMPORTING_MARKED, 1, False, "start"),
    (MoveStep.PUBLISHED, 1, False, None),
    (MoveStep.LOCKED, 2, False, None),
    (MoveStep.STAGED, 2, True, "discard"),
    (MoveStep.TOMBSTONED, 2, True, "activate"),
    (MoveStep.ACTIVATED, 2, False, None),
    (MoveStep.OWNED_MARKED, 1, False, "finish"),
]


@pytest.mark.parametrize(("step", "nth", "leaves_staged", "recovery"), CRASHES)
def test_a_rebalancer_killed_after_any_step_resumes_and_finishes(
    populated: TestCluster, step: MoveStep, nth: int, leaves_staged: bool, recovery: str | None
) -> None:
    config = populated.config
    ids = [f"f-{i}" for i in range(40)] + [f"q-{i}" for i in range(40)]
    with Rebalancer(config, on_step=crash_at(step, nth)) as rebalancer, pytest.raises(Crash):
        rebalancer.apply(ApplyOptions(batch=3))
    staged, split = staged_and_split(config)
    assert (staged > 0) is leaves_staged
    assert split > 0  # the run died with slots in motion
    # Nothing is duplicated; undecided copies are not the workflow, decided ones are
    # (their source holds only a tombstone until they are activated).
    rows = live_rows(config)
    assert max(rows.values()) == 1
    missing = set(ids) - set(rows)
    assert len(missing) == (staged if recovery == "activate" else 0)

    with Rebalancer(config) as rebalancer:
        prepared = rebalancer.prepare()
        assert prepared.resumed
        assert [r.kind for r in prepared.live.repairs][:1] == (
            [recovery] if recovery in ("start", "finish") else []
        )
        result = rebalancer.run(prepared, ApplyOptions(batch=3))
    assert result.complete
    if recovery == "discard":
        assert result.recovered.discarded == staged and result.recovered.activated == 0
    if recovery == "activate":
        assert result.recovered.activated == staged and result.recovered.discarded == 0
    assert_settled_on_plan(config)
    assert live_rows(config) == Counter({wid: 1 for wid in ids})

    with shardflow.connect(config) as cluster:
        for i in range(40):
            status = cluster.get(f"f-{i}")
            assert status.state is WorkflowState.SUCCESS
            assert [s.output for s in cluster.steps(f"f-{i}")] == [i + 1, i + 2, i + 3]
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for i in range(40):
                assert cluster.handle(f"q-{i}").result(timeout=30) == {"result": i + 3}
    assert basic.CALLS["add"] == 3 * 40  # each queued workflow ran once, wherever it went


def test_a_rebalancer_killed_after_the_last_slot_settled_records_the_plan_done(
    populated: TestCluster,
) -> None:
    """The last row of the crash table: every slot settled, the plan not yet recorded
    done. The next run has nothing to move and still finishes the plan."""
    config = populated.config
    with (
        Rebalancer(config, on_step=crash_at(MoveStep.SETTLED, 1)) as rebalancer,
        pytest.raises(Crash),
    ):
        rebalancer.apply(ApplyOptions(batch=3))
    assert staged_and_split(config) == (0, 0)
    with Rebalancer(config) as rebalancer:
        assert rebalancer.plans()[0].finished_at is None
        prepared = rebalancer.prepare()
        assert prepared.resumed and not prepared.plan.moves and not prepared.has_work
        result = rebalancer.run(prepared)
    assert result.complete and result.moved == 0
    assert_settled_on_plan(config)
    with Rebalancer(config) as rebalancer:  # and a run after that starts no plan
        again = rebalancer.prepare()
        assert not again.resumed and not again.has_work
