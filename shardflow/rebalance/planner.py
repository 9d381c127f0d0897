"""Which slots move where: the desired topology (YAML) against the live map. Pure, no I/O.

Each shard's quota is exact (:func:`shardflow.router.slotmap.quotas`: largest remainder,
ties to the earlier shard in the YAML); a draining shard's quota is 0. A shard above its
quota gives away exactly its surplus, a shard below it receives exactly its deficit, so
the plan moves the fewest slots that meet the weights: the sum of the surpluses.

Which slots: a donor gives away the highest slots it owns (its tail), so what it keeps
stays together and what it gives is contiguous; receivers take the freed slots in slot
order, in YAML order. Same inputs, same plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shardflow.config.model import ClusterConfig, ShardState
from shardflow.errors import RebalanceError
from shardflow.router.slotmap import SlotMap, quotas


@dataclass(frozen=True, slots=True)
class DesiredShard:
    """A shard as the YAML wants it: its weight, or draining (gives every slot away)."""

    name: str
    weight: int
    draining: bool = False


def desired_shards(config: ClusterConfig) -> list[DesiredShard]:
    """The shards of ``config`` in YAML order."""
    return [DesiredShard(s.name, s.weight, s.state is ShardState.DRAINING) for s in config.shards]


@dataclass(frozen=True, slots=True)
class SlotMove:
    """Slots ``first..last`` (inclusive) move from ``source`` to ``target``."""

    first: int
    last: int
    source: str
    target: str

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def slots(self) -> range:
        return range(self.first, self.last + 1)

    def describe(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"slots {span} ({self.size}): {self.source} -> {self.target}"


@dataclass(frozen=True, slots=True)
class Plan:
    """A rebalance: the map it starts from, the map it ends with, and the moves between.

    ``current`` counts a slot in motion for the shard it is moving to (that is how the
    live map reads), so its moves are the ones still to start.
    """

    slots: int
    base_epoch: int
    current: tuple[str, ...] = field(repr=False)
    target: tuple[str, ...] = field(repr=False)
    quotas: Mapping[str, int] = field(hash=False)
    moves: tuple[SlotMove, ...]

    @property
    def moved_slots(self) -> int:
        return sum(m.size for m in self.moves)

    @property
    def is_noop(self) -> bool:
        return not self.moves

    def counts_before(self) -> Counter[str]:
        return Counter(self.current)

    def counts_after(self) -> Counter[str]:
        return Counter(self.target)

    def sources(self) -> dict[str, list[int]]:
        """Slots each shard gives away."""
        out: dict[str, list[int]] = {}
        for move in self.moves:
            out.setdefault(move.source, []).extend(move.slots)
        return out

    def target_map(self, epoch: int) -> SlotMap:
        return SlotMap(epoch, self.target)


def plan_rebalance(current: SlotMap, desired: Sequence[DesiredShard]) -> Plan:
    """The minimal plan that takes ``current`` to the exact quotas of ``desired``.

    Raises :class:`RebalanceError` if a shard that owns slots is not in ``desired`` (it
    must be drained before it leaves the YAML) or no shard may own slots.
    """
    names = [d.name for d in desired]
    if len(set(names)) != len(names):
        raise RebalanceError("a shard is listed twice")
    missing = [name for name in dict.fromkeys(current.owners) if name not in names]
    if missing:
        raise RebalanceError(
            f"shard(s) {', '.join(missing)} own slots but are not in the config; keep them"
            " in the YAML with `state: draining` and rebalance before removing them"
        )
    try:
        quota = quotas([(d.name, 0 if d.draining else d.weight) for d in desired], current.slots)
    except Exception as exc:  # RoutingError: nobody left to own slots
        raise RebalanceError(f"cannot plan: {exc}") from exc
    target = _target_owners(current.owners, [d.name for d in desired], quota)
    return Plan(
        slots=current.slots,
        base_epoch=current.epoch,
        current=current.owners,
        target=target,
        quotas=dict(quota),
        moves=slot_moves(current.owners, target),
    )


def resume_plan(current: SlotMap, target: Sequence[str]) -> Plan:
    """A recorded plan continued from where the live map is now."""
    if len(target) != current.slots:
        raise RebalanceError(
            f"the recorded plan has {len(target)} slots, the cluster has {current.slots}"
        )
    owners = tuple(target)
    return Plan(
        slots=current.slots,
        base_epoch=current.epoch,
        current=current.owners,
        target=owners,
        quotas=dict(Counter(owners)),
        moves=slot_moves(current.owners, owners),
    )


def _target_owners(
    owners: Sequence[str], order: Sequence[str], quota: Mapping[str, int]
) -> tuple[str, ...]:
    counts = Counter(owners)
    freed: list[int] = []
    for name in order:
        surplus = counts.get(name, 0) - quota.get(name, 0)
        if surplus > 0:
            mine = [slot for slot, owner in enumerate(owners) if owner == name]
            freed.extend(mine[-surplus:])
    freed.sort()
    target = list(owners)
    taken = 0
    for name in order:
        deficit = quota.get(name, 0) - counts.get(name, 0)
        if deficit > 0:
            for slot in freed[taken : taken + deficit]:
                target[slot] = name
            taken += deficit
    # Quotas sum to the slot count, so surpluses and deficits balance exactly.
    assert taken == len(freed), (taken, len(freed))
    return tuple(target)


def slot_moves(current: Sequence[str], target: Sequence[str]) -> tuple[SlotMove, ...]:
    """The slots whose owner differs, as maximal runs with one source and one target."""
    moves: list[SlotMove] = []
    for slot, (was, will) in enumerate(zip(current, target, strict=True)):
        if was == will:
            continue
        last = moves[-1] if moves else None
        if last is not None and last.last == slot - 1 and (last.source, last.target) == (was, will):
            moves[-1] = SlotMove(last.first, slot, was, will)
        else:
            moves.append(SlotMove(slot, slot, was, will))
    return tuple(moves)


def owners_from_ranges(ranges: Sequence[Sequence[int | str]], slots: int) -> tuple[str, ...]:
    """``[[first, last, shard], ...]`` -> owner per slot (the recorded plan's form)."""
    return SlotMap.from_ranges(0, ranges, slots).owners
