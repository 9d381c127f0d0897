"""Listing workflows across shards: a parallel scatter-gather with keyset pagination.

Each shard returns its next ``limit`` rows after the cursor (newest first, keyset on
``(created_at, workflow_id)``, never OFFSET); :func:`merge_pages`, a pure function,
merges them into one page and its cursor.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Protocol, TypeVar

from shardflow.engine.handles import Page
from shardflow.engine.records import WorkflowStatus
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.errors import ShardUnavailable
from shardflow.retry import with_retries


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


def list_workflows(
    store: Store,
    shards: Sequence[str],
    *,
    state: str | WorkflowState | None,
    name: str | None,
    queue: str | None,
    limit: int,
    cursor: str | None,
    skip_unavailable: bool,
    retry_seconds: float,
) -> Page:
    """One page of the workflows of ``shards``, newest first (see
    :meth:`Cluster.list_workflows`)."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    state_value = WorkflowState(state).value if state is not None else None
    after = decode_cursor(cursor) if cursor else None
    down: list[str] = []

    def page(shard: str) -> list[WorkflowStatus]:
        try:
            return with_retries(
                lambda: store.list_page(
                    shard, state=state_value, name=name, queue=queue, after=after, limit=limit
                ),
                # Leaving a shard out is the caller's choice: do not wait long for it.
                1.0 if skip_unavailable else retry_seconds,
            )
        except ShardUnavailable:
            if not skip_unavailable:
                raise
            down.append(shard)
            return []

    with ThreadPoolExecutor(max(len(shards), 1)) as pool:
        pages = list(pool.map(page, shards))
    items, next_cursor = merge_pages(pages, limit)
    return Page(items, next_cursor, tuple(sorted(down)))
