"""Start, watch and restart N child processes; pass a stop request through to them.

A child is told to stop on its stdin, not by a signal: ``stop`` (drain gracefully),
``force`` (stop waiting for running steps); the end of input (the supervisor died) means
``stop``. A signal could reach a child twice (from the supervisor and from a terminal's
Ctrl-C, which signals the whole process group), and a second signal means "at once".

Restarts: a child that exits while no stop was asked for is started again after a
backoff that doubles from ``first_delay`` to ``max_delay`` and resets once a child stayed
up ``stable_seconds``. A slot whose child exits ``give_up_after`` times in a row without
staying up that long is hopeless (a bad app, a config a child rejects): the supervisor
stops the other children gracefully and exits with status 1, for the service manager to
report and restart. Each exit is logged with its status or signal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

__all__ = ["ChildSlot", "Exit", "RestartPolicy", "Supervisor", "available_cpus"]

# One child's command line, from its slot number (1-based) and how often it restarted.
CommandFor = Callable[[int, int], Sequence[str]]

_POLL_SECONDS = 0.2


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(cpus, 1)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a child that died is started again, and when the supervisor gives up."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_seconds: float = 60.0
    give_up_after: int = 5

    def delay(self, failures: int) -> float:
        """Seconds before the start that follows ``failures`` quick exits in a row."""
        return float(min(self.first_delay * 2.0 ** max(failures - 1, 0), self.max_delay))


@dataclass(frozen=True, slots=True)
class Exit:
    """One child process that ended: when it ran and how it ended."""

    pid: int  # 0: it could not be started
    started_at: float
    ended_at: float
    status: int  # negative: killed by that signal
    expected: bool  # a stop was asked for

    def describe(self) -> str:
        if self.pid == 0:
            return "could not be started"
        if self.status < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-self.status).name}"
            return f"killed by signal {-self.status}"
        return f"exited with status {self.status}"


@dataclass(slots=True)
class ChildSlot:
    """Slot ``index`` (1-based): its current process, restarts and exits so far."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # quick exits in a row
    start_at: float = 0.0  # when to start it next (while proc is None)
    exits: list[Exit] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Runs ``processes`` children, each ``command(index, restarts)``, until asked to stop.

    :meth:`run` blocks; :meth:`request_stop` (or SIGTERM/SIGINT, when :meth:`run` installs
    its handlers) drains the children. ``on_start(slot)`` is called after each start.
    """

    def __init__(
        self,
        command: CommandFor,
        processes: int,
        *,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
        on_start: Callable[[ChildSlot], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.command = command
        self.policy = policy or RestartPolicy()
        self.slots = [ChildSlot(i) for i in range(1, processes + 1)]
        self.gave_up = False
        self._env = None if env is None else dict(env)
        self._on_start = on_start
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._forced = False
        # Signals seen: the handler only appends (it may interrupt the loop while that
        # holds a lock); the loop acts on them.
        self._signals: list[int] = []
        self._signals_done = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self, *, handle_signals: bool = True) -> int:
        """Start every child, keep them up, and return once all exited after a stop: 0 if
        each exited 0 then, 1 if one did not or a slot was given up."""
        previous = {}
        if handle_signals:
            previous = {
                s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)
            }
        try:
            while not (self._stopping and not any(s.proc for s in self.slots)):
                self._handle_signals()
                self._start_due()
                self._wake.wait(_POLL_SECONDS)
                self._wake.clear()
                self._reap()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._kill_leftovers()
        drained = all(e.status == 0 for slot in self.slots for e in slot.exits if e.expected)
        status = 0 if drained and not self.gave_up else 1
        log.info("supervisor exiting with status %d", status)
        return status

    def request_stop(self, *, force: bool = False) -> None:
        """Ask every child to drain (``force``: to stop waiting for running steps)."""
        with self._lock:
            self._forced = self._forced or force
            first = not self._stopping
            self._stopping = True
            procs = [s.proc for s in self.slots if s.proc is not None]
        if first or force:
            for proc in procs:
                _tell(proc, b"force\n" if force else b"stop\n")
        self._wake.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals_done < len(self._signals):
            signum = self._signals[self._signals_done]
            self._signals_done += 1
            if self._signals_done == 1:
                log.info("received signal %d, stopping the worker processes", signum)
                self.request_stop()
            else:
                log.warning("received signal %d again, not waiting for running steps", signum)
                self.request_stop(force=True)

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and not self._stopping and now >= slot.start_at:
                if slot.exits:
                    slot.restarts += 1
                self._start(slot)

    def _start(self, slot: ChildSlot) -> None:
        command = list(self.command(slot.index, slot.restarts))
        try:
            # stdin: the control channel (see the module's docstring); output: inherited.
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, env=self._env)
        except OSError as exc:  # out of processes or descriptors: try again later
            now = time.monotonic()
            slot.exits.append(Exit(0, now, now, -1, False))
            self._after_failure(slot, f"could not be started ({exc})", now)
            return
        slot.proc, slot.started_at = proc, time.monotonic()
        log.info("started worker process %d (pid %d)", slot.index, proc.pid)
        if self._on_start is not None:
            self._on_start(slot)
        with self._lock:
            if self._stopping:  # a stop came while this one was starting
                _tell(proc, b"force\n" if self._forced else b"stop\n")

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            with self._lock:
                expected = self._stopping
                slot.proc = None
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            ended = Exit(proc.pid, slot.started_at, now, proc.returncode, expected)
            slot.exits.append(ended)
            what = f"(pid {proc.pid}) {ended.describe()}"
            if expected:
                log.info("worker process %d %s", slot.index, what)
            else:
                self._after_failure(slot, what, now)

    def _after_failure(self, slot: ChildSlot, what: str, now: float) -> None:
        """Schedule the slot's restart, or give up on it (see the module's docstring)."""
        quick = now - slot.started_at < self.policy.stable_seconds
        slot.failures = slot.failures + 1 if quick else 1
        if slot.failures >= self.policy.give_up_after:
            log.error(
                "worker process %d %s, %d times in a row within %gs of its start;"
                " giving up: stopping the other processes",
                slot.index, what, slot.failures, self.policy.stable_seconds,
            )  # fmt: skip
            self.gave_up = True
            self.request_stop()
            return
        delay = self.policy.delay(slot.failures)
        slot.start_at = now + delay
        log.warning(
            "worker process %d %s; restarting it in %.1fs (restart %d)",
            slot.index, what, delay, slot.restarts + 1,
        )  # fmt: skip

    def _kill_leftovers(self) -> None:
        """Only after an error in :meth:`run` itself: no child outlives the supervisor."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.error("killing worker process %d (pid %d)", slot.index, slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()


def _tell(proc: subprocess.Popen[bytes], command: bytes) -> None:
    """Write a command to a child's stdin; a child that is gone is reaped anyway."""
    if proc.stdin is None:
        return
    with contextlib.suppress(OSError):
        proc.stdin.write(command)
        proc.stdin.flush()
