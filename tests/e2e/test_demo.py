"""`shardflow demo` runs to completion and verifies itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.procs import ROOT, worker_env


def test_demo_completes_and_verifies(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardflow", "demo", "--workflows", "300", "--concurrency", "8"],
        env=worker_env({"COLUMNS": "120"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "SIGKILL demo-worker-1" in out
    assert "OK all 300 workflows completed exactly once" in out
    for shard in ("shard0", "shard1", "shard2"):
        assert shard in out


def test_demo_stops_early_with_the_log_of_workers_that_cannot_start(tmp_path: Path) -> None:
    # The workers die at import (as they did when a clone's folder shadowed the package):
    # a `shardflow` package that fails, first on their path but not on the demo's own.
    shadow = tmp_path / "shadow"
    (shadow / "shardflow").mkdir(parents=True)
    (shadow / "shardflow" / "__init__.py").write_text('raise ImportError("shadowed")\n')
    env = worker_env({"COLUMNS": "120"})
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env["PYTHONPATH"]])
    demo_only = (
        f"import sys; sys.path.remove({str(shadow)!r}); "
        "from shardflow.cli.main import main; sys.exit(main())"
    )
    demo_dir = str(tmp_path / "demo")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", demo_only, "demo", "--workflows", "50", "--demo-dir", demo_dir],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 1, out
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert "exited with status 1 before it started; its log:" in out
    assert str(tmp_path / "demo" / "worker-") in out
    assert "ImportError: shadowed" in out  # the log's tail
    assert "never ran" not in out
    assert f"worker logs are in {tmp_path / 'demo'}" in out


def test_demo_from_a_folder_holding_a_shardflow_folder(tmp_path: Path) -> None:
    # The clone's parent folder: `shardflow/` there must not reach the demo's workers
    # (`python -m shardflow` puts the current folder first on sys.path). The installed
    # console script, as a user runs it, and no PYTHONPATH.
    (tmp_path / "shardflow").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "120"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "shardflow"), "demo", "--workflows", "60"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK all 60 workflows completed exactly once" in result.stdout
    assert "Removed the demo's servers and logs" in result.stdout
