"""OpenTelemetry spans on real shards, collected with the SDK's in-memory exporter: one
trace from submit to the last step, across children, a recovery on another worker and a
move to another shard (docs/operations.md#tracing)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.apps import traced
from tests.integration.test_rebalance import ids_in_slots, moving_slots

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the test extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

SLOTS = 256


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The process's tracer provider (set once: OpenTelemetry allows one per process)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    made = TracerProvider()
    trace.set_tracer_provider(made)
    assert trace.get_tracer_provider() is made
    return made


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced.CONTROL.clear()
    yield exporter
    exporter.shutdown()  # later tests' spans are dropped, not kept in memory
    traced.CONTROL.clear()


def named(exporter: InMemorySpanExporter, prefix: str, workflow_id: str = "") -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name.startswith(prefix)
        and (not workflow_id or attr(s, "shardflow.workflow_id") == workflow_id)
    ]


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def trace_ids(spans: Sequence[ReadableSpan]) -> set[int]:
    return {s.context.trace_id for s in spans if s.context is not None}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("workflow", [traced.two_steps, traced.two_steps_async])
def test_submit_run_and_step_spans_carry_their_attributes(
    cluster: Cluster, spans: InMemorySpanExporter, workflow: shardflow.engine.Workflow[Any, Any]
) -> None:
    handle = cluster.submit(workflow, 5)
    with shardflow.Worker(cluster, traced.app, concurrency=2):
        assert handle.result(timeout=30) == 20
    wid = handle.workflow_id
    [run] = wait_until(lambda: named(spans, "shardflow.run ", wid))
    [submit] = [
        s for s in named(spans, "shardflow.submit") if attr(s, "shardflow.workflow_id") == wid
    ]
    steps = [
        s for s in named(spans, "shardflow.step ") if s.context.trace_id == run.context.trace_id
    ]

    assert submit.kind is SpanKind.PRODUCER
    assert dict(submit.attributes or {}) == {
        "shardflow.count": 1,
        "shardflow.workflow_id": wid,
        "shardflow.shard": handle.shard,
    }
    assert run.name == f"shardflow.run {workflow.name}" and run.kind is SpanKind.CONSUMER
    assert dict(run.attributes or {}) == {
        "shardflow.workflow_id": wid,
        "shardflow.workflow_name": workflow.name,
        "shardflow.shard": handle.shard,
        "shardflow.slot": cluster.router.hasher.slot(wid),
        "shardflow.queue": "default",
        "shardflow.attempt": 1,
        "shardflow.recoveries": 0,
        "shardflow.state": "SUCCESS",
    }
    # The run continues the submitter's trace, as a child of the submit span.
    assert run.context.trace_id == submit.context.trace_id
    assert parent_of(run) == submit.context.span_id
    assert [(s.name, dict(s.attributes or {})) for s in steps] == [
        ("shardflow.step double", {"shardflow.step": "double", "shardflow.step_no": 0}),
        ("shardflow.step double", {"shardflow.step": "double", "shardflow.step_no": 1}),
    ]
    assert all(parent_of(s) == run.context.span_id for s in steps)


def test_a_submit_inside_a_span_joins_that_trace(
    cluster: Cluster, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request") as request:
        handles = cluster.submit_many(
            [shardflow.Submission(traced.two_steps, (i,)) for i in range(3)]
        )
    with shardflow.Worker(cluster, traced.app, concurrency=2):
        assert [h.result(timeout=30) for h in handles] == [0, 4, 8]
    runs = wait_until(
        lambda: (
            [r for h in handles for r in named(spans, "shardflow.run ", h.workflow_id)]
            if len(named(spans, "shardflow.run ")) >= 3
            else None
        )
    )
    assert len(runs) == 3
    assert trace_ids(runs) == {request.get_span_context().trace_id}
    [submit] = [
        s
        for s in named(spans, "shardflow.submit")
        if parent_of(s) == request.get_span_context().span_id
    ]
    assert attr(submit, "shardflow.count") == 3


def test_an_async_submit_opens_a_span_that_the_run_continues(
    cluster: Cluster, spans: InMemorySpanExporter
) -> None:
    """The async client's submit is traced as the sync one: a producer span, a child of
    the task's current span, which each run continues; concurrent tasks keep their own."""
    tracer = trace.get_tracer("tests")

    async def submit_in_requests() -> list[tuple[int, str]]:
        async with await shardflow.connect_async(cluster.config) as client:

            async def request(i: int) -> tuple[int, str]:
                with tracer.start_as_current_span(f"request {i}") as current:
                    handle = await client.submit(traced.two_steps_async, i)
                    return current.get_span_context().span_id, handle.workflow_id

            return list(await asyncio.gather(*(request(i) for i in range(4))))

    submitted = asyncio.run(submit_in_requests())
    with shardflow.Worker(cluster, traced.app, concurrency=2):
        for i, (_, wid) in enumerate(submitted):
            assert cluster.handle(wid).result(timeout=30) == 4 * i
    for request_span, wid in submitted:
        [submit] = [
            s for s in named(spans, "shardflow.submit") if attr(s, "shardflow.workflow_id") == wid
        ]
        assert submit.kind is SpanKind.PRODUCER
        assert parent_of(submit) == request_span
        [run] = wait_until(functools.partial(named, spans, "shardflow.run ", wid))
        assert run.context.trace_id == submit.context.trace_id
        assert parent_of(run) == submit.context.span_id


