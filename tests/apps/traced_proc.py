"""A traced workflow for worker processes (tests/e2e/test_tracing_processes.py).

A process that imports this module with ``SHARDFLOW_TEST_SPANS_FILE`` set installs an
OpenTelemetry tracer provider whose exporter appends each finished span to that file as
one JSON line, written and flushed as the span ends: spans ended before a SIGKILL are on
disk. ``SHARDFLOW_TEST_HOLD_SECONDS`` makes the ``hold`` step block that long (a victim).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import shardflow

app = shardflow.App("traced_proc")
HOLD_SECONDS = float(os.environ.get("SHARDFLOW_TEST_HOLD_SECONDS", "0"))


def install_file_exporter(path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class JsonLines(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with path.open("a", encoding="utf-8") as out:
                for s in spans:
                    assert s.context is not None
                    record = {
                        "name": s.name,
                        "trace_id": s.context.trace_id,
                        "span_id": s.context.span_id,
                        "parent_id": s.parent.span_id if s.parent is not None else None,
                        "attributes": dict(s.attributes or {}),
                        "pid": os.getpid(),
                    }
                    out.write(json.dumps(record) + "\n")
                out.flush()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    trace.set_tracer_provider(provider)


if os.environ.get("SHARDFLOW_TEST_SPANS_FILE"):
    install_file_exporter(Path(os.environ["SHARDFLOW_TEST_SPANS_FILE"]))


@app.step()
def double(x: int) -> int:
    return 2 * x


@app.step()
def hold(x: int) -> int:
    time.sleep(HOLD_SECONDS)
    return x


@app.workflow(name="traced_proc.held")
def held(x: int) -> int:
    return double(hold(double(x)))
