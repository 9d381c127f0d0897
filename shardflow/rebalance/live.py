"""The live map, read from the authority: every shard's slot-ownership rows. Pure, no I/O.

Each slot is in one of these shapes across the shards (A source, B target):

=============================================  ============================================
rows                                           meaning
=============================================  ============================================
A OWNED                                        settled on A
B IMPORTING(A), A MIGRATING_OUT(B)             in motion A -> B
B IMPORTING(A), A OWNED                        a start cut short: A must still mark it
                                               MIGRATING_OUT (repair ``start``)
B OWNED, A MIGRATING_OUT(B)                    a finalize cut short: A must still drop it
                                               (repair ``finish``)
=============================================  ============================================

Anything else (no owner, two owners, a peer that disagrees) is an inconsistency no
protocol step produces; it is reported, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shardflow.errors import RebalanceError
from shardflow.router.moves import SlotState
from shardflow.router.slotmap import SlotMap


@dataclass(frozen=True, slots=True)
class Ownership:
    """One ``slot_ownership`` row of one shard."""

    shard: str
    slot: int
    state: SlotState
    peer: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class Repair:
    """A slot transition a killed rebalancer left half done. ``kind``: ``start`` (the
    source still has to mark the slot MIGRATING_OUT) or ``finish`` (the source still has
    to drop it)."""

    kind: str
    slot: int
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class LiveMap:
    """Owner of every slot (the target, for a slot in motion) and the slots in motion."""

    owners: tuple[str, ...] = field(repr=False)
    migrating: Mapping[int, str] = field(hash=False)
    epoch: int
    repairs: tuple[Repair, ...] = ()

    def slot_map(self, epoch: int | None = None) -> SlotMap:
        return SlotMap(self.epoch if epoch is None else epoch, self.owners, dict(self.migrating))

    def pairs(self) -> dict[tuple[str, str], list[int]]:
        """Slots in motion per ``(source, target)``."""
        out: dict[tuple[str, str], list[int]] = {}
        for slot in sorted(self.migrating):
            out.setdefault((self.migrating[slot], self.owners[slot]), []).append(slot)
        return out


def reconcile(rows: Sequence[Ownership], slots: int, epoch: int = 0) -> LiveMap:
    """Read ``rows`` (all shards' ownership) into the live map and the repairs it needs.

    ``epoch`` is the highest map epoch seen elsewhere (the map copies); the result's
    epoch is at least that and at least every row's.
    """
    by_slot: dict[int, list[Ownership]] = {}
    for row in rows:
        if not 0 <= row.slot < slots:
            raise RebalanceError(
                f"shard {row.shard} has ownership of slot {row.slot}, out of range"
            )
        by_slot.setdefault(row.slot, []).append(row)
        epoch = max(epoch, row.epoch)
    owners: list[str] = []
    migrating: dict[int, str] = {}
    repairs: list[Repair] = []
    for slot in range(slots):
        owner, source, repair = _read_slot(slot, by_slot.get(slot, []))
        owners.append(owner)
        if source is not None:
            migrating[slot] = source
        if repair is not None:
            repairs.append(repair)
    return LiveMap(tuple(owners), migrating, epoch, tuple(repairs))


def _read_slot(slot: int, rows: list[Ownership]) -> tuple[str, str | None, Repair | None]:
    """``(owner, source if in motion, repair)`` of one slot."""
    states = {row.state: row for row in rows}
    if len(states) != len(rows):
        raise _inconsistent(slot, rows)
    owned = states.get(SlotState.OWNED)
    importing = states.get(SlotState.IMPORTING)
    leaving = states.get(SlotState.MIGRATING_OUT)
    if owned and not importing and not leaving:
        return owned.shard, None, None
    if (
        importing
        and leaving
        and not owned
        and importing.peer == leaving.shard
        and leaving.peer == importing.shard
    ):
        return importing.shard, leaving.shard, None
    if importing and owned and not leaving and importing.peer == owned.shard:
        return importing.shard, owned.shard, Repair("start", slot, owned.shard, importing.shard)
    if owned and leaving and not importing and leaving.peer == owned.shard:
        return owned.shard, None, Repair("finish", slot, leaving.shard, owned.shard)
    raise _inconsistent(slot, rows)


def _inconsistent(slot: int, rows: list[Ownership]) -> RebalanceError:
    if not rows:
        return RebalanceError(
            f"slot {slot} has no owner among the configured shards (was a shard that owns"
            " slots removed from the YAML before it was drained?)"
        )
    seen = ", ".join(f"{r.shard} {r.state}" + (f" (peer {r.peer})" if r.peer else "") for r in rows)
    return RebalanceError(f"slot {slot} has inconsistent ownership: {seen}")
