"""FlagEvent and LoopEvent: the events of a run, set from any thread, waited for in a
thread or (an async run's) awaited on the loop."""

from __future__ import annotations

import asyncio
import threading

from shardflow.engine.aio.run import LoopEvent
from shardflow.engine.signals import FlagEvent


def test_a_coroutine_wakes_when_another_thread_sets_it() -> None:
    async def main() -> tuple[bool, bool]:
        event = LoopEvent(asyncio.get_running_loop())
        assert await event.wait_async(0.01) is False
        setter = threading.Timer(0.05, event.set)
        setter.start()
        woken = await event.wait_async(30)
        setter.join()
        return woken, event.is_set()

    assert asyncio.run(main()) == (True, True)


def test_a_thread_wakes_when_a_coroutine_sets_it() -> None:
    async def main() -> bool:
        event = LoopEvent(asyncio.get_running_loop())
        waiting = asyncio.get_running_loop().run_in_executor(None, event.wait, 30)
        await asyncio.sleep(0.05)
        event.set()
        return await waiting

    assert asyncio.run(main()) is True


def test_set_before_anyone_waits_and_clear() -> None:
    async def main() -> list[bool]:
        event = LoopEvent(asyncio.get_running_loop())
        event.set()
        seen = [event.is_set(), await event.wait_async(0), event.wait(0)]
        event.clear()
        seen += [event.is_set(), await event.wait_async(0.01), event.wait(0.01)]
        return seen

    assert asyncio.run(main()) == [True, True, True, False, False, False]


def test_many_setters_and_waiters_all_wake() -> None:
    """No lost wake-up between a waiter making its event and a setter looking for it."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        events = [LoopEvent(loop) for _ in range(500)]
        waits = [asyncio.ensure_future(e.wait_async(30)) for e in events]
        threads = [threading.Thread(target=e.set) for e in events]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(await asyncio.gather(*waits))

    assert asyncio.run(main()) == 500


def test_a_flag_event_wakes_its_waiting_threads() -> None:
    event = FlagEvent()
    assert event.wait(0.01) is False
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(event.wait(30))) for _ in range(8)]
    for t in waiters:
        t.start()
    event.set()
    for t in waiters:
        t.join()
    assert woken == [True] * 8
    event.clear()
    assert not event.is_set() and event.wait(0.01) is False
