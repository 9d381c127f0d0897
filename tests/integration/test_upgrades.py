"""Upgrading code under running workflows (docs/upgrades.md): ``patched`` and
``deprecate_patch``, the app version recorded per attempt, and ``workflows replay-check``.

Each release of ``shop.order`` is its own App (tests/apps/upgrades.py); a deploy is a
worker of the old release stopping and one of the new release starting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import shardflow
from shardflow.cli.main import main
from shardflow.engine.cluster import Cluster
from shardflow.engine.patching import marker_name
from shardflow.engine.records import StepWrite
from shardflow.testing import TestCluster
from shardflow.testing.servers import wait_until
from tests.apps import upgrades
from tests.apps.upgrades import NAME

MARKER = marker_name("charge-v2")


def suspended(cluster: Cluster, ids: list[str]) -> bool:
    return all(cluster.get(i).state is shardflow.WorkflowState.SUSPENDED for i in ids)


def start_and_park(cluster: Cluster, app: shardflow.App, ids: list[str]) -> None:
    """Run ``ids`` with ``app`` until each waits for its approval (SUSPENDED)."""
    with shardflow.Worker(cluster, app, concurrency=8):
        for i in ids:
            cluster.submit(NAME, i, workflow_id=i)
        wait_until(lambda: suspended(cluster, ids), timeout=60, message="all suspended")


def approve_and_finish(cluster: Cluster, app: shardflow.App, ids: list[str]) -> dict[str, Any]:
    with shardflow.Worker(cluster, app, concurrency=8):
        for i in ids:
            cluster.send(i, "yes", topic="approve")
        return {i: cluster.handle(i).result(timeout=60) for i in ids}


def step_names(cluster: Cluster, workflow_id: str) -> list[str]:
    return [s.name for s in cluster.steps(workflow_id)]


def test_patched_keeps_suspended_runs_on_the_old_branch(cluster: Cluster) -> None:
    old = [f"old-{n}" for n in range(50)]
    start_and_park(cluster, upgrades.v1, old)
    # The version of the code that ran each attempt is recorded and filterable.
    assert {cluster.get(i).app_version for i in old} == {"1"}
    assert len(cluster.list_workflows(app_version="1", limit=100).items) == 50
    # Deploy v2 (patched) while all 50 wait mid-way; new runs start under it too.
    new = [f"new-{n}" for n in range(5)]
    with shardflow.Worker(cluster, upgrades.v2, concurrency=8):
        for i in new:
            cluster.submit(NAME, i, workflow_id=i)
        for i in old + new:
            cluster.send(i, "yes", topic="approve")
        results = {i: cluster.handle(i).result(timeout=60) for i in old + new}
    for i in old:
        assert results[i] == {"paid": f"old:{i}", "approval": "yes", "shipped": f"shipped:{i}"}
        names = step_names(cluster, i)
        assert MARKER not in names
        assert names[0] == "charge"
    for i in new:
        assert results[i]["paid"] == f"new:{i}"
        assert step_names(cluster, i)[:2] == [MARKER, "charge_v2"]
    # Every workflow's latest attempt ran v2.
    assert {cluster.get(i).app_version for i in old + new} == {"2"}
    assert cluster.list_workflows(app_version="1").items == []
    assert len(cluster.list_workflows(app_version="2", limit=100).items) == 55


def test_patch_marker_is_replayed_after_a_suspension(cluster: Cluster) -> None:
    # A run that took the new branch suspends, then replays from its history (as after
    # a crash): the marker answers True again and is not recorded twice.
    ids = ["marked-1", "marked-2"]
    start_and_park(cluster, upgrades.v2, ids)
    assert step_names(cluster, ids[0])[:2] == [MARKER, "charge_v2"]
    results = approve_and_finish(cluster, upgrades.v2, ids)
    assert results["marked-1"]["paid"] == "new:marked-1"
    assert step_names(cluster, "marked-1").count(MARKER) == 1


def test_patched_answers_the_same_after_a_crash(cluster: Cluster) -> None:
    # Two runs crash after their first step: one under v2 (it recorded the marker and
    # the new charge), one under v1 (the old charge). A v2 worker recovers both when
    # their leases expire: each goes on with the branch its history holds.
    store = cluster.store
    recorded = {"crash-new": [(MARKER, "true"), ("charge_v2", '"new:crash-new"')]}
    recorded["crash-old"] = [("charge", '"old:crash-old"')]
    clock = datetime.now(UTC) - timedelta(minutes=10)  # the ghost's leases ran out long ago
    for workflow_id, steps in recorded.items():
        shard = cluster.submit(NAME, workflow_id, workflow_id=workflow_id).shard
        [claim] = store.claim_enqueued(
            shard,
            queue="default",
            names=[NAME],
            owner="ghost",
            lease_seconds=30,
            limit=1,
            now=clock,
            app_version="ghost",
        )
        for step_no, (name, output) in enumerate(steps):
            store.record_step(
                shard, StepWrite(workflow_id, claim.attempt, step_no, name, output, None)
            )
        assert cluster.get(workflow_id).app_version == "ghost"
    results = approve_and_finish(cluster, upgrades.v2, list(recorded))
    assert results["crash-new"]["paid"] == "new:crash-new"
    assert results["crash-old"]["paid"] == "old:crash-old"
    assert step_names(cluster, "crash-new").count(MARKER) == 1
    assert MARKER not in step_names(cluster, "crash-old")
    assert all(cluster.get(i).recoveries == 1 for i in recorded)


def test_deprecate_patch_accepts_histories_with_and_without_the_marker(
    cluster: Cluster,
) -> None:
    with_marker = ["dep-marked-1", "dep-marked-2"]
    start_and_park(cluster, upgrades.v2, with_marker)
    without = ["dep-plain-1", "dep-plain-2"]
    start_and_park(cluster, upgrades.v3, without)
    assert MARKER not in step_names(cluster, without[0])  # never recorded by v3
    results = approve_and_finish(cluster, upgrades.v3, with_marker + without)
    for i in with_marker + without:
        assert results[i]["paid"] == f"new:{i}"
    assert step_names(cluster, "dep-marked-1")[:2] == [MARKER, "charge_v2"]
    assert MARKER not in step_names(cluster, "dep-plain-1")


def test_patched_outside_a_workflow_is_refused() -> None:
    with pytest.raises(shardflow.ShardflowError, match="inside a workflow"):
        shardflow.patched("x")
    with pytest.raises(ValueError, match="non-empty"):
        shardflow.deprecate_patch("")


def _replay_check(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    config = ["--config", str(test_cluster.path)]
    code = main([*config, "workflows", "replay-check", *args])
    out, err = capsys.readouterr()
    return code, out + err


def test_replay_check_flags_a_broken_change_and_passes_compatible_ones(
    test_cluster: TestCluster, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    parked = [f"rc-{n}" for n in range(4)]
    start_and_park(cluster, upgrades.v1, parked)
    before = {i: (cluster.get(i), cluster.steps(i)) for i in parked}

    code, out = _replay_check(test_cluster, capsys, "--app", "tests.apps.upgrades:broken")
    assert code == 1, out
    assert "4 would fail" in out
    assert "non-determinism at step 0: recorded 'charge', the new code calls 'charge_v2'" in (
        " ".join(out.split())
    )
    assert all(len(line) <= 80 for line in out.splitlines()), out
    for app in ("v2", "compatible", "v1"):
        code, out = _replay_check(test_cluster, capsys, "--app", f"tests.apps.upgrades:{app}")
        assert code == 0, out
        assert "4 workflow(s) checked, all replay" in out

    # JSON names the workflow, the step, what was recorded and what the code calls.
    code, out = _replay_check(
        test_cluster, capsys, "--app", "tests.apps.upgrades:broken", "--limit", "1", "--json"
    )
    assert code == 1
    report = json.loads(out)
    assert report["checked"] == 1 and report["failed"] == 1
    (one,) = report["results"]
    assert one["workflow_id"] in parked
    assert (one["outcome"], one["step_no"], one["expected"], one["found"]) == (
        "non-determinism",
        0,
        "charge",
        "charge_v2",
    )

    # Finished histories too (--state): v3 cannot replay a v1 history (no patch left).
    approve_and_finish(cluster, upgrades.v1, parked[:2])
    code, out = _replay_check(
        test_cluster, capsys, "--app", "tests.apps.upgrades:v3", "--state", "SUCCESS"
    )
    assert code == 1 and "2 would fail" in out
    code, out = _replay_check(
        test_cluster, capsys, "--app", "tests.apps.upgrades:v2", "--state", "success"
    )
    assert code == 0 and "2 workflow(s) checked, all replay" in out
    # The check wrote nothing: same states, attempts and steps for the ones still parked.
    for i in parked[2:]:
        status, steps = before[i]
        assert cluster.get(i).state is status.state
        assert cluster.get(i).attempt == status.attempt
        assert cluster.steps(i) == steps


def test_replay_check_reports_a_workflow_the_new_app_lacks(
    test_cluster: TestCluster, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    long_id = "{tenant-0042}:invoice-2026-01-02-000123-reminder-with-a-long-tail"
    start_and_park(cluster, upgrades.v1, ["gone-1", long_id])
    code, out = _replay_check(test_cluster, capsys, "--app", "tests.apps.basic:app")
    assert code == 1
    assert "unknown-workflow: no workflow named 'shop.order'" in out
    # 80 columns, the workflow IDs whole.
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert long_id in out.splitlines() and "gone-1" in out.splitlines()
    code, out = _replay_check(test_cluster, capsys, "--app", "tests.apps.upgrades:v1")
    assert code == 0
    code, out = _replay_check(test_cluster, capsys, "--app", "nope")
    assert code == 2 and "MODULE:ATTR" in out


def test_version_filter_on_the_cli(
    test_cluster: TestCluster, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    start_and_park(cluster, upgrades.v1, ["cli-v-1"])
    config = ["--config", str(test_cluster.path)]
    assert main([*config, "workflows", "list", "--app-version", "1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [w["workflow_id"] for w in listed["workflows"]] == ["cli-v-1"]
    assert listed["workflows"][0]["app_version"] == "1"
    assert main([*config, "workflows", "list", "--app-version", "9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["workflows"] == []
