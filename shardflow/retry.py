"""One error classification and one backoff, used by every caller that talks to a shard.

Every failure of a database call falls in one of four kinds (:class:`Failure`):

- ``UNAVAILABLE``: the shard cannot be reached (connection refused, reset or timed out,
  server shutting down, pool exhausted). Retry on a fresh connection later; other shards
  are unaffected.
- ``RETRY``: the shard is fine but this statement failed in a way that may not recur
  (deadlock, serialization failure, lock or statement timeout, query cancelled, a
  read-only transaction during a failover, out of memory). Retry the same statement in
  place after a short backoff.
- ``BAD_VALUE``: the database refuses this value and always will (a NUL character, text
  that is not valid UTF-8, a value over a size limit). Retrying is pointless: the write
  fails, and a workflow whose value it was ends in ERROR with that reason.
- ``BUG``: anything else (a programming error, an unexpected SQLSTATE). Logged with its
  traceback; loops carry on after a backoff.

:class:`Backoff` is exponential with full jitter ("decorrelated" enough for a handful of
threads per shard), capped, and resettable after a success.
"""

from __future__ import annotations

import asyncio
import enum
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from shardflow.errors import ShardUnavailable, ValueRejected

T = TypeVar("T")
P = ParamSpec("P")


class Failure(enum.Enum):
    UNAVAILABLE = "unavailable"
    RETRY = "retry"
    BAD_VALUE = "bad value"
    BUG = "bug"


# SQLSTATEs that mean the server or the connection is gone, not that a statement failed:
# class 08 (connection exception), admin/crash shutdown, cannot connect now, database
# dropped, too many connections, idle-in-transaction timeout (the session is closed).
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03", "57P04", "53300", "25P03"})
# The statement failed but the same statement may succeed on a retry.
_RETRY = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout, NOWAIT)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend)
        "25006",  # read_only_sql_transaction (a failover's new primary, briefly)
        "53100",  # disk_full
        "53200",  # out_of_memory
        "40003",  # statement_completion_unknown
        "55006",  # object_in_use
        "58000",  # system_error
        "XX000",  # internal_error (e.g. a transient "could not read block")
    }
)


def classify(exc: BaseException) -> Failure:
    """Which kind of failure ``exc`` is (see the module docstring)."""
    if isinstance(exc, ShardUnavailable | PoolTimeout):
        return Failure.UNAVAILABLE
    if isinstance(exc, ValueRejected | UnicodeEncodeError):
        return Failure.BAD_VALUE
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # Raised by psycopg itself: a NUL in a text parameter is a DataError; a lost
            # or closed connection is an OperationalError/InterfaceError.
            if isinstance(exc, psycopg.DataError):
                return Failure.BAD_VALUE
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return Failure.UNAVAILABLE
            return Failure.BUG
        if state.startswith("08") or state in _SERVER_GONE:
            return Failure.UNAVAILABLE
        if state in _RETRY:
            return Failure.RETRY
        # Class 22 (data exception: untranslatable character, invalid text, value too
        # long) and 54 (program limit exceeded: a row or value over a server limit).
        if state.startswith("22") or state.startswith("54"):
            return Failure.BAD_VALUE
        return Failure.BUG
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        # Wrapped at a boundary (``raise StoreError(...) from exc``): the cause decides.
        return classify(exc.__cause__)
    return Failure.BUG


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the shard cannot be reached (versus one statement failing)."""
    return classify(exc) is Failure.UNAVAILABLE


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (driver errors add DETAIL/CONTEXT lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# One generator for every Backoff's jitter (seeding one costs ~10 µs, and a submit
# makes several backoffs that mostly never wait).
_JITTER = random.Random()


class Backoff:
    """Exponential backoff with jitter: ``initial``, times ``factor`` per failure, at most
    ``maximum``. Each delay is drawn uniformly from [delay/2, delay] so that threads that
    failed together do not retry together."""

    __slots__ = ("_current", "_rng", "factor", "initial", "maximum")

    def __init__(
        self,
        initial: float = 0.05,
        maximum: float = 5.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._current = initial
        self._rng = rng or _JITTER

    def next(self) -> float:
        """The next delay (and grow the one after)."""
        delay = self._current
        self._current = min(self._current * self.factor, self.maximum)
        return delay * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._current = self.initial

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay; True if ``stop`` was set meanwhile."""
        delay = self.next()
        if stop is None:
            time.sleep(delay)
            return False
        return stop.wait(delay)


def retrying(
    call: Callable[[], T],
    *,
    deadline: float,
    backoff: Backoff | None = None,
    retry_on: frozenset[Failure] = frozenset({Failure.UNAVAILABLE, Failure.RETRY}),
) -> T:
    """Call ``call`` until it succeeds, retrying failures of the kinds in ``retry_on``
    with backoff until ``deadline`` (a ``time.monotonic()`` value); then the last error
    is raised. Only for reads and writes that are idempotent."""
    backoff = backoff or Backoff(0.05, 1.0)
    while True:
        try:
            return call()
        except Exception as exc:
            if classify(exc) not in retry_on:
                raise
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)


async def retrying_async(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    backoff: Backoff | None = None,
    retry_on: frozenset[Failure] = frozenset({Failure.UNAVAILABLE, Failure.RETRY}),
) -> T:
    """:func:`retrying` on an event loop: the waits are ``asyncio.sleep``."""
    backoff = backoff or Backoff(0.05, 1.0)
    while True:
        try:
            return await call()
        except Exception as exc:
            if classify(exc) not in retry_on:
                raise
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)


_local = threading.local()


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Within this block (on this thread), :func:`with_retries` retries for at most
    ``seconds``. A workflow run uses a short budget: it would rather park and replay
    later than hold its thread through another shard's outage."""
    previous = getattr(_local, "seconds", None)
    _local.seconds = seconds
    try:
        yield
    finally:
        _local.seconds = previous


def with_retries(call: Callable[[], T], default_seconds: float) -> T:
    """Run an idempotent client operation, retrying connection losses and transient
    statement failures on a fresh connection for up to ``default_seconds`` (or the
    enclosing :func:`budget`). Nested calls do not retry on their own: the outermost
    operation retries as a whole, so the budget is not multiplied."""
    if getattr(_local, "active", False):
        return call()
    seconds = getattr(_local, "seconds", None)
    _local.active = True
    try:
        return retrying(
            call, deadline=time.monotonic() + (default_seconds if seconds is None else seconds)
        )
    finally:
        _local.active = False


class _HasRetrySeconds(Protocol):
    retry_seconds: float


C = TypeVar("C", bound=_HasRetrySeconds)


def idempotent(method: Callable[Concatenate[C, P], T]) -> Callable[Concatenate[C, P], T]:
    """Mark a client method as safe to repeat: it runs under :func:`with_retries` with
    the client's ``retry_seconds``."""

    def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return with_retries(lambda: method(self, *args, **kwargs), self.retry_seconds)

    wrapper.__name__ = method.__name__
    wrapper.__qualname__ = method.__qualname__
    wrapper.__doc__ = method.__doc__
    wrapper.__wrapped__ = method  # type: ignore[attr-defined]
    return wrapper
