"""Listing workflows across shards: a parallel scatter-gather with keyset pagination.

Each shard returns its next ``limit`` rows after the cursor (newest first, keyset on
``(created_at, workflow_id)``, never OFFSET); :func:`merge_pages`, a pure function,
merges them into one page and its cursor. :func:`scatter_plan` is the scatter-gather
as a plan (:mod:`~shardflow.engine.driving`), so the sync and the async client list
with the same code.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from shardflow.config.model import ClusterConfig
from shardflow.engine.driving import Plan, Read, Together, retried
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.handles import Page
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import statements
from shardflow.engine.store.statements import Statement
from shardflow.errors import ShardUnavailable


class Listed(Protocol):
    """What the merge orders by."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def workflow_id(self) -> str: ...


L = TypeVar("L", bound=Listed)


def encode_cursor(created_at: datetime, workflow_id: str) -> str:
    """The cursor of the page that ends at ``(created_at, workflow_id)``."""
    raw = json.dumps([created_at.isoformat(), workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, workflow_id)`` a cursor continues after. Raises ValueError (one
    line) for anything :func:`encode_cursor` did not make."""
    try:
        created, wid = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(created, str) or not isinstance(wid, str):
            raise TypeError("not a cursor")
        after = datetime.fromisoformat(created)
        if after.tzinfo is None:
            raise TypeError("not a cursor")
        return after, wid
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("invalid cursor: use one a previous page returned, unchanged") from None


def merge_pages(pages: Sequence[Sequence[L]], limit: int) -> tuple[list[L], str | None]:
    """Merge per-shard pages (each newest first, each at most ``limit`` rows) into the
    first ``limit`` rows overall and the cursor of the next page (None if none follows).

    Rows order by ``(created_at, workflow_id)``, descending, so equal timestamps still
    order one way on every call. More may follow if the shards returned more than a page
    in all, or if one shard filled its page (it may hold more behind it).
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")

    def key(row: L) -> tuple[datetime, str]:
        return (row.created_at, row.workflow_id)

    merged = list(heapq.merge(*pages, key=key, reverse=True))[:limit]
    more = sum(len(p) for p in pages) > limit or any(len(p) >= limit for p in pages)
    last = merged[-1] if merged and more else None
    return merged, None if last is None else encode_cursor(last.created_at, last.workflow_id)


# One shard's next page: (shard, keyset position to continue after, limit) -> statement.
PageRead = Callable[[str, tuple[datetime, str] | None, int], Statement[list[WorkflowStatus]]]


def scatter_plan(
    shards: Sequence[str],
    read: PageRead,
    *,
    limit: int,
    cursor: str | None,
    skip_unavailable: bool,
    retry_seconds: float,
) -> Plan[Page]:
    """One page of the workflows of ``shards``, newest first: every shard's next page
    (``read``) side by side, merged. A shard's read is retried through an outage for
    ``retry_seconds`` (ShardUnavailable after), or with ``skip_unavailable`` for a second
    only (leaving a shard out is the caller's choice: do not wait long for it), after
    which the shard is left out and named in ``Page.unavailable``."""
    # Checked at the call, before the plan runs.
    if limit < 1:
        raise ValueError("limit must be >= 1")
    after = decode_cursor(cursor) if cursor else None
    seconds = 1.0 if skip_unavailable else retry_seconds
    return _scatter(shards, read, after, limit, seconds, skip_unavailable)


def _scatter(
    shards: Sequence[str],
    read: PageRead,
    after: tuple[datetime, str] | None,
    limit: int,
    seconds: float,
    skip_unavailable: bool,
) -> Plan[Page]:
    down: list[str] = []

    def read_once(shard: str) -> Plan[list[WorkflowStatus]]:
        rows: list[WorkflowStatus] = yield Read(shard, read(shard, after, limit))
        return rows

    def page(shard: str) -> Plan[list[WorkflowStatus]]:
        try:
            return (yield from retried(lambda: read_once(shard), seconds))
        except ShardUnavailable:
            if not skip_unavailable:
                raise
            down.append(shard)
            return []

    pages: list[list[WorkflowStatus]] = yield Together([page(s) for s in shards])
    items, next_cursor = merge_pages(pages, limit)
    return Page(items, next_cursor, tuple(sorted(down)))


def filtered_plan(
    codec: Codec,
    shards: Sequence[str],
    filters: WorkflowFilter,
    *,
    limit: int,
    cursor: str | None,
    skip_unavailable: bool,
    retry_seconds: float,
) -> Plan[Page]:
    """One page of the workflows of ``shards`` matching ``filters`` (any of them: ID
    prefix, creation-time range, parent, fork source, app version...), newest first."""

    def read(
        shard: str, after: tuple[datetime, str] | None, limit: int
    ) -> Statement[list[WorkflowStatus]]:
        return statements.list_filtered(shard, codec, filters, after, limit)

    return scatter_plan(
        shards,
        read,
        limit=limit,
        cursor=cursor,
        skip_unavailable=skip_unavailable,
        retry_seconds=retry_seconds,
    )


class Lister(Protocol):
    """What a listing uses of the client (:class:`~shardflow.engine.cluster.Cluster`)."""

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def retry_seconds(self) -> float: ...


def query_plan(
    client: Lister,
    state: str | WorkflowState | None = None,
    name: str | None = None,
    queue: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    skip_unavailable: bool = False,
    *,
    id_prefix: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    parent_id: str | None = None,
    forked_from: str | None = None,
    app_version: str | None = None,
    filters: WorkflowFilter | None = None,
) -> Plan[Page]:
    """:meth:`Cluster.list_workflows` (the same arguments) as a plan, which the sync
    client drives and the async client awaits. Wrong arguments raise here, before the
    plan runs."""
    named = (
        state,
        name,
        queue,
        id_prefix,
        created_after,
        created_before,
        parent_id,
        forked_from,
        app_version,
    )
    if filters is not None and any(v is not None for v in named):
        raise ValueError("list_workflows: pass filters= or the single filters, not both")
    if filters is None and any(v is not None for v in named[3:]):
        filters = WorkflowFilter(WorkflowState(state) if state is not None else None, *named[1:])
    shards, codec = client.config.shard_names, client.codec
    if filters is not None and not filters.is_empty:
        return filtered_plan(
            codec,
            shards,
            filters,
            limit=limit,
            cursor=cursor,
            skip_unavailable=skip_unavailable,
            retry_seconds=client.retry_seconds,
        )
    # By state, name and queue only: the statement those three columns' indexes serve.
    state_value = WorkflowState(state).value if state is not None else None

    def read(
        shard: str, after: tuple[datetime, str] | None, limit: int
    ) -> Statement[list[WorkflowStatus]]:
        return statements.list_page(
            shard, codec, state=state_value, name=name, queue=queue, after=after, limit=limit
        )

    return scatter_plan(
        shards,
        read,
        limit=limit,
        cursor=cursor,
        skip_unavailable=skip_unavailable,
        retry_seconds=client.retry_seconds,
    )
