"""What a fault run did, and the guarantees of docs (ARCHITECTURE section 7) checked on it.

Recording. Every execution of a recorded step appends two lines to a per-process JSONL
file (``SHARDFLOW_FAULT_HISTORY`` names the directory): ``start`` before the body runs and
``end`` after (``completed`` says whether the body returned). A process killed mid-step
leaves a ``start`` without an ``end``; the harness records when it killed that pid. Files,
not a database: a recording database would share the faults under test (a frozen or
read-only server would stall every step), and ``os.write`` on an ``O_APPEND`` descriptor
survives SIGKILL of the writer.

Clocks. Executions are stamped with ``time.time()``, the engine's rows with the database
clock (``now()``). The suite runs its servers on the same host, so both read the same
system clock; ``tolerance`` absorbs rounding (PostgreSQL keeps microseconds).

Guarantees checked (``check`` returns every violation, of every kind):

(a) ``rerun-after-checkpoint``: no execution of a step started after that step's checkpoint
    committed. ``step_outputs.created_at`` is the *start* of the checkpoint's transaction,
    before its commit, so it cannot bound the commit from above. Upper bounds that can:
    the start of any execution of a later step of the same workflow (a run reaches step
    m > n only after step n's row is committed, by itself or by the run it lost to), the
    ``created_at`` of any later step row (its transaction began after that execution), and
    the terminal row's ``updated_at``. A start later than the earliest of these is a
    violation for certain; a rerun that began between commit and that bound goes unseen.
(b) ``overlap``: no two executions of the same step overlapped in time. An execution with
    no ``end`` ended when its process was killed (or is still running: infinity).
(c) ``missing`` / ``duplicate`` / ``wrong-state`` / ``wrong-output`` / ``unexpected`` /
    ``children``: every submitted workflow has exactly one live row across all shards,
    in the expected terminal state with the expected output; each parent has exactly the
    expected number of child workflows; no other workflow exists.
(d) ``message-lost`` / ``message-duplicated`` / ``message-unexpected`` /
    ``message-order``: the messages each receiver's ``recv`` checkpoints hold are exactly
    the messages sent to it, each once, in each sender's order.
(e) ``step-lost`` / ``staged-left`` / ``dangling-tombstone``: a finished workflow holds a
    row for every step number up to its last (moves copy them all), every recorded
    execution's step has its row, no staged copy (IMPORTING) is left, and every tombstone
    points at the shard that holds the workflow.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "SHARDFLOW_FAULT_HISTORY"
ANY_OUTPUT = object()


# -- recording (in worker processes) ----------------------------------------------------------


class Recorder:
    """Appends execution records to ``<dir>/history-<pid>.jsonl``. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"history-{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder | None:
    """This process's recorder, or None when ``SHARDFLOW_FAULT_HISTORY`` is not set."""
    global _recorder
    directory = os.environ.get(ENV)
    if not directory:
        return None
    with _recorder_lock:
        if _recorder is None or _recorder.path.parent != Path(directory):
            _recorder = Recorder(Path(directory))
        return _recorder


# -- the history ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execution:
    workflow_id: str
    step_no: int
    attempt: int
    pid: int
    start: float
    end: float | None  # None: no end recorded (process killed, or still running)
    completed: bool
    shard: str = ""


@dataclass(frozen=True, slots=True)
class StepRow:
    workflow_id: str
    step_no: int
    name: str
    created_at: float
    shard: str
    output: Any = None


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    workflow_id: str
    shard: str
    state: str
    updated_at: float
    output: Any = None
    parent_id: str | None = None
    moved_to: str | None = None


@dataclass(frozen=True, slots=True)
class Expected:
    state: str = "SUCCESS"
    output: Any = ANY_OUTPUT
    children: int = 0


