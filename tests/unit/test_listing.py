"""The cross-shard page merge and its cursor, without a database: shards are lists that
answer a keyset query the way ``list_page`` does (newest first, after the cursor)."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from shardflow.engine.listing import decode_cursor, encode_cursor, merge_pages

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Row:
    created_at: datetime
    workflow_id: str


def key(row: Row) -> tuple[datetime, str]:
    return (row.created_at, row.workflow_id)


def shard_page(rows: list[Row], after: tuple[datetime, str] | None, limit: int) -> list[Row]:
    """What one shard answers: its next ``limit`` rows after the cursor, newest first."""
    ordered = sorted(rows, key=key, reverse=True)
    if after is not None:
        ordered = [r for r in ordered if key(r) < after]
    return ordered[:limit]


def walk(shards: list[list[Row]], limit: int) -> list[list[Row]]:
    """Every page, following the cursors until there is none."""
    pages: list[list[Row]] = []
    cursor: str | None = None
    for _ in range(10_000):
        after = decode_cursor(cursor) if cursor else None
        items, cursor = merge_pages([shard_page(s, after, limit) for s in shards], limit)
        pages.append(items)
        if cursor is None:
            return pages
    raise AssertionError("the cursors never ended")


def test_equal_timestamps_order_by_id_newest_first() -> None:
    a = [Row(T0, "b"), Row(T0, "d")]
    b = [Row(T0, "a"), Row(T0, "c"), Row(T0 - timedelta(seconds=1), "z")]
    items, cursor = merge_pages([shard_page(a, None, 3), shard_page(b, None, 3)], 3)
    assert [r.workflow_id for r in items] == ["d", "c", "b"]
    assert cursor is not None and decode_cursor(cursor) == (T0, "b")


def test_paging_with_cursors_returns_every_row_once_in_order() -> None:
    rng = random.Random(7)
    # Few distinct timestamps, so that ties cross shards and page boundaries.
    stamps = [T0 + timedelta(microseconds=rng.randrange(5)) for _ in range(300)]
    rows = [Row(ts, f"wf-{i:03d}") for i, ts in enumerate(stamps)]
    shards: list[list[Row]] = [[], [], [], []]
    for row in rows:
        shards[rng.randrange(3)].append(row)  # the fourth shard stays empty
    for limit in (1, 7, 50, 299, 300, 301, 1000):
        pages = walk(shards, limit)
        seen = [r for page in pages for r in page]
        assert seen == sorted(rows, key=key, reverse=True), limit
        assert all(len(page) == limit for page in pages[:-1])


def test_shards_with_fewer_rows_than_a_page_end_without_a_cursor() -> None:
    shards = [[Row(T0, "a")], [Row(T0 + timedelta(seconds=1), "b")], []]
    items, cursor = merge_pages([shard_page(s, None, 10) for s in shards], 10)
    assert [r.workflow_id for r in items] == ["b", "a"]
    assert cursor is None


def test_a_full_page_from_one_shard_means_more_may_follow() -> None:
    items, cursor = merge_pages([[Row(T0, "b"), Row(T0, "a")], []], 2)
    assert [r.workflow_id for r in items] == ["b", "a"]
    assert cursor is not None and decode_cursor(cursor) == (T0, "a")
    assert merge_pages([[], []], 5) == ([], None)


def test_cursor_round_trip_keeps_microseconds_and_zone() -> None:
    east = timezone(timedelta(hours=5, minutes=30))
    for created in (T0, T0.astimezone(east)):
        assert decode_cursor(encode_cursor(created, "{t}:ü-1")) == (created, "{t}:ü-1")


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "%%%",
        "é",
        "a" * 5,
        _b64("just a string"),
        _b64([1, 2]),
        _b64(["2026-01-02T03:04:05+00:00"]),
        _b64(["yesterday", "wf-1"]),
        _b64(["2026-01-02T03:04:05", "wf-1"]),  # no zone: not one this code made
        _b64({"created": "2026-01-02T03:04:05+00:00", "id": "wf-1"}),
        "\n".join(["x"] * 3),
    ],
)
def test_a_hostile_cursor_is_a_clear_one_line_error(cursor: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_cursor(cursor)
    message = str(caught.value)
    assert message.startswith("invalid cursor")
    assert "\n" not in message
    assert caught.value.__cause__ is None  # no decoding traceback behind it


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        merge_pages([[Row(T0, "a")]], 0)
