"""The primitives of async workflows: ``await shardflow.sleep_async(...)``, ``recv_async``,
``send_async``, ``set_event_async``, ``get_event_async``, ``start_child_async`` and
``await child.result_async()``.

The naming rule: the async form of ``shardflow.X`` is ``shardflow.X_async``. Each records
the same checkpoint under the same name as its sync form (so replay rules are identical)
and suspends the same way; only the waiting differs: short waits await on the event loop
and blocking calls (checkpoints, client calls) run in the run's thread pool.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from shardflow import tracing
from shardflow.engine import context
from shardflow.engine.aio.run import AsyncWorkflowRun
from shardflow.engine.app import Workflow
from shardflow.engine.ports import RunClient
from shardflow.engine.primitives import (
    INLINE_WAIT_SECONDS,
    ChildHandle,
    child_error,
    settle_child,
)
from shardflow.engine.signals import Suspend
from shardflow.errors import ShardflowError

__all__ = [
    "AsyncChildHandle",
    "get_event_async",
    "recv_async",
    "send_async",
    "set_event_async",
    "sleep_async",
    "start_child_async",
]

P = ParamSpec("P")
R = TypeVar("R")


def _run(what: str) -> tuple[AsyncWorkflowRun, RunClient]:
    run = context.current_run()
    if run is not None and not run.is_async:
        raise ShardflowError(
            f"shardflow.{what}_async() is for async workflows: in a sync workflow call"
            f" shardflow.{what}(...)"
        )
    if not isinstance(run, AsyncWorkflowRun) or run.client is None:
        raise ShardflowError(f"shardflow.{what}_async() can only be awaited inside a workflow")
    return run, run.client


async def _now(value: Any) -> Any:
    return value


async def sleep_async(seconds: float) -> None:
    """Durable sleep (see :func:`shardflow.sleep`): a short one awaits on the loop, a
    long one suspends the workflow."""
    run, _ = _run("sleep")
    wake_at = float(
        await run.checkpoint_async(
            "shardflow.sleep", lambda: _now(run.db_time() + max(float(seconds), 0.0))
        )
    )
    remaining = wake_at - run.db_time()
    if remaining <= 0:
        return
    if remaining <= INLINE_WAIT_SECONDS:
        await run.wait_interrupted(remaining)
        return
    raise Suspend(remaining, "sleep")


async def send_async(
    workflow_id: str, message: Any, topic: str | None = None, idempotency_key: str | None = None
) -> None:
    """Send a message to another workflow, exactly once (see :func:`shardflow.send`)."""
    run, client = _run("send")
    key = await run.checkpoint_async(
        "shardflow.send", lambda: _now(idempotency_key or f"{run.workflow_id}:{uuid.uuid4()}")
    )
    attributes = {tracing.TARGET_ID: workflow_id, tracing.TOPIC: topic or ""}
    with tracing.span("shardflow.send", attributes, kind="producer"):
        await run.client_call(
            lambda: client.send(workflow_id, message, topic=topic, idempotency_key=str(key))
        )


async def recv_async(topic: str | None = None, timeout: float | None = 60.0) -> Any:
    """The next message on ``topic``, or None after ``timeout`` (see :func:`shardflow.recv`)."""
    run, _ = _run("recv")
    topic_key = topic or ""
    deadline = await run.checkpoint_async(
        "shardflow.recv.deadline",
        lambda: _now(None if timeout is None else run.db_time() + float(timeout)),
    )
    step_no, record = run.take_step("shardflow.recv")
    if record is not None:
        return record.output
    while True:
        run.check_live()
        run.message_arrived.clear()
        with tracing.span("shardflow.recv", {tracing.TOPIC: topic_key}) as received:
            found, value = await run.in_thread(lambda: run.consume_message_at(step_no, topic_key))
            if received is not None:
                received.set_attribute("shardflow.received", found)
        if found:
            return value
        remaining = None if deadline is None else float(deadline) - run.db_time()
        if remaining is not None and remaining <= 0:
            await run.in_thread(lambda: run.checkpoint_at(step_no, "shardflow.recv", None))
            return None
        if remaining is not None and remaining <= INLINE_WAIT_SECONDS:
            await run.message_arrived.wait_async(remaining)
            continue
        raise Suspend(remaining, f"message:{topic_key}", topic=topic_key)


async def set_event_async(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this workflow (see :func:`shardflow.set_event`)."""
    run, _ = _run("set_event")
    step_no, record = run.take_step("shardflow.set_event")
    if record is not None:
        return
    run.check_live()
    text = run.store.codec.dumps(value, f"event {key!r}")
    await run.in_thread(lambda: run.set_event_at(step_no, key, text))


async def get_event_async(workflow_id: str, key: str, timeout: float = 60.0) -> Any:
    """Another workflow's event ``key`` (see :func:`shardflow.get_event`). The wait runs in
    a thread of the run's pool (it does not block the loop)."""
    run, client = _run("get_event")

    def read() -> Any:
        return client.get_event(workflow_id, key, timeout=timeout, interrupt=run.interrupted)

    return await run.checkpoint_async("shardflow.get_event", lambda: run.client_call(read))


class AsyncChildHandle(ChildHandle[R]):
    """A child workflow started from an async workflow: ``await child.result_async()``."""

    def __repr__(self) -> str:
        return f"AsyncChildHandle({self.workflow_id!r})"

    async def result_async(self) -> R:
        """Wait for the child (the parent suspends meanwhile) and return its result.

        Raises WorkflowFailed or WorkflowCancelled like ``WorkflowHandle.result``."""
        run, _ = _run("ChildHandle.result")
        step_no, record = run.take_step("shardflow.child_result")
        if record is not None:
            if record.error is not None:
                raise child_error(self.workflow_id, record.error)
            value: R = record.output
            return value
        out: R = await run.client_call(lambda: settle_child(run, step_no, self.workflow_id))
        return out


@overload
async def start_child_async(
    fn: Workflow[P, Coroutine[Any, Any, R]], *args: Any, **kwargs: Any
) -> AsyncChildHandle[R]: ...


@overload
async def start_child_async(
    fn: Workflow[P, R], *args: Any, **kwargs: Any
) -> AsyncChildHandle[R]: ...


@overload
async def start_child_async(fn: str, *args: Any, **kwargs: Any) -> AsyncChildHandle[Any]: ...


async def start_child_async(
    fn: Callable[..., Any] | str, *args: Any, **kwargs: Any
) -> AsyncChildHandle[Any]:
    """Start a child workflow (see :func:`shardflow.start_child`); await its result with
    ``await child.result_async()``."""
    run, client = _run("start_child")
    if not isinstance(fn, (Workflow, str)):
        raise TypeError("start_child_async() takes a registered workflow or a workflow name")
    if isinstance(fn, Workflow):
        fn.check_arguments(args, kwargs)
    step_no = run.next_step

    def start() -> str:
        child_id = f"{run.workflow_id}:child:{step_no}"
        # The child's runs continue this span's trace (the row stores its context).
        with tracing.span("shardflow.start_child", {tracing.CHILD_ID: child_id}):
            client.submit_child(fn, args, kwargs, workflow_id=child_id, parent_id=run.workflow_id)
        return child_id

    child_id = await run.checkpoint_async("shardflow.start_child", lambda: run.client_call(start))
    return AsyncChildHandle(str(child_id))
