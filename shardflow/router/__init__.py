"""Routing: workflow ID -> hash -> slot -> shard, and the per-shard connection pools."""

from __future__ import annotations

from shardflow.router.hashing import Hasher, hash_key, route_hash, slot_of_hash
from shardflow.router.pools import ShardPools
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap, SlotRange, initial_map, quotas

__all__ = [
    "Hasher",
    "Router",
    "ShardPools",
    "SlotMap",
    "SlotRange",
    "hash_key",
    "initial_map",
    "quotas",
    "route_hash",
    "slot_of_hash",
]
