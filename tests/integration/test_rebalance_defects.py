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
from tests.apps import basic

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
