"""Online rebalancing on real shards: add a shard, drain one, stale clients, running
workflows, messages and events in transit, tombstones."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.config import ClusterConfig
from shardflow.engine.app import Workflow
from shardflow.rebalance import ApplyOptions, Progress, Rebalancer
from shardflow.rebalance.mover import MoveStep
from shardflow.rebalance.status import gather_status
from shardflow.router.hashing import Hasher
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.apps import basic, twins, waits
from tests.integration.clients import KINDS, AsyncCalls, control_calls

SLOTS = 256


@pytest.fixture
def grown(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """Three shards holding every slot, plus a migrated fourth shard with none."""
    made = cluster_factory.make(3, slots=SLOTS)
    grown = cluster_factory.add_shard(made)
    yield grown
    cluster_factory.drop(grown)


# -- helpers shared by the rebalancing tests ---------------------------------------------------


def live_rows(config: ClusterConfig) -> Counter[str]:
    """How many rows that are the workflow (not a tombstone, not a staged copy) each ID
    has across all shards."""
    rows: Counter[str] = Counter()
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            for (wid,) in conn.execute(
                "SELECT workflow_id FROM shardflow.workflow_status"
                " WHERE state NOT IN ('MOVED', 'IMPORTING')"
            ):
                rows[wid] += 1
    return rows


def leftovers(config: ClusterConfig) -> dict[str, tuple[int, int]]:
    """Per shard: (staged copies, slots not OWNED)."""
    out = {}
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            staged = conn.execute(
                "SELECT count(*) FROM shardflow.workflow_status WHERE state = 'IMPORTING'"
            ).fetchone()
            split = conn.execute(
                "SELECT count(*) FROM shardflow.slot_ownership WHERE state <> 'OWNED'"
            ).fetchone()
        assert staged is not None and split is not None
        out[shard.name] = (int(staged[0]), int(split[0]))
    return out


def assert_settled_on_plan(config: ClusterConfig) -> None:
    """No staged copy, no split slot, every shard's map copy and ownership equal to the
    recorded plan's target."""
    assert all(v == (0, 0) for v in leftovers(config).values()), leftovers(config)
    status = gather_status(config)
    assert status.settled and status.live is not None and status.plan is not None
    with Rebalancer(config) as rebalancer:
        target = rebalancer.prepare(lock=False).plan.target
        plan = rebalancer.plans()[0]
    assert plan.outcome == "done"
    assert status.live.owners == target
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            owned = {
                r[0] for r in conn.execute("SELECT slot FROM shardflow.slot_ownership").fetchall()
            }
            epoch, ranges = conn.execute(
                "SELECT epoch, ranges FROM shardflow.slot_map"
            ).fetchone() or (None, None)
        assert owned == {s for s, o in enumerate(target) if o == shard.name}
        assert epoch == status.epoch
        assert ranges == [[r.first, r.last, r.shard] for r in status.live.slot_map().ranges()]


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


def moving_slots(config: ClusterConfig) -> set[int]:
    with Rebalancer(config) as rebalancer:
        plan = rebalancer.prepare(lock=False).plan
    return {slot for move in plan.moves for slot in move.slots}


# -- tests ------------------------------------------------------------------------------------


def test_adding_a_shard_gives_it_its_share_and_moves_history_intact(grown: TestCluster) -> None:
    config = grown.config
    with shardflow.connect(config) as cluster:
        finished = [
            cluster.submit(basic.three_steps, i, workflow_id=f"fin-{i}") for i in range(120)
        ]
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for h in finished:
                h.result(timeout=30)
        steps_before = {h.workflow_id: cluster.steps(h.workflow_id) for h in finished}
        queued = [cluster.submit(basic.three_steps, i, workflow_id=f"q-{i}") for i in range(80)]
        with Rebalancer(config) as rebalancer:
            result = rebalancer.apply(ApplyOptions(batch=25))
        assert result.complete and not result.resumed
        assert_settled_on_plan(config)
        counts = gather_status(config).slots_per_shard
        assert counts == Counter(shard0=64, shard1=64, shard2=64, shard3=64)

        everything = [h.workflow_id for h in finished + queued]
        assert live_rows(config) == Counter({wid: 1 for wid in everything})
        on_new = [wid for wid in everything if cluster.get(wid).shard == "shard3"]
        assert len(on_new) == result.moved > 0
        for h in finished:
            status = cluster.get(h.workflow_id)
            assert status.state is WorkflowState.SUCCESS
            assert status.output == {"result": int(h.workflow_id[4:]) + 3}
            assert cluster.steps(h.workflow_id) == steps_before[h.workflow_id]
        # Moved ENQUEUED workflows run on their new shard, once.
        basic.reset()
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for h in queued:
                assert h.result(timeout=30) == {"result": int(h.workflow_id[2:]) + 3}
        assert basic.CALLS["add"] == 3 * len(queued)
        # Nothing left to do.
        with Rebalancer(config) as rebalancer:
            assert not rebalancer.prepare(lock=False).has_work


