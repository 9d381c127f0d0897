"""A home shard's takes of queue leases, made on a thread of their own (see
:mod:`~shardflow.engine.worker.queue_leases`)."""

from __future__ import annotations

import queue as queues
import threading
from collections.abc import Callable
from concurrent.futures import Future

Call = tuple[Callable[[], list[str]], "Future[list[str]]"] | None


class HomeCalls:
    """One daemon thread (started on the first call) that makes a home shard's takes,
    one at a time, so that a claim loop can stop waiting (:meth:`call` with a timeout)
    without leaving itself stuck on a frozen connection."""

    def __init__(self, home: str) -> None:
        self._home = home
        self._calls: queues.SimpleQueue[Call] = queues.SimpleQueue()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], list[str]], *, timeout: float) -> list[str]:
        """``fn()`` on this home's thread; TimeoutError (the home is frozen) after
        ``timeout``, also while an earlier call is still stuck there."""
        if not self._busy.acquire(timeout=timeout):
            raise TimeoutError("an earlier take on this home shard has not returned")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name=f"shardflow-take-{self._home}", daemon=True
            )
            self._thread.start()
        future: Future[list[str]] = Future()
        self._calls.put((fn, future))
        result: list[str] = future.result(timeout)
        return result

    def close(self) -> None:
        """End the thread once its current call (if any) returns."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, future = item
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            finally:
                self._busy.release()
