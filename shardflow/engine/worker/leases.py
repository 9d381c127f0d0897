"""Leases: each shard's heartbeat renews the leases of everything this worker runs there
(one statement per shard) and times out workflows past their deadline."""

from __future__ import annotations

import time

from shardflow.engine.worker.base import WorkerBase, log
from shardflow.engine.worker.events import EventKind
from shardflow.errors import ShardflowError
from shardflow.retry import Backoff


class LeaseLoops(WorkerBase):
    """The lease side of a worker (a part of :class:`~shardflow.engine.worker.Worker`)."""

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
        renewal = self.cluster.store.renew_leases(
            shard,
            owner=self.worker_id,
            workflow_ids=[r.workflow_id for r in runs],
            lease_seconds=self.lease_seconds,
        )
        with self._lock:
            self.stats.lease_renewals += 1
        for run in runs:
            if run.workflow_id in renewal.renewed:
                run.lease_renewed(started)
                if self.events:
                    self.events.emit(EventKind.RENEWED, run.workflow_id, shard, run.attempt)
            elif (
                run.workflow_id in renewal.lost and not run.interrupted.is_set() and not run.ending
            ):
                # Cancelled, or finished between snapshot and renewal, or stolen. (A run
                # whose final write is in flight is left alone: that write ended the
                # lease, or is fenced off if the lease was really lost.) One in neither
                # set was locked by a commit in flight: the next heartbeat decides it.
                with self._lock:
                    self.stats.leases_lost += 1
                run.interrupt("lease lost (cancelled or claimed elsewhere)")
                self.events.emit(EventKind.LEASE_LOST, run.workflow_id, shard, run.attempt)