def test_a_client_created_before_the_rebalance_keeps_working(grown: TestCluster) -> None:
    config = grown.config
    moving = moving_slots(config)
    old_ids = ids_in_slots(config, moving, "old", 30)
    new_ids = ids_in_slots(config, moving, "new", 30)
    with shardflow.connect(config) as stale, shardflow.connect(config) as other:
        for wid in old_ids:
            stale.submit(basic.three_steps, 1, workflow_id=wid)
        epoch_before = stale.router.epoch
        with Rebalancer(config) as rebalancer:
            rebalancer.apply()
        # The stale client has not refreshed: its map still routes these slots to the
        # shards that gave them away.
        assert stale.router.epoch == epoch_before
        for wid in old_ids:
            status = stale.get(wid)  # follows the tombstone
            assert status.shard == "shard3" and status.state is WorkflowState.ENQUEUED
        # Submitting an existing ID is still idempotent, and still checks the name.
        again = stale.submit(basic.three_steps, 99, workflow_id=old_ids[0])
        assert again.shard == "shard3"
        with pytest.raises(shardflow.WorkflowConflict):
            stale.submit(basic.echo, workflow_id=old_ids[1])
        # New IDs of moved slots: refused by the old owner, redirected, created once.
        handles = stale.submit_many(
            [
                shardflow.Submission(basic.three_steps, (i,), workflow_id=w)
                for i, w in enumerate(new_ids)
            ]
        )
        assert {h.shard for h in handles} == {"shard3"}
        assert stale.router.epoch > epoch_before
        with shardflow.Worker(other, basic.app, concurrency=8):
            for i, h in enumerate(handles):
                assert h.result(timeout=30) == {"result": i + 3}
            assert stale.handle(old_ids[0]).result(timeout=30) == {"result": 4}
    assert live_rows(config) == Counter({wid: 1 for wid in old_ids + new_ids})


def test_an_async_client_follows_moved_workflows_and_awaits_them(grown: TestCluster) -> None:
    """Async workflows submitted with the async client before a rebalance: its handles
    find them on their new shard and their result() waits are woken there."""
    config = grown.config
    moving = moving_slots(config)
    ids = ids_in_slots(config, moving, "aio", 10)

    async def scenario(worker_client: shardflow.Cluster) -> None:
        async with await shardflow.connect_async(config) as aclient:
            handles = [
                await aclient.submit(twins.three_steps_async, i, workflow_id=w)
                for i, w in enumerate(ids)
            ]
            sources = {h.shard for h in handles}
            assert "shard3" not in sources
            with Rebalancer(config) as rebalancer:
                await asyncio.to_thread(rebalancer.apply)
            for wid in ids:
                status = await aclient.get(wid)  # follows the tombstone
                assert status.shard == "shard3" and status.state is WorkflowState.ENQUEUED
            # Submitted again, each is placed where it is now; a message follows it.
            again = [
                await aclient.submit(twins.three_steps_async, i, workflow_id=w)
                for i, w in enumerate(ids)
            ]
            assert {h.shard for h in again} == {"shard3"}
            assert await aclient.send(ids[0], "hello", idempotency_key="after-move") is True
            # New IDs of the moved slots go to their new owner.
            fresh = ids_in_slots(config, moving, "aio-new", 4)
            created = [
                await aclient.submit(twins.three_steps_async, 0, workflow_id=w) for w in fresh
            ]
            assert {h.shard for h in created} == {"shard3"}
            waits = [asyncio.ensure_future(h.result(timeout=60)) for h in handles]
            worker = shardflow.Worker(worker_client, twins.app, concurrency=2)
            await asyncio.to_thread(worker.start)
            try:
                results = await asyncio.gather(*waits)
            finally:
                await asyncio.to_thread(worker.stop)
            assert results == [{"result": i + 3} for i in range(len(ids))]
            assert {h.shard for h in handles} == {"shard3"}

    twins.reset()
    with shardflow.connect(config) as other:
        asyncio.run(scenario(other))
    live = live_rows(config)
    assert {w: live[w] for w in ids} == {wid: 1 for wid in ids}
    assert all(n == 1 for n in live.values())
    assert_settled_on_plan(config)


