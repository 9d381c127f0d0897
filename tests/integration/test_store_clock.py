"""Every time-dependent query takes ``now``: a test moves the clock instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shardflow.engine.cluster import Cluster
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import WorkerRecord
from shardflow.testing.servers import id_on
from tests.apps import faults

SHARD = "shard0"
NAMES = ["faults.two_args"]


def _later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def _submit(
    cluster: Cluster,
    prefix: str,
    *,
    delay_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> str:
    wid = id_on(cluster, SHARD, prefix)
    cluster.submit(
        faults.two_args,
        1,
        workflow_id=wid,
        delay_seconds=delay_seconds,
        timeout_seconds=timeout_seconds,
    )
    return wid


def _claim(
    cluster: Cluster,
    *,
    rate_limit: tuple[int, float] | None = None,
    now: datetime | None = None,
) -> list[str]:
    claims = cluster.store.claim_enqueued(
        SHARD,
        queue="default",
        names=NAMES,
        owner="t",
        lease_seconds=30,
        limit=10,
        rate_limit=rate_limit,
        now=now,
    )
    return [c.workflow_id for c in claims]


def test_an_expired_lease_is_claimed_only_once_the_clock_passes_it(cluster: Cluster) -> None:
    wid = _submit(cluster, "lease")
    assert _claim(cluster) == [wid]

    def expired(now: datetime | None) -> list[str]:
        claims = cluster.store.claim_expired(
            SHARD,
            names=NAMES,
            queues=["default"],
            owner="r",
            lease_seconds=30,
            limit=10,
            max_recoveries=5,
            now=now,
        )
        return [c.workflow_id for c in claims]

    assert expired(None) == []
    assert expired(_later(seconds=20)) == []
    assert expired(_later(seconds=40)) == [wid]
    # The new lease runs from the clock the claim was given.
    assert expired(_later(seconds=60)) == []
    renewed = cluster.store.renew_leases(
        SHARD, owner="r", workflow_ids=[wid], lease_seconds=30, now=_later(seconds=300)
    )
    assert renewed.renewed == {wid} and not renewed.lost
    assert expired(_later(seconds=320)) == []
    assert expired(_later(seconds=340)) == [wid]


def test_a_delayed_workflow_is_promoted_when_due(cluster: Cluster) -> None:
    wid = _submit(cluster, "delay", delay_seconds=3600)
    assert cluster.store.promote_delayed(SHARD) == 0
    assert _claim(cluster) == []
    assert cluster.store.promote_delayed(SHARD, now=_later(seconds=3500)) == 0
    assert cluster.store.promote_delayed(SHARD, now=_later(seconds=3700)) == 1
    assert _claim(cluster) == [wid]


def test_a_sleeping_workflow_wakes_when_due(cluster: Cluster) -> None:
    wid = _submit(cluster, "sleep")
    (claim,) = cluster.store.claim_enqueued(
        SHARD, queue="default", names=NAMES, owner="t", lease_seconds=30, limit=10
    )
    assert cluster.store.suspend(
        SHARD, workflow_id=wid, attempt=claim.attempt, delay_seconds=3600, wait_for="sleep"
    )

    def wakeable(now: datetime | None) -> list[str]:
        claims = cluster.store.claim_wakeable(
            SHARD, names=NAMES, queues=["default"], owner="w", lease_seconds=30, limit=10, now=now
        )
        return [c.workflow_id for c in claims]

    assert wakeable(None) == []
    assert wakeable(_later(seconds=3500)) == []
    assert wakeable(_later(seconds=3700)) == [wid]
    assert cluster.get(wid).state is WorkflowState.RUNNING


def test_a_deadline_cancels_only_once_passed(cluster: Cluster) -> None:
    wid = _submit(cluster, "deadline", timeout_seconds=3600)
    assert cluster.store.expire_deadlines(SHARD) == []
    assert cluster.store.expire_deadlines(SHARD, now=_later(seconds=3500)) == []
    assert cluster.store.expire_deadlines(SHARD, now=_later(seconds=3700)) == [wid]
    status = cluster.get(wid)
    assert status.state is WorkflowState.CANCELLED and status.reason == "timeout"


def test_a_rate_limited_queue_counts_starts_within_the_period(cluster: Cluster) -> None:
    first, second = _submit(cluster, "rate-a"), _submit(cluster, "rate-b")
    assert len(_claim(cluster, rate_limit=(1, 60.0))) == 1
    assert _claim(cluster, rate_limit=(1, 60.0)) == []
    (later,) = _claim(cluster, rate_limit=(1, 60.0), now=_later(seconds=120))
    assert later in {first, second}


def test_worker_registry_and_counts_follow_the_clock(cluster: Cluster) -> None:
    record = WorkerRecord("w-1", "host", 1, "0", "faults", ("faults.two_args",), ("default",))
    cluster.store.worker_seen(SHARD, record)
    assert [w.worker_id for w in cluster.store.live_workers(SHARD, 30)] == ["w-1"]
    assert cluster.store.live_workers(SHARD, 30, now=_later(seconds=60)) == []
    assert cluster.store.purge_stale_workers(SHARD, 3600) == 0
    assert cluster.store.purge_stale_workers(SHARD, 3600, now=_later(seconds=7200)) == 1

    wid = _submit(cluster, "count")
    assert _claim(cluster) == [wid]
    counts = cluster.store.shard_counts(SHARD, recent_seconds=60, timeout_ms=2000)
    (running,) = [d for d in counts.depths if d.state == "RUNNING"]
    assert running.workflows == 1 and running.expired_leases == 0
    later = cluster.store.shard_counts(
        SHARD, recent_seconds=60, timeout_ms=2000, now=_later(seconds=60)
    )
    (running,) = [d for d in later.depths if d.state == "RUNNING"]
    assert running.expired_leases == 1 and running.oldest_seconds >= 59
