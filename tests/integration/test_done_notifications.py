"""The notifications a batch of final writes sends (``commit_batch``): one
``shardflow_done_ids`` per batch carrying a JSON array (per workflow its ID, or the pair
[ID, stored result] for a success with a small result), split before a payload reaches
PostgreSQL's 8,000-byte limit, and ``shardflow_done`` for an ID too long to share one.
Every finished workflow is named exactly once, whatever its ID contains."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import psycopg
import pytest

from shardflow.engine.cluster import Cluster
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import FinishWrite
from shardflow.testing.servers import id_on, wait_until
from tests.apps import faults

SHARD = "shard1"


def items(payload: str) -> dict[str, str | None]:
    """A ``shardflow_done_ids`` payload: each workflow named, with its carried result."""
    out: dict[str, str | None] = {}
    for item in json.loads(payload):
        if isinstance(item, str):
            out[item] = None
        else:
            wid, text = item
            out[wid] = text
    return out


def _notifications(
    cluster: Cluster, ready: threading.Event, stop: threading.Event, into: list[tuple[str, str]]
) -> None:
    with psycopg.connect(cluster.config.shard(SHARD).dsn, autocommit=True) as conn:
        conn.execute("LISTEN shardflow_done_ids; LISTEN shardflow_done")
        ready.set()
        while not stop.is_set():
            into.extend((n.channel, n.payload) for n in conn.notifies(timeout=0.1))


@pytest.fixture
def heard(cluster: Cluster) -> Iterator[tuple[list[tuple[str, str]], threading.Event]]:
    """Notifications of shard1's done channels, in arrival order; set the event to stop."""
    got: list[tuple[str, str]] = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_notifications, args=(cluster, ready, stop, got))
    thread.start()
    assert ready.wait(30)
    yield got, stop
    stop.set()
    thread.join(30)


def test_one_batch_of_final_writes_names_every_workflow_once_under_the_payload_limit(
    cluster: Cluster, heard: tuple[list[tuple[str, str]], threading.Event]
) -> None:
    tag = "{" + id_on(cluster, SHARD, "tag") + "}"  # a hash tag: every ID on shard1
    # IDs that JSON must escape, long enough that 40 of them need several payloads.
    shared = [f'{tag}-{i}-"q"\\b\n\t' + "x" * 440 for i in range(40)]
    alone = tag + "\U0001f600" * 300  # 1,200 bytes of UTF-8: a notification of its own
    for wid in [*shared, alone]:
        cluster.submit(faults.two_args, 1, workflow_id=wid)
    claims = cluster.store.claim_enqueued(
        SHARD,
        queue="default",
        names=["faults.two_args"],
        owner="t",
        lease_seconds=30,
        limit=100,
    )
    assert sorted(c.workflow_id for c in claims) == sorted([*shared, alone])

    result = cluster.store.write_batch(
        SHARD,
        [FinishWrite(c.workflow_id, c.attempt, WorkflowState.SUCCESS, "1", None) for c in claims],
    )
    assert len(result.finished) == 41

    got, stop = heard
    wait_until(
        lambda: (
            sum(len(items(p)) for c, p in got if c == "shardflow_done_ids") >= 40
            and ("shardflow_done", alone) in got
        )
    )
    stop.set()
    batches = [p for c, p in got if c == "shardflow_done_ids"]
    assert all(len(p.encode()) < 8000 for p in batches)
    assert len(batches) >= 2  # 40 x ~470 bytes cannot share one payload
    named = [item for p in batches for item in items(p).items()]
    assert sorted(named) == sorted((wid, "1") for wid in shared)  # each once, with its result
    assert [p for c, p in got if c == "shardflow_done"] == [alone]
    for wid in shared:
        assert cluster.get(wid).state is WorkflowState.SUCCESS


def test_a_fenced_final_write_notifies_nobody(
    cluster: Cluster, heard: tuple[list[tuple[str, str]], threading.Event]
) -> None:
    wid = id_on(cluster, SHARD, "fenced")
    cluster.submit(faults.two_args, 1, workflow_id=wid)
    (claim,) = cluster.store.claim_enqueued(
        SHARD, queue="default", names=["faults.two_args"], owner="t", lease_seconds=30, limit=1
    )
    stale = FinishWrite(wid, claim.attempt + 1, WorkflowState.SUCCESS, "1", None)
    assert not cluster.store.write_batch(SHARD, [stale]).finished
    # A write that does commit, after it: its notification arrives, the fenced one's never.
    live = FinishWrite(wid, claim.attempt, WorkflowState.SUCCESS, "1", None)
    assert cluster.store.write_batch(SHARD, [live]).finished
    got, stop = heard
    wait_until(lambda: bool(got))
    stop.set()
    assert [(c, json.loads(p)) for c, p in got] == [("shardflow_done_ids", [[wid, "1"]])]


def test_only_a_success_with_a_small_result_carries_it(
    cluster: Cluster, heard: tuple[list[tuple[str, str]], threading.Event]
) -> None:
    tag = "{" + id_on(cluster, SHARD, "carry") + "}"
    small = '{"s": "\u00e9\\"\u2028"}'  # stored text JSON must escape
    big = '"' + "y" * 950 + '"'
    escaped = json.dumps('"' * 440)
    writes = {
        f"{tag}-small": (WorkflowState.SUCCESS, small, None),
        f"{tag}-null": (WorkflowState.SUCCESS, "null", None),
        f"{tag}-big": (WorkflowState.SUCCESS, big, None),
        f"{tag}-escaped": (WorkflowState.SUCCESS, escaped, None),
        f"{tag}-error": (WorkflowState.ERROR, None, {"type": "E", "message": "m"}),
    }
    for wid in writes:
        cluster.submit(faults.two_args, 1, workflow_id=wid)
    claims = cluster.store.claim_enqueued(
        SHARD, queue="default", names=["faults.two_args"], owner="t", lease_seconds=30, limit=10
    )
    finishes = [FinishWrite(c.workflow_id, c.attempt, *writes[c.workflow_id]) for c in claims]
    assert len(cluster.store.write_batch(SHARD, finishes).finished) == len(writes)
    got, stop = heard
    wait_until(lambda: sum(len(items(p)) for _, p in got) >= len(writes))
    stop.set()
    carried = {wid: text for _, p in got for wid, text in items(p).items()}
    assert carried == {
        f"{tag}-small": small,
        f"{tag}-null": "null",
        f"{tag}-big": None,  # over 900 bytes: the waiter reads the row
        f"{tag}-escaped": None,  # 882 bytes, but over 1,000 as a JSON string
        f"{tag}-error": None,  # only successes carry a result
    }
    for wid, (state, output, _) in writes.items():
        status = cluster.get(wid)
        assert status.state is state
        if output is not None:
            assert json.dumps(status.output) == json.dumps(json.loads(output))