def test_mid_move_reads_and_submits_see_each_workflow_once(grown: TestCluster) -> None:
    """At each step of a batch's move, a client reads and resubmits the batch's IDs."""
    config = grown.config
    moving = moving_slots(config)
    ids = ids_in_slots(config, moving, "mid", 40)
    seen: dict[MoveStep, Counter[str]] = {}
    with shardflow.connect(config) as cluster, shardflow.connect(config) as stale:
        cluster.submit_many(
            [shardflow.Submission(basic.three_steps, (1,), workflow_id=w) for w in ids]
        )

        def probe(step: MoveStep) -> None:
            if step not in (MoveStep.LOCKED, MoveStep.STAGED, MoveStep.TOMBSTONED):
                return
            if step in seen:
                return
            # Reads never block on the mover's row locks; submits of existing IDs are
            # answered by whichever shard holds the row now.
            states = Counter(stale.get(w).state.value for w in ids)
            placed = stale.submit_many(
                [shardflow.Submission(basic.three_steps, (2,), workflow_id=w) for w in ids]
            )
            assert len(placed) == len(ids)
            new = ids_in_slots(config, moving, f"mid-{step.value}", 5)
            stale.submit_many(
                [shardflow.Submission(basic.three_steps, (3,), workflow_id=w) for w in new]
            )
            seen[step] = states

        with Rebalancer(config, on_step=probe) as rebalancer:
            assert rebalancer.apply(ApplyOptions(batch=10)).complete
        assert set(seen) == {MoveStep.LOCKED, MoveStep.STAGED, MoveStep.TOMBSTONED}
        for states in seen.values():
            assert states == Counter(ENQUEUED=len(ids))
    rows = live_rows(config)
    assert set(rows.values()) == {1}
    assert len(rows) == len(ids) + 15


