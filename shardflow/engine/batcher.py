"""Group commit for a worker's writes to one shard.

Runs hand their step checkpoints and final states to the shard's committer thread and
wait. The committer writes everything queued so far in one transaction (the store's one
fenced write statement, :meth:`Store.write_batch`), commits, and answers each waiter. A
step still returns only after its own checkpoint is committed; under load, many
checkpoints share one commit. At light load a batch holds one write and nothing waits
for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from shardflow.engine.records import FinishWrite, StepRecord, StepWrite
from shardflow.engine.store import Store
from shardflow.engine.store_errors import StoreError, TransientStoreError
from shardflow.errors import ShardUnavailable, ValueRejected
from shardflow.retry import Backoff, Failure, classify, first_line

log = logging.getLogger(__name__)

MAX_BATCH = 500

__all__ = ["MAX_BATCH", "FinishWrite", "GroupWriter", "ShardCommitter", "StepWrite"]


@dataclass(slots=True)
class _Queued:
    """A write waiting for its commit, and the answer its run waits for: ``done`` for a
    thread, or ``answer`` for a coroutine on ``loop`` (answered from the loop itself, all
    of a batch's answers with one wake-up of the loop)."""

    write: StepWrite | FinishWrite
    done: Future[bool] | None = None
    answer: asyncio.Future[bool] | None = None
    loop: asyncio.AbstractEventLoop | None = None


Outcome = bool | BaseException


def _settle(answers: Sequence[tuple[_Queued, Outcome]]) -> None:
    """Hand each queued write its outcome: a thread's future at once, a coroutine's on its
    loop, one ``call_soon_threadsafe`` per loop for the lot."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], Outcome]]] = {}
    for q, outcome in answers:
        if q.answer is not None and q.loop is not None:
            by_loop.setdefault(q.loop, []).append((q.answer, outcome))
        elif q.done is not None and not q.done.done():
            if isinstance(outcome, BaseException):
                q.done.set_exception(outcome)
            else:
                q.done.set_result(outcome)
    for loop, settled in by_loop.items():
        # A closed loop (RuntimeError) has nobody waiting on it any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_on_loop, settled)


def _settle_on_loop(settled: list[tuple[asyncio.Future[bool], Outcome]]) -> None:
    for answer, outcome in settled:
        if answer.done():  # given up on (answer timeout) or cancelled
            continue
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)


class ShardCommitter:
    """One thread per shard that commits queued writes together.

    The thread never dies of an error: a shard that cannot be reached fails the writes
    queued for it (their runs stop; their leases lapse and any worker resumes them); a
    statement that may succeed again (deadlock, lock timeout, read-only failover window)
    is retried in place with backoff; a value the database refuses fails only the write
    that carries it, and only that run learns of it. Anything else is logged and handled
    like the last case. ``last_progress`` feeds the worker's watchdog.
    """

    def __init__(self, store: Store, shard: str, *, retry_seconds: float = 5.0) -> None:
        self.store = store
        self.shard = shard
        self.retry_seconds = retry_seconds
        self._queue: list[_Queued] = []
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.writes = 0
        self.errors = 0
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(
            target=self._loop, name=f"shardflow-commit-{shard}", daemon=True
        )
        self._thread.start()

    def record_step(self, write: StepWrite, timeout: float | None = None) -> bool:
        """Queue a checkpoint and wait until it is committed. True if written; False if
        fenced off or another run recorded this step first."""
        return self._wait(write, timeout)

    def finish(self, write: FinishWrite, timeout: float | None = None) -> bool:
        """Queue a final state and wait until it is committed. False if fenced off."""
        return self._wait(write, timeout)

    def enqueue_async(self, write: StepWrite | FinishWrite) -> asyncio.Future[bool]:
        """Queue a write from a coroutine: the loop's future says what
        :meth:`record_step` or :meth:`finish` would return."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        self._put(_Queued(write, answer=answer, loop=loop))
        return answer

    def _wait(self, write: StepWrite | FinishWrite, timeout: float | None) -> bool:
        done: Future[bool] = Future()
        self._put(_Queued(write, done=done))
        try:
            return done.result(timeout)
        except FutureTimeout:
            # The outcome is unknown (the commit may still land): the caller must not
            # write again under this attempt. Its lease decides what happens next.
            raise ShardUnavailable(self.shard, f"no commit answer within {timeout:.1f}s") from None

    def _put(self, queued: _Queued) -> None:
        with self._cond:
            if self._stopped:
                raise ShardUnavailable(self.shard, "the worker is stopping")
            self._queue.append(queued)
            self._cond.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def queued(self) -> int:
        """Writes waiting for the thread (not counting the batch it is writing now)."""
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread; writes queued later are refused.
        Writes still queued after ``timeout`` (a shard that does not answer) fail with
        :class:`ShardUnavailable`: no waiter is left hanging."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left, self._queue = self._queue, []
        stopped = ShardUnavailable(self.shard, "the worker stopped")
        _settle([(q, stopped) for q in left])

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait(1.0)
                    self.last_progress = time.monotonic()
                if not self._queue and self._stopped:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            answers: list[tuple[_Queued, Outcome]] = []
            try:
                self._commit(batch, answers)
            except BaseException as exc:  # never leave a waiter hanging, never die
                log.exception("committer of %s failed on a batch of %d", self.shard, len(batch))
                error = exc if isinstance(exc, Exception) else StoreError(str(exc))
                answered = {id(q) for q, _ in answers}
                answers.extend((q, error) for q in batch if id(q) not in answered)
            _settle(answers)
            self.last_progress = time.monotonic()

    def _commit(self, batch: Sequence[_Queued], answers: list[tuple[_Queued, Outcome]]) -> None:
        """Write ``batch`` and append each write's outcome to ``answers``."""
        backoff = Backoff(0.05, 1.0)
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                result = self.store.write_batch(self.shard, [q.write for q in batch])
                break
            except Exception as exc:
                kind = classify(exc)
                delay = backoff.next()
                if kind is Failure.RETRY and time.monotonic() + delay < deadline:
                    log.info("group commit on %s: %s; retrying", self.shard, first_line(exc))
                    time.sleep(delay)
                    continue
                self.errors += 1
                if kind is Failure.UNAVAILABLE:
                    error: Exception = (
                        exc
                        if isinstance(exc, ShardUnavailable)
                        else ShardUnavailable(self.shard, first_line(exc))
                    )
                    answers.extend((q, error) for q in batch)
                    return
                if len(batch) > 1:
                    # One bad row must not fail the others: retry each write on its own.
                    log.warning(
                        "group commit on %s failed (%s); retrying one by one",
                        self.shard,
                        first_line(exc),
                    )
                    for q in batch:
                        self._commit([q], answers)
                    return
                answers.append((batch[0], _write_error(self.shard, kind, exc)))
                return
        self.batches += 1
        self.writes += len(batch)
        answers.extend((q, result.written(q.write)) for q in batch)


def _write_error(shard: str, kind: Failure, exc: Exception) -> Exception:
    """What the run that queued a failed write is told (the store has classified it
    already; anything else is wrapped here)."""
    text = f"shard {shard!r}: {first_line(exc)}"
    if kind is Failure.BAD_VALUE:
        return exc if isinstance(exc, ValueRejected) else ValueRejected(text)
    if kind is Failure.RETRY:
        return exc if isinstance(exc, TransientStoreError) else TransientStoreError(text)
    return exc if isinstance(exc, StoreError) else StoreError(text)


class GroupWriter:
    """A run's step and final-state writes through per-shard committers (the contract of
    ``Store.record_step`` and ``Store.finish``, which write a batch of one).

    ``on_committed(shard, write)`` is called after each step write this writer committed
    for its run (not for one that lost to another run's record)."""

    def __init__(
        self,
        store: Store,
        shards: Sequence[str],
        *,
        answer_timeout: float | None = None,
        on_committed: Callable[[str, StepWrite], None] | None = None,
    ) -> None:
        self.store = store
        # How long a run waits for its commit before giving up on it (unknown outcome).
        self.answer_timeout = answer_timeout
        self.on_committed = on_committed
        retry = (answer_timeout or 10.0) / 2
        self.committers = {s: ShardCommitter(store, s, retry_seconds=retry) for s in shards}
        self._deadlines: dict[asyncio.AbstractEventLoop, _AnswerDeadlines] = {}

    def record_step(self, shard: str, write: StepWrite) -> StepRecord | None:
        """Record a step. Returns None if written; the winning record if another run wrote
        this step first. Raises :class:`Fenced` if this run no longer owns the workflow."""
        if self.committers[shard].record_step(write, self.answer_timeout):
            self._committed(shard, write)
            return None
        return self.store.resolve_unwritten_step(
            shard, write.workflow_id, write.attempt, write.step_no
        )

    async def record_step_async(self, shard: str, write: StepWrite) -> StepRecord | None:
        """:meth:`record_step` for a run on an event loop: it awaits the commit without
        holding a thread."""
        if await self._answer(shard, self.committers[shard].enqueue_async(write)):
            self._committed(shard, write)
            return None
        return await asyncio.to_thread(
            self.store.resolve_unwritten_step,
            shard,
            write.workflow_id,
            write.attempt,
            write.step_no,
        )

    def finish(self, shard: str, write: FinishWrite) -> bool:
        """Record the final state once. False if this run was fenced off."""
        return self.committers[shard].finish(write, self.answer_timeout)

    async def finish_async(self, shard: str, write: FinishWrite) -> bool:
        """:meth:`finish` for a run on an event loop (no thread held)."""
        return await self._answer(shard, self.committers[shard].enqueue_async(write))

    def _committed(self, shard: str, write: StepWrite) -> None:
        if self.on_committed is not None:
            self.on_committed(shard, write)

    async def _answer(self, shard: str, answer: asyncio.Future[bool]) -> bool:
        """Await the committer's answer, at most ``answer_timeout`` (then the outcome is
        unknown: ShardUnavailable, as for a thread that waits)."""
        if self.answer_timeout is not None:
            loop = asyncio.get_running_loop()
            deadlines = self._deadlines.get(loop)
            if deadlines is None:
                deadlines = self._deadlines[loop] = _AnswerDeadlines(loop, self.answer_timeout)
            deadlines.watch(answer, shard)
        return await answer

    def close(self) -> None:
        for committer in self.committers.values():
            committer.stop()


class _AnswerDeadlines:
    """Gives up on the commit answers a loop's runs still await after ``timeout``, with one
    timer for them all (a timer per answer would grow the loop's timer heap by one entry
    per checkpoint in flight). Deadlines arrive in order, so a queue is enough."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._watched: deque[tuple[float, asyncio.Future[bool], str]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, answer: asyncio.Future[bool], shard: str) -> None:
        deadline = self._loop.time() + self._timeout
        self._watched.append((deadline, answer, shard))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        watched = self._watched
        while watched and (watched[0][1].done() or watched[0][0] <= now):
            _, answer, shard = watched.popleft()
            if not answer.done():
                # The outcome is unknown (the commit may still land): the run must not
                # write again under this attempt. Its lease decides what happens next.
                answer.set_exception(
                    ShardUnavailable(shard, f"no commit answer within {self._timeout}s")
                )
        if watched:
            self._timer = self._loop.call_at(watched[0][0], self._sweep)
