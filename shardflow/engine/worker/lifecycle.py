"""A worker's lifecycle: start its loops, stop gracefully (hand back what still runs),
run until a signal, and report liveness and readiness for probes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any

from shardflow.engine.batcher import GroupWriter
from shardflow.engine.presence import Presence
from shardflow.engine.retention import RetentionLeader
from shardflow.engine.schedules import Scheduler, collect
from shardflow.engine.worker.base import log
from shardflow.engine.worker.claiming import STOPPING, ClaimLoops
from shardflow.engine.worker.leases import LeaseLoops
from shardflow.engine.worker.listening import ListenLoops
from shardflow.errors import ShardflowError
from shardflow.retry import Backoff

if TYPE_CHECKING:
    from shardflow.engine.app import App
    from shardflow.engine.cluster import Cluster


class Worker(ClaimLoops, LeaseLoops, ListenLoops):
    """Runs the workflows of ``app`` from the shards of ``cluster``.

    Its parts live in one module each: configuration and shared state
    (:mod:`~shardflow.engine.worker.base`), claiming and running
    (:mod:`~shardflow.engine.worker.claiming`), leases
    (:mod:`~shardflow.engine.worker.leases`), notifications
    (:mod:`~shardflow.engine.worker.listening`) and its events
    (:mod:`~shardflow.engine.worker.events`).
    """

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
    ) -> None:
        super().__init__(
            cluster,
            app,
            shards=shards,
            concurrency=concurrency,
            async_concurrency=async_concurrency,
            queues=queues,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            poll_interval_seconds=poll_interval_seconds,
            claim_batch=claim_batch,
            max_recoveries=max_recoveries,
            worker_id=worker_id,
            retention=retention,
        )
        self.presence = Presence(self)

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
            self.cluster.store,
            self.shards,
            answer_timeout=self.lease_seconds / 3,
            on_committed=self._step_committed,
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
            run.interrupt(STOPPING)
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
        self._aio.close()
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

    # -- background loops ----------------------------------------------------------

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
