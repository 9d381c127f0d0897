"""Workflows for the tracing tests (tests/integration/test_tracing.py). Tests steer them
through ``CONTROL``."""

from __future__ import annotations

from typing import Any

import shardflow

app = shardflow.App("traced")

# Per-test knobs, reset by the tests: ``hung`` (keys whose first run of `hang` blocked),
# ``started`` and ``gate`` (events).
CONTROL: dict[str, Any] = {}


@app.step()
def double(x: int) -> int:
    return 2 * x


@app.step()
def hang(key: str) -> str:
    """Blocks its first run for ``key`` until the test opens the gate; runs again (on a
    recovering worker) return at once."""
    hung: set[str] = CONTROL.setdefault("hung", set())
    if key not in hung:
        hung.add(key)
        CONTROL["started"].set()
        CONTROL["gate"].wait(60)
    return key


@app.workflow(name="traced.two_steps")
def two_steps(x: int) -> int:
    return double(double(x))


@app.step(name="double")
async def double_async(x: int) -> int:
    return 2 * x


@app.workflow(name="traced.two_steps_async")
async def two_steps_async(x: int) -> int:
    return await double_async(await double_async(x))


@app.workflow(name="traced.stuck")
def stuck(key: str) -> int:
    first = double(1)
    hang(key)
    return double(first)


@app.step()
def held(x: int) -> int:
    """Returns once the test opens ``CONTROL["gate"]`` (at once if there is none)."""
    gate = CONTROL.get("gate")
    if gate is not None:
        gate.wait(60)
    return x


@app.workflow(name="traced.child")
def child(x: int) -> int:
    return double(held(x))


@app.workflow(name="traced.parent")
def parent(x: int) -> int:
    handle = shardflow.start_child(child, x)
    return handle.result() + 1


@app.workflow(name="traced.waiter")
def waiter() -> Any:
    double(1)
    message = shardflow.recv("go", timeout=None)
    double(2)
    return message
