"""Regression tests for defects found by the fault-injection review of rebalancing.

Each test forces its interleaving deterministically (a row held from a second
connection, the mover's step hooks), never by timing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.config import ClusterConfig
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.rebalance.mover import MoveStep
from shardflow.router.hashing import Hasher
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.apps import basic, waits

SLOTS = 256


@pytest.fixture
def grown(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """Three shards holding every slot, plus a migrated fourth shard with none."""
    made = cluster_factory.make(3, slots=SLOTS)
    grown = cluster_factory.add_shard(made)
    yield grown
    cluster_factory.drop(grown)


def moving_slots(config: ClusterConfig) -> set[int]:
    with Rebalancer(config) as rebalancer:
        plan = rebalancer.prepare(lock=False).plan
    return {slot for move in plan.moves for slot in move.slots}


def ids_in_slots(config: ClusterConfig, slots: set[int], prefix: str, count: int) -> list[str]:
    hasher = Hasher(config.hash.slots, config.hash.seed)
    out: list[str] = []
    i = 0
    while len(out) < count:
        wid = f"{prefix}-{i}"
        if hasher.slot(wid) in slots:
            out.append(wid)
        i += 1
    return out


def waiting_on_locks(dsn: str) -> int:
    """Backends of this database waiting for a heavyweight lock (row, tuple, table)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def live_rows_without_their_slot(config: ClusterConfig) -> dict[str, int]:
    """Per shard: live workflows (not tombstones) in slots the shard has no part in."""
    out: dict[str, int] = {}
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM shardflow.workflow_status w"
                " WHERE w.state <> 'MOVED' AND NOT EXISTS ("
                "   SELECT 1 FROM shardflow.slot_ownership o WHERE o.slot = w.slot)"
            ).fetchone()
        out[shard.name] = int(row[0]) if row else 0
    return out


def live_rows(config: ClusterConfig) -> Counter[str]:
    rows: Counter[str] = Counter()
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            for (wid,) in conn.execute(
                "SELECT workflow_id FROM shardflow.workflow_status"
                " WHERE state NOT IN ('MOVED', 'IMPORTING')"
            ):
                rows[wid] += 1
    return rows


# -- defect 2: inserts raced slot transitions ----------------------------------------------------


def test_defect02_submit_during_drain_never_lands_on_a_shard_without_the_slot(
    grown: TestCluster,
) -> None:
    """A submit whose statement started while its slot was OWNED, and that is still
    running when the rebalancer marks the slot MIGRATING_OUT, moves it and drops it,
    used to commit its rows on a shard that no longer owns the slot: workflows nobody
    can find and no worker of the new owner runs.

    The submit is held open mid-statement deterministically: one of its IDs is inserted,
    uncommitted, by a second connection, so the batch's insert waits on that ID (after
    taking its snapshot, and after inserting rows before it). The holder lets go once
    the rebalancer is blocked on a lock (fixed: the slot transition waits for the
    insert) or once the rebalance has finished (the defect: it did not wait).
    """
    config = grown.config
    moving = sorted(moving_slots(config))
    slot = moving[0]
    ids = ids_in_slots(config, {slot}, "race", 200)
    blocker = ids[-1]
    with shardflow.connect(config) as cluster:
        source = cluster.route(blocker)
        source_dsn = config.shard(source).dsn
        holder = psycopg.connect(source_dsn)  # a transaction: the row stays uncommitted
        try:
            holder.execute(
                "INSERT INTO shardflow.workflow_status"
                " (workflow_id, slot, route_hash, name, queue, state, inputs)"
                " VALUES (%s, %s, 0, 'basic.three_steps', 'default', 'ENQUEUED', '{}')",
                (blocker, slot),
            )
            submitted: list[Any] = []
            submitter = threading.Thread(
                target=lambda: submitted.append(
                    cluster.submit_many(
                        [
                            shardflow.Submission(basic.three_steps, (i,), workflow_id=w)
                            for i, w in enumerate(ids)
                        ]
                    )
                )
            )
            submitter.start()
            wait_until(lambda: waiting_on_locks(source_dsn) >= 1, message="submit held open")

            finished = threading.Event()

            def release_when_blocked_or_done() -> None:
                wait_until(
                    lambda: finished.is_set() or waiting_on_locks(source_dsn) >= 2,
                    timeout=60,
                    message="the rebalancer blocked on the insert, or done",
                )
                holder.rollback()

            releaser = threading.Thread(target=release_when_blocked_or_done)
            started: list[bool] = []

            def on_step(step: MoveStep) -> None:
                # Between "target IMPORTING" and "source MIGRATING_OUT": the transition
                # that must wait for the insert comes next.
                if step is MoveStep.IMPORTING_MARKED and not started:
                    started.append(True)
                    releaser.start()

            with Rebalancer(config, on_step=on_step) as rebalancer:
                result = rebalancer.apply(ApplyOptions(batch=50))
            finished.set()
            releaser.join(60)
            submitter.join(60)
        finally:
            holder.close()
        assert result.complete
        assert submitted and len(submitted[0]) == len(ids)

        assert live_rows_without_their_slot(config) == {s.name: 0 for s in config.shards}
        assert live_rows(config) == Counter({w: 1 for w in ids})
        for wid in ids:
            status = cluster.get(wid)
            assert status.shard == "shard3" and status.state is WorkflowState.ENQUEUED


