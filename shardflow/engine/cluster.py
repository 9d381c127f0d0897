"""The client: submit, look up, list, cancel and resume workflows across all shards."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

from shardflow.config.loader import load
from shardflow.config.model import ClusterConfig
from shardflow.engine import bulk
from shardflow.engine.app import Workflow
from shardflow.engine.cluster_waits import MAX_HOPS, REDIRECTS, WaitsClient
from shardflow.engine.coverage import warn_unserved, why_waiting
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import NewWorkflow, StepRecord, WorkflowStatus
from shardflow.engine.serialization import Codec, JsonSerializer, Serializer, is_storable_text
from shardflow.engine.states import RESUMABLE, WorkflowState
from shardflow.engine.store import NO_HOLDING, DedupConflict, Located, Store, TransientStoreError
from shardflow.engine.typed import SubmitOptions, Submitter
from shardflow.errors import (
    IdentityMismatch,
    RoutingError,
    ShardflowError,
    ShardUnavailable,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowDeduplicated,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
)
from shardflow.retry import budget, idempotent, with_retries
from shardflow.router.hashing import Hasher
from shardflow.router.moves import SourceRow, Verdict, copy_verdict
from shardflow.router.pools import SessionLimits, ShardPools
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap, desired_map
from shardflow.sql.identity import check_identity

log = logging.getLogger(__name__)

_ID_MAX = 512
P = ParamSpec("P")
R = TypeVar("R")
DEFAULT_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Submission:
    """One workflow to submit with :meth:`Cluster.submit_many`."""

    workflow: Workflow[Any, Any] | str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    queue: str | None = None
    priority: int = 0
    dedup_key: str | None = None
    delay_seconds: float | None = None
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`Cluster.list_workflows`; pass ``next_cursor`` for the next."""

    items: list[WorkflowStatus]
    next_cursor: str | None
    # Shards skipped because they were down (only with ``skip_unavailable=True``).
    unavailable: tuple[str, ...] = ()


class WorkflowHandle(Generic[R]):
    """A reference to one submitted workflow; ``R`` is the workflow's return type."""

    def __init__(self, cluster: Cluster, workflow_id: str, shard: str) -> None:
        self.cluster = cluster
        self.workflow_id = workflow_id
        self.shard = shard

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, shard={self.shard!r})"

    def status(self) -> WorkflowStatus:
        status = self.cluster.get(self.workflow_id)
        self.shard = status.shard
        return status

    def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to end and return its result.

        Raises WorkflowFailed (ERROR or dead-lettered), WorkflowCancelled, or
        WorkflowTimeout if ``timeout`` seconds pass first (the workflow goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        status: WorkflowStatus | None = None
        unavailable: ShardflowError | None = None
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                # A shard restarting or failing over is waited out, up to this call's
                # own timeout, not only the client's retry budget.
                with budget(self.cluster.retry_seconds if remaining is None else remaining):
                    status = self.status()
                unavailable = None
            except (ShardUnavailable, TransientStoreError) as exc:
                unavailable = exc
            if status is not None and unavailable is None:
                if status.state is WorkflowState.SUCCESS:
                    return status.output  # type: ignore[no-any-return]
                if status.state is WorkflowState.ERROR:
                    raise WorkflowFailed(self.workflow_id, status.error)
                if status.state is WorkflowState.DEAD:
                    raise WorkflowFailed(
                        self.workflow_id,
                        {"type": "DeadLettered", "message": status.reason or ""},
                    )
                if status.state is WorkflowState.CANCELLED:
                    raise WorkflowCancelled(self.workflow_id, status.reason)
            if deadline is not None and time.monotonic() >= deadline:
                if unavailable is not None:
                    raise WorkflowTimeout(
                        f"workflow {self.workflow_id!r}: no answer after {timeout}s ({unavailable})"
                    )
                state = status.state.value if status is not None else "unknown"
                why = None if status is None else why_waiting(self.cluster, status)
                raise WorkflowTimeout(
                    f"workflow {self.workflow_id!r} still {state} after {timeout}s"
                    + (f": {why}" if why else "")
                )
            pause = delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0))
            time.sleep(pause)
            delay = min(delay * 1.5, 0.5)


