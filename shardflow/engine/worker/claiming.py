"""Claiming and running: each shard's claim loop (new, woken and expired work, per queue
within its limits), one thread per claimed run, and what happens when a run returns."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

from shardflow.config.model import QueueConfig
from shardflow.engine.aio.run import AsyncWorkflowRun, execute_async
from shardflow.engine.execution import execute
from shardflow.engine.records import Claim, StepWrite
from shardflow.engine.runner import WorkflowRun
from shardflow.engine.states import WorkflowState
from shardflow.engine.worker.base import log
from shardflow.engine.worker.events import EventKind
from shardflow.engine.worker.queue_leases import QUEUE_LEASE_LOST, QueueLease, QueueLeaseLoops
from shardflow.retry import Backoff, first_line

# Why stop() interrupts a run: such a run hands its workflow back when its thread stops.
STOPPING = "worker stopping"


class ClaimLoops(QueueLeaseLoops):
    """The claim side of a worker (a part of :class:`~shardflow.engine.worker.Worker`)."""

    def _claim_loop(self, shard: str) -> None:
        name = f"claim-{shard}"
        next_recovery = 0.0
        next_wakeable = 0.0
        backoff = Backoff(self.poll_interval, 5.0)
        while not self._stopping.is_set():
            self._progress[name] = time.monotonic()
            claimed = 0
            self._claimed_full[shard] = False
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
            if not self._claimed_full[shard]:
                # Nothing more to do now, or no capacity: sleep until told (new work, a
                # wake-up, a run ending while capacity was short) or the poll tick.
                self._wake[shard].wait(self.poll_interval)
                self._wake[shard].clear()

    def _claim_queue(self, shard: str, queue: QueueConfig) -> int:
        # An app with sync and async workflows claims each kind apart (each within its
        # own capacity). The kind that last found work in this queue goes first: the
        # next workflow is most likely of that kind too, and its run starts before the
        # other kind's claim (one database round trip, likely empty) is made.
        kinds = self._kinds
        last = self._last_kind.get((shard, queue.name))
        if last is not None and kinds[0][0] is not last:
            kinds = kinds[::-1]
        claimed = 0
        for aio, names in kinds:
            n = self._claim_queue_kind(shard, queue, aio, names)
            if n:
                self._last_kind[(shard, queue.name)] = aio
            claimed += n
        return claimed

    def _claim_queue_kind(self, shard: str, queue: QueueConfig, aio: bool, names: list[str]) -> int:
        """Claim new sync or async work (``aio``) of ``queue``, within that kind's capacity."""
        n = self._reserve(queue, min(self.claim_batch, self._claim_share[aio]), aio, shard)
        if n == 0:
            return 0
        n, leases = self._take_leases(queue, n, aio, shard)
        if n == 0:
            return 0
        claims: list[Claim] = []
        try:
            claims = self.cluster.store.claim_enqueued(
                shard,
                queue=queue.name,
                names=names,
                owner=self.worker_id,
                lease_seconds=self.lease_seconds,
                limit=n,
                rate_limit=self._shares[queue.name][shard],
                key_concurrency=queue.key_concurrency,
                key_rate_limit=queue.key_rate_limit.pair() if queue.key_rate_limit else None,
                app_version=self.app_version,
            )
        finally:
            self._unreserve(queue, n - len(claims), aio, shard)
            if leases is not None:
                self._return_leases(leases[len(claims) :])
        if len(claims) == n:
            self._claimed_full[shard] = True
        with self._lock:  # several claim threads count here
            self.stats.claimed += len(claims)
            self.stats.claimed_by[(shard, queue.name)] += len(claims)
        started: list[Coroutine[Any, Any, None]] = []
        try:
            for i, claim in enumerate(claims):
                lease = leases[i] if leases is not None else None
                self._launch(claim, queue, reserved=True, how="new", lease=lease, batch=started)
        finally:
            self._aio.start_all(started)  # whatever was launched starts, even after an error
        return len(claims)

    def _claim_groups(self) -> list[tuple[QueueConfig | None, list[str]]]:
        """Queues to claim resumed work for: the queues without a per-worker or queue-wide
        limit together, then each limited queue alone, so that its limit holds exactly."""

        def limited(q: QueueConfig) -> bool:
            return q.worker_concurrency is not None or q.concurrency is not None

        unlimited = [q.name for q in self.queues if not limited(q)]
        groups: list[tuple[QueueConfig | None, list[str]]] = (
            [(None, unlimited)] if unlimited else []
        )
        groups.extend((q, [q.name]) for q in self.queues if limited(q))
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
        for (queue, queues), (aio, names) in itertools.product(self._claim_groups(), self._kinds):
            n = self._reserve(queue, min(self.claim_batch, self._claim_share[aio]), aio, shard)
            if n == 0:
                continue
            n, leases = self._take_leases(queue, n, aio, shard)
            if n == 0:
                continue
            claims: list[Claim] = []
            try:
                claims = claim_fn(
                    shard,
                    names=names,
                    queues=queues,
                    owner=self.worker_id,
                    lease_seconds=self.lease_seconds,
                    limit=n,
                    app_version=self.app_version,
                )
            finally:
                self._unreserve(queue, n - len(claims), aio, shard)
                if leases is not None:
                    self._return_leases(leases[len(claims) :])
            if len(claims) == n:
                self._claimed_full[shard] = True
            started: list[Coroutine[Any, Any, None]] = []
            try:
                self._launch_resumed(shard, queue, aio, claims, leases, recovery, started)
            finally:
                self._aio.start_all(started)
            total += len(claims)
        return total

    def _launch_resumed(
        self,
        shard: str,
        queue: QueueConfig | None,
        aio: bool,
        claims: list[Claim],
        leases: list[QueueLease] | None,
        recovery: bool,
        started: list[Coroutine[Any, Any, None]],
    ) -> None:
        """Launch woken or recovered runs of one kind (``aio``), each holding its queue
        lease if its queue has a queue-wide limit; dead-letter repeaters."""
        for i, claim in enumerate(claims):
            lease = leases[i] if leases is not None else None
            if claim.state is WorkflowState.DEAD:
                if lease is not None:
                    self._return_leases([lease])
                with self._lock:
                    self.stats.dead_lettered += 1
                self._unreserve(queue, 1, aio, shard)
                log.warning(
                    "workflow %s dead-lettered after %d recoveries",
                    claim.workflow_id,
                    claim.recoveries - 1,
                )
                self.events.emit(EventKind.DEAD_LETTERED, claim.workflow_id, shard, claim.attempt)
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
            how = "recovered" if recovery else "woken"
            self._launch(claim, queue, reserved=True, how=how, lease=lease, batch=started)

    def _launch(
        self,
        claim: Claim,
        queue: QueueConfig | None,
        *,
        reserved: bool,
        how: str,
        lease: QueueLease | None = None,
        batch: list[Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Start ``claim``'s run (holding ``lease``, its place in a queue with a
        queue-wide limit): a sync one on a thread of the pool; an async one on the loop,
        or, with ``batch``, appended to it for :meth:`RunLoop.start_all` (one wake-up of
        the loop per claimed batch, not one per run)."""
        assert self._writer is not None
        writer = self._writer
        aio = self.app.lookup(claim.name).is_async
        store = self.cluster.store
        run = (
            AsyncWorkflowRun(
                claim,
                store,
                self.lease_seconds,
                self.cluster,
                writer,
                loop=self._aio.loop(),
                executor=self._aio.executor,
                async_writer=writer,
            )
            if aio
            else WorkflowRun(claim, store, self.lease_seconds, self.cluster, writer)
        )
        run.observe_step = self.stats.step_seconds.observe
        if lease is not None:
            self._hold_lease(run, lease)
        with self._lock:
            self._running[claim.workflow_id] = run
            self._active[aio] += 1
            if reserved:
                self._reserved_by[aio] -= 1
        self.events.emit(EventKind.CLAIMED, claim.workflow_id, claim.shard, claim.attempt, how)
        if isinstance(run, AsyncWorkflowRun):
            if batch is None:
                self._aio.start_all([self._execute_async(run, queue)])
            else:
                batch.append(self._execute_async(run, queue))
            return
        assert self._executor is not None
        self._executor.submit(self._execute, run, queue)

    def _execute(self, run: WorkflowRun, queue: QueueConfig | None) -> None:
        state: WorkflowState | None = None
        try:
            state = execute(run, self.app)
            if state is None and run.interrupt_reason in (STOPPING, QUEUE_LEASE_LOST):
                self._release(run)
        except Exception:
            log.exception("unexpected failure running %s", run.workflow_id)
        finally:
            self._ended(run, queue, state)

    async def _execute_async(self, run: AsyncWorkflowRun, queue: QueueConfig | None) -> None:
        """:meth:`_execute` for an async workflow, on the worker's event loop."""
        state: WorkflowState | None = None
        try:
            state = await execute_async(run, self.app)
            if state is None and run.interrupt_reason in (STOPPING, QUEUE_LEASE_LOST):
                await run.in_thread(lambda: self._release(run))
        except Exception:
            log.exception("unexpected failure running %s", run.workflow_id)
        finally:
            self._ended(run, queue, state)

    def _ended(
        self, run: WorkflowRun, queue: QueueConfig | None, state: WorkflowState | None
    ) -> None:
        """Account for a run that returned, and wake the claim loops if capacity is free."""
        self._drop_lease(run)
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
            self._active[run.is_async] -= 1
            self._lock.notify_all()
            free = self._free(run.is_async)
            limited = queue is not None and queue.worker_concurrency is not None
            wake: set[str] = set()
            if free >= self._wake_threshold or limited or not self._running:
                wake, self._starved[run.is_async] = self._starved[run.is_async], set()
        for shard in wake:
            self._wake[shard].set()
        if self.events:
            self._report_end(run, state)

    def _report_end(self, run: WorkflowRun, state: WorkflowState | None) -> None:
        if state is None:
            kind, detail = EventKind.INTERRUPTED, run.interrupt_reason or "abandoned"
        elif state is WorkflowState.SUSPENDED:
            kind, detail = EventKind.SUSPENDED, ""
        else:
            kind, detail = EventKind.FINISHED, state.value
        self.events.emit(kind, run.workflow_id, run.shard, run.attempt, detail)

    def _step_committed(self, shard: str, write: StepWrite) -> None:
        self.events.emit(
            EventKind.COMMITTED, write.workflow_id, shard, write.attempt, write.name, write.step_no
        )

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
            self.events.emit(EventKind.RELEASED, run.workflow_id, run.shard, run.attempt)
