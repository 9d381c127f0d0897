"""The storage boundary of the engine: every SQL statement it runs goes through here.

One method per query (named queries in ``shardflow/sql/queries``). Each method talks to
one shard; callers route first. Driver errors leave as :class:`ShardUnavailable` (from
the pools) or are wrapped here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shardflow.engine.records import (
    Claim,
    NewWorkflow,
    StepRecord,
    WorkflowStatus,
    claim_from_row,
)
from shardflow.engine.registrystore import RegistryStore
from shardflow.engine.serialization import Codec
from shardflow.engine.states import WorkflowState
from shardflow.engine.store_errors import DedupConflict, Fenced, StoreError, TransientStoreError
from shardflow.engine.waitstore import WaitStore
from shardflow.errors import ShardUnavailable, ValueRejected
from shardflow.retry import Failure, classify, first_line
from shardflow.router.pools import Conn, ShardPools
from shardflow.router.slotmap import SlotMap
from shardflow.sql import query

log = logging.getLogger(__name__)

__all__ = ["DedupConflict", "Fenced", "Located", "Store", "StoreError", "TransientStoreError"]


class Store(WaitStore, RegistryStore):
    """Named queries against the shards of one cluster."""

    def __init__(self, pools: ShardPools, codec: Codec) -> None:
        self.pools = pools
        self.codec = codec

    @contextmanager
    def _conn(self, shard: str) -> Iterator[Conn]:
        """A pooled connection; driver errors leave classified (:mod:`shardflow.retry`):
        ShardUnavailable, TransientStoreError (retry in place), ValueRejected (this value
        can never be stored), StoreError (anything else)."""
        with self.pools.connection(shard) as conn:
            try:
                yield conn
            except ShardUnavailable:
                raise
            except (psycopg.Error, UnicodeEncodeError) as exc:
                kind = classify(exc)
                if kind is Failure.UNAVAILABLE and isinstance(exc, psycopg.Error):
                    raise  # the pools turn it into ShardUnavailable
                text = f"shard {shard!r}: {first_line(exc)}"
                if kind is Failure.RETRY:
                    raise TransientStoreError(text) from exc
                if kind is Failure.BAD_VALUE:
                    raise ValueRejected(text) from exc
                raise StoreError(text) from exc

    # -- topology ---------------------------------------------------------------------

    def identity(self, shard: str) -> tuple[str, str, int, int] | None:
        with self._conn(shard) as conn:
            try:
                row = conn.execute(query("get_identity")).fetchone()
            except psycopg.errors.UndefinedTable:
                return None
        if row is None:
            return None
        return str(row[0]), str(row[1]), int(row[2]), int(row[3])

    def slot_map(self, shard: str, slots: int) -> SlotMap | None:
        with self._conn(shard) as conn:
            row = conn.execute(query("get_slot_map")).fetchone()
        if row is None:
            return None
        return SlotMap.from_ranges(int(row[0]), row[1], slots)

    def owned_slots(self, shard: str) -> list[tuple[int, str, str | None, int]]:
        with self._conn(shard) as conn:
            return [
                (int(r[0]), str(r[1]), r[2], int(r[3]))
                for r in conn.execute(query("slot_ownership")).fetchall()
            ]

    def owns_slots(self, shard: str, slots: Sequence[int]) -> set[int]:
        with self._conn(shard) as conn:
            rows = conn.execute(query("owned_slots_among"), {"slots": list(slots)}).fetchall()
        return {int(r[0]) for r in rows}

    def count_by_state(self, shard: str) -> dict[str, int]:
        with self._conn(shard) as conn:
            return {str(r[0]): int(r[1]) for r in conn.execute(query("count_by_state"))}

    # -- submit and read ----------------------------------------------------------------

    def insert_workflows(
        self, shard: str, rows: Sequence[NewWorkflow], source_checked: Collection[str] = ()
    ) -> set[str]:
        """Insert ``rows`` where this shard owns the slot; returns the IDs created.

        In a slot this shard is importing, only IDs in ``source_checked`` (looked up on
        the slot's source first, and absent there) are created."""
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
                    "source_checked": r.workflow_id in source_checked,
                }
                for r in rows
            ],
            separators=(",", ":"),
        )
        params = {"rows": document}
        with self._conn(shard) as conn:
            try:
                cur = conn.execute(query("insert_workflows"), params)
            except psycopg.errors.UniqueViolation as exc:
                raise DedupConflict(str(exc).splitlines()[0]) from exc
            return {str(r[0]) for r in cur.fetchall()}

    def existing(
        self, shard: str, workflow_ids: Sequence[str]
    ) -> dict[str, tuple[str, str, str | None]]:
        """``{id: (name, state, moved_to)}`` of the given IDs present on ``shard``."""
        with self._conn(shard) as conn:
            rows = conn.execute(
                query("existing_workflows"), {"workflow_ids": list(workflow_ids)}
            ).fetchall()
        return {str(r[0]): (str(r[1]), str(r[2]), r[3]) for r in rows}

    def get(self, shard: str, workflow_id: str) -> tuple[WorkflowStatus, str | None] | None:
        """The workflow's status and, for a tombstone, the shard it moved to."""
        with self._conn(shard) as conn:
            row = conn.execute(query("get_workflow"), {"workflow_id": workflow_id}).fetchone()
        if row is None:
            return None
        return self._status(shard, row), row[16]

    def _status(self, shard: str, row: Sequence[Any]) -> WorkflowStatus:
        return WorkflowStatus(
            workflow_id=row[0],
            shard=shard,
            name=row[1],
            queue=row[2],
            state=WorkflowState(row[3]),
            priority=row[4],
            attempt=row[5],
            recoveries=row[6],
            output=self.codec.loads(row[7]),
            error=row[8],
            reason=row[9],
            created_at=row[10],
            updated_at=row[11],
            started_at=row[12],
            finished_at=row[13],
            parent_id=row[14],
            dedup_key=row[15],
            deadline=row[17],
            lease_owner=row[18],
        )

    def list_page(
        self,
        shard: str,
        *,
        state: str | None,
        name: str | None,
        queue: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[WorkflowStatus]:
        params = {
            "state": state,
            "name": name,
            "queue": queue,
            "after_created": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        }
        with self._conn(shard) as conn:
            rows = conn.execute(query("list_workflows"), params).fetchall()
        return [self._status(shard, row) for row in rows]

    def steps(self, shard: str, workflow_id: str) -> list[StepRecord]:
        with self._conn(shard) as conn:
            rows = conn.execute(query("load_steps"), {"workflow_id": workflow_id}).fetchall()
        return [
            StepRecord(int(r[0]), str(r[1]), self.codec.loads(r[2]), r[3], r[4], r[5], r[6])
            for r in rows
        ]

    # -- claims and leases ----------------------------------------------------------------

    def claim_enqueued(
        self,
        shard: str,
        *,
        queue: str,
        names: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
        global_limit: int | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` ENQUEUED workflows of ``queue``.

        With a global concurrency share or a rate limit, the claim is serialized per queue
        on this shard (advisory lock) so the limits hold exactly on it.
        """
        params: dict[str, Any] = {
            "queue": queue,
            "names": list(names),
            "owner": owner,
            "lease_seconds": lease_seconds,
            "limit": limit,
        }
        sent = time.monotonic()
        with self._conn(shard) as conn:
            if global_limit is None and rate_limit is None:
                rows = conn.execute(query("claim_enqueued"), params).fetchall()
                return [claim_from_row(shard, r, sent) for r in rows]
            with conn.transaction():
                conn.execute(query("lock_queue"), {"queue": queue})
                period = rate_limit[1] if rate_limit else 1.0
                usage = conn.execute(
                    query("queue_usage"), {"queue": queue, "period": period}
                ).fetchone()
                running, started = (int(usage[0]), int(usage[1])) if usage else (0, 0)
                budget = limit
                if global_limit is not None:
                    budget = min(budget, global_limit - running)
                if rate_limit is not None:
                    budget = min(budget, rate_limit[0] - started)
                if budget <= 0:
                    return []
                params["limit"] = budget
                rows = conn.execute(query("claim_enqueued"), params).fetchall()
                return [claim_from_row(shard, r, sent) for r in rows]

    def promote_delayed(self, shard: str, limit: int = 1000) -> int:
        """Make delayed workflows that are due claimable; returns how many."""
        with self._conn(shard) as conn:
            return len(conn.execute(query("promote_delayed"), {"limit": limit}).fetchall())

    def claim_expired(
        self,
        shard: str,
        *,
        names: Sequence[str],
        queues: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
        max_recoveries: int,
    ) -> list[Claim]:
        """Claim RUNNING workflows whose lease expired (dead-lettering repeat offenders)."""
        params = {
            "names": list(names),
            "queues": list(queues),
            "owner": owner,
            "lease_seconds": lease_seconds,
            "limit": limit,
            "max_recoveries": max_recoveries,
        }
        sent = time.monotonic()
        with self._conn(shard) as conn:
            rows = conn.execute(query("claim_expired"), params).fetchall()
        return [claim_from_row(shard, r, sent) for r in rows]

    def renew_leases(
        self, shard: str, *, owner: str, workflow_ids: Sequence[str], lease_seconds: float
    ) -> set[str]:
        with self._conn(shard) as conn:
            rows = conn.execute(
                query("renew_leases"),
                {
                    "workflow_ids": list(workflow_ids),
                    "owner": owner,
                    "lease_seconds": lease_seconds,
                },
            ).fetchall()
        return {str(r[0]) for r in rows}

    def release(self, shard: str, runs: Sequence[tuple[str, int]]) -> set[str]:
        with self._conn(shard) as conn:
            rows = conn.execute(
                query("release_workflows"),
                {"workflow_ids": [r[0] for r in runs], "attempts": [r[1] for r in runs]},
            ).fetchall()
        return {str(r[0]) for r in rows}

    # -- a run's writes, fenced by attempt ---------------------------------------------------

    def load_steps(self, shard: str, workflow_id: str) -> list[StepRecord]:
        return self.steps(shard, workflow_id)

    def record_step(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
        started_at: float | None = None,
        duration_ms: float | None = None,
    ) -> StepRecord | None:
        """Record a step. Returns None if written; the winning record if another run wrote
        this step first. Raises :class:`Fenced` if this run no longer owns the workflow.

        ``started_at`` is epoch seconds on the database clock; ``duration_ms`` how long
        the step ran (None for records that are not steps: sleep, recv, events)."""
        params = {
            "workflow_id": workflow_id,
            "attempt": attempt,
            "step_no": step_no,
            "name": name,
            "output": output,
            "error": Jsonb(error) if error is not None else None,
            "started_at": started_at,
            "duration_ms": duration_ms,
        }
        with self._conn(shard) as conn:
            if conn.execute(query("record_step"), params).fetchone() is not None:
                return None
        return self.resolve_unwritten_step(shard, workflow_id, attempt, step_no)

    def resolve_unwritten_step(
        self, shard: str, workflow_id: str, attempt: int, step_no: int
    ) -> StepRecord:
        """Why a step record was not written: the winning record of another run, or
        :class:`Fenced` if this run no longer owns the workflow."""
        with self._conn(shard) as conn:
            row = conn.execute(
                query("get_step"), {"workflow_id": workflow_id, "step_no": step_no}
            ).fetchone()
            state = conn.execute(query("run_state"), {"workflow_id": workflow_id}).fetchone()
        if state is None or state[0] != "RUNNING" or state[1] != attempt:
            raise Fenced(workflow_id, None if state is None else str(state[0]))
        if row is None:  # pragma: no cover - a live run's unwritten step has a record
            raise Fenced(workflow_id, str(state[0]))
        return StepRecord(int(row[0]), str(row[1]), self.codec.loads(row[2]), row[3])

    def finish(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        state: WorkflowState,
        output: str | None,
        error: dict[str, Any] | None,
        reason: str | None = None,
    ) -> bool:
        """Record the final state once. False if this run was fenced off."""
        params = {
            "workflow_id": workflow_id,
            "attempt": attempt,
            "state": state.value,
            "output": output,
            "error": Jsonb(error) if error is not None else None,
            "reason": reason,
        }
        with self._conn(shard) as conn:
            return conn.execute(query("finish_workflow"), params).fetchone() is not None

    def run_state(self, shard: str, workflow_id: str) -> tuple[WorkflowState, int] | None:
        with self._conn(shard) as conn:
            row = conn.execute(query("run_state"), {"workflow_id": workflow_id}).fetchone()
        return None if row is None else (WorkflowState(row[0]), int(row[1]))

    # -- notifications ----------------------------------------------------------------------

    def listen(
        self, shard: str, timeout: float, stop: threading.Event
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(channel, payload)`` notifications of one shard until ``stop`` is set.

        Uses a dedicated connection (LISTEN needs one). Yields ``("", "")`` every
        ``timeout`` seconds of silence so the caller can check ``stop``.
        """
        conn = self.pools.connect(shard)
        with conn:
            try:
                conn.execute(query("listen"))
                while not stop.is_set():
                    got = False
                    for note in conn.notifies(timeout=timeout):
                        got = True
                        yield note.channel, note.payload
                        if stop.is_set():
                            return
                    if not got:
                        yield "", ""
            except psycopg.OperationalError as exc:
                raise ShardUnavailable(shard, str(exc).strip().splitlines()[0]) from exc

    # -- control --------------------------------------------------------------------------

    def cancel(self, shard: str, workflow_id: str, reason: str) -> bool:
        with self._conn(shard) as conn:
            row = conn.execute(
                query("cancel_workflow"), {"workflow_id": workflow_id, "reason": reason}
            ).fetchone()
        return row is not None

    def resume(self, shard: str, workflow_id: str) -> bool:
        try:
            with self._conn(shard) as conn, conn.transaction():
                row = conn.execute(
                    query("resume_workflow"), {"workflow_id": workflow_id}
                ).fetchone()
                if row is not None:
                    conn.execute(query("drop_failed_last_step"), {"workflow_id": workflow_id})
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise DedupConflict(str(exc)) from exc
            raise
        return row is not None

    # -- following moves (rebalancing; see docs/rebalancing.md) ---------------------------
    # Reads the client needs to route around slots in motion. The rebalancer's own SQL
    # runs in shardflow.rebalance.mover, never here.

    def slot_map_full(self, shard: str, slots: int) -> SlotMap | None:
        """This shard's copy of the slot map, with the slots in motion."""
        with self._conn(shard) as conn:
            row = conn.execute(query("get_slot_map_full")).fetchone()
        if row is None:
            return None
        return SlotMap.from_ranges(int(row[0]), row[1], slots, migrating=row[2])

    def slot_states(self, shard: str, slots: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """``{slot: (state, peer)}`` for the given slots this shard has any part in."""
        with self._conn(shard) as conn:
            rows = conn.execute(query("slot_states_among"), {"slots": list(slots)}).fetchall()
        return {int(r[0]): (str(r[1]), r[2]) for r in rows}

    def locate(self, shard: str, workflow_id: str) -> Located | None:
        """The workflow's row on ``shard`` (tombstone or staged copy included)."""
        with self._conn(shard) as conn:
            row = conn.execute(query("get_workflow"), {"workflow_id": workflow_id}).fetchone()
        if row is None:
            return None
        move_id = None if row[21] is None else str(row[21])
        return Located(self._status(shard, row), row[16], row[19], row[20], move_id)

    def finish_move(self, shard: str, workflow_id: str, move_id: str) -> bool:
        """Activate a staged copy whose move its source has decided (step 4 of a move,
        idempotent: anyone may finish it). False if there was nothing to activate."""
        params = {
            "ids": [workflow_id],
            "move_ids": [move_id],
            "clear_dedup": False,
        }
        try:
            with self._conn(shard) as conn, conn.transaction():
                # Lock, then decide wake-ups with a fresh snapshot (see lock_staged_copies).
                conn.execute(query("lock_staged_copies"), params)
                return conn.execute(query("activate_copies"), params).fetchone() is not None
        except StoreError:
            # E.g. a dedup key taken meanwhile: the rebalancer resolves that case.
            log.warning("could not activate the staged copy of %s on %s", workflow_id, shard)
            return False


@dataclass(frozen=True, slots=True)
class Located:
    """A workflow row as found on one shard, with where a move has taken it.

    ``moved_to``: set on a tombstone (state MOVED). ``moved_from`` and ``import_state``:
    set on a staged copy (state IMPORTING), which is not the workflow until its source
    holds a tombstone for it.
    """

    status: WorkflowStatus
    moved_to: str | None
    moved_from: str | None
    import_state: str | None
    move_id: str | None
