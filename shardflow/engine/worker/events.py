"""What a worker tells subscribers as it goes: claims, lease renewals, step checkpoints,
suspensions, ends and hand-backs, each with the workflow id, shard and attempt.

Subscribers are plain callables, called on the worker's own threads (claim loop, run
thread, heartbeat) right after the fact they report: they must be quick and thread-safe.
One that raises is logged and the worker goes on. With no subscriber, nothing is built
and nothing is locked: an emit is one truth test.

Tests wait on these events (:class:`shardflow.testing.events.EventRecorder`) instead of
polling counters or sleeping; applications can feed them to their own tracing.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("shardflow.engine.worker")


class EventKind(enum.StrEnum):
    """What happened to one run of one workflow on this worker."""

    #: Claimed for a run; ``detail`` says from where: ``new``, ``woken`` or ``recovered``.
    CLAIMED = "claimed"
    #: Its lease was renewed by a heartbeat.
    RENEWED = "renewed"
    #: A step's checkpoint committed; ``detail`` is the step name, ``step_no`` its number.
    COMMITTED = "committed"
    #: Parked (durable sleep, waiting for a message, an event or a child).
    SUSPENDED = "suspended"
    #: Its end is recorded; ``detail`` is the final state (``SUCCESS``, ``ERROR``, ...).
    FINISHED = "finished"
    #: The run stopped without an outcome; ``detail`` is why (cancelled, lease lost, ...).
    INTERRUPTED = "interrupted"
    #: Handed back (ENQUEUED) by a stopping worker once its thread had returned.
    RELEASED = "released"
    #: The worker heard the workflow was cancelled while it ran.
    CANCEL_OBSERVED = "cancel_observed"
    #: A renewal found the lease gone (cancelled or claimed elsewhere).
    LEASE_LOST = "lease_lost"
    #: Crashed more than ``max_recoveries`` times: moved to DEAD instead of run.
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    kind: EventKind
    workflow_id: str
    shard: str
    attempt: int
    detail: str = ""
    step_no: int | None = None


Subscriber = Callable[[WorkerEvent], None]


class WorkerEvents:
    """A worker's event hub: ``worker.events.subscribe(callback)``."""

    __slots__ = ("_lock", "_subscribers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated: emit() reads it without the lock.
        self._subscribers: tuple[Subscriber, ...] = ()

    def __bool__(self) -> bool:
        """Whether anyone listens (callers may skip building what they would report)."""
        return bool(self._subscribers)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns the unsubscribe."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not callback)

    def emit(
        self,
        kind: EventKind,
        workflow_id: str,
        shard: str,
        attempt: int,
        detail: str = "",
        step_no: int | None = None,
    ) -> None:
        subscribers = self._subscribers
        if not subscribers:
            return
        event = WorkerEvent(kind, workflow_id, shard, attempt, detail, step_no)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                # A subscriber's bug must not stop a claim loop or a run.
                log.exception("worker event subscriber %r failed on %s", callback, event)
