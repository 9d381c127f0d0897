"""Retention: deleting finished workflows once they are older than the YAML says.

Every worker runs a :class:`RetentionLeader` when the cluster YAML has a ``retention:``
section. Per shard, one of them wins a session-level advisory lock and becomes that
shard's leader; the others only retry the lock now and then, so a leader that dies is
replaced within ``interval_seconds``. The leader deletes on the connection that holds
the lock: if that connection breaks, the lock is gone and so is its right to delete.

A round deletes the oldest expired workflows ``batch_size`` at a time, each batch its own
short transaction (status row, steps, messages, events), pausing between batches, until
a batch comes back short. Small transactions keep locks brief, let autovacuum reclaim the
space as it goes, and never hold back the rest of the shard.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from shardflow.config.model import RetentionConfig
from shardflow.engine.blobs import references
from shardflow.engine.store import RetentionSession
from shardflow.errors import ShardflowError, ShardUnavailable

if TYPE_CHECKING:
    from shardflow.engine.cluster import Cluster

log = logging.getLogger(__name__)

Clock = Callable[[], datetime | None]


@dataclass(slots=True)
class RetentionStats:
    """What the leader did; metrics and tests read it."""

    deleted: Counter[str] = field(default_factory=Counter)
    blobs_deleted: int = 0
    rounds: int = 0
    # The batch sizes of the last round on each shard.
    last_batches: dict[str, list[int]] = field(default_factory=dict)
    leading: set[str] = field(default_factory=set)


class RetentionLeader:
    """Deletes expired workflows on the shards of ``shards`` it leads."""

    def __init__(
        self,
        cluster: Cluster,
        config: RetentionConfig,
        shards: Sequence[str],
        stop: threading.Event,
        *,
        now: Clock | None = None,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.shards = list(shards)
        self.stats = RetentionStats()
        self._stop = stop
        # None means the database's now(); tests pass a clock.
        self._now: Clock = now or (lambda: None)
        self._sessions: dict[str, RetentionSession] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        """Until ``stop`` is set: a round on every shard, then wait ``interval_seconds``."""
        try:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.config.interval_seconds)
        finally:
            self.close()

    def run_once(self) -> int:
        """One round on every shard this process leads (or can lead now); returns the
        number of workflows deleted."""
        total = 0
        for shard in self.shards:
            if self._stop.is_set():
                break
            try:
                total += self._round(shard)
            except Exception:
                log.exception("retention on %s failed; retrying next round", shard)
                self._drop(shard)
        self.stats.rounds += 1
        return total

    def close(self) -> None:
        """Give up every shard (closing the session releases its lock)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            self.stats.leading.clear()
        for session in sessions.values():
            session.close()

    # -- one shard --------------------------------------------------------------------

    def _round(self, shard: str) -> int:
        session = self._lead(shard)
        if session is None:
            return 0
        batches: list[int] = []
        try:
            while not self._stop.is_set():
                batch = session.delete_batch(
                    now=self._now(),
                    keep_seconds=self.config.keep_finished_seconds,
                    limit=self.config.batch_size,
                )
                batches.append(batch.workflows)
                self.stats.deleted[shard] += batch.workflows
                self._delete_blobs(list(batch.blob_refs))
                if batch.workflows < self.config.batch_size:
                    break
                # Let the shard breathe (and autovacuum catch up) between batches.
                self._stop.wait(self.config.batch_pause_seconds)
        except ShardUnavailable as exc:
            log.warning("retention on %s lost its connection: %s", shard, exc.reason)
            self._drop(shard)
        finally:
            self.stats.last_batches[shard] = batches
        deleted_total = sum(batches)
        if deleted_total:
            log.info(
                "retention deleted %d finished workflow(s) on %s in %d batch(es)",
                deleted_total,
                shard,
                len(batches),
            )
        return deleted_total

    def _lead(self, shard: str) -> RetentionSession | None:
        """The session holding ``shard``'s retention lock, taking it if it is free."""
        with self._lock:
            session = self._sessions.get(shard)
        if session is not None and session.usable:
            return session
        self._drop(shard)
        try:
            session = self.cluster.store.retention_session(shard)
        except ShardUnavailable as exc:
            log.debug("retention: shard %s unreachable: %s", shard, exc.reason)
            return None
        if session is None:
            return None
        with self._lock:
            self._sessions[shard] = session
            self.stats.leading.add(shard)
        log.info("retention: leading shard %s", shard)
        return session

    def _drop(self, shard: str) -> None:
        with self._lock:
            session = self._sessions.pop(shard, None)
            self.stats.leading.discard(shard)
        if session is not None:
            session.close()

    def _delete_blobs(self, texts: list[str]) -> None:
        """Remove the blobs of rows just deleted. Best effort: a blob left behind is
        only wasted space, a blob deleted too early would be a lost value."""
        blobs = self.cluster.codec.blobs
        refs = references(texts)
        if not refs or blobs is None:
            return
        try:
            blobs.delete([ref.key for ref in refs])
        except ShardflowError as exc:
            log.warning("retention could not delete %d blob(s): %s", len(refs), exc)
            return
        self.stats.blobs_deleted += len(refs)