@dataclass
class History:
    executions: list[Execution] = field(default_factory=list)
    step_rows: list[StepRow] = field(default_factory=list)
    workflow_rows: list[WorkflowRow] = field(default_factory=list)
    expected: dict[str, Expected] = field(default_factory=dict)
    # receiver -> sender -> messages in the order that sender sent them
    sent: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # pid -> when it was killed (epoch seconds)
    deaths: dict[int, float] = field(default_factory=dict)
    recv_step_name: str = "shardflow.recv"
    # Fault isolation: (shard, start, end) of each outage, the workflows that always have
    # a next step to run, and the longest pause those may take on a healthy shard.
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    steady: set[str] = field(default_factory=set)
    max_stall: float = 7.0


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    workflow_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.workflow_id}: {self.detail}"


LIVE_EXCLUDED = {"MOVED", "IMPORTING"}


def check(history: History, *, tolerance: float = 0.001) -> list[Violation]:
    """Every violation of the guarantees in ``history`` (see the module docstring)."""
    out: list[Violation] = []
    out += _reruns_after_checkpoint(history, tolerance)
    out += _overlaps(history)
    out += _workflows(history)
    out += _messages(history)
    out += _moves(history)
    out += _isolation(history)
    return out


def _isolation(history: History) -> list[Violation]:
    """A workflow on a healthy shard kept making progress while another shard was out:
    no pause between its step starts (within its own lifetime) longer than ``max_stall``."""
    out = []
    moved = {w.workflow_id for w in history.workflow_rows if w.state == "MOVED"}
    home = {wid: rows[0].shard for wid, rows in _live(history).items()}
    starts: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, float] = {}
    for e in history.executions:
        starts[e.workflow_id].append(e.start)
        ends[e.workflow_id] = max(ends.get(e.workflow_id, 0.0), e.end or e.start)
    for shard, t0, t1 in history.outages:
        for wid in sorted(history.steady - moved):
            if home.get(wid) in (None, shard) or not starts.get(wid):
                continue
            lo, hi = max(t0, min(starts[wid])), min(t1, ends[wid])
            if hi - lo <= history.max_stall:
                continue
            points = [lo, *sorted(t for t in starts[wid] if lo < t < hi), hi]
            gap = max(b - a for a, b in itertools.pairwise(points))
            if gap > history.max_stall:
                out.append(
                    Violation(
                        "isolation",
                        wid,
                        f"on {home[wid]}, no step for {gap:.1f}s while {shard} was out"
                        f" ({t1 - t0:.1f}s)",
                    )
                )
    return out


def _live(history: History) -> dict[str, list[WorkflowRow]]:
    live: dict[str, list[WorkflowRow]] = defaultdict(list)
    for row in history.workflow_rows:
        if row.state not in LIVE_EXCLUDED:
            live[row.workflow_id].append(row)
    return live


def _reruns_after_checkpoint(history: History, tolerance: float) -> list[Violation]:
    out = []
    by_wf: dict[str, list[Execution]] = defaultdict(list)
    for e in history.executions:
        by_wf[e.workflow_id].append(e)
    rows_by_wf: dict[str, list[StepRow]] = defaultdict(list)
    for r in history.step_rows:
        rows_by_wf[r.workflow_id].append(r)
    finished: dict[str, float] = {}
    for w in history.workflow_rows:
        if w.state in {"SUCCESS", "ERROR", "CANCELLED", "DEAD"}:
            finished[w.workflow_id] = min(w.updated_at, finished.get(w.workflow_id, w.updated_at))
    for wid, rows in rows_by_wf.items():
        executions = by_wf.get(wid, [])
        for row in rows:
            bounds = [e.start for e in executions if e.step_no > row.step_no]
            bounds += [r.created_at for r in rows if r.step_no > row.step_no]
            if wid in finished:
                bounds.append(finished[wid])
            if not bounds:
                continue
            committed_by = min(bounds)
            for e in executions:
                if e.step_no == row.step_no and e.start > committed_by + tolerance:
                    out.append(
                        Violation(
                            "rerun-after-checkpoint",
                            wid,
                            f"step {row.step_no} ran again (attempt {e.attempt}, pid {e.pid})"
                            f" {e.start - committed_by:.3f}s after its checkpoint had"
                            " committed",
                        )
                    )
    return out


