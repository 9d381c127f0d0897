"""In-process timing hooks that every benchmark workflow calls at its start and end.

They cost a lock and two clock reads per workflow, the same for every system, and let a
runner time the steady state (first workflow started -> last one done) without polling
the database while it measures.
"""

from __future__ import annotations

import threading
import time


class Probe:
    """When the first workflow body started (wall, monotonic and CPU clocks; ``first`` is
    set then), and how many bodies have finished (``done`` is set when ``target`` have)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.target = 0
        self.first_start_wall: float | None = None
        self.first_start: float | None = None
        self.first_start_cpu: float | None = None
        self.finished_count = 0
        self.first = threading.Event()
        self.done = threading.Event()

    def reset(self, target: int) -> None:
        with self._lock:
            self.target = target
            self.first_start_wall = None
            self.first_start = None
            self.first_start_cpu = None
            self.finished_count = 0
            self.first.clear()
            self.done.clear()

    def started(self) -> None:
        if self.first_start is not None:
            return
        with self._lock:
            if self.first_start is None:
                self.first_start_wall = time.time()
                self.first_start_cpu = time.process_time()
                self.first_start = time.perf_counter()
                self.first.set()

    def finished(self) -> None:
        with self._lock:
            self.finished_count += 1
            if self.target and self.finished_count >= self.target:
                self.done.set()


PROBE = Probe()
