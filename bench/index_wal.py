"""What each index of ``workflow_status`` costs a 0-step workflow in WAL: N workflows
submitted one call each, then drained by one worker, on a fresh migrated shard with the
named indexes dropped first; WAL bytes per workflow for the submits and for the drain.

    python -m bench.index_wal [--n 2000] [--rounds 2] [--drop IDX[,IDX...]] ...

Each ``--drop`` is one case (a comma-separated group of indexes dropped together), run
after a case with every index; the cases alternate round by round. Dropping an index
only shows what it costs: the queries it serves then read the table another way.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

import bench.runners.common as common
from bench.runners import shardflow_run
from bench.servers import BenchServers
from bench.workloads import Bench, Plan


def one_case(bench: Bench, label: str, drop: Sequence[str], n: int) -> tuple[float, float]:
    """(submit, drain) WAL bytes per workflow with ``drop`` dropped."""
    config = bench.shardflow_cluster(label, [0])
    doc = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    with psycopg.connect(doc["shards"][0]["dsn"], autocommit=True) as conn:
        for index in drop:
            conn.execute(sql.SQL("DROP INDEX shardflow.{}").format(sql.Identifier(index)))
        conn.execute("CHECKPOINT")  # every case starts from the same full-page-write state

        def lsn() -> int:
            row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
            assert row is not None
            return int(row[0])

        before = lsn()
        shardflow_run.submit({"config": config, "count": n, "steps": 0})
        submitted = lsn()
        shardflow_run.drain({"config": config, "count": n})
        drained = lsn()
    return (submitted - before) / n, (drained - submitted) / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_wal", description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drop", action="append", default=[], help="indexes, comma-separated")
    args = parser.parse_args(argv)
    # In process: the runners' "ready" lines are for the harness, not needed here.
    common.ready = shardflow_run.ready = lambda: None  # type: ignore[assignment]
    cases = [[]] + [[i for i in group.split(",") if i] for group in args.drop]
    print("| indexes dropped | submit WAL B/wf | drain WAL B/wf | total |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="shardflow-index-wal-") as tmp:
        workdir = Path(tmp)
        (workdir / "runs").mkdir()
        with BenchServers(1, directory=workdir) as servers:
            bench = Bench(servers, workdir / "runs", Plan())
            for round_no in range(args.rounds):
                for k, drop in enumerate(cases):
                    submit, drain = one_case(bench, f"idx{round_no}_{k}", drop, args.n)
                    name = ", ".join(drop) or "(none)"
                    print(f"| {name} | {submit:,.0f} | {drain:,.0f} | {submit + drain:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
