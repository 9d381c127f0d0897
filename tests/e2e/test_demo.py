"""`shardflow demo` runs to completion and verifies itself."""

from __future__ import annotations

import subprocess
import sys

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
