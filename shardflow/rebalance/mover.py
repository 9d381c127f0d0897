"""The per-workflow move protocol, run over two :class:`ShardLink` s.

Moving a batch of idle workflows of some slots from shard A to shard B (design guide §5,
docs/rebalancing.md has the crash table)::

    A: BEGIN; lock idle rows FOR UPDATE SKIP LOCKED; read their child rows    (1)
    B: BEGIN; stage copies (IMPORTING, move_id) with child rows; COMMIT       (2)
    A: tombstone the rows in place (MOVED, moved_to=B, move_id); delete       (3)
       their child rows; COMMIT  <- the one decision point
    B: activate the copies (their real state); anyone may do this             (4)

Recovery for a staged copy on B looks at A's row: a tombstone of the same move ->
activate; a live row -> discard the copy; no row, or a row someone holds right now ->
leave it (never delete data when unsure; never wait on a workflow's row lock): the rule
is :func:`shardflow.router.moves.copy_verdict`. Every SQL statement the rebalancer runs is
here or in :mod:`shardflow.rebalance.link` (slot ownership, the map copy, plans, counts),
as a named query.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import psycopg

from shardflow.errors import RebalanceError
from shardflow.rebalance.link import Conn, PlanRecord, ShardLink
from shardflow.router.moves import STAGED, SourceRow, Verdict, copy_verdict
from shardflow.sql import query

log = logging.getLogger(__name__)

__all__ = [  # PlanRecord and ShardLink: where they were before rebalance.link
    "BATCH_BYTES",
    "PAGE_BYTES",
    "BatchOutcome",
    "MoveStep",
    "PlanRecord",
    "Recovery",
    "ShardLink",
    "StepHook",
    "activate",
    "move_batch",
    "move_slots",
    "recover_staged",
]


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
    SETTLED = "settled"  # every slot of the plan settled, the plan not yet recorded done


StepHook = Callable[[MoveStep], None]

# A batch stops at about this many bytes of rows (as JSON); rows are copied in pages of
# about PAGE_BYTES, one staging statement each (see move_batch).
BATCH_BYTES = 64 * 1024 * 1024
PAGE_BYTES = 8 * 1024 * 1024


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


def move_slots(
    source: ShardLink,
    target: ShardLink,
    links: Mapping[str, ShardLink],
    slots: Sequence[int],
    batch: int,
    on_step: StepHook | None = None,
    *,
    max_bytes: int = BATCH_BYTES,
    page_bytes: int = PAGE_BYTES,
    on_moved: Callable[[int], object] | None = None,
) -> int:
    """Move the idle workflows of ``slots`` from ``source`` to ``target`` in batches of
    ``batch`` (:func:`move_batch`) until none is left idle; returns how many moved.
    ``on_moved`` hears each batch's count (progress, throttling).

    A locked row the target refuses has a staged copy there already (an earlier run
    died after step 2 or 3): the recovery rule resolves it (asking its source among
    ``links``), or, if its source row is busy right now, it is left for a later pass. A
    refused row that is live on the target would be a duplicate, which no protocol step
    produces: that stops the run.
    """
    moved = 0
    later: set[str] = set()
    while True:
        outcome = move_batch(
            source,
            target,
            slots,
            batch,
            on_step,
            later,
            max_bytes=max_bytes,
            page_bytes=page_bytes,
        )
        moved += outcome.moved
        if on_moved is not None:
            on_moved(outcome.moved)
        if outcome.refused:
            states = target.states_of(outcome.refused)
            live = sorted(w for w, state in states.items() if state != STAGED)
            if live:
                raise RebalanceError(
                    f"workflow {live[0]!r} is live on both {source.name} and {target.name};"
                    " it cannot move until an operator resolves the duplicate"
                )
            recover_staged(target, links, slots)
            still = target.states_of(outcome.refused)
            later.update(w for w, state in still.items() if state == STAGED)
            continue
        if outcome.moved + outcome.deferred < batch:
            return moved


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


def _hook(on_step: StepHook | None, step: MoveStep) -> None:
    if on_step is not None:
        on_step(step)
