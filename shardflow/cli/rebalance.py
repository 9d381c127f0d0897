"""``shardflow rebalance plan|apply|status|purge``: move slots to match the YAML, online.

``plan`` compares the config (shards added, ``state: draining``, weights) with the live
map and shows what would move; ``apply`` carries the plan out with a progress bar and
resumes a run that was interrupted (Ctrl-C or kill -9); ``status`` shows what is in
motion; ``purge`` drops tombstones past their grace period. See docs/rebalancing.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    load_config,
    positive_float,
    positive_int,
)
from shardflow.cli.output import note, print_json, print_table
from shardflow.cli.rebalance_status import show_status
from shardflow.config import ClusterConfig
from shardflow.rebalance import ApplyOptions, Prepared, Rebalancer
from shardflow.rebalance import Progress as RebalanceProgress

DEFAULT_GRACE = 3600.0
_DEFAULTS = ApplyOptions()


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "rebalance", help="move slots between shards to match the config, online"
    )
    actions = parser.add_subparsers(dest="rebalance_command", metavar="ACTION", required=True)
    plan = add_command(
        actions,
        "plan",
        help="show which slots would move where, the workflows touched and the end state",
    )
    add_json_option(plan)

    apply = add_command(
        actions,
        "apply",
        help="carry out the plan (resumes an interrupted run)",
        description=(
            "Move slots and their idle workflows to match the config. Safe to interrupt"
            " at any moment (Ctrl-C, kill -9): run it again to resume. Running workflows"
            " are never moved; their slot waits until they are idle."
        ),
    )
    add_option(apply, "--yes", "-y", flag=True, help="do not ask for confirmation")
    add_option(
        apply,
        "--rate",
        type=_rate,
        metavar="N/s",
        help="move at most N workflows per second (default: as fast as it goes)",
    )
    add_option(
        apply,
        "--batch",
        type=positive_int,
        default=_DEFAULTS.batch,
        help=f"workflows per transaction pair (default {_DEFAULTS.batch})",
    )
    add_option(
        apply,
        "--wave",
        type=positive_int,
        default=_DEFAULTS.wave_slots,
        help=f"slots in motion at once (default {_DEFAULTS.wave_slots})",
    )
    add_option(
        apply,
        "--wait-running",
        type=positive_float,
        metavar="SECONDS",
        help="stop (resumable) if running workflows still hold slots after this long",
    )
    _add_grace(apply)
    add_json_option(apply)

    status = add_command(
        actions, "status", help="epoch, slots per shard, slots in motion, staged copies"
    )
    _add_grace(status)
    add_json_option(status)

    purge = add_command(actions, "purge", help="delete tombstones older than the grace period")
    _add_grace(purge)
    parser.set_defaults(run=run)


def _add_grace(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--tombstone-grace",
        type=_non_negative,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"keep tombstones this long for stale readers (default {DEFAULT_GRACE:g})",
    )


def _rate(text: str) -> float:
    """``200/s`` or ``200``."""
    value = text.strip()
    if value.endswith("/s"):
        value = value[:-2]
    return positive_float(value)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    action: str = args.rebalance_command
    if action == "status":
        return show_status(config, args)
    if action == "purge":
        with Rebalancer(config) as rebalancer:
            purged = rebalancer.purge(args.tombstone_grace)
        print(f"purged {purged} tombstone(s) older than {args.tombstone_grace:g}s")
        return 0
    if action == "plan":
        with Rebalancer(config) as rebalancer:
            prepared = rebalancer.prepare(lock=False)
            touched = _touched(rebalancer, prepared)
        _print_plan(config, prepared, touched, json=args.json)
        return 0
    return _apply(config, args)


# -- plan -------------------------------------------------------------------------------


def _touched(rebalancer: Rebalancer, prepared: Prepared) -> dict[tuple[str, str], Counter[str]]:
    """Live workflows by state in every slot still to move, per (source, target)."""
    by_pair: dict[tuple[str, str], list[int]] = {}
    for move in prepared.plan.moves:
        by_pair.setdefault((move.source, move.target), []).extend(move.slots)
    for pair, slots in prepared.live.pairs().items():
        by_pair.setdefault(pair, []).extend(slots)
    return {
        (source, target): rebalancer.links[source].workflows_in_slots(slots)
        for (source, target), slots in by_pair.items()
    }


def _print_plan(
    config: ClusterConfig,
    prepared: Prepared,
    touched: dict[tuple[str, str], Counter[str]],
    *,
    json: bool,
) -> None:
    plan, live = prepared.plan, prepared.live
    before, after = Counter(live.owners), plan.counts_after()
    shards = [s.name for s in config.shards]
    if json:
        print_json(
            {
                "epoch": live.epoch,
                "slots": plan.slots,
                "resumes_plan": prepared.record.plan_id if prepared.resumed else None,
                "slots_in_motion": len(live.migrating),
                "moves": [
                    {
                        "first": m.first,
                        "last": m.last,
                        "size": m.size,
                        "source": m.source,
                        "target": m.target,
                    }
                    for m in plan.moves
                ],
                "workflows": {f"{s}->{t}": dict(c) for (s, t), c in touched.items()},
                "before": {s: before.get(s, 0) for s in shards},
                "after": {s: after.get(s, 0) for s in shards},
            }
        )
        return
    print(f"live map: epoch {live.epoch}, {plan.slots} slots")
    if prepared.resumed:
        print(f"a rebalance is in progress (plan {prepared.record.plan_id}); apply resumes it")
    if live.migrating:
        print(f"{len(live.migrating)} slot(s) in motion now; they finish first")
    if not plan.moves and not live.migrating:
        print("nothing to move: the live map already matches the config")
    else:
        print(f"moves: {plan.moved_slots} slot(s)")
        for move in plan.moves:
            print(f"  {move.describe()}")
        rows = []
        for (source, target), counts in sorted(touched.items()):
            by_state = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
            rows.append((f"{source} -> {target}", sum(counts.values()), by_state))
        print_table(("move", "workflows", "by state"), rows, numeric=("workflows",))
        if any(c.get("RUNNING") for c in touched.values()):
            note("running workflows are not moved: their slots wait until they are idle")
    states = {s.name: s.state.value for s in config.shards}
    weights = {s.name: s.weight for s in config.shards}
    print_table(
        ("shard", "state", "weight", "slots now", "slots after", "share after"),
        [
            (
                name,
                states[name],
                weights[name],
                before.get(name, 0),
                after.get(name, 0),
                f"{100.0 * after.get(name, 0) / plan.slots:.1f}%",
            )
            for name in shards
        ],
        title="end state",
        numeric=("weight", "slots now", "slots after", "share after"),
    )


# -- apply ------------------------------------------------------------------------------


def _apply(config: ClusterConfig, args: argparse.Namespace) -> int:
    options = ApplyOptions(
        batch=args.batch,
        rate=args.rate,
        wave_slots=args.wave,
        tombstone_grace_seconds=args.tombstone_grace,
        wait_running_seconds=args.wait_running,
    )
    console = Console(stderr=True, highlight=False)
    bar = _ProgressBar(console)
    with Rebalancer(config, on_progress=bar.update, on_wait=bar.say) as rebalancer:
        prepared = rebalancer.prepare()
        if not args.json:
            _print_plan(config, prepared, _touched(rebalancer, prepared), json=False)
        if prepared.has_work and not args.yes:
            _confirm()
        try:
            with bar:
                result = rebalancer.run(prepared, options)
        except KeyboardInterrupt:
            note("interrupted: nothing is lost; run `shardflow rebalance apply` again to resume")
            raise
    summary: dict[str, Any] = {
        "complete": result.complete,
        "resumed": result.resumed,
        "workflows_moved": result.moved,
        "slots_settled": result.slots_settled,
        "epoch": result.epoch,
        "seconds": round(result.seconds, 3),
        "staged_copies_activated": result.recovered.activated,
        "staged_copies_discarded": result.recovered.discarded,
        "tombstones_purged": result.purged,
    }
    if args.json:
        print_json(summary)
    else:
        rate = result.moved / result.seconds if result.seconds > 0 else 0.0
        print(
            f"{'done' if result.complete else 'stopped'}: moved {result.moved} workflow(s),"
            f" settled {result.slots_settled} slot(s) in {result.seconds:.1f}s"
            f" ({rate:.0f}/s); map epoch {result.epoch}"
        )
        if result.recovered.activated or result.recovered.discarded:
            print(
                f"recovered an interrupted run: {result.recovered.activated} staged cop(ies)"
                f" activated, {result.recovered.discarded} discarded"
            )
        if not result.complete:
            print("running workflows still hold some slots; run apply again to finish")
    return 0 if result.complete else 3


def _confirm() -> None:
    if not sys.stdin.isatty():
        raise CliError("not a terminal: pass --yes to apply the plan without confirmation")
    answer = input("apply this plan? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("not applied")


class _ProgressBar:
    """Slots settled as the bar; workflows moved, rate and ETA beside it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} slots"),
            TextColumn("{task.fields[moved]} moved  {task.fields[rate]}/s  ETA {task.fields[eta]}"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def say(self, line: str) -> None:
        """One line on stderr (above the bar while it is shown), whole, never wrapped."""
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)

    def update(self, report: RebalanceProgress) -> None:
        fields: dict[str, Any] = {
            "moved": report.workflows_moved,
            "rate": f"{report.rate:.0f}",
            "eta": _eta(report.eta_seconds),
            "note": (
                f"waiting for {report.waiting_running} running workflow(s)"
                if report.phase == "waiting"
                else f"{report.slots_in_motion} in motion, epoch {report.epoch}"
            ),
        }
        total = max(report.slots_total, 1)
        if self._task is None:
            self._task = self._progress.add_task(report.phase, total=total, **fields)
        self._progress.update(
            self._task, description=report.phase, total=total, completed=report.slots_done
        )
        self._progress.update(self._task, **fields)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
