"""The group committer (``ShardCommitter``) against a real shard: the fence, a lost race,
one bad row in a batch, and stopping with writes queued."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shardflow.engine.batcher import GroupWriter, ShardCommitter
from shardflow.engine.cluster import Cluster
from shardflow.engine.records import Claim
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Fenced, FinishWrite, StepWrite
from shardflow.errors import ShardUnavailable, ValueRejected
from shardflow.testing.servers import id_on, wait_until
from tests.apps import faults

SHARD = "shard1"
NAMES = ["faults.two_args"]
LATER = timedelta(hours=1)


def _claim(cluster: Cluster, prefix: str) -> Claim:
    wid = id_on(cluster, SHARD, prefix)
    cluster.submit(faults.two_args, 1, workflow_id=wid)
    claims = cluster.store.claim_enqueued(
        SHARD, queue="default", names=NAMES, owner="t", lease_seconds=30, limit=100
    )
    return next(c for c in claims if c.workflow_id == wid)


def _take_over(cluster: Cluster, claim: Claim) -> Claim:
    """The same workflow claimed again by another worker (as if its lease had expired:
    the claim is told the time is an hour later)."""
    claims = cluster.store.claim_expired(
        SHARD,
        names=NAMES,
        queues=["default"],
        owner="other",
        lease_seconds=30,
        limit=100,
        max_recoveries=10,
        now=datetime.now(UTC) + LATER,
    )
    again = next(c for c in claims if c.workflow_id == claim.workflow_id)
    assert again.attempt == claim.attempt + 1
    return again


def _step(claim: Claim, output: str, step_no: int = 0) -> StepWrite:
    return StepWrite(claim.workflow_id, claim.attempt, step_no, "s", output, None)


@contextmanager
def _committer(cluster: Cluster, retry_seconds: float = 5.0) -> Iterator[ShardCommitter]:
    committer = ShardCommitter(cluster.store, SHARD, retry_seconds=retry_seconds)
    try:
        yield committer
    finally:
        committer.stop()


@contextmanager
def _row_locked(cluster: Cluster, workflow_id: str) -> Iterator[None]:
    """Hold ``workflow_id``'s status row FOR UPDATE: a write fenced on it waits."""
    with psycopg.connect(cluster.config.shard(SHARD).dsn) as admin:
        admin.execute(
            "SELECT 1 FROM shardflow.workflow_status WHERE workflow_id = %s FOR UPDATE",
            (workflow_id,),
        )
        yield
        admin.rollback()


def _waiting_on_a_lock(cluster: Cluster) -> bool:
    with psycopg.connect(cluster.config.shard(SHARD).dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


def test_a_stale_attempt_is_fenced_off(cluster: Cluster) -> None:
    stale = _claim(cluster, "fence")
    current = _take_over(cluster, stale)
    writer = GroupWriter(cluster.store, [SHARD])
    try:
        assert writer.committers[SHARD].record_step(_step(stale, '"zombie"')) is False
        with pytest.raises(Fenced):
            writer.record_step(
                SHARD, StepWrite(stale.workflow_id, stale.attempt, 0, "s", '"zombie"', None)
            )
        assert not writer.finish(
            SHARD, FinishWrite(stale.workflow_id, stale.attempt, WorkflowState.SUCCESS, "1", None)
        )
        # The current attempt writes and finishes.
        assert writer.committers[SHARD].record_step(_step(current, '"live"')) is True
        assert writer.finish(
            SHARD,
            FinishWrite(current.workflow_id, current.attempt, WorkflowState.SUCCESS, "1", None),
        )
    finally:
        writer.close()
    assert [s.output for s in cluster.store.steps(SHARD, stale.workflow_id)] == ["live"]
    assert cluster.get(stale.workflow_id).state is WorkflowState.SUCCESS


def test_a_lost_race_resolves_to_one_winner(cluster: Cluster) -> None:
    first = _claim(cluster, "race")
    # Two runs write the same step at once; the older attempt is a zombie.
    second = _take_over(cluster, first)
    with _committer(cluster) as committer, ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda w: committer.record_step(w, timeout=30),
                [_step(first, f'"old{i}"') for i in range(4)]
                + [_step(second, f'"new{i}"') for i in range(4)],
            )
        )
    assert answers.count(True) == 1
    assert answers[:4] == [False] * 4  # the fenced attempt never wins
    (record,) = cluster.store.steps(SHARD, first.workflow_id)
    assert record.attempt == second.attempt and record.output.startswith("new")
    # The losers of the current attempt are told the winner's record.
    winner = cluster.store.resolve_unwritten_step(SHARD, second.workflow_id, second.attempt, 0)
    assert winner.output == record.output
    with pytest.raises(Fenced):
        cluster.store.resolve_unwritten_step(SHARD, first.workflow_id, first.attempt, 0)


