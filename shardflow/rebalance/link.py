"""One shard as the rebalancer reaches it (:class:`ShardLink`): its own connections, the
slot-ownership rows and map copy it reads and writes, the recorded plans, and the counts
``status`` and ``apply`` report. The per-workflow move protocol that runs over two links
is :mod:`shardflow.rebalance.mover`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.rebalance.live import Ownership
from shardflow.router.moves import SlotState
from shardflow.router.pools import REBALANCER_LIMITS, dedicated
from shardflow.router.slotmap import SlotMap
from shardflow.sql import query
from shardflow.sql.identity import check_identity
from shardflow.sql.migrator import read_identity

Conn = psycopg.Connection[tuple[Any, ...]]


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


def _slots(cursor: psycopg.Cursor[tuple[Any, ...]]) -> set[int]:
    return {int(r[0]) for r in cursor.fetchall()}


def _plan_params(plan: PlanRecord) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "base_epoch": plan.base_epoch,
        "target": Jsonb(plan.target),
        "moves": plan.moves,
        "created_at": plan.created_at,
    }
