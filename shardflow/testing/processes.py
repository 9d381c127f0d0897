"""Child processes for tests, the demo and the benchmark: one way to start a
``shardflow worker`` subprocess (:func:`spawn_worker`), wait until it serves every
shard, stop it gracefully, kill or freeze it.

A child's output goes to a log file (or nowhere); the parent's handle on that file is
closed at once, the child keeps its own. A child that exits early or does not get ready
in time fails like a test assertion (``AssertionError``), with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from shardflow.retry import Backoff

if TYPE_CHECKING:
    from shardflow.engine.cluster import Cluster

LOG_TAIL_LINES = 15


def child_env(
    extra: Mapping[str, str] | None = None,
    *,
    python_path: Sequence[str | Path] = (),
    drop_prefix: str | None = None,
) -> dict[str, str]:
    """This process's environment for a child: ``python_path`` put first on
    ``PYTHONPATH``, variables starting with ``drop_prefix`` removed, then ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if drop_prefix is None or not k.startswith(drop_prefix)
    }
    path = [*map(str, python_path), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env.update(extra or {})
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM ``proc`` (a graceful stop), wait up to ``timeout``, then SIGKILL; its exit
    status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class ChildProcess(subprocess.Popen[bytes]):
    """A subprocess whose stdout and stderr go to ``log_path`` (or nowhere)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: Path | None = None,
        stdout_path: Path | None = None,
        stdin: int | None = None,
    ) -> None:
        """Output goes to ``log_path``; with ``stdout_path`` too, stdout goes there and
        only stderr to ``log_path`` (a line protocol on stdout, logs on stderr)."""
        self.log_path = log_path
        self.stdout_path = stdout_path
        self.command = list(command)
        # The child gets its own descriptors: the parent's are closed once it started.
        with contextlib.ExitStack() as files:
            log: int | BinaryIO = subprocess.DEVNULL
            if log_path is not None:
                log = files.enter_context(log_path.open("ab"))
            out: int | BinaryIO = log
            err: int | BinaryIO = subprocess.STDOUT if log_path is not None else log
            if stdout_path is not None:
                out, err = files.enter_context(stdout_path.open("ab")), log
            super().__init__(self.command, env=env, cwd=cwd, stdin=stdin, stdout=out, stderr=err)

    def stdout_lines(self) -> list[str]:
        """What the child wrote to ``stdout_path`` so far, by line."""
        if self.stdout_path is None:
            return []
        return self.stdout_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def fail(self, what: str) -> AssertionError:
        where = f"; log {self.log_path}:\n{self.log_tail()}" if self.log_path else ""
        return AssertionError(f"process {self.pid} ({' '.join(self.command[:4])}...) {what}{where}")

    def wait_until(self, condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
        """Poll ``condition`` (with backoff) until it is truthy and return its value; fail
        (with the log's tail) if the process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(0.01, 0.2)
        while True:
            value = condition()
            if value:
                return value
            if self.poll() is not None:
                raise self.fail(f"exited with status {self.returncode} before {what}")
            if time.monotonic() >= deadline:
                raise self.fail(f"not {what} after {timeout:.0f}s")
            time.sleep(min(backoff.next(), max(deadline - time.monotonic(), 0.0)))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), wait up to ``timeout``, then SIGKILL. Exit status."""
        return stop_process(self, timeout)

    def kill_now(self, timeout: float = 30.0) -> int:
        """SIGKILL and reap. Exit status."""
        if self.poll() is None:
            self.kill()
        return self.wait(timeout)

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets and leases but does nothing."""
        self.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send_signal(signal.SIGCONT)


class WorkerProcess(ChildProcess):
    """A ``shardflow worker`` subprocess (see :func:`spawn_worker`)."""

    def __init__(self, command: Sequence[str], *, worker_id: str, **kwargs: Any) -> None:
        self.worker_id = worker_id
        super().__init__(command, **kwargs)

    def wait_ready(self, cluster: Cluster, timeout: float = 60.0) -> None:
        """Wait until this worker has registered on every shard of ``cluster`` (its
        first heartbeat there); fail with its log's tail if it exits or times out."""
        from shardflow.engine import coverage
        from shardflow.errors import ShardflowError

        def registered() -> bool:
            try:
                return all(
                    self.worker_id in {w.worker_id for w in coverage.live_workers(cluster, s) or []}
                    for s in cluster.config.shard_names
                )
            except ShardflowError:
                return False

        self.wait_until(registered, timeout=timeout, what="registered on every shard")


def spawn_worker(
    config_path: Path,
    app: str,
    *args: str,
    worker_id: str | None = None,
    concurrency: int | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: str | Path | None = None,
    log_level: str = "INFO",
) -> WorkerProcess:
    """Start ``python -m shardflow --config CONFIG worker --app APP [ARGS...]``.

    ``env`` is the child's whole environment (default: this process's; see
    :func:`child_env`); ``worker_id`` defaults to a fresh unique one (``--worker-id``, so
    that :meth:`WorkerProcess.wait_ready` can find its registry rows). Without
    ``--processes`` in ``args`` the worker runs as one process (``--processes 1``).
    """
    command = [
        sys.executable, "-m", "shardflow", "--config", str(config_path),
        "--log-level", log_level, "worker", "--app", app,
    ]  # fmt: skip
    if "--worker-id" in args:
        worker_id = args[args.index("--worker-id") + 1]
    else:
        worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        command += ["--worker-id", worker_id]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    if "--processes" not in args:
        command += ["--processes", "1"]  # one process, the one this handle controls
    command += args
    return WorkerProcess(
        command,
        worker_id=worker_id,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        log_path=log_path,
    )
