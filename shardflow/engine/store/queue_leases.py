"""Queue leases, which hold a queue-wide ``concurrency`` on the queue's home shard
(migration 0012): taken before a claim, renewed by heartbeats, deleted when runs end."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg.rows import kwargs_row, scalar_row

from shardflow.engine.store._conn import ShardAccess, at, fetch_all, run


def _live(*, queue: str, n: int) -> tuple[str, int]:
    return queue, int(n)


class QueueLeaseQueries(ShardAccess):
    def take_queue_leases(
        self,
        home: str,
        *,
        queue: str,
        owner: str,
        want: int,
        limit: int,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[str]:
        """Take up to ``want`` of ``queue``'s ``limit`` leases on its home shard (expired
        leases are free); returns the IDs of the leases taken, maybe none."""
        params = {
            "queue": queue,
            "owner": owner,
            "want": want,
            "limit": limit,
            "lease_seconds": lease_seconds,
            **at(now),
        }
        with self._conn(home) as conn, conn.transaction():
            run(conn, "lock_queue_leases", {"queue": queue})
            return [str(s) for s in fetch_all(conn, "take_queue_leases", params, scalar_row)]

    def renew_queue_leases(
        self,
        home: str,
        lease_ids: Sequence[str],
        *,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> set[str]:
        """Extend live queue leases; returns those renewed (an expired one is lost)."""
        params = {"lease_ids": list(lease_ids), "lease_seconds": lease_seconds, **at(now)}
        with self._conn(home) as conn:
            return {str(s) for s in fetch_all(conn, "renew_queue_leases", params, scalar_row)}

    def release_queue_leases(self, home: str, lease_ids: Sequence[str]) -> int:
        with self._conn(home) as conn:
            return run(conn, "release_queue_leases", {"lease_ids": list(lease_ids)})

    def queue_leases_live(self, home: str, now: datetime | None = None) -> dict[str, int]:
        """Live leases per queue homed on ``home``."""
        with self._conn(home) as conn:
            return dict(fetch_all(conn, "queue_leases_live", at(now), kwargs_row(_live)))
