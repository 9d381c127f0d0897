"""The same workflows twice, as plain functions and as ``async def``, so that one
parametrized test checks both kinds (``FLAVORS["sync"]`` / ``FLAVORS["async"]``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import shardflow

app = shardflow.App("twins")

CONTROL: dict[str, Any] = {}
CALLS: defaultdict[str, int] = defaultdict(int)
LOCK = threading.Lock()


def reset() -> None:
    CONTROL.clear()
    CALLS.clear()


def note(key: str) -> None:
    with LOCK:
        CALLS[key] += 1


def append(path: str, line: str) -> None:
    """A side effect visible across processes: one line per execution."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(line + "\n")


# -- steps ------------------------------------------------------------------------------


@app.step()
def add(a: int, b: int) -> int:
    note("add")
    return a + b


@app.step(name="add")
async def add_async(a: int, b: int) -> int:
    note("add")
    await asyncio.sleep(0)
    return a + b


@app.step()
def gate_step(where: str) -> str:
    note(f"gate:{where}")
    return where


@app.step(name="gate_step")
async def gate_step_async(where: str) -> str:
    note(f"gate:{where}")
    return where


@app.step()
def wait_gate() -> None:
    CONTROL["started"].set()
    CONTROL["gate"].wait(30)


@app.step(name="wait_gate")
async def wait_gate_async() -> None:
    CONTROL["started"].set()
    deadline = time.monotonic() + 30
    while not CONTROL["gate"].is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@app.step()
def now() -> float:
    return time.time()


@app.step(name="now")
async def now_async() -> float:
    return time.time()


@app.step()
def effect(path: str, name: str) -> str:
    append(path, name)
    return name


@app.step(name="effect")
async def effect_async(path: str, name: str) -> str:
    await asyncio.to_thread(append, path, name)
    return name


