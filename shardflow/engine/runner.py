"""Running one claimed workflow: replay recorded steps, checkpoint new ones, finish once.

The recorded steps are loaded once when the run starts (none on a first attempt); each step
call then either returns its recorded output or runs, is retried per its policy, and is
recorded in one committed row fenced on the claimed attempt. The final state is written
by the same fenced rule, so it is recorded exactly once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from shardflow import retry, tracing
from shardflow.engine import context
from shardflow.engine.app import App
from shardflow.engine.policy import RetryPolicy
from shardflow.engine.ports import RunClient, RunWriter
from shardflow.engine.records import Claim, StepRecord
from shardflow.engine.serialization import error_record, rebuild_error
from shardflow.engine.signals import RunInterrupted, Suspend
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Fenced, Store, StoreError, TransientStoreError
from shardflow.errors import (
    NonDeterminismError,
    SerializationError,
    ShardUnavailable,
    ValueRejected,
)

# The run's protocols and signals are also importable from here, where they are used.
__all__ = ["RunClient", "RunInterrupted", "RunWriter", "Suspend", "WorkflowRun", "execute"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A run that needs another shard that is down is parked this long, then replays.
OTHER_SHARD_RETRY_SECONDS = 5.0
# How long a client call inside a run retries a shard's outage before the run is parked.
RUN_RETRY_SECONDS = 2.0


class WorkflowRun:
    """One attempt at running one workflow, on the thread that executes it."""

    def __init__(
        self,
        claim: Claim,
        store: Store,
        lease_seconds: float,
        client: RunClient | None = None,
        writer: RunWriter | None = None,
    ) -> None:
        self.claim = claim
        self.store = store
        # Where checkpoints and the final state go: the store, or a group committer.
        self.writer: RunWriter = writer or store
        # How the workflow reaches other workflows (None: it cannot, e.g. in a test).
        self.client = client
        # Set by the worker's listener when a message for this workflow arrives.
        self.message_arrived = threading.Event()
        self.workflow_id = claim.workflow_id
        self.shard = claim.shard
        self.attempt = claim.attempt
        self.recorded: dict[int, StepRecord] = {}
        self.next_step = 0
        self.interrupted = threading.Event()
        self.interrupt_reason = ""
        self.lease_seconds = lease_seconds
        # Local view of the lease: if heartbeats fail for a whole lease, another worker
        # may own the workflow, so this run must stop writing.
        started = time.monotonic() if claim.lease_from is None else claim.lease_from
        self.lease_valid_until = started + lease_seconds
        # Told how long each completed step took (shard, step name, seconds): metrics.
        self.observe_step: Callable[[str, str, float], None] | None = None

    def db_time(self) -> float:
        """Now on the database clock of this run's shard (epoch seconds), estimated from
        the offset measured when the run was claimed."""
        return time.time() + self.claim.clock_offset

    def interrupt(self, reason: str) -> None:
        self.interrupt_reason = reason
        self.interrupted.set()

    def lease_renewed(self, at: float) -> None:
        self.lease_valid_until = at + self.lease_seconds

    def check_live(self) -> None:
        if self.interrupted.is_set():
            raise RunInterrupted(self.interrupt_reason)
        if time.monotonic() > self.lease_valid_until:
            raise RunInterrupted("lease expired before it could be renewed")

    def take_step(self, name: str) -> tuple[int, StepRecord | None]:
        """The next step number, and its record if this position was recorded already
        (checking that replay reached the same step)."""
        step_no = self.next_step
        self.next_step += 1
        record = self.recorded.get(step_no)
        if record is not None and record.name != name:
            raise NonDeterminismError(
                f"workflow {self.workflow_id!r} step {step_no}: replay called"
                f" {name!r} but the recorded step is {record.name!r}"
            )
        return step_no, record

    def checkpoint(self, name: str, compute: Callable[[], T]) -> T:
        """Run ``compute`` once and record its value; replay returns the record."""
        step_no, record = self.take_step(name)
        if record is not None:
            recorded: T = self._replay(record, name)
            return recorded
        self.check_live()
        started_at = self.db_time()
        value = compute()
        # A wait inside compute() may have ended because the run was interrupted: never
        # record what it returned then.
        self.check_live()
        committed: T = self._commit_value(step_no, name, value, "value", started_at)
        return committed

    def record_raw(
        self, step_no: int, name: str, output: str | None, error: dict[str, Any] | None
    ) -> None:
        """Record an already serialized value at ``step_no`` (fenced)."""
        self._record(step_no, name, output, error)

    def checkpoint_at(self, step_no: int, name: str, value: Any) -> None:
        self._record(step_no, name, self.store.codec.dumps(value, f"value of {name!r}"), None)

    def consume_message_at(self, step_no: int, topic: str) -> tuple[bool, Any]:
        with _owned():
            return self.store.consume_message(
                self.shard,
                workflow_id=self.workflow_id,
                attempt=self.attempt,
                step_no=step_no,
                topic=topic,
            )

    def set_event_at(self, step_no: int, key: str, text: str) -> None:
        with _owned():
            self.store.set_event(
                self.shard,
                workflow_id=self.workflow_id,
                attempt=self.attempt,
                step_no=step_no,
                key=key,
                value=text,
            )

    def run_step(self, name: str, retry: RetryPolicy, fn: Callable[[], T]) -> T:
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
                    value = fn()
                break
            except Exception as exc:
                failures += 1
                if failures >= retry.max_attempts:
                    elapsed_ms = (time.monotonic() - started) * 1000.0
                    self._record(step_no, name, None, error_record(exc), started_at, elapsed_ms)
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
                if self.interrupted.wait(delay):
                    raise RunInterrupted(self.interrupt_reason) from exc
        elapsed = time.monotonic() - started
        if self.observe_step is not None:
            self.observe_step(self.shard, name, elapsed)
        committed: T = self._commit_value(
            step_no, name, value, "output", started_at, elapsed * 1000.0
        )
        return committed

    def _commit_value(
        self,
        step_no: int,
        name: str,
        value: Any,
        what: str,
        started_at: float | None = None,
        duration_ms: float | None = None,
    ) -> Any:
        """Record ``value`` as step ``step_no`` and return what replay will return: the
        value round-tripped through the serializer, or the record another run won with."""
        output = self.store.codec.dumps(value, f"{what} of step {name!r}")
        winner = self._record(step_no, name, output, None, started_at, duration_ms)
        if winner is not None:
            return self._replay(winner, name)
        return self.store.codec.loads(output)

    def _replay(self, record: StepRecord, name: str) -> Any:
        if record.name != name:
            raise NonDeterminismError(
                f"workflow {self.workflow_id!r} step {record.step_no}: replay called"
                f" {name!r} but the recorded step is {record.name!r}"
            )
        if record.error is not None:
            raise rebuild_error(record.error)
        return record.output

    def _record(
        self,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
        started_at: float | None = None,
        duration_ms: float | None = None,
    ) -> StepRecord | None:
        with _owned():
            return self.writer.record_step(
                self.shard,
                workflow_id=self.workflow_id,
                attempt=self.attempt,
                step_no=step_no,
                name=name,
                output=output,
                error=error,
                # Recorded without a start, a record still says which attempt wrote it.
                started_at=self.db_time() if started_at is None else started_at,
                duration_ms=duration_ms,
            )


@contextmanager
def _owned() -> Iterator[None]:
    """A run's own write: losing the workflow (fenced off) or its shard stops the run."""
    try:
        yield
    except Fenced as exc:
        raise RunInterrupted(f"fenced off (state {exc.state})") from None
    except (ShardUnavailable, TransientStoreError) as exc:
        # The run stops without writing; its lease expires and any worker resumes it.
        raise RunInterrupted(str(exc)) from None


