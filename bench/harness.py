"""``python -m bench``: every row for every system, same servers, same run; medians, ratios.

    python -m bench                       # everything, 3 rounds (a few minutes on 2 cores)
    python -m bench --quick               # small N, 1 round: a smoke run
    python -m bench --only shardflow,raw --rows 1,3,4

Rounds are interleaved (round 1 of every row and system, then round 2, ...) so that a
change in background load hits every system alike. Results go to
``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg

from bench import procs, report, workloads
from bench.servers import BenchServers
from bench.workloads import CHAIN_STEPS, Bench, Plan

SYSTEMS = ("shardflow", "dbos", "pgqueuer", "raw")
ROWS = (1, 2, 3, 4, 5, 6, 7)
RESULTS_DIR = procs.ROOT / "bench" / "results"
SERVERS = 3
_REQUIRES = {"dbos": ("dbos",), "pgqueuer": ("pgqueuer", "asyncpg")}
_FAILURES = (procs.RunnerFailed, psycopg.Error, subprocess.SubprocessError, TimeoutError, OSError)

Measure = Callable[[Bench], Any]
Case = tuple[int, str, str, Measure | str]  # row, system, case, measure or why not


def cases(plan: Plan) -> list[Case]:
    """Every (row, system, case) of the benchmark, in run order."""
    out: list[Case] = []
    for steps in CHAIN_STEPS:
        case = f"{steps} steps"
        out.append((1, "shardflow", case, _with(workloads.end_to_end_shardflow, steps)))
        out.append((1, "dbos", case, _with(workloads.end_to_end_dbos, steps)))
        if steps == 0:
            out.append((1, "pgqueuer", case, lambda b: workloads.end_to_end_pgqueuer(b, 0)))
    for threads in plan.raw_threads:
        case = "1 thread" if threads == 1 else f"{threads} threads"
        out.append((1, "raw", case, _with(workloads.raw_ceiling, threads)))
    out.append((2, "shardflow", "1 / 1", lambda b: workloads.sharding(b, 1)))
    out.append((2, "shardflow", "3 / 3", lambda b: workloads.sharding(b, 3)))
    out.append((3, "shardflow", "submit_many, 3 shards", workloads.batch_shardflow))
    out.append((3, "pgqueuer", "enqueue(list), 1 server", workloads.batch_pgqueuer))
    out.append(
        (3, "dbos", "-", "DBOS has no batch enqueue; row 1's submit/s is one call per workflow")
    )
    out.append((4, "shardflow", "Router.route", workloads.routing))
    out.append((5, "shardflow", "SIGKILL", workloads.recovery))
    out.append(
        (
            5,
            "dbos",
            "-",
            "not comparable: without Conductor, DBOS recovers a dead executor's workflows"
            " when a process with the same executor ID restarts (or via its admin API);"
            " Conductor waits 60 s by default",
        )
    )
    out.append((6, "shardflow", f"{plan.latency_rate:g}/s", workloads.latency_shardflow))
    out.append((6, "dbos", f"{plan.latency_rate:g}/s", workloads.latency_dbos))
    out += _app_shape_cases(plan)
    return out


def _app_shape_cases(plan: Plan) -> list[Case]:
    """Row 7: shardflow's client threads (case "C clients"), async tasks and worker
    process; DBOS's direct and queue modes ("C clients, direct")."""
    out: list[Case] = []
    for clients in plan.app_clients:
        variants = clients in plan.app_variant_clients
        case = "1 client" if clients == 1 else f"{clients} clients"
        for how in workloads.APP_SHARDFLOW:
            if how == "threads" or variants:
                name = case if how == "threads" else f"{case}, {how}"
                out.append(
                    (7, "shardflow", name, _app_shape(workloads.app_shape_shardflow, clients, how))
                )
        for how in workloads.APP_DBOS:
            if how == "direct" or variants:
                out.append(
                    (
                        7,
                        "dbos",
                        f"{case}, {how}",
                        _app_shape(workloads.app_shape_dbos, clients, how),
                    )
                )
    return out


def _with(run: Callable[..., Any], *args: Any) -> Measure:
    """``run(bench, *args)`` as a measure (binds the loop variable now)."""
    return lambda bench: run(bench, *args)


