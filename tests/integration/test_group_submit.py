"""Concurrent ``Cluster.submit`` calls share commits (engine/group_submit.py): each gets
its own answer, one bad row fails only its own call, a shard that is down fails only the
submits placed on it, and closing the client with submits queued answers every one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import shardflow
from shardflow.engine.cluster import Cluster
from shardflow.engine.group_submit import SubmitGroups
from shardflow.testing.servers import TestCluster, id_on, wait_until
from tests.apps import faults
from tests.integration.background import Background

SHARD = "shard1"


@contextmanager
def inserts_held(cluster: Cluster) -> Iterator[None]:
    """Hold every slot ownership row of shard1: an insert there waits (it takes them FOR
    SHARE), so submits queue behind the first one."""
    with psycopg.connect(cluster.config.shard(SHARD).dsn) as admin:
        admin.execute("SELECT 1 FROM shardflow.slot_ownership FOR UPDATE")
        yield
        admin.rollback()


def stored(cluster: Cluster, workflow_id: str) -> tuple[str, Any] | None:
    """(name, inputs) of a row as a fresh connection sees it: committed, or None."""
    with psycopg.connect(cluster.config.shard(SHARD).dsn) as conn:
        row = conn.execute(
            "SELECT name, inputs FROM shardflow.workflow_status WHERE workflow_id = %s",
            (workflow_id,),
        ).fetchone()
    return None if row is None else (row[0], row[1])


def test_concurrent_submits_share_commits_and_each_gets_its_own_answer(
    cluster: Cluster,
) -> None:
    tag = "{" + id_on(cluster, SHARD, "group") + "}"  # every ID below on shard1
    cluster.submit(faults.two_args, 0, workflow_id=f"{tag}-taken", dedup_key="k")
    cluster.submit(faults.two_args, 0, workflow_id=f"{tag}-named")
    plain = {f"{tag}-{i}": i for i in range(20)}
    calls: dict[str, Callable[[], Any]] = {
        wid: functools.partial(cluster.submit, faults.two_args, i, workflow_id=wid)
        for wid, i in plain.items()
    }
    # The same ID twice (one workflow), a dedup key another workflow holds, and an ID
    # held by another workflow name.
    for who in ("twice-a", "twice-b"):
        calls[who] = functools.partial(
            cluster.submit, faults.two_args, 7, workflow_id=f"{tag}-twice"
        )
    calls["dedup"] = functools.partial(
        cluster.submit, faults.two_args, 1, workflow_id=f"{tag}-dedup", dedup_key="k"
    )
    calls["conflict"] = functools.partial(
        cluster.submit, faults.publisher, "x", workflow_id=f"{tag}-named"
    )
    commits_before = cluster.submit_groups.commits
    with inserts_held(cluster):
        running = {who: Background(call) for who, call in calls.items()}
        wait_until(lambda: cluster.submit_groups.waiting() == len(calls))
    for wid in plain:
        handle = running[wid].join()
        assert (handle.workflow_id, handle.shard) == (wid, SHARD)
        assert handle.status().state is shardflow.WorkflowState.ENQUEUED
    assert running["twice-a"].join().workflow_id == running["twice-b"].join().workflow_id
    assert stored(cluster, f"{tag}-twice") is not None
    with pytest.raises(shardflow.WorkflowDeduplicated):
        running["dedup"].join()
    assert stored(cluster, f"{tag}-dedup") is None
    with pytest.raises(shardflow.WorkflowConflict):
        running["conflict"].join()
    assert stored(cluster, f"{tag}-named") is not None
    assert stored(cluster, f"{tag}-named")[0] == "faults.two_args"  # type: ignore[index]
    # 24 submits: the first alone (held), the rest in one batch, the repeated ID after it.
    assert cluster.submit_groups.commits - commits_before <= 4
    assert cluster.submit_groups.waiting() == 0


def test_a_lone_submit_commits_before_it_returns(cluster: Cluster) -> None:
    wid = id_on(cluster, SHARD, "lone")
    handle = cluster.submit(faults.two_args, 3, workflow_id=wid)
    assert handle.shard == SHARD
    assert stored(cluster, wid) is not None  # durable: another connection sees it
    assert cluster.submit_groups.waiting() == 0


def test_closing_the_client_with_submits_queued_answers_every_one(cluster: Cluster) -> None:
    tag = "{" + id_on(cluster, SHARD, "closing") + "}"
    # A closed client's submit is retried like an outage: 2 s here rather than 30.
    cluster.submit_groups = SubmitGroups(cluster.locator, cluster.store, cluster.router, 2.0)
    ids = [f"{tag}-{i}" for i in range(12)]
    with inserts_held(cluster):
        running = [
            Background(functools.partial(cluster.submit, faults.two_args, i, workflow_id=wid))
            for i, wid in enumerate(ids)
        ]
        wait_until(lambda: cluster.submit_groups.waiting() == len(ids))
        closing = Background(cluster.close)
    for wid, call in zip(ids, running, strict=True):
        assert call.done.wait(60), "a queued submit was never answered"
        # Either answer is allowed; a handle is only ever given for a committed row.
        if call.error is None:
            assert stored(cluster, wid) is not None
        else:
            assert isinstance(call.error, shardflow.ShardflowError), call.error
    closing.join()
    assert cluster.submit_groups.waiting() == 0


@contextmanager
def shard_down(dsn: str) -> Iterator[None]:
    """The shard's database refuses new connections and its sessions are ended."""
    db = str(conninfo_to_dict(dsn)["dbname"])
    admin_dsn = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db))
        )
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,)
        )
        try:
            yield
        finally:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db))
            )


def test_a_shard_that_is_down_fails_only_the_submits_placed_on_it(
    test_cluster: TestCluster,
) -> None:
    with Cluster(test_cluster.config, retry_seconds=2.0) as client:
        down = [id_on(client, "shard1", f"down{i}") for i in range(4)]
        up = [id_on(client, "shard0", f"up{i}") for i in range(4)]
        client.submit(faults.two_args, 0, workflow_id=id_on(client, "shard1", "before"))
        with shard_down(client.config.shard("shard1").dsn):
            running = {
                wid: Background(
                    functools.partial(client.submit, faults.two_args, 1, workflow_id=wid)
                )
                for wid in down + up
            }
            for wid in up:
                assert running[wid].join().shard == "shard0"
            for wid in down:
                with pytest.raises(shardflow.ShardUnavailable):
                    running[wid].join()
        assert client.submit_groups.waiting() == 0
        # Back up: the same IDs go in, once each.
        for wid in down:
            assert client.submit(faults.two_args, 1, workflow_id=wid).shard == "shard1"
