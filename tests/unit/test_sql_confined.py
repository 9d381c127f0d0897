"""SQL runs only where docs/architecture.md says: the engine's store, the rebalancer's
mover, the migrator and the roles module. Everything else goes through them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "shardflow"

# Calls that run SQL on a psycopg connection or cursor. ``copy`` only with arguments:
# ``cursor.copy(statement)``, not ``dict.copy()``.
SQL_CALLS = frozenset({"execute", "executemany", "cursor"})

ALLOWED = (
    "engine/store/",
    "sql/migrator.py",
    "sql/roles.py",
    # The mover may grow into several modules (mover_*.py, or a move/ package); link.py is
    # its connection to one shard (where the rebalancer's SQL runs).
    "rebalance/mover",
    "rebalance/move",
    "rebalance/link.py",
    # Test tooling and server bootstrap (fault injection, creating databases and roles on
    # embedded servers), not the engine: they talk to PostgreSQL as an administrator.
    "testing/",
    "local/",
)


def sql_calls(source: str) -> list[tuple[int, str]]:
    """``(line, method)`` of every call that runs SQL in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in SQL_CALLS or (name == "copy" and (node.args or node.keywords)):
            found.append((node.lineno, name))
    return sorted(found)


def _allowed(relative: str) -> bool:
    return relative.startswith(ALLOWED)


def test_the_checker_finds_sql_calls() -> None:
    source = (
        "conn.execute('SELECT 1')\n"
        "cur.executemany(q, rows)\n"
        "with conn.cursor() as cur: pass\n"
        "cur.copy('COPY t FROM STDIN')\n"
        "settings.copy()\n"
        "_decode_cursor(text)\n"
    )
    assert sorted(sql_calls(source)) == [
        (1, "execute"),
        (2, "executemany"),
        (3, "cursor"),
        (4, "copy"),
    ]
    assert _allowed("engine/store/waits.py") and _allowed("rebalance/mover_copy.py")
    assert _allowed("rebalance/moves/stage.py")
    assert not _allowed("engine/metrics.py") and not _allowed("demo/run.py")


def test_sql_runs_only_in_the_store_the_mover_the_migrator_and_roles() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if _allowed(relative):
            continue
        for line, name in sql_calls(path.read_text(encoding="utf-8")):
            offenders.append(f"shardflow/{relative}:{line}: .{name}(")
    assert not offenders, "SQL outside the store (move it into shardflow/engine/store/):\n" + (
        "\n".join(offenders)
    )
