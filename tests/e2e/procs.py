"""Worker subprocesses for end-to-end tests: :mod:`shardflow.testing.processes`, run from
the repository root with it on ``PYTHONPATH`` (so that ``tests.apps`` imports)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shardflow.testing.processes import WorkerProcess, child_env, spawn_worker, stop_process

ROOT = Path(__file__).resolve().parents[2]

# SIGTERM, wait, then SIGKILL: the exit status.
stop = stop_process


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return child_env(extra, python_path=[ROOT])


def start_worker(
    config: Path,
    app: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> WorkerProcess:
    """``python -m shardflow --config CONFIG worker --app APP ARGS...``."""
    return spawn_worker(config, app, *args, env=worker_env(env), log_path=log, cwd=ROOT)
