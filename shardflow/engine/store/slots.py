"""Topology reads: a shard's identity, its slot map and slot states, and the lookups a
client needs to follow a workflow across a move (see docs/rebalancing.md). The
rebalancer's own SQL runs in :mod:`shardflow.rebalance.mover`, never here."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psycopg.rows import class_row

from shardflow.engine.store import statements
from shardflow.engine.store._conn import ShardAccess, fetch_all, returns_row, run
from shardflow.engine.store.rows import (
    Located,
    SlotHolding,
    SlotOwnership,
)
from shardflow.engine.store_errors import StoreError
from shardflow.router.slotmap import SlotMap
from shardflow.sql.identity import Identity

log = logging.getLogger(__name__)


class SlotQueries(ShardAccess):
    def identity(self, shard: str) -> Identity | None:
        """The shard's recorded identity; None if it was never migrated."""
        return self.perform(shard, statements.identity())

    def owned_slots(self, shard: str) -> list[SlotOwnership]:
        with self._conn(shard) as conn:
            return fetch_all(conn, "slot_ownership", None, class_row(SlotOwnership))

    def slot_map_full(self, shard: str, slots: int) -> SlotMap | None:
        """This shard's copy of the slot map, with the slots in motion."""
        return self.perform(shard, statements.slot_map_full(slots))

    def slot_states(self, shard: str, slots: Sequence[int]) -> dict[int, SlotHolding]:
        """This shard's part in each of the given slots it has any part in."""
        return self.perform(shard, statements.slot_states(slots))

    def find_copy(self, shard: str, workflow_id: str) -> Located | None:
        """The workflow's row on ``shard`` (tombstone or staged copy included)."""
        return self.perform(shard, statements.find_copy(shard, self.codec, workflow_id))

    def finish_move(self, shard: str, workflow_id: str, move_id: str) -> bool:
        """Activate a staged copy whose move its source has decided (step 4 of a move,
        idempotent: anyone may finish it). False if there was nothing to activate."""
        params = {"ids": [workflow_id], "move_ids": [move_id], "clear_dedup": False}
        try:
            with self._conn(shard) as conn, conn.transaction():
                # Lock, then decide wake-ups with a fresh snapshot (see lock_staged_copies).
                run(conn, "lock_staged_copies", params)
                return returns_row(conn, "activate_copies", params)
        except StoreError:
            # E.g. a dedup key taken meanwhile: the rebalancer resolves that case.
            log.warning("could not activate the staged copy of %s on %s", workflow_id, shard)
            return False
