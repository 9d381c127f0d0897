"""The demo's final act: a fourth shard joins the running cluster and takes its share.

What an operator does, under load: start a new PostgreSQL server, add it to the YAML and
migrate it (identity, no slots), start a worker that knows it, then ``rebalance apply``
while a client that was created before the rebalance keeps submitting. At the end every
workflow exists once, completed once, and the slots are spread evenly over four shards.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import shardflow
from shardflow.demo.app import STEPS, process_document
from shardflow.demo.checks import wait_for_worker
from shardflow.engine.store import EffectsLog
from shardflow.local import LocalCluster, LocalServer
from shardflow.local.cluster import DATABASE
from shardflow.local.provision import create_database
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.rebalance import Progress as RebalanceProgress
from shardflow.rebalance.status import gather_status
from shardflow.retry import Backoff
from shardflow.sql.migrator import migrate_cluster
from shardflow.testing.processes import spawn_worker

NEW_SHARD = "shard3"


@dataclass(slots=True)
class ActResult:
    ok: bool
    moved: int = 0
    submitted_during: int = 0
    problems: list[str] = field(default_factory=list)


def run_rebalance_act(
    workdir: Path,
    config_path: Path,
    env: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    console: Console,
    *,
    concurrency: int = 16,
    keep: bool = False,
    load_per_second: float = 100.0,
) -> ActResult:
    """Add a fourth shard to the demo cluster and rebalance it under load.

    The new worker process is appended to ``procs`` (the caller stops them all). The new
    server is stopped on return unless ``keep``.
    """
    console.print("[bold]5.[/] Adding a 4th shard: a new PostgreSQL server, migrated")
    server = LocalCluster(workdir).new_server(NEW_SHARD)
    server.init()
    server.start()
    try:
        grown = _grow_config(config_path, server)
        migrate_cluster(shardflow.load(grown))
        console.print(
            f"    {NEW_SHARD} joined with no slots; starting a worker that knows it"
            f" (the others keep their 3-shard config)"
        )
        procs.append(_start_worker(grown, concurrency, env, workdir / "worker-4.log"))
        with shardflow.connect(grown) as client:
            log = workdir / "worker-4.log"
            problem = wait_for_worker(client, "demo-worker-4", procs[-1], log, console)
            if problem is not None:
                return ActResult(False, problems=[problem])
            return _rebalance_under_load(client, console, load_per_second, env)
    finally:
        if keep:
            console.print(f"4th shard left running on port {server.port} ({server.data_dir})")
        else:
            server.stop("fast")


def _grow_config(config_path: Path, server: LocalServer) -> Path:
    create_database(server)
    doc = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    doc["shards"] = [s for s in doc["shards"] if s["name"] != NEW_SHARD]
    doc["shards"].append({"name": NEW_SHARD, "dsn": server.dsn(DATABASE), "weight": 1})
    path = config_path.with_name("demo-4-shards.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _start_worker(
    config: Path, concurrency: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    return spawn_worker(
        config,
        "shardflow.demo.app:app",
        worker_id="demo-worker-4",
        concurrency=concurrency,
        env=env,
        log_path=log,
        cwd=log.parent,
    )


def _rebalance_under_load(
    client: shardflow.Cluster,
    console: Console,
    load_per_second: float,
    env: dict[str, str],
) -> ActResult:
    config = client.config
    submitted: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        # The client was connected before the rebalance: it follows redirects and
        # tombstones on its own, no restart.
        n = 0
        while not stop.is_set():
            ids = [f"live-{n + i:05d}" for i in range(10)]
            n += 10
            try:
                client.submit_many(
                    [shardflow.Submission(process_document, (w,), workflow_id=w) for w in ids]
                )
                submitted.extend(ids)
            except shardflow.ShardflowError as exc:
                errors.append(str(exc))
            stop.wait(10 / load_per_second)

    before = gather_status(config).slots_per_shard
    console.print(
        f"[bold]6.[/] Rebalancing under load ({load_per_second:.0f} new workflows/s):"
        " slots move in waves, idle workflows move in batches, running ones finish first"
    )
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slots  {task.fields[moved]} workflows moved  {task.fields[rate]}/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("rebalance", total=1, moved=0, rate="0")

        def show(report: RebalanceProgress) -> None:
            progress.update(
                task,
                description=report.phase,
                total=max(report.slots_total, 1),
                completed=report.slots_done,
            )
            progress.update(task, moved=report.workflows_moved, rate=f"{report.rate:.0f}")

        with Rebalancer(config, on_progress=show) as rebalancer:
            result = rebalancer.apply(ApplyOptions(batch=200, wave_slots=256))
    stop.set()
    thread.join(30)
    console.print(
        f"    moved {result.moved} workflows and settled {result.slots_settled} slots in"
        f" {result.seconds:.1f}s; {len(submitted)} workflows submitted meanwhile"
    )
    problems = [f"submit during the rebalance failed: {e}" for e in errors[:5]]
    problems += _wait_and_verify(client, submitted, env)
    _print_distribution(client, before, console)
    act = ActResult(not problems, result.moved, len(submitted), problems)
    if act.ok:
        console.print(
            "[bold green]OK[/] the 4th shard owns its quarter of the slots; every workflow"
            " exists once and completed once, whether it moved or arrived mid-move."
        )
    else:
        console.print("[bold red]FAILED[/]")
        for p in problems[:20]:
            console.print(f"  {p}")
    return act


def _wait_and_verify(
    client: shardflow.Cluster, submitted: list[str], env: dict[str, str]
) -> list[str]:
    problems: list[str] = []
    deadline = time.monotonic() + 120
    pending = list(submitted)
    backoff = Backoff(initial=0.02, maximum=0.5)
    while pending and time.monotonic() < deadline:
        pending = [w for w in pending if client.get(w).state is not shardflow.WorkflowState.SUCCESS]
        if pending:
            backoff.wait()
    if pending:
        problems.append(f"{len(pending)} workflow(s) submitted mid-rebalance did not finish")
    copies: Counter[str] = Counter()
    for shard in client.config.shards:
        for wid in client.store.live_workflow_ids(shard.name):
            copies[wid] += 1
    twice = [w for w, n in copies.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} workflow(s) exist twice, e.g. {twice[0]}")
    effects_dsn = env.get("SHARDFLOW_DEMO_EFFECTS_DSN")
    if effects_dsn:
        runs = EffectsLog(effects_dsn).runs_of(submitted)
        wrong = [w for w in submitted if runs.get(w, 0) != len(STEPS)]
        if wrong:
            problems.append(f"{len(wrong)} workflow(s) did not run each step once, e.g. {wrong[0]}")
    return problems


def _print_distribution(client: shardflow.Cluster, before: Counter[str], console: Console) -> None:
    status = gather_status(client.config)
    after = status.slots_per_shard
    table = Table(title=f"Distribution after the rebalance (map epoch {status.epoch})")
    for col in ("shard", "slots before", "slots after", "workflows", "tombstones"):
        table.add_column(col, justify="left" if col == "shard" else "right")
    tombstones = {s.name: s.tombstones for s in status.shards}
    for shard in client.config.shard_names:
        live = sum(n for state, n in client.store.count_by_state(shard).items() if state != "MOVED")
        table.add_row(
            shard,
            str(before.get(shard, 0)),
            str(after.get(shard, 0)),
            str(live),
            str(tombstones.get(shard, 0)),
        )
    console.print(table)
