"""What every runner shares: the command line, the line protocol, the clocks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bench.apps.probe import Probe

Spec = dict[str, Any]
Modes = Mapping[str, Callable[[Spec], dict[str, Any]]]


def main(modes: Modes) -> int:
    """``python -m bench.runners.X MODE SPEC_JSON``: run MODE, print its RESULT line."""
    if len(sys.argv) != 3 or sys.argv[1] not in modes:
        print(f"usage: {sys.argv[0]} {{{','.join(modes)}}} SPEC_JSON", file=sys.stderr)
        return 2
    spec: Spec = json.loads(sys.argv[2])
    result = modes[sys.argv[1]](spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def ready() -> None:
    print("READY", flush=True)


def wait_for_go(spec: Spec) -> None:
    """Tell the harness this process is set up; with ``spec["go"]``, wait for its signal
    (a line on stdin), so that several workers can start at the same moment."""
    ready()
    if spec.get("go"):
        sys.stdin.readline()


def chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime (all of the process's threads)


def _stat_fields(pid: str | int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None if it exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def server_cpu_seconds(postmasters: list[int]) -> float:
    """CPU time used so far by PostgreSQL servers: each postmaster and its live children
    (backends, WAL writer, checkpointer, ...), from /proc. A backend that exited is no
    longer counted, so take both readings while this process's connections are open."""
    wanted = set(postmasters)
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue  # exited meanwhile
        if int(entry) in wanted or int(fields[1]) in wanted:
            total += _cpu_ticks(fields)
    return total / _TICKS


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by other processes (a worker process the clients wait on)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            raise RuntimeError(f"process {pid} is gone: its CPU time cannot be read")
        total += _cpu_ticks(fields)
    return total / _TICKS


class ServerCpu:
    """Server CPU time from the first workflow body to :meth:`stop`, read off the hot path:
    a thread waits for the probe's ``first`` event, then reads /proc once."""

    def __init__(self, probe: Probe, postmasters: list[int] | None) -> None:
        self.postmasters = postmasters or []
        self.start: float | None = None
        self._thread = threading.Thread(target=self._wait, args=(probe,), daemon=True)
        if self.postmasters:
            self._thread.start()

    def _wait(self, probe: Probe) -> None:
        probe.first.wait()
        self.start = server_cpu_seconds(self.postmasters)

    def stop(self) -> float | None:
        if not self.postmasters:
            return None
        self._thread.join(timeout=5)
        if self.start is None:
            return None
        return server_cpu_seconds(self.postmasters) - self.start


def drain_result(
    probe: Probe,
    started: float,
    started_cpu: float,
    ended: float,
    ended_cpu: float,
    server_cpu: float | None = None,
) -> dict[str, Any]:
    """The timings of a drain: from the go signal and from the first workflow body."""
    first = probe.first_start if probe.first_start is not None else started
    first_cpu = probe.first_start_cpu if probe.first_start_cpu is not None else started_cpu
    return {
        "workflows": probe.finished_count,
        "startup_seconds": first - started,
        "seconds": ended - first,
        "cpu_seconds": ended_cpu - first_cpu,
        "server_cpu_seconds": server_cpu,
        "first_start_wall": probe.first_start_wall,
        "end_wall": time.time() - (time.perf_counter() - ended),
    }


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout:.0f}s")
        time.sleep(interval)


class AppShape:
    """Clients that each run one workflow at a time, end to end, until ``count`` have
    ended: the clock, the latencies and the CPU of the application shape. The clients are
    threads (:meth:`measure`) or asyncio tasks on one event loop (:meth:`measure_tasks`).
    CPU time is this process's, plus that of ``worker_pids`` (a worker in its own
    process), plus the PostgreSQL servers' (``postmasters``)."""

    def __init__(
        self,
        count: int,
        clients: int,
        postmasters: list[int] | None = None,
        worker_pids: list[int] | None = None,
    ) -> None:
        self.count = count
        self.clients = clients
        self.postmasters = postmasters or []
        self.worker_pids = worker_pids or []
        self._next = 0
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.count or self.errors:
                return None
            self._next += 1
            return self._next - 1

    def _record(self, began: float) -> None:
        took = time.perf_counter() - began
        with self._lock:
            self.latencies.append(took)

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _client(self, one: Callable[[int], None]) -> None:
        while (i := self._take()) is not None:
            began = time.perf_counter()
            try:
                one(i)
            except Exception as exc:
                self._fail(exc)
                return
            self._record(began)

    async def _task(self, one: Callable[[int], Awaitable[None]]) -> None:
        while (i := self._take()) is not None:
            began = time.perf_counter()
            try:
                await one(i)
            except Exception as exc:
                self._fail(exc)
                return
            self._record(began)

    def measure(self, one: Callable[[int], None]) -> dict[str, Any]:
        """Run client threads; ``one(i)`` submits workflow ``i`` and waits for its result."""
        threads = [
            threading.Thread(target=self._client, args=(one,), daemon=True)
            for _ in range(self.clients)
        ]
        before = self._clocks()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self._result(before)

    async def measure_tasks(self, one: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
        """Run client tasks on the running loop; ``await one(i)`` submits workflow ``i``
        and awaits its result."""
        before = self._clocks()
        await asyncio.gather(*(self._task(one) for _ in range(self.clients)))
        return self._result(before)

    def _clocks(self) -> tuple[float, float, float | None, float | None]:
        """Wall, this process's CPU, the servers' CPU, the worker processes' CPU."""
        server = server_cpu_seconds(self.postmasters) if self.postmasters else None
        worker = process_cpu_seconds(self.worker_pids) if self.worker_pids else None
        return time.perf_counter(), time.process_time(), server, worker

    def _result(self, before: tuple[float, float, float | None, float | None]) -> dict[str, Any]:
        after = self._clocks()
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} client(s) failed: {self.errors[0]}")

        def spent(k: int) -> float | None:
            b, a = before[k], after[k]
            return None if b is None or a is None else a - b

        return {
            "workflows": len(self.latencies),
            "clients": self.clients,
            "seconds": after[0] - before[0],
            "cpu_seconds": after[1] - before[1],
            "server_cpu_seconds": spent(2),
            "worker_cpu_seconds": spent(3),
            "latencies": self.latencies,
        }
