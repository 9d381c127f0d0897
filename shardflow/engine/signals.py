"""The two signals that end a run's thread early, raised by workflow-facing code
(:mod:`~shardflow.engine.primitives`, the run's own checks) and caught by the runner.

Both are BaseExceptions so that ``except Exception`` in workflow code cannot swallow them.
"""

from __future__ import annotations

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
