"""The client's view of the cluster's shape: which shards it may talk to (their recorded
identity matches the config) and the newest live slot map they hold."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from shardflow.config.model import ClusterConfig
from shardflow.engine.store import Store
from shardflow.errors import IdentityMismatch, RoutingError, ShardUnavailable
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap
from shardflow.sql.identity import check_identity


class Topology:
    """Checks each shard's identity once, and refreshes the router's slot map."""

    def __init__(self, config: ClusterConfig, store: Store, router: Router) -> None:
        self.config = config
        self.store = store
        self.router = router
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def is_checked(self, shard: str) -> bool:
        """Whether ``shard``'s identity was checked already (no I/O)."""
        return shard in self._checked

    def check_identity(self, shard: str) -> None:
        """Refuse a shard whose recorded identity disagrees with the config."""
        if shard in self._checked:
            return
        check_identity(self.config, shard, self.store.identity(shard))
        with self._lock:
            self._checked.add(shard)

    def refresh(self) -> SlotMap:
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