def _app_shape(run: Callable[[Bench, int, str], Any], clients: int, how: str) -> Measure:
    return lambda bench: run(bench, clients, how)


def missing_requirement(system: str) -> str | None:
    for module in _REQUIRES.get(system, ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark shardflow against DBOS Transact, PgQueuer and raw psycopg.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's options; ``shardflow bench`` adds the same ones to its parser."""
    parser.add_argument("--rounds", type=int, help="rounds per case (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="small N and 1 round: a smoke run")
    parser.add_argument(
        "--only",
        type=_names(SYSTEMS),
        default=list(SYSTEMS),
        help=f"systems to run, comma-separated (default all: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--rows",
        type=_rows,
        default=list(ROWS),
        help="rows to run, comma-separated numbers 1-7 (default all)",
    )
    parser.add_argument(
        "--clients",
        type=_counts,
        help="row 7's client counts, comma-separated (default 1,16,64)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON results go (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep server data, configs and runner logs here (default: a temporary"
        " directory, removed at the end)",
    )
    parser.add_argument(
        "--lease-seconds", type=float, help="worker lease in the recovery row (default 5)"
    )
    parser.add_argument(
        "--shardflow-concurrency",
        type=int,
        help="shardflow worker concurrency (default: the config default, 32)",
    )
    parser.add_argument(
        "--dbos-polling-seconds",
        type=float,
        help="DBOS queue polling interval (default 0.05; DBOS's own default is 1.0)",
    )


def _names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            what = ", ".join(unknown) or repr(text)
            raise argparse.ArgumentTypeError(
                f"unknown system(s) {what}; choose from {', '.join(allowed)}"
            )
        return names

    return parse


def _rows(text: str) -> list[int]:
    try:
        rows = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected row numbers like 1,3,4; got {text!r}") from None
    if not rows or any(r not in ROWS for r in rows):
        raise argparse.ArgumentTypeError(f"rows are 1 to 7; got {text!r}")
    return rows


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(n) for n in text.split(",") if n.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,16; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"client counts are >= 1; got {text!r}")
    return counts


def plan_from(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan()
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be >= 1")
        changes["rounds"] = args.rounds
    if args.lease_seconds is not None:
        changes["lease_seconds"] = args.lease_seconds
    if args.shardflow_concurrency is not None:
        changes["shardflow_concurrency"] = args.shardflow_concurrency
    if args.dbos_polling_seconds is not None:
        changes["dbos_polling_seconds"] = args.dbos_polling_seconds
    if args.clients is not None:
        changes["app_clients"] = args.clients
        if not args.quick:
            changes["app_variant_clients"] = args.clients
    return replace(plan, **changes)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cases(bench: Bench, selected: list[Case]) -> list[dict[str, Any]]:
    """Run every selected case ``rounds`` times, interleaved; one measurement per round."""
    measurements: list[dict[str, Any]] = []
    given_up: set[tuple[int, str, str]] = set()
    rounds = bench.plan.rounds
    for n in range(rounds):
        for row, system, case, measure in selected:
            if (row, system, case) in given_up:
                continue
            reason = measure if isinstance(measure, str) else missing_requirement(system)
            if reason is not None:
                measurements.append(_entry(row, system, case, n, "unavailable", reason=reason))
                given_up.add((row, system, case))
                continue
            assert not isinstance(measure, str)
            if row == 4 and n > 0:
                continue  # bench/routing.py runs all rounds in one process
            log(f"[round {n + 1}/{rounds}] row {row} {system} {case} ...")
            try:
                try:
                    result = measure(bench)
                finally:
                    bench.drop_databases()
            except _FAILURES as exc:
                reason = _first_line(exc)
                log(f"  failed: {reason}")
                log(traceback.format_exc())
                measurements.append(_entry(row, system, case, n, "failed", reason=reason))
                given_up.add((row, system, case))
                continue
            load = os.getloadavg()[0]
            for k, metrics in enumerate(result if isinstance(result, list) else [result]):
                entry = _entry(row, system, case, n + k, "ok", metrics=metrics)
                # Other processes on the machine slow every system; the JSON says how busy.
                entry["load_average_1m"] = load
                measurements.append(entry)
                log(f"  {_headline(metrics)} (load average {load:.2f})")
    return measurements


def _entry(
    row: int,
    system: str,
    case: str,
    n: int,
    status: str,
    *,
    metrics: dict[str, Any] | None = None,
    reason: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {"row": row, "system": system, "case": case, "round": n}
    out["status"] = status
    if metrics is not None:
        out["metrics"] = metrics
    if reason:
        out["reason"] = reason
    return out


def _headline(metrics: dict[str, Any]) -> str:
    keys = (
        "workflows_per_s",
        "commits_per_s",
        "submit_per_s",
        "us_per_id",
        "recovery_seconds",
        "completion_p50_ms",
        "p50_ms",
    )
    return ", ".join(f"{k}={metrics[k]:,.2f}" for k in keys if k in metrics)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _versions() -> dict[str, str]:
    out = {}
    for package in ("shardflow", "dbos", "pgqueuer", "asyncpg", "psycopg", "mmh3"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=procs.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _git_commit() -> str:
    """HEAD, with ``+dirty`` if the measured package (``shardflow/``) has local changes."""
    head = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "shardflow")
    return f"{head}+dirty" if dirty and dirty != "unknown" else head


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; print the table; write the JSON."""
    plan = plan_from(args)
    selected = [c for c in cases(plan) if c[0] in args.rows and c[1] in args.only]
    if not selected:
        log("nothing to run: no case matches --only and --rows")
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    workdir = args.workdir
    cleanup = None
    if workdir is None:
        cleanup = tempfile.TemporaryDirectory(prefix="shardflow-bench-")
        workdir = Path(cleanup.name)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "runs").mkdir(exist_ok=True)
    servers_needed = SERVERS if any(c[0] in (2, 3) for c in selected) else 1
    try:
        log(f"starting {servers_needed} PostgreSQL server(s) in {workdir} ...")
        with BenchServers(servers_needed, directory=workdir) as servers:
            settings = servers.describe(0)
            bench = Bench(servers, workdir / "runs", plan)
            measurements = run_cases(bench, selected)
    finally:
        if cleanup is not None:
            cleanup.cleanup()
    finished = dt.datetime.now(dt.timezone.utc)

    entries = report.summarize(measurements)
    ratios = report.ratios(entries)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": _versions(),
        "postgresql": settings,
        "servers": servers_needed,
        "plan": asdict(plan),
        "only": args.only,
        "rows": args.rows,
        "quick": bool(args.quick),
    }
    lines = _header(meta) + report.tables(entries) + ["### Ratios", ""]
    lines += [r.line() for r in ratios] or ["(no ratio: a side of each comparison is missing)"]
    print("\n".join(lines))

    document = {
        "meta": meta,
        "summary": [asdict(e) for e in entries],
        "ratios": [r.as_json() for r in ratios],
        "measurements": measurements,
        "table": "\n".join(lines),
    }
    path = save(document, args.results_dir, started)
    log(f"\nresults: {path}")
    failed = [e for e in entries if e.status == "failed"]
    return 1 if failed else 0


def _header(meta: dict[str, Any]) -> list[str]:
    pg = meta["postgresql"]
    versions = meta["versions"]
    return [
        f"## shardflow benchmark, {meta['started']} (commit {meta['git_commit']})",
        "",
        f"{meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']};"
        f" PostgreSQL {pg['server_version'].split()[0]} x {meta['servers']} local server(s):"
        f" fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']},"
        f" full_page_writes={pg['full_page_writes']}, shared_buffers={pg['shared_buffers']}.",
        f"shardflow {versions['shardflow']}, DBOS {versions['dbos']},"
        f" PgQueuer {versions['pgqueuer']} (asyncpg {versions['asyncpg']}),"
        f" psycopg {versions['psycopg']}. Medians of {meta['plan']['rounds']} round(s);"
        f" load average before/after: {meta['load_average_before'][0]:.2f} /"
        f" {meta['load_average_after'][0]:.2f}.",
        "",
    ]


def save(document: dict[str, Any], directory: Path, started: dt.datetime) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    path = directory / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text, encoding="utf-8")
    (directory / "latest.json").write_text(text, encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
