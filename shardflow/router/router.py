"""Route workflow IDs to shards with the cached live slot map."""

from __future__ import annotations

import threading

from shardflow.router.hashing import Hasher
from shardflow.router.slotmap import SlotMap


class Router:
    """Maps IDs to (hash, slot, shard) with no I/O; swaps in newer maps atomically."""

    __slots__ = ("_lock", "_owners", "hasher", "slot_map")

    def __init__(self, hasher: Hasher, slot_map: SlotMap) -> None:
        self.hasher = hasher
        self.slot_map = slot_map
        self._owners = slot_map.owners
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        return self.slot_map.epoch

    def route(self, workflow_id: str) -> str:
        """The shard that owns ``workflow_id``'s slot in the cached map."""
        return self._owners[self.hasher.slot(workflow_id)]

    def hash_and_route(self, workflow_id: str) -> tuple[int, int, str]:
        """``(route_hash, slot, shard)`` of ``workflow_id``: what a new row records, and
        where the cached map sends it. No I/O (finding an existing workflow's row across
        moves is :class:`shardflow.engine.locator.Locator`'s job)."""
        h, slot = self.hasher.hash_and_slot(workflow_id)
        return h, slot, self._owners[slot]

    def update(self, slot_map: SlotMap) -> bool:
        """Adopt ``slot_map`` if it is newer. Returns whether it was adopted."""
        with self._lock:
            if slot_map.epoch <= self.slot_map.epoch:
                return False
            self.slot_map = slot_map
            self._owners = slot_map.owners
            return True
