"""Worker processes: per-shard claim loops, a thread per running workflow, one heartbeat.

A worker claims from each of its shards in batches (``FOR UPDATE SKIP LOCKED``), runs the
claimed workflows on a thread pool of ``concurrency`` threads, and renews the leases of
everything it runs with one statement per shard per heartbeat. Any worker recovers
workflows whose lease expired, so a crashed worker needs no restart and no coordinator.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from shardflow.config.model import QueueConfig
from shardflow.engine.batcher import GroupWriter
from shardflow.engine.records import Claim
from shardflow.engine.retention import RetentionLeader
from shardflow.engine.runner import WorkflowRun, execute
from shardflow.engine.schedules import Scheduler, collect
from shardflow.engine.states import WorkflowState
from shardflow.engine.timings import StepTimes
from shardflow.errors import ShardflowError, ShardUnavailable
from shardflow.router.slotmap import quotas

if TYPE_CHECKING:
    from shardflow.engine.app import App
    from shardflow.engine.cluster import Cluster

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker keeps; tests and metrics read them."""

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
    # The same, per (shard, queue) and per (shard, queue, final state), for metrics.
    claimed_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    recovered_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    finished_by: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    step_seconds: StepTimes = field(default_factory=StepTimes)


class Worker:
    """Runs the workflows of ``app`` from the shards of ``cluster``."""

    def __init__(
        self,
        cluster: Cluster,
        app: App,
        *,
        shards: Sequence[str] | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        poll_interval_seconds: float | None = None,
        claim_batch: int | None = None,
        max_recoveries: int | None = None,
        worker_id: str | None = None,
        retention: bool = True,
    ) -> None:
        cfg = cluster.config.worker
        self.cluster = cluster
        self.app = app
        self.shards = list(shards) if shards else list(cluster.config.shard_names)
        unknown = [s for s in self.shards if s not in cluster.config.shard_names]
        if unknown:
            raise ShardflowError(f"unknown shard(s) {unknown}; known: {cluster.config.shard_names}")
        self.concurrency = concurrency or cfg.concurrency
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

        self._names = sorted(app.workflows)
        self._lock = threading.Condition()
        self._running: dict[str, WorkflowRun] = {}
        self._per_queue: Counter[str] = Counter()
        self._reserved = 0
        self._stopping = threading.Event()
        # One wake-up flag per shard's claim loop: set by notifications and finished runs.
        self._wake = {shard: threading.Event() for shard in self.shards}
        self._notified = {shard: threading.Event() for shard in self.shards}
        # A finished run wakes the claim loops only once this many threads are free, so
        # that claims come in batches rather than one per finished workflow.
        self._wake_threshold = max(1, min(self.claim_batch, self.concurrency) // 4)
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._shares = self._queue_shares()
        self.scheduler: Scheduler | None = None
        # Deletes expired workflows where this worker wins the shard's leader lock.
        self.retention: RetentionLeader | None = None
        self._run_retention = retention
        self._writer: GroupWriter | None = None

    # -- configuration --------------------------------------------------------------

    def _queues(self, names: Sequence[str] | None) -> list[QueueConfig]:
        declared = self.cluster.config.queues
        if names is None:
            wanted = set(declared) | {wf.queue for wf in self.app.workflows.values()}
        else:
            wanted = set(names)
        return [declared.get(n) or QueueConfig(n) for n in sorted(wanted)]

    def _queue_shares(self) -> dict[str, dict[str, tuple[int | None, tuple[int, float] | None]]]:
        """Each queue's global concurrency and rate limit, split over shards by weight.

        A shard's share is its quota of the limit (largest remainder), at least 1 so that
        no shard's workflows starve; see docs/queues.md.
        """
        shards = self.cluster.config.shards
        weights = [(s.name, s.weight) for s in shards]
        out: dict[str, dict[str, tuple[int | None, tuple[int, float] | None]]] = {}
        for q in self.queues:
            per: dict[str, tuple[int | None, tuple[int, float] | None]] = {}
            conc = quotas(weights, q.concurrency) if q.concurrency else None
            rate = quotas(weights, q.rate_limit.limit) if q.rate_limit else None
            for s in shards:
                g = max(conc.get(s.name, 0), 1) if conc is not None else None
                r = (
                    (max(rate.get(s.name, 0), 1), q.rate_limit.period_seconds)
                    if rate is not None and q.rate_limit is not None
                    else None
                )
                per[s.name] = (g, r)
            out[q.name] = per
        return out

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._executor is not None:
            raise ShardflowError("worker already started")
        if not self._names:
            raise ShardflowError(f"app {self.app.name!r} has no workflows to run")
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="shardflow-run")
        self._writer = GroupWriter(self.cluster.store, self.shards)
        for shard in self.shards:
            t = threading.Thread(
                target=self._claim_loop, args=(shard,), name=f"shardflow-claim-{shard}", daemon=True
            )
            self._threads.append(t)
            self._threads.append(
                threading.Thread(
                    target=self._listen_loop,
                    args=(shard,),
                    name=f"shardflow-listen-{shard}",
                    daemon=True,
                )
            )
        self._threads.append(
            threading.Thread(target=self._heartbeat_loop, name="shardflow-heartbeat", daemon=True)
        )
        schedules = collect(self.app, self.cluster)
        if schedules:
            self.scheduler = Scheduler(self.cluster, schedules, self._stopping)
            self._threads.append(
                threading.Thread(target=self.scheduler.run, name="shardflow-cron", daemon=True)
            )
        policy = self.cluster.config.retention
        if policy is not None and self._run_retention:
            self.retention = RetentionLeader(self.cluster, policy, self.shards, self._stopping)
            self._threads.append(
                threading.Thread(target=self.retention.run, name="shardflow-retention", daemon=True)
            )
        for t in self._threads:
            t.start()
        log.info(
            "worker %s started: shards=%s concurrency=%d queues=%s",
            self.worker_id,
            ",".join(self.shards),
            self.concurrency,
            ",".join(q.name for q in self.queues),
        )

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop claiming, let running workflows finish for ``grace_seconds`` (default: one
        lease), then hand back the rest so any worker can claim them at once."""
        grace = self.lease_seconds if grace_seconds is None else grace_seconds
        self._stopping.set()
        self._wake_all()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._lock.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
            leftover = list(self._running.values())
        for run in leftover:
            run.interrupt("worker stopping")
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for run in leftover:
            by_shard.setdefault(run.shard, []).append((run.workflow_id, run.attempt))
        for shard, runs in by_shard.items():
            try:
                released = self.cluster.store.release(shard, runs)
                log.info("released %d workflow(s) on %s", len(released), shard)
            except ShardUnavailable as exc:
                log.warning("could not release workflows on %s: %s", shard, exc)
        for t in self._threads:
            t.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._writer is not None:
            self._writer.close()
        log.info("worker %s stopped", self.worker_id)

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received signal %d, stopping", signum)
            done.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            done.wait()
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def alive(self) -> bool:
        """Started, and every background thread still runs (or it is stopping on purpose):
        what a liveness probe asks."""
        if self._executor is None:
            return False
        threads = list(self._threads)
        return self._stopping.is_set() or (bool(threads) and all(t.is_alive() for t in threads))

    def ready(self) -> bool:
        """Alive and taking work: what a readiness probe asks."""
        return self.alive() and not self._stopping.is_set()

    # -- claiming -------------------------------------------------------------------------

    def _reserve(self, queue: QueueConfig | None, want: int) -> int:
        with self._lock:
            free = self.concurrency - len(self._running) - self._reserved
            n = min(free, want)
            if queue is not None and queue.worker_concurrency is not None:
                n = min(n, queue.worker_concurrency - self._per_queue[queue.name])
            n = max(n, 0)
            self._reserved += n
            if queue is not None:
                self._per_queue[queue.name] += n
            return n

    def _unreserve(self, queue: QueueConfig | None, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._reserved -= n
            if queue is not None:
                self._per_queue[queue.name] -= n
            self._lock.notify_all()

    def _claim_loop(self, shard: str) -> None:
        next_recovery = 0.0
        next_wakeable = 0.0
        backoff = self.poll_interval
        while not self._stopping.is_set():
            claimed = 0
            try:
                now = time.monotonic()
                if now >= next_recovery:
                    claimed += self._claim_expired(shard)
                    next_recovery = now + self.heartbeat_seconds
                # Wake-ups are due on a timer, or announced (a message, a child's end):
                # look for them once per poll tick or after a notification.
                if now >= next_wakeable or self._notified[shard].is_set():
                    self._notified[shard].clear()
                    claimed += self._claim_wakeable(shard)
                    next_wakeable = now + self.poll_interval
                for queue in self.queues:
                    if self._stopping.is_set():
                        break
                    claimed += self._claim_queue(shard, queue)
                backoff = self.poll_interval
            except ShardUnavailable as exc:
                log.warning("claim on %s failed: %s", shard, exc)
                backoff = min(backoff * 2, 5.0)
                self._stopping.wait(backoff)
                continue
            except Exception:
                log.exception("claim loop on %s failed", shard)
                self._stopping.wait(backoff)
                continue
            if claimed == 0:
                # Nothing to do, or no capacity: sleep until a run ends or the poll tick.
                self._wake[shard].wait(self.poll_interval)
                self._wake[shard].clear()

    def _claim_queue(self, shard: str, queue: QueueConfig) -> int:
        n = self._reserve(queue, self.claim_batch)
        if n == 0:
            return 0
        global_limit, rate_limit = self._shares[queue.name][shard]
        claims: list[Claim] = []
        try:
            claims = self.cluster.store.claim_enqueued(
                shard,
                queue=queue.name,
                names=self._names,
                owner=self.worker_id,
                lease_seconds=self.lease_seconds,
                limit=n,
                global_limit=global_limit,
                rate_limit=rate_limit,
            )
        finally:
            self._unreserve(queue, n - len(claims))
        with self._lock:  # several claim threads count here
            self.stats.claimed += len(claims)
            self.stats.claimed_by[(shard, queue.name)] += len(claims)
        for claim in claims:
            self._launch(claim, queue, reserved=True)
        return len(claims)

    def _claim_groups(self) -> list[tuple[QueueConfig | None, list[str]]]:
        """Queues to claim resumed work for: the queues without a per-worker limit
        together, then each limited queue alone, so that its limit holds exactly."""
        unlimited = [q.name for q in self.queues if q.worker_concurrency is None]
        groups: list[tuple[QueueConfig | None, list[str]]] = (
            [(None, unlimited)] if unlimited else []
        )
        groups.extend((q, [q.name]) for q in self.queues if q.worker_concurrency is not None)
        return groups

    def _claim_wakeable(self, shard: str) -> int:
        """Resume suspended workflows whose wait is over (they replay to the wait)."""
        return self._claim_resumed(shard, self.cluster.store.claim_wakeable, recovery=False)

    def _claim_expired(self, shard: str) -> int:
        """Crash recovery: claim workflows whose lease expired (dead-letter repeaters)."""
        claim_fn = functools.partial(
            self.cluster.store.claim_expired, max_recoveries=self.max_recoveries
        )
        return self._claim_resumed(shard, claim_fn, recovery=True)

    def _claim_resumed(
        self, shard: str, claim_fn: Callable[..., list[Claim]], *, recovery: bool
    ) -> int:
        """Claim work that was already started (woken or recovered), per queue group."""
        total = 0
        for queue, names in self._claim_groups():
            n = self._reserve(queue, self.claim_batch)
            if n == 0:
                continue
            claims: list[Claim] = []
            try:
                claims = claim_fn(
                    shard,
                    names=self._names,
                    queues=names,
                    owner=self.worker_id,
                    lease_seconds=self.lease_seconds,
                    limit=n,
                )
            finally:
                self._unreserve(queue, n - len(claims))
            for claim in claims:
                if claim.state is WorkflowState.DEAD:
                    with self._lock:
                        self.stats.dead_lettered += 1
                    self._unreserve(queue, 1)
                    log.warning(
                        "workflow %s dead-lettered after %d recoveries",
                        claim.workflow_id,
                        claim.recoveries - 1,
                    )
                    continue
                if recovery:
                    with self._lock:
                        self.stats.recovered += 1
                        self.stats.recovered_by[(shard, claim.queue)] += 1
                    log.info(
                        "recovering %s (attempt %d) on %s", claim.workflow_id, claim.attempt, shard
                    )
                else:
                    with self._lock:
                        self.stats.woken += 1
                self._launch(claim, queue, reserved=True)
            total += len(claims)
        return total

    def _launch(self, claim: Claim, queue: QueueConfig | None, *, reserved: bool) -> None:
        run = WorkflowRun(claim, self.cluster.store, self.lease_seconds, self.cluster, self._writer)
        run.observe_step = self.stats.step_seconds.observe
        with self._lock:
            self._running[claim.workflow_id] = run
            if reserved:
                self._reserved -= 1
        assert self._executor is not None
        self._executor.submit(self._execute, run, queue)

    def _execute(self, run: WorkflowRun, queue: QueueConfig | None) -> None:
        state: WorkflowState | None = None
        try:
            state = execute(run, self.app)
        except Exception:
            log.exception("unexpected failure running %s", run.workflow_id)
        finally:
            with self._lock:
                # A newer run of the same workflow (recovered here) keeps its entry.
                if self._running.get(run.workflow_id) is run:
                    del self._running[run.workflow_id]
                if queue is not None:
                    self._per_queue[queue.name] -= 1
                if state is None:
                    self.stats.interrupted += 1
                elif state is WorkflowState.SUSPENDED:
                    self.stats.suspended += 1
                else:
                    self.stats.finished[state.value] += 1
                    self.stats.finished_by[(run.shard, run.claim.queue, state.value)] += 1
                self._lock.notify_all()
                free = self.concurrency - len(self._running) - self._reserved
                limited = queue is not None and queue.worker_concurrency is not None
            if free >= self._wake_threshold or limited or not self._running:
                self._wake_all()

    # -- notifications ----------------------------------------------------------------------

    def _listen_loop(self, shard: str) -> None:
        """Wake the claim loop when work arrives; interrupt runs that were cancelled.

        Notifications only make things prompt: without them, polling and heartbeats
        still find new work and cancellations.
        """
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                for channel, payload in self.cluster.store.listen(shard, 0.25, self._stopping):
                    backoff = 0.5
                    if channel == "shardflow_work":
                        self._notified[shard].set()
                        self._wake[shard].set()
                    elif channel == "shardflow_cancel":
                        self._on_cancel(payload)
                    elif channel == "shardflow_message":
                        self._on_message(payload)
            except ShardUnavailable as exc:
                log.debug("listener on %s: %s", shard, exc)
            except Exception:
                log.exception("listener on %s failed", shard)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _on_cancel(self, workflow_id: str) -> None:
        with self._lock:
            run = self._running.get(workflow_id)
        if run is not None and not run.interrupted.is_set():
            with self._lock:
                self.stats.cancels_observed += 1
            run.interrupt("cancelled")

    def _wake_all(self) -> None:
        for event in self._wake.values():
            event.set()

    def _on_message(self, workflow_id: str) -> None:
        with self._lock:
            run = self._running.get(workflow_id)
        if run is not None:
            run.message_arrived.set()

    # -- leases ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_seconds):
            self.renew_leases()
            self.expire_deadlines()

    def expire_deadlines(self) -> None:
        """Cancel workflows past their timeout on this worker's shards, with children."""
        for shard in self.shards:
            try:
                expired = self.cluster.store.expire_deadlines(shard)
            except ShardUnavailable:
                continue
            for workflow_id in expired:
                self.stats.timed_out += 1
                log.info("workflow %s timed out", workflow_id)
                try:
                    self.cluster.cancel_children(workflow_id, "timeout")
                except ShardflowError as exc:
                    log.warning("could not cancel children of %s: %s", workflow_id, exc)

    def renew_leases(self) -> None:
        """Renew every lease this worker holds: one statement per shard."""
        with self._lock:
            runs = list(self._running.values())
        by_shard: dict[str, list[WorkflowRun]] = {}
        for run in runs:
            by_shard.setdefault(run.shard, []).append(run)
        for shard, shard_runs in by_shard.items():
            started = time.monotonic()
            try:
                renewed = self.cluster.store.renew_leases(
                    shard,
                    owner=self.worker_id,
                    workflow_ids=[r.workflow_id for r in shard_runs],
                    lease_seconds=self.lease_seconds,
                )
            except ShardUnavailable as exc:
                log.warning("lease renewal on %s failed: %s", shard, exc)
                continue
            self.stats.lease_renewals += 1
            for run in shard_runs:
                if run.workflow_id in renewed:
                    run.lease_renewed(started)
                elif not run.interrupted.is_set():
                    # Cancelled, or finished between snapshot and renewal, or stolen.
                    self.stats.leases_lost += 1
                    run.interrupt("lease lost (cancelled or claimed elsewhere)")
