"""Prometheus metrics and health endpoints for a worker, and per-shard snapshots.

Nothing here sits on the hot path. :class:`WorkerCollector` is a custom collector: at
scrape time it reads the counters a :class:`~shardflow.engine.worker.Worker` keeps
anyway (:class:`~shardflow.engine.worker.WorkerStats`) and a per-shard snapshot of the
database (queue depth, slot states), taken at most every ``snapshot_interval`` seconds
under a short statement timeout. :func:`~shardflow.engine.metrics_http.serve_metrics`
exposes it over HTTP:

- ``/metrics``: the Prometheus text format;
- ``/healthz``: 200 while the worker's threads run (a liveness probe);
- ``/readyz``: 200 while it takes work, 503 once it is stopping (a readiness probe).

The HTTP side is :mod:`shardflow.engine.metrics_http`. ``shardflow status`` prints the
same snapshots as a table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shardflow.engine.states import WorkflowState
from shardflow.engine.store import QueueDepth
from shardflow.errors import ShardflowError, ShardUnavailable
from shardflow.retry import first_line
from shardflow.router.moves import SlotState

if TYPE_CHECKING:
    from shardflow.engine.cluster import Cluster
    from shardflow.engine.worker import Worker

log = logging.getLogger(__name__)

__all__ = [
    "QueueDepth",
    "ShardSnapshot",
    "read_snapshot",
    "read_snapshots",
]

DEFAULT_SNAPSHOT_INTERVAL = 5.0
SNAPSHOT_TIMEOUT_MS = 2000
ACTIVE_STATES = tuple(
    s.value for s in (WorkflowState.ENQUEUED, WorkflowState.RUNNING, WorkflowState.SUSPENDED)
)


# -- per-shard snapshots --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardSnapshot:
    """One shard as metrics and ``shardflow status`` see it."""

    shard: str
    problem: str | None = None
    depths: tuple[QueueDepth, ...] = ()
    # slot_ownership rows by state (OWNED, IMPORTING, MIGRATING_OUT).
    slots: dict[str, int] = field(default_factory=dict)
    # Workflows that ended in the last ``recent_seconds``, by final state.
    finished_recently: dict[str, int] = field(default_factory=dict)
    recent_seconds: float = 60.0

    @property
    def reachable(self) -> bool:
        return self.problem is None

    def count(self, state: str) -> int:
        return sum(d.workflows for d in self.depths if d.state == state)

    @property
    def expired_leases(self) -> int:
        return sum(d.expired_leases for d in self.depths)

    def oldest(self, state: str) -> float | None:
        ages = [d.oldest_seconds for d in self.depths if d.state == state and d.workflows]
        return max(ages) if ages else None


def read_snapshot(cluster: Cluster, shard: str, *, recent_seconds: float = 60.0) -> ShardSnapshot:
    """Queue depth, slot states and recent outcomes of ``shard``; never raises for a shard
    that cannot answer (the snapshot says why instead)."""
    try:
        counts = cluster.store.shard_counts(
            shard, recent_seconds=recent_seconds, timeout_ms=SNAPSHOT_TIMEOUT_MS
        )
    except ShardUnavailable as exc:
        return ShardSnapshot(shard, problem=exc.reason)
    except ShardflowError as exc:
        return ShardSnapshot(shard, problem=first_line(exc.__cause__ or exc))
    return ShardSnapshot(
        shard, None, counts.depths, counts.slots, counts.finished_recently, recent_seconds
    )


def read_snapshots(
    cluster: Cluster, shards: Sequence[str] | None = None, *, recent_seconds: float = 60.0
) -> list[ShardSnapshot]:
    """Snapshots of ``shards`` (default: all), read in parallel."""
    names = list(shards or cluster.config.shard_names)
    with ThreadPoolExecutor(max(len(names), 1), thread_name_prefix="shardflow-snapshot") as pool:
        return list(
            pool.map(lambda s: read_snapshot(cluster, s, recent_seconds=recent_seconds), names)
        )


# -- the collector ----------------------------------------------------------------------


class WorkerCollector:
    """Reads a worker's counters and its shards' snapshots at scrape time."""

    def __init__(
        self,
        worker: Worker,
        *,
        snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self.snapshot_interval = snapshot_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: list[ShardSnapshot] = []
        self._taken_at: float | None = None

    def snapshots(self) -> list[ShardSnapshot]:
        """The shards' snapshots, re-read when older than ``snapshot_interval``."""
        with self._lock:
            now = self._clock()
            if self._taken_at is None or now - self._taken_at >= self.snapshot_interval:
                self._snapshots = read_snapshots(self.worker.cluster, self.worker.shards)
                self._taken_at = now
            return self._snapshots

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        stats = worker.stats
        cluster_name = worker.cluster.config.name

        info = GaugeMetricFamily(
            "shardflow_worker_info",
            "This worker: its id, cluster and app (value 1).",
            labels=["worker_id", "cluster", "app"],
        )
        info.add_metric([worker.worker_id, cluster_name, worker.app.name], 1)
        yield info

        per_queue = [
            ("claimed", "New workflows claimed, by shard and queue.", stats.claimed_by),
            (
                "recovered",
                "Workflows taken over after their lease expired, by shard and queue.",
                stats.recovered_by,
            ),
        ]
        for name, doc, counts in per_queue:
            family = CounterMetricFamily(
                f"shardflow_workflows_{name}", doc, labels=["shard", "queue"]
            )
            for (shard, queue), value in sorted(dict(counts).items()):
                family.add_metric([shard, queue], value)
            yield family

        completed = CounterMetricFamily(
            "shardflow_workflows_completed",
            "Runs that recorded SUCCESS, by shard and queue.",
            labels=["shard", "queue"],
        )
        failed = CounterMetricFamily(
            "shardflow_workflows_failed",
            "Runs that recorded ERROR, by shard and queue.",
            labels=["shard", "queue"],
        )
        for (shard, queue, state), value in sorted(dict(stats.finished_by).items()):
            (completed if state == WorkflowState.SUCCESS else failed).add_metric(
                [shard, queue], value
            )
        yield completed
        yield failed

        plain = [
            ("workflows_resumed", "Suspended workflows resumed (woken).", stats.woken),
            ("workflows_suspended", "Runs that suspended (sleep, recv, child).", stats.suspended),
            ("workflows_dead_lettered", "Workflows dead-lettered.", stats.dead_lettered),
            ("workflows_timed_out", "Workflows cancelled by their timeout.", stats.timed_out),
            ("runs_interrupted", "Runs stopped before their end.", stats.interrupted),
            ("cancels_observed", "Runs interrupted by a cancel.", stats.cancels_observed),
            ("lease_renewals", "Lease renewals (one per shard per beat).", stats.lease_renewals),
            ("leases_lost", "Runs that lost their lease.", stats.leases_lost),
        ]
        for name, doc, value in plain:
            yield CounterMetricFamily(f"shardflow_{name}", doc, value=value)

        yield GaugeMetricFamily(
            "shardflow_workflows_running", "Workflows running in this worker.", value=worker.running
        )
        yield GaugeMetricFamily(
            "shardflow_worker_concurrency", "Run threads of this worker.", value=worker.concurrency
        )
        yield self._step_histogram()
        yield from self._loops()
        yield from self._retention()
        yield from self._shards()

    def _loops(self) -> Iterator[Metric]:
        """Each background loop's liveness (the watchdog behind /healthz)."""
        health = self.worker.health()
        age = GaugeMetricFamily(
            "shardflow_worker_loop_seconds_since_progress",
            "Seconds since a background loop (claim, heartbeat, listener, committer per"
            " shard; cron, retention) last made progress.",
            labels=["loop"],
        )
        errors = CounterMetricFamily(
            "shardflow_worker_loop_errors",
            "Failed iterations of a background loop (it logs, backs off and goes on).",
            labels=["loop"],
        )
        for name, h in sorted(health.items()):
            age.add_metric([name], float(h["seconds_since_progress"]))
            errors.add_metric([name], float(h["errors"]))
        yield age
        yield errors

    def _step_histogram(self) -> HistogramMetricFamily:
        times = self.worker.stats.step_seconds
        family = HistogramMetricFamily(
            "shardflow_step_duration_seconds",
            "Time from a step's first call to its completion (retries included), by shard"
            " and step.",
            labels=["shard", "step"],
        )
        bounds = [f"{b:g}" for b in times.buckets] + ["+Inf"]
        for (shard, step), (counts, total) in sorted(times.snapshot().items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric([shard, step], cumulative, sum_value=total)
        return family

    def _retention(self) -> Iterator[Metric]:
        leader = self.worker.retention
        if leader is None:
            return
        deleted = CounterMetricFamily(
            "shardflow_retention_deleted_workflows",
            "Finished workflows deleted by retention in this process, by shard.",
            labels=["shard"],
        )
        leading = GaugeMetricFamily(
            "shardflow_retention_leader",
            "1 where this process is the shard's retention leader.",
            labels=["shard"],
        )
        for shard in self.worker.shards:
            deleted.add_metric([shard], leader.stats.deleted[shard])
            leading.add_metric([shard], 1 if shard in leader.stats.leading else 0)
        yield deleted
        yield leading

    def _shards(self) -> Iterator[Metric]:
        snapshots = self.snapshots()
        up = GaugeMetricFamily(
            "shardflow_shard_up", "1 if the shard answered the last snapshot.", labels=["shard"]
        )
        depth = GaugeMetricFamily(
            "shardflow_queue_depth",
            "Workflows by shard, queue and state (ENQUEUED, RUNNING, SUSPENDED, IMPORTING).",
            labels=["shard", "queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "shardflow_queue_oldest_seconds",
            "Age of the oldest workflow by shard, queue and state.",
            labels=["shard", "queue", "state"],
        )
        expired = GaugeMetricFamily(
            "shardflow_expired_leases",
            "RUNNING workflows whose lease expired (awaiting recovery), by shard and queue.",
            labels=["shard", "queue"],
        )
        slots = GaugeMetricFamily(
            "shardflow_slots",
            "Slot-ownership rows by shard and state; IMPORTING and MIGRATING_OUT are slots"
            " a rebalance is moving.",
            labels=["shard", "state"],
        )
        for snap in snapshots:
            up.add_metric([snap.shard], 1 if snap.reachable else 0)
            if not snap.reachable:
                continue
            for d in snap.depths:
                depth.add_metric([snap.shard, d.queue, d.state], d.workflows)
                oldest.add_metric([snap.shard, d.queue, d.state], d.oldest_seconds)
                if d.state == WorkflowState.RUNNING:
                    expired.add_metric([snap.shard, d.queue], d.expired_leases)
            for state in SlotState:
                slots.add_metric([snap.shard, state], snap.slots.get(state.value, 0))
        yield from (up, depth, oldest, expired, slots)


# -- rebalance progress -------------------------------------------------------------------


class RebalanceSnapshot(Protocol):
    """What a rebalance reports after each batch (``shardflow.rebalance.Progress``)."""

    @property
    def slots_total(self) -> int: ...
    @property
    def slots_done(self) -> int: ...
    @property
    def slots_in_motion(self) -> int: ...
    @property
    def workflows_moved(self) -> int: ...
    @property
    def workflows_left(self) -> int: ...
    @property
    def rate(self) -> float: ...


class RebalanceProgressCollector:
    """Gauges for a running rebalance; pass :meth:`update` as its progress hook."""

    def __init__(self) -> None:
        self._last: RebalanceSnapshot | None = None

    def update(self, progress: RebalanceSnapshot) -> None:
        self._last = progress

    def collect(self) -> Iterator[Metric]:
        last = self._last
        if last is None:
            return
        values = (
            ("slots_total", "Slots the plan moves.", last.slots_total),
            ("slots_done", "Slots settled on their target.", last.slots_done),
            ("slots_in_motion", "Slots being moved now.", last.slots_in_motion),
            ("workflows_moved", "Workflows moved so far.", last.workflows_moved),
            ("workflows_left", "Workflows still to move (estimate).", last.workflows_left),
            ("rate", "Workflows moved per second (recent).", last.rate),
        )
        for name, doc, value in values:
            yield GaugeMetricFamily(f"shardflow_rebalance_{name}", doc, value=value)
