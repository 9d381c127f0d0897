"""``shardflow status``: a live per-shard summary of the cluster.

For each shard: whether it answers, its slots (and those a rebalance is moving), the
workflows enqueued (and due), running, suspended, leases expired (waiting for recovery),
the age of the oldest enqueued workflow, and what finished in the last minute.
``--watch SECONDS`` redraws it until Ctrl-C; ``--by-queue`` splits rows per queue.
"""

from __future__ import annotations

import argparse
import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shardflow.cli.options import (
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    load_config,
    positive_float,
)
from shardflow.cli.output import cell, fit_columns, print_json, scrub_secrets, stdout_console
from shardflow.config import ClusterConfig
from shardflow.engine import Cluster, connect
from shardflow.engine.coverage import unserved
from shardflow.engine.metrics import ACTIVE_STATES, ShardSnapshot, read_snapshots
from shardflow.engine.states import WorkflowState
from shardflow.router.moves import SlotState

RECENT_SECONDS = 60.0


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "status",
        help="per-shard summary: slots, queue depth, running, expired leases, throughput",
    )
    add_option(
        parser,
        "--watch",
        type=positive_float,
        metavar="SECONDS",
        help="redraw every SECONDS until Ctrl-C",
    )
    add_option(parser, "--by-queue", flag=True, help="one row per shard and queue")
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    with connect(config) as cluster:
        if args.json:
            print_json(_as_json(config, cluster, _read(cluster)))
            return 0
        if not args.watch:
            stdout_console().print(_render(config, cluster, _read(cluster), args.by_queue))
            return 0
        console = Console(highlight=False)
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                snapshots = _read(cluster)
                live.update(_render(config, cluster, snapshots, args.by_queue), refresh=True)
                time.sleep(args.watch)


def _read(cluster: Cluster) -> list[ShardSnapshot]:
    return read_snapshots(cluster, recent_seconds=RECENT_SECONDS)


def _render(
    config: ClusterConfig, cluster: Cluster, snapshots: list[ShardSnapshot], by_queue: bool
) -> Group:
    slot_map = cluster.router.slot_map
    title = (
        f"cluster {config.name}: {len(config.shards)} shard(s), slot map epoch"
        f" {slot_map.epoch}, {time.strftime('%H:%M:%S')}"
    )
    columns = ["shard"] + (["queue"] if by_queue else []) + ["up", "slots", "moving"]
    columns += ["enqueued", "due", "running", "suspended", "expired", "oldest", "done/min"]
    columns += ["failed/min"]
    rows: list[list[object]] = []
    problems: list[Text] = []
    for snap in snapshots:
        if not snap.reachable:
            dsns = [shard.dsn for shard in config.shards]
            problem = scrub_secrets(f"{snap.shard}: {snap.problem}", dsns)
            problems.append(Text(problem, style="red"))
            blank = [None] * (len(columns) - 2 - (1 if by_queue else 0))
            first = [snap.shard] + (["-"] if by_queue else []) + ["no"]
            rows.append([*first, *blank])
            continue
        moving = _moving(snap)
        done = snap.finished_recently.get(WorkflowState.SUCCESS, 0)
        failed = sum(v for k, v in snap.finished_recently.items() if k != WorkflowState.SUCCESS)
        if not by_queue:
            rows.append(
                list(
                    (
                        snap.shard,
                        "yes",
                        snap.slots.get(SlotState.OWNED, 0),
                        moving,
                        snap.count(WorkflowState.ENQUEUED),
                        sum(d.due for d in snap.depths if d.state == WorkflowState.ENQUEUED),
                        snap.count(WorkflowState.RUNNING),
                        snap.count(WorkflowState.SUSPENDED),
                        snap.expired_leases,
                        _age(snap.oldest(WorkflowState.ENQUEUED)),
                        done,
                        failed,
                    )
                )
            )
            continue
        queues = sorted({d.queue for d in snap.depths}) or ["-"]
        for i, queue in enumerate(queues):
            counts = {
                state: sum(d.workflows for d in snap.depths if (d.queue, d.state) == (queue, state))
                for state in ACTIVE_STATES
            }
            due = sum(
                d.due for d in snap.depths if (d.queue, d.state) == (queue, WorkflowState.ENQUEUED)
            )
            expired = sum(d.expired_leases for d in snap.depths if d.queue == queue)
            ages = [
                d.oldest_seconds
                for d in snap.depths
                if (d.queue, d.state) == (queue, WorkflowState.ENQUEUED) and d.workflows
            ]
            first_row = i == 0
            rows.append(
                list(
                    (
                        snap.shard if first_row else "",
                        queue,
                        "yes" if first_row else "",
                        snap.slots.get(SlotState.OWNED, 0) if first_row else "",
                        moving if first_row else "",
                        counts[WorkflowState.ENQUEUED],
                        due,
                        counts[WorkflowState.RUNNING],
                        counts[WorkflowState.SUSPENDED],
                        expired,
                        _age(max(ages) if ages else None),
                        done if first_row else "",
                        failed if first_row else "",
                    )
                )
            )
    width = stdout_console().width
    shown = fit_columns(columns, rows, width, _DROP_ORDER)
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", pad_edge=False
    )
    for column in shown:
        left = column in ("shard", "queue", "up", "moving")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "shard")
    index = [columns.index(c) for c in shown]
    for row in rows:
        table.add_row(*(cell(row[i]) for i in index))
    hidden = [c for c in columns if c not in shown]
    notes: list[Text] = []
    if hidden:
        notes.append(Text(f"({', '.join(hidden)} not shown at {width} columns; --json has all)"))
    return Group(table, *problems, *_unserved_lines(cluster, snapshots), *notes)


