"""Queue-wide concurrency, exact across shards: before a claim of a queue with a
``concurrency``, on any shard, the worker takes queue leases on the queue's home shard,
one per workflow it may start; each run holds one until it ends. One loop per home shard
renews the leases of this worker's runs with one statement per heartbeat and deletes
those of runs that ended.

Why it holds (docs/queues.md#concurrency): at most ``concurrency`` leases of a queue are
live on its home shard at once (takes are serialized per queue there and count only live
ones); a lease is never renewed once expired; and a run stops at its next step once its
lease may have expired, as it does for its workflow lease. A SIGKILLed worker's leases
expire after one lease; a home shard that cannot be reached stops the queue's claims,
and its running workflows stop after one lease, handed back for a later claim."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

from shardflow.config.model import QueueConfig
from shardflow.engine.runner import QUEUE_LEASE_LOST, WorkflowRun
from shardflow.engine.worker.base import WorkerBase, log
from shardflow.retry import Backoff, first_line

__all__ = ["QUEUE_LEASE_LOST", "QueueLease", "QueueLeaseLoops"]

# After a failed take, the queue's claims leave its home shard alone this long.
HOME_DOWN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class QueueLease:
    """One place in a queue's concurrency: its home shard, its ID, and when (monotonic,
    before the take was sent) its lease began."""

    home: str
    lease_id: str
    taken: float


class QueueLeaseLoops(WorkerBase):
    """The queue-lease side of a worker (a part of :class:`~shardflow.engine.worker.Worker`)."""

    def _take_leases(
        self, queue: QueueConfig | None, reserved: int, aio: bool, shard: str
    ) -> tuple[int, list[QueueLease] | None]:
        """Take up to ``reserved`` (threads reserved for a claim) of ``queue``'s leases, and
        give back the threads of those not taken: (how many to claim, the leases taken,
        or None when the queue has no queue-wide limit)."""
        leases = self._take(queue, reserved)
        if leases is None:
            return reserved, None
        self._unreserve(queue, reserved - len(leases), aio, shard)
        if len(leases) < reserved:
            with self._lock:
                self._starved[aio].add(shard)  # a run of this worker ending frees a place
        return len(leases), leases

    def _take(self, queue: QueueConfig | None, want: int) -> list[QueueLease] | None:
        """Take up to ``want`` of ``queue``'s leases; None when it has no queue-wide limit.

        An unreachable home shard gives no lease (the queue's claims stop everywhere) and
        is left alone for a few seconds, so that it does not slow down other claims."""
        home = self._homes.get(queue.name) if queue is not None else None
        if home is None or queue is None or queue.concurrency is None:
            return None
        if time.monotonic() < self._home_down_until.get(home, 0.0):
            return []
        taken = time.monotonic()
        try:
            # On the home's own thread, waited for a bounded time: a frozen home shard
            # (no answer, no error) must not hold up the claims of the other shards. The
            # leases of a take that answers too late are not renewed: they expire.
            ids = self._home_calls[home].call(
                functools.partial(
                    self.cluster.store.take_queue_leases,
                    home,
                    queue=queue.name,
                    owner=self.worker_id,
                    want=want,
                    limit=queue.concurrency,
                    lease_seconds=self.lease_seconds,
                ),
                timeout=min(HOME_DOWN_SECONDS, self.lease_seconds / 3),
            )
        except Exception as exc:
            self._home_down_until[home] = time.monotonic() + HOME_DOWN_SECONDS
            self._loop_error(f"queue-leases-{home}", exc)
            log.warning(
                "queue %s: its home shard %s is unreachable; its claims stop for %.0f s",
                queue.name,
                home,
                HOME_DOWN_SECONDS,
            )
            return []
        return [QueueLease(home, i, taken) for i in ids]

    def _return_leases(self, leases: list[QueueLease]) -> None:
        """Delete leases that no run holds (claimed fewer, or a claim that does not run)."""
        if not leases:
            return
        with self._lock:
            for lease in leases:
                self._unheld[lease.home].append(lease.lease_id)
                self._leases_due[lease.home].set()
        if self._closed.is_set():  # a claim that ended after the loops: delete them here
            for home in {lease.home for lease in leases}:
                try:
                    self._delete_unheld(home)
                except Exception as exc:
                    log.info("could not delete queue leases on %s: %s", home, first_line(exc))

    def _hold_lease(self, run: WorkflowRun, lease: QueueLease) -> None:
        """Give ``run`` its queue lease: renewed for it until it ends."""
        run.queue_lease_valid_until = lease.taken + self.lease_seconds
        with self._lock:
            self._held[lease.home][lease.lease_id] = run

    def _drop_lease(self, run: WorkflowRun) -> None:
        """``run`` ended (its thread returned): its place is free once deleted. A run of a
        queue without a queue-wide limit never held one (no lock taken, nothing scanned)."""
        if run.queue_lease_valid_until == math.inf:
            return
        with self._lock:
            for home, held in self._held.items():
                for lease_id in [i for i, r in held.items() if r is run]:
                    del held[lease_id]
                    self._unheld[home].append(lease_id)
                    self._leases_due[home].set()

    def _queue_lease_loop(self, home: str) -> None:
        """Renew the leases this worker's runs hold on ``home`` every heartbeat, and delete
        those of ended runs as soon as they end; until every run has ended."""
        name = f"queue-leases-{home}"
        backoff = Backoff(0.2, self.heartbeat_seconds)
        due = self._leases_due[home]
        next_renewal = time.monotonic() + self.heartbeat_seconds
        while not self._closed.is_set():
            due.wait(max(0.0, min(next_renewal - time.monotonic(), self.heartbeat_seconds)))
            due.clear()
            self._progress[name] = time.monotonic()
            try:
                if self._delete_unheld(home):
                    self._wake_all()  # places are free: claims may take them now
                if time.monotonic() >= next_renewal:
                    self._renew_queue_leases(home)
                    next_renewal = time.monotonic() + self.heartbeat_seconds
                backoff.reset()
            except Exception as exc:
                self._loop_error(name, exc)
                self._closed.wait(backoff.next())
        try:
            self._delete_unheld(home)
        except Exception as exc:
            log.info("could not delete queue leases on %s: %s", home, first_line(exc))

    def _delete_unheld(self, home: str) -> int:
        with self._lock:
            ids, self._unheld[home] = self._unheld[home], []
        if not ids:
            return 0
        try:
            return self.cluster.store.release_queue_leases(home, ids)
        except Exception:
            # Not renewed any more: they expire within one lease whatever happens.
            log.info("could not delete %d queue lease(s) on %s; they expire", len(ids), home)
            raise

    def _renew_queue_leases(self, home: str) -> None:
        with self._lock:
            held = dict(self._held[home])
        if not held:
            return
        started = time.monotonic()
        renewed = self.cluster.store.renew_queue_leases(
            home, list(held), lease_seconds=self.lease_seconds
        )
        for lease_id, run in held.items():
            if lease_id in renewed:
                run.queue_lease_valid_until = started + self.lease_seconds
            elif not run.interrupted.is_set():
                log.warning("workflow %s lost its queue lease on %s", run.workflow_id, home)
                run.interrupt(QUEUE_LEASE_LOST)
