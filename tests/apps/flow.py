"""Workflows for the flow-control tests (tests/integration/test_flow_control.py).

Each run notes when it begins and ends its work, per partition key, so that a test can
tell how many of one key ran at once from inside the workers too."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import psycopg

import shardflow

app = shardflow.App("flow")

LOCK = threading.Lock()
ACTIVE: defaultdict[str, int] = defaultdict(int)
MOST: defaultdict[str, int] = defaultdict(int)
MOST_TOTAL = [0]
SECONDS = [0.02]


def reset(seconds: float = 0.02) -> None:
    with LOCK:
        ACTIVE.clear()
        MOST.clear()
        MOST_TOTAL[0] = 0
        SECONDS[0] = seconds


@app.step()
def work(key: str) -> str:
    with LOCK:
        ACTIVE[key] += 1
        MOST[key] = max(MOST[key], ACTIVE[key])
        MOST_TOTAL[0] = max(MOST_TOTAL[0], sum(ACTIVE.values()))
    try:
        time.sleep(SECONDS[0])  # the work itself takes this long
    finally:
        with LOCK:
            ACTIVE[key] -= 1
    return key


@app.workflow(name="flow.keyed", queue="tenants")
def keyed(key: str) -> str:
    return work(key)


@app.workflow(name="flow.parent", queue="tenants")
def parent(key: str) -> str:
    child = shardflow.start_child(keyed, key)
    return str(child.result())


@app.workflow(name="flow.latest")
def latest(value: str) -> str:
    return work(value)


# -- queue-wide concurrency (tests/integration/test_queue_concurrency.py) -------------------
# Each run of `flow.single` records its interval in a table, on one server's clock, so that
# runs in several worker processes can be compared. A process started with
# SHARDFLOW_FLOW_HOLD_SECONDS holds each run that long (a victim to SIGKILL).
INTERVALS_TABLE = (
    "CREATE TABLE IF NOT EXISTS flow_intervals (run_id bigserial PRIMARY KEY,"
    " workflow_id text NOT NULL, pid integer NOT NULL,"
    " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)"
)
INTERVALS_DSN = [os.environ.get("SHARDFLOW_FLOW_INTERVALS_DSN", "")]
HOLD_SECONDS = [float(os.environ.get("SHARDFLOW_FLOW_HOLD_SECONDS", "0.02"))]


@app.step()
def timed(workflow_id: str) -> str:
    with psycopg.connect(INTERVALS_DSN[0], autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO flow_intervals (workflow_id, pid) VALUES (%s, %s) RETURNING run_id",
            [workflow_id, os.getpid()],
        ).fetchone()
        assert row is not None
        time.sleep(HOLD_SECONDS[0])
        conn.execute(
            "UPDATE flow_intervals SET ended_at = clock_timestamp() WHERE run_id = %s", [row[0]]
        )
    return workflow_id


@app.workflow(name="flow.single", queue="single")
def single() -> str:
    return timed(shardflow.workflow_id())


@app.step()
def tick(i: int) -> int:
    time.sleep(SECONDS[0])
    return i


@app.workflow(name="flow.paced", queue="single")
def paced(n: int) -> int:
    """``n`` steps of ``SECONDS`` each, in the queue of ``concurrency: 1``."""
    return sum(1 for i in range(n) if tick(i) == i)


@app.workflow(name="flow.napper", queue="single")
def napper() -> str:
    """Runs, suspends (a durable sleep: idle, so the rebalancer may move it), runs again."""
    wid = shardflow.workflow_id()
    timed(wid)
    shardflow.sleep(0.6)
    return timed(wid)
