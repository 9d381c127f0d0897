"""The rebalancer's storage boundary: slot transitions and the per-workflow move protocol.

Moving a batch of idle workflows of some slots from shard A to shard B (design guide §5,
docs/rebalancing.md has the crash table)::

    A: BEGIN; lock idle rows FOR UPDATE SKIP LOCKED; read their child rows    (1)
    B: BEGIN; stage copies (IMPORTING, move_id) with child rows; COMMIT       (2)
    A: tombstone the rows in place (MOVED, moved_to=B, move_id); delete       (3)
       their child rows; COMMIT  <- the one decision point
    B: activate the copies (their real state); anyone may do this             (4)

Recovery for a staged copy on B looks at A's row: a tombstone of the same move ->
activate; a live row -> discard the copy; no row, or a row someone holds right now ->
leave it (never delete data when unsure; never wait on a workflow's row lock). Every
SQL statement the rebalancer runs is here, as a named query.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.errors import RebalanceError
from shardflow.rebalance.live import Ownership
from shardflow.router.moves import SlotState, SourceRow, Verdict, copy_verdict
from shardflow.router.pools import REBALANCER_LIMITS, dedicated
from shardflow.router.slotmap import SlotMap
from shardflow.sql import query
from shardflow.sql.identity import check_identity
from shardflow.sql.migrator import read_identity

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


class MoveStep(str, enum.Enum):
    """Points of the protocol; tests inject crashes at them through ``on_step``."""

    LOCKED = "locked"  # (1) done, nothing committed
    STAGED = "staged"  # (2) committed on the target
    TOMBSTONED = "tombstoned"  # (3) committed on the source: decided
    ACTIVATED = "activated"  # (4) committed on the target
    # Slot transitions (shardflow.rebalance.apply):
    IMPORTING_MARKED = "importing-marked"  # target IMPORTING, source not yet MIGRATING_OUT
    OWNED_MARKED = "owned-marked"  # target OWNED, source still MIGRATING_OUT
    PUBLISHED = "published"  # a new map epoch written to every shard


StepHook = Callable[[MoveStep], None]

# A batch stops at about this many bytes of rows (as JSON); rows are copied in pages of
# about PAGE_BYTES, one staging statement each (see move_batch).
BATCH_BYTES = 64 * 1024 * 1024
PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan as recorded on the shards (``rebalance_plans``)."""

    plan_id: str
    base_epoch: int
    target: list[list[int | str]]
    moves: int
    created_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one transaction pair did: workflows moved, locked rows the target refused
    because it holds that ID already (a leftover copy: recover, then retry), and locked
    rows left for the next batch because the batch reached its size bound."""

    moved: int
    refused: tuple[str, ...] = ()
    # Locked, but beyond the batch's byte bound: left for the next batch.
    deferred: int = 0


@dataclass(slots=True)
class Recovery:
    """Staged copies resolved by the recovery rule."""

    activated: int = 0
    discarded: int = 0
    unresolved: int = 0

    def __iadd__(self, other: Recovery) -> Recovery:
        self.activated += other.activated
        self.discarded += other.discarded
        self.unresolved += other.unresolved
        return self


class ShardLink:
    """One shard as the rebalancer uses it: a connection for its work, and (after
    :meth:`try_lock`) a second one that holds the cluster-wide rebalance lock."""

    def __init__(
        self, shard: ShardConfig, *, purpose: str = "rebalance", connect_timeout: int = 10
    ) -> None:
        self.shard = shard
        self.name = shard.name
        self._purpose = purpose
        # Keepalives and tcp_user_timeout (a black-holed shard is noticed), a bounded
        # lock wait and idle transaction, no statement timeout.
        self._limits = dataclasses.replace(REBALANCER_LIMITS, connect_timeout=connect_timeout)
        self.conn = dedicated(shard, purpose, self._limits)
        self._lock_conn: Conn | None = None

    def close(self) -> None:
        for conn in (self.conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._lock_conn = None

    def check_identity(self, config: ClusterConfig) -> None:
        check_identity(config, self.name, read_identity(self.conn))

    def try_lock(self) -> bool:
        """Take the rebalance lock of this shard (a session lock on its own connection)."""
        if self._lock_conn is None:
            self._lock_conn = dedicated(self.shard, f"{self._purpose}-lock", self._limits)
        row = self._lock_conn.execute(query("rebalance_try_lock")).fetchone()
        return bool(row and row[0])

    # -- ownership and the map copy ---------------------------------------------------------

    def ownership(self) -> list[Ownership]:
        rows = self.conn.execute(query("slot_ownership")).fetchall()
        return [Ownership(self.name, int(r[0]), SlotState(r[1]), r[2], int(r[3])) for r in rows]

    def slot_map(self, slots: int) -> SlotMap | None:
        row = self.conn.execute(query("get_slot_map_full")).fetchone()
        if row is None:
            return None
        return SlotMap.from_ranges(int(row[0]), row[1], slots, migrating=row[2])

    def publish_map(self, slot_map: SlotMap) -> None:
        self.conn.execute(
            query("put_slot_map_full"),
            {
                "epoch": slot_map.epoch,
                "ranges": Jsonb(slot_map.to_json()),
                "migrating": Jsonb(slot_map.migrating_json()),
            },
        )

    def mark_importing(self, slots: Sequence[int], peer: str, epoch: int) -> set[int]:
        params = {"slots": list(slots), "peer": peer, "epoch": epoch}
        return _slots(self.conn.execute(query("mark_importing"), params))

    def mark_migrating_out(self, slots: Sequence[int], peer: str, epoch: int) -> set[int]:
        params = {"slots": list(slots), "peer": peer, "epoch": epoch}
        return _slots(self.conn.execute(query("mark_migrating_out"), params))

    def mark_owned(self, slots: Sequence[int], epoch: int) -> set[int]:
        params = {"slots": list(slots), "epoch": epoch}
        return _slots(self.conn.execute(query("mark_owned"), params))

    def drop_migrated(self, slots: Sequence[int]) -> set[int]:
        return _slots(self.conn.execute(query("drop_migrated_slots"), {"slots": list(slots)}))

    # -- the recorded plan ------------------------------------------------------------------

    def record_plan(self, plan: PlanRecord) -> None:
        self.conn.execute(query("record_plan"), _plan_params(plan))

    def finish_plan(self, plan: PlanRecord, outcome: str) -> None:
        self.conn.execute(query("finish_plan"), {**_plan_params(plan), "outcome": outcome})

    def plans(self, limit: int = 10) -> list[PlanRecord]:
        rows = self.conn.execute(query("list_plans"), {"limit": limit}).fetchall()
        return [
            PlanRecord(str(r[0]), int(r[1]), list(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows
        ]

    # -- counts -----------------------------------------------------------------------------

    def workflows_in_slots(self, slots: Sequence[int]) -> Counter[str]:
        rows = self.conn.execute(query("workflows_in_slots"), {"slots": list(slots)}).fetchall()
        return Counter({str(r[0]): int(r[1]) for r in rows})

    def row_counts(self, grace_seconds: float) -> tuple[int, int, int]:
        """``(staged copies, tombstones, tombstones past the grace period)``."""
        row = self.conn.execute(
            query("rebalance_row_counts"), {"grace_seconds": grace_seconds}
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    def live_rows_by_slot(self, slots: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``{slot: (live rows, RUNNING rows)}`` for the slots that still hold any."""
        rows = self.conn.execute(query("live_rows_by_slot"), {"slots": list(slots)}).fetchall()
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def staged_slots(self, slots: Sequence[int]) -> set[int]:
        return _slots(self.conn.execute(query("staged_slots"), {"slots": list(slots)}))

    def states_of(self, workflow_ids: Sequence[str]) -> dict[str, str]:
        rows = self.conn.execute(
            query("workflow_states_among"), {"ids": list(workflow_ids)}
        ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def staged_copies(
        self, slots: Sequence[int] | None, limit: int = 10_000
    ) -> list[tuple[str, str, str | None]]:
        """``(workflow_id, move_id, source)`` of staged copies (of ``slots``, or all)."""
        params = {"slots": None if slots is None else list(slots), "limit": limit}
        rows = self.conn.execute(query("staged_copies"), params).fetchall()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def purge_tombstones(self, grace_seconds: float, limit: int = 5000) -> int:
        """Delete tombstones past the grace period, ``limit`` per statement; returns how
        many went."""
        purged = 0
        while True:
            rows = self.conn.execute(
                query("purge_tombstones"), {"grace_seconds": grace_seconds, "limit": limit}
            ).fetchall()
            purged += len(rows)
            if len(rows) < limit:
                return purged


def move_batch(
    source: ShardLink,
    target: ShardLink,
    slots: Sequence[int],
    limit: int,
    on_step: StepHook | None = None,
    exclude: Iterable[str] = (),
    *,
    max_bytes: int = BATCH_BYTES,
    page_bytes: int = PAGE_BYTES,
) -> BatchOutcome:
    """Move up to ``limit`` idle workflows of ``slots`` from ``source`` to ``target`` with
    one transaction pair (steps 1-4). Busy rows, and the IDs in ``exclude``, are left for
    a later batch.

    A batch also stops at about ``max_bytes`` of rows (the first workflow always goes,
    whatever its size); the locked workflows beyond it are left for the next batch.
    Rows are copied in pages of about ``page_bytes``, one staging statement per page.
    """
    move_id = str(uuid.uuid4())
    with source.conn.transaction():
        locked = source.conn.execute(
            query("lock_idle_workflows"),
            {"slots": list(slots), "limit": limit, "exclude": list(exclude)},
        ).fetchall()
        if not locked:
            return BatchOutcome(0)
        ids = _within_bytes([(str(r[0]), int(r[1])) for r in locked], max_bytes)
        _hook(on_step, MoveStep.LOCKED)
        with target.conn.transaction():
            target.conn.execute(query("clear_tombstones_for_staging"), {"ids": ids})
            staged: list[str] = []
            for page in _pages(source.conn, "status_rows", ids, page_bytes):
                staged.extend(
                    str(r[0])
                    for r in target.conn.execute(
                        query("stage_workflows"),
                        {"rows": page, "move_id": move_id, "source": source.name},
                    )
                )
            if staged:
                for rows_query, stage_query in _CHILD_TABLES:
                    for page in _pages(source.conn, rows_query, staged, page_bytes):
                        target.conn.execute(query(stage_query), {"rows": page, "ids": staged})
        _hook(on_step, MoveStep.STAGED)
        if staged:
            params = {"ids": staged, "target": target.name, "move_id": move_id}
            tombstoned = source.conn.execute(query("tombstone_workflows"), params).fetchall()
            if len(tombstoned) != len(staged):  # pragma: no cover - the rows are ours, locked
                raise RebalanceError(f"{source.name}: locked rows changed state during a move")
            source.conn.execute(query("delete_child_rows"), {"ids": staged})
    _hook(on_step, MoveStep.TOMBSTONED)
    activate(target, staged, [move_id] * len(staged))
    _hook(on_step, MoveStep.ACTIVATED)
    refused = tuple(sorted(set(ids) - set(staged)))
    return BatchOutcome(len(staged), refused, deferred=len(locked) - len(ids))


# Child tables: (query reading them on the source, query staging them on the target).
# A new per-workflow table needs a pair here and its rows deleted by delete_child_rows.
_CHILD_TABLES = (
    ("step_rows", "stage_steps"),
    ("message_rows", "stage_messages"),
    ("event_rows", "stage_events"),
)


def _within_bytes(locked: Sequence[tuple[str, int]], max_bytes: int) -> list[str]:
    """The first locked workflows whose estimated sizes add up to at most ``max_bytes``
    (at least one: a workflow larger than the bound moves alone)."""
    chosen: list[str] = []
    total = 0
    for workflow_id, size in locked:
        if chosen and total + size > max_bytes:
            break
        chosen.append(workflow_id)
        total += size
    return chosen


def _pages(conn: Conn, name: str, ids: Sequence[str], page_bytes: int) -> Iterator[str]:
    """The rows query ``name`` returns (one JSON text each), grouped into JSON arrays of
    about ``page_bytes`` (a larger row is a page of its own). Read through a server-side
    cursor in the open transaction, so only about a page is in memory at a time."""
    with conn.cursor(name=f"shardflow_{name}") as cursor:
        cursor.execute(query(name), {"ids": list(ids)})
        page: list[str] = []
        size = 0
        fetch = 256
        while rows := cursor.fetchmany(fetch):
            for (text,) in rows:
                if page and size + len(text) > page_bytes:
                    yield "[" + ",".join(page) + "]"
                    page, size = [], 0
                page.append(text)
                size += len(text) + 1
            # Fetch about a page at a time: many small rows, or a few large ones.
            average = max(sum(len(r[0]) for r in rows) // len(rows), 1)
            fetch = max(1, min(1024, page_bytes // average))
        if page:
            yield "[" + ",".join(page) + "]"


def activate(target: ShardLink, ids: Sequence[str], move_ids: Sequence[str]) -> int:
    """Step 4 for decided copies; returns how many were activated now.

    A dedup key may have been taken on the target while its holder was in transit (a
    submit during the move, see docs/rebalancing.md); such a copy is activated without
    its dedup key rather than left stuck.
    """
    if not ids:
        return 0
    try:
        return _activate(target, ids, move_ids, clear_dedup=False)
    except psycopg.errors.UniqueViolation:
        pass
    done = 0
    for workflow_id, move_id in zip(ids, move_ids, strict=True):
        try:
            done += _activate(target, [workflow_id], [move_id], clear_dedup=False)
        except psycopg.errors.UniqueViolation:
            log.warning(
                "workflow %s: its dedup key is held by another workflow on %s; activated"
                " without it",
                workflow_id,
                target.name,
            )
            done += _activate(target, [workflow_id], [move_id], clear_dedup=True)
    return done


def _activate(
    target: ShardLink, ids: Sequence[str], move_ids: Sequence[str], *, clear_dedup: bool
) -> int:
    with target.conn.transaction():
        # Lock first, decide wake-ups in a second statement (a fresh snapshot): see
        # lock_staged_copies.
        target.conn.execute(query("lock_staged_copies"), {"ids": list(ids)})
        rows = target.conn.execute(
            query("activate_copies"),
            {"ids": list(ids), "move_ids": list(move_ids), "clear_dedup": clear_dedup},
        ).fetchall()
    return len(rows)


def recover_staged(
    target: ShardLink,
    links: Mapping[str, ShardLink],
    slots: Sequence[int] | None = None,
    batch: int = 5000,
) -> Recovery:
    """Resolve the staged copies on ``target`` (of ``slots``, or all) by asking their
    sources. Copies whose source cannot answer stay, counted as unresolved."""
    total = Recovery()
    while True:
        copies = target.staged_copies(slots, batch)
        if not copies:
            return total
        found = Recovery()
        by_source: dict[str | None, list[tuple[str, str]]] = {}
        for workflow_id, move_id, source in copies:
            by_source.setdefault(source, []).append((workflow_id, move_id))
        for source_name, items in by_source.items():
            link = links.get(source_name) if source_name else None
            if link is None:
                found.unresolved += len(items)
                continue
            found += _resolve(target, link, items)
        total += found
        if found.activated + found.discarded == 0 or len(copies) < batch:
            return total


def _resolve(target: ShardLink, source: ShardLink, copies: list[tuple[str, str]]) -> Recovery:
    ids = [workflow_id for workflow_id, _ in copies]
    with source.conn.transaction():
        rows = {
            str(r[0]): SourceRow(str(r[1]), None if r[2] is None else str(r[2]))
            for r in source.conn.execute(query("source_rows_for_recovery"), {"ids": ids})
        }
    activate_ids: list[tuple[str, str]] = []
    discard_ids: list[tuple[str, str]] = []
    unresolved = 0
    for workflow_id, move_id in copies:
        verdict = copy_verdict(move_id, rows.get(workflow_id))
        if verdict is Verdict.ACTIVATE:
            activate_ids.append((workflow_id, move_id))
        elif verdict is Verdict.DISCARD:
            discard_ids.append((workflow_id, move_id))
        else:
            unresolved += 1  # busy now, absent, or moving in itself: keep the copy
    if unresolved:
        log.info(
            "%d staged copies on %s have no verdict on %s yet; left in place",
            unresolved,
            target.name,
            source.name,
        )
    activated = activate(target, *_unzip(activate_ids))
    discarded = 0
    if discard_ids:
        ids_, move_ids = _unzip(discard_ids)
        with target.conn.transaction():
            discarded = len(
                target.conn.execute(
                    query("discard_copies"), {"ids": ids_, "move_ids": move_ids}
                ).fetchall()
            )
    return Recovery(activated, discarded, unresolved)


def _unzip(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    firsts: list[str] = []
    seconds: list[str] = []
    for a, b in pairs:
        firsts.append(a)
        seconds.append(b)
    return firsts, seconds


def _slots(cursor: psycopg.Cursor[tuple[Any, ...]]) -> set[int]:
    return {int(r[0]) for r in cursor.fetchall()}


def _hook(on_step: StepHook | None, step: MoveStep) -> None:
    if on_step is not None:
        on_step(step)


def _plan_params(plan: PlanRecord) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "base_epoch": plan.base_epoch,
        "target": Jsonb(plan.target),
        "moves": plan.moves,
        "created_at": plan.created_at,
    }