def test_one_bad_row_fails_only_its_own_write(cluster: Cluster) -> None:
    blocker, *others = (_claim(cluster, f"bad{i}") for i in range(4))
    bad, good1, good2 = others
    with _committer(cluster) as committer, ThreadPoolExecutor(4) as pool:
        with _row_locked(cluster, blocker.workflow_id):
            # The first write waits on the lock, so the next three queue up behind it and
            # are committed together as one batch.
            first = pool.submit(committer.record_step, _step(blocker, '"b"'), 30)
            wait_until(lambda: _waiting_on_a_lock(cluster), message="the first write waits")
            futures = [
                pool.submit(committer.record_step, _step(bad, '"a\x00b"'), 30),
                pool.submit(committer.record_step, _step(good1, '"g1"'), 30),
                pool.submit(
                    committer.finish,
                    FinishWrite(good2.workflow_id, good2.attempt, WorkflowState.SUCCESS, "2", None),
                    30,
                ),
            ]
            wait_until(lambda: committer.queued() == 3, message="three writes queued")
        assert first.result(30) is True
        with pytest.raises(ValueRejected):
            futures[0].result(30)
        assert futures[1].result(30) is True
        assert futures[2].result(30) is True
        # The batch of three failed once as a whole, then its bad write alone.
        assert committer.errors == 2
        assert committer.alive()
    assert cluster.store.steps(SHARD, bad.workflow_id) == []
    assert [s.output for s in cluster.store.steps(SHARD, good1.workflow_id)] == ["g1"]
    assert cluster.get(good2.workflow_id).state is WorkflowState.SUCCESS


def test_stop_with_writes_queued_answers_every_write(cluster: Cluster) -> None:
    blocker, *rest = (_claim(cluster, f"stop{i}") for i in range(4))
    committer = ShardCommitter(cluster.store, SHARD, retry_seconds=20)
    pool = ThreadPoolExecutor(4)
    try:
        with _row_locked(cluster, blocker.workflow_id):
            in_flight = pool.submit(committer.record_step, _step(blocker, '"b"'), 30)
            wait_until(lambda: _waiting_on_a_lock(cluster), message="the first write waits")
            queued: list[Future[bool]] = [
                pool.submit(committer.record_step, _step(c, '"q"'), 30) for c in rest
            ]
            wait_until(lambda: committer.queued() == 3, message="three writes queued")
            committer.stop(timeout=0.2)  # the thread is stuck on the lock
            for future in queued:
                with pytest.raises(ShardUnavailable):
                    future.result(10)
            with pytest.raises(ShardUnavailable):
                committer.record_step(_step(rest[0], '"late"'), 10)
        # The write that was in flight is answered once the shard answers.
        assert in_flight.result(30) is True
        committer.stop()
        assert not committer.alive()
    finally:
        pool.shutdown()
    for c in rest:
        assert cluster.store.steps(SHARD, c.workflow_id) == []


