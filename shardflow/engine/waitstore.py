"""The engine's queries behind durable waits (mixed into :class:`~shardflow.engine.store.Store`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from shardflow.engine.records import Claim, NewWorkflow, claim_from_row
from shardflow.engine.serialization import Codec
from shardflow.engine.store_errors import Fenced
from shardflow.errors import WorkflowNotFound
from shardflow.router.pools import Conn, ShardPools
from shardflow.sql import query


class WaitStore:
    """Queries behind durable waits: suspend/wake, messages, events, timeouts, fork.

    Mixed into :class:`Store`; kept apart because these writes take row locks on the
    status row first (the rule every write aimed at a workflow follows, so that the
    rebalancer's ``FOR UPDATE NOWAIT`` protects a workflow being moved).
    """

    pools: ShardPools
    codec: Codec

    if TYPE_CHECKING:

        def _conn(self, shard: str) -> AbstractContextManager[Conn]: ...

    def _lock_run(self, conn: Conn, workflow_id: str, attempt: int) -> None:
        row = conn.execute(query("lock_run"), {"workflow_id": workflow_id}).fetchone()
        if row is None or row[0] != "RUNNING" or row[1] != attempt:
            raise Fenced(workflow_id, None if row is None else str(row[0]))

    def suspend(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        delay_seconds: float | None,
        wait_for: str,
        topic: str | None = None,
    ) -> bool:
        """Park a run for ``delay_seconds`` (database clock; None: until woken) or until a
        wake-up. False if fenced off."""
        with self._conn(shard) as conn, conn.transaction():
            try:
                self._lock_run(conn, workflow_id, attempt)
            except Fenced:
                return False
            row = conn.execute(
                query("suspend_workflow"),
                {
                    "workflow_id": workflow_id,
                    "attempt": attempt,
                    "delay_seconds": delay_seconds,
                    "wait_for": wait_for,
                    "topic": topic,
                },
            ).fetchone()
        return row is not None

    def claim_wakeable(
        self,
        shard: str,
        *,
        names: Sequence[str],
        queues: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
    ) -> list[Claim]:
        params = {
            "names": list(names),
            "queues": list(queues),
            "owner": owner,
            "lease_seconds": lease_seconds,
            "limit": limit,
        }
        sent = time.monotonic()
        with self._conn(shard) as conn:
            rows = conn.execute(query("claim_wakeable"), params).fetchall()
        return [claim_from_row(shard, r, sent) for r in rows]

    def wake(self, shard: str, workflow_id: str, wait_for: str | None = None) -> bool:
        with self._conn(shard) as conn:
            row = conn.execute(
                query("wake_workflow"), {"workflow_id": workflow_id, "wait_for": wait_for}
            ).fetchone()
        return row is not None

    def send_message(
        self, shard: str, *, workflow_id: str, topic: str, message_id: str, payload: str
    ) -> tuple[str, str | None]:
        """Deliver a message: ``("sent" | "duplicate", None)``, or ``("moved", shard)``.

        Locks the target's status row first; a tombstone means the workflow moved.
        """
        with self._conn(shard) as conn, conn.transaction():
            target = conn.execute(query("lock_target"), {"workflow_id": workflow_id}).fetchone()
            if target is None:
                raise WorkflowNotFound(workflow_id)
            state, moved_to = str(target[0]), target[1]
            if state == "MOVED":
                return "moved", moved_to
            inserted = conn.execute(
                query("insert_message"),
                {
                    "workflow_id": workflow_id,
                    "topic": topic,
                    "message_id": message_id,
                    "payload": payload,
                },
            ).fetchone()
            if inserted is None:
                return "duplicate", None
            conn.execute(query("notify_message"), {"workflow_id": workflow_id})
            wake = {"workflow_id": workflow_id, "wait_for": f"message:{topic}"}
            if state == "SUSPENDED":
                conn.execute(query("wake_workflow"), wake)
            elif state == "IMPORTING":
                # A staged copy whose move is decided (the source's tombstone sent this
                # here): it wakes when it is activated.
                conn.execute(query("wake_staged_copy"), wake)
        return "sent", None

    def consume_message(
        self, shard: str, *, workflow_id: str, attempt: int, step_no: int, topic: str
    ) -> tuple[bool, Any]:
        """Take the oldest unconsumed message of ``topic`` and record it as step
        ``step_no`` in one transaction. ``(False, None)`` and no writes if none waits."""
        with self._conn(shard) as conn, conn.transaction():
            self._lock_run(conn, workflow_id, attempt)
            row = conn.execute(
                query("next_message"), {"workflow_id": workflow_id, "topic": topic}
            ).fetchone()
            if row is None:
                return False, None
            conn.execute(query("consume_message"), {"workflow_id": workflow_id, "seq": row[0]})
            conn.execute(
                query("record_step"),
                {
                    "workflow_id": workflow_id,
                    "attempt": attempt,
                    "step_no": step_no,
                    "name": "shardflow.recv",
                    "output": row[1],
                    "error": None,
                    # Received, not timed: the receipt's own time is its commit.
                    "started_at": None,
                    "duration_ms": None,
                },
            )
        return True, self.codec.loads(row[1])

    def set_event(
        self, shard: str, *, workflow_id: str, attempt: int, step_no: int, key: str, value: str
    ) -> None:
        """Publish an event and record it as step ``step_no``, atomically and fenced."""
        with self._conn(shard) as conn, conn.transaction():
            self._lock_run(conn, workflow_id, attempt)
            conn.execute(
                query("upsert_event"), {"workflow_id": workflow_id, "key": key, "value": value}
            )
            conn.execute(
                query("record_step"),
                {
                    "workflow_id": workflow_id,
                    "attempt": attempt,
                    "step_no": step_no,
                    "name": "shardflow.set_event",
                    "output": value,
                    "error": None,
                    "started_at": None,
                    "duration_ms": None,
                },
            )

    def get_event(self, shard: str, workflow_id: str, key: str) -> tuple[bool, Any]:
        with self._conn(shard) as conn:
            row = conn.execute(
                query("get_event"), {"workflow_id": workflow_id, "key": key}
            ).fetchone()
        return (False, None) if row is None else (True, self.codec.loads(row[0]))

    def expire_deadlines(self, shard: str) -> list[str]:
        with self._conn(shard) as conn:
            return [str(r[0]) for r in conn.execute(query("expire_deadlines")).fetchall()]

    def child_ids(self, shard: str, workflow_id: str) -> list[str]:
        with self._conn(shard) as conn:
            rows = conn.execute(query("child_ids"), {"workflow_id": workflow_id}).fetchall()
        return [str(self.codec.loads(r[0])) for r in rows]

    def fork_source(self, shard: str, workflow_id: str) -> tuple[str, str, int, str] | None:
        with self._conn(shard) as conn:
            row = conn.execute(query("fork_source"), {"workflow_id": workflow_id}).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]), str(row[3]))

    def insert_fork(
        self, shard: str, row: NewWorkflow, steps: Sequence[tuple[int, str, str | None, Any]]
    ) -> bool:
        """Create a forked workflow with its copied steps in one transaction."""
        with self._conn(shard) as conn, conn.transaction():
            created = conn.execute(
                query("insert_fork"),
                {
                    "workflow_id": row.workflow_id,
                    "slot": row.slot,
                    "route_hash": row.route_hash,
                    "name": row.name,
                    "queue": row.queue,
                    "priority": row.priority,
                    "inputs": row.inputs,
                },
            ).fetchone()
            if created is None:
                return False
            if steps:
                conn.execute(
                    query("insert_steps"),
                    {
                        "workflow_id": row.workflow_id,
                        "step_nos": [s[0] for s in steps],
                        "names": [s[1] for s in steps],
                        "outputs": [s[2] for s in steps],
                        "errors": [Jsonb(s[3]) if s[3] is not None else None for s in steps],
                    },
                )
        return True
