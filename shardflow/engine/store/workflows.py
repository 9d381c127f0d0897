"""Workflow rows on one shard: submit, read, claim, lease, release, cancel, resume, and
the notifications workers listen to."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, kwargs_row, scalar_row, tuple_row

from shardflow.engine.records import Claim, NewWorkflow, WorkflowStatus
from shardflow.engine.signals import StopEvent
from shardflow.engine.store import statements
from shardflow.engine.store._conn import ShardAccess, at, fetch_all, fetch_one, run
from shardflow.engine.store.rows import (
    Existing,
    QueueUsage,
    Renewal,
    claim_rows,
)
from shardflow.errors import ShardUnavailable
from shardflow.sql import query


class WorkflowQueries(ShardAccess):
    # -- submit and read ----------------------------------------------------------------

    def insert_workflows(
        self, shard: str, rows: Sequence[NewWorkflow], source_checked: Collection[str] = ()
    ) -> set[str]:
        """Insert ``rows`` where this shard owns the slot; returns the IDs created (see
        :func:`~shardflow.engine.store.statements.insert_workflows`)."""
        return self.perform(shard, statements.insert_workflows(rows, source_checked))

    def debounce(self, shard: str, row: NewWorkflow) -> str | None:
        """Create or replace the pending run of ``row``'s debounce key; returns its ID,
        or None when this shard does not own ``row``'s slot."""
        params = {
            "workflow_id": row.workflow_id,
            "slot": row.slot,
            "route_hash": row.route_hash,
            "name": row.name,
            "queue": row.queue,
            "priority": row.priority,
            "inputs": row.inputs,
            "debounce_seconds": row.debounce_seconds,
            "timeout_seconds": row.timeout_seconds,
            "trace_context": json.dumps(row.trace_context) if row.trace_context else None,
            "partition_key": row.partition_key,
            "debounce_key": row.debounce_key,
        }
        with self._conn(shard) as conn:
            pending = fetch_one(conn, "debounce_workflow", params, scalar_row)
        return None if pending is None else str(pending)

    def existing(self, shard: str, workflow_ids: Sequence[str]) -> dict[str, Existing]:
        """The given IDs present on ``shard`` (tombstones included)."""
        return self.perform(shard, statements.existing(workflow_ids))

    def list_page(
        self,
        shard: str,
        *,
        state: str | None,
        name: str | None,
        queue: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[WorkflowStatus]:
        statement = statements.list_page(
            shard, self.codec, state=state, name=name, queue=queue, after=after, limit=limit
        )
        return self.perform(shard, statement)

    def count_by_state(self, shard: str) -> dict[str, int]:
        def make(*, state: str, count: int) -> tuple[str, int]:
            return state, int(count)

        with self._conn(shard) as conn:
            return dict(fetch_all(conn, "count_by_state", None, kwargs_row(make)))

    # -- claims and leases ----------------------------------------------------------------

    def claim_enqueued(
        self,
        shard: str,
        *,
        queue: str,
        names: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
        global_limit: int | None = None,
        rate_limit: tuple[int, float] | None = None,
        key_concurrency: int | None = None,
        key_rate_limit: tuple[int, float] | None = None,
        app_version: str | None = None,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` ENQUEUED workflows of ``queue``.

        With a global concurrency share, a rate limit or a per-key limit (concurrency
        ``key_concurrency``, or starts ``key_rate_limit``: (limit, period seconds)), the
        claim is serialized per queue on this shard (advisory lock) so the limits hold
        exactly on it; a per-key limit also makes the keys take turns
        (``claim_enqueued_keyed``).
        ``now`` replaces the database clock (tests).
        """
        params: dict[str, Any] = {
            "queue": queue,
            "names": list(names),
            "owner": owner,
            "app_version": app_version,
            "lease_seconds": lease_seconds,
            "limit": limit,
            **at(now),
        }
        sent = time.monotonic()
        claims = claim_rows(shard, sent)
        keyed = key_concurrency is not None or key_rate_limit is not None
        if keyed:
            params["key_limit"] = key_concurrency
            params["key_rate"] = key_rate_limit[0] if key_rate_limit else None
            params["key_period"] = key_rate_limit[1] if key_rate_limit else 0.0
        with self._conn(shard) as conn:
            if not keyed and global_limit is None and rate_limit is None:
                return fetch_all(conn, "claim_enqueued", params, claims)
            with conn.transaction():
                run(conn, "lock_queue", {"queue": queue})
                budget = limit
                if global_limit is not None or rate_limit is not None:
                    period = rate_limit[1] if rate_limit else 1.0
                    usage = fetch_one(
                        conn,
                        "queue_usage",
                        {"queue": queue, "period": period, **at(now)},
                        class_row(QueueUsage),
                    ) or QueueUsage(0, 0)
                    if global_limit is not None:
                        budget = min(budget, global_limit - usage.running)
                    if rate_limit is not None:
                        budget = min(budget, rate_limit[0] - usage.started)
                if budget <= 0:
                    return []
                params["limit"] = budget
                if keyed:
                    return fetch_all(conn, "claim_enqueued_keyed", params, claims)
                return fetch_all(conn, "claim_enqueued", params, claims)

    def promote_delayed(self, shard: str, limit: int = 1000, now: datetime | None = None) -> int:
        """Make delayed workflows that are due claimable; returns how many."""
        with self._conn(shard) as conn:
            return len(fetch_all(conn, "promote_delayed", {"limit": limit, **at(now)}, scalar_row))

    def claim_expired(
        self,
        shard: str,
        *,
        names: Sequence[str],
        queues: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
        max_recoveries: int,
        app_version: str | None = None,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Claim RUNNING workflows whose lease expired (dead-lettering repeat offenders)."""
        params = {
            "names": list(names),
            "queues": list(queues),
            "owner": owner,
            "app_version": app_version,
            "lease_seconds": lease_seconds,
            "limit": limit,
            "max_recoveries": max_recoveries,
            **at(now),
        }
        claims = claim_rows(shard, time.monotonic())
        with self._conn(shard) as conn:
            return fetch_all(conn, "claim_expired", params, claims)

    def renew_leases(
        self,
        shard: str,
        *,
        owner: str,
        workflow_ids: Sequence[str],
        lease_seconds: float,
        now: datetime | None = None,
    ) -> Renewal:
        params = {
            "workflow_ids": list(workflow_ids),
            "owner": owner,
            "lease_seconds": lease_seconds,
            **at(now),
        }
        with self._conn(shard) as conn:
            rows = fetch_all(conn, "renew_leases", params, tuple_row)
        return Renewal(
            renewed=frozenset(str(w) for w, renewed in rows if renewed),
            lost=frozenset(str(w) for w, renewed in rows if not renewed),
        )

    def release(self, shard: str, runs: Sequence[tuple[str, int]]) -> set[str]:
        """Hand back ``(workflow_id, attempt)`` runs a stopping worker has not finished."""
        params = {"workflow_ids": [r[0] for r in runs], "attempts": [r[1] for r in runs]}
        with self._conn(shard) as conn:
            return {str(w) for w in fetch_all(conn, "release_workflows", params, scalar_row)}

    # -- control --------------------------------------------------------------------------

    def cancel(self, shard: str, workflow_id: str, reason: str) -> bool:
        return self.perform(shard, statements.cancel(workflow_id, reason))

    def resume(self, shard: str, workflow_id: str) -> bool:
        """Raises DedupConflict if the workflow's dedup key is held by an active one."""
        return self.transact(shard, statements.resume(workflow_id))

    # -- notifications ----------------------------------------------------------------------

    def listen(
        self,
        shard: str,
        timeout: float,
        stop: threading.Event,
        *,
        channels: str = "listen",
        purpose: str = "listen",
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(channel, payload)`` notifications of one shard until ``stop`` is set.

        ``channels`` names the query that LISTENs: ``listen`` (a worker's) or
        ``listen_waits`` (a client's waits). Uses a dedicated connection (LISTEN needs
        one) with ``application_name`` ``shardflow-<purpose>``. Yields ``("", "")`` once
        LISTEN is in place and then every ``timeout`` seconds of silence, so the caller
        knows from when on nothing is missed and can check ``stop``.
        """
        conn = self.pools.dedicated(shard, purpose)
        wakeup: contextlib.AbstractContextManager[socket.socket | None] = (
            stop.wakeup()
            if isinstance(stop, StopEvent) and hasattr(select, "poll")  # not on Windows
            else contextlib.nullcontext()
        )
        with conn, wakeup as woken:
            try:
                conn.execute(query(channels))
                yield "", ""
                while not stop.is_set():
                    got = False
                    for note in _notifies(conn, timeout, woken):
                        got = True
                        yield note.channel, note.payload
                        if stop.is_set():
                            return
                    if not got:
                        yield "", ""
            except psycopg.OperationalError as exc:
                raise ShardUnavailable(shard, str(exc).strip().splitlines()[0]) from exc


def _notifies(
    conn: psycopg.Connection[Any], timeout: float, woken: socket.socket | None
) -> Iterable[psycopg.Notify]:
    """The notifications that arrive on ``conn`` within ``timeout`` seconds, or sooner
    when ``woken`` becomes readable (the stop flag was set: none, at once)."""
    if woken is None:
        return conn.notifies(timeout=timeout)
    # poll(), not select(): a process with many connections has descriptors past 1024.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    poller.register(woken.fileno(), select.POLLIN)
    if any(fd == woken.fileno() for fd, _ in poller.poll(timeout * 1000)):
        return ()
    # Readable, or silent for ``timeout``: read what is there without waiting (after a
    # silence too, so that a dead connection is noticed as before).
    return conn.notifies(timeout=0)
