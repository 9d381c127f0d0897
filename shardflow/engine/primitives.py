"""What workflow code calls besides steps: durable sleep, messages, events, children.

Each call is checkpointed at its position in the workflow like a step, so a replaying
workflow gets the same answers and never repeats a side effect (a send, a child start).
A wait longer than ``INLINE_WAIT_SECONDS`` suspends the workflow: it gives up its thread
and lease, and a worker resumes it (by replay) when the wait is over.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from shardflow import tracing
from shardflow.engine import context
from shardflow.engine.app import Workflow
from shardflow.engine.ports import RunClient
from shardflow.engine.runner import WorkflowRun
from shardflow.engine.serialization import rebuild_error
from shardflow.engine.signals import Suspend
from shardflow.engine.states import WorkflowState
from shardflow.errors import ShardflowError, WorkflowCancelled, WorkflowFailed

P = ParamSpec("P")
R = TypeVar("R")

# Waits up to this long keep the thread; longer ones suspend the workflow.
INLINE_WAIT_SECONDS = 0.5
# A parent waiting for a child re-checks at least this often, should a wake-up be lost.
CHILD_RECHECK_SECONDS = 30.0


def _run(what: str, *, either: bool = False) -> WorkflowRun:
    run = context.current_run()
    if not isinstance(run, WorkflowRun) or run.client is None:
        raise ShardflowError(f"shardflow.{what}() can only be called inside a workflow")
    if run.is_async and not either:
        raise ShardflowError(
            f"shardflow.{what}() blocks: inside an async workflow use"
            f" `await shardflow.{what}_async(...)`"
        )
    return run


def _client(run: WorkflowRun) -> RunClient:
    client = run.client
    assert client is not None  # checked by _run()
    return client


def sleep(seconds: float) -> None:
    """Durable sleep. Short sleeps keep the thread; long ones suspend the workflow, which
    resumes on time after any restart.

    The wake-up time is recorded on the database clock of the workflow's shard (the
    worker's clock may be off), so it fires when due whatever the worker's clock says.
    """
    run = _run("sleep")
    wake_at = float(
        run.checkpoint("shardflow.sleep", lambda: run.db_time() + max(float(seconds), 0.0))
    )
    remaining = wake_at - run.db_time()
    if remaining <= 0:
        return
    if remaining <= INLINE_WAIT_SECONDS:
        if run.interrupted.wait(remaining):
            run.check_live()
        return
    raise Suspend(remaining, "sleep")


def send(
    workflow_id: str, message: Any, topic: str | None = None, idempotency_key: str | None = None
) -> None:
    """Send a message to another workflow, exactly once even if this one replays."""
    run = _run("send")
    client = _client(run)
    # The message id is fixed by the first execution, so a replayed send is a duplicate.
    key = run.checkpoint(
        "shardflow.send", lambda: idempotency_key or f"{run.workflow_id}:{uuid.uuid4()}"
    )
    attributes = {tracing.TARGET_ID: workflow_id, tracing.TOPIC: topic or ""}
    with tracing.span("shardflow.send", attributes, kind="producer"):
        client.send(workflow_id, message, topic=topic, idempotency_key=str(key))


def recv(topic: str | None = None, timeout: float | None = 60.0) -> Any:
    """The next message on ``topic`` (in send order), or None after ``timeout`` seconds
    (``None``: wait forever). Each message is consumed exactly once."""
    run = _run("recv")
    topic_key = topic or ""
    deadline = run.checkpoint(
        "shardflow.recv.deadline",
        lambda: None if timeout is None else run.db_time() + float(timeout),
    )
    step_no, record = run.take_step("shardflow.recv")
    if record is not None:
        return record.output
    while True:
        run.check_live()
        run.message_arrived.clear()
        with tracing.span("shardflow.recv", {tracing.TOPIC: topic_key}) as received:
            found, value = run.consume_message_at(step_no, topic_key)
            if received is not None:
                received.set_attribute("shardflow.received", found)
        if found:
            return value
        remaining = None if deadline is None else float(deadline) - run.db_time()
        if remaining is not None and remaining <= 0:
            run.checkpoint_at(step_no, "shardflow.recv", None)
            return None
        if remaining is not None and remaining <= INLINE_WAIT_SECONDS:
            run.message_arrived.wait(remaining)
            continue
        raise Suspend(remaining, f"message:{topic_key}", topic=topic_key)


def set_event(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this workflow (readers see the latest)."""
    run = _run("set_event")
    step_no, record = run.take_step("shardflow.set_event")
    if record is not None:
        return
    run.check_live()
    text = run.store.codec.dumps(value, f"event {key!r}")
    run.set_event_at(step_no, key, text)


