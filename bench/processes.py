"""Drain throughput of ``shardflow worker --processes P`` on S local shards.

    python -m bench.processes                        # 3 rounds, 0 and 3 steps, 1 and 2 shards
    python -m bench.processes --rounds 5 --workflows 4000 --json bench/results/processes.json

One set of local PostgreSQL servers (durable defaults, as ``python -m bench``), one per
shard. Per case: fresh databases, N workflows ``bench.chain(i, steps)`` submitted with
``submit_many``, then ``shardflow worker --processes P --concurrency C`` started as a real
subprocess and stopped with SIGTERM once all N succeeded. Cases alternate within a round
(round 1 of every case first, each round in the reverse order of the one before), so
background load hits every case alike; each (steps, shards) group's three cases run back
to back, and the ratios to ``P=1, C=32`` are taken within a round, then their median.

- ``wf/s``: (N - 1) / (last ``finished_at`` - first ``finished_at``), read from the
  shards afterwards: the steady drain, without process start-up and without polling.
- ``worker ms/wf``: CPU time of the worker command and all its processes, per workflow
  finished, between the first completion check that saw work done and the last one (so
  without start-up, which costs each process a few hundred ms of imports).
- ``server ms/wf``: CPU time of the PostgreSQL servers (each postmaster with its
  children, live and exited) over the same interval, per workflow.

Concurrency is per process, so ``P=2, C=32`` runs 64 workflows at once: the case
``P=1, C=64`` separates "more processes" from "more running workflows".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

import shardflow
from bench.procs import runner_env
from bench.servers import BenchServers
from shardflow.config import parse
from shardflow.sql.migrator import migrate_cluster

ROOT = Path(__file__).resolve().parents[1]
APP = "bench.apps.shardflow_app:app"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Case:
    steps: int
    shards: int
    processes: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.steps}-step S={self.shards} P={self.processes} C={self.concurrency}"


@dataclass(frozen=True, slots=True)
class Measured:
    case: Case
    round: int
    workflows: int
    rate: float
    worker_ms: float
    server_ms: float
    load: float  # 1-minute load average when the case started


def _process_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (its exited, waited-for children too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(f) for f in fields[11:15])


def _tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and its live descendants (and their exited children)."""
    total = _process_ticks(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_tree_ticks(int(c)) for c in children)


class Bench:
    def __init__(self, servers: BenchServers, workdir: Path, workflows: int) -> None:
        self.servers = servers
        self.workdir = workdir
        self.workflows = workflows
        self._n = 0

    def worker_seconds(self, pid: int) -> float:
        return _tree_ticks(pid) / _TICKS

    def server_seconds(self, shards: int) -> float:
        ticks = sum(_tree_ticks(self.servers.postmaster_pid(k)) for k in range(shards))
        return ticks / _TICKS

    def config(self, shards: int) -> Path:
        self._n += 1
        dsns = [self.servers.fresh_database(k, f"procs{self._n}") for k in range(shards)]
        doc: dict[str, Any] = {
            "name": "bench",
            "hash": {"slots": 4096, "seed": 0},
            "shards": [{"name": f"shard{k}", "dsn": dsn} for k, dsn in enumerate(dsns)],
        }
        path = self.workdir / f"procs{self._n}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        migrate_cluster(parse(path.read_text(encoding="utf-8"), source=str(path)))
        return path

    def run(self, case: Case, round_: int) -> Measured:
        load = float(Path("/proc/loadavg").read_text().split()[0])
        path = self.config(case.shards)
        n = self.workflows
        with shardflow.connect(path) as cluster:
            for start in range(0, n, 1000):
                cluster.submit_many(
                    [
                        shardflow.Submission("bench.chain", (i, case.steps))
                        for i in range(start, min(start + 1000, n))
                    ]
                )
            dsns = [shard.dsn for shard in cluster.config.shards]
        log = (self.workdir / f"worker{self._n}.log").open("ab")
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "shardflow", "--config", str(path), "--log-level",
                "WARNING", "worker", "--app", APP, "--no-retention",
                "--processes", str(case.processes), "--concurrency", str(case.concurrency),
            ],
            cwd=ROOT, env=runner_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            conns = [psycopg.connect(dsn, autocommit=True) for dsn in dsns]
            deadline = time.monotonic() + 600
            first: tuple[int, float, float] | None = None  # done, worker CPU, server CPU
            while (done := _succeeded(conns)) < n:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{case.label}: worker exited or timed out; see {log.name}")
                if first is None and done:
                    first = (
                        done,
                        self.worker_seconds(worker.pid),
                        self.server_seconds(case.shards),
                    )
                time.sleep(0.2)  # a benchmark's completion check, not a test's wait
            last = (done, self.worker_seconds(worker.pid), self.server_seconds(case.shards))
            span = _finished_span(conns)
            for conn in conns:
                conn.close()
        finally:
            worker.send_signal(signal.SIGTERM)
            status = worker.wait(120)
        if status != 0:
            raise RuntimeError(f"{case.label}: worker exited with {status}")
        if first is None:
            raise RuntimeError(f"{case.label}: drained before the first check; raise --workflows")
        count = last[0] - first[0]
        return Measured(
            case,
            round_,
            n,
            (n - 1) / span,
            1000 * (last[1] - first[1]) / count,
            1000 * (last[2] - first[2]) / count,
            load,
        )


