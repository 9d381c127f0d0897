"""The supervisor's merged metrics, read over HTTP from two child endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardflow.cli.supervise import child_worker_id
from shardflow.engine.metrics_http import MetricsServer
from shardflow.supervisor import (
    ChildrenCollector,
    RestartPolicy,
    Supervisor,
    available_cpus,
    port_file,
)


class FakeWorker:
    """What a worker's collector would report: a few families, values settable."""

    def __init__(self, completed: float, running: float, loop_age: float, worker_id: str) -> None:
        self.completed, self.running, self.loop_age, self.worker_id = (
            completed,
            running,
            loop_age,
            worker_id,
        )

    def collect(self) -> Iterator[Metric]:
        done = CounterMetricFamily(
            "shardflow_workflows_completed", "Runs.", labels=["shard", "queue"]
        )
        done.add_metric(["s0", "default"], self.completed)
        yield done
        info = GaugeMetricFamily("shardflow_worker_info", "Info.", labels=["worker_id"])
        info.add_metric([self.worker_id], 1)
        yield info
        up = GaugeMetricFamily("shardflow_shard_up", "Up.", labels=["shard"])
        up.add_metric(["s0"], 1)
        yield up
        yield GaugeMetricFamily("shardflow_workflows_running", "Running.", value=self.running)
        age = GaugeMetricFamily(
            "shardflow_worker_loop_seconds_since_progress", "Age.", labels=["loop"]
        )
        age.add_metric(["claim-s0"], self.loop_age)
        yield age
        steps = HistogramMetricFamily("shardflow_step_duration_seconds", "Steps.", labels=["step"])
        steps.add_metric(["a"], [("0.1", 1.0), ("+Inf", self.completed)], sum_value=0.5)
        yield steps


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def merged(collector: ChildrenCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()  # and it parses back: valid text format
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-ins for worker processes (only their pids and liveness matter here)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_children_are_summed_snapshots_kept_once_and_a_restart_loses_no_count(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    workers = [FakeWorker(3, 2, 1.5, "w-1"), FakeWorker(4, 1, 3.0, "w-2")]
    servers = []
    for worker in workers:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(worker)
        servers.append(MetricsServer(registry, host="127.0.0.1", port=0).start())
    try:
        supervisor = Supervisor(lambda i, r: ["unused"], 2)
        for slot, server in zip(supervisor.slots, servers, strict=True):
            sleepers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
            slot.proc = sleepers[-1]
            port_file(tmp_path, slot.index).write_text(str(server.port))
        collector = ChildrenCollector(supervisor, tmp_path)

        first = merged(collector)
        labels = {"shard": "s0", "queue": "default"}
        assert value(first, "shardflow_workflows_completed_total", **labels) == 7
        assert value(first, "shardflow_shard_up", shard="s0") == 1  # one copy, not 2
        assert value(first, "shardflow_workflows_running") == 3
        assert value(first, "shardflow_worker_loop_seconds_since_progress", loop="claim-s0") == 3.0
        assert value(first, "shardflow_step_duration_seconds_bucket", step="a", le="+Inf") == 7
        assert value(first, "shardflow_step_duration_seconds_sum", step="a") == 1.0
        assert value(first, "shardflow_worker_info", worker_id="w-1") == 1
        assert value(first, "shardflow_worker_info", worker_id="w-2") == 1
        assert value(first, "shardflow_supervisor_processes") == 2
        assert value(first, "shardflow_supervisor_processes_running") == 2
        assert value(first, "shardflow_supervisor_child_up", process="2") == 1

        # Process 2 is replaced: the new one starts counting from 0 (here: 1 so far).
        slot = supervisor.slots[1]
        sleepers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        slot.proc, slot.restarts = sleepers[-1], 1
        workers[1].completed, workers[1].worker_id = 1, "w-2-r1"
        second = merged(collector)
        assert value(second, "shardflow_workflows_completed_total", **labels) == 3 + 4 + 1
        assert value(second, "shardflow_step_duration_seconds_bucket", step="a", le="+Inf") == 8
        assert value(second, "shardflow_supervisor_restarts_total", process="2") == 1
        assert ("shardflow_worker_info", frozenset({("worker_id", "w-2")})) not in second

        # Process 1 stops answering: its counts stay, its gauges go, it is reported down.
        servers[0].close()
        third = merged(collector)
        assert value(third, "shardflow_workflows_completed_total", **labels) == 8
        assert value(third, "shardflow_workflows_running") == 1
        assert value(third, "shardflow_supervisor_child_up", process="1") == 0
    finally:
        for server in servers[1:]:
            server.close()


def test_restart_delays_double_up_to_the_maximum() -> None:
    policy = RestartPolicy(first_delay=1.0, max_delay=30.0)
    assert [policy.delay(k) for k in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_child_worker_ids_are_new_after_each_restart() -> None:
    assert child_worker_id("host:ab12", 2, 0) == "host:ab12-2"
    assert child_worker_id("host:ab12", 2, 3) == "host:ab12-2-r3"


def test_available_cpus_is_at_least_one_and_at_most_the_machine() -> None:
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_a_supervisor_needs_at_least_one_process() -> None:
    with pytest.raises(ValueError, match="processes must be >= 1"):
        Supervisor(lambda i, r: ["unused"], 0)
