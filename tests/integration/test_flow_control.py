"""Per-key flow control (docs/queues.md#flow-control) against three real shards."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import shardflow
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import ClusterFactory, TestCluster
from tests.apps import flow


@pytest.fixture
def keyed(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    flow.reset()
    made = cluster_factory.make(
        3, extra={"queues": {"default": {}, "tenants": {"key_concurrency": 1}}}
    )
    try:
        yield made
    finally:
        cluster_factory.drop(made)


class RunningSampler:
    """Reads every shard's RUNNING workflows per key, over and over, while it runs."""

    def __init__(self, client: Cluster) -> None:
        self.dsns = [client.config.shard(s).dsn for s in client.config.shard_names]
        self.most: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conns = [psycopg.connect(d, autocommit=True) for d in self.dsns]
        try:
            while not self._stop.is_set():
                for conn in conns:
                    rows = conn.execute(
                        "SELECT partition_key, count(*) FROM shardflow.workflow_status"
                        " WHERE state = 'RUNNING' AND partition_key IS NOT NULL"
                        " GROUP BY partition_key"
                    ).fetchall()
                    for key, n in rows:
                        self.most[key] = max(self.most[key], n)
                self.samples += 1
        finally:
            for conn in conns:
                conn.close()


def test_key_concurrency_one_never_runs_two_of_a_key(keyed: TestCluster) -> None:
    flow.reset(seconds=0.03)
    with Cluster(keyed.config) as client:
        # Two keys on each of the three shards (a key's IDs share its hash tag).
        keys: list[str] = []
        for shard in client.config.shard_names:
            on_shard = (f"tenant-{i}" for i in range(1000))
            keys += [k for k in on_shard if client.route(f"{{{k}}}:x") == shard][:2]
        handles = [
            client.submit(flow.keyed, key, workflow_id=f"{{{key}}}:job-{i}", partition_key=key)
            for i in range(12)
            for key in keys
        ]
        # Two workers, each claiming from every shard.
        worker = shardflow.Worker(client, flow.app, concurrency=12, poll_interval_seconds=0.05)
        other = shardflow.Worker(client, flow.app, concurrency=12, poll_interval_seconds=0.05)
        with RunningSampler(client) as sampler, worker, other:
            for h in handles:
                assert h.result(timeout=60) in keys
        assert worker.stats.claimed + other.stats.claimed == len(handles) == 72
    # Seen from the database while the worker ran, and from inside the runs.
    assert sampler.samples > 0 and set(sampler.most) <= set(keys)
    assert max(sampler.most.values()) == 1, sampler.most
    assert dict(flow.MOST) == dict.fromkeys(keys, 1)
    # The keys did not wait for each other: keys of every shard ran side by side.
    assert flow.MOST_TOTAL[0] >= 3
    assert {h.shard for h in handles} == set(keyed.config.shard_names)


def test_fair_dispatch_across_keys(cluster_factory: ClusterFactory) -> None:
    flow.reset(seconds=0.02)
    made = cluster_factory.make(
        3, extra={"queues": {"default": {}, "tenants": {"key_concurrency": 1000}}}
    )
    try:
        with Cluster(made.config) as client:
            # One hash tag: both keys' work on one shard, where the claims take turns.
            big = [
                shardflow.Submission(flow.keyed, ("big",), workflow_id=f"{{fair}}:big-{i}",
                                     partition_key="big")
                for i in range(200)
            ]  # fmt: skip
            small = [
                shardflow.Submission(flow.keyed, ("small",), workflow_id=f"{{fair}}:small-{i}",
                                     partition_key="small")
                for i in range(5)
            ]  # fmt: skip
            client.submit_many(big)
            small_handles = client.submit_many(small)
            worker = shardflow.Worker(client, flow.app, concurrency=2, poll_interval_seconds=0.05)
            with EventRecorder(worker) as events, worker:
                for h in small_handles:
                    assert h.result(timeout=60) == "small"
                events.wait_for(
                    EventKind.CLAIMED, lambda e: ":big-" in e.workflow_id, count=20, timeout=60
                )
            claimed = [e.workflow_id for e in events.events(EventKind.CLAIMED)]
        twentieth_big = [i for i, w in enumerate(claimed) if ":big-" in w][19]
        small_at = [i for i, w in enumerate(claimed) if ":small-" in w]
        assert len(small_at) == 5 and max(small_at) < twentieth_big, claimed[:30]
    finally:
        cluster_factory.drop(made)


