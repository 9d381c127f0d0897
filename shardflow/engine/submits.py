"""Placing a submit's rows: plain rows in one insert per shard (:meth:`Locator.place`),
debounced ones (docs/queues.md#debounce) one by one with an upsert that keeps one
pending run per workflow name and debounce key."""

from __future__ import annotations

import functools

from shardflow.engine.locator import Locator
from shardflow.engine.records import NewWorkflow
from shardflow.engine.store import Store
from shardflow.errors import WorkflowConflict
from shardflow.retry import with_retries


def place_rows(
    locator: Locator, store: Store, rows: list[NewWorkflow], retry_seconds: float
) -> dict[str, tuple[str, str]]:
    """Place ``rows``; returns, per row's ID, ``(ID of the workflow it names, shard)``:
    the row's own ID, or for a debounced row the ID of the pending run it updated."""
    check_unique(rows)
    plain = [r for r in rows if r.debounce_key is None]
    # Every ID is fixed before the first attempt, and an insert of an ID that exists
    # does nothing: a retry after a lost commit answer never creates a second one.
    shards = with_retries(lambda: locator.place(plain), retry_seconds) if plain else {}
    out = {wid: (wid, shard) for wid, shard in shards.items()}
    for row in rows:
        if row.debounce_key is not None:
            # A retry upserts again: at worst it pushes the pending run's start back.
            upsert = functools.partial(place_debounced, locator, store, row)
            out[row.workflow_id] = with_retries(upsert, retry_seconds)
    return out


def check_unique(rows: list[NewWorkflow]) -> None:
    """Raise WorkflowConflict if one submit_many names an ID twice."""
    ids = [r.workflow_id for r in rows]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise WorkflowConflict(f"workflow id {dup!r} appears twice in one submit_many")


def place_debounced(locator: Locator, store: Store, row: NewWorkflow) -> tuple[str, str]:
    """Create or replace the pending run of ``row``'s debounce key, following the slot
    across moves; returns ``(workflow ID of the pending run, shard)``."""
    pending: dict[str, str] = {}

    def upsert(shard: str, group: list[NewWorkflow], _checked: set[str]) -> set[str]:
        accepted: set[str] = set()
        for r in group:
            found = store.debounce(shard, r)
            if found is not None:
                pending[r.workflow_id] = found
                accepted.add(r.workflow_id)
        return accepted

    # A slot being imported is waited for, so that a key's pending run is in one place.
    placed = locator.place([row], upsert, creates_while_importing=False)
    return pending[row.workflow_id], placed[row.workflow_id]