# Left out first when the table is wider than the terminal.
_DROP_ORDER = ("failed/min", "due", "oldest", "moving", "expired", "suspended", "done/min")


def _unserved_lines(cluster: Cluster, snapshots: list[ShardSnapshot]) -> list[Text]:
    """ENQUEUED work that no live worker can run, and why (see engine/coverage.py)."""
    up = [snap.shard for snap in snapshots if snap.reachable and snap.count(WorkflowState.ENQUEUED)]
    found, _ = unserved(cluster, up)
    lines = [Text("ENQUEUED work no live worker can run:", style="bold yellow")] if found else []
    for item in found:
        lines.append(
            Text(f"  {item.shard}: {item.count} x {item.name} [{item.queue}]: {item.reason}")
        )
    return lines


def _moving(snap: ShardSnapshot) -> str:
    parts = []
    if snap.slots.get(SlotState.MIGRATING_OUT):
        parts.append(f"{snap.slots[SlotState.MIGRATING_OUT]} out")
    if snap.slots.get(SlotState.IMPORTING):
        parts.append(f"{snap.slots[SlotState.IMPORTING]} in")
    staged = snap.count(WorkflowState.IMPORTING)
    if staged:
        parts.append(f"{staged} staged")
    return ", ".join(parts) or "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _as_json(
    config: ClusterConfig, cluster: Cluster, snapshots: list[ShardSnapshot]
) -> dict[str, object]:
    return {
        "cluster": config.name,
        "epoch": cluster.router.slot_map.epoch,
        "shards": [
            {
                "shard": snap.shard,
                "reachable": snap.reachable,
                "error": None
                if snap.problem is None
                else scrub_secrets(snap.problem, [s.dsn for s in config.shards]),
                "slots": snap.slots,
                "queues": [
                    {
                        "queue": d.queue,
                        "state": d.state,
                        "workflows": d.workflows,
                        "due": d.due,
                        "expired_leases": d.expired_leases,
                        "oldest_seconds": round(d.oldest_seconds, 3),
                    }
                    for d in snap.depths
                ],
                "finished_last_minute": snap.finished_recently,
            }
            for snap in snapshots
        ],
        "unserved": [
            {"shard": u.shard, "name": u.name, "queue": u.queue, "workflows": u.count}
            | {"reason": u.reason}
            for u in unserved(cluster, [s.shard for s in snapshots if s.reachable])[0]
        ],
    }
