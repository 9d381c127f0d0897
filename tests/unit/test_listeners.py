"""The waits listener's fan-out, driven by a scripted notification source (the SQL side
is in tests/integration/test_result_waits.py)."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator

import pytest

from shardflow.engine.listeners import WaitFor, WaitListeners
from shardflow.errors import ShardUnavailable
from shardflow.testing.servers import wait_until


class Script:
    """A notification source: each connection yields what the test puts on its queue;
    an exception put there ends the connection with that error."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, str] | Exception] = queue.Queue()
        self.connections = 0

    def listen(
        self,
        shard: str,
        timeout: float,
        stop: threading.Event,
        *,
        channels: str = "listen",
        purpose: str = "listen",
    ) -> Iterator[tuple[str, str]]:
        assert (channels, purpose) == ("listen_waits", "waits")
        self.connections += 1
        yield "", ""  # LISTEN is in place
        while not stop.is_set():
            try:
                item = self.items.get(timeout=timeout)
            except queue.Empty:
                yield "", ""
                continue
            if isinstance(item, Exception):
                raise item
            yield item


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def listeners(script: Script) -> Iterator[WaitListeners]:
    made = WaitListeners(script, recheck_seconds=600)
    yield made
    made.close()


def listening(listeners: WaitListeners) -> bool:
    health = listeners.health().get("s0")
    return health is not None and health.listening


def test_a_notification_wakes_only_the_waiters_of_its_workflow(
    listeners: WaitListeners, script: Script
) -> None:
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    with (
        listeners.watch(WaitFor.DONE, "a") as a,
        listeners.watch(WaitFor.DONE, "b") as b,
        listeners.watch(WaitFor.EVENT, "a") as event_a,
    ):
        script.items.put(("shardflow_done", "a"))
        listeners.wait(a, "s0", 30)
        assert listeners.stats().notified == 1
        # The others were not woken: a short wait on each ends as a re-check.
        listeners.wait(b, "s0", 0.01)
        listeners.wait(event_a, "s0", 0.01)
        assert listeners.stats().rechecks == 2
        script.items.put(("shardflow_event", "a"))
        listeners.wait(event_a, "s0", 30)
        script.items.put(("shardflow_cancel", "b"))
        listeners.wait(b, "s0", 30)
        assert listeners.stats().notified == 3
    assert listeners.waiting() == 0


def test_an_empty_payload_wakes_every_waiter_of_its_kind(
    listeners: WaitListeners, script: Script
) -> None:
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    with listeners.watch(WaitFor.DONE, "x") as x, listeners.watch(WaitFor.DONE, "y") as y:
        script.items.put(("shardflow_done", ""))  # an ID too long for a payload
        listeners.wait(x, "s0", 30)
        listeners.wait(y, "s0", 30)
    assert listeners.stats().notified == 2
    assert listeners.stats().rechecks == 0


def test_a_lost_connection_is_logged_wakes_every_waiter_and_is_reopened(
    listeners: WaitListeners, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    with listeners.watch(WaitFor.DONE, "z") as z, caplog.at_level(logging.WARNING):
        script.items.put(ShardUnavailable("s0", "connection lost"))
        listeners.wait(z, "s0", 30)  # woken to re-check: a notification may be lost
        wait_until(lambda: script.connections == 2 and listening(listeners))
    health = listeners.health()["s0"]
    assert health.connections_lost == 1
    assert health.last_error is not None and "connection lost" in health.last_error
    assert listeners.stats().resynced >= 1
    assert any("waits listener of shard s0 lost" in r.getMessage() for r in caplog.records)


def test_close_stops_the_listeners_and_no_new_one_starts(
    listeners: WaitListeners, script: Script
) -> None:
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    listeners.close()
    assert not listeners.health()["s0"].listening
    listeners.listen_to("s1")
    assert "s1" not in listeners.health()
    assert script.connections == 1


def test_an_interrupt_ends_a_wait_early(listeners: WaitListeners) -> None:
    interrupt = threading.Event()
    interrupt.set()
    with listeners.watch(WaitFor.EVENT, "w") as w:
        listeners.wait(w, "s0", 600, interrupt)
    assert listeners.stats().rechecks == 1


def test_a_batch_notification_wakes_the_waiters_of_each_id_it_names(
    listeners: WaitListeners, script: Script
) -> None:
    """Items are IDs, or [ID, result text] pairs whose text every waiter of that
    workflow's result is handed."""
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    text = '{"x": "\u00e9\\n"}'
    with (
        listeners.watch(WaitFor.DONE, 'a"\n') as a,
        listeners.watch(WaitFor.DONE, "b") as b,
        listeners.watch(WaitFor.DONE, "b") as b_again,
        listeners.watch(WaitFor.DONE, "c") as c,
        listeners.watch(WaitFor.EVENT, "b") as event_b,
    ):
        payload = json.dumps(['a"\n', ["b", text], "unknown"])
        script.items.put(("shardflow_done_ids", payload))
        for waiter in (a, b, b_again):
            listeners.wait(waiter, "s0", 30)
        assert a.carried is None  # named by ID alone: its waiter reads the row
        assert b.carried == b_again.carried == text
        # Neither the unnamed workflow nor another kind of wait on a named one woke.
        listeners.wait(c, "s0", 0.01)
        listeners.wait(event_b, "s0", 0.01)
        assert event_b.carried is None
        stats = listeners.stats()
        assert (stats.notified, stats.carried, stats.rechecks) == (3, 2, 2)


@pytest.mark.parametrize(
    "payload",
    ["not json", '{"a": 1}', '["a", 2]', "", '[["a"]]', '[["a", 1]]', '[["a", "1", "2"]]'],
)
def test_a_batch_payload_that_is_not_a_list_of_ids_wakes_every_waiter_of_its_kind(
    listeners: WaitListeners, script: Script, payload: str
) -> None:
    listeners.listen_to("s0")
    wait_until(lambda: listening(listeners))
    with listeners.watch(WaitFor.DONE, "x") as x, listeners.watch(WaitFor.DONE, "y") as y:
        script.items.put(("shardflow_done_ids", payload))
        listeners.wait(x, "s0", 30)
        listeners.wait(y, "s0", 30)
    assert listeners.stats().notified == 2
    assert listeners.stats().rechecks == 0
