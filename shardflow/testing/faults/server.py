"""Server-level faults for servers on this machine: stop, restart, read-only windows, held
locks, dropped sessions (see :mod:`shardflow.testing.faults`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from shardflow.retry import Backoff, retrying

if TYPE_CHECKING:
    from shardflow.local.server import LocalServer

log = logging.getLogger(__name__)


def data_directory(dsn: str) -> Path:
    """The data directory of the server behind ``dsn`` (needs a superuser)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return Path(str(row[0]))


def postmaster_pid(data_dir: Path) -> int:
    """The postmaster's pid: the first line of ``postmaster.pid``."""
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def server_processes(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, checkpointer, WAL writer, ...)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == postmaster:
            children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def stopped_server(data_dir: Path) -> Iterator[list[int]]:
    """SIGSTOP the server (postmaster first, so it forks nothing new, then its children)
    for the duration of the block; SIGCONT everything on exit."""
    postmaster = postmaster_pid(data_dir)
    os.kill(postmaster, signal.SIGSTOP)
    stopped = [postmaster]
    try:
        for pid in server_processes(postmaster)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def terminate_sessions(admin_dsn: str) -> int:
    """Terminate every client backend but this one; returns how many."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def set_read_only(admin_dsn: str, read_only: bool) -> None:
    """Make every new transaction on the server read-only (or not again)."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if read_only:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def read_only_window(admin_dsn: str) -> Iterator[None]:
    """The server is read-only for the block, as a promoted replica may be for a moment:
    existing sessions are terminated (a failover drops them), new transactions are
    read-only. On exit it takes writes again and sessions are terminated once more, so
    no pooled session keeps a read-only default it picked up meanwhile."""
    set_read_only(admin_dsn, True)
    try:
        terminate_sessions(admin_dsn)
        yield
    finally:
        set_read_only(admin_dsn, False)
        terminate_sessions(admin_dsn)


@contextlib.contextmanager
def held_lock(
    dsn: str, table: str = "shardflow.workflow_status", mode: str = "SHARE"
) -> Iterator[psycopg.Connection[Any]]:
    """Hold ``LOCK TABLE <table> IN <mode> MODE`` in an open transaction on a separate
    connection for the block, like DDL or a long transaction would."""
    allowed = {"ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE",
               "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}  # fmt: skip
    if mode not in allowed:
        raise ValueError(f"unknown lock mode {mode!r}")
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    conn = psycopg.connect(dsn, connect_timeout=10)
    try:
        conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(ident, sql.SQL(mode)))
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def restart_server(server: LocalServer) -> None:
    """Fast restart (``pg_ctl stop -m fast``, then start) of a server started by
    :mod:`shardflow.local`, on the same port with the settings it remembers. Every session
    is dropped; committed work survives."""
    server.stop("fast")
    server.start(port_fallback=False)


def wait_for_server(dsn: str, timeout: float = 30.0) -> None:
    """Wait until the server behind ``dsn`` accepts a query (retrying while it cannot be
    reached or is starting up; any other error, a wrong password say, at once)."""

    def ping() -> None:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    retrying(ping, deadline=time.monotonic() + timeout, backoff=Backoff(0.05, 0.5))


def live_threads(prefix: str = "shardflow-fault-") -> Sequence[threading.Thread]:
    """Proxy threads still running (tests assert none leak)."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]
