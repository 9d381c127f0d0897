"""Filtered listing and bulk cancel/resume across shards: library and CLI, real shards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.cli.main import main
from shardflow.engine.cluster import Cluster
from shardflow.engine.filters import WorkflowFilter
from shardflow.testing.servers import TestCluster, wait_until
from tests.apps import faults
from tests.apps.basic import app
from tests.integration.clients import KINDS, AsyncCalls, SyncCalls, control_calls


def states_in_db(test_cluster: TestCluster) -> dict[str, str]:
    """``{workflow_id: state}`` read straight from every shard."""
    found: dict[str, str] = {}
    for shard in test_cluster.config.shards:
        with psycopg.connect(shard.dsn) as conn:
            for wid, state in conn.execute(
                "SELECT workflow_id, state FROM shardflow.workflow_status"
            ):
                found[wid] = state
    return found


def submit_pending(cluster: Cluster, ids: list[str], name: str = "bulk.pending") -> None:
    # No worker serves this name: the workflows stay ENQUEUED.
    cluster.submit_many([shardflow.Submission(name, workflow_id=i) for i in ids])


@pytest.mark.parametrize("kind", KINDS)
def test_list_filters_narrow_across_shards(cluster: Cluster, kind: str) -> None:
    with control_calls(kind, cluster) as calls:
        _list_filters_narrow_across_shards(cluster, calls)


def _list_filters_narrow_across_shards(cluster: Cluster, calls: SyncCalls | AsyncCalls) -> None:
    submit_pending(cluster, [f"{{t1}}-a-{i}" for i in range(5)] + [f"b-{i}" for i in range(30)])
    submit_pending(cluster, [f"c-{i}" for i in range(7)], name="bulk.other")
    ids = [s.workflow_id for s in calls.list_workflows(id_prefix="b-", limit=100).items]
    assert sorted(ids) == sorted(f"b-{i}" for i in range(30))
    assert len({cluster.route(i) for i in ids}) == 3  # spread over every shard
    other = calls.list_workflows(name="bulk.other", id_prefix="c-").items
    assert sorted(s.workflow_id for s in other) == sorted(f"c-{i}" for i in range(7))
    # A prefix with LIKE wildcards matches them literally.
    assert len(calls.list_workflows(id_prefix="{t1}-a-").items) == 5
    assert calls.list_workflows(id_prefix="b_").items == []
    assert calls.list_workflows(id_prefix="%").items == []
    # Keyset paging with a filter visits every match once.
    seen: list[str] = []
    cursor = None
    while True:
        page = calls.list_workflows(limit=4, cursor=cursor, filters=WorkflowFilter(id_prefix="b-"))
        seen += [s.workflow_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"b-{i}" for i in range(30))
    # Created-time range: everything is newer than an hour ago, nothing is in the future.
    now = datetime.now(UTC)
    recent = calls.list_workflows(created_after=now - timedelta(hours=1), limit=100)
    assert len(recent.items) == 42
    assert calls.list_workflows(created_after=now + timedelta(hours=1)).items == []
    # The old parameters still work alone, through the old path.
    assert len(calls.list_workflows(state="ENQUEUED", limit=100).items) == 42
    with pytest.raises(ValueError, match="not both"):
        calls.list_workflows(state="ENQUEUED", filters=WorkflowFilter(name="x"))


@pytest.mark.parametrize("kind", KINDS)
def test_list_filter_by_parent(cluster: Cluster, kind: str) -> None:
    submit_pending(cluster, ["parent-1"])
    children = [shardflow.Submission("bulk.pending", workflow_id=f"child-{i}") for i in range(6)]
    for sub in children:
        cluster.submit_child(
            sub.workflow, (), {}, workflow_id=sub.workflow_id or "", parent_id="parent-1"
        )
    submit_pending(cluster, ["orphan-1"])
    with control_calls(kind, cluster) as calls:
        found = calls.list_workflows(parent_id="parent-1").items
    assert sorted(s.workflow_id for s in found) == [f"child-{i}" for i in range(6)]


def test_cancel_many_dry_run_then_exactly_the_matches(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    submit_pending(cluster, [f"x-{i}" for i in range(25)])
    submit_pending(cluster, [f"keep-{i}" for i in range(10)])
    filters = WorkflowFilter(state=WorkflowState.ENQUEUED, id_prefix="x-")
    dry = cluster.cancel_many(filters, dry_run=True)
    assert dry.dry_run and dry.total == 25
    assert set(dry.per_shard) == set(test_cluster.config.shard_names)
    assert set(states_in_db(test_cluster).values()) == {"ENQUEUED"}  # a dry run changes nothing
    done = cluster.cancel_many(filters, reason="bulk test", batch=4)  # several batches
    assert done.total == 25 and not done.dry_run
    states = states_in_db(test_cluster)
    assert {w for w, s in states.items() if s == "CANCELLED"} == {f"x-{i}" for i in range(25)}
    assert {w for w, s in states.items() if s == "ENQUEUED"} == {f"keep-{i}" for i in range(10)}
    assert cluster.get("x-3").reason == "bulk test"
    # Again: nothing left to cancel.
    assert cluster.cancel_many(filters).total == 0


def test_cancel_many_cancels_children_too(cluster: Cluster) -> None:
    # A parent waits for a child that blocks for ever; cancelling the parent by a filter
    # cancels the child too, as Cluster.cancel does.
    with shardflow.Worker(cluster, faults.app, concurrency=4):
        handle = cluster.submit("faults.parent_of_blocker", workflow_id="p-1")
        wait_until(
            lambda: handle.status().state is WorkflowState.SUSPENDED,
            message="the parent waits for its child",
        )
        children = cluster.list_workflows(parent_id="p-1").items
        result = cluster.cancel_many(WorkflowFilter(name="faults.parent_of_blocker"))
        assert result.total == 1
        wait_until(lambda: handle.status().state is WorkflowState.CANCELLED)
    assert [cluster.get(c.workflow_id).state for c in children] == [WorkflowState.CANCELLED]


def test_resume_many_acts_on_exactly_the_filtered_set(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    with shardflow.Worker(cluster, app, concurrency=4) as worker:
        for i in range(6):
            cluster.submit("basic.failing", f"k{i}", workflow_id=f"r-{i}")
        for i in range(4):
            cluster.submit("basic.failing", f"k{i}", workflow_id=f"s-{i}")
        wait_until(lambda: worker.stats.finished["ERROR"] == 10, timeout=30)
    filters = WorkflowFilter(state=WorkflowState.ERROR, id_prefix="r-")
    assert cluster.resume_many(filters, dry_run=True).total == 6
    result = cluster.resume_many(filters, batch=5)
    assert result.total == 6 and not result.skipped
    states = states_in_db(test_cluster)
    assert {w for w, s in states.items() if s == "ENQUEUED"} == {f"r-{i}" for i in range(6)}
    assert {w for w, s in states.items() if s == "ERROR"} == {f"s-{i}" for i in range(4)}
    # The failed last step was dropped, as a single resume does: it runs again.
    assert all(s.error is None for s in cluster.steps("r-0"))


def test_bulk_needs_a_filter(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="at least one filter"):
        cluster.cancel_many(WorkflowFilter())
    with pytest.raises(ValueError, match="batch"):
        cluster.resume_many(WorkflowFilter(name="x"), batch=0)


def test_cli_list_filters_and_bulk_cancel(
    cluster: Cluster, test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    submit_pending(cluster, [f"cli-{i}" for i in range(12)])
    submit_pending(cluster, [f"other-{i}" for i in range(3)])
    config = ["--config", str(test_cluster.path)]
    assert main([*config, "workflows", "list", "--id-prefix", "cli-", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(w["workflow_id"] for w in listed["workflows"]) == sorted(
        f"cli-{i}" for i in range(12)
    )
    bulk = ["workflows", "cancel", "--state", "enqueued", "--id-prefix", "cli-"]
    assert main([*config, *bulk, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and dry["total"] == 12
    assert set(states_in_db(test_cluster).values()) == {"ENQUEUED"}
    assert main([*config, *bulk, "--batch", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("12 workflow(s) cancelled matching state=ENQUEUED id_prefix=cli-")
    states = states_in_db(test_cluster)
    assert sorted(w for w, s in states.items() if s == "CANCELLED") == sorted(
        f"cli-{i}" for i in range(12)
    )
    assert main([*config, "workflows", "resume", "--state", "CANCELLED", "--name", "x"]) == 0
    assert capsys.readouterr().out.startswith("0 workflow(s) resumed")


def test_cli_bulk_refuses_ambiguous_or_empty(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(test_cluster.path)]
    assert main([*config, "workflows", "cancel"]) == 2
    assert "give a workflow ID or at least one filter" in capsys.readouterr().err
    assert main([*config, "workflows", "cancel", "w-1", "--queue", "default"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*config, "workflows", "list", "--created-after", "yesterday"]) == 2
    assert "filter created_after: 'yesterday' is not an ISO 8601 time" in capsys.readouterr().err


def test_forks_record_their_source_and_are_listed_by_it(cluster: Cluster) -> None:
    submit_pending(cluster, ["fork-src", "fork-other"])
    named = cluster.fork("fork-src", 0, new_workflow_id="renamed-fork")
    default = cluster.fork("fork-src", 0)
    unrelated = cluster.fork("fork-other", 0)
    assert cluster.get(named.workflow_id).forked_from == "fork-src"
    assert cluster.get(default.workflow_id).forked_from == "fork-src"
    assert cluster.get("fork-src").forked_from is None
    # The forks of one workflow, whatever their IDs and shards; none of the other's.
    forks = cluster.list_workflows(forked_from="fork-src").items
    assert sorted(s.workflow_id for s in forks) == sorted([named.workflow_id, default.workflow_id])
    assert all(s.forked_from == "fork-src" for s in forks)
    assert unrelated.workflow_id not in {s.workflow_id for s in forks}
    # A fork of a fork names its direct source.
    grandchild = cluster.fork(named.workflow_id, 0)
    assert cluster.get(grandchild.workflow_id).forked_from == "renamed-fork"


def test_overview_counts_are_exact_on_a_small_shard(cluster: Cluster) -> None:
    from shardflow.engine.bulk import admin_store

    submit_pending(cluster, [f"ov-{i}" for i in range(12)])
    # Make some SUCCESS rows without a worker: a finished status row, as a run writes.
    done = [f"ov-{i}" for i in range(5)]
    for shard in cluster.config.shards:
        with psycopg.connect(shard.dsn) as conn:
            conn.execute(
                "UPDATE shardflow.workflow_status SET state = 'SUCCESS', finished_at = now()"
                " WHERE workflow_id = ANY(%s)",
                (done,),
            )
    store = admin_store(cluster)
    infos = [store.shard_info(s) for s in cluster.config.shard_names]
    assert not any(i.success_estimated for i in infos)
    assert sum(i.by_state["SUCCESS"] for i in infos) == 5
    assert sum(i.by_state["ENQUEUED"] for i in infos) == 7
    assert all(" " not in i.server_version and i.server_version[0].isdigit() for i in infos)
