"""Group commit for a worker's writes to one shard.

Runs hand their step checkpoints and final states to the shard's committer thread and
wait. The committer writes everything queued so far in one transaction (one statement
per kind), commits, and answers each waiter. A step still returns only after its own
checkpoint is committed; under load, many checkpoints share one commit. At light load a
batch holds one write and nothing waits for company.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from shardflow.engine.records import StepRecord
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.engine.store_errors import StoreError, TransientStoreError
from shardflow.errors import ShardUnavailable, ValueRejected
from shardflow.retry import Backoff, Failure, classify, first_line
from shardflow.router.pools import ShardPools
from shardflow.sql import query

log = logging.getLogger(__name__)

MAX_BATCH = 500
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class StepWrite:
    workflow_id: str
    attempt: int
    step_no: int
    name: str
    output: str | None
    error: dict[str, Any] | None
    # Epoch seconds on the database clock; how long the step ran (None: not a step).
    started_at: float | None = None
    duration_ms: float | None = None
    done: Future[bool] = field(default_factory=Future)


@dataclass(slots=True)
class FinishWrite:
    workflow_id: str
    attempt: int
    state: str
    output: str | None
    error: dict[str, Any] | None
    reason: str | None
    done: Future[bool] = field(default_factory=Future)


class ShardCommitter:
    """One thread and one connection per shard that commit queued writes together.

    The thread never dies of an error: a shard that cannot be reached fails the writes
    queued for it (their runs stop; their leases lapse and any worker resumes them); a
    statement that may succeed again (deadlock, lock timeout, read-only failover window)
    is retried in place with backoff; a value the database refuses fails only the write
    that carries it, and only that run learns of it. Anything else is logged and handled
    like the last case. ``last_progress`` feeds the worker's watchdog.
    """

    def __init__(self, pools: ShardPools, shard: str, *, retry_seconds: float = 5.0) -> None:
        self.pools = pools
        self.shard = shard
        self.retry_seconds = retry_seconds
        self._queue: list[StepWrite | FinishWrite] = []
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
        return self._wait(write, timeout)

    def _wait(self, write: StepWrite | FinishWrite, timeout: float | None) -> bool:
        self._put(write)
        try:
            return write.done.result(timeout)
        except FutureTimeout:
            # The outcome is unknown (the commit may still land): the caller must not
            # write again under this attempt. Its lease decides what happens next.
            raise ShardUnavailable(self.shard, f"no commit answer within {timeout:.1f}s") from None

    def _put(self, write: StepWrite | FinishWrite) -> None:
        with self._cond:
            if self._stopped:
                raise ShardUnavailable(self.shard, "the worker is stopping")
            self._queue.append(write)
            self._cond.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

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
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(
                            exc if isinstance(exc, Exception) else StoreError(str(exc))
                        )
            self.last_progress = time.monotonic()

    def _commit(self, batch: Sequence[StepWrite | FinishWrite]) -> None:
        backoff = Backoff(0.05, 1.0)
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                rows = self._execute(batch)
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
                    for w in batch:
                        w.done.set_exception(error)
                    return
                if len(batch) > 1:
                    # One bad row must not fail the others: retry each write on its own.
                    log.warning(
                        "group commit on %s failed (%s); retrying one by one",
                        self.shard,
                        first_line(exc),
                    )
                    for w in batch:
                        self._commit([w])
                    return
                batch[0].done.set_exception(_write_error(self.shard, kind, exc))
                return
        self.batches += 1
        self.writes += len(batch)
        written_steps = {(str(r[0]), int(r[1])) for r in rows if r[1] is not None}
        finished = {str(r[0]) for r in rows if r[1] is None}
        for w in batch:
            if isinstance(w, StepWrite):
                w.done.set_result((w.workflow_id, w.step_no) in written_steps)
            else:
                w.done.set_result(w.workflow_id in finished)

    def _execute(self, batch: Sequence[StepWrite | FinishWrite]) -> list[tuple[Any, ...]]:
        steps = [w for w in batch if isinstance(w, StepWrite)]
        # One lock order for the status rows a batch locks or updates.
        steps.sort(key=lambda w: w.workflow_id)
        finishes = sorted(
            (w for w in batch if isinstance(w, FinishWrite)), key=lambda f: f.workflow_id
        )
        # Both lists travel as JSON documents: one C-encoded string each, where a dozen
        # Python-built arrays would cost more than the statement.
        params = {
            "steps": _encode(
                [
                    {
                        "workflow_id": w.workflow_id,
                        "attempt": w.attempt,
                        "step_no": w.step_no,
                        "name": w.name,
                        "output": w.output,
                        "error": w.error,
                        "started_at": w.started_at,
                        "duration_ms": w.duration_ms,
                    }
                    for w in steps
                ]
            ),
            "finishes": _encode(
                [
                    {
                        "workflow_id": w.workflow_id,
                        "attempt": w.attempt,
                        "state": w.state,
                        "output": w.output,
                        "error": w.error,
                        "reason": w.reason,
                    }
                    for w in finishes
                ]
            ),
        }
        # Autocommit: the single statement is its own transaction.
        with self.pools.connection(self.shard) as conn:
            return conn.execute(query("commit_batch"), params).fetchall()


def _write_error(shard: str, kind: Failure, exc: Exception) -> Exception:
    """What the run that queued a failed write is told."""
    text = f"shard {shard!r}: {first_line(exc)}"
    if kind is Failure.BAD_VALUE:
        return exc if isinstance(exc, ValueRejected) else ValueRejected(text)
    if kind is Failure.RETRY:
        return TransientStoreError(text)
    return StoreError(text)


class GroupWriter:
    """A run's step and final-state writes through per-shard committers (same contract as
    ``Store.record_step`` and ``Store.finish``)."""

    def __init__(
        self, store: Store, shards: Sequence[str], *, answer_timeout: float | None = None
    ) -> None:
        self.store = store
        # How long a run waits for its commit before giving up on it (unknown outcome).
        self.answer_timeout = answer_timeout
        retry = (answer_timeout or 10.0) / 2
        self.committers = {s: ShardCommitter(store.pools, s, retry_seconds=retry) for s in shards}

    def record_step(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
        started_at: float | None = None,
        duration_ms: float | None = None,
    ) -> StepRecord | None:
        write = StepWrite(
            workflow_id, attempt, step_no, name, output, error, started_at, duration_ms
        )
        written = self.committers[shard].record_step(write, self.answer_timeout)
        if written:
            return None
        return self.store.resolve_unwritten_step(shard, workflow_id, attempt, step_no)

    def finish(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        state: WorkflowState,
        output: str | None,
        error: dict[str, Any] | None,
        reason: str | None = None,
    ) -> bool:
        return self.committers[shard].finish(
            FinishWrite(workflow_id, attempt, state.value, output, error, reason),
            self.answer_timeout,
        )

    def close(self) -> None:
        for committer in self.committers.values():
            committer.stop()
