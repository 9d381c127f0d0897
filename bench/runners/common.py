"""What every runner shares: the command line, the line protocol, the clocks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
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


def drain_result(
    probe: Probe, started: float, started_cpu: float, ended: float, ended_cpu: float
) -> dict[str, Any]:
    """The timings of a drain: from the go signal and from the first workflow body."""
    first = probe.first_start if probe.first_start is not None else started
    first_cpu = probe.first_start_cpu if probe.first_start_cpu is not None else started_cpu
    return {
        "workflows": probe.finished_count,
        "startup_seconds": first - started,
        "seconds": ended - first,
        "cpu_seconds": ended_cpu - first_cpu,
        "first_start_wall": probe.first_start_wall,
        "end_wall": time.time() - (time.perf_counter() - ended),
    }


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout:.0f}s")
        time.sleep(interval)
