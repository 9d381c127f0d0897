"""The PostgreSQL servers every system runs against, and the measurements taken on them.

One :class:`~shardflow.local.LocalCluster` of local servers in a temporary directory, all
with the same settings: PostgreSQL's durable defaults (``fsync``, ``synchronous_commit``
and ``full_page_writes`` on) plus shardflow.local's ``shared_buffers`` and
``max_connections``. Each system gets a fresh database per round, so no system sees
another's tables, and WAL is read from ``pg_current_wal_lsn()`` around each phase while
nothing else runs on that server.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from shardflow.local import LocalCluster
from shardflow.testing.servers import with_database

REPORTED_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "checkpoint_timeout",
    "max_wal_size",
)


class BenchServers:
    """``count`` local PostgreSQL servers, started on enter and stopped on exit."""

    def __init__(
        self,
        count: int,
        *,
        directory: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.count = count
        self.settings = dict(settings or {})
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="shardflow-bench-"))
        self.local = LocalCluster(self.directory / "servers")
        self.admin_dsns: list[str] = []

    def __enter__(self) -> BenchServers:
        self.local.up(self.count, name="bench", settings=self.settings, migrate=False)
        self.admin_dsns = self.local.admin_dsns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.local.down()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _admin(self, server: int) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsns[server], autocommit=True)

    def fresh_database(self, server: int, name: str) -> str:
        """Drop and create database ``name`` on ``server``; its DSN."""
        with self._admin(server) as conn:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        return with_database(self.admin_dsns[server], name)

    def drop_database(self, server: int, name: str) -> None:
        with self._admin(server) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def postmaster_pid(self, server: int) -> int:
        """The server's main process; its children are the backends and helpers."""
        pid_file = self.local.servers[server].data_dir / "postmaster.pid"
        return int(pid_file.read_text(encoding="utf-8").splitlines()[0])

    def wal_lsn(self, server: int) -> int:
        """The server's current WAL insert position, in bytes."""
        with self._admin(server) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])

    def checkpoint(self, server: int) -> None:
        """Flush dirty pages, so every phase starts from the same full-page-write state."""
        with self._admin(server) as conn:
            conn.execute("CHECKPOINT")

    def describe(self, server: int = 0) -> dict[str, str]:
        """The settings that decide what a commit costs, as the server reports them."""
        found: dict[str, str] = {}
        with self._admin(server) as conn:
            for name in REPORTED_SETTINGS:
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                found[name] = str(row[0]) if row else ""
        return found
