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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

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
    """A write waiting for its commit, and the answer its run waits for."""

    write: StepWrite | FinishWrite
    done: Future[bool] = field(default_factory=Future)


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

    def enqueue(self, write: StepWrite | FinishWrite) -> Future[bool]:
        """Queue a write without waiting: the future says what :meth:`record_step` or
        :meth:`finish` would return (for runs that await it on an event loop)."""
        queued = _Queued(write)
        self._put(queued)
        return queued.done

    def _wait(self, write: StepWrite | FinishWrite, timeout: float | None) -> bool:
        done = self.enqueue(write)
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
        for q in left:
            if not q.done.done():
                q.done.set_exception(ShardUnavailable(self.shard, "the worker stopped"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait(1.0)
                    self.last_progress = time.monotonic()
                if not self._queue and self._stopped:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a waiter hanging, never die
                log.exception("committer of %s failed on a batch of %d", self.shard, len(batch))
                for q in batch:
                    if not q.done.done():
                        q.done.set_exception(
                            exc if isinstance(exc, Exception) else StoreError(str(exc))
                        )
            self.last_progress = time.monotonic()

    def _commit(self, batch: Sequence[_Queued]) -> None:
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
                    for q in batch:
                        q.done.set_exception(error)
                    return
                if len(batch) > 1:
                    # One bad row must not fail the others: retry each write on its own.
                    log.warning(
                        "group commit on %s failed (%s); retrying one by one",
                        self.shard,
                        first_line(exc),
                    )
                    for q in batch:
                        self._commit([q])
                    return
                batch[0].done.set_exception(_write_error(self.shard, kind, exc))
                return
        self.batches += 1
        self.writes += len(batch)
        for q in batch:
            q.done.set_result(result.written(q.write))


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
        if await self._answer(shard, self.committers[shard].enqueue(write)):
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
        return await self._answer(shard, self.committers[shard].enqueue(write))

    def _committed(self, shard: str, write: StepWrite) -> None:
        if self.on_committed is not None:
            self.on_committed(shard, write)

    async def _answer(self, shard: str, future: Future[bool]) -> bool:
        """Await the committer's answer, at most ``answer_timeout`` (then the outcome is
        unknown: ShardUnavailable, as for a thread that waits)."""
        # shield: a timeout must not cancel the committer's future (it answers later).
        done = asyncio.shield(asyncio.wrap_future(future))
        try:
            return await asyncio.wait_for(done, self.answer_timeout)
        except TimeoutError:
            raise ShardUnavailable(
                shard, f"no commit answer within {self.answer_timeout}s"
            ) from None

    def close(self) -> None:
        for committer in self.committers.values():
            committer.stop()
