"""A shard's server processes of one kind of shardflow connection (its
``application_name``, ``shardflow-<purpose>``): counted, or killed to inject a lost
connection."""

from __future__ import annotations

import psycopg


def count_backends(dsn: str, application_name: str) -> int:
    """Connections to ``dsn``'s database with ``application_name``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def terminate_backends(dsn: str, application_name: str) -> int:
    """Kill those connections on the server; how many were killed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])
