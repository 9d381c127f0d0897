"""Workflows for the time-and-communication tests. Side effects go to `demo_effects`
(when SHARDFLOW_DEMO_EFFECTS_DSN is set), so tests across processes can count them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import shardflow
from shardflow.demo.app import record_effect

app = shardflow.App("waits")


@app.step()
def effect(name: str) -> str:
    record_effect(name)
    return name


@app.step()
def now() -> float:
    return time.time()


@app.workflow(name="waits.sleeper")
def sleeper(seconds: float) -> dict[str, float]:
    before = now()
    shardflow.sleep(seconds)
    after = now()
    return {"before": before, "after": after}


@app.workflow(name="waits.receiver")
def receiver(count: int, topic: str | None = None, timeout: float = 30.0) -> list[Any]:
    got = []
    for _ in range(count):
        message = shardflow.recv(topic, timeout=timeout)
        effect(f"recv:{message}")
        got.append(message)
    return got


@app.workflow(name="waits.sender")
def sender(target: str, messages: list[Any], topic: str | None = None) -> int:
    for m in messages:
        shardflow.send(target, m, topic=topic)
    return len(messages)


@app.workflow(name="waits.async.receiver")
async def receiver_async(count: int, topic: str | None = None, timeout: float = 30.0) -> list[Any]:
    """:func:`receiver` as an async workflow."""
    got = []
    for _ in range(count):
        message = await shardflow.recv_async(topic, timeout=timeout)
        await effect.call_async(f"recv:{message}")
        got.append(message)
    return got


@app.workflow(name="waits.publisher")
def publisher(value: Any) -> str:
    shardflow.set_event("status", "started")
    effect("publish")
    shardflow.set_event("status", value)
    return "done"


@app.workflow(name="waits.async.publisher")
async def publisher_async(value: Any) -> str:
    """:func:`publisher` as an async workflow."""
    await shardflow.set_event_async("status", "started")
    await effect.call_async("publish")
    await shardflow.set_event_async("status", value)
    return "done"


@app.workflow(name="waits.event_reader")
def event_reader(target: str) -> Any:
    return shardflow.get_event(target, "status", timeout=30)


@app.workflow(name="waits.child")
def child(x: int) -> int:
    effect(f"child:{x}")
    return x * 10


@app.step()
def wait_for_file(path: str) -> None:
    """Blocks until ``path`` exists: lets a test kill the worker at a known point."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.workflow(name="waits.parent")
def parent(x: int, gate: str | None = None) -> int:
    handle = shardflow.start_child(child, x)
    effect("parent:started-child")
    if gate:
        wait_for_file(gate)
    return handle.result() + 1


@app.step()
def slow_step(seconds: float) -> None:
    effect("slow")
    time.sleep(seconds)


@app.workflow(name="waits.slow_child")
def slow_child() -> None:
    for _ in range(100):
        slow_step(0.2)


@app.workflow(name="waits.slow_parent")
def slow_parent() -> None:
    h = shardflow.start_child(slow_child)
    for _ in range(100):
        slow_step(0.2)
    h.result()


@app.workflow(name="waits.steps5")
def steps5(tag: str) -> list[str]:
    return [effect(f"{tag}:{i}") for i in range(5)]


def effects_dsn() -> str | None:
    return os.environ.get("SHARDFLOW_DEMO_EFFECTS_DSN")


@app.workflow(name="waits.echo")
def echo(value: Any) -> Any:
    """Returns what it is given (a result's round trip through the final write)."""
    return value
