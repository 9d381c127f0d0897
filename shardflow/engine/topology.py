"""The client's view of the cluster's shape: which shards it may talk to (their recorded
identity matches the config) and the newest live slot map they hold."""

from __future__ import annotations

import threading

from shardflow.config.model import ClusterConfig
from shardflow.engine.driving import Plan, Read, Together, drive
from shardflow.engine.store import Store, statements
from shardflow.errors import IdentityMismatch, RoutingError, ShardUnavailable
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap
from shardflow.sql.identity import check_identity


class Topology:
    """Checks each shard's identity once, and refreshes the router's slot map. Both as
    plans (:mod:`~shardflow.engine.driving`), for the sync and the async client."""

    def __init__(self, config: ClusterConfig, store: Store, router: Router) -> None:
        self.config = config
        self.store = store
        self.router = router
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def check_identity(self, shard: str) -> None:
        """Refuse a shard whose recorded identity disagrees with the config."""
        if shard not in self._checked:
            drive(self.check_plan(shard), self.store)

    def check_plan(self, shard: str) -> Plan[None]:
        """:meth:`check_identity` as a plan (no I/O once the shard was checked)."""
        if shard in self._checked:
            return
        found = yield Read(shard, statements.identity())
        check_identity(self.config, shard, found)
        with self._lock:
            self._checked.add(shard)

    def refresh(self) -> SlotMap:
        """Load the newest slot map from the reachable shards and adopt it."""
        return drive(self.refresh_plan(), self.store)

    def refresh_plan(self) -> Plan[SlotMap]:
        """:meth:`refresh` as a plan: the shards are read side by side."""
        slots = self.config.hash.slots

        def read(shard: str) -> Plan[SlotMap | ShardUnavailable | None]:
            try:
                yield from self.check_plan(shard)
                found: SlotMap | None = yield Read(shard, statements.slot_map_full(slots))
            except ShardUnavailable as exc:
                return exc
            return found

        answers: list[SlotMap | ShardUnavailable | None] = yield Together(
            [read(name) for name in self.config.shard_names]
        )
        maps = [a for a in answers if isinstance(a, SlotMap)]
        errors = [a for a in answers if isinstance(a, ShardUnavailable)]
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
