"""Every named query is used by the code, every query the code names exists, and each one
parses and plans on a migrated shard (PREPARE, with PostgreSQL inferring the parameter
types; utility statements, which cannot be prepared, run in a rolled-back transaction)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import psycopg
import pytest

from shardflow.engine.cluster import Cluster
from shardflow.sql import queries

PACKAGE = Path(__file__).resolve().parents[2] / "shardflow"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAM = re.compile(r"%\((\w+)\)s|%%")
_PLANNABLE = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "VALUES")
# The store's helpers take a query name as an argument (shardflow/engine/store/_conn.py).
_NAMING_CALLS = {"query", "fetch_all", "fetch_one", "run", "returns_row", "_run"}


def _string_constants() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _named_in_calls() -> dict[str, str]:
    """Query names passed as literals to ``query()`` anywhere, or to the store's helpers
    inside the store: ``{name: where}``."""
    named: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        in_store = relative.startswith("engine/store/")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name != "query" and not (in_store and name in _NAMING_CALLS):
                continue
            for arg in node.args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and _IDENT.match(arg.value)
                ):
                    named[arg.value] = f"shardflow/{relative}:{node.lineno}"
    return named


def test_every_named_query_is_used() -> None:
    constants = _string_constants()
    unused = sorted(set(queries()) - constants)
    assert not unused, f"named queries no code uses (delete them): {unused}"


def test_every_query_the_code_names_exists() -> None:
    named = _named_in_calls()
    assert "commit_batch" in named and "claim_enqueued" in named  # the scan sees the store
    missing = {n: where for n, where in named.items() if n not in queries()}
    assert not missing, f"queries named in code but not defined: {missing}"


def _numbered(text: str) -> str:
    """psycopg's ``%(name)s`` placeholders as PostgreSQL's ``$n`` (one per name)."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return _PARAM.sub(number, text)


def _first_keyword(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
    return lines[0].split()[0].upper() if lines else ""


def test_every_named_query_prepares_on_a_migrated_shard(cluster: Cluster) -> None:
    failures: list[str] = []
    checked = 0
    with psycopg.connect(cluster.config.shard("shard0").dsn) as conn:
        # The demo's queries read its own table, which the demo creates.
        conn.execute(queries()["demo_effects_table"])
        for i, (name, text) in enumerate(sorted(queries().items())):
            if re.search(r"\{\w+\}", text):
                continue  # an sql.SQL template of identifiers (roles.sql), composed later
            conn.execute(f"SAVEPOINT q{i}")
            try:
                if _first_keyword(text) in _PLANNABLE:
                    conn.execute(f"PREPARE q{i} AS {_numbered(text)}")
                    conn.execute(f"DEALLOCATE q{i}")
                elif _PARAM.search(text) is None:
                    conn.execute(text)  # utility statement: run it, then roll back
                else:
                    failures.append(f"{name}: a utility statement with parameters")
                    continue
                checked += 1
            except psycopg.Error as exc:
                failures.append(f"{name}: {str(exc).strip().splitlines()[0]}")
            finally:
                conn.execute(f"ROLLBACK TO SAVEPOINT q{i}")
        conn.rollback()
    assert not failures, "\n".join(failures)
    assert checked > 100


@pytest.mark.parametrize("broken", ["SELECT no_such_column FROM shardflow.workflow_status"])
def test_prepare_catches_a_broken_query(cluster: Cluster, broken: str) -> None:
    dsn = cluster.config.shard("shard0").dsn
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.UndefinedColumn):
        conn.execute(f"PREPARE broken AS {_numbered(broken)}")