class Cluster(WaitsClient):
    """A connection to every shard of a cluster. Thread-safe; share one per process."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        serializer: Serializer | None = None,
        pool_max_size: int | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        self.config = config
        # How long a read or an idempotent write rides through a shard's restart or
        # failover (reconnecting, with backoff) before ShardUnavailable reaches the caller.
        self.retry_seconds = retry_seconds
        self.codec = Codec.for_config(serializer or JsonSerializer(), config)
        self.pools = ShardPools(
            config,
            max_size=pool_max_size,
            limits=SessionLimits.for_lease(config.worker.lease_seconds),
        )
        self.store = Store(self.pools, self.codec)
        self.hasher = Hasher(config.hash.slots, config.hash.seed)
        self._checked: set[str] = set()
        self.router = Router(self.hasher, desired_map(config, epoch=0))
        self.refresh_topology()

    # -- topology ---------------------------------------------------------------------

    def check_identity(self, shard: str) -> None:
        """Refuse a shard whose recorded identity disagrees with the config."""
        if shard in self._checked:
            return
        check_identity(self.config, shard, self.store.identity(shard))
        self._checked.add(shard)

    def refresh_topology(self) -> SlotMap:
        """Load the newest slot map from the reachable shards and adopt it."""
        maps: list[SlotMap] = []
        errors: list[ShardUnavailable] = []

        def read(shard: str) -> SlotMap | None:
            self.check_identity(shard)
            return self.store.slot_map_full(shard, self.config.hash.slots)

        with ThreadPoolExecutor(max(len(self.config.shards), 1)) as pool:
            futures = [pool.submit(read, name) for name in self.config.shard_names]
            for future in futures:
                try:
                    found = future.result()
                except ShardUnavailable as exc:
                    errors.append(exc)
                    continue
                if found is not None:
                    maps.append(found)
        if not maps:
            if errors:
                raise errors[0]
            raise IdentityMismatch("no shard has a slot map; run `shardflow migrate` first")
        # At equal epochs prefer a copy that knows the slots in motion: a shard migrated
        # into the cluster mid-rebalance copies the map without them.
        newest = max(maps, key=lambda m: (m.epoch, len(m.migrating)))
        unknown = (set(newest.owners) | set(newest.migrating.values())) - set(
            self.config.shard_names
        )
        if unknown:
            raise RoutingError(
                f"the live slot map (epoch {newest.epoch}) names shard(s) {sorted(unknown)}"
                " that are not in this config"
            )
        self.router.update(newest)
        return self.router.slot_map

    def route(self, workflow_id: str) -> str:
        return self.router.route(workflow_id)

    # -- submit -------------------------------------------------------------------------

    @overload
    def submit(
        self,
        workflow: Workflow[Any, R],
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    @overload
    def submit(
        self,
        workflow: str,
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]: ...

    def submit(
        self,
        workflow: Workflow[Any, Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """Start a workflow; idempotent on ``workflow_id``.

        ``workflow`` is a registered function or its name (to submit without the code).
        Remaining positional and keyword arguments go to the workflow. The handle is
        typed: ``result()`` returns the workflow's return type. Wrong arguments raise
        TypeError here, at the call; for a type checker to catch them too, use
        ``cluster.with_options(workflow_id=...).submit(wf, *args)`` (see
        :class:`~shardflow.engine.typed.Submitter`).
        """
        sub = Submission(
            workflow,
            args,
            kwargs,
            workflow_id,
            queue,
            priority,
            dedup_key,
            delay_seconds,
            timeout_seconds,
        )
        return self.submit_many([sub])[0]

    def with_options(self, **options: Unpack[SubmitOptions]) -> Submitter:
        """Submit options (``workflow_id``, ``queue``, ...) bound first, so that
        ``.submit(wf, *args, **kwargs)`` checks the workflow's arguments statically."""
        return Submitter(self, options)

    def submit_many(
        self, submissions: Iterable[Submission | tuple[Any, ...]]
    ) -> list[WorkflowHandle[Any]]:
        """Submit many workflows: one insert statement per shard."""
        new_ids = _IdSource()
        rows = [
            self._new_row(s if isinstance(s, Submission) else Submission(s[0], s[1:]), new_ids)
            for s in submissions
        ]
        ids = [r.workflow_id for r in rows]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise WorkflowConflict(f"workflow id {dup!r} appears twice in one submit_many")
        # Every ID is fixed before the first attempt, and an insert of an ID that exists
        # does nothing: a retry after a lost commit answer never creates a second one.
        placed = with_retries(lambda: self._insert(rows), self.retry_seconds)
        warn_unserved(self, [(r.name, r.queue, placed[r.workflow_id]) for r in rows])
        return [WorkflowHandle[Any](self, r.workflow_id, placed[r.workflow_id]) for r in rows]

    def _new_row(self, sub: Submission, new_ids: _IdSource | None = None) -> NewWorkflow:
        timeout = sub.timeout_seconds
        if isinstance(sub.workflow, Workflow):
            sub.workflow.check_arguments(sub.args, sub.kwargs)
            name, default_queue = sub.workflow.name, sub.workflow.queue
            if timeout is None:
                timeout = sub.workflow.timeout_seconds
        elif isinstance(sub.workflow, str) and sub.workflow:
            name, default_queue = sub.workflow, "default"
        else:
            raise TypeError("submit() takes a registered workflow or a workflow name")
        queue = sub.queue or default_queue
        if queue not in self.config.queues:
            known = ", ".join(sorted(self.config.queues))
            raise ShardflowError(f"queue {queue!r} is not declared in the config (known: {known})")
        workflow_id = sub.workflow_id
        if workflow_id is None:
            if sub.dedup_key is not None:
                # Same dedup key -> same hash tag -> same shard, so uniqueness is exact.
                tag = hashlib.sha1(f"{queue}\0{sub.dedup_key}".encode()).hexdigest()[:16]
                workflow_id = f"{{dedup-{tag}}}{(new_ids or _IdSource()).next()}"
            else:
                workflow_id = (new_ids or _IdSource()).next()
        else:
            _check_id(workflow_id)
        if sub.delay_seconds is not None and sub.delay_seconds < 0:
            raise ValueError("delay_seconds must be >= 0")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout_seconds must be >= 0")
        inputs = self.codec.dumps(
            {"args": list(sub.args), "kwargs": dict(sub.kwargs)}, "workflow inputs", workflow_id
        )
        route_hash, slot, _ = self.router.locate(workflow_id)
        return NewWorkflow(
            workflow_id=workflow_id,
            slot=slot,
            route_hash=route_hash,
            name=name,
            queue=queue,
            priority=int(sub.priority),
            inputs=inputs,
            delay_seconds=sub.delay_seconds,
            timeout_seconds=timeout,
            dedup_key=sub.dedup_key,
            parent_id=None,
        )

    def _insert(self, rows: list[NewWorkflow]) -> dict[str, str]:
        """Insert rows on their shards, following redirects; returns id -> shard.

        A slot in motion (docs/rebalancing.md) gets a new ID on its new owner only after
        its source, which answers for the IDs it holds (tombstones included), was seen
        not to hold it: IDs stay unique across the pair. A shard that refuses a row says
        why: migrating the slot out to P sends the row to P (through this shard's lookup
        again), importing it from S sends it through S first, and holding no part of it
        means this client's map is stale, so it is refreshed.
        """
        placed: dict[str, str] = {}
        # Per redirected row: (shard to create it on, shard to look it up on first).
        redirects: dict[str, tuple[str, str | None]] = {}
        pending = rows
        for hop in range(REDIRECTS):
            slot_map = self.router.slot_map
            groups: dict[tuple[str, str | None], list[NewWorkflow]] = {}
            for row in pending:
                where = redirects.get(row.workflow_id) or (
                    slot_map.owner(row.slot),
                    slot_map.source(row.slot),
                )
                groups.setdefault(where, []).append(row)

            def place(
                shard: str, source: str | None, group: list[NewWorkflow]
            ) -> tuple[list[NewWorkflow], bool]:
                """Insert one group; returns the rows to retry and whether the map is
                stale. Groups touch disjoint rows, so they run side by side."""
                self.check_identity(shard)
                checked: set[str] = set()
                back: list[NewWorkflow] = []
                if source is not None and source != shard:
                    self.check_identity(source)
                    # The lookup on the source proves an ID is new only once the source
                    # refuses new IDs of the slot (MIGRATING_OUT): while it still owns the
                    # slot (the target marks IMPORTING first), another client may create
                    # the same ID there, so such rows go to the source instead.
                    owned = self.store.slot_states(source, sorted({r.slot for r in group}))
                    back = [r for r in group if owned.get(r.slot, NO_HOLDING).state == "OWNED"]
                    for r in back:
                        redirects[r.workflow_id] = (source, None)
                    sent_back = {r.workflow_id for r in back}
                    group = [r for r in group if r.workflow_id not in sent_back]
                    group = self._not_held_by(source, group, placed)
                    checked = {r.workflow_id for r in group}
                if not group:
                    return back, False
                created = self._insert_on(shard, group, checked)
                for r in group:
                    if r.workflow_id in created:
                        placed[r.workflow_id] = shard
                refused = self._not_held_by(
                    shard, [r for r in group if r.workflow_id not in created], placed
                )
                if not refused:
                    return back, False
                states = self.store.slot_states(shard, sorted({r.slot for r in refused}))
                again: list[NewWorkflow] = []
                group_stale = False
                for r in refused:
                    held = states.get(r.slot, NO_HOLDING)
                    state, peer = held.state, held.peer
                    if state == "MIGRATING_OUT" and peer:
                        redirects[r.workflow_id] = (peer, shard)
                    elif state == "IMPORTING" and peer:
                        redirects[r.workflow_id] = (shard, peer)
                    else:
                        redirects.pop(r.workflow_id, None)
                        group_stale = True
                    again.append(r)
                return again + back, group_stale

            if len(groups) == 1:
                outcomes = [place(*where, group) for where, group in groups.items()]
            else:
                # One shard's insert runs while the next batch is encoded and sent.
                with ThreadPoolExecutor(len(groups)) as pool:
                    futures = [pool.submit(place, *where, group) for where, group in groups.items()]
                    outcomes = [f.result() for f in futures]
            retry = [r for again, _ in outcomes for r in again]
            stale = any(group_stale for _, group_stale in outcomes)
            if not retry:
                return placed
            log.info("%d submit(s) redirected (hop %d)", len(retry), hop + 1)
            if stale:
                before = self.router.epoch
                if self.refresh_topology().epoch == before and hop:
                    # A rebalancer between two steps of a slot transition: brief.
                    time.sleep(min(0.01 * 2**hop, 0.5))
            pending = retry
        raise RoutingError(
            f"could not place {len(pending)} workflow(s) after {REDIRECTS} redirects"
        )

    def _not_held_by(
        self, shard: str, rows: list[NewWorkflow], placed: dict[str, str]
    ) -> list[NewWorkflow]:
        """The rows whose ID ``shard`` does not hold; the others are placed where their
        workflow is (a tombstone's target), after checking the workflow name."""
        if not rows:
            return []
        existing = self.store.existing(shard, [r.workflow_id for r in rows])
        missing: list[NewWorkflow] = []
        for r in rows:
            found = existing.get(r.workflow_id)
            if found is None:
                missing.append(r)
                continue
            name, state, moved_to = found.name, found.state, found.moved_to
            if name != r.name:
                raise WorkflowConflict(
                    f"workflow id {r.workflow_id!r} exists with workflow {name!r}, not {r.name!r}"
                )
            moved = state == WorkflowState.MOVED.value and moved_to
            placed[r.workflow_id] = moved_to if moved and moved_to else shard
        return missing

    def _insert_on(
        self, shard: str, rows: list[NewWorkflow], checked: set[str] | None = None
    ) -> set[str]:
        try:
            return self.store.insert_workflows(shard, rows, checked or ())
        except DedupConflict:
            if len(rows) == 1:
                r = rows[0]
                raise WorkflowDeduplicated(r.queue, r.dedup_key or "") from None
            # One duplicate fails the whole statement: find it row by row.
            created: set[str] = set()
            for r in rows:
                created |= self._insert_on(shard, [r], checked)
            return created

    # -- reads ----------------------------------------------------------------------------

    @idempotent
    def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives. Raises WorkflowNotFound.

        Never misses a workflow that is being moved: a slot in motion is looked up on
        its source first, then on its new owner; a tombstone points to where the
        workflow went; a shard that does not hold the ID names the peer it is moving the
        slot to or from; a staged copy counts only once its source holds the tombstone.
        """
        slot = self.hasher.slot(workflow_id)
        candidates = self._holders(slot)
        tried: set[str] = set()
        refreshed = False
        for _ in range(REDIRECTS):
            if not candidates:
                if refreshed:
                    break
                refreshed = True
                self.refresh_topology()
                candidates = [s for s in self._holders(slot) if s not in tried]
                if not candidates:
                    break
            shard = candidates.pop(0)
            tried.add(shard)
            found = self.store.find_copy(shard, workflow_id)
            if found is None:
                held = self.store.slot_states(shard, [slot]).get(slot, NO_HOLDING)
                state, peer = held.state, held.peer
                if peer and state != "OWNED" and peer not in tried and peer not in candidates:
                    candidates.append(peer)
                continue
            if found.status.state is WorkflowState.MOVED:
                if found.moved_to:
                    candidates = [found.moved_to]
                continue
            if found.status.state is WorkflowState.IMPORTING:
                staged = self._staged(found)
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

    def _staged(self, copy: Located) -> WorkflowStatus | str:
        """The status of a workflow found as a staged copy (a move in progress), or the
        shard to look on next.

        The source decides (:func:`~shardflow.router.moves.copy_verdict`): its live row
        is the workflow if the move was not decided (a tombstone of another move points
        to where the workflow went); its tombstone of this very move means the copy is
        the workflow, and finishing the move (activating the copy, step 4) is then safe
        for anyone, so this does it. Unsure: the copy's own state.
        """
        status = copy.status
        source = (
            self.store.find_copy(copy.moved_from, status.workflow_id) if copy.moved_from else None
        )
        row = None if source is None else SourceRow(source.status.state.value, source.move_id)
        verdict = copy_verdict(copy.move_id, row)
        if verdict is Verdict.DISCARD and source is not None and row is not None:
            if row.is_live:
                return source.status
            if source.moved_to:
                return source.moved_to  # a tombstone of another move: follow it
        if verdict is Verdict.ACTIVATE and copy.move_id is not None:
            self.store.finish_move(status.shard, status.workflow_id, copy.move_id)
            after = self.store.find_copy(status.shard, status.workflow_id)
            if after is not None and after.status.state is not WorkflowState.IMPORTING:
                return after.status
        return dataclasses.replace(status, state=WorkflowState(copy.import_state or "ENQUEUED"))

    @idempotent
    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to an existing workflow (checked)."""
        status = self.get(workflow_id)
        return WorkflowHandle[Any](self, workflow_id, status.shard)

    @idempotent
    def steps(self, workflow_id: str) -> list[StepRecord]:
        """The recorded steps of a workflow, in order."""
        status = self.get(workflow_id)
        return self.store.steps(status.shard, workflow_id)

    def list_workflows(
        self,
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
        filters: WorkflowFilter | None = None,
    ) -> Page:
        """Workflows of all shards, newest first, ``limit`` at a time.

        Each shard returns its next ``limit`` rows after the cursor (keyset on
        ``(created_at, workflow_id)``, never OFFSET); the pages are merged. A shard that
        is down raises ShardUnavailable, or with ``skip_unavailable`` is left out and
        named in ``Page.unavailable`` (its workflows are then missing from the pages).

        Filters: ``state``, ``name``, ``queue``, a workflow-ID prefix, a creation-time
        range (``created_after`` inclusive, ``created_before`` exclusive, time-zone
        aware) and ``parent_id`` (the children of a workflow); or a whole
        :class:`~shardflow.engine.filters.WorkflowFilter` as ``filters``.
        """
        named = (state, name, queue, id_prefix, created_after, created_before, parent_id)
        if filters is not None and any(v is not None for v in named):
            raise ValueError("list_workflows: pass filters= or the single filters, not both")
        if filters is None and any(v is not None for v in named[3:]):
            filters = WorkflowFilter(
                WorkflowState(state) if state is not None else None, *named[1:]
            )
        if filters is not None and not filters.is_empty:
            return bulk.list_workflows(
                self, filters, limit=limit, cursor=cursor, skip_unavailable=skip_unavailable
            )
        if limit < 1:
            raise ValueError("limit must be >= 1")
        state_value = WorkflowState(state).value if state is not None else None
        after = _decode_cursor(cursor) if cursor else None

        down: list[str] = []

        def page(shard: str) -> list[WorkflowStatus]:
            try:
                return with_retries(
                    lambda: self.store.list_page(
                        shard, state=state_value, name=name, queue=queue, after=after, limit=limit
                    ),
                    # Leaving a shard out is the caller's choice: do not wait long for it.
                    1.0 if skip_unavailable else self.retry_seconds,
                )
            except ShardUnavailable:
                if not skip_unavailable:
                    raise
                down.append(shard)
                return []

        with ThreadPoolExecutor(max(len(self.config.shards), 1)) as pool:
            pages = list(pool.map(page, self.config.shard_names))

        def key(s: WorkflowStatus) -> tuple[datetime, str]:
            return (s.created_at, s.workflow_id)

        merged = list(heapq.merge(*pages, key=key, reverse=True))[:limit]
        # More may follow if the shards returned more than a page in all, or if one shard
        # filled its page (it may hold more behind it).
        more = sum(len(p) for p in pages) > limit or any(len(p) == limit for p in pages)
        next_cursor = _encode_cursor(merged[-1]) if merged and more else None
        return Page(merged, next_cursor, tuple(sorted(down)))

    # -- control ----------------------------------------------------------------------------

    @idempotent
    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        """Cancel a workflow and its children. Terminal: a running one stops at its next
        step boundary."""
        for _ in range(MAX_HOPS):
            status = self.get(workflow_id)
            # Zero rows updated means the workflow ended, or moved while this waited on
            # its row lock: look it up again (following the tombstone) and retry there.
            if not status.state.is_active or self.store.cancel(status.shard, workflow_id, reason):
                break
        self.cancel_children(workflow_id, reason)
        # A parent waiting for this child learns of its end now, not at its next re-check.
        self.wake_parent_of(workflow_id)
        return self.get(workflow_id)

    @idempotent
    def cancel_children(self, workflow_id: str, reason: str) -> int:
        """Cancel the children (and their children) a workflow started. Returns how many
        were active."""
        status = self.get(workflow_id)
        cancelled = 0
        for child_id in self.store.child_ids(status.shard, workflow_id):
            try:
                child = self.get(child_id)
            except WorkflowNotFound:
                continue  # recorded, but its submit never landed
            if child.parent_id != workflow_id:
                continue  # a fork's copied record names the original's child
            if child.state.is_active:
                self.store.cancel(child.shard, child_id, reason)
                cancelled += 1
            cancelled += self.cancel_children(child_id, reason)
        return cancelled

    @idempotent
    def resume(self, workflow_id: str) -> WorkflowStatus:
        """Re-queue a cancelled, failed or dead-lettered workflow from its last checkpoint."""
        status = self.get(workflow_id)
        for _ in range(MAX_HOPS):
            if status.state not in RESUMABLE:
                break
            try:
                if self.store.resume(status.shard, workflow_id):
                    break
            except DedupConflict:
                raise WorkflowDeduplicated(status.queue, status.dedup_key or "") from None
            status = self.get(workflow_id)  # moved meanwhile: retry where it is now
        if status.state not in RESUMABLE and not status.state.is_active:
            raise ShardflowError(f"workflow {workflow_id!r} is {status.state.value}; cannot resume")
        return self.get(workflow_id)

    def cancel_many(
        self,
        filters: WorkflowFilter,
        *,
        reason: str = "cancelled",
        batch: int = bulk.DEFAULT_BATCH,
        dry_run: bool = False,
    ) -> bulk.BulkResult:
        """Cancel every active workflow matching ``filters`` (and their children), shard
        by shard in batches; ``dry_run`` only counts them. See :mod:`shardflow.engine.bulk`."""
        return bulk.cancel_many(self, filters, reason=reason, batch=batch, dry_run=dry_run)

    def resume_many(
        self, filters: WorkflowFilter, *, batch: int = bulk.DEFAULT_BATCH, dry_run: bool = False
    ) -> bulk.BulkResult:
        """Resume every CANCELLED, ERROR or DEAD workflow matching ``filters``, shard by
        shard in batches; ``dry_run`` only counts them. See :mod:`shardflow.engine.bulk`."""
        return bulk.resume_many(self, filters, batch=batch, dry_run=dry_run)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self.pools.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    config: ClusterConfig | str | os.PathLike[str],
    *,
    serializer: Serializer | None = None,
    pool_max_size: int | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> Cluster:
    """Connect to a cluster described by a YAML file or a :class:`ClusterConfig`.

    ``retry_seconds``: how long reads and idempotent writes retry through a shard's
    restart or failover before raising :class:`ShardUnavailable`.
    """
    cfg = config if isinstance(config, ClusterConfig) else load(config)
    return Cluster(
        cfg, serializer=serializer, pool_max_size=pool_max_size, retry_seconds=retry_seconds
    )


class _IdSource:
    """Random (version 4) UUIDs, drawing from the OS in blocks: one syscall per 256 IDs
    instead of one per ID when a batch of workflows is submitted."""

    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._block):
            self._block = os.urandom(16 * 256)
            self._pos = 0
        b = bytearray(self._block[self._pos : self._pos + 16])
        self._pos += 16
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _check_id(workflow_id: str) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("workflow_id must be a non-empty string")
    if len(workflow_id) > _ID_MAX:
        raise ValueError(f"workflow_id is longer than {_ID_MAX} characters")
    if "\x00" in workflow_id:
        raise ValueError("workflow_id must not contain NUL characters")
    if not is_storable_text(workflow_id):
        raise ValueError("workflow_id must be valid Unicode text (it has a lone surrogate)")


def _encode_cursor(status: WorkflowStatus) -> str:
    raw = json.dumps([status.created_at.isoformat(), status.workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, wid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(wid)
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc
