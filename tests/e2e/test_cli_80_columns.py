"""CLI output fits an 80-column terminal without cutting shard names or workflow IDs;
``workflows show`` prints a failure's traceback as text; ENQUEUED work nobody can run is
flagged by ``status`` and ``workflows list``."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

import shardflow
from shardflow.cli.main import main
from shardflow.engine.cluster import Cluster
from shardflow.testing import TestCluster
from tests.apps import basic
from tests.apps.basic import app

LONG_ID = "{tenant-0042}:invoice-2026-01-02-000123-reminder"


def render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def assert_fits(out: str, width: int = 80) -> None:
    too_wide = [line for line in out.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    assert "…" not in out


@pytest.fixture
def populated(test_cluster: TestCluster, cluster: Cluster) -> TestCluster:
    with shardflow.Worker(cluster, app, concurrency=2):
        failed = cluster.submit(basic.failing, "k", workflow_id="failing-1")
        with pytest.raises(shardflow.WorkflowFailed):
            failed.result(timeout=30)
    cluster.submit(basic.three_steps, 1, workflow_id=LONG_ID)
    cluster.submit("nobody.serves.this", 1, workflow_id="orphan-1")
    return test_cluster


def test_status_list_show_and_topology_at_80_columns(
    populated: TestCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    config = str(populated.path)

    out, _ = render(capsys, "--config", config, "status")
    assert_fits(out)
    for shard in ("shard0", "shard1", "shard2"):
        assert f"\n{shard} " in out
    assert "ENQUEUED work no live worker can run:" in out
    assert "nobody.serves.this [default]: no live worker on shard" in out

    out, err = render(capsys, "--config", config, "workflows", "list")
    assert_fits(out)
    assert LONG_ID in out and "orphan-1" in out and "failing-1" in out
    assert "ENQUEUED*" in out
    assert "* ENQUEUED nobody.serves.this [default] on shard" in err

    out, _ = render(capsys, "--config", config, "workflows", "show", "failing-1")
    assert "ValueError: bad input k" in out
    assert "\ntraceback:\nTraceback (most recent call last):\n" in out
    assert "\\n" not in out  # the traceback is text, not an escaped JSON string

    out, _ = render(capsys, "--config", config, "workflows", "show", "orphan-1")
    assert "waiting" in out and "no live worker on shard" in out

    out, _ = render(capsys, "--config", config, "topology", "show")
    for shard in ("shard0", "shard1", "shard2"):
        assert f"\n{shard} " in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_workflows_steps_shows_start_duration_attempt_and_wake_time(
    test_cluster: TestCluster,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with shardflow.Worker(cluster, app, concurrency=2):
        handle = cluster.submit(basic.step_then_sleep, 0.2, workflow_id="timed-1")
        assert handle.result(timeout=30) == "slept"
    monkeypatch.setenv("COLUMNS", "80")
    config = str(test_cluster.path)

    out, _ = render(capsys, "--config", config, "workflows", "steps", "timed-1")
    assert_fits(out)
    header = ["step", "name", "attempt", "started", "ms", "result"]
    assert out.splitlines()[0].split() == header  # at 80 columns the result may wrap

    monkeypatch.setenv("COLUMNS", "120")
    out, _ = render(capsys, "--config", config, "workflows", "steps", "timed-1")
    lines = out.splitlines()
    assert lines[0].split() == header
    step = next(line.split() for line in lines if "slow_step" in line)
    sleep = next(line.split() for line in lines if "shardflow.sleep" in line)
    assert step[:3] == ["0", "slow_step", "1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", step[3])
    assert float(step[4]) >= 200 and step[5] == '"slept"'
    # The sleep: its attempt and start, no duration, and the wake time as ISO, not epoch.
    assert sleep[:3] == ["1", "shardflow.sleep", "1"]
    assert sleep[4] == "-" and sleep[5] == "wakes"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sleep[6])
    assert sleep[6] >= sleep[3]

    out, _ = render(capsys, "--config", config, "workflows", "steps", "timed-1", "--json")
    steps = json.loads(out)["steps"]
    assert [(s["name"], s["attempt"]) for s in steps] == [
        ("slow_step", 1),
        ("shardflow.sleep", 1),
    ]
    assert steps[0]["duration_ms"] >= 200 and steps[1]["duration_ms"] is None
    started = datetime.fromisoformat(steps[0]["started_at"])
    assert started.tzinfo is not None
    assert steps[1]["output"] >= started.timestamp() + 0.1 - 0.01
