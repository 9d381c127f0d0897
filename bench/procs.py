"""Runner subprocesses: start them, wait for READY, send go, collect RESULT and CPU time.

A runner's stdout and stderr go to files in the work directory (stdout carries the line
protocol, stderr the logs), so a failed run leaves its log behind for the error message.
The process is reaped with ``os.wait4``, which returns that one child's resource usage:
its CPU time from start to exit, a cross-check of the CPU time the runner measures itself.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shardflow.retry import Backoff
from shardflow.testing.processes import ChildProcess, child_env

ROOT = Path(__file__).resolve().parents[1]
_LOG_TAIL = 40
_counter = itertools.count()


class RunnerFailed(RuntimeError):
    """A runner exited without a RESULT line, or timed out."""


def runner_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # A runner reads its settings from its spec only, never from SHARDFLOW_* variables.
    return child_env(extra, python_path=[ROOT], drop_prefix="SHARDFLOW_")


class Runner:
    """One runner process: ``python -m bench.runners.<module> MODE SPEC``."""

    def __init__(
        self,
        workdir: Path,
        module: str,
        mode: str,
        spec: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        python_args: tuple[str, ...] = (),
    ) -> None:
        n = next(_counter)
        self.name = f"{module}-{mode}-{n}"
        self.stdout_path = workdir / f"{self.name}.out"
        self.stderr_path = workdir / f"{self.name}.log"
        self.rusage: Any = None
        self.proc = ChildProcess(
            [sys.executable, *python_args, "-m", f"bench.runners.{module}", mode, json.dumps(spec)],
            env=runner_env(env),
            cwd=ROOT,
            log_path=self.stderr_path,
            stdout_path=self.stdout_path,
            stdin=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _lines(self) -> list[str]:
        return self.proc.stdout_lines()

    def wait_ready(self, timeout: float = 120) -> None:
        try:
            self.proc.wait_until(lambda: "READY" in self._lines(), timeout=timeout, what="ready")
        except AssertionError as exc:  # exited, or not ready in time
            if self.proc.poll() is None:
                self.kill()
            raise RunnerFailed(f"runner {self.name}: {exc}") from None

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self._reap(30)

    def _reap(self, timeout: float) -> None:
        """Wait for exit with ``os.wait4``: that one child's resource usage too."""
        if self.proc.returncode is not None:
            return
        deadline = time.monotonic() + timeout
        backoff = Backoff(0.002, 0.01)
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = usage
                break
            if time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(self.proc.pid, 0)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = usage
                self._close()
                self._fail(f"timed out after {timeout:.0f}s")
            time.sleep(backoff.next())
        self._close()

    def _close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def result(self, timeout: float = 600) -> dict[str, Any]:
        """Wait for exit; the RESULT payload plus ``process_cpu_seconds`` (whole process)."""
        self._reap(timeout)
        for line in reversed(self._lines()):
            if line.startswith("RESULT "):
                payload: dict[str, Any] = json.loads(line[len("RESULT ") :])
                if self.rusage is not None:
                    payload["process_cpu_seconds"] = self.rusage.ru_utime + self.rusage.ru_stime
                if self.proc.returncode != 0:
                    self._fail(f"exited with status {self.proc.returncode}")
                return payload
        self._fail(f"exited with status {self.proc.returncode} and no RESULT")
        raise AssertionError("unreachable")

    def _fail(self, what: str) -> None:
        tail = self.proc.log_tail(_LOG_TAIL)
        raise RunnerFailed(f"runner {self.name} {what}; log {self.stderr_path}:\n{tail}")


def run(
    workdir: Path,
    module: str,
    mode: str,
    spec: dict[str, Any],
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a runner to its end and return its result."""
    return Runner(workdir, module, mode, spec, env=env).result(timeout)
