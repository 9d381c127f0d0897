"""The pure move rules (shardflow.router.moves) against the SQL schema and against the
tables of docs/rebalancing.md, row by row: a row added to either table fails here until
it has a case."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shardflow.engine.states import WorkflowState
from shardflow.rebalance.live import Ownership, Repair, reconcile
from shardflow.router.moves import (
    STAGED,
    TOMBSTONE,
    SlotState,
    SourceRow,
    Verdict,
    copy_verdict,
)
from shardflow.sql import migrations

DOC = Path(__file__).resolve().parents[2] / "docs" / "rebalancing.md"
MOVE = "move-1"


def doc_table(heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table under ``heading``."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    # Stop at the end of the first table.
    first = section.index(rows[0])
    block = section[first:].split("\n\n", 1)[0].splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
    return [row for row in cells[2:] if row]  # skip the header and the |---| line


# -- SlotState and the schema ----------------------------------------------------------------


def slot_state_check() -> set[str]:
    """The values the newest migration allows in ``slot_ownership.state``."""
    found: set[str] | None = None
    for migration in migrations():
        for statement in migration.sql.split(";"):
            if "slot_ownership" not in statement:
                continue
            match = re.search(r"\bstate\b[^,]*?CHECK\s*\(\s*state\s+IN\s*\(([^)]*)\)", statement)
            if match:
                found = set(re.findall(r"'([^']*)'", match.group(1)))
    assert found is not None, "no CHECK constraint on slot_ownership.state in the migrations"
    return found


def test_slot_state_matches_the_sql_check_constraint() -> None:
    assert (
        {s.value for s in SlotState}
        == slot_state_check()
        == {
            "OWNED",
            "IMPORTING",
            "MIGRATING_OUT",
        }
    )


def test_slot_states_compare_and_format_as_their_sql_text() -> None:
    assert SlotState("MIGRATING_OUT") is SlotState.MIGRATING_OUT
    assert SlotState.OWNED == "OWNED"
    assert f"{SlotState.IMPORTING}" == "IMPORTING"
    with pytest.raises(ValueError):
        SlotState("owned")


def test_row_states_of_the_move_protocol_are_workflow_states() -> None:
    assert WorkflowState(TOMBSTONE) is WorkflowState.MOVED
    assert WorkflowState(STAGED) is WorkflowState.IMPORTING


# -- the recovery rule, row by row -----------------------------------------------------------

# Each row of the "Recovery rule" table: the source rows it covers, and its verdict.
RECOVERY_RULE: dict[str, tuple[list[SourceRow | None], Verdict]] = {
    "tombstone with the same `move_id`": ([SourceRow(TOMBSTONE, MOVE)], Verdict.ACTIVATE),
    "live (or a tombstone of another move)": (
        [
            *(
                SourceRow(state.value)
                for state in WorkflowState
                if state.value not in (TOMBSTONE, STAGED)
            ),
            SourceRow(TOMBSTONE, "move-2"),
        ],
        Verdict.DISCARD,
    ),
    # The rebalancer reads the source FOR SHARE SKIP LOCKED: a held row is not returned.
    "held by someone right now": ([None], Verdict.UNRESOLVED),
    "no row, or A unreachable": ([None], Verdict.UNRESOLVED),
}


def test_every_row_of_the_recovery_rule_table_has_a_case() -> None:
    assert [row[0] for row in doc_table("### Recovery rule")] == list(RECOVERY_RULE)


@pytest.mark.parametrize("row", list(RECOVERY_RULE))
def test_recovery_rule_row(row: str) -> None:
    sources, verdict = RECOVERY_RULE[row]
    for source in sources:
        assert copy_verdict(MOVE, source) is verdict, source
    # The doc's verdict column says the same.
    doc = dict((r[0], r[1]) for r in doc_table("### Recovery rule"))[row]
    words = {
        Verdict.ACTIVATE: ("activate",),
        Verdict.DISCARD: ("discard",),
        Verdict.UNRESOLVED: ("ask again", "leave the copy"),
    }[verdict]
    assert any(word in doc for word in words), doc


def test_a_staged_copy_at_the_source_is_never_judged() -> None:
    # The source's own row is a copy moving in from elsewhere: nothing is decided there.
    assert copy_verdict(MOVE, SourceRow(STAGED, MOVE)) is Verdict.UNRESOLVED
    assert copy_verdict(MOVE, SourceRow(STAGED)) is Verdict.UNRESOLVED


def test_a_copy_without_move_id_is_never_activated() -> None:
    assert copy_verdict(None, SourceRow(TOMBSTONE, None)) is Verdict.DISCARD
    assert copy_verdict(None, SourceRow(WorkflowState.SUSPENDED.value)) is Verdict.DISCARD


# -- the crash table, row by row ---------------------------------------------------------------


def own(shard: str, state: SlotState, peer: str | None = None) -> Ownership:
    return Ownership(shard, 0, state, peer, 1)


def slot_zero(rows: list[Ownership]) -> tuple[str, str | None, tuple[Repair, ...]]:
    """(owner, source if in motion, repairs) of slot 0, the other slots owned by A."""
    others = [Ownership("A", slot, SlotState.OWNED, None, 1) for slot in range(1, 64)]
    live = reconcile(rows + others, 64)
    return live.owners[0], live.migrating.get(0), live.repairs


def _crash_importing_marked() -> None:
    rows = [own("A", SlotState.OWNED), own("B", SlotState.IMPORTING, "A")]
    # The slot counts as in motion to B, and the next apply marks A MIGRATING_OUT.
    assert slot_zero(rows) == ("B", "A", (Repair("start", 0, "A", "B"),))


def _crash_migrating_out_marked() -> None:
    rows = [own("A", SlotState.MIGRATING_OUT, "B"), own("B", SlotState.IMPORTING, "A")]
    assert slot_zero(rows) == ("B", "A", ())  # nothing to repair; the map is republished


def _crash_staged() -> None:
    # Copies IMPORTING on B, A's rows live: the next apply discards the copies.
    for state in (WorkflowState.ENQUEUED, WorkflowState.SUSPENDED, WorkflowState.SUCCESS):
        assert copy_verdict(MOVE, SourceRow(state.value)) is Verdict.DISCARD


def _crash_tombstoned() -> None:
    # Tombstones of this move on A: the next apply (or the first reader) activates.
    assert copy_verdict(MOVE, SourceRow(TOMBSTONE, MOVE)) is Verdict.ACTIVATE


def _crash_owned_marked() -> None:
    rows = [own("A", SlotState.MIGRATING_OUT, "B"), own("B", SlotState.OWNED)]
    assert slot_zero(rows) == ("B", None, (Repair("finish", 0, "A", "B"),))


# Each row of the crash table whose outcome a pure rule decides, with its check. The other
# rows leave no slot transition or staged copy to judge; test_rebalance_crash.py kills a
# real rebalancer at each of them.
CRASH_TABLE: dict[str, Callable[[], None] | None] = {
    "B marked IMPORTING, A not yet MIGRATING_OUT": _crash_importing_marked,
    "A marked MIGRATING_OUT, map not published": _crash_migrating_out_marked,
    "step 1 (rows locked on A)": None,
    "step 2 (copies staged on B)": _crash_staged,
    "step 3 (tombstones committed on A)": _crash_tombstoned,
    "step 4 (copies activated)": None,
    "B marked OWNED, A not yet dropped the slot": _crash_owned_marked,
    "the map published to some shards only": None,
    "the plan recorded, nothing else done": None,
    "the last slot settled, plan not recorded done": None,
}


def test_every_row_of_the_crash_table_is_listed() -> None:
    assert [row[0] for row in doc_table("## Crash table")] == list(CRASH_TABLE)


@pytest.mark.parametrize("row", [row for row, check in CRASH_TABLE.items() if check is not None])
def test_crash_table_row(row: str) -> None:
    check = CRASH_TABLE[row]
    assert check is not None
    check()
