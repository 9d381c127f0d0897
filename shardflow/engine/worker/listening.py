"""Notifications: each shard's listener wakes the claim loop when work arrives, interrupts
runs that were cancelled and tells waiting runs a message arrived.

Notifications only make things prompt: without them, polling and heartbeats still find
new work and cancellations.
"""

from __future__ import annotations

import time

from shardflow.engine.worker.base import WorkerBase
from shardflow.engine.worker.events import EventKind
from shardflow.retry import Backoff

# The suffix of a shardflow_work payload that announces a due wake-up (queue names have
# no spaces: shardflow/sql/queries/waits.sql).
WAKE_DUE = " due"


class ListenLoops(WorkerBase):
    """The listening side of a worker (a part of :class:`~shardflow.engine.worker.Worker`)."""

    def _listen_loop(self, shard: str) -> None:
        name = f"listen-{shard}"
        backoff = Backoff(0.5, 10.0)
        while not self._stopping.is_set():
            self._progress[name] = time.monotonic()
            try:
                listening = False
                for channel, payload in self.cluster.store.listen(shard, 0.25, self._stopping):
                    self._progress[name] = time.monotonic()
                    backoff.reset()
                    if not listening:
                        # LISTEN is in place (first yield): what was announced before it,
                        # at start or while the connection was down, was not heard. Look
                        # for new work and wake-ups once now rather than at the poll tick.
                        listening = True
                        self._notified[shard].set()
                        self._wake[shard].set()
                    if channel == "shardflow_work":
                        # New work (payload: its queue) is claimed at once; a wake-up
                        # (payload: '<queue> due') also sends the claim loop to look for
                        # due wake-ups first, which new work does not need.
                        if payload.endswith(WAKE_DUE):
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
            self.events.emit(EventKind.CANCEL_OBSERVED, workflow_id, run.shard, run.attempt)

    def _on_message(self, workflow_id: str) -> None:
        with self._lock:
            run = self._running.get(workflow_id)
        if run is not None:
            run.message_arrived.set()