def test_coroutines_get_their_answers_on_their_loop(cluster: Cluster) -> None:
    """Writes awaited on an event loop: each coroutine gets its own answer (written,
    fenced off, refused)."""
    stale = _claim(cluster, "aiostale")
    _take_over(cluster, stale)  # (before the others are claimed: it takes all it finds)
    live = [_claim(cluster, f"aio{i}") for i in range(6)]
    bad = _claim(cluster, "aiobad")
    writer = GroupWriter(cluster.store, [SHARD], answer_timeout=30)

    async def main() -> list[object]:
        writes: list[Coroutine[Any, Any, object]] = [
            writer.record_step_async(SHARD, _step(c, f'"v{i}"')) for i, c in enumerate(live)
        ]
        writes.append(
            writer.finish_async(
                SHARD,
                FinishWrite(stale.workflow_id, stale.attempt, WorkflowState.SUCCESS, "1", None),
            )
        )
        writes.append(writer.record_step_async(SHARD, _step(bad, '"a\x00b"')))
        return await asyncio.gather(*writes, return_exceptions=True)

    try:
        answers = asyncio.run(main())
    finally:
        writer.close()
    assert answers[:6] == [None] * 6  # recorded (no winner to replay)
    assert answers[6] is False  # the stale attempt's end was fenced off
    assert isinstance(answers[7], ValueRejected)
    for i, c in enumerate(live):
        assert [s.output for s in cluster.store.steps(SHARD, c.workflow_id)] == [f"v{i}"]


def test_a_coroutine_gives_up_on_a_late_answer_and_the_late_answer_is_dropped(
    cluster: Cluster,
) -> None:
    """A commit that does not answer within the answer timeout: the awaiting run gets
    ShardUnavailable (the outcome is unknown), other runs on the loop go on, and the answer
    that arrives later is dropped quietly."""
    blocked, free = _claim(cluster, "late"), _claim(cluster, "notlate")
    writer = GroupWriter(cluster.store, [SHARD], answer_timeout=0.5)

    async def main() -> tuple[BaseException | None, float]:
        task = asyncio.ensure_future(writer.record_step_async(SHARD, _step(blocked, '"b"')))
        started = asyncio.get_running_loop().time()
        try:
            await task
        except ShardUnavailable as exc:
            return exc, asyncio.get_running_loop().time() - started
        return None, 0.0

    try:
        with _row_locked(cluster, blocked.workflow_id):
            error, waited = asyncio.run(main())
            assert isinstance(error, ShardUnavailable)
            assert "no commit answer within 0.5s" in str(error)
            assert waited >= 0.5
        # The blocked write lands once the lock goes; its answer has nobody to go to.
        wait_until(
            lambda: len(cluster.store.steps(SHARD, blocked.workflow_id)) == 1,
            message="the late write committed",
        )

        async def again() -> object:
            return await writer.record_step_async(SHARD, _step(free, '"f"'))

        assert asyncio.run(again()) is None
        assert all(c.alive() for c in writer.committers.values())
    finally:
        writer.close()


def test_stop_answers_the_coroutines_still_waiting(cluster: Cluster) -> None:
    blocker, queued = _claim(cluster, "astop0"), _claim(cluster, "astop1")
    writer = GroupWriter(cluster.store, [SHARD], answer_timeout=60)
    committer = writer.committers[SHARD]

    async def main() -> BaseException | None:
        first = asyncio.ensure_future(writer.record_step_async(SHARD, _step(blocker, '"b"')))
        await asyncio.to_thread(
            wait_until, lambda: _waiting_on_a_lock(cluster), message="the first write waits"
        )
        second = asyncio.ensure_future(writer.record_step_async(SHARD, _step(queued, '"q"')))
        await asyncio.to_thread(wait_until, lambda: committer.queued() == 1, message="queued")
        await asyncio.to_thread(committer.stop, 0.2)
        try:
            await second
        except ShardUnavailable as exc:
            first.cancel()
            return exc
        return None

    try:
        with _row_locked(cluster, blocker.workflow_id):
            assert isinstance(asyncio.run(main()), ShardUnavailable)
    finally:
        writer.close()
    assert cluster.store.steps(SHARD, queued.workflow_id) == []
