"""The tracing facade (shardflow/tracing.py) when tracing is off: without the `otel`
extra, and with it but no tracer provider. Each case runs in a fresh interpreter, since
a test elsewhere in the session may have set the process's tracer provider."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WITHOUT_PACKAGE = """
import sys
sys.modules["opentelemetry"] = None  # as if the `otel` extra were not installed
import shardflow
from shardflow import tracing
from shardflow.engine import runner, primitives, cluster
assert tracing.AVAILABLE is False
assert tracing.carrier() is None
with tracing.span("x", {"a": 1}) as s:
    assert s is None
assert tracing.step_span("step", 0) is tracing._NULL
with tracing.run_span("wf", {"traceparent": "junk"}, {}) as ended:
    ended("SUCCESS")
def f():
    return []
assert tracing.traced_submit(f) is f
print("ok")
"""

WITHOUT_PROVIDER = """
from opentelemetry import trace
from shardflow import tracing
assert tracing.AVAILABLE is True
# No tracer provider configured: nothing is stored with a workflow, and a step's span is
# the one shared no-op context manager (a single check of the current span).
assert tracing.carrier() is None
assert tracing.configured() is False
# A run that stored no trace context makes no span at all: one shared context manager.
assert tracing.run_span("wf", None, {"shardflow.attempt": 1}) is tracing._UNTRACED_RUN
with tracing.run_span("wf", None, {"shardflow.attempt": 1}) as ended:
    assert not trace.get_current_span().is_recording()
    assert tracing.step_span("step", 0) is tracing._NULL
    assert tracing.carrier() is None
    ended("SUCCESS")
# A stored context is still made current (and handed on to what the run submits).
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
stored = {"traceparent": parent}
assert tracing.run_span("wf", stored, {}) is not tracing._UNTRACED_RUN
with tracing.run_span("wf", stored, {}) as ended:
    assert not trace.get_current_span().is_recording()
    assert tracing.carrier() == stored
    ended("SUCCESS")
print("ok")
"""

WITH_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shardflow import tracing
assert tracing.configured() is False
provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
# Set after the import: the next run checks again and makes its span.
assert tracing.configured() is True
with tracing.run_span("wf", None, {"shardflow.attempt": 1}) as ended:
    assert trace.get_current_span().is_recording()
    ended("SUCCESS")
(made,) = exporter.get_finished_spans()
assert made.name == "shardflow.run wf", made.name
assert made.attributes["shardflow.state"] == "SUCCESS"
print("ok")
"""


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_engine_imports_and_traces_nothing_without_opentelemetry() -> None:
    assert run(WITHOUT_PACKAGE) == "ok"


def test_without_a_tracer_provider_a_step_costs_one_check() -> None:
    assert run(WITHOUT_PROVIDER) == "ok"


def test_a_provider_set_after_import_traces_the_next_run() -> None:
    assert run(WITH_PROVIDER) == "ok"
