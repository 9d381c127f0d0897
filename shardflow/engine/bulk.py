"""Filtered listing and bulk cancel/resume across every shard.

:meth:`Cluster.list_workflows` with a filter, :meth:`Cluster.cancel_many` and
:meth:`Cluster.resume_many` delegate here. A listing is a parallel scatter-gather of
keyset pages (``(created_at, workflow_id)``, never OFFSET) merged newest first; its
cursor has the same form as an unfiltered listing's. A bulk action goes shard by shard,
in batches of ``batch`` workflows, each batch one transaction (rows locked in ID order,
the state re-checked on the locked row, as a single cancel or resume does); a dry run
only counts. A workflow that a running rebalance moves to a shard already processed may
be missed: run the action again (it only touches what still matches).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from shardflow.config.model import ClusterConfig
from shardflow.engine.driving import drive
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.handles import Page
from shardflow.engine.listing import filtered_plan
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.engine.store.admin import ACTIVE, RESUMABLE, AdminStore, FailureGroup
from shardflow.engine.store_errors import DedupConflict
from shardflow.errors import WorkflowDeduplicated
from shardflow.retry import with_retries
from shardflow.router.pools import ShardPools

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500
T = TypeVar("T")


class Cluster(Protocol):
    """What bulk actions use of the client (:class:`~shardflow.engine.cluster.Cluster`)."""

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def pools(self) -> ShardPools: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def retry_seconds(self) -> float: ...

    def cancel_children(self, workflow_id: str, reason: str) -> int: ...

    def wake_parent_of(self, workflow_id: str) -> bool: ...

    def resume(self, workflow_id: str) -> WorkflowStatus: ...


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did (or, with ``dry_run``, would do), shard by shard."""

    action: str  # "cancel" or "resume"
    filters: WorkflowFilter
    dry_run: bool
    # Workflows acted on (a dry run: matching and in a state the action applies to).
    per_shard: dict[str, int] = field(default_factory=dict)
    # Workflows left as they were, with why (a resume whose dedup key is taken).
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_shard.values())


def admin_store(cluster: Cluster) -> AdminStore:
    return AdminStore(cluster.pools, cluster.codec)


def list_workflows(
    cluster: Cluster,
    filters: WorkflowFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    skip_unavailable: bool = False,
) -> Page:
    """Workflows of all shards matching ``filters``, newest first, ``limit`` at a time."""
    plan = filtered_plan(
        cluster.codec,
        cluster.config.shard_names,
        filters,
        limit=limit,
        cursor=cursor,
        skip_unavailable=skip_unavailable,
        retry_seconds=cluster.retry_seconds,
    )
    return drive(plan, Store(cluster.pools, cluster.codec))


def count_matching(
    cluster: Cluster, filters: WorkflowFilter, states: Sequence[str] | None = None
) -> dict[str, int]:
    """``{shard: n}``: workflows matching ``filters`` (and in one of ``states``, default
    any listable state) on each shard."""
    store = admin_store(cluster)
    wanted = (
        list(states) if states is not None else [*ACTIVE, *RESUMABLE, WorkflowState.SUCCESS.value]
    )
    names = cluster.config.shard_names
    counts = _on_every_shard(
        cluster,
        lambda shard: with_retries(
            lambda: store.count_matching(shard, filters, wanted), cluster.retry_seconds
        ),
    )
    return dict(zip(names, counts, strict=True))


def cancel_many(
    cluster: Cluster,
    filters: WorkflowFilter,
    *,
    reason: str = "cancelled",
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> BulkResult:
    """Cancel every active workflow matching ``filters`` (and, as :meth:`Cluster.cancel`
    does, their children; a parent waiting for one is woken)."""
    _check_bulk(filters, batch)
    if dry_run:
        return BulkResult("cancel", filters, True, count_matching(cluster, filters, ACTIVE))
    store = admin_store(cluster)
    result = BulkResult("cancel", filters, False)
    for shard in cluster.config.shard_names:
        done = 0
        while True:
            rows = with_retries(
                functools.partial(store.cancel_matching, shard, filters, batch, reason),
                cluster.retry_seconds,
            )
            done += len(rows)
            for row in rows:
                if row.has_children:
                    cluster.cancel_children(row.workflow_id, reason)
                if row.parent_id is not None:
                    cluster.wake_parent_of(row.workflow_id)
            if len(rows) < batch:
                break
        result.per_shard[shard] = done
        log.info("bulk cancel: %d workflow(s) on %s (%s)", done, shard, filters.describe())
    return result


def resume_many(
    cluster: Cluster,
    filters: WorkflowFilter,
    *,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> BulkResult:
    """Re-queue every CANCELLED, ERROR or DEAD workflow matching ``filters`` from its
    last checkpoint. One whose dedup key an active workflow holds now is skipped and
    named in :attr:`BulkResult.skipped`."""
    _check_bulk(filters, batch)
    if dry_run:
        return BulkResult("resume", filters, True, count_matching(cluster, filters, RESUMABLE))
    store = admin_store(cluster)
    result = BulkResult("resume", filters, False)
    for shard in cluster.config.shard_names:
        done = 0
        while True:
            try:
                ids = with_retries(
                    functools.partial(store.resume_matching, shard, filters, batch),
                    cluster.retry_seconds,
                )
            except DedupConflict:
                # One of the batch would take a dedup key that is in use: go one by one.
                done += _resume_one_by_one(cluster, store, shard, filters, result.skipped)
                break
            done += len(ids)
            if len(ids) < batch:
                break
        result.per_shard[shard] = done
        log.info("bulk resume: %d workflow(s) on %s (%s)", done, shard, filters.describe())
    return result


def failures(
    cluster: Cluster, *, within_seconds: float = 86400.0, limit: int = 50
) -> list[FailureGroup]:
    """Recent ERROR and DEAD workflows of every shard, grouped by workflow name and
    error type, largest groups first."""
    store = admin_store(cluster)
    groups = _on_every_shard(
        cluster,
        lambda shard: with_retries(
            lambda: store.failures(shard, within_seconds, limit), cluster.retry_seconds
        ),
    )
    merged = [g for per_shard in groups for g in per_shard]
    merged.sort(key=lambda g: (-g.count, g.name, g.error_type, g.shard))
    return merged[:limit]


def _check_bulk(filters: WorkflowFilter, batch: int) -> None:
    if filters.is_empty:
        raise ValueError("a bulk action needs at least one filter (state, name, queue, ...)")
    if batch < 1:
        raise ValueError("batch must be >= 1")


def _resume_one_by_one(
    cluster: Cluster,
    store: AdminStore,
    shard: str,
    filters: WorkflowFilter,
    skipped: dict[str, str],
) -> int:
    done = 0
    after: tuple[datetime, str] | None = None
    while True:
        page = store.list_filtered(shard, filters, after, DEFAULT_BATCH)
        for status in page:
            if status.state.value not in RESUMABLE:
                continue
            try:
                cluster.resume(status.workflow_id)
                done += 1
            except WorkflowDeduplicated as exc:
                skipped[status.workflow_id] = str(exc)
        if len(page) < DEFAULT_BATCH:
            return done
        after = (page[-1].created_at, page[-1].workflow_id)


def _on_every_shard(cluster: Cluster, read: Callable[[str], T]) -> list[T]:
    names = cluster.config.shard_names
    with ThreadPoolExecutor(max(len(names), 1)) as pool:
        return list(pool.map(read, names))