def execute(run: WorkflowRun, app: App) -> WorkflowState | None:
    """Run ``run`` to its end. Returns the final state written, or None if this run was
    interrupted or fenced off (someone else owns the outcome). Traced as one span whose
    parent is the trace context stored at submit (shardflow/tracing.py)."""
    claim = run.claim
    with tracing.run_span(claim.name, claim.trace_context, _attributes(claim)) as ended:
        state = _execute(run, app)
        ended(None if state is None else state.value)
        return state


def _attributes(claim: Claim) -> dict[str, str | int]:
    known = {} if claim.slot is None else {tracing.SLOT: claim.slot}
    return {
        tracing.WORKFLOW_ID: claim.workflow_id,
        tracing.WORKFLOW_NAME: claim.name,
        tracing.SHARD: claim.shard,
        tracing.QUEUE: claim.queue,
        tracing.ATTEMPT: claim.attempt,
        tracing.RECOVERIES: claim.recoveries,
        **known,
    }


def _execute(run: WorkflowRun, app: App) -> WorkflowState | None:
    claim = run.claim
    store = run.store
    codec = store.codec
    wf = app.lookup(claim.name)
    token = context.enter(run)
    try:
        # A first attempt has nothing recorded: skip the read.
        if claim.attempt > 1:
            run.recorded = {s.step_no: s for s in store.load_steps(run.shard, run.workflow_id)}
        inputs = codec.loads(claim.inputs)
        # Client calls made by the workflow (send, children, events) retry briefly: on a
        # longer outage of another shard the run is parked and replays later.
        with retry.budget(RUN_RETRY_SECONDS):
            result = wf.fn(*inputs.get("args", ()), **inputs.get("kwargs", {}))
        output = codec.dumps(result, f"result of workflow {claim.name!r}")
    except Suspend as wait:
        return _suspend(run, wait)
    except RunInterrupted as exc:
        log.info("run of %s (attempt %d) stopped: %s", run.workflow_id, run.attempt, exc)
        return None
    except (ShardUnavailable, TransientStoreError) as exc:
        if isinstance(exc, ShardUnavailable) and exc.shard == run.shard:
            # Its own shard: nothing more can be written; the lease decides.
            log.warning("run of %s abandoned: %s", run.workflow_id, exc)
            return None
        # Another shard this workflow talks to (send, child, event) is down, or a read
        # failed for a moment: not a crash. Park the run and let it replay to here later.
        where = exc.shard if isinstance(exc, ShardUnavailable) else "retry"
        log.warning(
            "run of %s parked for %.0fs: %s", run.workflow_id, OTHER_SHARD_RETRY_SECONDS, exc
        )
        return _suspend(run, Suspend(OTHER_SHARD_RETRY_SECONDS, f"shard:{where}"))
    except NonDeterminismError as exc:
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), "non-determinism")
    except SerializationError as exc:
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), "serialization")
    except Exception as exc:
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), None)
    finally:
        context.leave(token)
    return _finish(run, WorkflowState.SUCCESS, output, None, None)


