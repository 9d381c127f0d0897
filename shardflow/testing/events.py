"""Wait for what a worker did, instead of polling its counters or sleeping.

::

    worker = shardflow.Worker(cluster, app)
    with EventRecorder(worker) as events, worker:
        handle = cluster.submit(my_workflow)
        events.wait_for(EventKind.SUSPENDED, lambda e: e.workflow_id == handle.workflow_id)

A recorder keeps every event since it subscribed, so an event that happened before the
wait began still counts: subscribe before starting the worker and nothing is missed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from shardflow.engine.worker import EventKind, WorkerEvent, WorkerEvents

Predicate = Callable[[WorkerEvent], bool]
Kinds = EventKind | tuple[EventKind, ...]


class _HasEvents(Protocol):
    @property
    def events(self) -> WorkerEvents: ...


class EventRecorder:
    """Records the events of ``worker`` (until :meth:`close`); tests wait on them."""

    def __init__(self, worker: _HasEvents) -> None:
        self._cond = threading.Condition()
        self._events: list[WorkerEvent] = []
        self._unsubscribe = worker.events.subscribe(self._record)

    def _record(self, event: WorkerEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def close(self) -> None:
        self._unsubscribe()

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def events(
        self, kind: Kinds | None = None, predicate: Predicate | None = None
    ) -> list[WorkerEvent]:
        """The events recorded so far, of ``kind`` (one or several) and matching
        ``predicate`` if given."""
        with self._cond:
            return [e for e in self._events if _matches(e, kind, predicate)]

    def count(self, kind: Kinds, predicate: Predicate | None = None) -> int:
        return len(self.events(kind, predicate))

    def wait_for(
        self,
        kind: Kinds,
        predicate: Predicate | None = None,
        *,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[WorkerEvent]:
        """Wait until ``count`` events of ``kind`` (one or several) matching ``predicate``
        were recorded (since the recorder subscribed) and return them; fail after
        ``timeout`` seconds with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self._events if _matches(e, kind, predicate)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(f"{e.kind}:{e.workflow_id}" for e in self._events[-10:])
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {count} {_name(kind)} event(s)"
                        f" (got {len(found)}); last events: {seen or 'none'}"
                    )
                self._cond.wait(remaining)


def _matches(event: WorkerEvent, kind: Kinds | None, predicate: Predicate | None) -> bool:
    if isinstance(kind, EventKind):
        kind = (kind,)
    return (kind is None or event.kind in kind) and (predicate is None or predicate(event))


def _name(kind: Kinds) -> str:
    return str(kind) if isinstance(kind, EventKind) else " or ".join(map(str, kind))
