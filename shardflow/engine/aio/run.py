"""An async workflow's run: the same replay and checkpoint rules as a sync run
(:class:`~shardflow.engine.runner.WorkflowRun`, which it extends), awaited on the worker's
event loop.

Workflow code and async steps run on the loop; every blocking call (a checkpoint through
the group committer, loading the recorded steps, a client call, the run's end) runs in the
run's thread pool, so a run waiting on I/O holds no thread. The run's end goes through the
same :func:`~shardflow.engine.execution.end_by` / ``end_with`` as a sync run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from shardflow import retry as retries
from shardflow import tracing
from shardflow.engine import context
from shardflow.engine.app import App
from shardflow.engine.execution import after_finish, end_by, end_with, run_attributes
from shardflow.engine.policy import RetryPolicy
from shardflow.engine.ports import AsyncRunWriter, RunClient, RunWriter
from shardflow.engine.records import Claim, FinishWrite
from shardflow.engine.runner import RUN_RETRY_SECONDS, WorkflowRun, owned
from shardflow.engine.serialization import error_record
from shardflow.engine.signals import FlagEvent, RunInterrupted
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store, StoreError, TransientStoreError
from shardflow.errors import ShardUnavailable, ValueRejected

__all__ = ["AsyncWorkflowRun", "LoopEvent", "execute_async"]

log = logging.getLogger("shardflow.engine.runner")
T = TypeVar("T")


class LoopEvent(FlagEvent):
    """A run's event that coroutines on ``loop`` can also await without holding a
    thread. Its ``asyncio.Event`` is made by the first coroutine that waits, before it
    looks at the flag (see :class:`~shardflow.engine.signals.FlagEvent`)."""

    __slots__ = ("_awaitable", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._awaitable: asyncio.Event | None = None

    def set(self) -> None:
        super().set()
        awaitable = self._awaitable
        if awaitable is not None:
            # A closed loop (RuntimeError) has nothing waiting on it any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(awaitable.set)

    def clear(self) -> None:
        super().clear()
        if self._awaitable is not None:
            self._awaitable.clear()

    async def wait_async(self, timeout: float | None) -> bool:
        """Wait on the loop until set or ``timeout``; True if set."""
        if self._awaitable is None:
            self._awaitable = asyncio.Event()
        if self._flag:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._awaitable.wait(), timeout)
        return self._flag


class AsyncWorkflowRun(WorkflowRun):
    """One attempt at running one async workflow, on the worker's event loop."""

    is_async = True

    def __init__(
        self,
        claim: Claim,
        store: Store,
        lease_seconds: float,
        client: RunClient | None,
        writer: RunWriter | None,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: Executor | None,
        async_writer: AsyncRunWriter | None = None,
    ) -> None:
        self.loop = loop  # before the base class makes its events (_new_event)
        super().__init__(claim, store, lease_seconds, client, writer)
        # Checkpoints awaited on the loop (else written from a thread of the pool).
        self.async_writer = async_writer
        self.executor = executor
        self.interrupted: LoopEvent
        self.message_arrived: LoopEvent

    def _new_event(self) -> LoopEvent:
        return LoopEvent(self.loop)

    def in_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run blocking ``fn`` in the run's thread pool (in this context: the run)."""
        ctx = contextvars.copy_context()
        return self.loop.run_in_executor(self.executor, ctx.run, fn)

    def client_call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """A client call made by the workflow (send, child, event): in a thread, with the
        short retry budget of a run (a longer outage parks the run, as in a sync run)."""

        def budgeted() -> T:
            with retries.budget(RUN_RETRY_SECONDS):
                return fn()

        return self.in_thread(budgeted)

    async def wait_interrupted(self, seconds: float) -> None:
        """Wait ``seconds`` on the loop; stop the run if it is interrupted meanwhile."""
        if await self.interrupted.wait_async(seconds):
            self.check_live()

    async def checkpoint_async(self, name: str, compute: Callable[[], Awaitable[T]]) -> T:
        """Await ``compute()`` once and record its value; replay returns the record."""
        step_no, record = self.take_step(name)
        if record is not None:
            recorded: T = self._replay(record, name)
            return recorded
        self.check_live()
        started_at = self.db_time()
        value = await compute()
        self.check_live()
        committed: T = await self._commit_value_async(step_no, name, value, "value", started_at)
        return committed

    async def run_step_async(
        self, name: str, retry: RetryPolicy, fn: Callable[[], Awaitable[T]]
    ) -> T:
        """:meth:`WorkflowRun.run_step` for an awaited step: replay, retries, checkpoint."""
        step_no, record = self.take_step(name)
        if record is not None:
            replayed: T = self._replay(record, name)
            return replayed
        self.check_live()
        failures = 0
        started = time.monotonic()
        started_at = self.db_time()
        while True:
            try:
                with tracing.step_span(name, step_no):
                    value = await fn()
                break
            except Exception as exc:
                failures += 1
                if failures >= retry.max_attempts:
                    elapsed_ms = (time.monotonic() - started) * 1000.0
                    record_error = functools.partial(
                        self._record, step_no, name, None, error_record(exc), started_at, elapsed_ms
                    )
                    await self.in_thread(record_error)
                    raise
                delay = retry.delay(failures, random.random())
                log.info(
                    "step %s of %s failed (attempt %d/%d), retrying in %.2fs: %s",
                    name,
                    self.workflow_id,
                    failures,
                    retry.max_attempts,
                    delay,
                    exc,
                )
                if await self.interrupted.wait_async(delay):
                    raise RunInterrupted(self.interrupt_reason) from exc
        elapsed = time.monotonic() - started
        if self.observe_step is not None:
            self.observe_step(self.shard, name, elapsed)
        committed: T = await self._commit_value_async(
            step_no, name, value, "output", started_at, elapsed * 1000.0
        )
        return committed

    async def _commit_value_async(
        self,
        step_no: int,
        name: str,
        value: Any,
        what: str,
        started_at: float,
        duration_ms: float | None = None,
    ) -> Any:
        """:meth:`WorkflowRun._commit_value`, awaiting the group committer's answer on the
        loop (no thread held) when the run has an async writer."""
        writer = self.async_writer
        if writer is None:
            return await self.in_thread(
                lambda: self._commit_value(step_no, name, value, what, started_at, duration_ms)
            )
        output = self.store.codec.dumps(value, f"{what} of step {name!r}")
        with owned():
            winner = await writer.record_step_async(
                self.shard, self.step_write(step_no, name, output, None, started_at, duration_ms)
            )
        if winner is not None:
            return self._replay(winner, name)
        return self.store.codec.loads(output)


