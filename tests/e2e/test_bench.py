"""The benchmark harness runs end to end and records positive numbers.

A smoke run (``--quick``: small N, one round) of the rows that need neither DBOS nor
PgQueuer, against real local PostgreSQL servers, as ``python -m bench`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_positive_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "shardflow,raw",
            "--rows",
            "1,3,4",
            "--results-dir",
            str(results),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]

    latest = json.loads((results / "latest.json").read_text(encoding="utf-8"))
    stamped = [p for p in results.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text(encoding="utf-8")) == latest

    summary = {(e["row"], e["system"], e["case"]): e for e in latest["summary"]}
    assert set(summary) == {
        (1, "shardflow", "0 steps"),
        (1, "shardflow", "3 steps"),
        (1, "shardflow", "10 steps"),
        (1, "raw", "1 thread"),
        (1, "raw", "8 threads"),
        (3, "shardflow", "submit_many, 3 shards"),
        (4, "shardflow", "Router.route"),
    }
    assert all(e["status"] == "ok" and e["rounds"] == 1 for e in summary.values())

    def metrics(row: int, system: str, case: str) -> dict[str, Any]:
        found: dict[str, Any] = summary[(row, system, case)]["metrics"]
        return found

    for steps in (0, 3, 10):
        m = metrics(1, "shardflow", f"{steps} steps")
        assert m["steps"] == steps
        for name in (
            "workflows_per_s",
            "submit_per_s",
            "cpu_ms_per_workflow",
            "server_cpu_ms_per_workflow",
            "wal_bytes_per_workflow",
            "wal_run_bytes_per_workflow",
        ):
            assert m[name] > 0, (steps, name)
        assert m["checkpoints_per_s"] == m["workflows_per_s"] * steps
    for case in ("1 thread", "8 threads"):
        m = metrics(1, "raw", case)
        assert m["commits_per_s"] > 0 and m["wal_bytes_per_commit"] > 0
    assert metrics(3, "shardflow", "submit_many, 3 shards")["submit_per_s"] > 0
    assert metrics(4, "shardflow", "Router.route")["us_per_id"] > 0

    ratio_names = [r["name"] for r in latest["ratios"]]
    assert "routing cost" in ratio_names
    assert any("raw 1-thread" in name for name in ratio_names)
    assert latest["meta"]["postgresql"]["fsync"] == "on"
    assert latest["meta"]["postgresql"]["synchronous_commit"] == "on"
    assert "### 1. End-to-end" in done.stdout
    assert elapsed < 60, f"the smoke run took {elapsed:.0f}s"


def test_quick_application_shape_row(tmp_path: Path) -> None:
    """Row 7: clients that submit and wait for ``result()``: threads with the worker in
    their process (1, 16, 64 clients); in quick mode, 1 client only for asyncio tasks
    with the async client, and for threads with the worker in its own process."""
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "shardflow",
            "--rows",
            "7",
            "--results-dir",
            str(results),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    latest = json.loads((results / "latest.json").read_text(encoding="utf-8"))
    summary = {(e["row"], e["system"], e["case"]): e for e in latest["summary"]}
    assert set(summary) == {
        (7, "shardflow", "1 client"),
        (7, "shardflow", "1 client, async tasks"),
        (7, "shardflow", "1 client, worker process"),
        (7, "shardflow", "16 clients"),
        (7, "shardflow", "64 clients"),
    }
    for (_, _, case), entry in summary.items():
        assert entry["status"] == "ok", entry
        m = entry["metrics"]
        assert m["workflows"] == 100 and m["steps"] == 3
        assert m["clients"] == int(case.split()[0])
        assert m["workflows_per_s"] > 0 and m["cpu_ms_per_workflow"] > 0
        assert 0 < m["p50_ms"] <= m["p99_ms"]
    # The worker process's CPU time is counted with the clients'.
    apart = summary[(7, "shardflow", "1 client, worker process")]["metrics"]
    assert apart["worker_cpu_ms_per_workflow"] > 0 and apart["client_cpu_ms_per_workflow"] > 0
    assert apart["cpu_ms_per_workflow"] == pytest.approx(
        apart["worker_cpu_ms_per_workflow"] + apart["client_cpu_ms_per_workflow"]
    )
    assert "### 7. Application shape" in done.stdout
    assert "| shardflow | async tasks | 1 | 100 |" in done.stdout


def test_application_shape_ratios_use_dbos_better_mode() -> None:
    """Each shardflow way is compared with whichever DBOS mode ran more workflows/s."""
    from bench.report import Entry, ratios

    def entry(system: str, case: str, rate: float) -> Entry:
        return Entry(7, system, case, {"workflows_per_s": rate}, 1, "ok")

    entries = [
        entry("shardflow", "16 clients", 500),
        entry("shardflow", "16 clients, async tasks", 800),
        entry("shardflow", "16 clients, worker process", 600),
        entry("dbos", "16 clients, direct", 40),
        entry("dbos", "16 clients, queue", 50),
        entry("shardflow", "64 clients", 450),
        entry("shardflow", "64 clients, async tasks", 1000),
        entry("dbos", "64 clients, direct", 100),
    ]
    shown = {r.name: (r.shown, r.met) for r in ratios(entries)}
    better = "application shape, {}: shardflow ({}) / DBOS better mode ({}) workflows/s"
    assert shown == {
        better.format("16 clients", "threads", "queue"): ("10.0x", True),
        better.format("16 clients", "async tasks", "queue"): ("16.0x", True),
        better.format("16 clients", "worker process", "queue"): ("12.0x", True),
        better.format("64 clients", "threads", "direct"): ("4.5x", False),
        better.format("64 clients", "async tasks", "direct"): ("10.0x", True),
        "application shape, shardflow (threads): 64 clients / 16 clients, workflows/s": (
            "0.90x",
            False,
        ),
        "application shape, shardflow (async tasks): 64 clients / 16 clients, workflows/s": (
            "1.25x",
            True,
        ),
    }
