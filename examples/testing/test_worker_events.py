"""Waiting on what a worker did instead of sleeping: subscribe an EventRecorder before the
worker starts, then wait for an event (with a deadline) and assert on it."""

from order_logic import app, quote

import shardflow
from shardflow.engine.worker import EventKind
from shardflow.testing.events import EventRecorder


def test_each_step_checkpoint_is_reported(cluster: shardflow.Cluster) -> None:
    worker = shardflow.Worker(cluster, app, concurrency=2)
    with EventRecorder(worker) as events, worker:
        handle = cluster.submit(quote, "o-9", 3, workflow_id="quote-o-9")
        [end] = events.wait_for(EventKind.FINISHED, timeout=60)
    assert (end.workflow_id, end.shard, end.detail) == (handle.workflow_id, handle.shard, "SUCCESS")
    [step] = events.events(EventKind.COMMITTED)
    assert (step.detail, step.step_no, step.attempt) == ("price", 0, 1)
    assert handle.result(timeout=1) == {"order_id": "o-9", "total": 750}