# -- defect 6: a message sent between steps 3 and 4 of a move never woke its target ------------


def wake_state(dsn: str, workflow_id: str) -> tuple[str, bool | None] | None:
    """``(state, wake_at is due)`` of a workflow's row on one shard."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state, wake_at <= now() FROM shardflow.workflow_status WHERE workflow_id = %s",
            (workflow_id,),
        ).fetchone()
    return None if row is None else (str(row[0]), row[1])


def test_defect06_message_sent_between_move_steps_3_and_4_wakes_the_receiver(
    grown: TestCluster,
) -> None:
    """The receiver waits in ``recv(timeout=None)``. A send blocked on the mover's row
    lock follows the tombstone to the staged copy (step 3 committed, step 4 not yet);
    while it inserts the message there, the activation starts and waits on the copy's
    row. The send commits; the activation must wake the receiver.

    Forced order: the send's message insert is held by a SHARE lock on the target's
    messages table until the activation waits on the row the send locked.
    """
    config = grown.config
    (rx,) = ids_in_slots(config, set(moving_slots(config)), "rx", 1)
    target_dsn = config.shard("shard3").dsn
    with shardflow.connect(config) as cluster:
        receiver = cluster.submit(waits.receiver, 1, "t", None, workflow_id=rx)
        source_dsn = config.shard(receiver.shard).dsn
        with shardflow.Worker(cluster, waits.app, concurrency=2):
            wait_until(lambda: cluster.get(rx).state is WorkflowState.SUSPENDED, message="parked")
        assert wake_state(source_dsn, rx) == ("SUSPENDED", None)  # only a message wakes it

        holder = psycopg.connect(target_dsn)
        sent: list[bool] = []
        threads: list[threading.Thread] = []

        def send() -> None:
            sent.append(cluster.send(rx, "hello", topic="t"))

        def release_when_activation_waits() -> None:
            # The send waits on the table lock; the activation on the send's row lock.
            wait_until(lambda: waiting_on_locks(target_dsn) >= 2, message="activation waits")
            holder.rollback()

        def on_step(step: MoveStep) -> None:
            if step is MoveStep.LOCKED and not threads:
                threads.append(threading.Thread(target=send))
                threads[-1].start()
                wait_until(lambda: waiting_on_locks(source_dsn) >= 1, message="send blocked")
            elif step is MoveStep.STAGED and len(threads) == 1:
                holder.execute("LOCK TABLE shardflow.messages IN SHARE MODE")
            elif step is MoveStep.TOMBSTONED and len(threads) == 1:
                # The send followed the tombstone and holds the staged copy's row.
                wait_until(lambda: waiting_on_locks(target_dsn) >= 1, message="send at copy")
                threads.append(threading.Thread(target=release_when_activation_waits))
                threads[-1].start()

        try:
            with Rebalancer(config, on_step=on_step) as rebalancer:
                assert rebalancer.apply(ApplyOptions(batch=500)).complete
            for t in threads:
                t.join(30)
        finally:
            holder.close()
        assert len(threads) == 2 and sent == [True]
        assert wake_state(target_dsn, rx) == ("SUSPENDED", True)
        with shardflow.Worker(cluster, waits.app, concurrency=2):
            assert receiver.result(timeout=30) == ["hello"]


# -- defect 14: a batch was packed into one jsonb value (256 MB at most) ------------------------


def add_big_steps(dsn: str, workflow_id: str, count: int, unit: str, repeat: int) -> None:
    """Record ``count`` steps whose outputs are JSON strings of ``(unit + NNN) * repeat``
    (NNN: the step number; built on the server, so nothing this large crosses the
    client)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO shardflow.step_outputs (workflow_id, step_no, name, output)"
            " SELECT %s, g, 'big', '\"' || repeat(%s || lpad(g::text, 3, '0'), %s) || '\"'"
            " FROM generate_series(0, %s - 1) AS g",
            (workflow_id, unit, repeat, count),
        )


