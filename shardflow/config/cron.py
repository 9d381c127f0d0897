"""Cron expressions (via croniter): 5 fields, or 6 with seconds as the last field."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a valid cron expression, or None if it is."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        return f"cron expression {expression!r} must have 5 fields (or 6 with seconds last)"
    if not croniter.is_valid(expression):
        return f"invalid cron expression {expression!r}"
    return None


def next_tick(expression: str, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (timezone-aware in, aware out)."""
    tick: datetime = croniter(expression, after).get_next(datetime)
    return tick


def previous_tick(expression: str, at_or_before: datetime) -> datetime:
    """The latest tick at or before ``at_or_before``."""
    probe = croniter(expression, at_or_before)
    nxt: datetime = probe.get_next(datetime)
    if nxt == at_or_before:
        return nxt
    tick: datetime = croniter(expression, at_or_before).get_prev(datetime)
    return tick
