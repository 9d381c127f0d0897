"""Worker processes: per-shard claim, heartbeat, listener and commit threads, and a
thread per running workflow.

A worker claims from each of its shards in batches (``FOR UPDATE SKIP LOCKED``), runs the
claimed workflows on a thread pool of ``concurrency`` threads, and renews the leases of
everything it runs with one statement per shard per heartbeat. Any worker recovers
workflows whose lease expired, so a crashed worker needs no restart and no coordinator.

Shards are isolated from each other: each has its own claim loop, heartbeat, listener and
committer, and one claim in flight holds at most a fair share of the free threads, so a
shard that hangs (frozen server, DDL lock) costs only the workflows that live on it. No
loop dies of an error: each logs it, backs off and goes on, and records its progress for
:meth:`Worker.health`.
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
from typing import TYPE_CHECKING, Any

from shardflow.config.model import QueueConfig
from shardflow.engine.batcher import GroupWriter
from shardflow.engine.presence import Presence
from shardflow.engine.records import Claim
from shardflow.engine.retention import RetentionLeader
from shardflow.engine.runner import WorkflowRun, execute
from shardflow.engine.schedules import Scheduler, collect
from shardflow.engine.states import WorkflowState
from shardflow.engine.timings import StepTimes
from shardflow.errors import ShardflowError
from shardflow.retry import Backoff, Failure, classify, first_line
from shardflow.router.slotmap import quotas

if TYPE_CHECKING:
    from shardflow.engine.app import App
    from shardflow.engine.cluster import Cluster

log = logging.getLogger(__name__)

# Why stop() interrupts a run: such a run hands its workflow back when its thread stops.
_STOPPING = "worker stopping"


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
    released: int = 0
    loop_errors: Counter[str] = field(default_factory=Counter)
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
        # Set once every run has ended: the heartbeats go on until then (see stop()).
        self._closed = threading.Event()
        self._force = threading.Event()
        self._started = threading.Event()
        # Each background loop's last sign of progress (monotonic), for health().
        self._progress: dict[str, float] = {}
        # A claim in flight on one shard reserves at most this many threads, so that a
        # shard whose claim hangs cannot hold the whole free capacity.
        self._claim_share = max(1, -(-self.concurrency // max(len(self.shards), 1)))
        # A loop silent for longer than this is reported as stalled (health()).
        self.stall_seconds = max(60.0, 3 * self.lease_seconds)
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
        # Registry row per shard, start-up banner, periodic summary (engine/presence.py).
        self.presence = Presence(self)

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
        # A run waits for its checkpoint's commit at most a third of a lease: past that
        # its outcome is unknown and the run stops (the lease decides who goes on).
        self._writer = GroupWriter(
            self.cluster.store, self.shards, answer_timeout=self.lease_seconds / 3
        )
        for shard in self.shards:
            for kind, target in (
                ("claim", self._claim_loop),
                ("listen", self._listen_loop),
                ("heartbeat", self._heartbeat_loop),
            ):
                self._threads.append(
                    threading.Thread(
                        target=self._guarded,
                        args=(f"{kind}-{shard}", target, shard),
                        name=f"shardflow-{kind}-{shard}",
                        daemon=True,
                    )
                )
        schedules = collect(self.app, self.cluster)
        if schedules:
            self.scheduler = Scheduler(self.cluster, schedules, self._stopping)
            self._threads.append(
                threading.Thread(
                    target=self._guarded,
                    args=("cron", self.scheduler.run),
                    name="shardflow-cron",
                    daemon=True,
                )
            )
        policy = self.cluster.config.retention
        if policy is not None and self._run_retention:
            self.retention = RetentionLeader(self.cluster, policy, self.shards, self._stopping)
            self._threads.append(
                threading.Thread(
                    target=self._guarded,
                    args=("retention", self.retention.run),
                    name="shardflow-retention",
                    daemon=True,
                )
            )
        for t in self._threads:
            t.start()
        self._started.set()
        self.presence.start()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop gracefully: claim nothing more, let running workflows finish for
        ``grace_seconds`` (default: one lease), then interrupt the rest at their next step
        boundary and hand each back (ENQUEUED, for any worker) once its thread has stopped.

        Leases are renewed until every run's thread has returned, so a step still
        executing here is never claimed and run a second time elsewhere meanwhile. A step
        that does not return keeps the worker waiting (logged every few seconds); call
        :meth:`force_stop` (the CLI does on a second SIGTERM/SIGINT) to give up waiting:
        the process should then exit, and those workflows are recovered after their lease.
        """
        grace = self.lease_seconds if grace_seconds is None else grace_seconds
        self._stopping.set()
        self._wake_all()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._running and time.monotonic() < deadline and not self._force.is_set():
                self._lock.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
            leftover = list(self._running.values())
        for run in leftover:
            run.interrupt(_STOPPING)
        next_log = time.monotonic() + 5.0
        with self._lock:
            while self._running and not self._force.is_set():
                self._lock.wait(0.1)
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + 5.0
                    log.warning(
                        "worker %s stopping: waiting for %d run(s) still inside a step: %s",
                        self.worker_id,
                        len(self._running),
                        ", ".join(sorted(self._running)[:5]),
                    )
            abandoned = list(self._running)
        if abandoned:
            log.warning(
                "worker %s stopped waiting for %d run(s); they are recovered after their lease",
                self.worker_id,
                len(abandoned),
            )
        self._closed.set()
        for t in self._threads:
            t.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._writer is not None:
            self._writer.close()
        log.info("worker %s stopped", self.worker_id)

    def force_stop(self) -> None:
        """Make a :meth:`stop` in progress return without waiting for running steps."""
        self._force.set()
        with self._lock:
            self._lock.notify_all()

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if done.is_set():
                log.warning("received signal %d again, not waiting for running steps", signum)
                self.force_stop()
                return
            log.info("received signal %d, stopping (again to stop at once)", signum)
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
        """Started, and every background loop's thread still runs (or it is stopping on
        purpose): what a liveness probe asks.

        A loop that is stalled (no progress for ``stall_seconds``, see :meth:`health`) is
        reported, not counted here: it is almost always blocked on an unresponsive shard,
        and restarting the worker would not help that shard while it would interrupt the
        work of every healthy one.
        """
        if not self._started.is_set():
            return False
        if self._stopping.is_set():
            return True
        return all(h["alive"] for h in self.health().values())

    def health(self) -> dict[str, dict[str, Any]]:
        """Per background loop: whether its thread runs, seconds since its last progress,
        whether that is longer than ``stall_seconds``, and its error count."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for t in self._threads:
            name = t.name.removeprefix("shardflow-")
            age = now - self._progress.get(name, now)
            # cron and retention sleep until their next tick or round, which may be long:
            # only the per-shard loops, which beat every poll or heartbeat, can stall.
            periodic = name.split("-")[0] in ("claim", "listen", "heartbeat")
            out[name] = {
                "alive": t.is_alive(),
                "seconds_since_progress": round(age, 1),
                "stalled": periodic and age > self.stall_seconds,
                "errors": self.stats.loop_errors[name],
            }
        if self._writer is not None:
            for shard, committer in self._writer.committers.items():
                age = now - committer.last_progress
                out[f"commit-{shard}"] = {
                    "alive": committer.alive() or self._closed.is_set(),
                    "seconds_since_progress": round(age, 1),
                    "stalled": age > self.stall_seconds,
                    "errors": committer.errors,
                }
        return out

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

    # -- background loops ---------------------------------------------------------------

    def _guarded(self, name: str, loop: Callable[..., None], *args: Any) -> None:
        """Run ``loop`` until the worker stops; if it raises, log, back off and run it
        again. A background loop never dies silently."""
        backoff = Backoff(0.5, 30.0)
        while not self._closed.is_set():
            self._progress[name] = time.monotonic()
            try:
                loop(*args)
            except Exception:
                self.stats.loop_errors[name] += 1
                log.exception("background loop %s failed; restarting it", name)
            if self._stopping.is_set() and name.split("-")[0] != "heartbeat":
                return
            if self._closed.wait(backoff.next()):
                return

    def _loop_error(self, name: str, exc: Exception) -> None:
        """Log one failed iteration of a loop at the level its kind deserves."""
        self.stats.loop_errors[name] += 1
        kind = classify(exc)
        if kind is Failure.BUG:
            log.error("%s failed", name, exc_info=exc)
        else:
            log.warning("%s: %s (%s)", name, first_line(exc), kind.value)

    def _claim_loop(self, shard: str) -> None:
        name = f"claim-{shard}"
        next_recovery = 0.0
        next_wakeable = 0.0
        backoff = Backoff(self.poll_interval, 5.0)
        while not self._stopping.is_set():
            self._progress[name] = time.monotonic()
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
                    self.cluster.store.promote_delayed(shard)
                    next_wakeable = now + self.poll_interval
                for queue in self.queues:
                    if self._stopping.is_set():
                        break
                    claimed += self._claim_queue(shard, queue)
                backoff.reset()
            except Exception as exc:
                self._loop_error(name, exc)
                self._stopping.wait(backoff.next())
                continue
            if claimed == 0:
                # Nothing to do, or no capacity: sleep until a run ends or the poll tick.
                self._wake[shard].wait(self.poll_interval)
                self._wake[shard].clear()

    def _claim_queue(self, shard: str, queue: QueueConfig) -> int:
        n = self._reserve(queue, min(self.claim_batch, self._claim_share))
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
            n = self._reserve(queue, min(self.claim_batch, self._claim_share))
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
                    if claim.parent_id:
                        self._wake_parent(claim.parent_id)
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
            if state is None and run.interrupt_reason == _STOPPING:
                self._release(run)
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

    def _wake_parent(self, parent_id: str) -> None:
        try:
            self.cluster.wake(parent_id, wait_for="child")
        except Exception as exc:
            log.info("could not wake parent %s: %s", parent_id, first_line(exc))

    def _release(self, run: WorkflowRun) -> None:
        """Hand back a run stopped by stop(): its thread has returned, so nothing of it
        runs any more, and any worker may claim it at once (fenced on the attempt)."""
        try:
            released = self.cluster.store.release(run.shard, [(run.workflow_id, run.attempt)])
        except Exception as exc:
            log.warning("could not release %s: %s", run.workflow_id, first_line(exc))
            return
        if released:
            with self._lock:
                self.stats.released += 1
            log.info("released %s (attempt %d) on %s", run.workflow_id, run.attempt, run.shard)

    # -- notifications ----------------------------------------------------------------------

    def _listen_loop(self, shard: str) -> None:
        """Wake the claim loop when work arrives; interrupt runs that were cancelled.

        Notifications only make things prompt: without them, polling and heartbeats
        still find new work and cancellations.
        """
        name = f"listen-{shard}"
        backoff = Backoff(0.5, 10.0)
        while not self._stopping.is_set():
            self._progress[name] = time.monotonic()
            try:
                for channel, payload in self.cluster.store.listen(shard, 0.25, self._stopping):
                    self._progress[name] = time.monotonic()
                    backoff.reset()
                    if channel == "shardflow_work":
                        self._notified[shard].set()
                        self._wake[shard].set()
                    elif channel == "shardflow_cancel":
                        self._on_cancel(payload)
                    elif channel == "shardflow_message":
                        self._on_message(payload)
            except Exception as exc:
                self._loop_error(name, exc)
            self._stopping.wait(backoff.next())

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

    def _heartbeat_loop(self, shard: str) -> None:
        """Renew this shard's leases every heartbeat until every run has ended (also while
        stopping), and time out workflows past their deadline. One thread per shard: a
        shard that hangs delays only its own renewals."""
        name = f"heartbeat-{shard}"
        backoff = Backoff(0.2, self.heartbeat_seconds)
        wait = self.heartbeat_seconds
        self.presence.seen(shard)
        while not self._closed.wait(wait):
            self._progress[name] = time.monotonic()
            try:
                self._renew(shard)
                self.presence.seen(shard)
                if not self._stopping.is_set():
                    self._expire(shard)
                wait = self.heartbeat_seconds
                backoff.reset()
            except Exception as exc:
                self._loop_error(name, exc)
                wait = min(backoff.next(), self.heartbeat_seconds)
            self._progress[name] = time.monotonic()
        self.presence.gone(shard)

    def expire_deadlines(self) -> None:
        """Cancel workflows past their timeout on this worker's shards, with children."""
        for shard in self.shards:
            try:
                self._expire(shard)
            except Exception as exc:
                self._loop_error(f"heartbeat-{shard}", exc)

    def _expire(self, shard: str) -> None:
        for workflow_id in self.cluster.store.expire_deadlines(shard):
            with self._lock:
                self.stats.timed_out += 1
            log.info("workflow %s timed out", workflow_id)
            try:
                self.cluster.cancel_children(workflow_id, "timeout")
                self.cluster.wake_parent_of(workflow_id)
            except ShardflowError as exc:
                log.warning("could not cancel children of %s: %s", workflow_id, exc)

    def renew_leases(self) -> None:
        """Renew every lease this worker holds: one statement per shard."""
        for shard in self.shards:
            try:
                self._renew(shard)
            except Exception as exc:
                self._loop_error(f"heartbeat-{shard}", exc)

    def _renew(self, shard: str) -> None:
        with self._lock:
            runs = [r for r in self._running.values() if r.shard == shard]
        if not runs:
            return
        started = time.monotonic()
        renewed = self.cluster.store.renew_leases(
            shard,
            owner=self.worker_id,
            workflow_ids=[r.workflow_id for r in runs],
            lease_seconds=self.lease_seconds,
        )
        with self._lock:
            self.stats.lease_renewals += 1
        for run in runs:
            if run.workflow_id in renewed:
                run.lease_renewed(started)
            elif not run.interrupted.is_set():
                # Cancelled, or finished between snapshot and renewal, or stolen.
                with self._lock:
                    self.stats.leases_lost += 1
                run.interrupt("lease lost (cancelled or claimed elsewhere)")
