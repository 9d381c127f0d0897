"""OpenTelemetry spans and trace-context propagation (the optional ``otel`` extra).

With ``opentelemetry-api`` installed, shardflow opens spans through the global tracer
provider: ``shardflow.submit`` (the client), ``shardflow.run <name>`` (each run
attempt), ``shardflow.step <name>`` (each step that runs), ``shardflow.suspend``,
``shardflow.wake``, ``shardflow.send``, ``shardflow.recv`` and ``shardflow.start_child``.
The submitter's trace context (the global propagator's headers, W3C ``traceparent`` /
``tracestate`` by default) is stored with the workflow and is the parent of every run
attempt, wherever and whenever it runs (docs/operations.md#tracing).

Without the package every function here is a no-op; with it but without a configured
tracer provider a run whose workflow stored no trace context makes no span at all (one
check per run, :func:`run_span`), the other spans are the API's non-recording ones, and
a step costs one check of the current span (:func:`step_span`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ParamSpec, Protocol, TypeVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode

    AVAILABLE = True
except ImportError:  # the `otel` extra is not installed: tracing is off
    AVAILABLE = False

__all__ = [
    "AVAILABLE",
    "carrier",
    "run_span",
    "span",
    "step_span",
    "traced_submit",
]

# Span attribute names (documented in docs/operations.md#tracing).
WORKFLOW_ID = "shardflow.workflow_id"
WORKFLOW_NAME = "shardflow.workflow_name"
SHARD = "shardflow.shard"
SLOT = "shardflow.slot"
ATTEMPT = "shardflow.attempt"
RECOVERIES = "shardflow.recoveries"
QUEUE = "shardflow.queue"
STATE = "shardflow.state"
STEP = "shardflow.step"
STEP_NO = "shardflow.step_no"
COUNT = "shardflow.count"
WAIT_FOR = "shardflow.wait_for"
TOPIC = "shardflow.topic"
TARGET_ID = "shardflow.target_workflow_id"
CHILD_ID = "shardflow.child_workflow_id"

Attributes = Mapping[str, str | int | float | bool]
P = ParamSpec("P")
R = TypeVar("R", bound="Sequence[Placed]")

_NULL: AbstractContextManager[None] = nullcontext()
if AVAILABLE:
    _tracer = trace.get_tracer("shardflow")
# The last (span, carrier) pair: a batch submitted under one span injects once.
_last: tuple[object, dict[str, str] | None] = (None, None)


class Placed(Protocol):
    """What a submit returns per workflow (a :class:`WorkflowHandle`)."""

    @property
    def workflow_id(self) -> str: ...

    @property
    def shard(self) -> str: ...


def carrier() -> dict[str, str] | None:
    """The current trace context as the global propagator's headers (to store with a
    new workflow), or None when no span is active."""
    global _last
    if not AVAILABLE:
        return None
    current = trace.get_current_span()
    if not current.get_span_context().is_valid:
        return None
    last = _last  # one read: another thread may replace it meanwhile
    if last[0] is current:
        return last[1]
    headers: dict[str, str] = {}
    propagate.inject(headers)
    _last = (current, headers or None)
    return headers or None


@contextmanager
def span(name: str, attributes: Attributes | None = None, kind: str = "internal") -> Iterator[Any]:
    """A span around the block, current inside it. An ``Exception`` leaving the block
    marks it failed; a run's control signals (suspend, interrupt: BaseExceptions) do not."""
    if not AVAILABLE:
        yield None
        return
    with _tracer.start_as_current_span(
        name,
        kind=_KINDS[kind],
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as exc:
            _failed(current, exc)
            raise


def step_span(name: str, step_no: int) -> AbstractContextManager[Any]:
    """A span for one step that runs, a child of the run's span; nothing at all (one
    check) when the run is not traced: the per-step cost of tracing being off."""
    if not AVAILABLE or not trace.get_current_span().is_recording():
        return _NULL
    return span(f"shardflow.step {name}", {STEP: name, STEP_NO: step_no})


def run_span(
    name: str,
    stored: Mapping[str, str] | None,
    attributes: Attributes,
) -> AbstractContextManager[Callable[[str | None], None]]:
    """The span of one run attempt, whose parent is the trace context stored with the
    workflow at submit (a new trace if none was). Yields a function to call with the
    state the attempt ended in (None: it stopped without writing one).

    Nothing at all (one check per run) while no tracer provider is set and the workflow
    stored no trace context: the API's span would be the invalid one, the same as none.
    A stored context is still made current without a provider, so that the run's
    children and messages carry the submitter's trace on."""
    if not AVAILABLE or (not stored and not configured()):
        return _UNTRACED_RUN
    return _run_span(name, stored, attributes)


def configured() -> bool:
    """Whether a tracer provider is set (in code or by ``OTEL_PYTHON_TRACER_PROVIDER``):
    without one every span is the API's non-recording one."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextmanager
def _run_span(
    name: str, stored: Mapping[str, str] | None, attributes: Attributes
) -> Iterator[Callable[[str | None], None]]:
    parent = propagate.extract(stored) if stored else otel_context.Context()
    with _tracer.start_as_current_span(
        f"shardflow.run {name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:

        def ended(state: str | None) -> None:
            current.set_attribute(STATE, state or "STOPPED")
            if state in ("ERROR", "DEAD"):
                current.set_status(Status(StatusCode.ERROR, f"workflow ended in {state}"))

        try:
            yield ended
        except Exception as exc:
            _failed(current, exc)
            raise


def traced_submit(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a submit in a ``shardflow.submit`` span: the rows it creates store that
    span's context (:func:`carrier`), so every run continues the submitter's trace."""
    if not AVAILABLE:
        return fn

    @functools.wraps(fn)
    def submit(*args: P.args, **kwargs: P.kwargs) -> R:
        with span("shardflow.submit", kind="producer") as current:
            return _placed(current, fn(*args, **kwargs))

    return submit


def traced_submit_async(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """:func:`traced_submit` for a coroutine (the async client's submits): the span is
    current in the task (a context variable) while the rows are made."""
    if not AVAILABLE:
        return fn

    @functools.wraps(fn)
    async def submit(*args: P.args, **kwargs: P.kwargs) -> R:
        with span("shardflow.submit", kind="producer") as current:
            return _placed(current, await fn(*args, **kwargs))

    return submit


def _placed(current: Span, placed: R) -> R:
    if current.is_recording():
        current.set_attribute(COUNT, len(placed))
        if len(placed) == 1:
            current.set_attribute(WORKFLOW_ID, placed[0].workflow_id)
            current.set_attribute(SHARD, placed[0].shard)
    return placed


def _ignore(state: str | None) -> None:
    """The run outcome when tracing is off."""


_UNTRACED_RUN: AbstractContextManager[Callable[[str | None], None]] = nullcontext(_ignore)


def _failed(current: Span, exc: Exception) -> None:
    current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}"))


if AVAILABLE:
    _KINDS = {
        "internal": SpanKind.INTERNAL,
        "producer": SpanKind.PRODUCER,
        "client": SpanKind.CLIENT,
    }