@app.step()
def wait_for_file(path: str) -> None:
    """Blocks until ``path`` exists: lets a test kill the worker at a known point."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.step(name="wait_for_file")
async def wait_for_file_async(path: str) -> None:
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


@app.step()
def slow(seconds: float) -> float:
    note("slow")
    time.sleep(seconds)
    return seconds


@app.step(name="slow")
async def slow_async(seconds: float) -> float:
    note("slow")
    await asyncio.sleep(seconds)
    return seconds


@app.step()
def tick() -> int:
    note("tick")
    return 1


# -- sync workflows ------------------------------------------------------------------------


@app.workflow(name="twins.sync.three_steps")
def three_steps(x: int) -> dict[str, int]:
    return {"result": add(add(add(x, 1), 1), 1)}


@app.workflow(name="twins.sync.gated")
def gated(key: str) -> str:
    gate_step("before")
    wait_gate()
    gate_step("after")
    return key


@app.workflow(name="twins.sync.sleeper")
def sleeper(seconds: float) -> dict[str, float]:
    before = now()
    shardflow.sleep(seconds)
    return {"before": before, "after": now()}


@app.workflow(name="twins.sync.receiver")
def receiver(count: int, topic: str | None = None) -> list[Any]:
    return [shardflow.recv(topic, timeout=30) for _ in range(count)]


@app.workflow(name="twins.sync.sender")
def sender(target: str, messages: list[Any], topic: str | None = None) -> int:
    for m in messages:
        shardflow.send(target, m, topic=topic)
    return len(messages)


@app.workflow(name="twins.sync.child")
def child(x: int) -> int:
    return add(x, 0) * 10


@app.workflow(name="twins.sync.parent")
def parent(x: int) -> int:
    return shardflow.start_child(child, x).result() + 1


@app.workflow(name="twins.sync.publisher")
def publisher(value: Any) -> str:
    shardflow.set_event("status", value)
    return "done"


@app.workflow(name="twins.sync.event_reader")
def event_reader(target: str) -> Any:
    return shardflow.get_event(target, "status", timeout=30)


@app.workflow(name="twins.sync.ticker")
def ticker() -> None:
    while True:
        tick()
        shardflow.sleep(0.1)


@app.workflow(name="twins.sync.outlasting")
def outlasting(seconds: float) -> float:
    return slow(seconds)


@app.workflow(name="twins.sync.crashy")
def crashy(path: str, release: str) -> str:
    effect(path, "one")
    wait_for_file(release)
    effect(path, "two")
    return "done"


# -- async workflows -----------------------------------------------------------------------


@app.workflow(name="twins.async.three_steps")
async def three_steps_async(x: int) -> dict[str, int]:
    return {"result": await add_async(await add_async(await add_async(x, 1), 1), 1)}


@app.workflow(name="twins.async.gated")
async def gated_async(key: str) -> str:
    await gate_step_async("before")
    await wait_gate_async()
    await gate_step_async("after")
    return key


@app.workflow(name="twins.async.sleeper")
async def sleeper_async(seconds: float) -> dict[str, float]:
    before = await now_async()
    await shardflow.sleep_async(seconds)
    return {"before": before, "after": await now_async()}


@app.workflow(name="twins.async.receiver")
async def receiver_async(count: int, topic: str | None = None) -> list[Any]:
    return [await shardflow.recv_async(topic, timeout=30) for _ in range(count)]


@app.workflow(name="twins.async.sender")
async def sender_async(target: str, messages: list[Any], topic: str | None = None) -> int:
    for m in messages:
        await shardflow.send_async(target, m, topic=topic)
    return len(messages)


@app.workflow(name="twins.async.child")
async def child_async(x: int) -> int:
    return await add_async(x, 0) * 10


@app.workflow(name="twins.async.parent")
async def parent_async(x: int) -> int:
    handle = await shardflow.start_child_async(child_async, x)
    return await handle.result_async() + 1


@app.workflow(name="twins.async.publisher")
async def publisher_async(value: Any) -> str:
    await shardflow.set_event_async("status", value)
    return "done"


@app.workflow(name="twins.async.event_reader")
async def event_reader_async(target: str) -> Any:
    return await shardflow.get_event_async(target, "status", timeout=30)


@app.workflow(name="twins.async.ticker")
async def ticker_async() -> None:
    while True:
        await tick.call_async()  # a sync step, run in a thread
        await shardflow.sleep_async(0.1)


@app.workflow(name="twins.async.outlasting")
async def outlasting_async(seconds: float) -> float:
    return await slow_async(seconds)


@app.workflow(name="twins.async.crashy")
async def crashy_async(path: str, release: str) -> str:
    await effect_async(path, "one")
    await wait_for_file_async(release)
    await effect_async(path, "two")
    return "done"


# -- the wrong primitive for the kind --------------------------------------------------------


@app.workflow(name="twins.mixed.sync_sleep_in_async")
async def sync_sleep_in_async() -> None:
    shardflow.sleep(1)


@app.workflow(name="twins.mixed.sync_step_in_async")
async def sync_step_in_async() -> int:
    return add(1, 2)


@app.workflow(name="twins.mixed.async_step_in_sync")
def async_step_in_sync() -> Any:
    return add_async(1, 2)


@app.workflow(name="twins.mixed.async_sleep_in_sync")
def async_sleep_in_sync() -> None:
    asyncio.run(shardflow.sleep_async(1))


class Billing:
    """Workflows and steps as methods of an object holding configuration."""

    def __init__(self, rate: int) -> None:
        self.rate = rate

    @app.step(name="billing.price")
    def price(self, units: int) -> int:
        note("price")
        return units * self.rate

    @app.workflow(name="twins.billing.charge")
    def charge(self, units: int) -> dict[str, int]:
        return {"total": self.price(units) + self.price(1)}


class AsyncBilling:
    """:class:`Billing` with async methods."""

    def __init__(self, rate: int) -> None:
        self.rate = rate

    @app.step(name="billing.price")
    async def price(self, units: int) -> int:
        note("price")
        await asyncio.sleep(0)
        return units * self.rate

    @app.workflow(name="twins.async.billing.charge")
    async def charge(self, units: int) -> dict[str, int]:
        return {"total": await self.price(units) + await self.price(1)}


class Unbound:
    """A class whose instance no worker binds: its workflow cannot run."""

    @app.workflow(name="twins.unbound.run")
    def run(self) -> int:
        return 1


BILLING = app.bind(Billing(rate=10))
ASYNC_BILLING = app.bind(AsyncBilling(rate=10))


FLAVORS = {
    "sync": SimpleNamespace(
        three_steps=three_steps,
        gated=gated,
        sleeper=sleeper,
        receiver=receiver,
        sender=sender,
        parent=parent,
        publisher=publisher,
        event_reader=event_reader,
        ticker=ticker,
        crashy=crashy,
        outlasting=outlasting,
        billing=BILLING,
        billing_class=Billing,
    ),
    "async": SimpleNamespace(
        three_steps=three_steps_async,
        gated=gated_async,
        sleeper=sleeper_async,
        receiver=receiver_async,
        sender=sender_async,
        parent=parent_async,
        publisher=publisher_async,
        event_reader=event_reader_async,
        ticker=ticker_async,
        crashy=crashy_async,
        outlasting=outlasting_async,
        billing=ASYNC_BILLING,
        billing_class=AsyncBilling,
    ),
}