def _succeeded(conns: list[psycopg.Connection[Any]]) -> int:
    total = 0
    for conn in conns:
        row = conn.execute(
            "SELECT count(*) FROM shardflow.workflow_status WHERE state = 'SUCCESS'"
        ).fetchone()
        total += int(row[0]) if row else 0
    return total


def _finished_span(conns: list[psycopg.Connection[Any]]) -> float:
    firsts, lasts = [], []
    for conn in conns:
        row = conn.execute(
            "SELECT extract(epoch FROM min(finished_at)), extract(epoch FROM max(finished_at))"
            " FROM shardflow.workflow_status"
        ).fetchone()
        if row and row[0] is not None:
            firsts.append(float(row[0]))
            lasts.append(float(row[1]))
    return max(lasts) - min(firsts)


def cases(steps: list[int], shards: list[int]) -> list[Case]:
    return [
        Case(st, sh, p, c) for st in steps for sh in shards for p, c in ((1, 32), (2, 32), (1, 64))
    ]


def summarize(results: list[Measured]) -> list[dict[str, Any]]:
    rows = []
    for case in dict.fromkeys(r.case for r in results):
        mine = [r for r in results if r.case == case]
        rates = [r.rate for r in mine]
        base = Case(case.steps, case.shards, 1, 32)
        ratios = [
            r.rate / b.rate for r in mine for b in results if b.case == base and b.round == r.round
        ]
        rows.append(
            {
                "case": case.label,
                **asdict(case),
                "rate_median": statistics.median(rates),
                "rate_min": min(rates),
                "rate_max": max(rates),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "worker_ms": statistics.median(r.worker_ms for r in mine),
                "server_ms": statistics.median(r.server_ms for r in mine),
                "load_median": statistics.median(r.load for r in mine),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workflows", type=int, default=3000)
    parser.add_argument("--steps", default="0,3", help="comma-separated step counts")
    parser.add_argument("--shards", default="1,2", help="comma-separated shard counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.getLogger("shardflow").setLevel(logging.ERROR)  # "no live worker" before it starts
    steps = [int(s) for s in args.steps.split(",")]
    shard_counts = [int(s) for s in args.shards.split(",")]
    selected = cases(steps, shard_counts)
    results: list[Measured] = []
    with BenchServers(max(shard_counts)) as servers:
        bench = Bench(servers, servers.directory, args.workflows)
        for round_ in range(1, args.rounds + 1):
            for case in selected if round_ % 2 else selected[::-1]:
                measured = bench.run(case, round_)
                results.append(measured)
                print(
                    f"round {round_} {case.label:28} {measured.rate:8.0f} wf/s"
                    f"  worker {measured.worker_ms:.2f} ms/wf  server {measured.server_ms:.2f}"
                    f" ms/wf  load {measured.load:.1f}",
                    flush=True,
                )
    rows = summarize(results)
    print(
        f"\n{'case':28} {'wf/s':>6} {'range':>11} {'x P1C32':>8} {'range':>11}"
        f" {'worker ms':>9} {'server ms':>9} {'load':>5}"
    )
    for row in rows:
        spread = f"{row['rate_min']:.0f}-{row['rate_max']:.0f}"
        ratios = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
        print(
            f"{row['case']:28} {row['rate_median']:6.0f} {spread:>11}"
            f" {row['ratio_median']:8.2f} {ratios:>11} {row['worker_ms']:9.2f}"
            f" {row['server_ms']:9.2f} {row['load_median']:5.1f}"
        )
    if args.json:
        document = {
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "workflows": args.workflows,
            "rounds": args.rounds,
            "rows": rows,
            "runs": [{**asdict(r), "case": r.case.label} for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
