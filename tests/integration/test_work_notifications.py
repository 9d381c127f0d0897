"""A worker hears new work and due wake-ups without waiting for its poll tick: the
``shardflow_work`` notification (payload: the queue for new work, '<queue> due' for a
wake-up) sends its claim loop to the right query at once."""

from __future__ import annotations

import psycopg
import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.engine.cluster import Cluster
from shardflow.engine.worker import EventKind
from shardflow.engine.worker.listening import WAKE_DUE
from shardflow.testing.events import EventRecorder
from shardflow.testing.servers import id_on, wait_until
from tests.apps import faults, twins
from tests.apps.faults import app
from tests.integration.backends import count_backends, terminate_backends

# Far longer than each wait below: whatever happens within them came from a notification.
POLL = 120.0


def test_new_work_and_a_wake_up_are_heard_without_polling(cluster: Cluster) -> None:
    worker = shardflow.Worker(
        cluster, app, concurrency=2, poll_interval_seconds=POLL, lease_seconds=3 * POLL
    )
    # The claim loop looks for wake-ups once at start, then every POLL seconds or when
    # told: the wake-up below can only be found in time if it is announced.
    with worker, EventRecorder(worker) as recorder:
        listener = cluster.submit(faults.listener)
        wait_until(
            lambda: cluster.get(listener.workflow_id).state is WorkflowState.SUSPENDED,
            timeout=30,
            message="the listener claimed at once and suspended waiting for a message",
        )
        cluster.send(listener.workflow_id, "hello")
        assert listener.result(timeout=30) == "hello"
        claims = recorder.events(EventKind.CLAIMED, lambda e: e.workflow_id == listener.workflow_id)
    assert [c.detail for c in claims] == ["new", "woken"]


def test_a_wake_up_payload_is_marked_and_new_work_is_not(cluster: Cluster) -> None:
    """The payloads themselves: old workers ignore them, new ones tell them apart."""
    handle = cluster.submit(faults.listener)
    dsn = cluster.config.shard(handle.shard).dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN shardflow_work")
        other = id_on(cluster, handle.shard, handle.workflow_id)  # heard on this shard
        cluster.submit(faults.two_args, 1, workflow_id=other)
        with shardflow.Worker(cluster, app, concurrency=2):
            wait_until(lambda: cluster.get(handle.workflow_id).state is WorkflowState.SUSPENDED)
            cluster.send(handle.workflow_id, "hi")
            assert handle.result(timeout=30) == "hi"
        payloads = [n.payload for n in conn.notifies(timeout=0.5)]
    assert f"default{WAKE_DUE}" in payloads
    assert "default" in payloads


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_run_ending_at_full_capacity_starts_the_next_without_polling(
    cluster: Cluster, kind: str
) -> None:
    """One place, six workflows: each claim after the first is made because a run ended
    while capacity held the claim loop back (the poll tick is far away)."""
    workflow = twins.three_steps if kind == "sync" else twins.three_steps_async
    handles = [cluster.submit(workflow, i) for i in range(6)]
    worker = shardflow.Worker(
        cluster,
        twins.app,
        concurrency=1,
        async_concurrency=1,
        poll_interval_seconds=POLL,
        lease_seconds=3 * POLL,
    )
    with worker:
        for i, handle in enumerate(handles):
            assert handle.result(timeout=30) == {"result": i + 3}
    assert worker.stats.claimed == 6


LISTENER = "shardflow-listen"  # a worker's listener connection (application_name)


def test_work_announced_while_the_listener_reconnects_is_claimed_without_polling(
    cluster: Cluster,
) -> None:
    """A notification sent while the worker's listener is down is lost: the listener that
    connects again sends the claim loop to look (the poll tick is far away)."""
    shard = cluster.config.shard_names[0]
    dsn = cluster.config.shard(shard).dsn
    worker = shardflow.Worker(
        cluster, app, concurrency=2, poll_interval_seconds=POLL, lease_seconds=3 * POLL
    )
    with worker:
        wait_until(lambda: count_backends(dsn, LISTENER) == 1, message="the worker listens")
        terminate_backends(dsn, LISTENER)
        wait_until(lambda: count_backends(dsn, LISTENER) == 0, message="the listener is gone")
        # Submitted now, most likely before the listener is back (it waits a backoff of
        # 0.25-0.5 s first): its notification is not heard.
        handle = cluster.submit(
            faults.two_args, 1, workflow_id=id_on(cluster, shard, f"relisten-{worker.worker_id}")
        )
        assert handle.shard == shard
        assert handle.result(timeout=30) == 1
        wait_until(lambda: count_backends(dsn, LISTENER) == 1, message="the listener is back")
    assert worker.stats.loop_errors[f"listen-{shard}"] >= 1