def test_draining_a_shard_leaves_it_empty_and_removable(
    grown: TestCluster, cluster_factory: ClusterFactory
) -> None:
    with shardflow.connect(grown.config) as cluster:
        handles = cluster.submit_many(
            [
                shardflow.Submission(basic.three_steps, (i,), workflow_id=f"d-{i}")
                for i in range(200)
            ]
        )
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for h in handles[:100]:
                h.result(timeout=30)
    draining = cluster_factory.reshape(grown, draining=["shard1"])
    with Rebalancer(draining.config) as rebalancer:
        plan = rebalancer.prepare(lock=False).plan
        assert plan.counts_after()["shard1"] == 0
        assert rebalancer.apply().complete
    assert_settled_on_plan(draining.config)
    with psycopg.connect(draining.config.shard("shard1").dsn) as conn:
        slots = conn.execute("SELECT count(*) FROM shardflow.slot_ownership").fetchone()
        live = conn.execute(
            "SELECT count(*) FROM shardflow.workflow_status WHERE state <> 'MOVED'"
        ).fetchone()
    assert slots == (0,) and live == (0,)
    # The drained shard can leave the YAML: everything is found without it.
    removed = cluster_factory.reshape(draining, remove=["shard1"])
    with shardflow.connect(removed.config) as cluster:
        assert {cluster.get(h.workflow_id).shard for h in handles} == {"shard0", "shard2", "shard3"}
        with shardflow.Worker(cluster, basic.app, concurrency=8):
            for h in handles:
                assert cluster.handle(h.workflow_id).result(timeout=30) == {
                    "result": int(h.workflow_id[2:]) + 3
                }
        with Rebalancer(removed.config) as rebalancer:
            assert not rebalancer.prepare(lock=False).has_work
    assert live_rows(removed.config) == Counter({h.workflow_id: 1 for h in handles})


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_running_workflow_keeps_its_slot_split_until_it_is_idle(
    grown: TestCluster, kind: str
) -> None:
    config = grown.config
    moving = moving_slots(config)
    (wid,) = ids_in_slots(config, moving, "gated", 1)
    hasher = Hasher(config.hash.slots, config.hash.seed)
    started, gate = threading.Event(), threading.Event()
    twins.reset()
    twins.CONTROL.update(started=started, gate=gate)
    reports: list[Progress] = []
    said: list[str] = []
    with shardflow.connect(config) as cluster:
        source = cluster.route(wid)
        handle = cluster.submit(twins.FLAVORS[kind].gated, "k", workflow_id=wid)
        with shardflow.Worker(cluster, twins.app, concurrency=2):
            assert started.wait(30)
            rebalancer = Rebalancer(config, on_progress=reports.append, on_wait=said.append)
            rebalancer.connect()
            outcome: list[object] = []
            thread = threading.Thread(
                target=lambda: outcome.append(rebalancer.apply(ApplyOptions(poll_seconds=0.05)))
            )
            thread.start()
            try:
                wait_until(lambda: reports and reports[-1].phase == "waiting", message="waiting")
                assert reports[-1].waiting_running == 1
                status = gather_status(config)
                assert status.live is not None
                assert status.live.migrating == {hasher.slot(wid): source}
                assert cluster.get(wid).state is WorkflowState.RUNNING
                assert cluster.get(wid).shard == source
                # A wait of over a second is said in one line (the CLI prints it).
                wait_until(lambda: said, message="the rebalancer to say what it waits for")
                assert said[0].startswith("waiting for 1 running workflow(s) to become idle")
            finally:
                gate.set()
                thread.join(60)
                rebalancer.close()
            assert handle.result(timeout=30) == "k"
    assert outcome and getattr(outcome[0], "complete", False)
    with shardflow.connect(config) as cluster:
        moved = cluster.get(wid)
        assert moved.shard == "shard3" and moved.state is WorkflowState.SUCCESS
        assert [s.name for s in cluster.steps(wid)] == ["gate_step", "wait_gate", "gate_step"]
        assert moved.attempt == 1  # ran once, across the move, never recovered
    assert_settled_on_plan(config)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_messages_and_events_move_with_the_workflow_and_arrive_once_in_order(
    grown: TestCluster, kind: str
) -> None:
    config = grown.config
    moving = moving_slots(config)
    rx, pub = ids_in_slots(config, moving, "rx", 2)
    receives: Workflow[Any, Any] = waits.receiver if kind == "sync" else waits.receiver_async
    publishes: Workflow[Any, Any] = waits.publisher if kind == "sync" else waits.publisher_async
    with shardflow.connect(config) as cluster:
        receiver = cluster.submit(receives, 4, "t", 60.0, workflow_id=rx)
        publisher = cluster.submit(publishes, "v1", workflow_id=pub)
        with shardflow.Worker(cluster, waits.app, concurrency=4):
            assert publisher.result(timeout=30) == "done"
            cluster.send(rx, "m1", topic="t")
            wait_until(lambda: _consumed(config, rx) == 1, message="m1 consumed")
            wait_until(lambda: cluster.get(rx).state is WorkflowState.SUSPENDED, message="parked")
        # Worker stopped: m2 waits unconsumed; the receiver is suspended on topic t.
        cluster.send(rx, "m2", topic="t")
        cluster.send(rx, "x", topic="other")
        source = cluster.get(rx).shard
        sent: list[threading.Thread] = []

        def send_while_locked(step: MoveStep) -> None:
            # Sends block on the row the mover holds, then follow the tombstone.
            if step is MoveStep.LOCKED and not sent:
                # One sender, in order: m3 waits for the mover, m4 follows it.
                t = threading.Thread(
                    target=lambda: [cluster.send(rx, m, topic="t") for m in ("m3", "m4")]
                )
                t.start()
                sent.append(t)
                wait_until(
                    lambda: _waiting_on_lock(config.shard(source).dsn) >= 1, message="blocked"
                )

        with Rebalancer(config, on_step=send_while_locked) as rebalancer:
            assert rebalancer.apply(ApplyOptions(batch=500)).complete
        for t in sent:
            t.join(30)
        assert cluster.get(rx).shard == "shard3"
        assert cluster.get_event(pub, "status") == "v1"
        with psycopg.connect(config.shard("shard3").dsn) as conn:
            rows = conn.execute(
                "SELECT topic, payload, consumed FROM shardflow.messages"
                " WHERE workflow_id = %s ORDER BY seq",
                (rx,),
            ).fetchall()
        assert [(t, c) for t, _, c in rows] == [
            ("t", True),
            ("t", False),
            ("other", False),
            ("t", False),
            ("t", False),
        ]
        with shardflow.Worker(cluster, waits.app, concurrency=4):
            assert receiver.result(timeout=30) == ["m1", "m2", "m3", "m4"]
    assert_settled_on_plan(config)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_and_resume_follow_a_moved_workflow(grown: TestCluster, kind: str) -> None:
    config = grown.config
    moving = moving_slots(config)
    a, b = ids_in_slots(config, moving, "ctl", 2)
    with shardflow.connect(config) as stale, control_calls(kind, stale) as calls:
        stale.submit(basic.three_steps, 1, workflow_id=a)
        stale.submit(basic.three_steps, 2, workflow_id=b)
        calls.cancel(b, "before the move")
        with Rebalancer(config) as rebalancer:
            rebalancer.apply()
        # Both clients still hold the map from before the move: they follow tombstones.
        cancelled = calls.cancel(a, "after the move")
        assert (cancelled.state, cancelled.shard, cancelled.reason) == (
            WorkflowState.CANCELLED,
            "shard3",
            "after the move",
        )
        resumed = calls.resume(b)
        assert (resumed.state, resumed.shard) == (WorkflowState.ENQUEUED, "shard3")
        if isinstance(calls, AsyncCalls):
            assert calls.threads.calls == []
        with shardflow.Worker(stale, basic.app, concurrency=2):
            assert stale.handle(b).result(timeout=30) == {"result": 5}
        assert stale.get(a).shard == stale.get(b).shard == "shard3"


