"""The async client's native paths: submit, get, send, list_workflows, cancel, resume,
and the reads of get_event and result() run on the event loop over async pools, with
no thread; an unreachable shard is ShardUnavailable without its password, and reads
ride through an outage; one ID submitted from many tasks is one workflow; concurrent
submits share commits; a dedup key taken is WorkflowDeduplicated; calls after close
fail at once. Tests parametrized ``["sync", "async"]`` hold both clients to the same
behaviour (:mod:`tests.integration.clients`)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.config import load
from shardflow.engine.cluster import Cluster
from shardflow.testing.faults import proxied_cluster
from shardflow.testing.servers import TestCluster, id_on, wait_until, with_worker_settings
from tests.apps import faults, twins
from tests.apps.twins import app
from tests.integration.clients import KINDS, CountingExecutor, control_calls


@pytest.fixture(autouse=True)
def _reset_twins() -> Iterator[None]:
    twins.reset()
    yield
    twins.reset()


def test_submit_get_send_events_and_result_run_without_a_thread(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            # Warm up: the first submit checks which workers serve the name (a thread,
            # once per name, queue and shard), result() starts the client's LISTEN
            # connections; pools open.
            with shardflow.Worker(cluster, app, concurrency=2):
                warm = [
                    await aclient.submit(twins.three_steps, i, workflow_id=f"warm-{i}")
                    for i in range(20)
                ]
                assert [await h.result(timeout=30) for h in warm] == [
                    {"result": i + 3} for i in range(20)
                ]
                publisher = await aclient.submit(twins.publisher_async, 7)
                assert await publisher.result(timeout=30) == "done"
            loop = asyncio.get_running_loop()
            counting = CountingExecutor()
            loop.set_default_executor(counting)
            threads = threading.active_count()
            handles = [
                await aclient.submit(twins.three_steps, i, workflow_id=f"native-{i}")
                for i in range(40)
            ]
            again = await asyncio.gather(
                *(aclient.submit(twins.three_steps, 0, workflow_id=h.workflow_id) for h in handles)
            )
            assert [h.workflow_id for h in again] == [h.workflow_id for h in handles]
            statuses = await asyncio.gather(*(aclient.get(h.workflow_id) for h in handles))
            assert {s.state for s in statuses} == {WorkflowState.ENQUEUED}
            assert [s.shard for s in statuses] == [h.shard for h in handles]
            target = handles[0].workflow_id
            assert await aclient.send(target, {"n": 1}, idempotency_key="k-1") is True
            assert await aclient.send(target, {"n": 1}, idempotency_key="k-1") is False
            assert await aclient.send(target, "no key") is True
            with pytest.raises(shardflow.WorkflowNotFound):
                await aclient.send("never-submitted", "x")
            assert await aclient.get_event(publisher.workflow_id, "status") == 7
            assert await aclient.get_event(publisher.workflow_id, "never", 0.2) is None
            # result() of finished workflows: one native read each.
            assert [await h.result(timeout=30) for h in warm] == [
                {"result": i + 3} for i in range(20)
            ]
            assert counting.calls == []
            # No thread started for them (one left over from the stopped worker may end).
            assert threading.active_count() <= threads

    asyncio.run(scenario())
    assert {s.workflow_id for s in cluster.list_workflows(id_prefix="native-").items} == {
        f"native-{i}" for i in range(40)
    }


def test_one_id_from_many_tasks_is_one_workflow(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    async def scenario() -> set[tuple[str, str]]:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            handles = await asyncio.gather(
                *(aclient.submit(twins.three_steps, i, workflow_id="same-id") for i in range(64))
            )
            return {(h.workflow_id, h.shard) for h in handles}

    placed = asyncio.run(scenario())
    assert placed == {("same-id", cluster.route("same-id"))}
    page = cluster.list_workflows(id_prefix="same-id")
    assert [s.workflow_id for s in page.items] == ["same-id"]
    # The first insert won: its inputs are those of one of the 64 calls.
    assert cluster.get("same-id").state is WorkflowState.ENQUEUED


def test_a_dedup_key_taken_and_a_name_conflict_are_errors(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            first = await aclient.submit(twins.three_steps, 1, dedup_key="order-7")
            with pytest.raises(shardflow.WorkflowDeduplicated):
                await aclient.submit(twins.three_steps, 2, dedup_key="order-7")
            await aclient.submit(twins.three_steps, 1, workflow_id="named")
            with pytest.raises(shardflow.WorkflowConflict, match="exists with workflow"):
                await aclient.submit(twins.gated, "x", workflow_id="named")
            assert (await aclient.get(first.workflow_id)).state is WorkflowState.ENQUEUED
            with pytest.raises(shardflow.WorkflowNotFound):
                await aclient.get("never-submitted")

    asyncio.run(scenario())


def test_an_unreachable_shard_is_unavailable_without_its_password(
    test_cluster: TestCluster,
) -> None:
    config = test_cluster.config
    gone = config.shard_names[-1]
    shards = tuple(
        dataclasses.replace(s, dsn="postgresql://app:hunter2secret@127.0.0.1:1/db")
        if s.name == gone
        else s
        for s in config.shards
    )
    broken = dataclasses.replace(config, shards=shards)

    async def scenario() -> None:
        aclient = await shardflow.connect_async(broken, retry_seconds=1.0)
        async with aclient:
            i = 0
            while aclient.sync.route(f"down-{i}") != gone:
                i += 1
            started = time.monotonic()
            for call in (
                lambda: aclient.get(f"down-{i}"),
                lambda: aclient.submit(twins.three_steps, 1, workflow_id=f"down-{i}"),
            ):
                with pytest.raises(shardflow.ShardUnavailable) as caught:
                    await call()
                assert caught.value.shard == gone
                assert "hunter2secret" not in str(caught.value)
                assert "hunter2secret" not in repr(caught.value.__cause__)
            assert time.monotonic() - started < 10
            # The healthy shards still answer.
            j = 0
            while aclient.sync.route(f"up-{j}") == gone:
                j += 1
            handle = await aclient.submit(twins.three_steps, 1, workflow_id=f"up-{j}")
            assert (await aclient.get(handle.workflow_id)).shard == handle.shard

    asyncio.run(scenario())


def test_calls_after_close_fail_at_once(test_cluster: TestCluster) -> None:
    async def scenario() -> None:
        aclient = await shardflow.connect_async(test_cluster.config)
        handle = await aclient.submit(twins.three_steps, 1)
        await aclient.close()
        started = time.monotonic()
        for call in (
            lambda: aclient.submit(twins.three_steps, 2),
            lambda: aclient.get(handle.workflow_id),
            lambda: handle.result(timeout=30),
            lambda: aclient.send(handle.workflow_id, "x"),
        ):
            with pytest.raises(shardflow.ClientClosed, match="closed"):
                await call()
        assert time.monotonic() - started < 5

    asyncio.run(scenario())


def test_concurrent_submits_share_commits_and_a_cancelled_one_blocks_nobody(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            handles = await asyncio.gather(
                *(aclient.submit(twins.three_steps, i, workflow_id=f"g-{i}") for i in range(64))
            )
            assert [h.workflow_id for h in handles] == [f"g-{i}" for i in range(64)]
            # 64 submits at once: far fewer inserts (each one commit per shard).
            assert aclient.submit_groups.commits < 64
            tasks = [
                asyncio.ensure_future(aclient.submit(twins.three_steps, i, workflow_id=f"c-{i}"))
                for i in range(20)
            ]
            await asyncio.sleep(0)  # every task queued; the first of each shard leads
            for task in tasks[::2]:
                task.cancel()
            done = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), timeout=30
            )
            assert all(isinstance(d, asyncio.CancelledError) for d in done[::2]), done
            kept = [d.workflow_id for d in done[1::2] if not isinstance(d, BaseException)]
            assert kept == [f"c-{i}" for i in range(1, 20, 2)], done

    asyncio.run(scenario())
    ids = {s.workflow_id for s in cluster.list_workflows(id_prefix="g-", limit=100).items}
    assert ids == {f"g-{i}" for i in range(64)}
    kept = {s.workflow_id for s in cluster.list_workflows(id_prefix="c-").items}
    assert {f"c-{i}" for i in range(1, 20, 2)} <= kept


def test_native_reads_ride_through_an_outage_of_one_shard(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    """One shard's proxy drops every connection and then stays silent: a native read of
    a workflow there is ShardUnavailable once its budget is spent (the password never
    shown), another shard keeps answering, and a read with the full budget that starts
    during the outage returns once the shard is back."""
    proxied = proxied_cluster(test_cluster.path, tmp_path / "proxied.yaml")
    try:
        config = with_worker_settings(proxied.path, lease_seconds=3)
        secrets = {p for s in config.shards if (p := urlsplit(s.dsn).password)}

        async def scenario() -> None:
            async with await shardflow.connect_async(config, retry_seconds=60) as aclient:
                down, up = config.shard_names[0], config.shard_names[1]
                there = id_on(aclient.sync, down, "out")
                here = id_on(aclient.sync, up, "in")
                await aclient.submit(twins.three_steps, 1, workflow_id=there)
                await aclient.submit(twins.three_steps, 1, workflow_id=here)
                proxy = proxied.proxies[down]
                proxy.blackhole()
                await asyncio.to_thread(proxy.reset)
                with pytest.raises(shardflow.ShardUnavailable) as caught:
                    await aclient.find(there, seconds=1.0)
                assert caught.value.shard == down
                assert not any(s in str(caught.value) for s in secrets)
                assert (await aclient.get(here)).shard == up
                tried = proxy.connections_accepted
                reading = asyncio.ensure_future(aclient.get(there))
                deadline = time.monotonic() + 30
                while proxy.connections_accepted <= tried and not reading.done():
                    assert time.monotonic() < deadline, "the read never tried the shard again"
                    await asyncio.sleep(0.05)
                assert not reading.done()
                proxy.heal()
                status = await asyncio.wait_for(reading, 60)
                assert (status.workflow_id, status.shard) == (there, down)

        asyncio.run(scenario())
    finally:
        proxied.close()


# -- list_workflows, cancel and resume, on both clients ---------------------------------------


def ids_per_shard(cluster: Cluster, prefix: str, per_shard: int) -> dict[str, list[str]]:
    """Workflow IDs chosen so that each shard gets ``per_shard`` of them."""
    out: dict[str, list[str]] = {s: [] for s in cluster.config.shard_names}
    i = 0
    while any(len(v) < per_shard for v in out.values()):
        wid = f"{prefix}-{i}"
        if len(out[cluster.route(wid)]) < per_shard:
            out[cluster.route(wid)].append(wid)
        i += 1
    return out


def suspended(cluster: Cluster) -> set[str]:
    return {s.workflow_id for s in cluster.list_workflows(state="SUSPENDED").items}


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_ends_a_waiting_parent_and_its_child_and_resume_runs_it_to_success(
    cluster: Cluster, kind: str
) -> None:
    parent = cluster.submit(faults.parent_of_blocker, workflow_id="ctl-parent")
    child_id = "ctl-parent:child:0"
    worker = shardflow.Worker(cluster, faults.app, concurrency=4)
    with control_calls(kind, cluster) as calls, worker:
        wait_until(
            lambda: suspended(cluster) == {child_id, parent.workflow_id},
            message="the parent waits for its child, which waits for a message",
        )
        status = calls.cancel(parent.workflow_id, "by the test")
        assert (status.workflow_id, status.state, status.reason) == (
            parent.workflow_id,
            WorkflowState.CANCELLED,
            "by the test",
        )
        # The child was cancelled with it, by the same call.
        child = cluster.get(child_id)
        assert (child.state, child.reason, child.parent_id) == (
            WorkflowState.CANCELLED,
            "by the test",
            parent.workflow_id,
        )
        # Cancelling again changes nothing.
        assert calls.cancel(parent.workflow_id, "again").reason == "by the test"
        with pytest.raises(shardflow.WorkflowCancelled):
            parent.result(timeout=10)
        # Resumed, the parent replays to its child's (cancelled) end and succeeds.
        assert calls.resume(parent.workflow_id).state in {
            WorkflowState.ENQUEUED,
            WorkflowState.RUNNING,
            WorkflowState.SUCCESS,
        }
        assert parent.result(timeout=30) == "child cancelled"
    assert cluster.get(parent.workflow_id).state is WorkflowState.SUCCESS
    assert cluster.get(child_id).state is WorkflowState.CANCELLED
    with control_calls(kind, cluster) as calls:
        with pytest.raises(shardflow.ShardflowError, match="SUCCESS; cannot resume"):
            calls.resume(parent.workflow_id)
        with pytest.raises(shardflow.WorkflowNotFound):
            calls.cancel("never-submitted")


@pytest.mark.parametrize("kind", KINDS)
def test_resume_of_a_workflow_whose_dedup_key_is_taken_is_deduplicated(
    cluster: Cluster, kind: str
) -> None:
    first = cluster.submit(twins.three_steps, 1, dedup_key="order-9")
    with control_calls(kind, cluster) as calls:
        calls.cancel(first.workflow_id)
        cluster.submit(twins.three_steps, 2, dedup_key="order-9")
        with pytest.raises(shardflow.WorkflowDeduplicated):
            calls.resume(first.workflow_id)
    assert cluster.get(first.workflow_id).state is WorkflowState.CANCELLED


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_shard_is_left_out_with_skip_unavailable_else_unavailable(
    test_cluster: TestCluster, tmp_path: Path, kind: str
) -> None:
    proxied = proxied_cluster(test_cluster.path, tmp_path / "proxied.yaml")
    try:
        with Cluster(load(proxied.path), retry_seconds=2.0) as client:
            ids = ids_per_shard(client, "sk", 4)
            client.submit_many(
                [
                    shardflow.Submission(twins.three_steps, (1,), workflow_id=w)
                    for per in ids.values()
                    for w in per
                ]
            )
            down = client.config.shard_names[1]
            with control_calls(kind, client) as calls:
                page = calls.list_workflows(limit=100)
                assert sorted(s.workflow_id for s in page.items) == sorted(
                    w for per in ids.values() for w in per
                )
                assert page.unavailable == ()
                proxied.proxies[down].close()  # the shard refuses every connection now
                up = sorted(w for s, per in ids.items() if s != down for w in per)
                # Page by page (with and without a filter): the other shards' workflows,
                # each once, and every page names the shard left out.
                for filters in ({}, {"id_prefix": "sk-"}):
                    seen: list[str] = []
                    cursor = None
                    while True:
                        page = calls.list_workflows(
                            limit=3, cursor=cursor, skip_unavailable=True, **filters
                        )
                        assert page.unavailable == (down,)
                        seen += [s.workflow_id for s in page.items]
                        cursor = page.next_cursor
                        if cursor is None:
                            break
                    assert sorted(seen) == up
                started = time.monotonic()
                with pytest.raises(shardflow.ShardUnavailable) as caught:
                    calls.list_workflows(limit=100)
                assert caught.value.shard == down
                assert time.monotonic() - started < 15
    finally:
        proxied.close()


def test_list_cancel_and_resume_hold_no_thread(test_cluster: TestCluster, cluster: Cluster) -> None:
    ids = ids_per_shard(cluster, "nt", 5)
    every = sorted((w for per in ids.values() for w in per), reverse=True)
    cluster.submit_many(
        [shardflow.Submission(twins.three_steps, (1,), workflow_id=w) for w in every]
    )

    async def scenario() -> None:
        async with await shardflow.connect_async(test_cluster.config) as aclient:
            # Warm up: the pools open a connection to every shard.
            assert len((await aclient.list_workflows(limit=100)).items) == 15
            loop = asyncio.get_running_loop()
            counting = CountingExecutor()
            loop.set_default_executor(counting)
            threads = threading.active_count()
            pages = []
            cursor = None
            while True:
                page = await aclient.list_workflows(limit=4, cursor=cursor)
                pages.append([s.workflow_id for s in page.items])
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert sorted(w for p in pages for w in p) == sorted(every)
            assert [len(p) for p in pages] == [4, 4, 4, 3]
            filtered = await aclient.list_workflows(id_prefix="nt-", state="ENQUEUED", limit=100)
            assert len(filtered.items) == 15
            # Every shard at once: cancels and resumes side by side on the loop.
            cancelled = await asyncio.gather(*(aclient.cancel(w, "native") for w in every))
            assert {(s.state, s.reason) for s in cancelled} == {(WorkflowState.CANCELLED, "native")}
            resumed = await asyncio.gather(*(aclient.resume(w) for w in every))
            assert {s.state for s in resumed} == {WorkflowState.ENQUEUED}
            assert counting.calls == []
            assert threading.active_count() <= threads

    asyncio.run(scenario())
    assert {cluster.get(w).state for w in every} == {WorkflowState.ENQUEUED}
