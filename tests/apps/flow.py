"""Workflows for the flow-control tests (tests/integration/test_flow_control.py).

Each run notes when it begins and ends its work, per partition key, so that a test can
tell how many of one key ran at once from inside the workers too."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

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
