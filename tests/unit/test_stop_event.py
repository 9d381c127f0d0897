"""StopEvent: a stop flag that also makes a socket readable, so that a listener blocked on
its LISTEN connection returns when its worker or client stops, not at its next timeout."""

from __future__ import annotations

import select
import threading

from shardflow.engine.signals import StopEvent


def _readable(sock_fd: int, timeout_ms: int) -> bool:
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


def test_the_wakeup_socket_is_silent_until_the_flag_is_set() -> None:
    stop = StopEvent()
    with stop.wakeup() as woken:
        assert not _readable(woken.fileno(), 0)
        stop.set()
        assert stop.is_set()
        assert _readable(woken.fileno(), 0)


def test_a_flag_set_before_the_wait_starts_wakes_it_at_once() -> None:
    stop = StopEvent()
    stop.set()
    with stop.wakeup() as woken:
        assert _readable(woken.fileno(), 0)


def test_a_thread_blocked_on_the_socket_returns_when_another_sets_the_flag() -> None:
    stop = StopEvent()
    outcome: list[bool] = []
    with stop.wakeup() as woken:
        waiter = threading.Thread(target=lambda: outcome.append(_readable(woken.fileno(), -1)))
        waiter.start()  # blocks without a timeout: only set() can end it
        stop.set()
        waiter.join(timeout=30)
        assert not waiter.is_alive()
    assert outcome == [True]


def test_every_open_wait_is_woken_and_closed_ones_are_forgotten() -> None:
    stop = StopEvent()
    with stop.wakeup() as first, stop.wakeup() as second:
        with stop.wakeup():
            pass  # closed: set() must not fail on it
        stop.set()
        assert _readable(first.fileno(), 0)
        assert _readable(second.fileno(), 0)
    assert stop.is_set()
