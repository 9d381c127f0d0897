"""Workflows for the in-process engine tests. Tests steer them through ``CONTROL``."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import shardflow

app = shardflow.App("basic")

# Per-test knobs and observations, reset by the tests' fixture.
CONTROL: dict[str, Any] = {}
CALLS: defaultdict[str, int] = defaultdict(int)
ORDER: list[str] = []
LOCK = threading.Lock()


def reset() -> None:
    CONTROL.clear()
    CALLS.clear()
    ORDER.clear()


def note(key: str) -> None:
    with LOCK:
        CALLS[key] += 1
        ORDER.append(key)


@app.step()
def add(a: int, b: int) -> int:
    note("add")
    return a + b


@app.workflow(name="basic.three_steps")
def three_steps(x: int) -> dict[str, int]:
    a = add(x, 1)
    b = add(a, 1)
    c = add(b, 1)
    return {"result": c}


@app.step(max_attempts=3, backoff_seconds=0.2, backoff_rate=2.0)
def flaky(key: str) -> str:
    note(f"flaky:{key}")
    with LOCK:
        CONTROL.setdefault("flaky_times", []).append(time.monotonic())
    if CALLS[f"flaky:{key}"] < CONTROL.get("flaky_failures", 0) + 1:
        raise ConnectionError(f"transient failure {CALLS[f'flaky:{key}']}")
    return f"ok:{key}"


@app.workflow(name="basic.with_retries")
def with_retries(key: str) -> str:
    return flaky(key)


@app.step(max_attempts=2, backoff_seconds=0.01)
def always_fails(key: str) -> None:
    note(f"fails:{key}")
    raise ValueError(f"bad input {key}")


@app.workflow(name="basic.failing")
def failing(key: str) -> None:
    always_fails(key)


@app.step()
def first_step() -> str:
    note("first_step")
    return "first"


@app.step()
def other_step() -> str:
    note("other_step")
    return "other"


@app.workflow(name="basic.changing")
def changing() -> str:
    """Calls a different first step once CONTROL['changed'] is set: non-deterministic."""
    if CONTROL.get("changed"):
        return other_step()
    first_step()
    raise RuntimeError("fail once so the workflow can be resumed")


@app.step()
def gate_step(name: str) -> str:
    note(f"gate:{name}")
    return name


@app.workflow(name="basic.gated")
def gated(key: str) -> str:
    """Step, then wait for the test to open the gate, then another step."""
    gate_step("before")
    started: threading.Event = CONTROL["started"]
    gate: threading.Event = CONTROL["gate"]
    started.set()
    gate.wait(30)
    gate_step("after")
    return key


@app.workflow(name="basic.record_order")
def record_order(label: str) -> str:
    note(label)
    return label


@app.step()
def big_output(size: int) -> str:
    return "x" * size


@app.workflow(name="basic.big")
def big(size: int) -> int:
    return len(big_output(size))


@app.workflow(name="basic.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@app.step()
def slow_step(seconds: float) -> str:
    time.sleep(seconds)  # the work itself takes this long: what the step timing records
    return "slept"


@app.workflow(name="basic.step_then_sleep")
def step_then_sleep(seconds: float) -> str:
    """A step that takes ``seconds``, then a durable sleep of a tenth of a second."""
    out = slow_step(seconds)
    shardflow.sleep(0.1)
    return out
