"""Printing for the commands: rich tables for people, JSON for scripts, notes on stderr.

Cell values are user data (workflow IDs may hold ``[...]``), so they are passed to rich
as :class:`~rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardflow.config import scrub_dsns

# Piped output: no wrapping at 80 columns, so rows stay one per line for grep and awk.
_PIPE_WIDTH = 10_000


def stdout_console() -> Console:
    """A terminal's width; piped, one row per line, unless ``COLUMNS`` sets a width."""
    terminal = sys.stdout.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else None
    return Console(
        file=sys.stdout,
        highlight=False,
        soft_wrap=not terminal and width is None,
        width=width if width is not None or terminal else _PIPE_WIDTH,
    )


def cell(value: object) -> Text:
    if value is None:
        return Text("-")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(str(value))


def fit_columns(
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    width: int,
    drop_order: Sequence[str] = (),
) -> list[str]:
    """The columns to show in ``width`` characters: the least important ones
    (``drop_order``, first dropped first) are left out until the rest fits uncut."""
    natural = {
        c: max([len(c), *(len(cell(row[i]).plain) for row in rows)]) for i, c in enumerate(columns)
    }
    shown = list(columns)
    for column in drop_order:
        if sum(natural[c] for c in shown) + 3 * (len(shown) - 1) <= width:
            break
        if column in shown:
            shown.remove(column)
    return shown


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    numeric: Sequence[str] = (),
    keep: Sequence[str] = (),
    drop_order: Sequence[str] = (),
) -> None:
    """A table on stdout; ``numeric`` columns are right-aligned. ``keep`` columns (shard
    names, IDs) are never cut; when the table is wider than the console, ``drop_order``
    columns are left out (said on stderr) and the others wrap."""
    console = stdout_console()
    materialized = [list(row) for row in rows]
    shown = fit_columns(columns, materialized, console.width, drop_order)
    hidden = [c for c in columns if c not in shown]
    index = [list(columns).index(c) for c in shown]
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", pad_edge=False
    )
    for column in shown:
        i = list(columns).index(column)
        longest = max([len(column), *(len(cell(r[i]).plain) for r in materialized)])
        table.add_column(
            column,
            justify="right" if column in numeric else "left",
            no_wrap=column in keep,
            min_width=longest if column in keep else None,
            overflow="fold",
        )
    for row in materialized:
        table.add_row(*(cell(row[i]) for i in index))
    console.print(table)
    if hidden:
        note(f"({', '.join(hidden)} not shown at {console.width} columns; --json has everything)")


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    """``key  value`` lines, keys aligned."""
    width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        print(f"{key.ljust(width)}  {cell(value).plain}")


def print_json(data: Any) -> None:
    """Indented JSON on stdout; values JSON cannot express (datetimes) become strings."""
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def note(message: str) -> None:
    """A message for the person at the terminal, on stderr (stdout stays parseable)."""
    print(message, file=sys.stderr)


def scrub_secrets(text: str, dsns: Iterable[str]) -> str:
    """``text`` with every given DSN redacted and every password-like value masked.

    A last line of defence for error messages: the engine does not quote DSNs, but a
    message from a driver or a future code path might. See
    :func:`shardflow.config.scrub_dsns` for what counts as a secret.
    """
    return scrub_dsns(text, dsns)
