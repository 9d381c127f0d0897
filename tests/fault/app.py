"""The fault run's workflows. Every ``work`` step records its executions (see history.py)."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import shardflow
from shardflow.engine import context
from tests.fault import history

app = shardflow.App("fault")
TOPIC = "t"


@app.step()
def work(tag: str, millis: int) -> str:
    """Takes ``millis`` ms, long enough that overlapping executions would show."""
    run = context.current_run()
    rec = history.recorder()
    if run is None or rec is None:
        time.sleep(millis / 1000)
        return tag
    base = {
        "id": uuid.uuid4().hex,
        "pid": os.getpid(),
        "workflow_id": run.workflow_id,
        # The engine numbered this step before calling its body.
        "step_no": run.next_step - 1,
        "attempt": run.attempt,
        "shard": run.shard,
    }
    rec.write({**base, "kind": "start", "t": time.time()})
    completed = False
    try:
        time.sleep(millis / 1000)
        completed = True
        return tag
    finally:
        rec.write({**base, "kind": "end", "t": time.time(), "completed": completed})


@app.workflow(name="fault.pipeline")
def pipeline(tag: str, steps: int, millis: int, nap: float = 0.0) -> list[str]:
    out = []
    for i in range(steps):
        out.append(work(f"{tag}:{i}", millis))
        if nap and i == steps // 2:
            shardflow.sleep(nap)
    return out


def pipeline_output(tag: str, steps: int) -> list[str]:
    return [f"{tag}:{i}" for i in range(steps)]


@app.workflow(name="fault.receiver")
def receiver(count: int, timeout: float) -> list[Any]:
    got = []
    for _ in range(count):
        message = shardflow.recv(TOPIC, timeout=timeout)
        work(f"recv:{message}", 5)
        got.append(message)
    return got


@app.workflow(name="fault.sender")
def sender(target: str, messages: list[str]) -> int:
    for m in messages:
        work(f"send:{m}", 5)
        shardflow.send(target, m, topic=TOPIC)
    return len(messages)


@app.workflow(name="fault.child")
def child(tag: str) -> str:
    work(f"{tag}:c0", 20)
    work(f"{tag}:c1", 20)
    return f"{tag}:child"


@app.workflow(name="fault.parent")
def parent(tag: str) -> str:
    handle = shardflow.start_child(child, tag)
    work(f"{tag}:p", 20)
    return handle.result() + "!"