def _finish(
    run: WorkflowRun,
    state: WorkflowState,
    output: str | None,
    error: dict[str, Any] | None,
    reason: str | None,
) -> WorkflowState | None:
    try:
        written = run.writer.finish(
            run.shard,
            workflow_id=run.workflow_id,
            attempt=run.attempt,
            state=state,
            output=output,
            error=error,
            reason=reason,
        )
    except ValueRejected as exc:
        # The database refused the result itself (an unforeseen server limit): end in
        # ERROR saying so, with nothing of the refused value.
        if state is WorkflowState.ERROR and reason == "value rejected":
            log.error("could not record the end of %s: %s", run.workflow_id, exc)
            return None
        log.warning("end of %s refused by the database: %s", run.workflow_id, exc)
        refused = error_record(exc)
        return _finish(run, WorkflowState.ERROR, None, refused, "value rejected")
    except (ShardUnavailable, TransientStoreError, StoreError) as exc:
        log.warning("could not record the end of %s: %s", run.workflow_id, exc)
        return None
    if not written:
        log.info("end of %s not recorded: fenced off (attempt %d)", run.workflow_id, run.attempt)
        return None
    if state is WorkflowState.ERROR:
        message = (error or {}).get("message", "")
        log.warning(
            "workflow %s (%s) failed on %s: %s: %s",
            run.workflow_id,
            run.claim.name,
            run.shard,
            (error or {}).get("type", "Error"),
            message if len(message) < 500 else message[:500] + "...",
        )
    if run.claim.parent_id and run.client is not None:
        # Best effort: a parent waiting for this child re-checks after it suspends, so a
        # wake-up lost here only delays it until its fallback wake time.
        try:
            run.client.wake(run.claim.parent_id, wait_for="child")
        except Exception as exc:
            log.info("could not wake parent %s: %s", run.claim.parent_id, exc)
    return state


def _suspend(run: WorkflowRun, wait: Suspend) -> WorkflowState | None:
    try:
        with tracing.span("shardflow.suspend", {tracing.WAIT_FOR: wait.wait_for}):
            parked = run.store.suspend(
                run.shard,
                workflow_id=run.workflow_id,
                attempt=run.attempt,
                delay_seconds=wait.delay_seconds,
                wait_for=wait.wait_for,
                topic=wait.topic,
            )
    except (ShardUnavailable, TransientStoreError, StoreError) as exc:
        log.warning("could not suspend %s: %s", run.workflow_id, exc)
        return None
    if not parked:
        return None
    if wait.child_id is not None and run.client is not None:
        # Close the race with a child that finished while this run was still RUNNING.
        try:
            if run.client.get(wait.child_id).state.is_terminal:
                run.store.wake(run.shard, run.workflow_id)
        except Exception as exc:
            log.info("re-check of child %s failed: %s", wait.child_id, exc)
    return WorkflowState.SUSPENDED
