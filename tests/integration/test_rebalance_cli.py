"""``shardflow rebalance plan|apply|status|purge`` as an operator runs them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import psycopg
import pytest

import shardflow
from shardflow.cli.main import main
from shardflow.sql import query
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.apps import basic


@pytest.fixture
def grown(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    made = cluster_factory.make(3, slots=64)
    grown = cluster_factory.add_shard(made)
    with shardflow.connect(grown.config) as cluster:
        cluster.submit_many(
            [shardflow.Submission(basic.three_steps, (i,), workflow_id=f"c-{i}") for i in range(60)]
        )
    yield grown
    cluster_factory.drop(grown)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_plan_apply_status_purge(grown: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(grown.path)
    status, out, _ = run(capsys, "--config", config, "rebalance", "plan")
    assert status == 0
    assert "moves: 16 slot(s)" in out
    assert "slots 16-21 (6): shard0 -> shard3" in out
    assert "ENQUEUED" in out and "end state" in out

    status, out, _ = run(capsys, "--config", config, "rebalance", "plan", "--json")
    plan = json.loads(out)
    assert plan["after"] == {"shard0": 16, "shard1": 16, "shard2": 16, "shard3": 16}
    assert sum(m["size"] for m in plan["moves"]) == 16
    moving = sum(sum(v.values()) for v in plan["workflows"].values())

    # Without a terminal and without --yes, apply refuses before changing anything.
    status, _, err = run(capsys, "--config", config, "rebalance", "apply")
    assert status == 2 and "--yes" in err

    status, out, _ = run(
        capsys, "--config", config, "rebalance", "apply", "--yes", "--json", "--rate", "500/s"
    )
    assert status == 0
    summary = json.loads(out)
    assert summary["complete"] and summary["workflows_moved"] == moving
    assert summary["slots_settled"] == 16

    status, out, _ = run(capsys, "--config", config, "rebalance", "status", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["settled"] and report["in_motion"] == []
    assert report["slots_per_shard"] == {"shard0": 16, "shard1": 16, "shard2": 16, "shard3": 16}
    assert report["plan"]["outcome"] == "done"
    assert sum(s["tombstones"] for s in report["shards"]) == moving

    status, out, _ = run(capsys, "--config", config, "rebalance", "status")
    assert status == 0 and "settled" in out

    status, out, _ = run(capsys, "--config", config, "rebalance", "purge", "--tombstone-grace", "0")
    assert status == 0 and f"purged {moving} tombstone(s)" in out

    status, out, _ = run(capsys, "--config", config, "rebalance", "plan")
    assert "nothing to move" in out


def test_plan_refuses_a_config_without_a_shard_that_owns_slots(
    grown: TestCluster, cluster_factory: ClusterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    without = cluster_factory.reshape(grown, remove=["shard1"])
    status, _, err = run(capsys, "--config", str(without.path), "rebalance", "plan")
    assert status == 2
    assert "shard1" in err and "draining" in err


def test_apply_says_it_waits_for_the_lock_another_rebalance_holds(
    grown: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    result: list[int] = []
    apply = threading.Thread(
        target=lambda: result.append(
            main(["--config", str(grown.path), "rebalance", "apply", "--yes", "--json"])
        )
    )
    with psycopg.connect(grown.config.shards[0].dsn, autocommit=True) as holder:
        # What another `rebalance apply` holds: the same session advisory lock.
        assert holder.execute(query("rebalance_try_lock")).fetchone() == (True,)
        apply.start()
        err = ""

        def said_waiting() -> bool:
            nonlocal err
            err += capsys.readouterr().err
            return "waiting for the rebalance lock on shard 'shard0'" in err

        wait_until(said_waiting, timeout=20, message="apply to say it waits for the lock")
        assert apply.is_alive() and not result
        assert "held by another rebalance" in err and "s so far)" in err
    # Closing the holder's session releases the lock: the waiting apply goes ahead.
    apply.join(timeout=60)
    assert result == [0]
    out, _ = capsys.readouterr()
    assert json.loads(out)["complete"]
