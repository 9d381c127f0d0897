"""The engine's queries behind the live-worker registry (mixed into
:class:`~shardflow.engine.store.Store`; migration ``0005_workers``)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardflow.router.pools import Conn
from shardflow.sql import query


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker as a shard last saw it."""

    worker_id: str
    host: str
    pid: int
    version: str
    app: str
    workflows: tuple[str, ...]
    queues: tuple[str, ...]
    # Seconds since its last heartbeat on this shard (database clock).
    age_seconds: float = 0.0


class RegistryStore:
    """Upserts and reads of ``shardflow.workers``: one row per live worker per shard."""

    if TYPE_CHECKING:

        def _conn(self, shard: str) -> AbstractContextManager[Conn]: ...

    def worker_seen(self, shard: str, record: WorkerRecord) -> None:
        with self._conn(shard) as conn:
            conn.execute(
                query("worker_seen"),
                {
                    "worker_id": record.worker_id,
                    "host": record.host,
                    "pid": record.pid,
                    "version": record.version,
                    "app": record.app,
                    "workflows": list(record.workflows),
                    "queues": list(record.queues),
                },
            )

    def worker_gone(self, shard: str, worker_id: str) -> None:
        with self._conn(shard) as conn:
            conn.execute(query("worker_gone"), {"worker_id": worker_id})

    def purge_stale_workers(self, shard: str, older_than_seconds: float) -> int:
        with self._conn(shard) as conn:
            cur = conn.execute(query("workers_purge_stale"), {"seconds": older_than_seconds})
            return cur.rowcount

    def has_worker_registry(self, shard: str) -> bool:
        """False on a shard migrated before 0005 (no registry to ask)."""
        with self._conn(shard) as conn:
            row = conn.execute(query("workers_table_exists")).fetchone()
            return bool(row and row[0])

    def live_workers(self, shard: str, within_seconds: float) -> list[WorkerRecord]:
        """Workers that heartbeated on ``shard`` within the last ``within_seconds``."""
        with self._conn(shard) as conn:
            rows = conn.execute(query("workers_live"), {"seconds": within_seconds}).fetchall()
        return [_record(row) for row in rows]

    def enqueued_by_name(self, shard: str) -> list[tuple[str, str, int]]:
        """``(name, queue, count)`` of the ENQUEUED workflows of ``shard``."""
        with self._conn(shard) as conn:
            rows = conn.execute(query("enqueued_by_name")).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def _record(row: Sequence[object]) -> WorkerRecord:
    workflows = row[5] if isinstance(row[5], list) else []
    queues = row[6] if isinstance(row[6], list) else []
    pid = row[2]
    age = row[7]
    return WorkerRecord(
        worker_id=str(row[0]),
        host=str(row[1]),
        pid=pid if isinstance(pid, int) else 0,
        version=str(row[3]),
        app=str(row[4]),
        workflows=tuple(str(w) for w in workflows),
        queues=tuple(str(q) for q in queues),
        age_seconds=float(age) if isinstance(age, (int, float)) else 0.0,
    )
