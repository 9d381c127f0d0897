"""Regression tests of the fault-hardening issue: one per confirmed defect, named for it,
against real PostgreSQL (faults injected with held locks, read-only sessions, terminated
backends and hostile values; server-level faults are in tests/fault/)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.batcher import ShardCommitter
from shardflow.engine.cluster import Cluster
from shardflow.engine.runner import WorkflowRun
from shardflow.engine.store import StepWrite
from shardflow.errors import ValueRejected
from shardflow.router.slotmap import SlotMap
from shardflow.sql import query
from shardflow.testing.faults import held_lock
from shardflow.testing.servers import TestCluster, id_on, wait_until, with_worker_settings
from tests.apps import faults
from tests.apps.faults import app
from tests.integration.clients import KINDS, control_calls


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    faults.reset()
    yield
    faults.reset()


def _dsn(cluster: Cluster, shard: str) -> str:
    return cluster.config.shard(shard).dsn


def _row(cluster: Cluster, shard: str, workflow_id: str, columns: str) -> tuple[Any, ...]:
    with psycopg.connect(_dsn(cluster, shard)) as conn:
        row = conn.execute(
            f"SELECT {columns} FROM shardflow.workflow_status WHERE workflow_id = %s",
            (workflow_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


# -- defect 1: the committer never dies ---------------------------------------------------


def test_defect01_lone_surrogate_in_a_step_result_never_stalls_the_committer(
    cluster: Cluster,
) -> None:
    handle = cluster.submit(faults.surrogate, "a", workflow_id=id_on(cluster, "shard0", "s"))
    with shardflow.Worker(cluster, app, concurrency=2) as worker:
        # The value round-trips exactly (escaped in JSON, not mangled, not lost).
        assert handle.result(timeout=30) == "report-\udcff.txt"
        # The shard's committer still commits: later work on that shard finishes.
        after = cluster.submit(faults.two_args, 1, 2, workflow_id=id_on(cluster, "shard0", "t"))
        assert after.result(timeout=30) == 3
        assert worker.alive()


def test_defect01_committer_fails_only_the_bad_write_and_keeps_running(
    cluster: Cluster,
) -> None:
    """A write the database cannot store (what a custom serializer might produce) fails
    with ValueRejected for its own run; the thread lives and commits the next batch."""
    wid = id_on(cluster, "shard1", "c")
    cluster.submit(faults.two_args, 1, workflow_id=wid)
    (claim,) = cluster.store.claim_enqueued(
        "shard1", queue="default", names=["faults.two_args"], owner="t", lease_seconds=30, limit=1
    )
    committer = ShardCommitter(cluster.store, "shard1")
    try:
        bad = StepWrite(wid, claim.attempt, 0, "s", "\ud800", None)
        with pytest.raises(ValueRejected):
            committer.record_step(bad, timeout=10)
        nul = StepWrite(wid, claim.attempt, 0, "s", "a\x00b", None)
        with pytest.raises(ValueRejected):
            committer.record_step(nul, timeout=10)
        assert committer.alive()
        good = StepWrite(wid, claim.attempt, 0, "s", '"ok"', None)
        assert committer.record_step(good, timeout=10) is True
    finally:
        committer.stop()
    assert [s.output for s in cluster.store.load_steps("shard1", wid)] == ["ok"]


# -- defect 3: the checkpoint fence locks -------------------------------------------------


def test_defect03_checkpoint_fence_locks_the_status_row(cluster: Cluster) -> None:
    """While a checkpoint of attempt N is uncommitted, no claim can take the workflow
    (attempt N+1 would load the history without it and run the step again)."""
    wid = id_on(cluster, "shard2", "f")
    cluster.submit(faults.two_args, 1, workflow_id=wid)
    (claim,) = cluster.store.claim_enqueued(
        "shard2", queue="default", names=["faults.two_args"], owner="zombie", lease_seconds=30,
        limit=1,
    )  # fmt: skip
    with psycopg.connect(_dsn(cluster, "shard2"), autocommit=True) as admin:
        admin.execute(
            "UPDATE shardflow.workflow_status SET lease_expires_at = now() - interval '1 s'"
            " WHERE workflow_id = %s",
            (wid,),
        )
    steps = json.dumps(
        [{"workflow_id": wid, "attempt": claim.attempt, "step_no": 0, "name": "s",
          "output": '"zombie"', "error": None}]
    )  # fmt: skip
    zombie = psycopg.connect(_dsn(cluster, "shard2"))
    try:
        written = zombie.execute(query("commit_batch"), {"steps": steps, "finishes": "[]"})
        assert written.fetchall() == [(wid, 0, claim.attempt)]  # in flight, uncommitted
        stolen = cluster.store.claim_expired(
            "shard2", names=["faults.two_args"], queues=["default"], owner="thief",
            lease_seconds=30, limit=10, max_recoveries=10,
        )  # fmt: skip
        assert stolen == []
        zombie.commit()
    finally:
        zombie.close()
    (recovered,) = cluster.store.claim_expired(
        "shard2", names=["faults.two_args"], queues=["default"], owner="thief",
        lease_seconds=30, limit=10, max_recoveries=10,
    )  # fmt: skip
    assert recovered.attempt == claim.attempt + 1
    # The new attempt sees the checkpoint: the step is replayed, never run again.
    assert [s.output for s in cluster.store.load_steps("shard2", wid)] == ["zombie"]


# -- defect 4: one hung shard costs only its own workflows ----------------------------------


def test_defect04_a_locked_shard_does_not_stop_lease_renewal_on_the_others(
    test_cluster: TestCluster,
) -> None:
    config = with_worker_settings(test_cluster.path, lease_seconds=3, heartbeat_seconds=0.5)
    with shardflow.connect(config) as cluster:
        # shard1's run starts first, so a single heartbeat loop would renew it first.
        on1 = cluster.submit(
            faults.long_step, "one", 8.0, workflow_id=id_on(cluster, "shard1", "h")
        )
        with shardflow.Worker(cluster, app, concurrency=4, lease_seconds=3) as worker:
            wait_until(lambda: faults.started("long", "one") == 1, timeout=30)
            on0 = cluster.submit(
                faults.long_step, "zero", 8.0, workflow_id=id_on(cluster, "shard0", "h")
            )
            wait_until(lambda: faults.started("long", "zero") == 1, timeout=30)
            before = _row(cluster, "shard0", on0.workflow_id, "lease_expires_at")[0]
            # A DDL-like SHARE lock on shard1 blocks every UPDATE there (renewals too).
            with held_lock(_dsn(cluster, "shard1")):
                # shard0's leases keep being renewed while shard1 is stuck.
                wait_until(
                    lambda: (
                        _row(cluster, "shard0", on0.workflow_id, "lease_expires_at")[0] > before
                    ),
                    timeout=3,
                    message="a renewal on shard0",
                )
                with shardflow.Worker(cluster, app, concurrency=4, lease_seconds=3):
                    # A second worker would steal shard0's run if its lease lapsed.
                    assert on0.result(timeout=30) == "long:zero"
            assert on1.result(timeout=60) == "long:one"
            assert worker.alive()
    # Each 8 s step ran once, on the first worker (never recovered elsewhere).
    assert faults.started("long", "zero") == 1
    assert _row(cluster, "shard0", on0.workflow_id, "attempt, recoveries") == (1, 0)


def test_defect04_a_claim_hanging_on_one_shard_leaves_capacity_for_the_others(
    cluster: Cluster,
) -> None:
    # Work waits on shard1, whose claims then block on a DDL-like lock.
    cluster.submit(faults.two_args, 0, workflow_id=id_on(cluster, "shard1", "q"))
    with (
        held_lock(_dsn(cluster, "shard1")),
        shardflow.Worker(cluster, app, concurrency=4, claim_batch=32),
    ):
        wait_until(lambda: _waiting_on_a_lock(_dsn(cluster, "shard1")), timeout=30)
        # Only now does work arrive on shard0: the stuck claim must not hold every thread.
        handles = [
            cluster.submit(faults.two_args, i, workflow_id=id_on(cluster, "shard0", f"q{i}"))
            for i in range(6)
        ]
        assert [h.result(timeout=30) for h in handles] == list(range(6))


def _waiting_on_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


# -- defect 5: the heartbeat survives statement errors --------------------------------------


def test_defect05_heartbeat_survives_a_read_only_window(test_cluster: TestCluster) -> None:
    config = with_worker_settings(test_cluster.path, lease_seconds=3, heartbeat_seconds=0.5)
    with shardflow.connect(config) as cluster:
        handle = cluster.submit(
            faults.long_step, "ro", 6.0, workflow_id=id_on(cluster, "shard2", "r")
        )
        dsn = _dsn(cluster, "shard2")
        db = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
        with shardflow.Worker(cluster, app, concurrency=2, lease_seconds=3) as worker:
            wait_until(lambda: faults.started("long", "ro") == 1, timeout=30)
            # A failover's new primary is read-only for a moment: sessions drop and new
            # ones cannot write (renewals fail with "read-only transaction").
            _set_read_only(dsn, str(db), True)
            wait_until(lambda: worker.stats.loop_errors["heartbeat-shard2"] > 0, timeout=10)
            _set_read_only(dsn, str(db), False)
            assert handle.result(timeout=30) == "long:ro"
            assert worker.alive()
            assert all(h["alive"] for h in worker.health().values())
    assert faults.started("long", "ro") == 1
    assert _row(cluster, "shard2", handle.workflow_id, "recoveries")[0] == 0


def _set_read_only(dsn: str, db: str, read_only: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")  # this admin session
        ident = psycopg.sql.Identifier(db)
        if read_only:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                    ident
                )
            )
        else:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(
                    ident
                )
            )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        )


# -- defect 12: a NUL in an error message ---------------------------------------------------


def test_defect12_nul_in_an_exception_message_ends_the_workflow_in_error(
    cluster: Cluster,
) -> None:
    handle = cluster.submit(faults.nul_error, "n")
    with (
        shardflow.Worker(cluster, app, concurrency=2),
        pytest.raises(shardflow.WorkflowFailed) as info,
    ):
        handle.result(timeout=30)
    assert info.value.error["type"] == "ValueError"
    assert info.value.error["message"] == "bad\\x00value from a C library"
    status = cluster.get(handle.workflow_id)
    assert status.state is WorkflowState.ERROR and status.recoveries == 0
    assert faults.started("nul", "n") == 1


# -- defect 13: durable timers on the database clock ----------------------------------------


@pytest.mark.parametrize("skew", [-8.0, 8.0])
def test_defect13_durable_sleep_fires_on_the_database_clock(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)  # the worker's clock is off
    handle = cluster.submit(faults.sleeper, 2.0)
    started = time.monotonic()
    with shardflow.Worker(cluster, app, concurrency=2, poll_interval_seconds=0.05):
        handle.result(timeout=30)
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 6.0
    # One claim to start, one to wake: no claim/replay/suspend spinning.
    assert cluster.get(handle.workflow_id).attempt == 2


# -- defect 15 and 16: the hot table's schema -----------------------------------------------


def test_defect15_lease_renewals_are_hot_updates(cluster: Cluster) -> None:
    ids = [id_on(cluster, "shard0", f"hot{i}") for i in range(10)]
    cluster.submit_many([shardflow.Submission(faults.two_args, (1,), workflow_id=w) for w in ids])
    claims = cluster.store.claim_enqueued(
        "shard0", queue="default", names=["faults.two_args"], owner="w", lease_seconds=30, limit=10
    )
    assert len(claims) == 10
    params = {"workflow_ids": ids, "owner": "w", "lease_seconds": 30, "now": None}
    with psycopg.connect(_dsn(cluster, "shard0"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        before = _update_counts(conn)
        for _ in range(20):  # twenty heartbeats, each its own transaction
            renewed = conn.execute(query("renew_leases"), params).fetchall()
            assert len(renewed) == 10
        conn.execute("SELECT pg_stat_force_next_flush()")
        after = _update_counts(conn)
    updated, hot = after[0] - before[0], after[1] - before[1]
    assert updated == 200
    assert hot >= 180, f"only {hot} of {updated} renewals were HOT updates"


def test_a_heartbeat_skips_rows_a_commit_holds_and_still_reports_lost_leases(
    cluster: Cluster,
) -> None:
    """A renewal never queues behind a commit in flight (which would chain thousands of
    rows' heartbeat behind every commit until lock_timeout): the locked row is left for
    the next heartbeat, the others are renewed, and a lease taken away is reported lost."""
    ids = [id_on(cluster, "shard0", f"beat{i}") for i in range(3)]
    cluster.submit_many([shardflow.Submission(faults.two_args, (1,), workflow_id=w) for w in ids])
    claims = cluster.store.claim_enqueued(
        "shard0", queue="default", names=["faults.two_args"], owner="w", lease_seconds=30, limit=3
    )
    assert len(claims) == 3
    free, held, taken = ids
    with psycopg.connect(_dsn(cluster, "shard0"), autocommit=True) as conn:
        conn.execute(
            "UPDATE shardflow.workflow_status SET lease_owner = 'other' WHERE workflow_id = %s",
            (taken,),
        )
    with psycopg.connect(_dsn(cluster, "shard0")) as holder:
        # What commit_batch's fence takes on a row while a checkpoint commits.
        holder.execute(
            "SELECT 1 FROM shardflow.workflow_status WHERE workflow_id = %s FOR SHARE", (held,)
        )
        # Had it waited for the lock it would fail with lock_timeout: the lock is held
        # until after it returns.
        renewal = cluster.store.renew_leases(
            "shard0", owner="w", workflow_ids=ids, lease_seconds=30
        )
        assert renewal.renewed == {free}
        assert renewal.lost == {taken}
        holder.rollback()
    renewal = cluster.store.renew_leases("shard0", owner="w", workflow_ids=ids, lease_seconds=30)
    assert renewal.renewed == {free, held}
    assert renewal.lost == {taken}


def _update_counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE schemaname = 'shardflow' AND relname = 'workflow_status'"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_defect16_delayed_backlog_stays_out_of_the_claim_path(cluster: Cluster) -> None:
    cluster.submit_many(
        [
            shardflow.Submission(
                faults.two_args, (i,), workflow_id=f"{{d}}:{i}", delay_seconds=86400
            )
            for i in range(20_000)
        ]
    )
    shard = cluster.route("{d}:0")
    with psycopg.connect(_dsn(cluster, shard)) as conn:
        conn.execute("ANALYZE shardflow.workflow_status")
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query("claim_enqueued"),
            {"queue": "default", "names": ["faults.two_args"], "owner": "w",
             "lease_seconds": 30, "limit": 32, "now": None, "app_version": None},
        ).fetchone()  # fmt: skip
        conn.rollback()
    assert plan is not None
    top = plan[0][0]["Plan"]
    blocks = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    assert blocks < 50, f"a claim read {blocks} blocks past a delayed backlog"
    # Delayed work still runs once it is due (the clock is moved, not waited for).
    due = cluster.submit(faults.two_args, 5, delay_seconds=60)
    created = due.status().created_at
    assert cluster.store.promote_delayed(due.shard, now=created + timedelta(seconds=59)) == 0
    assert cluster.store.promote_delayed(due.shard, now=created + timedelta(seconds=61)) == 1
    with shardflow.Worker(cluster, app, concurrency=2, poll_interval_seconds=0.1):
        assert due.result(timeout=30) == 5


# -- defect 20: waits and calls behave as documented ----------------------------------------


def test_defect20_get_event_waits_for_a_workflow_that_does_not_exist_yet(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    assert cluster.get_event("not-yet", "ready", timeout=1.0) is None
    assert time.monotonic() - started >= 1.0
    got: list[Any] = []
    reader = threading.Thread(
        target=lambda: got.append(cluster.get_event("later", "ready", timeout=30))
    )
    reader.start()
    cluster.submit(faults.publisher, "v1", workflow_id="later")
    with shardflow.Worker(cluster, app, concurrency=2):
        reader.join(30)
    assert got == ["v1"]


@pytest.mark.parametrize("kind", KINDS)
def test_defect20_a_parent_wakes_at_once_when_its_child_is_cancelled(
    cluster: Cluster, kind: str
) -> None:
    parent = cluster.submit(faults.parent_of_blocker)
    child_id = f"{parent.workflow_id}:child:0"
    with control_calls(kind, cluster) as calls, shardflow.Worker(cluster, app, concurrency=4):
        wait_until(
            lambda: (
                cluster.get(parent.workflow_id).state is WorkflowState.SUSPENDED
                and _exists(cluster, child_id)
                and cluster.get(child_id).state is WorkflowState.SUSPENDED
            ),
            timeout=30,
        )
        cancelled = time.monotonic()
        assert calls.cancel(child_id).state is WorkflowState.CANCELLED
        assert parent.result(timeout=20) == "child cancelled"
        # Not the 30 s fallback re-check.
        assert time.monotonic() - cancelled < 10


def _exists(cluster: Cluster, workflow_id: str) -> bool:
    try:
        cluster.get(workflow_id)
        return True
    except shardflow.WorkflowNotFound:
        return False


def test_defect20_unknown_arguments_fail_at_the_call(cluster: Cluster) -> None:
    with pytest.raises(TypeError, match="bogus"):
        cluster.submit(faults.two_args, 1, bogus=2, workflow_id="typo")
    with pytest.raises(shardflow.WorkflowNotFound):
        cluster.get("typo")
    handle = cluster.submit(faults.bad_child_call)
    with (
        shardflow.Worker(cluster, app, concurrency=2),
        pytest.raises(shardflow.WorkflowFailed) as info,
    ):
        handle.result(timeout=30)
    assert info.value.error["type"] == "TypeError"
    assert not _exists(cluster, f"{handle.workflow_id}:child:0")


# -- found while fixing defect 2: IDs stay unique while a slot starts to move ---------------


def test_a_new_id_goes_to_the_source_while_it_still_owns_the_slot(cluster: Cluster) -> None:
    """The target marks a slot IMPORTING before the source marks it MIGRATING_OUT. In that
    window the source still takes new IDs, so a client whose map already names the target
    must not create an ID on the target after only looking it up on the source."""
    wid = id_on(cluster, "shard0", "w")
    slot = cluster.hasher.slot(wid)
    with psycopg.connect(_dsn(cluster, "shard1"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO shardflow.slot_ownership (slot, state, peer, epoch)"
            " VALUES (%s, 'IMPORTING', 'shard0', 99)",
            (slot,),
        )
    current = cluster.router.slot_map
    owners = list(current.owners)
    owners[slot] = "shard1"
    cluster.router.update(SlotMap(current.epoch + 1, tuple(owners), {slot: "shard0"}))
    handle = cluster.submit(faults.two_args, 1, workflow_id=wid)
    assert handle.shard == "shard0"
    with psycopg.connect(_dsn(cluster, "shard1")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM shardflow.workflow_status WHERE workflow_id = %s", (wid,)
        ).fetchone()
    assert row == (0,)


# -- found by the fault run: a run's own view of its lease ----------------------------------


def test_a_runs_lease_is_counted_from_before_its_claim_was_sent(cluster: Cluster) -> None:
    """The database's lease runs from the claim statement's start. A claim that waited
    (a lock, a frozen server) must not give its run a local lease that outlasts the
    database's, or the run would start a step after another worker may have taken over."""
    wid = id_on(cluster, "shard0", "lease")
    cluster.submit(faults.two_args, 1, workflow_id=wid)
    lease = 3.0
    before = time.monotonic()
    with held_lock(_dsn(cluster, "shard0"), mode="SHARE ROW EXCLUSIVE") as holder:
        # The claim waits on the lock until the holder lets go.
        threading.Timer(0.4, holder.rollback).start()
        (claim,) = cluster.store.claim_enqueued(
            "shard0", queue="default", names=["faults.two_args"], owner="w",
            lease_seconds=lease, limit=1,
        )  # fmt: skip
    returned = time.monotonic()
    assert returned - before >= 0.4
    run = WorkflowRun(claim, cluster.store, lease)
    assert before <= run.lease_valid_until - lease <= returned - 0.4
