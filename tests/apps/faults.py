"""Workflows for the fault-hardening regression tests (tests/*/test_fault_hardening.py).

Step executions are recorded in ``EXECUTIONS`` (in-process tests) and, when the
``SHARDFLOW_FAULT_LOG`` file is set, appended to it as JSON lines (worker subprocesses).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import shardflow

app = shardflow.App("faults")

EXECUTIONS: list[dict[str, Any]] = []
_lock = threading.Lock()


def record(event: str, **fields: Any) -> None:
    entry = {"event": event, "pid": os.getpid(), "t": time.time(), **fields}
    with _lock:
        EXECUTIONS.append(entry)
    path = os.environ.get("SHARDFLOW_FAULT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def reset() -> None:
    with _lock:
        EXECUTIONS.clear()


def started(name: str, key: str) -> int:
    with _lock:
        return sum(
            1 for e in EXECUTIONS if e["event"] == "start" and e["name"] == name and e["key"] == key
        )


@app.step()
def timed_step(key: str, name: str, seconds: float) -> str:
    record("start", key=key, name=name)
    time.sleep(seconds)
    record("end", key=key, name=name)
    return f"{name}:{key}"


@app.workflow(name="faults.long_step")
def long_step(key: str, seconds: float) -> str:
    """One step that takes ``seconds`` (longer than a lease in the tests), then another."""
    first = timed_step(key, "long", seconds)
    timed_step(key, "after", 0.0)
    return first


@app.step()
def gated_step(key: str, gate: str) -> str:
    """Runs until the file ``gate`` exists (at most 300 s)."""
    record("start", key=key, name="gated")
    deadline = time.monotonic() + 300
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    record("end", key=key, name="gated")
    return f"gated:{key}"


@app.workflow(name="faults.gated")
def gated(key: str, gate: str) -> str:
    return gated_step(key, gate)


@app.step()
def file_name(key: str) -> str:
    # What os.listdir returns for a file name that is not UTF-8: a lone surrogate.
    return os.fsdecode(b"report-\xff.txt")


@app.workflow(name="faults.surrogate")
def surrogate(key: str) -> str:
    return file_name(key)


@app.step(max_attempts=1)
def nul_failure(key: str) -> None:
    record("start", key=key, name="nul")
    raise ValueError("bad\x00value from a C library")


@app.workflow(name="faults.nul_error")
def nul_error(key: str) -> None:
    nul_failure(key)


@app.workflow(name="faults.sleeper")
def sleeper(seconds: float) -> float:
    started = time.time()
    shardflow.sleep(seconds)
    return time.time() - started


@app.step()
def before_send(key: str) -> str:
    record("start", key=key, name="before_send")
    return key


@app.workflow(name="faults.talker")
def talker(key: str, target: str) -> str:
    """A step, a message to ``target`` (on another shard in the tests), a step."""
    before_send(key)
    shardflow.send(target, f"hello from {key}")
    return timed_step(key, "after_send", 0.0)


@app.workflow(name="faults.listener")
def listener() -> Any:
    return shardflow.recv(timeout=None)


@app.workflow(name="faults.child_blocks")
def child_blocks() -> Any:
    return shardflow.recv(topic="never", timeout=None)


@app.workflow(name="faults.parent_of_blocker")
def parent_of_blocker() -> str:
    child = shardflow.start_child(child_blocks)
    try:
        child.result()
    except shardflow.WorkflowCancelled:
        return "child cancelled"
    return "child finished"


@app.workflow(name="faults.two_args")
def two_args(a: int, b: int = 0) -> int:
    return a + b


@app.workflow(name="faults.bad_child_call")
def bad_child_call() -> str:
    shardflow.start_child(two_args, 1, bogus=2)
    return "unreachable"


@app.workflow(name="faults.publisher")
def publisher(value: str) -> str:
    shardflow.set_event("ready", value)
    return value
