"""How a run is stopped and woken.

The two signals that end a run's thread early, raised by workflow-facing code
(:mod:`~shardflow.engine.primitives`, the run's own checks) and caught by the runner. Both
are BaseExceptions so that ``except Exception`` in workflow code cannot swallow them.

The events a run is woken by (a cancel, a lost lease, a message), set from any thread:
:class:`RunEvent`, made cheap by :class:`FlagEvent`. A worker's or a client's stop flag,
which also wakes its listeners blocked on their sockets: :class:`StopEvent`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Protocol


class RunInterrupted(BaseException):
    """Stops a run at its next step boundary: cancelled, lease lost, or worker stopping."""


class Suspend(BaseException):
    """Parks the run: state SUSPENDED for ``delay_seconds`` (None: until woken).

    The wake-up time is computed by the suspending statement on the database clock
    (``now() + delay``), the clock that also fires it: a worker whose clock is off by
    seconds neither spins nor oversleeps.
    """

    def __init__(
        self,
        delay_seconds: float | None,
        wait_for: str,
        topic: str | None = None,
        child_id: str | None = None,
    ) -> None:
        self.delay_seconds = None if delay_seconds is None else max(delay_seconds, 0.0)
        self.wait_for = wait_for
        self.topic = topic
        self.child_id = child_id
        super().__init__(f"suspended waiting for {wait_for}")


class RunEvent(Protocol):
    """What a run is woken by (a cancel, a lost lease, a message): set from any thread.
    A sync run's is a ``threading.Event``; an async run's can also be awaited
    (:class:`~shardflow.engine.aio.run.LoopEvent`)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


_CREATING = threading.Lock()


class FlagEvent:
    """A :class:`RunEvent` that is a flag until a thread waits on it, and only then
    makes the ``threading.Event`` it waits on: two per run, and a worker starts
    thousands of runs a second, most of which nothing ever waits on. A waiter makes its
    event before it looks at the flag, and ``set`` raises the flag before it looks for
    the event, so one of the two always sees the other."""

    __slots__ = ("_flag", "_threads")

    def __init__(self) -> None:
        self._flag = False
        self._threads: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._threads is not None:
            self._threads.set()

    def clear(self) -> None:
        self._flag = False
        if self._threads is not None:
            self._threads.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block this thread until set or ``timeout``; True if set."""
        if self._threads is None:
            with _CREATING:
                if self._threads is None:
                    self._threads = threading.Event()
        if self._flag:
            return True
        return self._threads.wait(timeout) or self._flag


class StopEvent(threading.Event):
    """A stop flag that also wakes threads blocked on a socket: a thread waiting for
    notifications on a LISTEN connection selects on :meth:`wakeup` too, and returns at
    once when the flag is set, instead of at its next timeout (a worker's or a client's
    ``close()`` then takes milliseconds, not a listener's silence interval)."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: set[socket.socket] = set()
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            for waker in self._wakers:
                with contextlib.suppress(OSError):  # full (already woken) or closed
                    waker.send(b"\0")

    @contextlib.contextmanager
    def wakeup(self) -> Iterator[socket.socket]:
        """A socket that becomes readable when the flag is set (for ``select``)."""
        readable, waker = socket.socketpair()
        readable.setblocking(False)
        waker.setblocking(False)
        with self._wakers_lock:
            self._wakers.add(waker)
        try:
            if self.is_set():  # set before the waker was registered
                waker.send(b"\0")
            yield readable
        finally:
            with self._wakers_lock:
                self._wakers.discard(waker)
            readable.close()
            waker.close()
