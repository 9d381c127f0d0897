"""The worker's event loop for async workflows: one thread running one asyncio loop,
started when the first async workflow is claimed, and a thread pool for the blocking
calls of async runs (checkpoints through the group committer, client calls, sync steps
awaited with ``call_async``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# The worker's logger (docs/operations.md lists it).
log = logging.getLogger("shardflow.engine.worker")


class RunLoop:
    """One event loop thread shared by every async run of a worker."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def started(self) -> bool:
        return self._loop is not None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started on first use."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                loop.set_exception_handler(_log_loop_error)
                self._executor = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="shardflow-aio-call"
                )
                loop.set_default_executor(self._executor)
                ready = threading.Event()
                self._thread = threading.Thread(
                    target=_run_forever, args=(loop, ready), name="shardflow-aio", daemon=True
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        return self._executor

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    def start_all(self, coros: list[Coroutine[Any, Any, None]]) -> None:
        """Start each coroutine as a task on the loop: one wake-up of the loop for all
        (a claimed batch), where a call per run would cost a thread switch each."""
        if not coros:
            return
        loop = self.loop()

        def start() -> None:
            for coro in coros:
                task = loop.create_task(coro)
                # The loop keeps only weak references to tasks: hold them until done.
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(start)

    def close(self) -> None:
        """Stop the loop (its runs have ended: the worker waits for them first)."""
        with self._lock:
            loop, thread, executor = self._loop, self._thread, self._executor
            self._loop = self._thread = self._executor = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _run_forever(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    except BaseException:
        log.exception("the event loop of async workflows stopped")
        raise


def _log_loop_error(loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
    exc = ctx.get("exception")
    log.error("event loop of async workflows: %s", ctx.get("message"), exc_info=exc)
