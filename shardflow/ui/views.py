"""What each dashboard page shows, read through the library (no SQL here).

Every function takes a :class:`~shardflow.engine.cluster.Cluster` and returns plain
values for the templates. A shard that cannot answer is shown as such, never an error
page: the dashboard is most needed when part of the cluster is in trouble.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from shardflow.config.redaction import scrub_dsns
from shardflow.engine.blobs import BlobRef, is_reference
from shardflow.engine.bulk import admin_store, list_workflows
from shardflow.engine.cluster import Cluster, Page
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.store.admin import (
    EventRecord,
    LatestPlan,
    MessageRecord,
    ShardInfo,
    StoredStep,
    WorkflowExtra,
)
from shardflow.engine.store.rows import WorkerRecord
from shardflow.engine.store_errors import StoreError
from shardflow.errors import ShardflowError, ShardUnavailable
from shardflow.retry import with_retries
from shardflow.router.slotmap import SlotMap

T = TypeVar("T")

MAX_ID_CHARS = 512  # the longest workflow ID (and ID prefix filter)
VALUE_MAX_CHARS = 4000  # of a value shown on the workflow page; the rest is cut
WORKERS_WITHIN_SECONDS = 120.0
RECENT_SECONDS = 60.0
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#ff9da7",
    "#9c755f",
    "#e15759",
    "#bab0ac",
)


@dataclass(frozen=True, slots=True)
class ShardView:
    name: str
    color: str
    problem: str | None = None
    info: ShardInfo | None = None
    workers: tuple[WorkerRecord, ...] = ()

    @property
    def reachable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class StripRun:
    """Consecutive slots with one owner, in motion or not (one bar of the slot strip)."""

    first: int
    last: int
    owner: str
    color: str
    moving_from: str | None

    @property
    def width(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class QueueView:
    name: str
    concurrency: int | None
    worker_concurrency: int | None
    rate_limit: str | None
    ready: int
    running: int


@dataclass(frozen=True, slots=True)
class RebalanceView:
    """The newest rebalance plan and how many slots are not yet where it puts them."""

    plan: LatestPlan
    slots_left: int

    @property
    def running(self) -> bool:
        return self.plan.finished_at is None


@dataclass(frozen=True, slots=True)
class Overview:
    cluster_name: str
    epoch: int
    slots: int
    shards: list[ShardView]
    strip: list[StripRun]
    in_motion: int
    queues: list[QueueView]
    rebalance: RebalanceView | None
    states: tuple[str, ...] = (
        "ENQUEUED",
        "RUNNING",
        "SUSPENDED",
        "SUCCESS",
        "ERROR",
        "CANCELLED",
        "DEAD",
    )


@dataclass(frozen=True, slots=True)
class ValueView:
    """A stored value as the page shows it."""

    kind: str  # "none", "json", "text" or "claim-check"
    text: str = ""
    size: int = 0
    truncated: bool = False
    blob_key: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowView:
    status: WorkflowStatus
    extra: WorkflowExtra | None
    inputs: ValueView
    output: ValueView
    error_text: str | None
    traceback: str | None
    steps: list[tuple[StoredStep, ValueView]]
    messages: list[MessageRecord]
    events: list[EventRecord]
    children: Page
    forks: Page
    forked_from: str | None
    # step_no -> (x, width) of its bar on a 0..1000 timeline from the first step's start.
    bars: dict[int, tuple[int, int]] = field(default_factory=dict)


def overview(cluster: Cluster) -> Overview:
    """Every shard, the slot map strip, queues, workers and a running rebalance."""
    names = cluster.config.shard_names
    dsns = [shard.dsn for shard in cluster.config.shards]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    store = admin_store(cluster)

    def read(shard: str) -> tuple[ShardView, LatestPlan | None]:
        try:
            # A shard that does not answer is reported at once, not retried for long.
            info = with_retries(lambda: store.shard_info(shard, RECENT_SECONDS), 1.0)
            workers: list[WorkerRecord] = []
            if cluster.store.has_worker_registry(shard):
                workers = cluster.store.live_workers(shard, WORKERS_WITHIN_SECONDS)
            plan = store.latest_plan(shard)
        except (ShardflowError, StoreError) as exc:
            problem = exc.reason if isinstance(exc, ShardUnavailable) else _one_line(exc)
            return ShardView(shard, colors[shard], problem=scrub_dsns(problem, dsns)), None
        return ShardView(shard, colors[shard], None, info, tuple(workers)), plan

    read_all = _parallel(names, read)
    shards = [view for view, _ in read_all]
    try:
        slot_map = cluster.refresh_topology()
    except ShardflowError:
        slot_map = cluster.router.slot_map
    plans = [plan for _, plan in read_all if plan is not None]
    return Overview(
        cluster_name=cluster.config.name,
        epoch=slot_map.epoch,
        slots=slot_map.slots,
        shards=shards,
        strip=_strip(slot_map, colors),
        in_motion=len(slot_map.migrating),
        queues=_queues(cluster, shards),
        rebalance=_rebalance(slot_map, max(plans, key=lambda p: p.created_at) if plans else None),
    )


def workflow_view(cluster: Cluster, workflow_id: str) -> WorkflowView:
    """One workflow; raises WorkflowNotFound."""
    status = cluster.get(workflow_id)
    store = admin_store(cluster)
    shard = status.shard
    extra = store.workflow_extra(shard, workflow_id)
    steps = store.stored_steps(shard, workflow_id, limit=1000, max_chars=VALUE_MAX_CHARS)
    messages = store.messages(shard, workflow_id, limit=200, max_chars=VALUE_MAX_CHARS)
    events = store.events(shard, workflow_id, limit=200, max_chars=VALUE_MAX_CHARS)
    children = list_workflows(
        cluster, WorkflowFilter(parent_id=workflow_id), limit=50, skip_unavailable=True
    )
    forks = list_workflows(
        cluster, WorkflowFilter(forked_from=workflow_id), limit=50, skip_unavailable=True
    )
    forked_from = status.forked_from
    error = status.error or {}
    error_text = (
        f"{error.get('type', 'Error')}: {error.get('message', '')}" if status.error else None
    )
    traceback = str(error["traceback"]) if error.get("traceback") else None
    return WorkflowView(
        status=status,
        extra=extra,
        inputs=stored_value(extra.inputs if extra else None),
        output=stored_value(extra.output if extra else None),
        error_text=error_text,
        traceback=traceback,
        steps=[(s, stored_value(s.output, s.size)) for s in steps],
        messages=messages,
        events=events,
        children=children,
        forks=forks,
        forked_from=forked_from,
        bars=_timeline(steps),
    )


def _timeline(steps: Sequence[StoredStep]) -> dict[int, tuple[int, int]]:
    timed = [s for s in steps if s.started_at is not None]
    if not timed:
        return {}
    start = min(s.started_at for s in timed if s.started_at is not None)
    ends = [
        (s.started_at - start).total_seconds() * 1000 + (s.duration_ms or 0)
        for s in timed
        if s.started_at is not None
    ]
    span = max(max(ends), 1.0)
    bars = {}
    for s in timed:
        assert s.started_at is not None
        offset = (s.started_at - start).total_seconds() * 1000
        x = int(1000 * offset / span)
        bars[s.step_no] = (min(x, 999), max(int(1000 * (s.duration_ms or 0) / span), 2))
    return bars


def stored_value(text: str | None, size: int | None = None) -> ValueView:
    """A stored value for display: pretty JSON when it is JSON, a claim-check reference
    as such (not fetched), cut at :data:`VALUE_MAX_CHARS` characters."""
    if text is None:
        return ValueView("none")
    full = len(text) if size is None else size
    if is_reference(text):
        ref = BlobRef.parse(text)
        if ref is not None:
            return ValueView("claim-check", size=ref.size, blob_key=ref.key)
    truncated = full > VALUE_MAX_CHARS or len(text) > VALUE_MAX_CHARS
    shown = text[:VALUE_MAX_CHARS]
    if not truncated:
        try:
            return ValueView("json", json.dumps(json.loads(text), indent=2), full)
        except ValueError:
            pass
    return ValueView("text", shown, full, truncated)


def _strip(slot_map: SlotMap, colors: dict[str, str]) -> list[StripRun]:
    runs: list[StripRun] = []
    for slot, owner in enumerate(slot_map.owners):
        source = slot_map.source(slot)
        last = runs[-1] if runs else None
        if last is not None and last.owner == owner and last.moving_from == source:
            runs[-1] = StripRun(last.first, slot, owner, last.color, source)
        else:
            runs.append(StripRun(slot, slot, owner, colors.get(owner, "#888888"), source))
    return runs


def _queues(cluster: Cluster, shards: list[ShardView]) -> list[QueueView]:
    views = []
    for name, queue in sorted(cluster.config.queues.items()):
        loads = [s.info.queues[name] for s in shards if s.info and name in s.info.queues]
        rate = queue.rate_limit
        views.append(
            QueueView(
                name,
                queue.concurrency,
                queue.worker_concurrency,
                None if rate is None else f"{rate.limit} per {rate.period_seconds:g}s",
                sum(q.ready for q in loads),
                sum(q.running for q in loads),
            )
        )
    return views


def _rebalance(slot_map: SlotMap, plan: LatestPlan | None) -> RebalanceView | None:
    if plan is None:
        return None
    try:
        target = SlotMap.from_ranges(0, plan.target, slot_map.slots)
    except ShardflowError:
        return None
    left = sum(
        1
        for slot, owner in enumerate(slot_map.owners)
        if owner != target.owners[slot] or slot in slot_map.migrating
    )
    return RebalanceView(plan, left)


def _parallel(names: Sequence[str], read: Callable[[str], T]) -> list[T]:
    with ThreadPoolExecutor(max(len(names), 1), thread_name_prefix="shardflow-ui") as pool:
        return list(pool.map(read, names))


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
