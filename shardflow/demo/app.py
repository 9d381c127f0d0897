"""A document pipeline of four checkpointed steps, as a user would write one.

Each step simulates I/O with a short sleep and, when ``SHARDFLOW_DEMO_EFFECTS_DSN`` is
set, appends a row to a side-effect log (``demo_effects``) in that database: one row per
execution, so the demo and the tests can prove which steps ran how often.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import shardflow
from shardflow.engine.store import EffectsLog
from shardflow.sql import query

app = shardflow.App("demo")

# The side-effect log's table (the tests create it too).
EFFECTS_TABLE = query("demo_effects_table")
_logs: dict[str, EffectsLog] = {}


def _step_seconds() -> float:
    return float(os.environ.get("SHARDFLOW_DEMO_STEP_MS", "5")) / 1000.0


def record_effect(step: str) -> None:
    """Append one row to the side-effect log (a stand-in for an external call)."""
    dsn = os.environ.get("SHARDFLOW_DEMO_EFFECTS_DSN")
    if not dsn:
        return
    log = _logs.get(dsn)
    if log is None:
        log = _logs.setdefault(dsn, EffectsLog(dsn))
    log.record(shardflow.current_workflow_id(), step, os.getpid())


@app.step(max_attempts=3, backoff_seconds=0.05)
def extract(doc_id: str) -> dict[str, Any]:
    time.sleep(_step_seconds())
    record_effect("extract")
    text = f"document {doc_id} " * 8
    return {"doc_id": doc_id, "words": len(text.split()), "text": text}


@app.step(max_attempts=3, backoff_seconds=0.05)
def enrich(doc: dict[str, Any]) -> dict[str, Any]:
    time.sleep(_step_seconds())
    record_effect("enrich")
    digest = hashlib.sha256(doc["text"].encode()).hexdigest()[:12]
    return {"doc_id": doc["doc_id"], "words": doc["words"], "digest": digest}


@app.step(max_attempts=3, backoff_seconds=0.05)
def render(meta: dict[str, Any]) -> str:
    time.sleep(_step_seconds())
    record_effect("render")
    return f"{meta['doc_id']}:{meta['digest']}:{meta['words']}"


@app.step(max_attempts=5, backoff_seconds=0.05)
def publish(rendered: str) -> str:
    time.sleep(_step_seconds())
    record_effect("publish")
    return f"published {rendered}"


@app.workflow(name="demo.process_document")
def process_document(doc_id: str) -> str:
    """extract -> enrich -> render -> publish, each step checkpointed."""
    doc = extract(doc_id)
    meta = enrich(doc)
    rendered = render(meta)
    return publish(rendered)


STEPS = ("extract", "enrich", "render", "publish")
