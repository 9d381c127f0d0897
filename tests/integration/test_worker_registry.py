"""The live-worker registry: workers say what they serve; work nobody can run is flagged
at submit, by ``result()``'s timeout, and by the coverage report behind ``status``."""

from __future__ import annotations

import logging
import os

import pytest

import shardflow
from shardflow.engine import coverage
from shardflow.engine.cluster import Cluster
from shardflow.testing.servers import wait_until
from tests.apps import basic
from tests.apps.basic import app


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "shardflow.engine.coverage" and r.levelno == logging.WARNING
    ]


def test_a_worker_registers_on_every_shard_and_leaves_when_it_stops(cluster: Cluster) -> None:
    with shardflow.Worker(cluster, app, concurrency=2, worker_id="reg-1"):
        for shard in cluster.config.shard_names:
            workers = coverage.live_workers(cluster, shard)
            assert workers is not None
            (record,) = workers
            assert record.worker_id == "reg-1"
            assert record.pid == os.getpid()
            assert record.app == "basic"
            assert "basic.three_steps" in record.workflows
            assert "default" in record.queues
    for shard in cluster.config.shard_names:
        assert coverage.live_workers(cluster, shard) == []


def test_result_timeout_says_no_worker_is_running(cluster: Cluster) -> None:
    handle = cluster.submit(basic.three_steps, 1)
    with pytest.raises(shardflow.WorkflowTimeout) as caught:
        handle.result(timeout=0.1)
    message = str(caught.value)
    assert "still ENQUEUED after 0.1s" in message
    assert f"no live worker on shard {handle.shard}" in message
    assert "shardflow --config FILE worker --app MODULE:ATTR" in message


def test_submit_of_a_name_no_worker_serves_warns_once_and_suggests(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shardflow.engine.coverage")
    with shardflow.Worker(cluster, app, concurrency=2):
        cluster.submit(basic.three_steps, 1)  # served: no warning
        assert _warnings(caplog) == []
        typo = cluster.submit("basic.three_step", 1)
        cluster.submit("basic.three_step", 2)
        (warning,) = _warnings(caplog)
        assert f"'basic.three_step' to shard {typo.shard}" in warning
        assert "did you mean 'basic.three_steps'?" in warning
        with pytest.raises(shardflow.WorkflowTimeout, match=r"did you mean 'basic\.three_steps'"):
            typo.result(timeout=0.1)


def test_a_script_run_as_main_is_named_as_the_cause(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shardflow.engine.coverage")
    with shardflow.Worker(cluster, app, concurrency=2):
        handle = cluster.submit("__main__.process_order", "o-1")
        (warning,) = _warnings(caplog)
        assert "submitted from a script run as __main__" in warning
        with pytest.raises(shardflow.WorkflowTimeout, match="run as __main__"):
            handle.result(timeout=0.1)


def test_a_queue_no_worker_claims_is_named(cluster: Cluster) -> None:
    with shardflow.Worker(cluster, app, concurrency=2, queues=["other"]):
        handle = cluster.submit(basic.three_steps, 1)
        with pytest.raises(shardflow.WorkflowTimeout, match="do not claim from queue 'default'"):
            handle.result(timeout=0.1)


def test_unserved_reports_enqueued_work_per_shard_name_and_queue(cluster: Cluster) -> None:
    handles = [cluster.submit("nobody.serves.this", i) for i in range(12)]
    found, failed = coverage.unserved(cluster)
    assert failed == []
    per_shard = {u.shard: u.count for u in found}
    assert sum(per_shard.values()) == 12
    assert {h.shard for h in handles} == set(per_shard)
    assert all(u.name == "nobody.serves.this" and "no live worker" in u.reason for u in found)


def test_worker_logs_a_banner_and_a_summary_while_busy(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardflow.engine.presence")
    worker = shardflow.Worker(cluster, app, concurrency=2, worker_id="banner-1")
    worker.presence.summary_seconds = 0.2
    with worker:
        handles = [cluster.submit(basic.three_steps, i) for i in range(5)]
        assert [h.result(timeout=30) for h in handles] == [{"result": i + 3} for i in range(5)]

        def summary() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.getMessage().startswith("worker banner-1: ") and "finished" in r.getMessage()
            ]

        lines = wait_until(summary, timeout=10, message="a summary line")
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("worker banner-1 started") and "shards shard0,shard1,shard2" in m
        for m in messages
    )
    assert any("serves" in m and "basic.three_steps [default]" in m for m in messages)
    assert "SUCCESS" in lines[0]
