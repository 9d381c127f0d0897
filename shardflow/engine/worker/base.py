"""A worker's configuration and the state its loops share: counters, the running set and
the thread-capacity accounting (reservations), the wake-up flags, the event hub."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardflow.config.model import QueueConfig
from shardflow.engine.batcher import GroupWriter
from shardflow.engine.presence import Presence
from shardflow.engine.retention import RetentionLeader
from shardflow.engine.runner import WorkflowRun
from shardflow.engine.schedules import Scheduler
from shardflow.engine.signals import StopEvent
from shardflow.engine.timings import StepTimes
from shardflow.engine.versions import app_version
from shardflow.engine.worker.aio import RunLoop
from shardflow.engine.worker.events import WorkerEvents
from shardflow.engine.worker.home_calls import HomeCalls
from shardflow.errors import ShardflowError
from shardflow.retry import Failure, classify, first_line
from shardflow.router.hashing import home_shard
from shardflow.router.slotmap import quotas

if TYPE_CHECKING:
    from shardflow.engine.app import App
    from shardflow.engine.cluster import Cluster

# One logger for the whole worker, the name docs/operations.md lists.
log = logging.getLogger("shardflow.engine.worker")

# How many async workflows a worker has in flight at most, by default (they hold no thread
# while they await), and the threads that make their blocking calls (checkpoints, clients).
DEFAULT_ASYNC_CONCURRENCY = 1000
ASYNC_CALL_THREADS = 256

# A queue's share of its rate limit on one shard: (starts, period seconds).
Share = tuple[int, float] | None


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker keeps; metrics and the periodic summary read them."""

    claimed: int = 0
    recovered: int = 0
    dead_lettered: int = 0
    finished: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0
    lease_renewals: int = 0
    leases_lost: int = 0
    cancels_observed: int = 0
    woken: int = 0
    suspended: int = 0
    timed_out: int = 0
    released: int = 0
    loop_errors: Counter[str] = field(default_factory=Counter)
    # The same, per (shard, queue) and per (shard, queue, final state), for metrics.
    claimed_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    recovered_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    finished_by: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    step_seconds: StepTimes = field(default_factory=StepTimes)


def queue_shares(cluster: Cluster, queues: Sequence[QueueConfig]) -> dict[str, dict[str, Share]]:
    """Each queue's rate limit, split over shards by weight.

    A shard's share is its quota of the limit (largest remainder), at least 1 so that
    no shard's workflows starve; see docs/queues.md. (A queue-wide ``concurrency`` is
    not split: its queue leases live on the queue's home shard.)
    """
    shards = cluster.config.shards
    weights = [(s.name, s.weight) for s in shards]
    out: dict[str, dict[str, Share]] = {}
    for q in queues:
        rate = quotas(weights, q.rate_limit.limit) if q.rate_limit else None
        out[q.name] = {
            s.name: (
                (max(rate.get(s.name, 0), 1), q.rate_limit.period_seconds)
                if rate is not None and q.rate_limit is not None
                else None
            )
            for s in shards
        }
    return out


