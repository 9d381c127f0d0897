"""One ``/metrics``, ``/healthz`` and ``/readyz`` for a supervisor and its children.

Each child serves its own endpoint on an ephemeral port of 127.0.0.1 and writes that port
to a file (``port_file``). At scrape time the supervisor reads every child's ``/metrics``
(in parallel, with a short timeout) and merges them into one valid Prometheus text:

- counters and histograms are summed per label set; a child that exited is not lost:
  its last scraped values are kept and added, so a sum never goes down on a restart;
- gauges are summed (running workflows, run threads, memory), except the per-shard
  snapshots every child reads from the database alike (``shardflow_queue_depth`` and
  the like: one child's copy) and a few taken as a maximum or a minimum (below);
- ``shardflow_worker_info`` keeps one series per child (its ``worker_id`` differs).

The supervisor adds ``shardflow_supervisor_processes``,
``shardflow_supervisor_processes_running``, ``shardflow_supervisor_restarts_total`` and
``shardflow_supervisor_child_up`` (per process).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from shardflow.engine.metrics_http import MetricsServer
from shardflow.supervisor.children import ChildSlot, Supervisor

log = logging.getLogger(__name__)

__all__ = ["ChildrenCollector", "serve_supervisor_metrics"]

SCRAPE_TIMEOUT = 2.0
_CUMULATIVE = ("counter", "histogram", "summary")
# Gauges every child reads from the same database: one copy, not a sum.
_ONE_COPY = frozenset(
    {
        "shardflow_shard_up",
        "shardflow_queue_depth",
        "shardflow_queue_oldest_seconds",
        "shardflow_expired_leases",
        "shardflow_slots",
    }
)
_MAXIMUM = frozenset({"shardflow_worker_loop_seconds_since_progress", "process_max_fds"})
_MINIMUM = frozenset({"process_start_time_seconds"})

SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]  # family, sample name, labels


def port_file(directory: Path, index: int) -> Path:
    """Where child ``index`` writes the port of its metrics endpoint."""
    return directory / f"worker-{index}.port"


@dataclass(slots=True)
class _Seen:
    """A child process's last scraped cumulative samples."""

    pid: int
    samples: dict[SampleKey, float] = field(default_factory=dict)