async def execute_async(run: AsyncWorkflowRun, app: App) -> WorkflowState | None:
    """Run the async workflow of ``run`` to its end on the running loop: the async twin of
    :func:`~shardflow.engine.execution.execute`, ending the same way, traced the same."""
    claim = run.claim
    with tracing.run_span(claim.name, claim.trace_context, run_attributes(claim)) as ended:
        state = await _execute_async(run, app)
        ended(None if state is None else state.value)
        return state


async def _execute_async(run: AsyncWorkflowRun, app: App) -> WorkflowState | None:
    claim = run.claim
    codec = run.store.codec
    wf = app.lookup(claim.name)
    token = context.enter(run)
    try:
        if claim.attempt > 1:
            steps = await run.in_thread(lambda: run.store.load_steps(run.shard, run.workflow_id))
            run.recorded = {s.step_no: s for s in steps}
        inputs = codec.loads(claim.inputs)
        outcome: Any = wf.call(*inputs.get("args", ()), **inputs.get("kwargs", {}))
        result = await outcome
        output = codec.dumps(result, f"result of workflow {claim.name!r}")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        failure = exc
        return await run.in_thread(lambda: end_by(run, failure))
    finally:
        context.leave(token)
    return await _end_with_async(run, output)


async def _end_with_async(run: AsyncWorkflowRun, output: str) -> WorkflowState | None:
    """:func:`~shardflow.engine.execution.end_with`, awaiting the committer's answer on
    the loop when it can (no parent to wake, which is a blocking client call)."""
    writer = run.async_writer
    if writer is None or run.claim.parent_id:
        return await run.in_thread(lambda: end_with(run, output))
    run.ending = True
    try:
        written = await writer.finish_async(
            run.shard,
            FinishWrite(run.workflow_id, run.attempt, WorkflowState.SUCCESS, output, None),
        )
    except ValueRejected:
        # The sync path writes it again, is refused again, and ends the run in ERROR.
        return await run.in_thread(lambda: end_with(run, output))
    except (ShardUnavailable, TransientStoreError, StoreError) as exc:
        log.warning("could not record the end of %s: %s", run.workflow_id, exc)
        return None
    return after_finish(run, WorkflowState.SUCCESS, None, written)