def test_a_child_workflow_continues_its_parents_trace(
    cluster: Cluster, spans: InMemorySpanExporter
) -> None:
    # The child waits at a gate until its parent has suspended waiting for it, so the
    # parent runs twice (a child that ended first would spare it the second attempt).
    traced.CONTROL.update(gate=threading.Event())
    handle = cluster.submit(traced.parent, 4)
    child_id = f"{handle.workflow_id}:child:0"
    with shardflow.Worker(cluster, traced.app, concurrency=4):
        wait_until(lambda: handle.status().state is WorkflowState.SUSPENDED, timeout=30)
        traced.CONTROL["gate"].set()
        assert handle.result(timeout=30) == 9
    [child_run] = wait_until(lambda: named(spans, "shardflow.run ", child_id))
    parent_runs = wait_until(
        lambda: (r := named(spans, "shardflow.run ", handle.workflow_id)) and len(r) >= 2 and r
    )
    [start] = [
        s
        for s in named(spans, "shardflow.start_child")
        if attr(s, "shardflow.child_workflow_id") == child_id
    ]
    [submit] = [
        s
        for s in named(spans, "shardflow.submit")
        if attr(s, "shardflow.workflow_id") == handle.workflow_id
    ]
    # One trace: the parent's attempts (it suspended waiting for the child), the child
    # start, and the child's run, whose parent is the span that started it.
    assert trace_ids([*parent_runs, start, child_run]) == {submit.context.trace_id}
    assert parent_of(child_run) == start.context.span_id
    assert parent_of(start) == parent_runs[0].context.span_id
    assert sorted(attr(r, "shardflow.attempt") for r in parent_runs) == [1, 2]
    assert [s.name for s in named(spans, "shardflow.suspend")][:1] == ["shardflow.suspend"]


def test_one_trace_from_submit_to_the_last_step_across_a_recovery(
    cluster: Cluster, spans: InMemorySpanExporter
) -> None:
    traced.CONTROL.update(started=threading.Event(), gate=threading.Event())
    handle = cluster.submit(traced.stuck, "k")
    wid = handle.workflow_id
    first = shardflow.Worker(cluster, traced.app, concurrency=2, lease_seconds=2)
    first.start()
    try:
        assert traced.CONTROL["started"].wait(30)
        # The first worker gives up on its run (stuck inside a step) without handing it
        # back, as a killed worker would: its lease runs out and another worker recovers.
        stopper = threading.Thread(target=first.stop, kwargs={"grace_seconds": 0})
        stopper.start()
        first.force_stop()
        stopper.join(10)
        assert not stopper.is_alive()
        second = shardflow.Worker(cluster, traced.app, concurrency=2, lease_seconds=2)
        with EventRecorder(second) as events, second:
            [claim] = events.wait_for(EventKind.CLAIMED, lambda e: e.workflow_id == wid)
            assert claim.detail == "recovered"
            assert handle.result(timeout=30) == 4
    finally:
        traced.CONTROL["gate"].set()  # the abandoned run wakes, finds itself fenced off
    runs = wait_until(lambda: (r := named(spans, "shardflow.run ", wid)) and len(r) == 2 and r)
    by_attempt = {attr(r, "shardflow.attempt"): r for r in runs}
    assert attr(by_attempt[1], "shardflow.state") == "STOPPED"
    assert attr(by_attempt[2], "shardflow.state") == "SUCCESS"
    assert attr(by_attempt[2], "shardflow.recoveries") == 1
    [submit] = [
        s for s in named(spans, "shardflow.submit") if attr(s, "shardflow.workflow_id") == wid
    ]
    steps = [
        s
        for s in named(spans, "shardflow.step ")
        if parent_of(s) in {r.context.span_id for r in runs}
    ]
    # Attempt 1 ran `double` and hung in `hang`; attempt 2 replayed `double` (no span)
    # and ran `hang` and the last `double`.
    assert sorted((s.name, attr(s, "shardflow.step_no")) for s in steps) == [
        ("shardflow.step double", 0),
        ("shardflow.step double", 2),
        ("shardflow.step hang", 1),
        ("shardflow.step hang", 1),
    ]
    assert trace_ids([submit, *runs, *steps]) == {submit.context.trace_id}
    assert all(parent_of(r) == submit.context.span_id for r in runs)


