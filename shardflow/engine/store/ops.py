"""Operations: the live-worker registry, the counts metrics and ``shardflow status``
read, retention's deletes, and what the demo checks."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row, kwargs_row, scalar_row

from shardflow.engine.store._conn import (
    ShardAccess,
    fetch_all,
    fetch_one,
    run,
    store_error,
)
from shardflow.engine.store.rows import (
    EnqueuedCount,
    QueueDepth,
    RetentionBatch,
    ShardCounts,
    WorkerRecord,
    worker_rows,
)
from shardflow.errors import ShardUnavailable
from shardflow.retry import first_line
from shardflow.router.pools import Conn
from shardflow.sql import query


def _pair(*, state: str, count: int) -> tuple[str, int]:
    return state, int(count)


class OpsQueries(ShardAccess):
    # -- the live-worker registry (migration 0005) -------------------------------------------

    def worker_seen(self, shard: str, record: WorkerRecord) -> None:
        with self._conn(shard) as conn:
            run(
                conn,
                "worker_seen",
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
            run(conn, "worker_gone", {"worker_id": worker_id})

    def purge_stale_workers(
        self, shard: str, older_than_seconds: float, now: datetime | None = None
    ) -> int:
        with self._conn(shard) as conn:
            return run(conn, "workers_purge_stale", {"seconds": older_than_seconds, "now": now})

    def has_worker_registry(self, shard: str) -> bool:
        """False on a shard migrated before 0005 (no registry to ask)."""
        with self._conn(shard) as conn:
            return bool(fetch_one(conn, "workers_table_exists", None, scalar_row))

    def live_workers(
        self, shard: str, within_seconds: float, now: datetime | None = None
    ) -> list[WorkerRecord]:
        """Workers that heartbeated on ``shard`` within the last ``within_seconds``."""
        with self._conn(shard) as conn:
            return fetch_all(
                conn, "workers_live", {"seconds": within_seconds, "now": now}, worker_rows()
            )

    def enqueued_by_name(self, shard: str) -> list[EnqueuedCount]:
        """The ENQUEUED workflows of ``shard`` by (name, queue)."""
        with self._conn(shard) as conn:
            return fetch_all(conn, "enqueued_by_name", None, class_row(EnqueuedCount))

    # -- metrics and `shardflow status` ------------------------------------------------------

    def shard_counts(
        self,
        shard: str,
        *,
        recent_seconds: float,
        timeout_ms: int,
        now: datetime | None = None,
    ) -> ShardCounts:
        """Queue depths, slot states and recent outcomes of ``shard``, read in one
        transaction under a statement timeout of ``timeout_ms``."""
        with self._conn(shard) as conn, conn.transaction():
            run(conn, "ops_statement_timeout", {"timeout": str(timeout_ms)})
            depths = fetch_all(conn, "ops_queue_depth", {"now": now}, class_row(QueueDepth))
            slots = fetch_all(conn, "ops_slot_states", None, kwargs_row(_pair))
            finished = fetch_all(
                conn,
                "ops_recently_finished",
                {"seconds": recent_seconds, "now": now},
                kwargs_row(_pair),
            )
        return ShardCounts(tuple(depths), dict(slots), dict(finished))

    # -- retention ---------------------------------------------------------------------------

    def retention_session(self, shard: str) -> RetentionSession | None:
        """The retention leader's session on ``shard`` if this process can lead it now
        (a session-level advisory lock, held while the session lives); None if another
        process leads it. Raises :class:`ShardUnavailable`."""
        conn = self.pools.dedicated(shard, "retention")
        session = RetentionSession(shard, conn)
        try:
            led = session.try_lead()
        except BaseException:
            conn.close()
            raise
        if not led:
            conn.close()
            return None
        return session

    # -- the demo ----------------------------------------------------------------------------

    def live_workflow_ids(self, shard: str) -> list[str]:
        """Every workflow ID on ``shard`` that is not a tombstone (the demo checks that no
        workflow exists twice across shards)."""
        with self._conn(shard) as conn:
            return [str(w) for w in fetch_all(conn, "demo_live_workflow_ids", None, scalar_row)]


class RetentionSession:
    """A dedicated connection holding ``shard``'s retention lock: it deletes only while
    the connection (and so the lock) lives. Errors leave classified: a lost connection
    as :class:`ShardUnavailable`."""

    def __init__(self, shard: str, conn: Conn) -> None:
        self.shard = shard
        self._conn = conn

    @property
    def usable(self) -> bool:
        return not self._conn.closed and not self._conn.broken

    def _run(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        try:
            with self._conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(query(name), params).fetchone()
        except psycopg.Error as exc:
            error = store_error(self.shard, exc)
            if error is None:
                raise ShardUnavailable(self.shard, first_line(exc)) from exc
            raise error from exc

    def try_lead(self) -> bool:
        row = self._run("retention_try_lead")
        return bool(row and row["leading"])

    def delete_batch(
        self, *, keep_seconds: float, limit: int, now: datetime | None = None
    ) -> RetentionBatch:
        """Delete up to ``limit`` workflows finished more than ``keep_seconds`` before
        ``now`` (None: the database's now()), in one transaction."""
        row = self._run(
            "retention_delete_batch", {"now": now, "keep_seconds": keep_seconds, "limit": limit}
        )
        if row is None:
            return RetentionBatch(0, ())
        return RetentionBatch(int(row["workflows"]), tuple(str(r) for r in row["blob_refs"] or ()))

    def close(self) -> None:
        """Release the lock, then close: another leader can take the shard at once."""
        try:
            if self.usable:
                self._conn.execute(query("retention_resign"))
        except psycopg.Error:
            pass  # the connection is going away, and its lock with it
        finally:
            self._conn.close()


class EffectsLog:
    """The demo's side-effect log: one row per step execution, in a table of its own
    (``demo_effects``) on the database at ``dsn``, outside the shardflow schema."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def reset(self) -> None:
        """Create the table if needed and empty it."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query("demo_effects_table"))
            conn.execute(query("demo_effects_truncate"))

    def record(self, workflow_id: str | None, step: str, pid: int) -> None:
        """Append one row, on the log's one connection (opened on first use, shared by
        every thread: psycopg serialises its use; closed by :meth:`close` or at exit)."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                if conn is None:
                    atexit.register(self.close)
                conn = self._conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(
            query("demo_effects_insert"), {"workflow_id": workflow_id, "step": step, "pid": pid}
        )

    def close(self) -> None:
        """Close the shared connection, if open."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def runs_per_step(self) -> dict[tuple[str, str], int]:
        """How often each (workflow, step) ran."""

        def make(*, workflow_id: str, step: str, runs: int) -> tuple[tuple[str, str], int]:
            return (workflow_id, step), int(runs)

        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=kwargs_row(make)) as cur:
            return dict(cur.execute(query("demo_effects_per_step")).fetchall())

    def runs_of(self, workflow_ids: Sequence[str]) -> dict[str, int]:
        """How many steps ran for each of ``workflow_ids`` (those that ran any)."""

        def make(*, workflow_id: str, runs: int) -> tuple[str, int]:
            return workflow_id, int(runs)

        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=kwargs_row(make)) as cur:
            params = {"workflow_ids": list(workflow_ids)}
            return dict(cur.execute(query("demo_effects_per_workflow"), params).fetchall())
