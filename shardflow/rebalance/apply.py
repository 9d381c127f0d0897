"""Carrying out a plan: slot transitions, batched moves, finalizing, resuming after a crash.

:class:`Rebalancer` holds the rebalance lock on every shard, reads the live map from the
slot-ownership rows (the authority), finishes whatever a killed run left half done, and
then works in waves: start up to ``wave_slots`` slots (target IMPORTING, then source
MIGRATING_OUT, then a new map epoch), move their idle workflows in batches, finalize the
slots that hold only tombstones on their source (target OWNED, source drops the slot, new
epoch). A slot whose workflows are running stays split until they are idle.

Every step is safe to cut short at any point: the next run reconciles ownership, resolves
staged copies by the recovery rule and resumes the plan recorded on the shards. The slot
transitions are :mod:`shardflow.rebalance.transitions`; moving workflows is
:mod:`shardflow.rebalance.mover`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg

from shardflow.config.model import ClusterConfig
from shardflow.errors import RebalanceError
from shardflow.rebalance.live import LiveMap, reconcile
from shardflow.rebalance.mover import (
    BATCH_BYTES,
    PAGE_BYTES,
    MoveStep,
    PlanRecord,
    Recovery,
    ShardLink,
    move_slots,
    recover_staged,
)
from shardflow.rebalance.planner import (
    Plan,
    desired_shards,
    owners_from_ranges,
    plan_rebalance,
    resume_plan,
)
from shardflow.rebalance.progress import (
    Progress,
    ProgressHook,
    RateMeter,
    Throttle,
    WaitHook,
    WaitNotices,
)
from shardflow.rebalance.transitions import SlotMotion
from shardflow.retry import Backoff, first_line
from shardflow.router.slotmap import SlotMap

log = logging.getLogger(__name__)

StepHook = Callable[[MoveStep], None]


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """How fast and in what steps to apply a plan."""

    batch: int = 500  # workflows per transaction pair
    batch_bytes: int = BATCH_BYTES  # ... and about this many bytes of rows at most
    page_bytes: int = PAGE_BYTES  # rows copied per staging statement, in bytes
    rate: float | None = None  # at most this many workflows per second
    wave_slots: int = 256  # slots in motion at once
    poll_seconds: float = 0.2  # re-check interval while only running workflows remain
    tombstone_grace_seconds: float = 3600.0
    # Stop waiting for running workflows after this long (None: as long as it takes);
    # the plan stays recorded and the next `apply` continues it.
    wait_running_seconds: float | None = None

    def __post_init__(self) -> None:
        if min(self.batch, self.wave_slots, self.batch_bytes, self.page_bytes) < 1:
            raise ValueError("batch, wave_slots, batch_bytes and page_bytes must be >= 1")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A plan ready to apply: what the live map is, where it goes, and whether it
    continues a recorded plan (``resumed``) or replaces one (``superseded``)."""

    live: LiveMap
    plan: Plan
    record: PlanRecord
    resumed: bool
    superseded: PlanRecord | None = None

    @property
    def has_work(self) -> bool:
        return bool(self.plan.moves or self.live.migrating or self.live.repairs)


@dataclass(slots=True)
class ApplyResult:
    plan: Plan
    resumed: bool
    complete: bool
    moved: int = 0
    slots_settled: int = 0
    epoch: int = 0
    seconds: float = 0.0
    recovered: Recovery = field(default_factory=Recovery)
    purged: int = 0