class ChildrenCollector:
    """A Prometheus collector that merges the children's metrics at scrape time."""

    def __init__(
        self, supervisor: Supervisor, ports_dir: Path, *, timeout: float = SCRAPE_TIMEOUT
    ) -> None:
        self.supervisor = supervisor
        self.ports_dir = ports_dir
        self.timeout = timeout
        self._lock = threading.Lock()
        self._families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._retired: dict[SampleKey, float] = {}
        self._seen: dict[int, _Seen] = {}  # slot index -> its current process

    def fetch(self, path: str) -> dict[int, tuple[int, int, bytes] | None]:
        """``path`` from every running child, by slot: (pid, HTTP status, body), or None
        for a child that did not answer."""
        slots = [(s.index, s.pid) for s in self.supervisor.slots if s.running]
        with ThreadPoolExecutor(max(len(slots), 1), thread_name_prefix="shardflow-scrape") as pool:
            answers = pool.map(lambda s: self._get(s[0], path), slots)
            return {
                index: None if answer is None or pid is None else (pid, *answer)
                for (index, pid), answer in zip(slots, answers, strict=True)
            }

    def _get(self, index: int, path: str) -> tuple[int, bytes] | None:
        try:
            port = int(port_file(self.ports_dir, index).read_text())
        except (OSError, ValueError):
            return None  # still starting
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}{path}", timeout=self.timeout
            ) as reply:
                return int(reply.status), bytes(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            log.debug("worker process %d did not answer %s: %s", index, path, exc)
            return None

    def collect(self) -> Iterator[Metric]:
        answers = self.fetch("/metrics")
        with self._lock:
            gauges: dict[SampleKey, list[float]] = {}
            for slot in self.supervisor.slots:
                answer = answers.get(slot.index)
                self._retire_if_replaced(slot)
                if answer is None or answer[1] != 200:
                    continue
                pid, _, body = answer
                seen = _Seen(pid)
                for family in text_string_to_metric_families(body.decode()):
                    self._families.setdefault(family.name, (family.type, family.documentation))
                    for sample in family.samples:
                        if sample.name.endswith("_created"):
                            continue  # a timestamp, not a count
                        key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                        if family.type in _CUMULATIVE:
                            seen.samples[key] = sample.value
                        else:
                            gauges.setdefault(key, []).append(sample.value)
                self._seen[slot.index] = seen
            totals = dict(self._retired)
            for seen in self._seen.values():
                for key, value in seen.samples.items():
                    totals[key] = totals.get(key, 0.0) + value
            for key, values in gauges.items():
                totals[key] = _combine(key[0], values)
            yield from self._families_of(totals)
        yield from self._own(answers)

    def _retire_if_replaced(self, slot: ChildSlot) -> None:
        """Keep the last counts of a child process that is gone (its slot has another
        process, or none): they stay in the sums."""
        seen = self._seen.get(slot.index)
        if seen is not None and seen.pid != slot.pid:
            for key, value in seen.samples.items():
                self._retired[key] = self._retired.get(key, 0.0) + value
            del self._seen[slot.index]

    def _families_of(self, totals: dict[SampleKey, float]) -> Iterator[Metric]:
        by_family: dict[str, list[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
        for (name, sample, labels), value in sorted(totals.items()):
            by_family.setdefault(name, []).append((sample, labels, value))
        for name, samples in by_family.items():
            kind, doc = self._families[name]
            metric = Metric(name, doc, kind)
            for sample, labels, value in samples:
                metric.add_sample(sample, dict(labels), value)
            yield metric

    def _own(self, answers: dict[int, tuple[int, int, bytes] | None]) -> Iterator[Metric]:
        slots = self.supervisor.slots
        yield GaugeMetricFamily(
            "shardflow_supervisor_processes",
            "Worker processes this supervisor keeps running.",
            value=len(slots),
        )
        yield GaugeMetricFamily(
            "shardflow_supervisor_processes_running",
            "Worker processes running now.",
            value=sum(1 for s in slots if s.running),
        )
        restarts = CounterMetricFamily(
            "shardflow_supervisor_restarts",
            "Worker processes started again after they exited unexpectedly, by process.",
            labels=["process"],
        )
        up = GaugeMetricFamily(
            "shardflow_supervisor_child_up",
            "1 if the worker process answered this scrape's /metrics.",
            labels=["process"],
        )
        for slot in slots:
            restarts.add_metric([str(slot.index)], slot.restarts)
            answer = answers.get(slot.index)
            up.add_metric([str(slot.index)], 1 if answer is not None and answer[1] == 200 else 0)
        yield restarts
        yield up

    # -- probes -----------------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Per worker process: pid, restarts, how its last run ended, and its own
        ``/healthz`` (``alive``: running and answering 200)."""
        answers = self.fetch("/healthz")
        out: dict[str, dict[str, Any]] = {}
        for slot in self.supervisor.slots:
            answer = answers.get(slot.index)
            report: dict[str, Any] = {
                "pid": slot.pid,
                "running": slot.running,
                "starting": slot.running and not port_file(self.ports_dir, slot.index).exists(),
                "restarts": slot.restarts,
                "last_exit": slot.exits[-1].describe() if slot.exits else None,
                "alive": answer is not None and answer[1] == 200,
            }
            if answer is not None:
                try:
                    report["loops"] = json.loads(answer[2]).get("loops", {})
                except ValueError:
                    report["loops"] = {}
            out[str(slot.index)] = report
        return out

    def alive(self) -> bool:
        """Every worker process alive by its own probe, starting, or waiting for its
        restart; and no slot given up."""
        if self.supervisor.gave_up:
            return False
        if self.supervisor.stopping:
            return True
        return all(h["alive"] or h["starting"] or not h["running"] for h in self.health().values())

    def ready(self) -> bool:
        """Every worker process ready by its own probe."""
        if self.supervisor.stopping:
            return False
        answers = self.fetch("/readyz")
        return all(
            (answer := answers.get(s.index)) is not None and answer[1] == 200
            for s in self.supervisor.slots
        )


def serve_supervisor_metrics(
    supervisor: Supervisor, ports_dir: Path, port: int, host: str = "0.0.0.0"
) -> MetricsServer:
    """Serve the children's merged metrics and the supervisor's probes on ``host:port``."""
    collector = ChildrenCollector(supervisor, ports_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server = MetricsServer(
        registry,
        host=host,
        port=port,
        alive=collector.alive,
        ready=collector.ready,
        health=collector.health,
        health_key="processes",
    )
    log.info("serving the worker processes' metrics on %s:%d", host, server.port)
    return server.start()


def _combine(family: str, values: list[float]) -> float:
    if family in _ONE_COPY:
        return values[0]
    if family in _MAXIMUM:
        return max(values)
    if family in _MINIMUM:
        return min(values)
    return sum(values)
