"""WorkflowFilter: validation, text round trip, SQL parameters (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shardflow.engine.filters import WorkflowFilter, like_prefix
from shardflow.engine.states import WorkflowState


def test_empty_filter() -> None:
    f = WorkflowFilter()
    assert f.is_empty
    assert f.describe() == "all workflows"
    assert f.sql_params() == {
        "state": None,
        "name": None,
        "queue": None,
        "id_like": None,
        "created_after": None,
        "created_before": None,
        "parent_id": None,
        "forked_from": None,
        "app_version": None,
    }


def test_from_strings_round_trip() -> None:
    f = WorkflowFilter.from_strings(
        {
            "state": "error",
            "name": " emails.send ",
            "queue": "",
            "id_prefix": "{tenant-7}",
            "created_after": "2026-01-02",
            "created_before": "2026-01-03T04:05:06+02:00",
            "parent_id": None,
        }
    )
    assert f.state is WorkflowState.ERROR
    assert f.name == "emails.send"
    assert f.queue is None
    assert f.created_after == datetime(2026, 1, 2, tzinfo=UTC)
    assert f.created_before == datetime(2026, 1, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert WorkflowFilter.from_strings(f.to_strings()) == f
    assert f.describe().startswith("state=ERROR name=emails.send id_prefix={tenant-7}")


def test_like_prefix_escapes_wildcards() -> None:
    assert like_prefix("a_b%c\\d") == "a\\_b\\%c\\\\d%"
    assert WorkflowFilter(id_prefix="x_").sql_params()["id_like"] == "x\\_%"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"state": "BOGUS"}, "filter state: 'BOGUS' is not one of ENQUEUED"),
        ({"state": "MOVED"}, "filter state: MOVED rows are internal"),
        ({"created_after": "tomorrow"}, "filter created_after: 'tomorrow' is not an ISO 8601"),
        (
            {"created_after": "2026-01-02", "created_before": "2026-01-01"},
            "created_after must be earlier than created_before",
        ),
        ({"name": "a\x00b"}, "filter name: must not contain NUL"),
        ({"id_prefix": "x" * 513}, "filter id_prefix: longer than 512"),
        ({"colour": "red"}, "unknown filter field(s): colour"),
    ],
)
def test_bad_values_raise_one_line_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        WorkflowFilter.from_strings(values)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="time zone"):
        WorkflowFilter(created_after=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="non-empty string"):
        WorkflowFilter(queue="")
    assert WorkflowFilter(state="dead").state is WorkflowState.DEAD  # type: ignore[arg-type]
