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
with tracing.run_span("wf", None, {"shardflow.attempt": 1}) as ended:
    assert not trace.get_current_span().is_recording()
    assert tracing.step_span("step", 0) is tracing._NULL
    assert tracing.carrier() is None
    ended("SUCCESS")
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