def child_digest(dsn: str, workflow_id: str) -> tuple[Any, ...]:
    """Row counts and an MD5 of every step, message and event of a workflow (messages in
    their order, without their shard-local sequence numbers)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT"
            " (SELECT count(*) FROM shardflow.step_outputs WHERE workflow_id = %(w)s),"
            " (SELECT md5(string_agg(step_no || name || output, ',' ORDER BY step_no))"
            "  FROM shardflow.step_outputs WHERE workflow_id = %(w)s),"
            " (SELECT string_agg(topic || ':' || md5(payload) || ':' || consumed, ','"
            "  ORDER BY seq) FROM shardflow.messages WHERE workflow_id = %(w)s),"
            " (SELECT string_agg(key || ':' || md5(value), ',' ORDER BY key)"
            "  FROM shardflow.events WHERE workflow_id = %(w)s)",
            {"w": workflow_id},
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_defect14_workflows_larger_than_a_page_and_a_batch_move_intact(
    grown: TestCluster,
) -> None:
    """With small page and batch bounds: workflows several times larger than a batch
    move (each alone), their rows split over many pages, and read back identical:
    steps, messages in their order, events. Small ones around them move too."""
    config = grown.config
    moving = set(moving_slots(config))
    big = ids_in_slots(config, moving, "big", 3)
    small = ids_in_slots(config, moving, "small", 30)
    with shardflow.connect(config) as cluster:
        cluster.submit_many(
            [shardflow.Submission(basic.three_steps, (1,), workflow_id=w) for w in big + small]
        )
        for n, wid in enumerate(big):
            dsn = config.shard(cluster.get(wid).shard).dsn
            add_big_steps(dsn, wid, 40, f"{n}-0123456789abcdef", 600)  # ~10 KB each
            for i in range(12):
                cluster.send(wid, f"{i}:" + "m" * 9000, topic="t" if i % 3 else "u")
            with psycopg.connect(dsn) as conn:
                conn.execute(
                    "INSERT INTO shardflow.events (workflow_id, key, value)"
                    " SELECT %s, 'k' || g, '\"' || repeat('e', 5000 + g) || '\"'"
                    " FROM generate_series(1, 5) AS g",
                    (wid,),
                )
        before = {w: child_digest(config.shard(cluster.get(w).shard).dsn, w) for w in big}
        steps_before = {w: cluster.steps(w) for w in big}
        assert all(d[0] == 40 for d in before.values())

        staged: list[MoveStep] = []
        with Rebalancer(config, on_step=staged.append) as rebalancer:
            result = rebalancer.apply(
                ApplyOptions(batch=500, batch_bytes=64 * 1024, page_bytes=16 * 1024)
            )
        assert result.complete and result.moved == len(big) + len(small)
        # A big workflow (~700 KB) is more than a batch: each moved in a batch of its own.
        assert staged.count(MoveStep.STAGED) >= len(big) + 1
        for wid in big:
            status = cluster.get(wid)
            assert status.shard == "shard3" and status.state is WorkflowState.ENQUEUED
            assert child_digest(config.shard("shard3").dsn, wid) == before[wid]
            assert cluster.steps(wid) == steps_before[wid]
        assert live_rows(config) == Counter({w: 1 for w in big + small})


def test_defect14_a_workflow_of_270_one_megabyte_steps_moves(grown: TestCluster) -> None:
    """270 steps of about 1 MB each (each under the 1 MiB payload limit): 280 MB of
    rows, more than one jsonb value can hold (256 MiB). The old mover failed on every
    attempt, so the drain never completed. With default bounds it moves in pages and
    reads back identical."""
    config = grown.config
    (wid,) = ids_in_slots(config, set(moving_slots(config)), "huge", 1)
    with shardflow.connect(config) as cluster:
        cluster.submit(basic.three_steps, 1, workflow_id=wid)
        source_dsn = config.shard(cluster.get(wid).shard).dsn
        # Repetitive text: cheap to store (compressed), full size once copied as JSON.
        add_big_steps(source_dsn, wid, 270, "0123456789abcdef", 54_700)  # 1,039,302 bytes
        before = child_digest(source_dsn, wid)
        assert before[0] == 270
        with Rebalancer(config) as rebalancer:
            assert rebalancer.apply().complete
        status = cluster.get(wid)
        assert status.shard == "shard3" and status.state is WorkflowState.ENQUEUED
        assert child_digest(config.shard("shard3").dsn, wid) == before
