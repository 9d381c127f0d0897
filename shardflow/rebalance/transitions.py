"""Slot transitions: the live map as one rebalancer drives it, and the steps that change
it, each published to every shard as a new map epoch.

- start (step 0): the target marks a slot IMPORTING, then the source MIGRATING_OUT;
- finalize: once the source holds only tombstones of a slot and the target no staged
  copy of it, the target marks it OWNED and the source drops it;
- repair: finish a start or finalize a killed run left half done (see
  :mod:`shardflow.rebalance.live`).

Moving the workflows of the slots in motion is :mod:`shardflow.rebalance.mover`'s job;
:class:`~shardflow.rebalance.apply.Rebalancer` alternates the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from shardflow.errors import RebalanceError
from shardflow.rebalance.link import ShardLink
from shardflow.rebalance.live import LiveMap, Repair
from shardflow.rebalance.mover import MoveStep, recover_staged
from shardflow.router.slotmap import SlotMap

log = logging.getLogger(__name__)


class SlotMotion:
    """Owner of every slot (the target, for a slot in motion), the slots in motion with
    their source, and the map epoch, as this process drives them from ``live``."""

    def __init__(
        self,
        links: Mapping[str, ShardLink],
        live: LiveMap,
        on_step: Callable[[MoveStep], None] | None = None,
    ) -> None:
        self.links = links
        self.slots = len(live.owners)
        self.owners = list(live.owners)
        self.migrating = dict(live.migrating)
        self.epoch = live.epoch
        self._on_step = on_step

    def start_wave(self, target: tuple[str, ...], wave_slots: int) -> int:
        """Put up to ``wave_slots - in motion`` pending slots in motion (step 0)."""
        room = wave_slots - len(self.migrating)
        if room <= 0:
            return 0
        chosen = [
            slot
            for slot in range(self.slots)
            if self.owners[slot] != target[slot] and slot not in self.migrating
        ][:room]
        if not chosen:
            return 0
        epoch = self.epoch + 1
        pairs: dict[tuple[str, str], list[int]] = {}
        for slot in chosen:
            pairs.setdefault((self.owners[slot], target[slot]), []).append(slot)
        for (source, dest), slots in pairs.items():
            _expect(self.links[dest].mark_importing(slots, source, epoch), slots, dest, "import")
            self._hook(MoveStep.IMPORTING_MARKED)
            marked = self.links[source].mark_migrating_out(slots, dest, epoch)
            _expect(marked, slots, source, "migrate out")
            for slot in slots:
                self.owners[slot] = dest
                self.migrating[slot] = source
            log.info("slots in motion %s -> %s: %d", source, dest, len(slots))
        self.publish(epoch)
        return len(chosen)

    def finalize(self) -> tuple[int, int]:
        """Settle the slots in motion whose source holds only tombstones. Returns
        ``(slots settled, workflows still running in slots in motion)``."""
        epoch = self.epoch + 1
        settled = 0
        running = 0
        for (source, dest), slots in self.pairs().items():
            live = self.links[source].live_rows_by_slot(slots)
            running += sum(r for _, r in live.values())
            empty = [slot for slot in slots if slot not in live]
            if not empty:
                continue
            if self.links[dest].staged_slots(empty):
                recover_staged(self.links[dest], self.links, empty)
            staged = self.links[dest].staged_slots(empty)
            ready = [slot for slot in empty if slot not in staged]
            if not ready:
                continue
            _expect(self.links[dest].mark_owned(ready, epoch), ready, dest, "own")
            self._hook(MoveStep.OWNED_MARKED)
            _expect(self.links[source].drop_migrated(ready), ready, source, "drop")
            for slot in ready:
                del self.migrating[slot]
            settled += len(ready)
            log.info("slots settled %s -> %s: %d", source, dest, len(ready))
        if settled:
            self.publish(epoch)
        return settled, running

    def repair(self, repairs: tuple[Repair, ...]) -> None:
        """Finish the slot transitions a killed run left half done."""
        if not repairs:
            return
        epoch = self.epoch + 1
        groups: dict[tuple[str, str, str], list[int]] = {}
        for repair in repairs:
            groups.setdefault((repair.kind, repair.source, repair.target), []).append(repair.slot)
        for (kind, source, dest), slots in groups.items():
            link = self.links[source]
            if kind == "start":
                _expect(link.mark_migrating_out(slots, dest, epoch), slots, source, "migrate out")
            else:
                _expect(link.drop_migrated(slots), slots, source, "drop")
            log.info("repaired %d half-done %s(s) %s -> %s", len(slots), kind, source, dest)
        self.publish(epoch)

    def publish_if_stale(self) -> None:
        for link in self.links.values():
            copy = link.slot_map(self.slots)
            if (
                copy is None
                or copy.epoch != self.epoch
                or list(copy.owners) != self.owners
                or dict(copy.migrating) != self.migrating
            ):
                self.publish(self.epoch + 1)
                return

    def publish(self, epoch: int) -> None:
        """Write the map at ``epoch`` to every shard's copy (routers adopt the newest)."""
        self.epoch = max(self.epoch, epoch)
        slot_map = SlotMap(self.epoch, tuple(self.owners), dict(self.migrating))
        for link in self.links.values():
            link.publish_map(slot_map)
        self._hook(MoveStep.PUBLISHED)

    def pairs(self) -> dict[tuple[str, str], list[int]]:
        out: dict[tuple[str, str], list[int]] = {}
        for slot in sorted(self.migrating):
            out.setdefault((self.migrating[slot], self.owners[slot]), []).append(slot)
        return out

    def unsettled(self, target: tuple[str, ...]) -> int:
        return sum(
            1
            for slot in range(self.slots)
            if self.owners[slot] != target[slot] or slot in self.migrating
        )

    def workflows_left(self, target: tuple[str, ...]) -> int:
        """Live workflows in slots still to move, on the shards holding them now."""
        holding: dict[str, list[int]] = {}
        for slot in range(self.slots):
            source = self.migrating.get(slot)
            if source is not None:
                holding.setdefault(source, []).append(slot)
            elif self.owners[slot] != target[slot]:
                holding.setdefault(self.owners[slot], []).append(slot)
        return sum(
            sum(self.links[shard].workflows_in_slots(slots).values())
            for shard, slots in holding.items()
        )

    def _hook(self, step: MoveStep) -> None:
        if self._on_step is not None:
            self._on_step(step)


def _expect(done: set[int], wanted: list[int], shard: str, what: str) -> None:
    missing = sorted(set(wanted) - done)
    if missing:
        raise RebalanceError(
            f"shard {shard!r} could not {what} slot {missing[0]} (and {len(missing) - 1}"
            " more): its ownership changed under the rebalancer; run apply again"
        )
