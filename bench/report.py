"""Medians over rounds, the results table (Markdown), and the ratios against the targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Measurement = dict[str, Any]
ROW_TITLES = {
    1: "End-to-end: N workflows x S steps, submitted one call each, then run by one worker"
    " process on one shard",
    2: "Sharding tax: the same N workflows (3 steps) on 1 shard / 1 worker vs 3 shards /"
    " 3 worker processes, same machine",
    3: "Batch submit",
    4: "Routing: workflow ID -> shard, in process (bench/routing.py)",
    5: "Recovery: SIGKILL a worker holding K running workflows; time until another worker"
    " runs each again",
    6: "Latency at light load: one submit call per workflow at a fixed rate, 3 steps",
    7: "Application shape: C clients each submit a 3-step workflow and wait for its result,"
    " one shard; shardflow's clients are threads or asyncio tasks (async client and"
    " workflows) with the worker in their process, or threads with the worker in its own"
    " process; DBOS's start workflows directly or enqueue them on a DBOS queue",
}
SYSTEM_NAMES = {
    "shardflow": "shardflow",
    "dbos": "DBOS Transact",
    "pgqueuer": "PgQueuer",
    "raw": "raw psycopg",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One (row, system, case): the median of each metric over its rounds (and the lowest
    and highest round), or why there is none."""

    row: int
    system: str
    case: str
    metrics: dict[str, float]
    rounds: int
    status: str  # "ok", "unavailable" or "failed"
    reason: str = ""
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)


def summarize(measurements: Sequence[Measurement]) -> list[Entry]:
    keys: list[tuple[int, str, str]] = []
    for m in measurements:
        key = (m["row"], m["system"], m["case"])
        if key not in keys:
            keys.append(key)
    entries = []
    for key in keys:
        group = [m for m in measurements if (m["row"], m["system"], m["case"]) == key]
        ok = [m for m in group if m["status"] == "ok"]
        if not ok:
            bad = group[0]
            entries.append(Entry(*key, {}, 0, bad["status"], bad.get("reason", "")))
            continue
        names = [
            k
            for k in ok[0]["metrics"]
            if all(isinstance(m["metrics"].get(k), int | float) for m in ok)
        ]
        values = {n: [float(m["metrics"][n]) for m in ok] for n in names}
        medians = {n: statistics.median(v) for n, v in values.items()}
        low = {n: min(v) for n, v in values.items()}
        high = {n: max(v) for n, v in values.items()}
        entries.append(Entry(*key, medians, len(ok), "ok", "", low, high))
    return entries


def _find(entries: Sequence[Entry], row: int, system: str, case: str) -> Entry | None:
    for e in entries:
        if (e.row, e.system, e.case) == (row, system, case):
            return e
    return None


def _num(value: float, digits: int = 0) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


Column = tuple[str, Callable[[Entry], str]]