def _overlaps(history: History) -> list[Violation]:
    out = []
    by_step: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for e in history.executions:
        by_step[(e.workflow_id, e.step_no)].append(e)
    for (wid, step_no), runs in by_step.items():
        runs.sort(key=lambda e: e.start)
        for i, a in enumerate(runs):
            a_end = _end(a, history.deaths)
            for b in runs[i + 1 :]:
                if b.start < a_end:
                    out.append(
                        Violation(
                            "overlap",
                            wid,
                            f"step {step_no}: attempt {a.attempt} (pid {a.pid}, {a.shard},"
                            f" {a.start:.3f}-{a_end:.3f}) overlaps attempt {b.attempt}"
                            f" (pid {b.pid}, {b.shard}, from {b.start:.3f})",
                        )
                    )
    return out


def _end(e: Execution, deaths: Mapping[int, float]) -> float:
    if e.end is not None:
        return e.end
    return deaths.get(e.pid, float("inf"))


def _workflows(history: History) -> list[Violation]:
    out = []
    live = _live(history)
    children: dict[str, list[WorkflowRow]] = defaultdict(list)
    for rows in live.values():
        for row in rows:
            if row.parent_id is not None:
                children[row.parent_id].append(row)
    expected_children = {
        c.workflow_id for kids in children.values() for c in kids if c.parent_id in history.expected
    }
    for wid, want in history.expected.items():
        rows = live.get(wid, [])
        if not rows:
            out.append(Violation("missing", wid, "no live row on any shard"))
            continue
        if len(rows) > 1:
            shards = sorted(r.shard for r in rows)
            out.append(Violation("duplicate", wid, f"live on {len(rows)} shards: {shards}"))
        for row in rows:
            if row.state != want.state:
                out.append(
                    Violation("wrong-state", wid, f"{row.state} on {row.shard}, not {want.state}")
                )
            elif want.output is not ANY_OUTPUT and row.output != want.output:
                out.append(
                    Violation("wrong-output", wid, f"{row.output!r}, expected {want.output!r}")
                )
        kids = {c.workflow_id for c in children.get(wid, [])}
        if len(kids) != want.children:
            out.append(
                Violation("children", wid, f"{len(kids)} children, expected {want.children}")
            )
        for kid in kids:
            for row in live[kid]:
                if row.state != "SUCCESS":
                    out.append(Violation("wrong-state", kid, f"child of {wid} is {row.state}"))
    for wid, rows in live.items():
        if wid in history.expected:
            continue
        if wid in expected_children:
            if len(rows) > 1:
                shards = sorted(r.shard for r in rows)
                out.append(Violation("duplicate", wid, f"live on {len(rows)} shards: {shards}"))
            continue
        out.append(Violation("unexpected", wid, f"{rows[0].state} on {rows[0].shard}"))
    return out


def _messages(history: History) -> list[Violation]:
    out = []
    rows_by_wf: dict[str, list[StepRow]] = defaultdict(list)
    for r in history.step_rows:
        rows_by_wf[r.workflow_id].append(r)
    for receiver, by_sender in history.sent.items():
        received = [
            r.output
            for r in sorted(rows_by_wf.get(receiver, []), key=lambda r: r.step_no)
            if r.name == history.recv_step_name
        ]
        counts = Counter(_key(m) for m in received if m is not None)
        sent_all = [m for messages in by_sender.values() for m in messages]
        sent_counts = Counter(_key(m) for m in sent_all)
        for key, n in sent_counts.items():
            if counts[key] < n:
                out.append(Violation("message-lost", receiver, f"{key} never received"))
            elif counts[key] > n:
                out.append(
                    Violation("message-duplicated", receiver, f"{key} received {counts[key]}x")
                )
        for key in counts.keys() - sent_counts.keys():
            out.append(Violation("message-unexpected", receiver, f"{key} was never sent"))
        positions = {_key(m): i for i, m in enumerate(received) if m is not None}
        for sender, messages in by_sender.items():
            order = [positions[_key(m)] for m in messages if _key(m) in positions]
            if order != sorted(order):
                out.append(
                    Violation("message-order", receiver, f"{sender}'s messages out of order")
                )
    return out


def _key(message: Any) -> str:
    return json.dumps(message, sort_keys=True)