def test_tombstones_are_purged_after_the_grace_period(grown: TestCluster) -> None:
    config = grown.config
    moving = moving_slots(config)
    ids = ids_in_slots(config, moving, "t", 20)
    with shardflow.connect(config) as stale:
        stale.submit_many(
            [shardflow.Submission(basic.three_steps, (1,), workflow_id=w) for w in ids]
        )
        with Rebalancer(config) as rebalancer:
            result = rebalancer.apply(ApplyOptions(tombstone_grace_seconds=3600))
            assert result.purged == 0
            tombstones = sum(s.tombstones for s in gather_status(config).shards)
            assert tombstones == len(ids)
            assert rebalancer.purge(0) == len(ids)
        assert sum(s.tombstones for s in gather_status(config).shards) == 0
        # A reader with the old map finds them anyway: "not here" makes it refresh.
        assert {stale.get(w).shard for w in ids} == {"shard3"}


def _consumed(config: ClusterConfig, workflow_id: str) -> int:
    total = 0
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM shardflow.messages WHERE workflow_id = %s AND consumed",
                (workflow_id,),
            ).fetchone()
        total += int(row[0]) if row else 0
    return total


def _waiting_on_lock(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancel_blocked_by_the_mover_lands_on_the_moved_workflow(
    grown: TestCluster, kind: str
) -> None:
    config = grown.config
    moving = moving_slots(config)
    (wid,) = ids_in_slots(config, moving, "cx", 1)
    with shardflow.connect(config) as cluster, control_calls(kind, cluster) as calls:
        cluster.submit(basic.three_steps, 1, workflow_id=wid)
        source = cluster.get(wid).shard
        outcome: list[WorkflowState] = []
        threads: list[threading.Thread] = []

        def cancel_while_locked(step: MoveStep) -> None:
            if step is MoveStep.LOCKED and not threads:
                t = threading.Thread(
                    target=lambda: outcome.append(calls.cancel(wid, "mid-move").state)
                )
                t.start()
                threads.append(t)
                wait_until(
                    lambda: _waiting_on_lock(config.shard(source).dsn) >= 1, message="blocked"
                )

        with Rebalancer(config, on_step=cancel_while_locked) as rebalancer:
            assert rebalancer.apply().complete
        threads[0].join(30)
        assert outcome == [WorkflowState.CANCELLED]
        status = cluster.get(wid)
        assert status.shard == "shard3" and status.state is WorkflowState.CANCELLED
