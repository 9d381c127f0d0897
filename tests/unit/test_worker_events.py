"""The worker's event hub and the recorder tests wait on (no database)."""

from __future__ import annotations

import logging
import threading

import pytest

from shardflow.engine.worker import EventKind, WorkerEvent, WorkerEvents
from shardflow.testing.events import EventRecorder


class _FakeWorker:
    def __init__(self) -> None:
        self.events = WorkerEvents()


def test_no_subscriber_means_nothing_is_built() -> None:
    events = WorkerEvents()
    assert not events
    events.emit(EventKind.CLAIMED, "wf", "shard0", 1, "new")  # nobody listens: no error


def test_subscribers_get_every_event_until_they_unsubscribe() -> None:
    events = WorkerEvents()
    got: list[WorkerEvent] = []
    unsubscribe = events.subscribe(got.append)
    assert events
    events.emit(EventKind.COMMITTED, "wf", "shard1", 2, "step_a", 0)
    unsubscribe()
    events.emit(EventKind.FINISHED, "wf", "shard1", 2, "SUCCESS")
    assert got == [WorkerEvent(EventKind.COMMITTED, "wf", "shard1", 2, "step_a", 0)]
    assert not events


def test_a_subscriber_that_raises_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = WorkerEvents()
    got: list[EventKind] = []

    def broken(event: WorkerEvent) -> None:
        raise RuntimeError("subscriber bug")

    events.subscribe(broken)
    events.subscribe(lambda e: got.append(e.kind))
    with caplog.at_level(logging.ERROR, logger="shardflow.engine.worker"):
        events.emit(EventKind.RENEWED, "wf", "shard0", 1)
    assert got == [EventKind.RENEWED]
    assert "worker event subscriber" in caplog.text and "subscriber bug" in caplog.text


def test_recorder_waits_for_past_and_future_events() -> None:
    worker = _FakeWorker()
    with EventRecorder(worker) as recorder:
        worker.events.emit(EventKind.SUSPENDED, "a", "shard0", 1)
        later = threading.Timer(0.05, worker.events.emit, (EventKind.SUSPENDED, "b", "shard1", 1))
        later.start()
        seen = recorder.wait_for(EventKind.SUSPENDED, count=2, timeout=10)
        later.join()
        assert [e.workflow_id for e in seen] == ["a", "b"]
        assert recorder.count((EventKind.SUSPENDED, EventKind.FINISHED)) == 2
        assert recorder.count(EventKind.SUSPENDED, lambda e: e.shard == "shard1") == 1
    worker.events.emit(EventKind.SUSPENDED, "c", "shard0", 1)  # closed: not recorded
    assert recorder.count(EventKind.SUSPENDED) == 2


def test_recorder_times_out_saying_what_it_saw() -> None:
    worker = _FakeWorker()
    recorder = EventRecorder(worker)
    worker.events.emit(EventKind.CLAIMED, "a", "shard0", 1, "new")
    with pytest.raises(AssertionError, match=r"1 finished event.*claimed:a"):
        recorder.wait_for(EventKind.FINISHED, timeout=0.05)
