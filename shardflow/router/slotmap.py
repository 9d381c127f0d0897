"""The slot map: which shard owns each slot, at which epoch. Pure, no I/O.

The first map of a cluster comes from the shard weights in the YAML: each active shard
gets an exact quota (largest-remainder rounding, ties to the earlier shard) as one
contiguous range, in YAML order. The live map, once the cluster exists, is read from the
shards (see ``shardflow.router.topology``) and changes only by rebalancing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shardflow.config.model import ClusterConfig, ShardState
from shardflow.errors import RoutingError


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Slots ``first..last`` (inclusive) owned by ``shard``."""

    first: int
    last: int
    shard: str

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Owner of every slot, versioned by ``epoch``. ``owners[slot]`` is a shard name.

    ``migrating`` holds the slots in motion during a rebalance: slot -> the shard it is
    leaving. Such a slot's owner is already the shard it moves to, which creates its new
    workflows; the source still holds the ones it had (see docs/rebalancing.md).
    """

    epoch: int
    owners: tuple[str, ...]
    migrating: Mapping[int, str] = field(default_factory=dict, hash=False)

    @property
    def slots(self) -> int:
        return len(self.owners)

    def owner(self, slot: int) -> str:
        return self.owners[slot]

    def source(self, slot: int) -> str | None:
        """The shard a slot in motion is leaving, or None for a settled slot."""
        return self.migrating.get(slot)

    def migrating_json(self) -> list[list[int | str]]:
        """Slots in motion as ``[[first, last, source], ...]`` (contiguous runs)."""
        out: list[list[int | str]] = []
        for slot in sorted(self.migrating):
            source = self.migrating[slot]
            if out and out[-1][1] == slot - 1 and out[-1][2] == source:
                out[-1][1] = slot
            else:
                out.append([slot, slot, source])
        return out

    def counts(self) -> dict[str, int]:
        """Slots owned per shard."""
        return dict(Counter(self.owners))

    def slots_of(self, shard: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == shard]

    def ranges(self) -> list[SlotRange]:
        """The map as maximal contiguous ranges, in slot order."""
        out: list[SlotRange] = []
        start = 0
        for slot in range(1, len(self.owners) + 1):
            if slot == len(self.owners) or self.owners[slot] != self.owners[start]:
                out.append(SlotRange(start, slot - 1, self.owners[start]))
                start = slot
        return out

    def to_json(self) -> list[list[int | str]]:
        return [[r.first, r.last, r.shard] for r in self.ranges()]

    @classmethod
    def from_ranges(
        cls,
        epoch: int,
        ranges: Iterable[Sequence[int | str]],
        slots: int,
        migrating: Iterable[Sequence[int | str]] | None = None,
    ) -> SlotMap:
        owners: list[str | None] = [None] * slots
        for first, last, shard in ranges:
            for slot in range(int(first), int(last) + 1):
                owners[slot] = str(shard)
        missing = [i for i, o in enumerate(owners) if o is None]
        if missing:
            raise RoutingError(f"slot map epoch {epoch} has no owner for slot {missing[0]}")
        sources: dict[int, str] = {}
        for first, last, source in migrating or ():
            for slot in range(int(first), int(last) + 1):
                sources[slot] = str(source)
        return cls(epoch, tuple(o for o in owners if o is not None), sources)


def quotas(weights: Sequence[tuple[str, int]], slots: int) -> dict[str, int]:
    """Exact slot quotas for ``(shard, weight)`` pairs: largest remainder, ties by order."""
    active = [(name, w) for name, w in weights if w > 0]
    if not active:
        raise RoutingError("no active shard with a positive weight to own slots")
    total = sum(w for _, w in active)
    base = {name: slots * w // total for name, w in active}
    remainders = sorted(
        range(len(active)),
        key=lambda i: (-(slots * active[i][1] % total), i),
    )
    for i in remainders[: slots - sum(base.values())]:
        base[active[i][0]] += 1
    return base


def initial_map(weights: Sequence[tuple[str, int]], slots: int, epoch: int = 1) -> SlotMap:
    """The first map of a new cluster: contiguous ranges in shard order."""
    owners: list[str] = []
    for name, count in quotas(weights, slots).items():
        owners.extend([name] * count)
    return SlotMap(epoch, tuple(owners))


def config_weights(config: ClusterConfig) -> list[tuple[str, int]]:
    """``(shard, weight)`` pairs of the YAML; draining shards weigh 0."""
    return [(s.name, s.weight if s.state is ShardState.ACTIVE else 0) for s in config.shards]


def desired_map(config: ClusterConfig, epoch: int = 1) -> SlotMap:
    """The map the YAML's weights ask for from scratch (the first map of a cluster)."""
    return initial_map(config_weights(config), config.hash.slots, epoch)