def test_keyed_queue_also_runs_unkeyed_work_and_children_inherit_the_key(
    keyed: TestCluster,
) -> None:
    with Cluster(keyed.config) as client:
        loose = [client.submit(flow.keyed, f"loose-{i}") for i in range(4)]
        parent = client.submit(
            flow.parent, "tenant-p", workflow_id="{tenant-p}:parent", partition_key="tenant-p"
        )
        with shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.05):
            assert [h.result(timeout=60) for h in loose] == [f"loose-{i}" for i in range(4)]
            assert parent.result(timeout=60) == "tenant-p"
        with psycopg.connect(keyed.config.shard(parent.shard).dsn) as conn:
            rows = conn.execute(
                "SELECT workflow_id, partition_key FROM shardflow.workflow_status"
                " WHERE workflow_id LIKE '{tenant-p}:%' ORDER BY workflow_id"
            ).fetchall()
    assert rows == [("{tenant-p}:parent", "tenant-p"), ("{tenant-p}:parent:child:0", "tenant-p")]


def test_bad_partition_keys_are_refused(keyed: TestCluster) -> None:
    with Cluster(keyed.config) as client:
        for bad in ["", "a\x00b", "x" * 513]:
            with pytest.raises(ValueError, match="partition_key must be"):
                client.submit(flow.keyed, "k", partition_key=bad)
        assert client.list_workflows().items == []


def pending_runs(config_dsns: list[str], name: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dsn in config_dsns:
        with psycopg.connect(dsn) as conn:
            out += conn.execute(
                "SELECT workflow_id, inputs FROM shardflow.workflow_status"
                " WHERE name = %s AND state = 'ENQUEUED' AND started_at IS NULL",
                [name],
            ).fetchall()
    return out


def test_debounce_runs_once_with_the_last_inputs(keyed: TestCluster) -> None:
    with Cluster(keyed.config) as client:
        dsns = [client.config.shard(s).dsn for s in client.config.shard_names]
        handles = [
            client.submit(flow.latest, f"v{i}", debounce_key="doc-1", debounce_seconds=0.5)
            for i in range(5)
        ]
        other = client.submit(flow.latest, "other", debounce_key="doc-2", debounce_seconds=0.5)
        assert len({h.workflow_id for h in handles}) == 1
        assert other.workflow_id != handles[0].workflow_id
        assert len(pending_runs(dsns, "flow.latest")) == 2
        worker = shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.05)
        with EventRecorder(worker) as events, worker:
            assert handles[-1].result(timeout=30) == "v4"
            assert other.result(timeout=30) == "other"
            # Once it started, the next submit of the key makes a new pending run.
            again = client.submit(flow.latest, "v5", debounce_key="doc-1", debounce_seconds=0.1)
            assert again.workflow_id != handles[0].workflow_id
            assert again.result(timeout=30) == "v5"
        started = events.events(EventKind.CLAIMED)
        assert sorted(e.workflow_id for e in started) == sorted(
            [handles[0].workflow_id, other.workflow_id, again.workflow_id]
        )
        assert len(client.list_workflows(name="flow.latest").items) == 3


def test_concurrent_debounced_submits_keep_one_pending_run(keyed: TestCluster) -> None:
    with Cluster(keyed.config) as client:
        dsns = [client.config.shard(s).dsn for s in client.config.shard_names]
        barrier = threading.Barrier(8)
        ids: list[str] = []
        lock = threading.Lock()

        def submit(i: int) -> None:
            barrier.wait()
            for j in range(5):
                h = client.submit(flow.latest, f"t{i}-{j}", debounce_key="hot", debounce_seconds=60)
                with lock:
                    ids.append(h.workflow_id)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(ids) == 40 and len(set(ids)) == 1
        pending = pending_runs(dsns, "flow.latest")
        assert [p[0] for p in pending] == [ids[0]]


