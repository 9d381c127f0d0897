"""Workflows for the operations tests: metrics, retention, claim checks, worker roles."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import shardflow

app = shardflow.App("ops")


@app.step()
def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.workflow(name="ops.steps")
def steps(n: int, seconds: float = 0.0) -> int:
    """``n`` checkpointed steps of ``seconds`` each."""
    return sum(1 for _ in range(n) if pause(seconds) >= 0)


@app.step()
def make_document(size: int) -> str:
    """A ``size``-character text that is not one repeated byte (hashes tell copies apart)."""
    block = "".join(f"{i:08x}" for i in range(1024))  # 8 KiB of hex digits
    return (block * (size // len(block) + 1))[:size]


@app.workflow(name="ops.big_output")
def big_output(size: int, suspend_seconds: float = 1.0) -> dict[str, Any]:
    """Record a large step output, suspend (so the next attempt replays it from its
    checkpoint), and report what the replay saw."""
    document = make_document(size)
    shardflow.sleep(suspend_seconds)
    return {"len": len(document), "sha256": hashlib.sha256(document.encode()).hexdigest()}


@app.workflow(name="ops.echo")
def echo(value: Any) -> Any:
    return value


@app.workflow(name="ops.inbox")
def inbox(count: int) -> list[Any]:
    """Publish an event, then receive ``count`` messages: writes messages and events."""
    shardflow.set_event("state", "waiting")
    got = [shardflow.recv("in", timeout=30) for _ in range(count)]
    shardflow.set_event("state", "done")
    return got


@app.workflow(name="ops.parent")
def parent(n: int) -> int:
    """Starts a child and waits for it (children are submitted by the worker)."""
    child = shardflow.start_child(steps, n)
    result: int = child.result()
    return result


_FAILED_ONCE: set[str] = set()


@app.step(max_attempts=3, backoff_seconds=0.05)
def call_remote(key: str) -> str:
    """Fails on its first call per key in this process, then succeeds."""
    if key not in _FAILED_ONCE:
        _FAILED_ONCE.add(key)
        raise ConnectionError(f"transient failure for {key}")
    return f"ok:{key}"


@app.workflow(name="ops.flaky")
def flaky(key: str) -> str:
    return call_remote(key)