class WorkerBase:
    """Configuration and shared state of a :class:`~shardflow.engine.worker.Worker`."""

    def __init__(
        self,
        cluster: Cluster,
        app: App,
        *,
        shards: Sequence[str] | None = None,
        concurrency: int | None = None,
        async_concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        poll_interval_seconds: float | None = None,
        claim_batch: int | None = None,
        max_recoveries: int | None = None,
        worker_id: str | None = None,
        retention: bool = True,
        version: str | None = None,
    ) -> None:
        cfg = cluster.config.worker
        self.cluster = cluster
        self.app = app
        # Recorded on every attempt this worker starts (docs/upgrades.md).
        self.app_version = app_version(app, version or cfg.app_version)
        self.shards = list(shards) if shards else list(cluster.config.shard_names)
        unknown = [s for s in self.shards if s not in cluster.config.shard_names]
        if unknown:
            raise ShardflowError(f"unknown shard(s) {unknown}; known: {cluster.config.shard_names}")
        self.concurrency = concurrency or cfg.concurrency
        # In-flight async workflows: they run on one event loop thread, not the pool.
        self.async_concurrency = async_concurrency or DEFAULT_ASYNC_CONCURRENCY
        self.lease_seconds = lease_seconds or cfg.lease_seconds
        self.heartbeat_seconds = heartbeat_seconds or min(
            cfg.heartbeat_seconds, self.lease_seconds / 3
        )
        self.poll_interval = poll_interval_seconds or cfg.poll_interval_seconds
        self.claim_batch = claim_batch or cfg.claim_batch
        self.max_recoveries = max_recoveries or cfg.max_recoveries
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        self.queues = self._queues(queues)
        self.stats = WorkerStats()
        #: Claims, renewals, checkpoints, ends: ``worker.events.subscribe(callback)``.
        self.events = WorkerEvents()

        self._names = sorted(app.workflows)
        # Claims are made per kind, each within its own capacity (False: sync, True: async).
        self._kinds = [
            (aio, names)
            for aio in (False, True)
            if (names := sorted(n for n, wf in app.workflows.items() if wf.is_async is aio))
        ]
        self._active = {False: 0, True: 0}
        self._reserved_by = {False: 0, True: 0}
        self._aio = RunLoop(ASYNC_CALL_THREADS)
        self._lock = threading.Condition()
        self._running: dict[str, WorkflowRun] = {}
        self._per_queue: Counter[str] = Counter()
        self._stopping = StopEvent()
        # Set once every run has ended: the heartbeats go on until then (see stop()).
        self._closed = threading.Event()
        self._force = threading.Event()
        # The runs a forced stop gave up waiting for (their threads may still be inside a
        # step): the process should exit, and they are recovered after their lease.
        self.abandoned: list[str] = []
        self._started = threading.Event()
        # Each background loop's last sign of progress (monotonic), for health().
        self._progress: dict[str, float] = {}
        # A claim in flight on one shard reserves at most this many threads, so that a
        # shard whose claim hangs cannot hold the whole free capacity.
        self._claim_share = {
            aio: max(1, -(-limit // max(len(self.shards), 1)))
            for aio, limit in ((False, self.concurrency), (True, self.async_concurrency))
        }
        # A loop silent for longer than this is reported as stalled (health()).
        self.stall_seconds = max(60.0, 3 * self.lease_seconds)
        # One wake-up flag per shard's claim loop: set by notifications and finished runs.
        self._wake = {shard: threading.Event() for shard in self.shards}
        self._notified = {shard: threading.Event() for shard in self.shards}
        # A finished run wakes the claim loops that were held back by capacity (of its
        # kind: False sync, True async; the shards in _starved) since their last wake-up,
        # once this many threads are free, so that claims come in batches rather than one
        # per finished workflow. (Waking them after every run, at light load, cost a
        # claim per shard and kind per workflow, on the path of the next submit.)
        self._wake_threshold = max(1, min(self.claim_batch, self.concurrency) // 4)
        # Per (shard, queue): the kind (async or not) whose claim last found work there.
        self._last_kind: dict[tuple[str, str], bool] = {}
        self._starved: dict[bool, set[str]] = {False: set(), True: set()}
        # Per claim loop: whether its last pass got all it asked for somewhere (there may
        # be more: it goes round again at once) or not (it waits to be told, or polls).
        self._claimed_full = {shard: False for shard in self.shards}
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._shares = queue_shares(cluster, self.queues)
        # Queue-wide concurrency (worker/queue_leases.py): each limited queue's home shard,
        # the queue leases held there by this worker's runs, and those to delete.
        shard_names = cluster.config.shard_names
        seed = cluster.config.hash.seed
        self._homes = {
            q.name: home_shard(q.name, shard_names, seed) for q in self.queues if q.concurrency
        }
        self._held: dict[str, dict[str, WorkflowRun]] = {h: {} for h in self._homes.values()}
        self._unheld: dict[str, list[str]] = {h: [] for h in self._homes.values()}
        self._leases_due = {h: threading.Event() for h in self._homes.values()}
        self._home_down_until: dict[str, float] = {}
        self._home_calls = {h: HomeCalls(h) for h in set(self._homes.values())}
        self.scheduler: Scheduler | None = None
        # Deletes expired workflows where this worker wins the shard's leader lock.
        self.retention: RetentionLeader | None = None
        self._run_retention = retention
        self._writer: GroupWriter | None = None

    # Registry row per shard, start-up banner, periodic summary (engine/presence.py); made
    # by Worker.__init__, which is what Presence reports on.
    presence: Presence

    def _queues(self, names: Sequence[str] | None) -> list[QueueConfig]:
        declared = self.cluster.config.queues
        if names is None:
            wanted = set(declared) | {wf.queue for wf in self.app.workflows.values()}
        else:
            wanted = set(names)
        return [declared.get(n) or QueueConfig(n) for n in sorted(wanted)]

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # -- thread capacity ------------------------------------------------------------------

    def _free(self, aio: bool) -> int:
        """Free capacity of one kind (sync: threads; async: in-flight runs); under _lock."""
        limit = self.async_concurrency if aio else self.concurrency
        return limit - self._active[aio] - self._reserved_by[aio]

    def _reserve(self, queue: QueueConfig | None, want: int, aio: bool, shard: str) -> int:
        """Reserve up to ``want`` places of kind ``aio`` for a claim on ``shard`` (fewer:
        that claim loop is starved, and is woken when places come free)."""
        with self._lock:
            n = min(self._free(aio), want)
            if queue is not None and queue.worker_concurrency is not None:
                n = min(n, queue.worker_concurrency - self._per_queue[queue.name])
            n = max(n, 0)
            if n < want:
                self._starved[aio].add(shard)
            self._reserved_by[aio] += n
            if queue is not None:
                self._per_queue[queue.name] += n
            return n

    def _unreserve(self, queue: QueueConfig | None, n: int, aio: bool, shard: str) -> None:
        """Give back ``n`` places ``shard``'s claim reserved and did not use. They may be
        what another shard's claim loop was refused meanwhile: that loop is woken (only
        those refused, so that loops do not wake each other in turn at idle)."""
        if n <= 0:
            return
        with self._lock:
            self._reserved_by[aio] -= n
            if queue is not None:
                self._per_queue[queue.name] -= n
            self._lock.notify_all()
            others = self._starved[aio] - {shard}
            self._starved[aio] &= {shard}
        for other in others:
            self._wake[other].set()

    def _wake_all(self) -> None:
        for event in self._wake.values():
            event.set()

    def _loop_error(self, name: str, exc: Exception) -> None:
        """Log one failed iteration of a loop at the level its kind deserves."""
        self.stats.loop_errors[name] += 1
        kind = classify(exc)
        if kind is Failure.BUG:
            log.error("%s failed", name, exc_info=exc)
        else:
            log.warning("%s: %s (%s)", name, first_line(exc), kind.value)