def test_debounce_races_a_running_worker(keyed: TestCluster) -> None:
    """Submits keep arriving while a worker claims the pending runs: at no time are
    there two pending runs of the key, every submit's handle ends, and the last submit's
    inputs are what the last run ran with."""
    flow.reset(seconds=0.0)
    with Cluster(keyed.config) as client:
        dsns = [client.config.shard(s).dsn for s in client.config.shard_names]
        handles = []
        worker = shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.01)
        with worker:
            most_pending = 0
            for i in range(60):
                handles.append(
                    client.submit(flow.latest, f"r{i}", debounce_key="k", debounce_seconds=0.02)
                )
                if i % 10 == 0:
                    most_pending = max(most_pending, len(pending_runs(dsns, "flow.latest")))
            results = {h.workflow_id: h.result(timeout=30) for h in handles}
        assert most_pending <= 1
        assert results[handles[-1].workflow_id] == "r59"
        runs = client.list_workflows(name="flow.latest", limit=100).items
        assert {r.workflow_id for r in runs} == set(results)
        assert all(r.state is shardflow.WorkflowState.SUCCESS for r in runs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"debounce_key": "k"}, "go together"),
        ({"debounce_seconds": 1}, "go together"),
        ({"debounce_key": "k", "debounce_seconds": 0}, "must be > 0"),
        ({"debounce_key": "k", "debounce_seconds": float("inf")}, "must be > 0"),
        ({"debounce_key": "", "debounce_seconds": 1}, "debounce_key must be"),
        ({"debounce_key": "k", "debounce_seconds": 1, "workflow_id": "w"}, "workflow_id"),
        ({"debounce_key": "k", "debounce_seconds": 1, "dedup_key": "d"}, "dedup_key"),
        ({"debounce_key": "k", "debounce_seconds": 1, "delay_seconds": 1}, "delay_seconds"),
    ],
)
def test_bad_debounce_options_are_refused(
    cluster: Cluster, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cluster.submit(flow.latest, "v", **options)
    assert cluster.list_workflows(name="flow.latest").items == []


def test_a_resumed_debounced_run_leaves_its_key(keyed: TestCluster) -> None:
    with Cluster(keyed.config) as client:
        first = client.submit(flow.latest, "a", debounce_key="doc", debounce_seconds=60)
        assert client.cancel(first.workflow_id).state is shardflow.WorkflowState.CANCELLED
        second = client.submit(flow.latest, "b", debounce_key="doc", debounce_seconds=60)
        assert second.workflow_id != first.workflow_id
        client.resume(first.workflow_id)  # no conflict with the pending run of the key
        assert first.status().state is shardflow.WorkflowState.ENQUEUED
        third = client.submit(flow.latest, "c", debounce_key="doc", debounce_seconds=60)
        assert third.workflow_id == second.workflow_id
        with shardflow.Worker(client, flow.app, concurrency=2, poll_interval_seconds=0.05):
            assert first.result(timeout=30) == "a"
        assert second.status().state is shardflow.WorkflowState.ENQUEUED


def test_keyed_claims_hold_key_and_queue_limits_together(keyed: TestCluster) -> None:
    with Cluster(keyed.config) as client:
        for key in ("a", "b", "c"):
            client.submit_many(
                shardflow.Submission(
                    flow.keyed, (key,), workflow_id=f"{{one}}:{key}-{i}", partition_key=key
                )
                for i in range(5)
            )
        client.submit_many(
            shardflow.Submission(flow.keyed, ("-",), workflow_id=f"{{one}}:loose-{i}")
            for i in range(2)
        )
        shard = client.route("{one}:x")

        def claim(limit: int, global_limit: int | None = None) -> list[str]:
            claims = client.store.claim_enqueued(
                shard,
                queue="tenants",
                names=["flow.keyed"],
                owner="test",
                lease_seconds=60,
                limit=limit,
                global_limit=global_limit,
                key_concurrency=2,
            )
            return [c.workflow_id.removeprefix("{one}:") for c in claims]

        # The queue's share caps the batch; the keys take turns (oldest first on ties).
        assert claim(10, global_limit=4) == ["a-0", "b-0", "c-0", "loose-0"]
        assert claim(10, global_limit=4) == []
        # Each key gets its second place; the unkeyed group has no per-key limit.
        assert claim(10) == ["a-1", "b-1", "c-1", "loose-1"]
        # Every key is at its limit of 2 RUNNING: nothing more until one ends.
        assert claim(10) == []


def test_key_rate_limit_counts_each_keys_starts_per_period(keyed: TestCluster) -> None:
    """On a deterministic clock: each key starts at most 3 per 60 s; the window slides."""
    t0 = datetime.now(UTC) + timedelta(seconds=5)
    with Cluster(keyed.config) as client:
        for key in ("a", "b"):
            client.submit_many(
                shardflow.Submission(
                    flow.keyed, (key,), workflow_id=f"{{rate}}:{key}-{i:02}", partition_key=key
                )
                for i in range(10)
            )
        shard = client.route("{rate}:x")

        def claim(at: datetime, limit: int = 100) -> list[str]:
            claims = client.store.claim_enqueued(
                shard,
                queue="tenants",
                names=["flow.keyed"],
                owner="test",
                lease_seconds=600,
                limit=limit,
                key_rate_limit=(3, 60.0),
                now=at,
            )
            return sorted(c.workflow_id.removeprefix("{rate}:") for c in claims)

        # Two claims in the same window: 3 starts per key, then none, running or not.
        assert claim(t0, limit=4) == ["a-00", "a-01", "b-00", "b-01"]
        assert claim(t0 + timedelta(seconds=1)) == ["a-02", "b-02"]
        assert claim(t0 + timedelta(seconds=59)) == []
        # 60 s after the first starts, their places in the window are free again.
        assert claim(t0 + timedelta(seconds=60.5)) == ["a-03", "a-04", "b-03", "b-04"]
        assert claim(t0 + timedelta(seconds=61.5)) == ["a-05", "b-05"]
        assert claim(t0 + timedelta(seconds=62)) == []


def test_a_worker_keeps_each_keys_start_rate(cluster_factory: ClusterFactory) -> None:
    """Measured on the database clock: a key never starts 3 within 1 s, and the keys
    do not wait for each other."""
    flow.reset(seconds=0.0)
    made = cluster_factory.make(
        3,
        extra={
            "queues": {
                "default": {},
                "tenants": {"key_rate_limit": {"limit": 2, "period_seconds": 1}},
            }
        },
    )
    try:
        with Cluster(made.config) as client:
            handles = client.submit_many(
                shardflow.Submission(
                    flow.keyed, (key,), workflow_id=f"{{{key}}}:job-{i}", partition_key=key
                )
                for key in ("k1", "k2", "k3")
                for i in range(5)
            )
            with shardflow.Worker(client, flow.app, concurrency=8, poll_interval_seconds=0.02):
                for h in handles:
                    h.result(timeout=60)
            runs = client.list_workflows(name="flow.keyed", limit=100).items
        starts: dict[str, list[datetime]] = {}
        for r in runs:
            assert r.started_at is not None
            starts.setdefault(r.workflow_id.split("}")[0][1:], []).append(r.started_at)
        assert sorted(starts) == ["k1", "k2", "k3"]
        for key, times in starts.items():
            times.sort()
            # Any three consecutive starts of a key span at least the period.
            for first, third in zip(times, times[2:], strict=False):
                assert third - first >= timedelta(seconds=1), (key, times)
        # Five starts at 2 per second take 2 windows; the keys ran side by side.
        firsts = sorted(t[0] for t in starts.values())
        assert firsts[-1] - firsts[0] < timedelta(seconds=1)
    finally:
        cluster_factory.drop(made)


def test_ten_small_keys_finish_before_the_big_keys_thousandth(
    cluster_factory: ClusterFactory,
) -> None:
    """One key holds 10,000 ready workflows and ten keys hold 10 each, all on one shard:
    the ten keys' 100 workflows all finish before the big key's 1,000th."""
    flow.reset(seconds=0.0)
    made = cluster_factory.make(
        3, extra={"queues": {"default": {}, "tenants": {"key_concurrency": 10_000}}}
    )
    try:
        with Cluster(made.config) as client:
            big = [
                shardflow.Submission(flow.keyed, ("big",), workflow_id=f"{{fair}}:big-{i:05}",
                                     partition_key="big")
                for i in range(10_000)
            ]  # fmt: skip
            for start in range(0, len(big), 2000):
                client.submit_many(big[start : start + 2000])
            small = client.submit_many(
                shardflow.Submission(flow.keyed, (f"small-{k}",),
                                     workflow_id=f"{{fair}}:small-{k}-{i}",
                                     partition_key=f"small-{k}")
                for k in range(10)
                for i in range(10)
            )  # fmt: skip
            worker = shardflow.Worker(client, flow.app, concurrency=8, poll_interval_seconds=0.05)
            with EventRecorder(worker) as events, worker:
                for h in small:
                    h.result(timeout=60)
                events.wait_for(
                    EventKind.FINISHED, lambda e: ":big-" in e.workflow_id, count=1000, timeout=60
                )
            finished = [e.workflow_id for e in events.events(EventKind.FINISHED)]
    finally:
        cluster_factory.drop(made)
    big_at = [i for i, w in enumerate(finished) if ":big-" in w]
    small_at = [i for i, w in enumerate(finished) if ":small-" in w]
    assert len(small_at) == 100 and len(big_at) >= 1000
    assert max(small_at) < big_at[999], (max(small_at), big_at[999])


def test_a_hundred_debounced_submits_run_once_with_the_last_inputs(keyed: TestCluster) -> None:
    """100 submits of one key within about a second: one run, with the 100th inputs."""
    with Cluster(keyed.config) as client:
        window = 1.0
        handles = []
        times = []
        for i in range(100):
            times.append(time.monotonic())
            handles.append(
                client.submit(flow.latest, f"v{i}", debounce_key="burst", debounce_seconds=window)
            )
        # Each submit came within the window of the one before, so all of them coalesce.
        assert max(b - a for a, b in itertools.pairwise(times)) < window
        assert len({h.workflow_id for h in handles}) == 1
        worker = shardflow.Worker(client, flow.app, concurrency=4, poll_interval_seconds=0.05)
        with EventRecorder(worker) as events, worker:
            assert handles[0].result(timeout=30) == "v99"
        assert [e.workflow_id for e in events.events(EventKind.CLAIMED)] == [handles[0].workflow_id]
        runs = client.list_workflows(name="flow.latest").items
        assert [(r.workflow_id, r.state) for r in runs] == [
            (handles[0].workflow_id, shardflow.WorkflowState.SUCCESS)
        ]
    assert flow.MOST == {"v99": 1}
