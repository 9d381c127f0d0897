"""Regression test of the fault-hardening issue with worker processes: SIGTERM while a
step longer than a lease runs (defect 19)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

import shardflow
from shardflow.cli.worker import EXIT_ABANDONED
from shardflow.testing.servers import TestCluster, wait_until
from tests.apps import faults
from tests.e2e.procs import start_worker, stop

pytestmark = pytest.mark.chaos


def _events(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_defect19_sigterm_keeps_a_running_step_leased_until_it_returns(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    config_path = _short_leases(test_cluster, tmp_path)
    log = tmp_path / "executions.jsonl"
    env = {"SHARDFLOW_FAULT_LOG": str(log)}
    with shardflow.connect(shardflow.config.load(config_path)) as cluster:
        handle = cluster.submit(faults.long_step, "term", 6.0)
        first = start_worker(config_path, "tests.apps.faults:app", env=env, log=tmp_path / "a.log")
        second = None
        try:
            wait_until(lambda: any(e["name"] == "long" for e in _events(log)), timeout=60)
            # Another worker is ready to take over anything handed back or left to lapse.
            second = start_worker(
                config_path, "tests.apps.faults:app", env=env, log=tmp_path / "b.log"
            )
            first.send_signal(signal.SIGTERM)
            assert handle.result(timeout=60) == "long:term"
            assert first.wait(60) == 0
        finally:
            if first.poll() is None:
                first.kill()
            if second is not None:
                assert stop(second) == 0
    starts = [e for e in _events(log) if e["event"] == "start" and e["name"] == "long"]
    # The 6 s step (three leases long) ran once: the stopping worker kept its lease until
    # the step returned and was checkpointed; nobody ran it a second time meanwhile.
    assert len(starts) == 1, starts
    assert starts[0]["pid"] == first.pid


def test_a_second_sigterm_stops_at_once_and_another_worker_finishes_the_run(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    config_path = _short_leases(test_cluster, tmp_path)
    log = tmp_path / "executions.jsonl"
    worker_log = tmp_path / "a.log"
    gate = tmp_path / "gate"
    env = {"SHARDFLOW_FAULT_LOG": str(log)}
    with shardflow.connect(shardflow.config.load(config_path)) as cluster:
        # The step runs until the gate file exists: only a stop at once ends the worker.
        handle = cluster.submit(faults.gated, "again", str(gate))
        first = start_worker(config_path, "tests.apps.faults:app", env=env, log=worker_log)
        second = None
        try:
            wait_until(lambda: len(_gated_starts(log)) == 1, timeout=60)
            first.send_signal(signal.SIGTERM)
            wait_until(lambda: "stopping (again to stop at once)" in worker_log.read_text())
            assert first.poll() is None  # the first signal waits for the running step
            first.send_signal(signal.SIGTERM)
            # It exits at once, saying that it left a run inside a step.
            assert first.wait(30) == EXIT_ABANDONED
            assert "not waiting for running steps" in worker_log.read_text()
            # The step never reached its checkpoint: another worker runs it again once
            # the lease lapses, and finishes it.
            gate.touch()
            second = start_worker(
                config_path, "tests.apps.faults:app", env=env, log=tmp_path / "b.log"
            )
            assert handle.result(timeout=60) == "gated:again"
        finally:
            if first.poll() is None:
                first.kill()
            if second is not None:
                assert stop(second) == 0
    starts = _gated_starts(log)
    assert [e["pid"] for e in starts] == [first.pid, second.pid]


def _short_leases(test_cluster: TestCluster, tmp_path: Path) -> Path:
    """The test cluster's YAML with 2 s leases, so a lapsed run is recovered soon."""
    doc = yaml.safe_load(test_cluster.path.read_text())
    doc.setdefault("worker", {}).update(lease_seconds=2, heartbeat_seconds=0.5)
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    return config_path


def _gated_starts(log: Path) -> list[dict[str, object]]:
    return [e for e in _events(log) if e["event"] == "start" and e["name"] == "gated"]