class Rebalancer:
    """Plans and applies rebalances of one cluster. Use as a context manager."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        on_progress: ProgressHook | None = None,
        on_step: StepHook | None = None,
        on_wait: WaitHook | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.lock_timeout = lock_timeout
        # Waits longer than a second (the lock, running workflows) are said, not silent.
        self.waits = WaitNotices(on_wait)
        self.slots = config.hash.slots
        self.on_progress = on_progress
        self.on_step = on_step
        self.links: dict[str, ShardLink] = {}
        self._locked = False
        # The live state as this process drives it (loaded by run()).

    def __enter__(self) -> Rebalancer:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect to every shard of the config and check each one's identity."""
        try:
            for shard in self.config.shards:
                if shard.name not in self.links:
                    self.links[shard.name] = ShardLink(shard)
                self.links[shard.name].check_identity(self.config)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
        self._locked = False

    # -- reading ----------------------------------------------------------------------------

    def live(self) -> LiveMap:
        """The live map from every shard's ownership rows (repairs not yet applied)."""
        with self._driver_errors():
            rows = []
            newest: SlotMap | None = None
            for link in self.links.values():
                rows.extend(link.ownership())
                copy = link.slot_map(self.slots)
                if copy is not None and (newest is None or copy.epoch > newest.epoch):
                    newest = copy
        if newest is not None:
            # The ownership rows of a shard missing from the config cannot be read; the
            # map copies still name it.
            holders = set(newest.owners) | set(newest.migrating.values())
            missing = sorted(holders - set(self.config.shard_names))
            if missing:
                raise RebalanceError(
                    f"shard(s) {', '.join(missing)} own slots in the live map (epoch"
                    f" {newest.epoch}) but are not in the config; keep them in the YAML"
                    " with `state: draining` and rebalance before removing them"
                )
        return reconcile(rows, self.slots, newest.epoch if newest else 0)

    def plans(self) -> list[PlanRecord]:
        """Recorded plans, newest first, merged across shards (finished on any shard
        counts as finished)."""
        with self._driver_errors():
            merged: dict[str, PlanRecord] = {}
            for link in self.links.values():
                for record in link.plans():
                    seen = merged.get(record.plan_id)
                    if seen is None or (seen.finished_at is None and record.finished_at):
                        merged[record.plan_id] = record
        return sorted(merged.values(), key=lambda r: r.created_at, reverse=True)

    def prepare(self, *, lock: bool = True) -> Prepared:
        """The plan ``apply`` would carry out now. Writes nothing. With ``lock`` (what
        apply needs), takes the rebalance lock first so the answer cannot go stale."""
        if lock:
            self._lock()
        live = self.live()
        fresh = plan_rebalance(live.slot_map(), desired_shards(self.config))
        open_plan = next((p for p in self.plans() if p.finished_at is None), None)
        if open_plan is not None:
            target = owners_from_ranges(open_plan.target, self.slots)
            if Counter(target) == Counter(fresh.target):
                return Prepared(live, resume_plan(live.slot_map(), target), open_plan, True)
        record = PlanRecord(
            plan_id=str(uuid.uuid4()),
            base_epoch=live.epoch,
            target=SlotMap(0, fresh.target).to_json(),
            moves=fresh.moved_slots,
            created_at=datetime.now(timezone.utc),
        )
        return Prepared(live, fresh, record, False, open_plan)

    # -- applying ---------------------------------------------------------------------------

    def apply(self, options: ApplyOptions | None = None) -> ApplyResult:
        """Prepare and run: the whole rebalance the config asks for."""
        return self.run(self.prepare(), options)

    def run(self, prepared: Prepared, options: ApplyOptions | None = None) -> ApplyResult:
        """Carry out ``prepared`` (from :meth:`prepare`, under the lock)."""
        if not self._locked:
            raise RebalanceError("run() needs the rebalance lock: call prepare() first")
        options = options or ApplyOptions()
        started = time.monotonic()
        live = prepared.live
        motion = SlotMotion(self.links, live, self.on_step)
        result = ApplyResult(prepared.plan, prepared.resumed, complete=False)
        with self._driver_errors():
            motion.repair(live.repairs)
            motion.publish_if_stale()
            for link in self.links.values():
                result.recovered += recover_staged(link, self.links)
            if prepared.superseded is not None:
                for link in self.links.values():
                    link.finish_plan(prepared.superseded, "superseded")
            if prepared.has_work:
                for link in self.links.values():
                    link.record_plan(prepared.record)
            result.complete = self._drive(motion, prepared, options, result, started)
            if result.complete and (prepared.has_work or prepared.resumed):
                # A resumed plan may have nothing left to move: its last run died after
                # the slots settled, before it recorded the plan done. Record it now.
                self._hook(MoveStep.SETTLED)
                for link in self.links.values():
                    link.finish_plan(prepared.record, "done")
            if result.complete:
                result.purged = self.purge(options.tombstone_grace_seconds)
        result.epoch = motion.epoch
        result.seconds = time.monotonic() - started
        return result

    def purge(self, grace_seconds: float) -> int:
        """Delete tombstones older than ``grace_seconds`` on every shard."""
        with self._driver_errors():
            return sum(link.purge_tombstones(grace_seconds) for link in self.links.values())

    def _drive(
        self,
        motion: SlotMotion,
        prepared: Prepared,
        options: ApplyOptions,
        result: ApplyResult,
        started: float,
    ) -> bool:
        target = prepared.plan.target
        throttle = Throttle(options.rate)
        meter = RateMeter()
        total = max(prepared.record.moves, motion.unsettled(target))
        left = motion.workflows_left(target)
        waited_since: float | None = None
        while True:
            began = motion.start_wave(target, options.wave_slots)
            if began:
                left = motion.workflows_left(target)
            moved = 0
            for (source, dest), slots in motion.pairs().items():
                count = move_slots(
                    self.links[source],
                    self.links[dest],
                    self.links,
                    slots,
                    _batch_size(options),
                    self.on_step,
                    max_bytes=options.batch_bytes,
                    page_bytes=options.page_bytes,
                    on_moved=lambda n: _paced(n, meter, throttle),
                )
                moved += count
                result.moved += count
                self._report(
                    motion,
                    "moving",
                    total,
                    target,
                    result.moved,
                    left - result.moved,
                    0,
                    meter,
                    started,
                )
            settled, running = motion.finalize()
            result.slots_settled += settled
            if not motion.migrating and motion.unsettled(target) == 0:
                self._report(motion, "done", total, target, result.moved, 0, 0, meter, started)
                return True
            if began or moved or settled:
                waited_since = None
                self.waits.done()
                continue
            # Only rows that are running (or briefly locked by someone) hold the rest.
            now = time.monotonic()
            waited_since = waited_since or now
            self._report(
                motion, "waiting", total, target, result.moved, running, running, meter, started
            )
            self.waits.waiting(
                f"{running} running workflow(s) to become idle"
                f" ({len(motion.migrating)} slot(s) in motion)"
            )
            limit = options.wait_running_seconds
            if limit is not None and now - waited_since >= limit:
                self.waits.done()
                return False
            time.sleep(options.poll_seconds)

    # -- helpers ----------------------------------------------------------------------------

    def _lock(self) -> None:
        """Take the rebalance lock on every shard, in config order (so two rebalancers
        never hold one half each). A killed run's locks go when its connections close."""
        if self._locked:
            return
        deadline = time.monotonic() + self.lock_timeout
        backoff = Backoff(initial=0.05, maximum=1.0)
        with self._driver_errors():
            for link in self.links.values():
                while not link.try_lock():
                    if time.monotonic() >= deadline:
                        self.waits.done()
                        raise RebalanceError(
                            f"another rebalance holds the lock on shard {link.name!r}"
                            " (a killed one releases it as soon as its connections close)"
                        )
                    self.waits.waiting(
                        f"the rebalance lock on shard {link.name!r}, held by another"
                        f" rebalance; giving up after {self.lock_timeout:.0f}s"
                    )
                    backoff.wait()
        self.waits.done()
        self._locked = True

    def _report(
        self,
        motion: SlotMotion,
        phase: str,
        total: int,
        target: tuple[str, ...],
        moved: int,
        left: int,
        running: int,
        meter: RateMeter,
        started: float,
    ) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            Progress(
                phase=phase,
                epoch=motion.epoch,
                slots_total=total,
                slots_done=max(total - motion.unsettled(target), 0),
                slots_in_motion=len(motion.migrating),
                workflows_moved=moved,
                workflows_left=max(left, running, 0),
                waiting_running=running,
                rate=meter.rate(),
                elapsed=time.monotonic() - started,
            )
        )

    def _hook(self, step: MoveStep) -> None:
        if self.on_step is not None:
            self.on_step(step)

    @contextmanager
    def _driver_errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise RebalanceError(
                f"a shard failed mid-rebalance ({first_line(exc)});"
                " nothing is lost: run `shardflow rebalance apply` again to resume"
            ) from exc


def _batch_size(options: ApplyOptions) -> int:
    """Workflows per transaction pair: ``batch``, and at most a second's worth at ``rate``."""
    if options.rate is None:
        return options.batch
    return max(1, min(options.batch, int(options.rate)))


def _paced(moved: int, meter: RateMeter, throttle: Throttle) -> None:
    meter.add(moved)
    throttle.pace(moved)
