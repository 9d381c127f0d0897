"""Where a workflow is, across moves, and where a new one goes.

Finding (:meth:`Locator.find`): a slot in motion is looked up on its source first, then
on its new owner; a tombstone points to where the workflow went; a shard that does not
hold the ID names the peer it is moving the slot to or from; a staged copy counts only
once its source holds the tombstone (docs/rebalancing.md). Finding only reads:
finishing a decided move is left to a write (:meth:`Locator.find_to_write`) or to the
rebalancer's recovery.

Placing (:meth:`Locator.place`): the one loop that creates workflows, shared by submit,
submit_many, children, fork and cron ticks. It follows slot redirects and keeps IDs
unique across a slot's source and target.

Both are written once, as plans (:mod:`~shardflow.engine.driving`: generators that yield
the reads they need): :meth:`find_plan` and :meth:`place_plan`. The sync client drives
them on its thread (:meth:`find`, :meth:`place`); the async client awaits them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from shardflow.engine.driving import (
    Call,
    Pause,
    Plan,
    Read,
    Together,
    drive,
)
from shardflow.engine.records import NewWorkflow, WorkflowStatus
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import NO_HOLDING, DedupConflict, Located, Store, statements
from shardflow.engine.topology import Topology
from shardflow.errors import RoutingError, WorkflowConflict, WorkflowDeduplicated, WorkflowNotFound
from shardflow.retry import Backoff, idempotent
from shardflow.router.moves import SlotState, SourceRow, Verdict, copy_verdict
from shardflow.router.router import Router

log = logging.getLogger(__name__)

# Lookups follow at most this many tombstones or redirects; placements retry this often.
MAX_HOPS = 4
REDIRECTS = 8

# Creates rows on one shard: (shard, rows, IDs checked absent on the slot's source) ->
# the IDs created. A row it does not create is refused (not this shard's slot) or exists.
Insert = Callable[[str, list[NewWorkflow], set[str]], set[str]]
# The same as a plan (see shardflow.engine.driving), for the drivers to run.
InsertPlan = Callable[[str, list[NewWorkflow], set[str]], Plan[set[str]]]


class Locator:
    """Finds workflows and places new ones; shared by every part of the client."""

    def __init__(
        self, store: Store, router: Router, topology: Topology, retry_seconds: float
    ) -> None:
        self.store = store
        self.router = router
        self.topology = topology
        self.retry_seconds = retry_seconds

    # -- finding --------------------------------------------------------------------------

    @idempotent
    def find(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives. Raises WorkflowNotFound.
        Reads only: a decided staged copy is reported with its real state."""
        return self._find(workflow_id, settle=False)

    @idempotent
    def find_to_write(self, workflow_id: str) -> WorkflowStatus:
        """Like :meth:`find`, for a caller about to write to the workflow's row: a staged
        copy whose move is decided is activated first (step 4 of a move, safe for anyone),
        so that the write meets a runnable row."""
        return self._find(workflow_id, settle=True)

    def _find(self, workflow_id: str, settle: bool) -> WorkflowStatus:
        return drive(self.find_plan(workflow_id, settle), self.store)

    def find_plan(self, workflow_id: str, settle: bool = False) -> Plan[WorkflowStatus]:
        """:meth:`find` (or with ``settle``, :meth:`find_to_write`) as a plan."""
        codec = self.store.codec
        slot = self.router.hasher.slot(workflow_id)
        candidates = self._holders(slot)
        tried: set[str] = set()
        refreshed = False
        for _ in range(REDIRECTS):
            if not candidates:
                if refreshed:
                    break
                refreshed = True
                yield from self.topology.refresh_plan()
                candidates = [s for s in self._holders(slot) if s not in tried]
                if not candidates:
                    break
            shard = candidates.pop(0)
            tried.add(shard)
            found: Located | None = yield Read(
                shard, statements.find_copy(shard, codec, workflow_id)
            )
            if found is None:
                states = yield Read(shard, statements.slot_states([slot]))
                held = states.get(slot, NO_HOLDING)
                state, peer = held.state, held.peer
                moving = state != SlotState.OWNED
                if peer and moving and peer not in tried and peer not in candidates:
                    candidates.append(peer)
                continue
            if found.status.state is WorkflowState.MOVED:
                if found.moved_to:
                    candidates = [found.moved_to]
                continue
            if found.status.state is WorkflowState.IMPORTING:
                staged = yield from self._staged_plan(found, settle)
                if not isinstance(staged, str):
                    return staged
                candidates = [staged]
                continue
            return found.status
        raise WorkflowNotFound(workflow_id)

    def _holders(self, slot: int) -> list[str]:
        """Where to look for an ID of ``slot``: a slot in motion's source, then its owner."""
        slot_map = self.router.slot_map
        source = slot_map.source(slot)
        owner = slot_map.owner(slot)
        return [source, owner] if source is not None and source != owner else [owner]

    def _staged(self, copy: Located, settle: bool) -> WorkflowStatus | str:
        return drive(self._staged_plan(copy, settle), self.store)

    def _staged_plan(self, copy: Located, settle: bool) -> Plan[WorkflowStatus | str]:
        """The status of a workflow found as a staged copy (a move in progress), or the
        shard to look on next.

        The source decides (:func:`~shardflow.router.moves.copy_verdict`): its live row
        is the workflow if the move was not decided (a tombstone of another move points
        to where the workflow went); its tombstone of this very move means the copy is
        the workflow, reported with the state it has once activated. Activating it
        (step 4, safe for anyone) is a write: only with ``settle``. Unsure: the copy's
        own state.
        """
        status, codec = copy.status, self.store.codec
        source: Located | None = None
        if copy.moved_from:
            source = yield Read(
                copy.moved_from, statements.find_copy(copy.moved_from, codec, status.workflow_id)
            )
        row = None if source is None else SourceRow(source.status.state.value, source.move_id)
        verdict = copy_verdict(copy.move_id, row)
        if verdict is Verdict.DISCARD and source is not None and row is not None:
            if row.is_live:
                return source.status
            if source.moved_to:
                return source.moved_to  # a tombstone of another move: follow it
        if settle and verdict is Verdict.ACTIVATE and copy.move_id is not None:
            finish, move_id = self.store.finish_move, copy.move_id
            yield Call(lambda: finish(status.shard, status.workflow_id, move_id))
            after: Located | None = yield Read(
                status.shard, statements.find_copy(status.shard, codec, status.workflow_id)
            )
            if after is not None and after.status.state is not WorkflowState.IMPORTING:
                return after.status
        return dataclasses.replace(
            status, state=WorkflowState(copy.import_state or WorkflowState.ENQUEUED)
        )

    # -- placing --------------------------------------------------------------------------

    def place(
        self,
        rows: list[NewWorkflow],
        insert: Insert | None = None,
        *,
        exists_ok: bool = True,
        creates_while_importing: bool = True,
    ) -> dict[str, str]:
        """Create ``rows`` on their shards, following redirects; returns id -> shard.
        See :meth:`place_plan`."""
        plan = self.place_plan(
            rows,
            None if insert is None else _called(insert),
            exists_ok=exists_ok,
            creates_while_importing=creates_while_importing,
        )
        return drive(plan, self.store)

    def place_plan(
        self,
        rows: list[NewWorkflow],
        insert: InsertPlan | None = None,
        *,
        exists_ok: bool = True,
        creates_while_importing: bool = True,
    ) -> Plan[dict[str, str]]:
        """Create ``rows`` on their shards, following redirects; returns id -> shard.

        ``insert`` creates rows on one shard (default: plain workflow rows). An ID that
        exists already counts as placed where it is, if it names the same workflow
        (``exists_ok``; otherwise WorkflowConflict). An ``insert`` that cannot create in
        a slot being imported (``creates_while_importing=False``, e.g. a fork with its
        steps) waits for the move to finish instead.

        A slot in motion (docs/rebalancing.md) gets a new ID on its new owner only after
        its source, which answers for the IDs it holds (tombstones included), was seen
        not to hold it: IDs stay unique across the pair. A shard that refuses a row says
        why: migrating the slot out to P sends the row to P (through this shard's lookup
        again), importing it from S sends it through S first, and holding no part of it
        means this client's map is stale, so it is refreshed.
        """
        create = insert or self._insert_on
        placed: dict[str, str] = {}
        # Per redirected row: (shard to create it on, shard to look it up on first).
        redirects: dict[str, tuple[str, str | None]] = {}
        pending = rows
        # Waits between hops: for a slot being imported (the move must finish), and for
        # a rebalancer between two steps of a slot transition (brief).
        importing, between = Backoff(0.05, 1.0), Backoff(0.01, 0.5)
        for hop in range(REDIRECTS):
            slot_map = self.router.slot_map
            groups: dict[tuple[str, str | None], list[NewWorkflow]] = {}
            for row in pending:
                where = redirects.get(row.workflow_id) or (
                    slot_map.owner(row.slot),
                    slot_map.source(row.slot),
                )
                groups.setdefault(where, []).append(row)

            def place_group(
                shard: str, source: str | None, group: list[NewWorkflow]
            ) -> Plan[tuple[list[NewWorkflow], bool, bool]]:
                """Insert one group; returns the rows to retry, whether the map is stale,
                and whether to wait for a move. Groups touch disjoint rows, so they run
                side by side."""
                yield from self.topology.check_plan(shard)
                checked: set[str] = set()
                back: list[NewWorkflow] = []
                if source is not None and source != shard:
                    yield from self.topology.check_plan(source)
                    # The lookup on the source proves an ID is new only once the source
                    # refuses new IDs of the slot (MIGRATING_OUT): while it still owns the
                    # slot (the target marks IMPORTING first), another client may create
                    # the same ID there, so such rows go to the source instead.
                    slots = sorted({r.slot for r in group})
                    owned = yield Read(source, statements.slot_states(slots))
                    back = [
                        r for r in group if owned.get(r.slot, NO_HOLDING).state == SlotState.OWNED
                    ]
                    for r in back:
                        redirects[r.workflow_id] = (source, None)
                    sent_back = {r.workflow_id for r in back}
                    group = [r for r in group if r.workflow_id not in sent_back]
                    group = yield from self._not_held_by(source, group, placed, exists_ok)
                    checked = {r.workflow_id for r in group}
                if not group:
                    return back, False, False
                created = yield from create(shard, group, checked)
                for r in group:
                    if r.workflow_id in created:
                        placed[r.workflow_id] = shard
                refused = yield from self._not_held_by(
                    shard, [r for r in group if r.workflow_id not in created], placed, exists_ok
                )
                if not refused:
                    return back, False, False
                slots = sorted({r.slot for r in refused})
                states = yield Read(shard, statements.slot_states(slots))
                again: list[NewWorkflow] = []
                stale = wait = False
                for r in refused:
                    held = states.get(r.slot, NO_HOLDING)
                    state, peer = held.state, held.peer
                    if state == SlotState.IMPORTING and not creates_while_importing:
                        redirects.pop(r.workflow_id, None)
                        wait = True
                    elif state == SlotState.MIGRATING_OUT and peer:
                        redirects[r.workflow_id] = (peer, shard)
                    elif state == SlotState.IMPORTING and peer:
                        redirects[r.workflow_id] = (shard, peer)
                    else:
                        redirects.pop(r.workflow_id, None)
                        stale = True
                    again.append(r)
                return again + back, stale, wait

            # Groups touch disjoint rows: the driver runs them side by side.
            outcomes: list[tuple[list[NewWorkflow], bool, bool]] = yield Together(
                [place_group(*where, group) for where, group in groups.items()]
            )
            retry = [r for again, _, _ in outcomes for r in again]
            if not retry:
                return placed
            log.info("%d submit(s) redirected (hop %d)", len(retry), hop + 1)
            if any(wait for _, _, wait in outcomes):
                # The slot is being imported: wait for the move to finish.
                yield from self.topology.refresh_plan()
                yield Pause(importing.next())
            elif any(stale for _, stale, _ in outcomes):
                before = self.router.epoch
                fresh = yield from self.topology.refresh_plan()
                if fresh.epoch == before and hop:
                    # A rebalancer between two steps of a slot transition: brief.
                    yield Pause(between.next())
            pending = retry
        raise RoutingError(
            f"could not place {len(pending)} workflow(s) after {REDIRECTS} redirects;"
            " their slot is being moved, try again later"
        )

    def _not_held_by(
        self, shard: str, rows: list[NewWorkflow], placed: dict[str, str], exists_ok: bool
    ) -> Plan[list[NewWorkflow]]:
        """The rows whose ID ``shard`` does not hold; the others are placed where their
        workflow is (a tombstone's target), after checking the workflow name."""
        if not rows:
            return []
        existing = yield Read(shard, statements.existing([r.workflow_id for r in rows]))
        missing: list[NewWorkflow] = []
        for r in rows:
            found = existing.get(r.workflow_id)
            if found is None:
                missing.append(r)
                continue
            if not exists_ok:
                raise WorkflowConflict(f"workflow id {r.workflow_id!r} exists already")
            name, state, moved_to = found.name, found.state, found.moved_to
            if name != r.name:
                raise WorkflowConflict(
                    f"workflow id {r.workflow_id!r} exists with workflow {name!r}, not {r.name!r}"
                )
            moved = state == WorkflowState.MOVED.value and moved_to
            placed[r.workflow_id] = moved_to if moved and moved_to else shard
        return missing

    def _insert_on(self, shard: str, rows: list[NewWorkflow], checked: set[str]) -> Plan[set[str]]:
        try:
            created: set[str] = yield Read(shard, statements.insert_workflows(rows, checked))
            return created
        except DedupConflict:
            if len(rows) == 1:
                r = rows[0]
                raise WorkflowDeduplicated(r.queue, r.dedup_key or "") from None
            # One duplicate fails the whole statement: find it row by row.
            each: set[str] = set()
            for r in rows:
                each |= yield from self._insert_on(shard, [r], checked)
            return each


def _called(insert: Insert) -> InsertPlan:
    """A sync ``insert`` as a plan step (the async driver runs it in a thread)."""

    def plan(shard: str, rows: list[NewWorkflow], checked: set[str]) -> Plan[set[str]]:
        created: set[str] = yield Call(lambda: insert(shard, rows, checked))
        return created

    return plan
