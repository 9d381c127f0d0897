"""One trace from submit to the last step across a worker process that is SIGKILLed
mid-workflow (docs/operations.md#tracing). The worker processes export their spans to
a file each (tests/apps/traced_proc.py); the submit span is this process's."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

import shardflow
from shardflow.testing.servers import TestCluster, wait_until
from tests.apps import traced_proc
from tests.e2e.procs import start_worker, stop

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the test extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

Span = dict[str, Any]


def spans_in(path: Path) -> list[Span]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s["name"] == name]


def test_one_trace_from_submit_to_the_last_step_across_a_sigkill(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    victim_file, survivor_file = tmp_path / "victim.jsonl", tmp_path / "survivor.jsonl"
    try:
        with shardflow.connect(test_cluster.config) as cluster:
            handle = cluster.submit(traced_proc.held, 3)
            wid = handle.workflow_id
            victim = start_worker(
                test_cluster.path,
                "tests.apps.traced_proc:app",
                "--lease-seconds",
                "2",
                "--worker-id",
                "victim",
                env={
                    "SHARDFLOW_TEST_SPANS_FILE": str(victim_file),
                    "SHARDFLOW_TEST_HOLD_SECONDS": "600",
                },
                log=tmp_path / "victim.log",
            )
            try:
                # Step 0 is checkpointed and its span exported; the run is inside `hold`.
                wait_until(
                    lambda: named(spans_in(victim_file), "shardflow.step double"),
                    timeout=60,
                    message="the victim ran its first step",
                )
                assert [s.name for s in cluster.steps(wid)] == ["double"]
                victim.send_signal(signal.SIGKILL)
                assert victim.wait(10) == -signal.SIGKILL
            finally:
                stop(victim)
            survivor = start_worker(
                test_cluster.path,
                "tests.apps.traced_proc:app",
                "--lease-seconds",
                "2",
                "--worker-id",
                "survivor",
                env={"SHARDFLOW_TEST_SPANS_FILE": str(survivor_file)},
                log=tmp_path / "survivor.log",
            )
            try:
                assert handle.result(timeout=60) == 12
                wait_until(
                    lambda: named(spans_in(survivor_file), "shardflow.run traced_proc.held"),
                    message="the survivor's run span",
                )
            finally:
                assert stop(survivor) == 0
        [submit] = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "shardflow.submit"
            and (s.attributes or {}).get("shardflow.workflow_id") == wid
        ]
    finally:
        exporter.shutdown()
    assert submit.context is not None
    trace_id, submit_id = submit.context.trace_id, submit.context.span_id
    before, after = spans_in(victim_file), spans_in(survivor_file)
    # The victim's run never ended (no run span); its first step's span did.
    assert [s["name"] for s in before] == ["shardflow.step double"]
    [run] = named(after, "shardflow.run traced_proc.held")
    assert run["attributes"]["shardflow.attempt"] == 2
    assert run["attributes"]["shardflow.recoveries"] == 1
    assert run["parent_id"] == submit_id
    steps = sorted(
        (s["name"], s["attributes"]["shardflow.step_no"], s["parent_id"])
        for s in after
        if s["name"].startswith("shardflow.step ")
    )
    # Step 0 was replayed from its checkpoint (no span); `hold` and the last step ran.
    assert steps == [
        ("shardflow.step double", 2, run["span_id"]),
        ("shardflow.step hold", 1, run["span_id"]),
    ]
    assert {s["trace_id"] for s in before + after} == {trace_id}
