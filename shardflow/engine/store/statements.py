"""Store operations as values (sans I/O): a named query, its parameters, a row factory
and how the rows become the answer. The sync store (:meth:`ShardAccess.execute`) and
the async one (:class:`~shardflow.engine.store.aio.AsyncStore`) run the same
:class:`Statement`, so an operation both clients use is written once.

Each builder here is the body of one store method; the method of the same name in
:class:`~shardflow.engine.store.Store` runs it on a pooled connection. An operation of
several statements in one transaction is a :data:`Transaction`: a generator that
yields its statements and receives their answers (``Store.transact`` and
``AsyncStore.transact`` run it inside ``BEGIN ... COMMIT`` on one connection).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.rows import RowFactory, class_row, kwargs_row, scalar_row, tuple_row

from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import NewWorkflow, WorkflowStatus
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store.rows import (
    Delivery,
    Existing,
    Located,
    SlotHolding,
    Target,
    located_rows,
)
from shardflow.engine.store_errors import DedupConflict
from shardflow.errors import WorkflowNotFound
from shardflow.router.slotmap import SlotMap
from shardflow.sql.identity import Identity

T = TypeVar("T")


def _reraise(exc: psycopg.Error) -> Any:
    raise exc


@dataclass(frozen=True, slots=True)
class Statement(Generic[T]):
    """One named query on one shard: ``answer(rows)`` is the operation's result.

    ``catch``: a driver error the operation turns into its own answer or error
    (``caught(exc)``) before the store's classification sees it. ``prepare=False``:
    never a prepared statement (a custom plan per call, for queries whose optional
    filters a generic plan could not see); None: psycopg's default."""

    name: str
    params: Mapping[str, Any] | None
    rows: RowFactory[Any]
    answer: Callable[[list[Any]], T]
    catch: type[psycopg.Error] | None = None
    caught: Callable[[psycopg.Error], T] = _reraise
    prepare: bool | None = None


# Statements run in one transaction, in order; the generator's return value is the answer.
Transaction = Generator[Statement[Any], Any, T]


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _identity(*, cluster_name: str, shard_name: str, slots: int, hash_seed: int) -> Identity:
    return Identity(cluster_name, shard_name, slots, hash_seed)


def _never_migrated(exc: psycopg.Error) -> None:
    return None


def identity() -> Statement[Identity | None]:
    """The shard's recorded identity; None if it was never migrated."""
    return Statement(
        "get_identity",
        None,
        kwargs_row(_identity),
        _first,
        psycopg.errors.UndefinedTable,
        _never_migrated,
    )


def slot_map_full(slots: int) -> Statement[SlotMap | None]:
    """The shard's copy of the slot map, with the slots in motion."""

    def make(*, epoch: int, ranges: Any, migrating: Any) -> SlotMap:
        return SlotMap.from_ranges(int(epoch), ranges, slots, migrating=migrating)

    return Statement("get_slot_map_full", None, kwargs_row(make), _first)


def find_copy(shard: str, codec: Codec, workflow_id: str) -> Statement[Located | None]:
    """The workflow's row on ``shard`` (tombstone or staged copy included)."""
    return Statement(
        "get_workflow",
        {"workflow_id": workflow_id},
        located_rows(shard, codec),
        _first,
    )


def _holding(*, slot: int, state: str, peer: str | None) -> tuple[int, SlotHolding]:
    return slot, SlotHolding(state, peer)


def slot_states(slots: Sequence[int]) -> Statement[dict[int, SlotHolding]]:
    """This shard's part in each of the given slots it has any part in."""
    return Statement("slot_states_among", {"slots": list(slots)}, kwargs_row(_holding), dict)


def _existing(*, workflow_id: str, name: str, state: str, moved_to: str | None) -> Any:
    return workflow_id, Existing(name, state, moved_to)


def existing(workflow_ids: Sequence[str]) -> Statement[dict[str, Existing]]:
    """The given IDs present on a shard (tombstones included)."""
    return Statement(
        "existing_workflows", {"workflow_ids": list(workflow_ids)}, kwargs_row(_existing), dict
    )


def _dedup(exc: psycopg.Error) -> set[str]:
    raise DedupConflict(str(exc).splitlines()[0]) from exc


def insert_workflows(
    rows: Sequence[NewWorkflow], source_checked: Collection[str] = ()
) -> Statement[set[str]]:
    """Insert ``rows`` where the shard owns the slot; the answer is the IDs created (a
    dedup key taken raises DedupConflict).

    In a slot the shard is importing, only IDs in ``source_checked`` (looked up on the
    slot's source first, and absent there) are created."""
    document = json.dumps(
        [
            {
                "workflow_id": r.workflow_id,
                "slot": r.slot,
                "route_hash": r.route_hash,
                "name": r.name,
                "queue": r.queue,
                "priority": r.priority,
                "inputs": r.inputs,
                "delay_seconds": r.delay_seconds,
                "timeout_seconds": r.timeout_seconds,
                "dedup_key": r.dedup_key,
                "parent_id": r.parent_id,
                "trace_context": r.trace_context,
                "partition_key": r.partition_key,
                "source_checked": r.workflow_id in source_checked,
            }
            for r in rows
        ],
        separators=(",", ":"),
    )
    return Statement(
        "insert_workflows",
        {"rows": document},
        scalar_row,
        lambda created: {str(c) for c in created},
        psycopg.errors.UniqueViolation,
        _dedup,
    )