def get_event(workflow_id: str, key: str, timeout: float = 60.0) -> Any:
    """Another workflow's event ``key``, waiting up to ``timeout`` seconds (None if it
    is not set by then). Checkpointed: a replay sees the same answer."""
    run = _run("get_event")
    client = _client(run)

    def read() -> Any:
        return client.get_event(workflow_id, key, timeout=timeout, interrupt=run.interrupted)

    return run.checkpoint("shardflow.get_event", read)


class ChildHandle(Generic[R]):
    """A child workflow started from a workflow."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"ChildHandle({self.workflow_id!r})"

    def result(self) -> R:
        """Wait for the child (the parent suspends meanwhile) and return its result.

        Raises WorkflowFailed or WorkflowCancelled like ``WorkflowHandle.result``."""
        run = _run("ChildHandle.result")  # async: AsyncChildHandle.result_async
        step_no, record = run.take_step("shardflow.child_result")
        if record is not None:
            if record.error is not None:
                raise child_error(self.workflow_id, record.error)
            value: R = record.output
            return value
        out: R = settle_child(run, step_no, self.workflow_id)
        return out


def settle_child(run: WorkflowRun, step_no: int, child_id: str) -> Any:
    """The child's outcome, recorded at ``step_no`` once it has ended (Suspend if not)."""
    client = _client(run)
    run.check_live()
    status = client.get(child_id)
    if not status.state.is_terminal:
        raise Suspend(CHILD_RECHECK_SECONDS, "child", child_id=child_id)
    if status.state is WorkflowState.SUCCESS:
        text = run.store.codec.dumps(status.output, "child result")
        run.record_raw(step_no, "shardflow.child_result", text, None)
        return status.output
    error = status.error or {"type": status.state.value, "message": status.reason or ""}
    error = {**error, "child_state": status.state.value}
    run.record_raw(step_no, "shardflow.child_result", None, error)
    raise child_error(child_id, error)


def child_error(child_id: str, error: dict[str, Any]) -> Exception:
    if error.get("child_state") == WorkflowState.CANCELLED:
        return WorkflowCancelled(child_id, error.get("message"))
    if error.get("child_state") in (WorkflowState.ERROR, WorkflowState.DEAD):
        return WorkflowFailed(child_id, error)
    return rebuild_error(error)


def start_child(fn: Callable[P, R] | str, *args: Any, **kwargs: Any) -> ChildHandle[R]:
    """Start a child workflow. Its ID derives from the parent's ID and this call's
    position, so a replaying parent never starts a second child."""
    run = _run("start_child")
    client = _client(run)
    if not isinstance(fn, (Workflow, str)):
        raise TypeError("start_child() takes a registered workflow or a workflow name")
    if isinstance(fn, Workflow):
        fn.check_arguments(args, kwargs)  # a wrong call fails here, before anything runs
    step_no = run.next_step

    def start() -> str:
        child_id = f"{run.workflow_id}:child:{step_no}"
        # The child's runs continue this span's trace (the row stores its context).
        with tracing.span("shardflow.start_child", {tracing.CHILD_ID: child_id}):
            client.submit_child(fn, args, kwargs, workflow_id=child_id, parent_id=run.workflow_id)
        return child_id

    child_id = run.checkpoint("shardflow.start_child", start)
    return ChildHandle(str(child_id))


def workflow_id() -> str:
    """The ID of the workflow this code runs in."""
    return _run("workflow_id", either=True).workflow_id
