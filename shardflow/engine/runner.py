"""Running one claimed workflow: replay recorded steps, checkpoint new ones, finish once.

The recorded steps are loaded once when the run starts (none on a first attempt); each step
call then either returns its recorded output or runs, is retried per its policy, and is
recorded in one committed row fenced on the claimed attempt. The final state is written
by the same fenced rule, so it is recorded exactly once.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from shardflow import tracing
from shardflow.engine.policy import RetryPolicy
from shardflow.engine.ports import RunClient, RunWriter
from shardflow.engine.records import Claim, StepRecord, StepWrite
from shardflow.engine.serialization import error_record, rebuild_error
from shardflow.engine.signals import FlagEvent, RunEvent, RunInterrupted, Suspend
from shardflow.engine.store import Fenced, Store, TransientStoreError
from shardflow.errors import (
    NonDeterminismError,
    ShardUnavailable,
)

# The run's protocols and signals are also importable from here, where they are used.
__all__ = ["RunClient", "RunInterrupted", "RunWriter", "Suspend", "WorkflowRun", "owned"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A run that needs another shard that is down is parked this long, then replays.
OTHER_SHARD_RETRY_SECONDS = 5.0
# How long a client call inside a run retries a shard's outage before the run is parked.
RUN_RETRY_SECONDS = 2.0
# Why a run stopped when its queue lease (engine/worker/queue_leases.py) was lost or
# could not be renewed in time: the worker hands such a workflow back.
QUEUE_LEASE_LOST = "queue lease lost"


class WorkflowRun:
    """One attempt at running one workflow, on the thread that executes it."""

    # An async workflow's run (:class:`~shardflow.engine.aio.run.AsyncWorkflowRun`) says True.
    is_async = False

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
        self.message_arrived = self._new_event()
        self.workflow_id = claim.workflow_id
        self.shard = claim.shard
        self.attempt = claim.attempt
        self.recorded: dict[int, StepRecord] = {}
        self.next_step = 0
        self.interrupted = self._new_event()
        self.interrupt_reason = ""
        # Set once the run's final write is handed to the writer: that write ends the
        # lease itself (a renewal that no longer finds it RUNNING lost nothing).
        self.ending = False
        self.lease_seconds = lease_seconds
        # Local view of the lease: if heartbeats fail for a whole lease, another worker
        # may own the workflow, so this run must stop writing.
        started = time.monotonic() if claim.lease_from is None else claim.lease_from
        self.lease_valid_until = started + lease_seconds
        # The same for the run's queue lease, when its queue has a queue-wide concurrency
        # (set by the worker, engine/worker/queue_leases.py): past it, another run of the
        # queue may hold the place, so this run must stop.
        self.queue_lease_valid_until = math.inf
        # Told how long each completed step took (shard, step name, seconds): metrics.
        self.observe_step: Callable[[str, str, float], None] | None = None

    def _new_event(self) -> RunEvent:
        """The events a run is woken by (an async run's can also be awaited)."""
        return FlagEvent()

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
        now = time.monotonic()
        if now > self.lease_valid_until:
            raise RunInterrupted("lease expired before it could be renewed")
        if now > self.queue_lease_valid_until:
            self.interrupt(QUEUE_LEASE_LOST)  # the worker hands the workflow back
            raise RunInterrupted("queue lease expired before it could be renewed")

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
        with owned():
            return self.store.consume_message(
                self.shard,
                workflow_id=self.workflow_id,
                attempt=self.attempt,
                step_no=step_no,
                topic=topic,
            )

    def set_event_at(self, step_no: int, key: str, text: str) -> None:
        with owned():
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
        with owned():
            return self.writer.record_step(
                self.shard, self.step_write(step_no, name, output, error, started_at, duration_ms)
            )

    def step_write(
        self,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
        started_at: float | None = None,
        duration_ms: float | None = None,
    ) -> StepWrite:
        """This attempt's record of step ``step_no`` (fenced on the attempt when written)."""
        # Recorded without a start, a record still says which attempt wrote it.
        at = self.db_time() if started_at is None else started_at
        return StepWrite(
            self.workflow_id, self.attempt, step_no, name, output, error, at, duration_ms
        )


@contextmanager
def owned() -> Iterator[None]:
    """A run's own write: losing the workflow (fenced off) or its shard stops the run."""
    try:
        yield
    except Fenced as exc:
        raise RunInterrupted(f"fenced off (state {exc.state})") from None
    except (ShardUnavailable, TransientStoreError) as exc:
        # The run stops without writing; its lease expires and any worker resumes it.
        raise RunInterrupted(str(exc)) from None
