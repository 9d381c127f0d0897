"""The benchmark workflows for shardflow.

``bench.chain(i, steps)`` calls a no-op step ``steps`` times (each returns a small dict),
so a run measures the engine, not the work; ``bench.chain_async`` is the same chain as an
``async def`` workflow awaiting an ``async def`` step, run on the worker's event loop.
``bench.hold(i, seconds)`` records that it started, then sleeps in its one step: the
recovery row kills the worker holding it.

Also runnable by the real worker command:
``shardflow --config X worker --app bench.apps.shardflow_app:app``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

import shardflow
from bench.apps.probe import PROBE

app = shardflow.App("bench")

EFFECTS_DSN_ENV = "BENCH_EFFECTS_DSN"
_local = threading.local()


@app.step()
def noop(k: int) -> dict[str, Any]:
    return {"k": k, "t": time.time()}


@app.workflow(name="bench.chain")
def chain(i: int, steps: int) -> dict[str, Any]:
    PROBE.started()
    for k in range(steps):
        noop(k)
    PROBE.finished()
    return {"i": i, "steps": steps}


@app.step()
async def noop_async(k: int) -> dict[str, Any]:
    return {"k": k, "t": time.time()}


@app.workflow(name="bench.chain_async")
async def chain_async(i: int, steps: int) -> dict[str, Any]:
    PROBE.started()
    for k in range(steps):
        await noop_async(k)
    PROBE.finished()
    return {"i": i, "steps": steps}


@app.step()
def hold_step(seconds: float) -> dict[str, Any]:
    record_start()
    time.sleep(seconds)
    return {"held": seconds}


@app.workflow(name="bench.hold")
def hold(i: int, seconds: float) -> dict[str, Any]:
    return hold_step(seconds)


EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS bench_effects (
    workflow_id text        NOT NULL,
    pid         integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def record_start() -> None:
    """One row per execution of a held step: which process ran it, and when it began."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ[EFFECTS_DSN_ENV], autocommit=True)
        _local.conn = conn
    conn.execute(
        "INSERT INTO bench_effects (workflow_id, pid) VALUES (%s, %s)",
        (shardflow.current_workflow_id(), os.getpid()),
    )