def get_event(codec: Codec, workflow_id: str, key: str) -> Statement[tuple[bool, Any]]:
    """``(True, value)`` of a published event; ``(False, None)`` if not published."""

    def answer(rows: list[Any]) -> tuple[bool, Any]:
        return (False, None) if not rows else (True, codec.loads(rows[0]))

    return Statement("get_event", {"workflow_id": workflow_id, "key": key}, scalar_row, answer)


def send_message(
    workflow_id: str, topic: str, message_id: str, payload: str
) -> Transaction[Delivery]:
    """Deliver a message. Locks the target's status row first; a tombstone means the
    workflow moved (``Delivery("moved", shard)``); WorkflowNotFound if there is no row."""
    target: Target | None = yield Statement(
        "lock_target", {"workflow_id": workflow_id}, class_row(Target), _first
    )
    if target is None:
        raise WorkflowNotFound(workflow_id)
    if target.state == "MOVED":
        return Delivery("moved", target.moved_to)
    message = {
        "workflow_id": workflow_id,
        "topic": topic,
        "message_id": message_id,
        "payload": payload,
    }
    inserted: bool = yield Statement("insert_message", message, tuple_row, bool)
    if not inserted:
        return Delivery("duplicate")
    yield Statement("notify_message", {"workflow_id": workflow_id}, tuple_row, bool)
    wake = {"workflow_id": workflow_id, "wait_for": f"message:{topic}"}
    if target.state == WorkflowState.SUSPENDED:
        yield Statement("wake_workflow", wake, tuple_row, bool)
    elif target.state == WorkflowState.IMPORTING:
        # A staged copy whose move is decided (the source's tombstone sent this here):
        # it wakes when it is activated.
        yield Statement("wake_staged_copy", wake, tuple_row, bool)
    return Delivery("sent")


# -- listing (one keyset page of one shard) -----------------------------------------------


def _statuses(rows: list[Located]) -> list[WorkflowStatus]:
    return [r.status for r in rows]


def list_page(
    shard: str,
    codec: Codec,
    *,
    state: str | None,
    name: str | None,
    queue: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Statement[list[WorkflowStatus]]:
    """The next ``limit`` workflows of ``shard`` after the keyset position ``after``
    (``(created_at, workflow_id)``), newest first, narrowed by state, name and queue."""
    params = {
        "state": state,
        "name": name,
        "queue": queue,
        "after_created": after[0] if after else None,
        "after_id": after[1] if after else None,
        "limit": limit,
    }
    return Statement("list_workflows", params, located_rows(shard, codec), _statuses)


def list_filtered(
    shard: str,
    codec: Codec,
    filters: WorkflowFilter,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Statement[list[WorkflowStatus]]:
    """The next ``limit`` workflows of ``shard`` matching ``filters`` after the keyset
    position ``after``, newest first."""
    params = filters.sql_params()
    params.update(
        after_created=after[0] if after else None,
        after_id=after[1] if after else None,
        limit=limit,
    )
    # Unprepared: a generic plan could not see which filters are set.
    return Statement(
        "admin_list_workflows", params, located_rows(shard, codec), _statuses, prepare=False
    )


# -- control (each write locks the row and checks its state) --------------------------------


def cancel(workflow_id: str, reason: str) -> Statement[bool]:
    """Cancel an active workflow; False if it is not active here (ended, or moved)."""
    params = {"workflow_id": workflow_id, "reason": reason}
    return Statement("cancel_workflow", params, tuple_row, bool)


def resume(workflow_id: str) -> Transaction[bool]:
    """Re-queue a CANCELLED, ERROR or DEAD workflow and drop its failed last step (it
    runs again); False if it is in none of those states here. DedupConflict if its dedup
    key is held by an active workflow now (nothing changes)."""
    params = {"workflow_id": workflow_id}
    resumed: bool = yield Statement(
        "resume_workflow", params, tuple_row, bool, psycopg.errors.UniqueViolation, _dedup
    )
    if resumed:
        yield Statement("drop_failed_last_step", params, tuple_row, bool)
    return resumed


def wake(workflow_id: str, wait_for: str | None) -> Statement[bool]:
    """Wake a suspended workflow now (if it waits for ``wait_for``); whether it did."""
    params = {"workflow_id": workflow_id, "wait_for": wait_for}
    return Statement("wake_workflow", params, tuple_row, bool)


def child_ids(codec: Codec, workflow_id: str) -> Statement[list[str]]:
    """The IDs of the children a workflow recorded starting."""

    def answer(outputs: list[Any]) -> list[str]:
        return [str(codec.loads(o)) for o in outputs]

    return Statement("child_ids", {"workflow_id": workflow_id}, scalar_row, answer)
