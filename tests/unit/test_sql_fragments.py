"""The query loader's shared fragments: included where named, refused when unknown."""

from __future__ import annotations

import pytest

from shardflow.sql import include_fragments, parse_sections, queries


def test_a_fragment_is_included_in_every_query_that_names_it() -> None:
    named: dict[str, str] = {}
    fragments: dict[str, str] = {}
    parse_sections(
        "-- fragment: live\nAND state <> 'DEAD'\n\n"
        "-- name: one\nSELECT 1 FROM t WHERE true\n  -- include: live\n\n"
        "-- name: two\nSELECT 2 FROM t WHERE x = %(x)s\n-- include: live\nLIMIT 1;\n",
        named,
        fragments,
    )
    assert set(named) == {"one", "two"}
    assert fragments == {"live": "AND state <> 'DEAD'"}
    assert include_fragments(named["one"], fragments) == (
        "SELECT 1 FROM t WHERE true\nAND state <> 'DEAD'"
    )
    assert include_fragments(named["two"], fragments) == (
        "SELECT 2 FROM t WHERE x = %(x)s\nAND state <> 'DEAD'\nLIMIT 1"
    )


def test_an_unknown_fragment_or_a_repeated_name_is_refused() -> None:
    with pytest.raises(RuntimeError, match="unknown SQL fragment 'nope'"):
        include_fragments("SELECT 1\n-- include: nope\n", {})
    with pytest.raises(RuntimeError, match="fragment 'f' is defined twice"):
        parse_sections("-- fragment: f\nAND a\n-- fragment: f\nAND b\n", {}, {})


def test_the_packaged_queries_include_no_unresolved_fragment() -> None:
    texts = queries()
    assert not any("-- include:" in text for text in texts.values())
    # The workflow filter is written once and reaches every filtered admin statement.
    filtered = [n for n, t in texts.items() if "%(forked_from)s::text IS NULL" in t]
    assert sorted(filtered) == [
        "admin_cancel_matching",
        "admin_count_matching",
        "admin_list_workflows",
        "admin_resume_matching",
    ]
