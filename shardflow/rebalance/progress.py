"""Progress of a running rebalance, and the throttle that paces it. No I/O."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot, reported after every batch and slot transition.

    ``slots_done`` counts slots of the plan settled on their target; ``workflows_left``
    is an estimate (workflows keep arriving and finishing while slots move).
    """

    phase: str
    epoch: int
    slots_total: int
    slots_done: int
    slots_in_motion: int
    workflows_moved: int
    workflows_left: int
    waiting_running: int
    rate: float
    elapsed: float

    @property
    def eta_seconds(self) -> float | None:
        if self.workflows_left <= 0:
            return 0.0
        if self.rate <= 0:
            return None
        return self.workflows_left / self.rate


ProgressHook = Callable[[Progress], None]
# Told one line saying what a rebalance is waiting for (see WaitNotices).
WaitHook = Callable[[str], None]


class WaitNotices:
    """Says what a wait is for once it has lasted ``first`` seconds, then again every
    ``every`` seconds while it lasts, so that a waiting ``apply`` is never silent.

    ``waiting(what)`` is called on every poll of a wait; ``done()`` when it ends.
    """

    def __init__(
        self,
        say: WaitHook | None,
        *,
        first: float = 1.0,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._say = say
        self._first = first
        self._every = every
        self._clock = clock
        self._since: float | None = None
        self._said: float | None = None

    def waiting(self, what: str) -> None:
        now = self._clock()
        if self._since is None:
            self._since = now
        waited = now - self._since
        due = self._first if self._said is None else self._said - self._since + self._every
        if waited < due:
            return
        self._said = now
        if self._say is not None:
            self._say(f"waiting for {what} ({waited:.0f}s so far)")

    def done(self) -> None:
        self._since = None
        self._said = None


class RateMeter:
    """Workflows moved per second over the last ``window`` seconds."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._sum = 0

    def add(self, count: int) -> None:
        now = self._clock()
        self._events.append((now, count))
        self._sum += count
        self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        if not self._events:
            return 0.0
        span = max(now - self._events[0][0], 0.5)
        return self._sum / span

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self._window:
            self._sum -= self._events.popleft()[1]


class Throttle:
    """Keeps the average move rate at or under ``rate`` workflows per second.

    ``pace(n)`` is called after moving ``n`` workflows and sleeps as long as needed; with
    no rate it never sleeps.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._done = 0

    def pace(self, moved: int) -> float:
        """Account for ``moved`` workflows; returns the seconds slept."""
        if self.rate is None or moved <= 0:
            return 0.0
        now = self._clock()
        if self._start is None:
            self._start = now
        self._done += moved
        due = self._start + self._done / self.rate
        if due <= now:
            # Running behind: start a fresh window instead of bursting to catch up.
            if now - due > 1.0:
                self._start, self._done = now, 0
            return 0.0
        self._sleep(due - now)
        return due - now
