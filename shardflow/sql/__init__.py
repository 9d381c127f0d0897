"""SQL text of shardflow: numbered migrations and named queries, loaded once.

Queries live in ``queries/*.sql``; each begins with a ``-- name: some_query`` line and runs
to the next one. Parameters are psycopg placeholders (``%(name)s``): user values always
travel as parameters, never inside SQL text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

SCHEMA = "shardflow"
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def queries() -> dict[str, str]:
    """All named queries, by name."""
    out: dict[str, str] = {}
    folder = resources.files(__package__).joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        names = list(_NAME.finditer(text))
        for i, match in enumerate(names):
            end = names[i + 1].start() if i + 1 < len(names) else len(text)
            name = match.group(1)
            if name in out:
                raise RuntimeError(f"query {name!r} is defined twice")
            out[name] = text[match.end() : end].strip().rstrip(";")
    return out


def query(name: str) -> str:
    """The SQL text of one named query."""
    return queries()[name]


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration, in version order."""
    folder = resources.files(__package__).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, got {versions}")
    return tuple(found)
