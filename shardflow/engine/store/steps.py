"""A run's writes, fenced by the attempt it claimed: step checkpoints and final states.

There is one fenced write statement, ``commit_batch`` (see workflows.sql): many runs'
checkpoints and final states in one statement, each conditioned on its attempt. A single
write is a batch of one. The worker's committer threads
(:mod:`shardflow.engine.batcher`) decide what goes into a batch; this module runs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg.rows import class_row, kwargs_row

from shardflow.engine.records import FinishWrite, StepRecord, StepWrite
from shardflow.engine.store._conn import ShardAccess, fetch_all, fetch_one
from shardflow.engine.store.rows import RunState, step_rows
from shardflow.engine.store_errors import Fenced
from shardflow.router.pools import Conn

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a batch wrote. A write missing here was fenced off (its run no longer owns
    the workflow) or, for a step, lost to a record another write made first."""

    # (workflow_id, step_no, attempt) of each step written.
    steps: frozenset[tuple[str, int, int]]
    # (workflow_id, attempt) of each final state written.
    finished: frozenset[tuple[str, int]]
    # Writes of the batch that repeated an earlier write's key: they lost to it.
    repeated: frozenset[int] = frozenset()

    def written(self, write: StepWrite | FinishWrite) -> bool:
        if id(write) in self.repeated:
            return False
        if isinstance(write, StepWrite):
            return (write.workflow_id, write.step_no, write.attempt) in self.steps
        return (write.workflow_id, write.attempt) in self.finished


def _batch_params(writes: Sequence[StepWrite | FinishWrite]) -> dict[str, str]:
    # One lock order for the status rows a batch locks or updates.
    steps = sorted((w for w in writes if isinstance(w, StepWrite)), key=lambda w: w.workflow_id)
    finishes = sorted(
        (w for w in writes if isinstance(w, FinishWrite)), key=lambda f: f.workflow_id
    )
    # Both lists travel as JSON documents: one C-encoded string each, where a dozen
    # Python-built arrays would cost more than the statement.
    return {
        "steps": _encode(
            [
                {
                    "workflow_id": w.workflow_id,
                    "attempt": w.attempt,
                    "step_no": w.step_no,
                    "name": w.name,
                    "output": w.output,
                    "error": w.error,
                    "started_at": w.started_at,
                    "duration_ms": w.duration_ms,
                }
                for w in steps
            ]
        ),
        "finishes": _encode(
            [
                {
                    "workflow_id": w.workflow_id,
                    "attempt": w.attempt,
                    "state": w.state,
                    "output": w.output,
                    "error": w.error,
                    "reason": w.reason,
                }
                for w in finishes
            ]
        ),
    }


def write_in(conn: Conn, writes: Sequence[StepWrite | FinishWrite]) -> BatchResult:
    """Run the fenced write statement for ``writes`` on ``conn`` (inside the caller's
    transaction, if it has one). Of several writes with one key (a step of one attempt,
    a final state of one attempt) the first is sent and the others lose to it."""
    unique: dict[tuple[str, int | None, int], StepWrite | FinishWrite] = {}
    repeated: set[int] = set()
    for w in writes:
        key = (w.workflow_id, w.step_no if isinstance(w, StepWrite) else None, w.attempt)
        if key in unique:
            repeated.add(id(w))
        else:
            unique[key] = w

    def make(*, workflow_id: str, step_no: int | None, attempt: int) -> tuple[str, int | None, int]:
        return workflow_id, step_no, attempt

    rows = fetch_all(conn, "commit_batch", _batch_params(list(unique.values())), kwargs_row(make))
    return BatchResult(
        steps=frozenset((w, s, a) for w, s, a in rows if s is not None),
        finished=frozenset((w, a) for w, s, a in rows if s is None),
        repeated=frozenset(repeated),
    )


class StepQueries(ShardAccess):
    def steps(self, shard: str, workflow_id: str) -> list[StepRecord]:
        """The recorded steps of a workflow, in order."""
        with self._conn(shard) as conn:
            return fetch_all(
                conn, "load_steps", {"workflow_id": workflow_id}, step_rows(self.codec)
            )

    def load_steps(self, shard: str, workflow_id: str) -> list[StepRecord]:
        """The history a run replays (the same as :meth:`steps`)."""
        return self.steps(shard, workflow_id)

    def write_batch(self, shard: str, writes: Sequence[StepWrite | FinishWrite]) -> BatchResult:
        """Write checkpoints and final states of many runs in one statement (autocommit:
        the statement is its own transaction), each fenced on its attempt."""
        with self._conn(shard) as conn:
            return write_in(conn, writes)

    def record_step(self, shard: str, write: StepWrite) -> StepRecord | None:
        """Record a step (a batch of one). Returns None if written; the winning record if
        another run wrote this step first. Raises :class:`Fenced` if this run no longer
        owns the workflow."""
        if self.write_batch(shard, [write]).written(write):
            return None
        return self.resolve_unwritten_step(shard, write.workflow_id, write.attempt, write.step_no)

    def finish(self, shard: str, write: FinishWrite) -> bool:
        """Record the final state once (a batch of one). False if this run was fenced
        off."""
        return self.write_batch(shard, [write]).written(write)

    def resolve_unwritten_step(
        self, shard: str, workflow_id: str, attempt: int, step_no: int
    ) -> StepRecord:
        """Why a step record was not written: the winning record of another run, or
        :class:`Fenced` if this run no longer owns the workflow."""
        with self._conn(shard) as conn:
            row = fetch_one(
                conn,
                "get_step",
                {"workflow_id": workflow_id, "step_no": step_no},
                step_rows(self.codec),
            )
            state = fetch_one(conn, "run_state", {"workflow_id": workflow_id}, class_row(RunState))
        if state is None or state.state != "RUNNING" or state.attempt != attempt:
            raise Fenced(workflow_id, None if state is None else state.state)
        if row is None:  # pragma: no cover - a live run's unwritten step has a record
            raise Fenced(workflow_id, state.state)
        return row
