"""Cron schedules: every worker submits each tick under a deterministic ID, so however
many workers run, each tick starts exactly one workflow (the insert is idempotent).

Missed ticks (no worker running at the time): when a worker starts it submits the latest
tick at or before now if that tick never ran, and none older ("catch up once"). A tick
is the workflow's single argument, as an ISO 8601 UTC string.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shardflow.config.cron import next_tick, previous_tick
from shardflow.errors import ShardflowError

if TYPE_CHECKING:
    from shardflow.engine.app import App, Workflow
    from shardflow.engine.cluster import Cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    workflow: Workflow[Any, Any]
    cron: str
    queue: str | None


def tick_id(schedule: str, tick: datetime) -> str:
    """The workflow ID of one tick: the same in every worker."""
    stamp = tick.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"schedule:{schedule}:{stamp}"


def collect(app: App, cluster: Cluster) -> list[Schedule]:
    """Schedules from the decorators of ``app`` and from the YAML, for workflows the app
    has (a worker can only run its own). Ticks use the workflow's queue (the YAML entry
    may override it) and its default timeout."""
    out = [
        Schedule(wf.name, wf, wf.schedule, None)
        for wf in app.workflows.values()
        if wf.schedule is not None
    ]
    for entry in cluster.config.schedules:
        if entry.workflow not in app.workflows:
            continue
        out.append(Schedule(entry.name, app.workflows[entry.workflow], entry.cron, entry.queue))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ShardflowError(f"schedule names must be unique, got {sorted(names)}")
    return out


class Scheduler:
    """Submits due ticks until ``stop`` is set. Runs on one thread of a worker."""

    def __init__(self, cluster: Cluster, schedules: list[Schedule], stop: threading.Event) -> None:
        self.cluster = cluster
        self.schedules = schedules
        self.stop = stop
        self.submitted = 0

    def _submit(self, schedule: Schedule, tick: datetime) -> None:
        iso = tick.astimezone(timezone.utc).isoformat()
        try:
            self.cluster.submit(
                schedule.workflow,
                iso,
                workflow_id=tick_id(schedule.name, tick),
                queue=schedule.queue,
            )
            self.submitted += 1
        except ShardflowError as exc:
            log.warning("schedule %s tick %s not submitted: %s", schedule.name, iso, exc)

    def run(self) -> None:
        now = datetime.now(timezone.utc)
        upcoming: dict[str, datetime] = {}
        for schedule in self.schedules:
            self._submit(schedule, previous_tick(schedule.cron, now))  # catch up once
            upcoming[schedule.name] = next_tick(schedule.cron, now)
        by_name = {s.name: s for s in self.schedules}
        while upcoming and not self.stop.is_set():
            name, due = min(upcoming.items(), key=lambda item: item[1])
            wait = (due - datetime.now(timezone.utc)).total_seconds()
            if wait > 0 and self.stop.wait(wait):
                return
            self._submit(by_name[name], due)
            upcoming[name] = next_tick(by_name[name].cron, due)