def _moves(history: History) -> list[Violation]:
    out = []
    live = _live(history)
    rows_by_wf: dict[str, set[int]] = defaultdict(set)
    for r in history.step_rows:
        rows_by_wf[r.workflow_id].add(r.step_no)
    for row in history.workflow_rows:
        if row.state == "IMPORTING":
            out.append(Violation("staged-left", row.workflow_id, f"staged copy on {row.shard}"))
        if row.state == "MOVED":
            holders = {r.shard for r in live.get(row.workflow_id, [])}
            if holders and row.moved_to not in holders:
                out.append(
                    Violation(
                        "dangling-tombstone",
                        row.workflow_id,
                        f"tombstone on {row.shard} points at {row.moved_to};"
                        f" it lives on {sorted(holders)}",
                    )
                )
    for wid, rows in live.items():
        if not any(r.state == "SUCCESS" for r in rows):
            continue
        steps = rows_by_wf.get(wid, set())
        if steps and steps != set(range(max(steps) + 1)):
            gaps = sorted(set(range(max(steps) + 1)) - steps)
            out.append(Violation("step-lost", wid, f"no rows for steps {gaps}"))
    executed: dict[str, set[int]] = defaultdict(set)
    for e in history.executions:
        if e.completed:
            executed[e.workflow_id].add(e.step_no)
    for wid, step_nos in executed.items():
        rows = live.get(wid, [])
        if any(r.state == "SUCCESS" for r in rows):
            lost = sorted(step_nos - rows_by_wf.get(wid, set()))
            if lost:
                out.append(Violation("step-lost", wid, f"executed steps {lost} have no row"))
    return out


# -- reading a run's history ---------------------------------------------------------------


def read_executions(directory: Path) -> list[Execution]:
    """Pair ``start`` and ``end`` lines of every process's file into executions."""
    starts: dict[tuple[int, str], dict[str, Any]] = {}
    ends: dict[tuple[int, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("history-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line cut short by SIGKILL
            record = json.loads(line)
            key = (int(record["pid"]), str(record["id"]))
            (starts if record["kind"] == "start" else ends)[key] = record
    out = []
    for key, s in starts.items():
        e = ends.get(key)
        out.append(
            Execution(
                workflow_id=s["workflow_id"],
                step_no=int(s["step_no"]),
                attempt=int(s["attempt"]),
                pid=int(s["pid"]),
                start=float(s["t"]),
                end=None if e is None else float(e["t"]),
                completed=bool(e and e["completed"]),
                shard=str(s.get("shard", "")),
            )
        )
    return out


def read_rows(shard_dsns: Mapping[str, str], loads: Any) -> tuple[list[WorkflowRow], list[StepRow]]:
    """Every workflow and step row of every shard (``loads`` decodes stored values)."""
    import psycopg

    workflows: list[WorkflowRow] = []
    steps: list[StepRow] = []
    for shard, dsn in shard_dsns.items():
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            for wid, state, updated, output, parent, moved_to in conn.execute(
                "SELECT workflow_id, state, extract(epoch FROM updated_at)::float8, output,"
                " parent_id, moved_to FROM shardflow.workflow_status"
            ):
                workflows.append(
                    WorkflowRow(
                        wid,
                        shard,
                        state,
                        float(updated),
                        None if output is None else loads(output),
                        parent,
                        moved_to,
                    )
                )
            for wid, step_no, name, created, output in conn.execute(
                "SELECT workflow_id, step_no, name, extract(epoch FROM created_at)::float8,"
                " output FROM shardflow.step_outputs"
            ):
                steps.append(
                    StepRow(
                        wid,
                        int(step_no),
                        name,
                        float(created),
                        shard,
                        None if output is None else loads(output),
                    )
                )
    return workflows, steps


def summarize(violations: Sequence[Violation], limit: int = 20) -> str:
    kinds = Counter(v.kind for v in violations)
    lines = [f"{len(violations)} violations: {dict(kinds)}"]
    lines += [f"  {v}" for v in violations[:limit]]
    return "\n".join(lines)


def kinds(violations: Iterable[Violation]) -> set[str]:
    return {v.kind for v in violations}


def now() -> float:
    return time.time()
