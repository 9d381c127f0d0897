"""What wakes a client waiting for a workflow: one LISTEN connection per shard per
client process, fanned out to every waiter of the process.

A worker's batch of final writes notifies ``shardflow_done_ids`` once, with a JSON array
as payload: per workflow its ID, or for a success with a small result the pair
``[ID, stored result text]``, handed to the waiter (:attr:`Waiter.carried`) so it
need not read the row; dead-lettering, a cancel and an ID too long to share a
payload notify ``shardflow_done`` (or ``shardflow_cancel``), and publishing an event
notifies ``shardflow_event``, each with the workflow ID as payload (see ``listen_waits``
in ``shardflow/sql/queries/workflows.sql``). A waiter
(:meth:`WaitListeners.watch`) registers first, then reads the row, then sleeps on its
own :class:`threading.Event` until a notification for its workflow sets it or the
re-check interval passes. Notifications are only a hint: the caller reads the row again
after every wake, so a notification lost (a listener reconnecting, a workflow moving to
another shard) costs at most one re-check interval, never a wrong answer.

Async code waits the same way (:meth:`WaitListeners.wait_async`): its waiter is also
woken on its event loop, so a coroutine that waits holds no thread; the listeners are the
same ones (one connection per shard per client, whichever code waits).

Each shard's listener runs in a thread of its own, started on the first wait for a
workflow on that shard and stopped by :meth:`WaitListeners.close` (``Cluster.close()``).
It never dies silently: a lost connection is logged, waited out with backoff and
reopened, and every waiter is woken to re-check both when the connection goes and when
LISTEN is in place again (a notification sent meanwhile was missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from shardflow.engine.signals import RunEvent, StopEvent
from shardflow.retry import Backoff

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
# How often an idle listener looks up from its socket to see whether it should stop.
_SILENCE_SECONDS = 0.2
# An interrupt a waiter must also honour is looked at this often (in memory, no I/O).
_INTERRUPT_SLICE = 0.05


class WaitFor(StrEnum):
    """What a waiter waits for."""

    DONE = "done"  # the workflow's final state (result())
    EVENT = "event"  # an event the workflow publishes (get_event)


# Channels whose payload is a JSON array of workflow IDs.
_MANY_IDS = "shardflow_done_ids"
_CHANNELS = {
    _MANY_IDS: WaitFor.DONE,
    "shardflow_done": WaitFor.DONE,
    "shardflow_cancel": WaitFor.DONE,
    "shardflow_event": WaitFor.EVENT,
}


class NotificationSource(Protocol):
    """The store's side: LISTEN on one shard and yield what arrives."""

    def listen(
        self,
        shard: str,
        timeout: float,
        stop: threading.Event,
        *,
        channels: str = ...,
        purpose: str = ...,
    ) -> Iterator[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class ListenerHealth:
    """One shard's listener: whether LISTEN is in place, how often its connection was
    lost, and why the last time."""

    shard: str
    listening: bool
    connections_lost: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class WaitStats:
    """Why waiters of this process woke: a notification for their workflow, a listener
    (re)connecting or losing its connection, or the re-check interval passing; and how
    many results came in a notification (no read of the row needed)."""

    notified: int
    resynced: int
    rechecks: int
    carried: int = 0


class Waiter:
    """One registered wait (see :meth:`WaitListeners.watch`); with ``loop``, also woken
    on that event loop (for :meth:`WaitListeners.wait_async`). ``carried`` is the stored
    result text of a success whose notification carried it (None until then)."""

    __slots__ = ("_async_wake", "_loop", "_wake", "_why", "carried", "key")

    def __init__(
        self, key: tuple[WaitFor, str], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.key = key
        self._wake = threading.Event()
        self._why = ""
        self.carried: str | None = None
        self._loop = loop
        self._async_wake = asyncio.Event() if loop is not None else None

    def _set(self, why: str) -> None:
        self._why = self._why or why
        self._wake.set()
        if self._loop is not None and self._async_wake is not None:
            # A closed loop (RuntimeError) has nothing waiting on it any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._async_wake.set)


def _items(payload: str) -> dict[str, str | None] | None:
    """The workflows of a ``shardflow_done_ids`` payload, each with its carried result
    text (None if the item is an ID alone); None (everyone looks) if the payload is not
    a JSON array of IDs and ``[ID, text]`` pairs."""
    try:
        items = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    out: dict[str, str | None] = {}
    for item in items:
        if isinstance(item, str):
            out[item] = None
        elif (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            out[item[0]] = item[1]
        else:
            return None
    return out


class WaitListeners:
    """The listeners of one client (a part of :class:`~shardflow.engine.cluster.Cluster`)."""

    def __init__(
        self, source: NotificationSource, recheck_seconds: float = RECHECK_SECONDS
    ) -> None:
        self.source = source
        # The longest a waiter sleeps before it reads the row again on its own.
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._waiters: dict[tuple[WaitFor, str], set[Waiter]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._health: dict[str, ListenerHealth] = {}
        self._stop = StopEvent()
        self._notified = self._resynced = self._rechecks = self._carried = 0
        self._sleeping = 0  # waiters inside wait() or wait_async() now

    # -- the waiter's side --------------------------------------------------------------------

    @contextmanager
    def watch(
        self,
        kind: WaitFor,
        workflow_id: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Iterator[Waiter]:
        """Register a waiter for ``workflow_id``; read the row only after this (so a
        notification sent before the read is not missed), and :meth:`wait` between
        reads (:meth:`wait_async` if registered with the running ``loop``)."""
        waiter = Waiter((kind, workflow_id), loop)
        with self._lock:
            self._waiters.setdefault(waiter.key, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                group = self._waiters.get(waiter.key)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._waiters[waiter.key]

    def wait(
        self,
        waiter: Waiter,
        shard: str,
        seconds: float,
        interrupt: RunEvent | None = None,
    ) -> None:
        """Sleep until ``waiter`` is woken or ``seconds`` (at most the re-check interval)
        pass, listening to ``shard`` (where the caller last found the workflow)."""
        self.listen_to(shard)
        seconds = max(min(seconds, self.recheck_seconds), 0.0)
        self._asleep(1)
        try:
            if interrupt is None:
                woken = waiter._wake.wait(seconds)
            else:
                woken = self._wait_or_interrupt(waiter, seconds, interrupt)
        finally:
            self._asleep(-1)
        self._woke(waiter, woken)

    async def wait_async(self, waiter: Waiter, shard: str, seconds: float) -> None:
        """:meth:`wait` for a coroutine on the loop ``waiter`` was registered with: it
        awaits the wake-up (no thread held while it waits)."""
        wake = waiter._async_wake
        if wake is None:
            raise ValueError("wait_async: register the waiter with watch(..., loop=)")
        self.listen_to(shard)
        seconds = max(min(seconds, self.recheck_seconds), 0.0)
        self._asleep(1)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), seconds)
        finally:
            self._asleep(-1)
        wake.clear()
        self._woke(waiter, waiter._wake.is_set())

    def _asleep(self, change: int) -> None:
        with self._lock:
            self._sleeping += change

    def _woke(self, waiter: Waiter, woken: bool) -> None:
        with self._lock:
            why, waiter._why = waiter._why, ""
            waiter._wake.clear()
            if not woken:
                self._rechecks += 1
            elif why == "notified":
                self._notified += 1
                self._carried += waiter.carried is not None
            elif why == "resynced":
                self._resynced += 1

    @staticmethod
    def _wait_or_interrupt(waiter: Waiter, seconds: float, interrupt: RunEvent) -> bool:
        end = seconds
        while end > 0 and not interrupt.is_set():
            step = min(_INTERRUPT_SLICE, end)
            if waiter._wake.wait(step):
                return True
            end -= step
        return False

    def stats(self) -> WaitStats:
        """How often waiters of this client woke, and why."""
        with self._lock:
            return WaitStats(self._notified, self._resynced, self._rechecks, self._carried)

    def waiting(self) -> int:
        """How many waiters are registered now."""
        with self._lock:
            return sum(len(group) for group in self._waiters.values())

    def sleeping(self) -> int:
        """How many waiters are inside :meth:`wait` or :meth:`wait_async` now (they read
        their row and found nothing yet)."""
        with self._lock:
            return self._sleeping

    def health(self) -> dict[str, ListenerHealth]:
        """The listener of each shard waited on so far."""
        with self._lock:
            return dict(self._health)

    # -- the listeners ------------------------------------------------------------------------

    def listen_to(self, shard: str) -> None:
        """Start ``shard``'s listener unless it runs (or the client is closed)."""
        with self._lock:
            if shard in self._threads or self._stop.is_set():
                return
            self._health[shard] = ListenerHealth(shard, False, 0, None)
            thread = threading.Thread(
                target=self._listen_loop,
                args=(shard,),
                name=f"shardflow-waits-{shard}",
                daemon=True,
            )
            self._threads[shard] = thread
        thread.start()

    def _listen_loop(self, shard: str) -> None:
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            try:
                for channel, payload in self.source.listen(
                    shard, _SILENCE_SECONDS, self._stop, channels="listen_waits", purpose="waits"
                ):
                    if channel:
                        self._dispatch(channel, payload)
                    elif not self._health[shard].listening:
                        # LISTEN is in place: what was sent before it is read again.
                        self._set_health(shard, listening=True)
                        backoff.reset()
                        self._wake_all()
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                was_listening = self._health[shard].listening
                self._set_health(shard, listening=False, lost=was_listening, error=reason)
                level = logging.WARNING if was_listening else logging.INFO
                log.log(level, "waits listener of shard %s lost: %s", shard, reason)
                self._wake_all()
            self._stop.wait(backoff.next())
        self._set_health(shard, listening=False)

    def _set_health(
        self, shard: str, *, listening: bool, lost: bool = False, error: str | None = None
    ) -> None:
        with self._lock:
            old = self._health[shard]
            self._health[shard] = ListenerHealth(
                shard,
                listening,
                old.connections_lost + (1 if lost else 0),
                error if error is not None else old.last_error,
            )

    def _dispatch(self, channel: str, payload: str) -> None:
        kind = _CHANNELS.get(channel)
        if kind is None:
            return
        items = _items(payload) if channel == _MANY_IDS else {payload: None} if payload else None
        with self._lock:
            if items is not None:
                woken = [
                    (w, text) for i, text in items.items() for w in self._waiters.get((kind, i), ())
                ]
            else:  # an ID too long for a payload: every waiter of that kind looks
                woken = [(w, None) for (k, _), g in self._waiters.items() if k is kind for w in g]
        for waiter, text in woken:
            if text is not None:
                waiter.carried = text
            waiter._set("notified")

    def _wake_all(self) -> None:
        with self._lock:
            woken = [w for group in self._waiters.values() for w in group]
        for waiter in woken:
            waiter._set("resynced")

    def close(self) -> None:
        """Stop every listener (each closes its connection) and wake every waiter."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=_SILENCE_SECONDS * 5)
        self._wake_all()
