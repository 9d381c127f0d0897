"""Workflow ID -> route hash -> slot. Pure functions, no I/O.

``route_hash`` is MurmurHash3 x86_32 (unsigned) of the UTF-8 bytes of the hash key. The
hash key is the whole ID unless the ID holds a Redis Cluster style hash tag: if it
contains ``{`` followed later by ``}`` with at least one character between, only the text
between the first ``{`` and the first ``}`` after it is hashed. So ``{tenant-7}:order-1``
and ``{tenant-7}:order-2`` share a slot, and ``{}x`` hashes whole.

``slot = route_hash >> (32 - log2(slots))``: the top bits, so each slot is a contiguous
range of hashes and doubling the slot count splits every slot in two.
"""

from __future__ import annotations

from collections.abc import Sequence

import mmh3

from shardflow.errors import RoutingError

MIN_SLOTS = 64
MAX_SLOTS = 65536

# Bound once: a module global is cheaper to reach than ``mmh3.hash`` on every call.
_murmur3 = mmh3.hash


def hash_key(workflow_id: str) -> str:
    """The part of ``workflow_id`` that is hashed (its hash tag, if it has one)."""
    if "{" in workflow_id:
        _, _, rest = workflow_id.partition("{")
        tag, closed, _ = rest.partition("}")
        if tag and closed:
            return tag
    return workflow_id


def route_hash(workflow_id: str, seed: int = 0) -> int:
    """Unsigned 32-bit MurmurHash3 of the ID's hash key."""
    h: int = _murmur3(hash_key(workflow_id).encode("utf-8"), seed, False)
    return h


def home_shard(queue: str, shards: Sequence[str], seed: int = 0) -> str:
    """The shard that holds ``queue``'s queue-wide concurrency (docs/queues.md): the shard
    with the highest MurmurHash3 of ``queue NUL shard`` (rendezvous hashing). It depends
    only on the queue name and the shard names, not on the slot map, so moving slots
    never moves it, and adding or removing a shard moves only the queues homed there."""
    if not shards:
        raise RoutingError("no shards to home a queue on")

    def score(shard: str) -> tuple[int, str]:
        return _murmur3(f"{queue}\0{shard}".encode(), seed, False), shard

    return max(shards, key=score)


def slot_bits(slots: int) -> int:
    """log2(slots), checking that ``slots`` is a power of two in the allowed range."""
    if slots < MIN_SLOTS or slots > MAX_SLOTS or slots & (slots - 1):
        raise RoutingError(f"slot count must be a power of two in {MIN_SLOTS}..{MAX_SLOTS}")
    return slots.bit_length() - 1


def slot_of_hash(hash_value: int, slots: int) -> int:
    return hash_value >> (32 - slot_bits(slots))


class Hasher:
    """Routes IDs to slots for one (slots, seed) pair; the hot path of every lookup."""

    __slots__ = ("_shift", "seed", "slots")

    def __init__(self, slots: int, seed: int) -> None:
        self.slots = slots
        self.seed = seed
        self._shift = 32 - slot_bits(slots)

    def route_hash(self, workflow_id: str) -> int:
        # This runs once per routed ID, so it is written for speed (see docs/routing.md):
        # hash_key inlined; str.partition, not str.find (whose argument parsing costs more
        # than the search); ``signed`` positional (mmh3 parses keywords slowly); no int().
        if "{" in workflow_id:
            _, _, rest = workflow_id.partition("{")
            tag, closed, _ = rest.partition("}")
            if tag and closed:
                workflow_id = tag
        h: int = _murmur3(workflow_id.encode("utf-8"), self.seed, False)
        return h

    def slot(self, workflow_id: str) -> int:
        return self.route_hash(workflow_id) >> self._shift

    def hash_and_slot(self, workflow_id: str) -> tuple[int, int]:
        h = self.route_hash(workflow_id)
        return h, h >> self._shift