@pytest.fixture
def grown(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """Three shards holding every slot, plus a migrated fourth shard with none."""
    made = cluster_factory.make(3, slots=SLOTS)
    grown = cluster_factory.add_shard(made)
    yield grown
    cluster_factory.drop(grown)


def test_one_trace_from_submit_to_the_last_step_across_a_move(
    grown: TestCluster, spans: InMemorySpanExporter
) -> None:
    config = grown.config
    [wid] = ids_in_slots(config, moving_slots(config), "moved", 1)
    with shardflow.connect(config) as cluster:
        handle = cluster.submit(traced.waiter, workflow_id=wid)
        worker = shardflow.Worker(cluster, traced.app, concurrency=2)
        with EventRecorder(worker) as events, worker:
            events.wait_for(EventKind.SUSPENDED, lambda e: e.workflow_id == wid)
        before = handle.status().shard
        # Move the workflow's slot while the workflow is suspended, then wake it.
        with Rebalancer(config) as rebalancer:
            assert rebalancer.apply(ApplyOptions(batch=50)).complete
        assert cluster.get(wid).shard == "shard3" != before
        cluster.send(wid, "hello", topic="go")
        with shardflow.Worker(cluster, traced.app, concurrency=2):
            assert handle.result(timeout=30) == "hello"
        assert handle.status().state is WorkflowState.SUCCESS
    runs = wait_until(lambda: (r := named(spans, "shardflow.run ", wid)) and len(r) == 2 and r)
    by_attempt = {attr(r, "shardflow.attempt"): r for r in runs}
    assert attr(by_attempt[1], "shardflow.shard") == before
    assert attr(by_attempt[2], "shardflow.shard") == "shard3"
    [submit] = [
        s for s in named(spans, "shardflow.submit") if attr(s, "shardflow.workflow_id") == wid
    ]
    steps = [
        s
        for s in named(spans, "shardflow.step ")
        if parent_of(s) in {r.context.span_id for r in runs}
    ]
    assert sorted(attr(s, "shardflow.step_no") for s in steps) == [0, 3]
    assert trace_ids([submit, *runs, *steps]) == {submit.context.trace_id}
    assert all(parent_of(r) == submit.context.span_id for r in runs)


def test_a_fork_continues_the_forkers_trace_or_starts_its_own(
    cluster: Cluster, spans: InMemorySpanExporter
) -> None:
    handle = cluster.submit(traced.two_steps, 1)
    with shardflow.Worker(cluster, traced.app, concurrency=2):
        assert handle.result(timeout=30) == 4
        tracer = trace.get_tracer("tests")
        with tracer.start_as_current_span("fork request") as request:
            inside = cluster.fork(handle.workflow_id, from_step=1)
        outside = cluster.fork(handle.workflow_id, from_step=1)
        assert inside.result(timeout=30) == outside.result(timeout=30) == 4
    [original] = wait_until(lambda: named(spans, "shardflow.run ", handle.workflow_id))
    [in_run] = wait_until(lambda: named(spans, "shardflow.run ", inside.workflow_id))
    [out_run] = wait_until(lambda: named(spans, "shardflow.run ", outside.workflow_id))
    assert in_run.context.trace_id == request.get_span_context().trace_id
    assert parent_of(in_run) == request.get_span_context().span_id
    # Outside any span the fork's runs start a trace of their own.
    assert parent_of(out_run) is None
    assert len(trace_ids([original, in_run, out_run])) == 3
