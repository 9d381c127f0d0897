"""Step durations as a fixed-bucket histogram: cheap to update, no I/O, no metrics library.

A worker keeps one in its stats; the Prometheus collector (``shardflow.engine.metrics``)
reads it at scrape time. Updating it is a lock and a few additions, once per step.
"""

from __future__ import annotations

import bisect
import threading

# Upper bounds in seconds (the last bucket, +Inf, is implicit): from a fast local step
# to a slow remote call.
STEP_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class StepTimes:
    """Durations of completed steps, by (shard, step name)."""

    __slots__ = ("_lock", "_series", "buckets")

    def __init__(self, buckets: tuple[float, ...] = STEP_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        # (shard, step) -> [count per bucket (+Inf last)..., sum of seconds]
        self._series: dict[tuple[str, str], list[float]] = {}

    def observe(self, shard: str, step: str, seconds: float) -> None:
        index = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            series = self._series.get((shard, step))
            if series is None:
                series = self._series[(shard, step)] = [0.0] * (len(self.buckets) + 2)
            series[index] += 1
            series[-1] += seconds

    def snapshot(self) -> dict[tuple[str, str], tuple[list[int], float]]:
        """Per series: non-cumulative counts per bucket (+Inf last) and the sum."""
        with self._lock:
            return {
                key: ([int(c) for c in series[:-1]], series[-1])
                for key, series in self._series.items()
            }
