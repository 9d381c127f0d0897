"""CLI output fits an 80-column terminal without cutting shard names or workflow IDs;
``workflows show`` prints a failure's traceback as text; ENQUEUED work nobody can run is
flagged by ``status`` and ``workflows list``."""

from __future__ import annotations

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
