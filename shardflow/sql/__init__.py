"""SQL text of shardflow: numbered migrations and named queries, loaded once.

Queries live in ``queries/*.sql``; each begins with a ``-- name: some_query`` line and runs
to the next header. A ``-- fragment: some_part`` header starts a piece of SQL text that
queries share: a line ``-- include: some_part`` in a query is replaced by it when the
queries are loaded (static text of this package, never a value). Parameters are psycopg
placeholders (``%(name)s``): user values always travel as parameters, never inside SQL
text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

SCHEMA = "shardflow"
_HEADER = re.compile(r"^--\s*(name|fragment):\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^[ \t]*--\s*include:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def queries() -> dict[str, str]:
    """All named queries, by name, with their fragments included."""
    named: dict[str, str] = {}
    fragments: dict[str, str] = {}
    folder = resources.files(__package__).joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            parse_sections(entry.read_text(encoding="utf-8"), named, fragments)
    return {name: include_fragments(text, fragments) for name, text in named.items()}


def parse_sections(text: str, named: dict[str, str], fragments: dict[str, str]) -> None:
    """Add the named queries and fragments of one file's ``text``."""
    headers = list(_HEADER.finditer(text))
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        kind, name = match.group(1), match.group(2)
        into = named if kind == "name" else fragments
        if name in into:
            raise RuntimeError(
                f"{'query' if kind == 'name' else 'fragment'} {name!r} is defined twice"
            )
        into[name] = text[match.end() : end].strip().rstrip(";")


def include_fragments(text: str, fragments: dict[str, str]) -> str:
    """``text`` with each ``-- include: part`` line replaced by that fragment."""

    def fragment(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise RuntimeError(f"unknown SQL fragment {name!r}")
        return fragments[name]

    return _INCLUDE.sub(fragment, text)


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
