"""The demo watches its worker processes: it waits until each has registered (or says
why it could not, with its log), stops early when the workers die, and removes the files
of a run it created, or says where they are."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

import shardflow
from shardflow.engine import coverage
from shardflow.local import LocalCluster
from shardflow.retry import Backoff

START_SECONDS = 60.0
_TAIL_LINES = 15


def _log_of(
    proc: subprocess.Popen[bytes], workdir: Path, procs: list[subprocess.Popen[bytes]]
) -> Path:
    return workdir / f"worker-{procs.index(proc) + 1}.log"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_TAIL_LINES:])


def wait_for_workers(
    cluster: shardflow.Cluster,
    procs: list[subprocess.Popen[bytes]],
    workdir: Path,
    console: Console,
    timeout: float = START_SECONDS,
) -> str | None:
    """Wait until every worker process has registered on every shard. Returns None when
    they have, or what went wrong (printed, with the worker's log path and its tail)."""
    wanted = {f"demo-worker-{i + 1}" for i in range(len(procs))}
    deadline = time.monotonic() + timeout
    backoff = Backoff(initial=0.02, maximum=0.5)
    console.print(f"    waiting for the {len(procs)} workers to start (at most {timeout:.0f}s) ...")
    while True:
        for proc in procs:
            if proc.poll() is not None:
                log = workdir / f"worker-{procs.index(proc) + 1}.log"
                return _failed(
                    console,
                    f"worker {procs.index(proc) + 1} (pid {proc.pid}) exited with status"
                    f" {proc.returncode} before it started",
                    log,
                )
        registered: set[str] = set()
        try:
            per_shard = [
                {w.worker_id for w in coverage.live_workers(cluster, shard) or []}
                for shard in cluster.config.shard_names
            ]
            registered = set.intersection(*per_shard) if per_shard else set()
        except shardflow.ShardflowError:
            pass
        if wanted <= registered:
            return None
        if time.monotonic() >= deadline:
            missing = sorted(wanted - registered)
            log = workdir / f"worker-{missing[0].rsplit('-', 1)[1]}.log"
            return _failed(
                console,
                f"{', '.join(missing)} did not register within {timeout:.0f}s",
                log,
            )
        backoff.wait()


def _failed(console: Console, problem: str, log: Path) -> str:
    console.print(f"[bold red]FAILED[/] {escape(problem)}; its log: {log}")
    tail = _tail(log)
    if tail:
        console.print(escape(tail), highlight=False)
    return f"{problem}; its log: {log}"


def wait_for_worker(
    cluster: shardflow.Cluster,
    worker_id: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    console: Console,
    timeout: float = START_SECONDS,
) -> str | None:
    """Wait until one worker process has registered on every shard of ``cluster``."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(initial=0.02, maximum=0.5)
    while True:
        if proc.poll() is not None:
            return _failed(
                console,
                f"{worker_id} (pid {proc.pid}) exited with status {proc.returncode}",
                log,
            )
        try:
            if all(
                worker_id in {w.worker_id for w in coverage.live_workers(cluster, s) or []}
                for s in cluster.config.shard_names
            ):
                return None
        except shardflow.ShardflowError:
            pass
        if time.monotonic() >= deadline:
            return _failed(console, f"{worker_id} did not register within {timeout:.0f}s", log)
        backoff.wait()


def dead_worker(procs: list[subprocess.Popen[bytes]], killed_pid: int | None) -> str | None:
    """A message if every worker the demo did not kill itself has exited."""
    alive = [p for p in procs if p.poll() is None]
    if alive:
        return None
    codes = ", ".join(f"pid {p.pid}: {p.returncode}" for p in procs if p.pid != killed_pid)
    return f"every worker process has exited ({codes}); see the worker-N.log files"


def clean_up(
    local: LocalCluster, workdir: Path, *, created: bool, ok: bool, console: Console
) -> None:
    """Delete a run's servers and logs if the demo created the directory and all went
    well; otherwise say where they are and how big they are."""
    if created and ok:
        local.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        console.print(f"Removed the demo's servers and logs ({workdir}).")
        return
    size = (
        sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()) if workdir.exists() else 0
    )
    how_big = f" ({size / 1e6:.0f} MB)" if size >= 1e6 else ""
    console.print(
        f"The demo's servers (stopped) and worker logs are in {workdir}{how_big};"
        " remove the folder when done."
    )
