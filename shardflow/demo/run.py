"""``shardflow demo``: crash a worker in the middle of a few thousand workflows and show
that every one still completes exactly once.

Acts: start an embedded 3-shard cluster, start worker processes, submit document
pipelines, SIGKILL one worker while it holds running workflows, wait for the survivors
to recover its work, then verify against the side-effect log and print a per-shard
summary. Final act (:mod:`shardflow.demo.rebalance_act`): a 4th shard joins and takes its
share of the slots while new workflows keep arriving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
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
from shardflow.demo.checks import clean_up as _clean_up
from shardflow.demo.checks import dead_worker, wait_for_workers
from shardflow.demo.rebalance_act import run_rebalance_act
from shardflow.engine.store import EffectsLog
from shardflow.local import LocalCluster
from shardflow.testing.processes import WorkerProcess, spawn_worker, stop_process


@dataclass(slots=True)
class DemoResult:
    workflows: int
    succeeded: int
    ok: bool
    seconds: float
    problems: list[str] = field(default_factory=list)


def _demo_config(cluster_yaml: Path, lease_seconds: float) -> Path:
    doc = yaml.safe_load(cluster_yaml.read_text(encoding="utf-8"))
    doc["worker"] = {
        "lease_seconds": lease_seconds,
        "heartbeat_seconds": max(lease_seconds / 4, 0.25),
        "poll_interval_seconds": 0.2,
        "processes": 1,  # the demo starts and kills worker processes itself
    }
    path = cluster_yaml.with_name("demo.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _start_worker(
    config: Path, index: int, concurrency: int, env: dict[str, str], log: Path
) -> WorkerProcess:
    return spawn_worker(
        config,
        "shardflow.demo.app:app",
        worker_id=f"demo-worker-{index}",
        concurrency=concurrency,
        env=env,
        log_path=log,
        # Not the caller's folder: a `shardflow` folder there (a clone's, run from its
        # parent) would shadow the installed package for `python -m shardflow`.
        cwd=log.parent,
    )


def run_demo(
    *,
    workflows: int = 3000,
    shards: int = 3,
    workers: int = 2,
    concurrency: int = 16,
    step_ms: float = 5.0,
    lease_seconds: float = 5.0,
    directory: Path | None = None,
    keep: bool = False,
    console: Console | None = None,
    rebalance: bool = True,
) -> DemoResult:
    console = console or Console()
    if workers < 2:
        raise ValueError("the demo needs at least 2 workers (one of them is killed)")
    workdir = directory or Path(tempfile.mkdtemp(prefix="shardflow-demo-"))
    local = LocalCluster(workdir)
    console.print(f"[bold]1.[/] Starting {shards} PostgreSQL shards under {workdir} ...")
    started = time.monotonic()
    config_path = _demo_config(local.up(shards=shards, name="demo"), lease_seconds)
    procs: list[subprocess.Popen[bytes]] = []  # WorkerProcess, and the 4th act's
    outcome: list[DemoResult] = []

    def ok_so_far() -> bool:
        return bool(outcome) and outcome[0].ok

    try:
        config = shardflow.load(config_path)
        effects_dsn = config.shards[0].dsn
        EffectsLog(effects_dsn).reset()
        env = dict(os.environ)
        env.update(SHARDFLOW_DEMO_EFFECTS_DSN=effects_dsn, SHARDFLOW_DEMO_STEP_MS=str(step_ms))
        console.print(
            f"[bold]2.[/] Starting {workers} worker processes (concurrency {concurrency} each)"
        )
        for i in range(workers):
            procs.append(
                _start_worker(config_path, i + 1, concurrency, env, workdir / f"worker-{i + 1}.log")
            )

        with shardflow.connect(config) as cluster:
            failed = wait_for_workers(cluster, procs, workdir, console)
            if failed is not None:
                return DemoResult(workflows, 0, False, time.monotonic() - started, [failed])
            result = _run(cluster, config_path, procs, workflows, console, effects_dsn)
        if rebalance:
            act = run_rebalance_act(
                workdir, config_path, env, procs, console, concurrency=concurrency, keep=keep
            )
            result.ok, result.problems = result.ok and act.ok, result.problems + act.problems
        result.seconds = time.monotonic() - started
        outcome.append(result)
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop_process(proc, 30)
        if keep:
            console.print(f"Cluster left running: shardflow --config {config_path} topology show")
        else:
            local.down()
            _clean_up(local, workdir, created=directory is None, ok=ok_so_far(), console=console)


def _counts(cluster: shardflow.Cluster) -> dict[str, Counter[str]]:
    return {s: Counter(cluster.store.count_by_state(s)) for s in cluster.config.shard_names}


def _run(
    cluster: shardflow.Cluster,
    config_path: Path,
    procs: list[subprocess.Popen[bytes]],
    workflows: int,
    console: Console,
    effects_dsn: str,
) -> DemoResult:
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    per_shard_total: Counter[str] = Counter()
    handles: list[shardflow.WorkflowHandle[str]] = []
    killed_pid = None
    console.print(
        f"[bold]3.[/] Submitting {workflows} document pipelines (extract, enrich, render,"
        " publish); a worker is killed at 30%"
    )
    with Progress(*columns, console=console) as progress:
        submit_task = progress.add_task("submitted", total=workflows)
        batch = 500
        for start in range(0, workflows, batch):
            subs = [
                shardflow.Submission(
                    process_document, (f"doc-{i:05d}",), workflow_id=f"doc-{i:05d}"
                )
                for i in range(start, min(start + batch, workflows))
            ]
            handles.extend(cluster.submit_many(subs))
            progress.update(submit_task, completed=len(handles))
        per_shard_total.update(h.shard for h in handles)
        shard_tasks = {
            s: progress.add_task(f"completed on {s}", total=per_shard_total[s])
            for s in cluster.config.shard_names
        }
        deadline = time.monotonic() + max(120.0, workflows / 20)
        while True:
            counts = _counts(cluster)
            done = sum(c["SUCCESS"] for c in counts.values())
            for s, task in shard_tasks.items():
                progress.update(task, completed=counts[s]["SUCCESS"])
            if killed_pid is None and done >= workflows * 0.3:
                victim = procs[0]
                held = _held_by(cluster, "demo-worker-1")
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                killed_pid = victim.pid
                progress.console.print(
                    f"[bold red]SIGKILL[/] demo-worker-1 (pid {victim.pid}) while it held"
                    f" {held} running workflows; the other workers take them over when their"
                    " leases expire"
                )
            if done >= workflows:
                break
            if time.monotonic() > deadline:
                break
            problem = dead_worker(procs, killed_pid)
            if problem is not None:
                progress.console.print(f"[bold red]{problem}[/]")
                break
            time.sleep(0.2)
    console.print("[bold]4.[/] Verifying against the side-effect log")
    return _verify(cluster, handles, per_shard_total, console, effects_dsn)


def _held_by(cluster: shardflow.Cluster, owner: str) -> int:
    page = cluster.list_workflows(state="RUNNING", limit=10_000)
    return sum(1 for s in page.items if s.lease_owner == owner)


def _verify(
    cluster: shardflow.Cluster,
    handles: list[shardflow.WorkflowHandle[str]],
    per_shard_total: Counter[str],
    console: Console,
    effects_dsn: str,
) -> DemoResult:
    problems: list[str] = []
    counts = _counts(cluster)
    runs_per_step = EffectsLog(effects_dsn).runs_per_step()
    recovered_by_shard: Counter[str] = Counter()
    steps_by_shard: Counter[str] = Counter()
    recovered_ids: set[str] = set()
    cursor = None
    while True:
        page = cluster.list_workflows(limit=1000, cursor=cursor)
        for status in page.items:
            if status.recoveries > 0:
                recovered_by_shard[status.shard] += 1
                recovered_ids.add(status.workflow_id)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    reruns: Counter[str] = Counter()
    for h in handles:
        for step in STEPS:
            n = runs_per_step.get((h.workflow_id, step), 0)
            if n == 0:
                problems.append(f"{h.workflow_id}: step {step} never ran")
            elif n > 1:
                reruns[h.shard] += n - 1
                if h.workflow_id not in recovered_ids:
                    problems.append(f"{h.workflow_id}: step {step} ran {n} times without a crash")
        steps_by_shard[h.shard] += len(STEPS)

    table = Table(title="Per-shard summary")
    for col in (
        "shard",
        "workflows",
        "SUCCESS",
        "other states",
        "recovered",
        "steps",
        "step re-runs",
    ):
        table.add_column(col, justify="right" if col != "shard" else "left")
    total_success = 0
    for shard in cluster.config.shard_names:
        c = counts[shard]
        total_success += c["SUCCESS"]
        others = {k: v for k, v in c.items() if k != "SUCCESS" and v}
        table.add_row(
            shard,
            str(per_shard_total[shard]),
            str(c["SUCCESS"]),
            ", ".join(f"{k}={v}" for k, v in sorted(others.items())) or "-",
            str(recovered_by_shard[shard]),
            str(steps_by_shard[shard]),
            str(reruns[shard]),
        )
    console.print(table)
    workflows = len(handles)
    if total_success != workflows:
        problems.append(f"{total_success} of {workflows} workflows succeeded")
    ok = not problems
    if ok:
        console.print(
            f"[bold green]OK[/] all {workflows} workflows completed exactly once; every step's"
            " checkpoint was written once; only steps interrupted by the kill ran again"
            f" ({sum(reruns.values())} re-run(s), all in recovered workflows)."
        )
    else:
        console.print("[bold red]FAILED[/]")
        for p in problems[:20]:
            console.print(f"  {p}")
    return DemoResult(workflows, total_success, ok, 0.0, problems)
