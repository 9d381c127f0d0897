"""Running a claimed workflow to its end: :func:`execute` (a sync workflow, on its thread)
and what every run's end does (:func:`end_with`, :func:`end_by`), which the async runner
(:mod:`~shardflow.engine.aio.run`) shares: finish once, suspend, stop, or park.
"""

from __future__ import annotations

import logging
from typing import Any

from shardflow import retry, tracing
from shardflow.engine import context
from shardflow.engine.app import App
from shardflow.engine.records import Claim, FinishWrite
from shardflow.engine.runner import OTHER_SHARD_RETRY_SECONDS, RUN_RETRY_SECONDS, WorkflowRun
from shardflow.engine.serialization import error_record
from shardflow.engine.signals import RunInterrupted, Suspend
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import StoreError, TransientStoreError
from shardflow.errors import (
    NonDeterminismError,
    SerializationError,
    ShardUnavailable,
    ValueRejected,
)

__all__ = ["after_finish", "end_by", "end_with", "execute", "run_attributes"]

log = logging.getLogger("shardflow.engine.runner")


def execute(run: WorkflowRun, app: App) -> WorkflowState | None:
    """Run ``run`` to its end. Returns the final state written, or None if this run was
    interrupted or fenced off (someone else owns the outcome). Traced as one span whose
    parent is the trace context stored at submit (shardflow/tracing.py)."""
    claim = run.claim
    with tracing.run_span(claim.name, claim.trace_context, run_attributes(claim)) as ended:
        state = _execute(run, app)
        ended(None if state is None else state.value)
        return state


def run_attributes(claim: Claim) -> dict[str, str | int]:
    """The attributes of a run's span."""
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
    except BaseException as exc:
        return end_by(run, exc)
    finally:
        context.leave(token)
    return end_with(run, output)


def end_with(run: WorkflowRun, output: str) -> WorkflowState | None:
    """Record that ``run``'s workflow returned ``output`` (serialized)."""
    return _finish(run, WorkflowState.SUCCESS, output, None, None)


def end_by(run: WorkflowRun, exc: BaseException) -> WorkflowState | None:
    """What ``exc``, raised by ``run``'s workflow, does to it: suspend, stop, park or fail
    it. Returns the state written (None: stopped). Re-raises what is not a workflow's
    outcome (KeyboardInterrupt, SystemExit, an asyncio cancellation)."""
    if isinstance(exc, Suspend):
        return _suspend(run, exc)
    if isinstance(exc, RunInterrupted):
        log.info("run of %s (attempt %d) stopped: %s", run.workflow_id, run.attempt, exc)
        return None
    if isinstance(exc, (ShardUnavailable, TransientStoreError)):
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
    if isinstance(exc, NonDeterminismError):
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), "non-determinism")
    if isinstance(exc, SerializationError):
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), "serialization")
    if isinstance(exc, Exception):
        return _finish(run, WorkflowState.ERROR, None, error_record(exc), None)
    raise exc


def _finish(
    run: WorkflowRun,
    state: WorkflowState,
    output: str | None,
    error: dict[str, Any] | None,
    reason: str | None,
) -> WorkflowState | None:
    try:
        written = run.writer.finish(
            run.shard, FinishWrite(run.workflow_id, run.attempt, state, output, error, reason)
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
    return after_finish(run, state, error, written)


def after_finish(
    run: WorkflowRun, state: WorkflowState, error: dict[str, Any] | None, written: bool
) -> WorkflowState | None:
    """What follows the write of a run's final state: the state it ended in (None if
    fenced off), logged, and its parent woken (a client call, if it has a parent)."""
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
