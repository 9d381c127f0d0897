"""Regression test of the fault-hardening issue with worker processes: SIGTERM while a
step longer than a lease runs (defect 19)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

import shardflow
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
    doc = yaml.safe_load(test_cluster.path.read_text())
    doc.setdefault("worker", {}).update(lease_seconds=2, heartbeat_seconds=0.5)
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(doc))
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
