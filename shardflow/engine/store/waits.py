"""Durable waits: suspend and wake, messages, events, timeouts, children and forks.

These writes take the row lock on the status row first: the rule every write aimed at a
workflow follows, so that the rebalancer's ``FOR UPDATE NOWAIT`` protects a workflow
being moved.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, scalar_row
from psycopg.types.json import Jsonb

from shardflow.engine.records import Claim, NewWorkflow, StepWrite
from shardflow.engine.store import statements
from shardflow.engine.store._conn import (
    ShardAccess,
    at,
    fetch_all,
    fetch_one,
    returns_row,
    run,
)
from shardflow.engine.store.rows import (
    Delivery,
    ForkSource,
    Message,
    RunState,
    claim_rows,
)
from shardflow.engine.store.steps import write_in
from shardflow.engine.store_errors import Fenced
from shardflow.router.pools import Conn


def _lock_run(conn: Conn, workflow_id: str, attempt: int) -> None:
    row = fetch_one(conn, "lock_run", {"workflow_id": workflow_id}, class_row(RunState))
    if row is None or row.state != "RUNNING" or row.attempt != attempt:
        raise Fenced(workflow_id, None if row is None else row.state)


class WaitQueries(ShardAccess):
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
                _lock_run(conn, workflow_id, attempt)
            except Fenced:
                return False
            return returns_row(
                conn,
                "suspend_workflow",
                {
                    "workflow_id": workflow_id,
                    "attempt": attempt,
                    "delay_seconds": delay_seconds,
                    "wait_for": wait_for,
                    "topic": topic,
                },
            )

    def claim_wakeable(
        self,
        shard: str,
        *,
        names: Sequence[str],
        queues: Sequence[str],
        owner: str,
        lease_seconds: float,
        limit: int,
        app_version: str | None = None,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Claim SUSPENDED workflows whose wake-up time has come."""
        params = {
            "names": list(names),
            "queues": list(queues),
            "owner": owner,
            "app_version": app_version,
            "lease_seconds": lease_seconds,
            "limit": limit,
            **at(now),
        }
        claims = claim_rows(shard, time.monotonic())
        with self._conn(shard) as conn:
            return fetch_all(conn, "claim_wakeable", params, claims)

    def wake(self, shard: str, workflow_id: str, wait_for: str | None = None) -> bool:
        return self.perform(shard, statements.wake(workflow_id, wait_for))

    def send_message(
        self, shard: str, *, workflow_id: str, topic: str, message_id: str, payload: str
    ) -> Delivery:
        """Deliver a message (see :func:`~shardflow.engine.store.statements.send_message`)."""
        return self.transact(
            shard, statements.send_message(workflow_id, topic, message_id, payload)
        )

    def consume_message(
        self, shard: str, *, workflow_id: str, attempt: int, step_no: int, topic: str
    ) -> tuple[bool, Any]:
        """Take the oldest unconsumed message of ``topic`` and record it as step
        ``step_no`` in one transaction: ``(True, message)``; ``(False, None)`` and no
        writes if none waits."""
        with self._conn(shard) as conn, conn.transaction():
            _lock_run(conn, workflow_id, attempt)
            message = fetch_one(
                conn,
                "next_message",
                {"workflow_id": workflow_id, "topic": topic},
                class_row(Message),
            )
            if message is None:
                return False, None
            run(conn, "consume_message", {"workflow_id": workflow_id, "seq": message.seq})
            # Received, not timed: the receipt's own time is its commit.
            write_in(
                conn,
                [StepWrite(workflow_id, attempt, step_no, "shardflow.recv", message.payload, None)],
            )
        return True, self.codec.loads(message.payload)

    def set_event(
        self, shard: str, *, workflow_id: str, attempt: int, step_no: int, key: str, value: str
    ) -> None:
        """Publish an event and record it as step ``step_no``, atomically and fenced."""
        with self._conn(shard) as conn, conn.transaction():
            _lock_run(conn, workflow_id, attempt)
            run(conn, "upsert_event", {"workflow_id": workflow_id, "key": key, "value": value})
            run(conn, "notify_event", {"workflow_id": workflow_id})
            write_in(
                conn,
                [StepWrite(workflow_id, attempt, step_no, "shardflow.set_event", value, None)],
            )

    def get_event(self, shard: str, workflow_id: str, key: str) -> tuple[bool, Any]:
        """``(True, value)`` of a published event; ``(False, None)`` if not published."""
        return self.perform(shard, statements.get_event(self.codec, workflow_id, key))

    def expire_deadlines(self, shard: str, now: datetime | None = None) -> list[str]:
        """Cancel active workflows past their deadline; returns their IDs."""
        with self._conn(shard) as conn:
            return [str(w) for w in fetch_all(conn, "expire_deadlines", at(now), scalar_row)]

    def child_ids(self, shard: str, workflow_id: str) -> list[str]:
        return self.perform(shard, statements.child_ids(self.codec, workflow_id))

    def fork_source(self, shard: str, workflow_id: str) -> ForkSource | None:
        with self._conn(shard) as conn:
            return fetch_one(
                conn, "fork_source", {"workflow_id": workflow_id}, class_row(ForkSource)
            )

    def insert_fork(
        self,
        shard: str,
        row: NewWorkflow,
        steps: Sequence[tuple[int, str, str | None, Any]],
        forked_from: str,
    ) -> bool:
        """Create a forked workflow of ``forked_from`` with its copied ``(step_no, name,
        output, error)`` steps in one transaction."""
        with self._conn(shard) as conn, conn.transaction():
            created = returns_row(
                conn,
                "insert_fork",
                {
                    "workflow_id": row.workflow_id,
                    "slot": row.slot,
                    "route_hash": row.route_hash,
                    "name": row.name,
                    "queue": row.queue,
                    "priority": row.priority,
                    "inputs": row.inputs,
                    "forked_from": forked_from,
                    "trace_context": Jsonb(row.trace_context) if row.trace_context else None,
                },
            )
            if not created:
                return False
            if steps:
                run(
                    conn,
                    "insert_steps",
                    {
                        "workflow_id": row.workflow_id,
                        "step_nos": [s[0] for s in steps],
                        "names": [s[1] for s in steps],
                        "outputs": [s[2] for s in steps],
                        "errors": [Jsonb(s[3]) if s[3] is not None else None for s in steps],
                    },
                )
        return True