def _table(title: str, entries: Sequence[Entry], columns: Sequence[Column]) -> list[str]:
    if not entries:
        return []
    lines = [f"### {title}", "", "| " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for e in entries:
        if e.status != "ok":
            label = _system(e) if e.case == "-" else f"{_system(e)} ({e.case})"
            cells = [label, f"{e.status}: {e.reason}"] + [""] * (len(columns) - 2)
        else:
            cells = [fmt(e) for _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _system(e: Entry) -> str:
    return SYSTEM_NAMES.get(e.system, e.system)


def _metric(name: str, digits: int = 0, scale: float = 1.0) -> Callable[[Entry], str]:
    def fmt(e: Entry) -> str:
        value = e.metrics.get(name)
        return "-" if value is None else _num(value * scale, digits)

    return fmt


def tables(entries: Sequence[Entry]) -> list[str]:
    """The results as Markdown tables, one per row of the benchmark."""

    def rows(row: int, systems: Sequence[str] | None = None) -> list[Entry]:
        return [e for e in entries if e.row == row and (systems is None or e.system in systems)]

    out: list[str] = []
    out += _table(
        "1. " + ROW_TITLES[1],
        rows(1, ("shardflow", "dbos", "pgqueuer")),
        [
            ("system", _system),
            ("steps", _metric("steps")),
            ("N", _metric("workflows")),
            ("submit/s", _metric("submit_per_s")),
            ("workflows/s", _metric("workflows_per_s")),
            ("(rounds: low-high)", _spread("workflows_per_s")),
            ("checkpoints/s", _metric("checkpoints_per_s")),
            ("worker CPU ms/wf", _metric("cpu_ms_per_workflow", 2)),
            ("server CPU ms/wf", _metric("server_cpu_ms_per_workflow", 2)),
            ("WAL B/wf", _metric("wal_bytes_per_workflow")),
            ("(submit + run)", _wal_split),
        ],
    )
    out += _table(
        "1b. Ceiling: bare psycopg INSERT + COMMIT loop, one process",
        rows(1, ("raw",)),
        [
            ("system", _system),
            ("threads", _metric("threads")),
            ("commits/s", _metric("commits_per_s")),
            ("CPU µs/commit", _metric("cpu_us_per_commit")),
            ("WAL B/commit", _metric("wal_bytes_per_commit")),
        ],
    )
    out += _table(
        "2. " + ROW_TITLES[2],
        rows(2),
        [
            ("system", _system),
            ("shards / workers", lambda e: e.case),
            ("N", _metric("workflows")),
            ("workflows/s", _metric("workflows_per_s")),
            ("checkpoints/s", _metric("checkpoints_per_s")),
            ("worker CPU ms/wf", _metric("cpu_ms_per_workflow", 2)),
            ("server CPU ms/wf", _metric("server_cpu_ms_per_workflow", 2)),
            ("WAL B/wf (run)", _metric("wal_run_bytes_per_workflow")),
        ],
    )
    out += _table(
        "3. " + ROW_TITLES[3],
        rows(3),
        [
            ("system", _system),
            ("how", lambda e: e.case),
            ("N", _metric("workflows")),
            ("workflows/s", _metric("submit_per_s")),
            ("CPU µs/wf", _metric("cpu_us_per_workflow")),
            ("WAL B/wf", _metric("wal_bytes_per_workflow")),
        ],
    )
    out += _table(
        "4. " + ROW_TITLES[4],
        rows(4),
        [
            ("system", _system),
            ("call", lambda e: e.case),
            ("µs/ID", _metric("us_per_id", 3)),
            ("IDs/s", _metric("ids_per_s")),
            ("bare mmh3 µs/ID", _metric("bare_mmh3_us_per_id", 3)),
        ],
    )
    out += _table(
        "5. " + ROW_TITLES[5],
        rows(5),
        [
            ("system", _system),
            ("K", _metric("workflows")),
            ("lease s", _metric("lease_seconds", 1)),
            ("heartbeat s", _metric("heartbeat_seconds", 2)),
            ("first back s", _metric("first_recovered_seconds", 2)),
            ("all back s", _metric("recovery_seconds", 2)),
            ("(rounds: low-high)", _spread("recovery_seconds", 2)),
        ],
    )
    out += _table(
        "6. " + ROW_TITLES[6],
        rows(6),
        [
            ("system", _system),
            ("rate/s", _metric("rate_per_s")),
            ("N", _metric("workflows")),
            ("to 1st step p50 ms", _metric("first_step_p50_ms", 1)),
            ("p99 ms", _metric("first_step_p99_ms", 1)),
            ("to end p50 ms", _metric("completion_p50_ms", 1)),
            ("p99 ms", _metric("completion_p99_ms", 1)),
        ],
    )
    out += _table(
        "7. " + ROW_TITLES[7],
        rows(7),
        [
            ("system", _system),
            ("how", _app_how),
            ("clients", _metric("clients")),
            ("N", _metric("workflows")),
            ("workflows/s", _metric("workflows_per_s")),
            ("(rounds: low-high)", _spread("workflows_per_s")),
            ("submit to result p50 ms", _metric("p50_ms", 1)),
            ("p99 ms", _metric("p99_ms", 1)),
            ("client+worker CPU ms/wf", _metric("cpu_ms_per_workflow", 2)),
            ("server CPU ms/wf", _metric("server_cpu_ms_per_workflow", 2)),
        ],
    )
    return out


def _app_how(e: Entry) -> str:
    """Row 7's case without its client count: "async tasks", "queue", ...; shardflow's
    plain case ("16 clients") is client threads with the worker in their process."""
    return e.case.partition(", ")[2] or "threads"


def _spread(name: str, digits: int = 0) -> Callable[[Entry], str]:
    def fmt(e: Entry) -> str:
        if name not in e.low or e.rounds < 2:
            return "-"
        return f"{_num(e.low[name], digits)}-{_num(e.high[name], digits)}"

    return fmt


def _wal_split(e: Entry) -> str:
    sub = e.metrics.get("wal_submit_bytes_per_workflow")
    run = e.metrics.get("wal_run_bytes_per_workflow")
    if sub is None or run is None:
        return "-"
    return f"{sub:,.0f} + {run:,.0f}"


@dataclass(frozen=True, slots=True)
class Ratio:
    """A comparison, and whether it meets its target (None: no target, for information)."""

    name: str
    value: float
    shown: str
    target: str
    met: bool | None

    def line(self) -> str:
        verdict = "" if self.met is None else ("  MET" if self.met else "  NOT MET")
        target = f" (target {self.target})" if self.target else ""
        return f"- {self.name}: {self.shown}{target}{verdict}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "shown": self.shown,
            "target": self.target,
            "met": self.met,
        }


def ratios(entries: Sequence[Entry]) -> list[Ratio]:
    """Every comparison whose two sides were measured."""

    def metric(row: int, system: str, case: str, name: str) -> float | None:
        e = _find(entries, row, system, case)
        if e is None or e.status != "ok":
            return None
        return e.metrics.get(name)

    out: list[Ratio] = []
    raw1 = metric(1, "raw", "1 thread", "commits_per_s")
    for steps in (0, 3, 10):
        case = f"{steps} steps"
        sf = metric(1, "shardflow", case, "workflows_per_s")
        db = metric(1, "dbos", case, "workflows_per_s")
        if sf and db:
            r = sf / db
            out.append(
                Ratio(f"shardflow / DBOS workflows/s, {case}", r, f"{r:.1f}x", ">= 10x", r >= 10)
            )
    for steps in (3, 10):
        case = f"{steps} steps"
        sf = metric(1, "shardflow", case, "checkpoints_per_s")
        if sf and raw1:
            r = sf / raw1
            out.append(
                Ratio(
                    f"shardflow checkpoints/s, {case} / raw 1-thread commits/s",
                    r,
                    f"{r:.0%}",
                    ">= 50%",
                    r >= 0.5,
                )
            )
    raw8 = metric(1, "raw", "8 threads", "commits_per_s")
    sf = metric(1, "shardflow", "3 steps", "checkpoints_per_s")
    if sf and raw8:
        r = sf / raw8
        out.append(
            Ratio(
                "shardflow checkpoints/s, 3 steps / raw 8-thread commits/s", r, f"{r:.0%}", "", None
            )
        )
    for steps in (0, 3, 10):
        case = f"{steps} steps"
        sf = metric(1, "shardflow", case, "wal_bytes_per_workflow")
        db = metric(1, "dbos", case, "wal_bytes_per_workflow")
        if sf and db:
            r = sf / db
            out.append(
                Ratio(
                    f"shardflow / DBOS WAL bytes/workflow, {case}",
                    r,
                    f"{r:.2f}x",
                    "<= 0.5x",
                    r <= 0.5,
                )
            )
    for steps in (3,):
        case = f"{steps} steps"
        sf = metric(1, "shardflow", case, "cpu_ms_per_workflow")
        db = metric(1, "dbos", case, "cpu_ms_per_workflow")
        if sf and db:
            r = db / sf
            out.append(
                Ratio(f"DBOS / shardflow worker CPU per workflow, {case}", r, f"{r:.1f}x", "", None)
            )
    sf = metric(1, "shardflow", "0 steps", "workflows_per_s")
    pq = metric(1, "pgqueuer", "0 steps", "workflows_per_s")
    if sf and pq:
        r = sf / pq
        out.append(Ratio("shardflow / PgQueuer drain, 0 steps", r, f"{r:.2f}x", "", None))
    sf = metric(3, "shardflow", "submit_many, 3 shards", "submit_per_s")
    pq = metric(3, "pgqueuer", "enqueue(list), 1 server", "submit_per_s")
    if sf and pq:
        r = sf / pq
        out.append(Ratio("shardflow / PgQueuer batch submit", r, f"{r:.2f}x", "", None))
    us = metric(4, "shardflow", "Router.route", "us_per_id")
    if us:
        out.append(Ratio("routing cost", us, f"{us:.2f} µs/ID", "< 2 µs", us < 2))
    rec = metric(5, "shardflow", "SIGKILL", "recovery_seconds")
    lease = metric(5, "shardflow", "SIGKILL", "lease_seconds")
    if rec and lease:
        out.append(
            Ratio(
                "recovery after SIGKILL, all workflows running again",
                rec,
                f"{rec:.2f} s with a {lease:g} s lease",
                f"<= lease + 1 s = {lease + 1:g} s",
                rec <= lease + 1,
            )
        )
    out += _app_shape_ratios(metric)
    p50 = metric(7, "shardflow", "1 client", "p50_ms")
    p99 = metric(7, "shardflow", "1 client", "p99_ms")
    if p50 and p99:
        out.append(
            Ratio(
                "application shape, 1 client: p50 / p99 submit to result",
                p50,
                f"{p50:.1f} / {p99:.1f} ms",
                "< 5 / < 15 ms",
                p50 < 5 and p99 < 15,
            )
        )
    one = metric(2, "shardflow", "1 / 1", "workflows_per_s")
    three = metric(2, "shardflow", "3 / 3", "workflows_per_s")
    if one and three:
        r = three / one
        out.append(
            Ratio(
                "sharding tax: 3 shards / 3 workers vs 1 shard / 1 worker, workflows/s",
                r,
                f"{r:.0%}",
                ">= 90%",
                r >= 0.9,
            )
        )
    return out


APP_SHARDFLOW_CASES = ("", ", async tasks", ", worker process")  # after "C clients"


def _app_shape_ratios(metric: Callable[[int, str, str, str], float | None]) -> list[Ratio]:
    """Row 7: each shardflow way against DBOS's better mode (direct or queue, whichever
    ran more workflows/s), at 16 and 64 clients; then each way's 64 / 16 clients."""
    out: list[Ratio] = []
    for clients in ("16 clients", "64 clients"):
        modes = {
            m: metric(7, "dbos", f"{clients}, {m}", "workflows_per_s") for m in ("direct", "queue")
        }
        measured = {m: v for m, v in modes.items() if v}
        if not measured:
            continue
        best = max(measured, key=lambda m: measured[m])
        for suffix in APP_SHARDFLOW_CASES:
            sf = metric(7, "shardflow", clients + suffix, "workflows_per_s")
            if not sf:
                continue
            r = sf / measured[best]
            way = suffix.lstrip(", ") or "threads"
            out.append(
                Ratio(
                    f"application shape, {clients}: shardflow ({way}) / DBOS better mode"
                    f" ({best}) workflows/s",
                    r,
                    f"{r:.1f}x",
                    ">= 10x",
                    r >= 10,
                )
            )
    for suffix in APP_SHARDFLOW_CASES:
        sixteen = metric(7, "shardflow", "16 clients" + suffix, "workflows_per_s")
        sixty_four = metric(7, "shardflow", "64 clients" + suffix, "workflows_per_s")
        if sixteen and sixty_four:
            r = sixty_four / sixteen
            way = suffix.lstrip(", ") or "threads"
            out.append(
                Ratio(
                    f"application shape, shardflow ({way}): 64 clients / 16 clients, workflows/s",
                    r,
                    f"{r:.2f}x",
                    ">= 1x",
                    r >= 1,
                )
            )
    return out
