"""The history checker on synthetic histories: a clean one passes, each violation is seen."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fault.history import (
    Execution,
    Expected,
    History,
    Recorder,
    StepRow,
    WorkflowRow,
    check,
    kinds,
    read_executions,
)


def clean() -> History:
    """w1: two steps, the first interrupted once (killed before its checkpoint), then a
    replay; r1 received m1 and m2 from two senders; p1 has a child."""
    return History(
        executions=[
            Execution("w1", 0, 1, 100, 10.0, None, False),  # killed at 10.05
            Execution("w1", 0, 2, 200, 15.0, 15.1, True),
            Execution("w1", 1, 2, 200, 15.3, 15.4, True),
        ],
        step_rows=[
            StepRow("w1", 0, "work", 15.15, "shard0", "a"),
            StepRow("w1", 1, "work", 15.45, "shard0", "b"),
            StepRow("r1", 0, "shardflow.recv.deadline", 9.0, "shard1", 99.0),
            StepRow("r1", 1, "shardflow.recv", 11.0, "shard1", "m1"),
            StepRow("r1", 2, "shardflow.recv", 12.0, "shard1", "m2"),
        ],
        workflow_rows=[
            WorkflowRow("w1", "shard0", "SUCCESS", 15.5, ["a", "b"]),
            WorkflowRow("w1", "shard1", "MOVED", 12.0, moved_to="shard0"),
            WorkflowRow("r1", "shard1", "SUCCESS", 12.5),
            WorkflowRow("p1", "shard2", "SUCCESS", 13.0, "x"),
            WorkflowRow("c1", "shard0", "SUCCESS", 12.9, parent_id="p1"),
        ],
        expected={
            "w1": Expected(output=["a", "b"]),
            "r1": Expected(),
            "p1": Expected(output="x", children=1),
        },
        sent={"r1": {"client": ["m1"], "s1": ["m2"]}},
        deaths={100: 10.05},
    )


def test_a_clean_history_passes() -> None:
    assert check(clean()) == []


def test_a_step_started_after_its_checkpoint_committed() -> None:
    h = clean()
    # After step 1 of the same workflow had started: step 0 was committed by then.
    h.executions.append(Execution("w1", 0, 3, 300, 15.35, 15.36, True))
    assert kinds(check(h)) == {"rerun-after-checkpoint"}


def test_a_rerun_of_the_last_step_after_the_workflow_finished() -> None:
    h = clean()
    h.executions.append(Execution("w1", 1, 3, 300, 16.0, 16.1, True))
    assert kinds(check(h)) == {"rerun-after-checkpoint"}


def test_overlapping_executions() -> None:
    h = clean()
    h.executions.append(Execution("w1", 1, 3, 300, 15.35, 15.38, True))
    assert "overlap" in kinds(check(h))
    # An execution never ended (not killed) overlaps anything after it.
    h = clean()
    h.deaths.clear()
    assert kinds(check(h)) == {"overlap"}


def test_missing_duplicate_and_unfinished_workflows() -> None:
    h = clean()
    h.expected["gone"] = Expected()
    assert kinds(check(h)) == {"missing"}
    h = clean()
    h.workflow_rows.append(WorkflowRow("w1", "shard2", "SUCCESS", 15.6, ["a", "b"]))
    assert kinds(check(h)) == {"duplicate"}
    h = clean()
    h.workflow_rows[0] = WorkflowRow("w1", "shard0", "RUNNING", 15.5)
    assert kinds(check(h)) == {"wrong-state"}
    h = clean()
    h.workflow_rows[0] = WorkflowRow("w1", "shard0", "SUCCESS", 15.5, ["a"])
    assert kinds(check(h)) == {"wrong-output"}


def test_children_and_unexpected_workflows() -> None:
    h = clean()
    h.workflow_rows.append(WorkflowRow("c2", "shard1", "SUCCESS", 13.0, parent_id="p1"))
    assert kinds(check(h)) == {"children"}
    h = clean()
    h.workflow_rows.append(WorkflowRow("stray", "shard1", "ENQUEUED", 13.0))
    assert kinds(check(h)) == {"unexpected"}
    h = clean()
    h.workflow_rows[4] = WorkflowRow("c1", "shard0", "ERROR", 12.9, parent_id="p1")
    assert kinds(check(h)) == {"wrong-state"}


def test_messages_lost_duplicated_unexpected_and_reordered() -> None:
    h = clean()
    h.sent["r1"]["client"].append("m3")
    assert kinds(check(h)) == {"message-lost"}
    h = clean()
    h.step_rows.append(StepRow("r1", 3, "shardflow.recv", 12.1, "shard1", "m2"))
    assert kinds(check(h)) == {"message-duplicated"}
    h = clean()
    h.step_rows.append(StepRow("r1", 3, "shardflow.recv", 12.1, "shard1", "zz"))
    assert kinds(check(h)) == {"message-unexpected"}
    h = clean()
    h.sent["r1"] = {"client": ["m2", "m1"]}
    assert kinds(check(h)) == {"message-order"}
    # A recv that timed out (None) loses the message it waited for.
    h = clean()
    h.step_rows[4] = StepRow("r1", 2, "shardflow.recv", 12.0, "shard1", None)
    assert kinds(check(h)) == {"message-lost"}


def test_what_a_move_can_lose() -> None:
    h = clean()
    del h.step_rows[0]  # w1's step 0 row did not come along
    assert kinds(check(h)) == {"step-lost"}
    h = clean()
    h.workflow_rows.append(WorkflowRow("w1", "shard3", "IMPORTING", 15.6))
    assert kinds(check(h)) == {"staged-left"}
    h = clean()
    h.workflow_rows[1] = WorkflowRow("w1", "shard1", "MOVED", 12.0, moved_to="shard3")
    assert kinds(check(h)) == {"dangling-tombstone"}


def test_recorded_executions_are_read_back(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    base = {"pid": os.getpid(), "workflow_id": "w", "step_no": 0, "attempt": 1}
    rec.write({**base, "id": "a", "kind": "start", "t": 1.0})
    rec.write({**base, "id": "a", "kind": "end", "t": 2.0, "completed": True})
    rec.write({**base, "id": "b", "kind": "start", "t": 3.0})
    # A line cut short by SIGKILL is ignored.
    with rec.path.open("a") as f:
        f.write(json.dumps({**base, "id": "c", "kind": "start", "t": 4.0})[:20])
    got = sorted(read_executions(tmp_path), key=lambda e: e.start)
    pid = os.getpid()
    assert got == [
        Execution("w", 0, 1, pid, 1.0, 2.0, True),
        Execution("w", 0, 1, pid, 3.0, None, False),
    ]


@pytest.mark.parametrize("tolerance", [0.0, 0.001])
def test_a_rerun_before_the_commit_is_allowed(tolerance: float) -> None:
    """At-least-once: an execution that started before the checkpoint committed (here:
    before any later step began) may run again."""
    h = clean()
    h.executions.append(Execution("w1", 1, 3, 300, 15.29, 15.295, True))
    assert check(h, tolerance=tolerance) == []


def test_a_healthy_shard_stalled_by_another_shards_outage() -> None:
    h = clean()
    h.steady = {"s1"}
    h.expected["s1"] = Expected()
    h.workflow_rows.append(WorkflowRow("s1", "shard1", "SUCCESS", 60.0))
    times = [*range(0, 20), *range(32, 40)]  # no step between t=20 and t=31
    h.executions += [Execution("s1", i, 1, 400, t, t + 0.5, True) for i, t in enumerate(times)]
    h.step_rows += [StepRow("s1", i, "work", t + 0.6, "shard1") for i, t in enumerate(times)]
    h.outages = [("shard1", 18.0, 30.0)]  # its own shard: a stall is allowed
    assert check(h) == []
    h.outages = [("shard0", 18.0, 30.0)]
    assert kinds(check(h)) == {"isolation"}
