"""Group commit for a worker's writes to one shard.

Runs hand their step checkpoints and final states to the shard's committer thread and
wait. The committer writes everything queued so far in one transaction (one statement
per kind), commits, and answers each waiter. A step still returns only after its own
checkpoint is committed; under load, many checkpoints share one commit. At light load a
batch holds one write and nothing waits for company.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg

from shardflow.engine.records import StepRecord
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.errors import ShardUnavailable
from shardflow.router.pools import ShardPools
from shardflow.sql import query

log = logging.getLogger(__name__)

MAX_BATCH = 500
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class StepWrite:
    workflow_id: str
    attempt: int
    step_no: int
    name: str
    output: str | None
    error: dict[str, Any] | None
    done: Future[bool] = field(default_factory=Future)


@dataclass(slots=True)
class FinishWrite:
    workflow_id: str
    attempt: int
    state: str
    output: str | None
    error: dict[str, Any] | None
    reason: str | None
    done: Future[bool] = field(default_factory=Future)


class ShardCommitter:
    """One thread and one connection per shard that commit queued writes together."""

    def __init__(self, pools: ShardPools, shard: str) -> None:
        self.pools = pools
        self.shard = shard
        self._queue: list[StepWrite | FinishWrite] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._loop, name=f"shardflow-commit-{shard}", daemon=True
        )
        self._thread.start()
        self.batches = 0
        self.writes = 0

    def record_step(self, write: StepWrite) -> bool:
        """Queue a checkpoint and wait until it is committed. True if written; False if
        fenced off or another run recorded this step first."""
        self._put(write)
        return write.done.result()

    def finish(self, write: FinishWrite) -> bool:
        self._put(write)
        return write.done.result()

    def _put(self, write: StepWrite | FinishWrite) -> None:
        with self._cond:
            if self._stopped:
                raise ShardUnavailable(self.shard, "the worker is stopping")
            self._queue.append(write)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if not self._queue and self._stopped:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._commit(batch)

    def _commit(self, batch: Sequence[StepWrite | FinishWrite]) -> None:
        steps = [w for w in batch if isinstance(w, StepWrite)]
        # One lock order for the status rows a batch updates.
        finishes = sorted(
            (w for w in batch if isinstance(w, FinishWrite)), key=lambda f: f.workflow_id
        )
        # Both lists travel as JSON documents: one C-encoded string each, where a dozen
        # Python-built arrays would cost more than the statement.
        params = {
            "steps": _encode(
                [
                    {
                        "workflow_id": w.workflow_id,
                        "attempt": w.attempt,
                        "step_no": w.step_no,
                        "name": w.name,
                        "output": w.output,
                        "error": w.error,
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
        try:
            # Autocommit: the single statement is its own transaction.
            with self.pools.connection(self.shard) as conn:
                rows = conn.execute(query("commit_batch"), params).fetchall()
        except ShardUnavailable as exc:
            for w in batch:
                w.done.set_exception(exc)
            return
        except psycopg.Error as exc:
            # One bad row must not fail the others: retry each write on its own.
            if len(batch) > 1:
                log.warning("group commit on %s failed (%s); retrying one by one", self.shard, exc)
                for w in batch:
                    self._commit([w])
                return
            error = ShardUnavailable(self.shard, str(exc).splitlines()[0])
            batch[0].done.set_exception(error)
            return
        self.batches += 1
        self.writes += len(batch)
        written_steps = {(str(r[0]), int(r[1])) for r in rows if r[1] is not None}
        finished = {str(r[0]) for r in rows if r[1] is None}
        for s in steps:
            s.done.set_result((s.workflow_id, s.step_no) in written_steps)
        for f in finishes:
            f.done.set_result(f.workflow_id in finished)


class GroupWriter:
    """A run's step and final-state writes through per-shard committers (same contract as
    ``Store.record_step`` and ``Store.finish``)."""

    def __init__(self, store: Store, shards: Sequence[str]) -> None:
        self.store = store
        self.committers = {s: ShardCommitter(store.pools, s) for s in shards}

    def record_step(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        step_no: int,
        name: str,
        output: str | None,
        error: dict[str, Any] | None,
    ) -> StepRecord | None:
        written = self.committers[shard].record_step(
            StepWrite(workflow_id, attempt, step_no, name, output, error)
        )
        if written:
            return None
        return self.store.resolve_unwritten_step(shard, workflow_id, attempt, step_no)

    def finish(
        self,
        shard: str,
        *,
        workflow_id: str,
        attempt: int,
        state: WorkflowState,
        output: str | None,
        error: dict[str, Any] | None,
        reason: str | None = None,
    ) -> bool:
        return self.committers[shard].finish(
            FinishWrite(workflow_id, attempt, state.value, output, error, reason)
        )

    def close(self) -> None:
        for committer in self.committers.values():
            committer.stop()
