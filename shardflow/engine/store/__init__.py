"""The storage boundary of the engine: every SQL statement the engine runs goes through
this package.

One method per query (named queries in ``shardflow/sql/queries``), grouped by concern:

- :mod:`~shardflow.engine.store._conn`: the one way to a pooled connection, and the
  classification of driver errors (ShardUnavailable, TransientStoreError, ValueRejected,
  StoreError);
- :mod:`~shardflow.engine.store.workflows`: submit, read, claim, lease, cancel, resume;
- :mod:`~shardflow.engine.store.steps`: the fenced write of checkpoints and final states
  (one statement; a single write is a batch of one);
- :mod:`~shardflow.engine.store.waits`: suspend and wake, messages, events, timeouts, fork;
- :mod:`~shardflow.engine.store.slots`: identity, slot map and states, the copy lookup
  across moves;
- :mod:`~shardflow.engine.store.ops`: the worker registry, metrics counts, retention,
  the demo's checks.

Rows come back as small frozen dataclasses (:mod:`~shardflow.engine.store.rows`). Each
method talks to one shard; callers route first. Every time-dependent query takes an
optional ``now`` (None: the database's clock) so that tests need not wait.
"""

from __future__ import annotations

from shardflow.engine.records import FinishWrite, StepWrite
from shardflow.engine.store.ops import EffectsLog, OpsQueries, RetentionSession
from shardflow.engine.store.rows import (
    NO_HOLDING,
    Delivery,
    EnqueuedCount,
    Existing,
    ForkSource,
    Located,
    QueueDepth,
    RetentionBatch,
    ShardCounts,
    SlotHolding,
    SlotOwnership,
    WorkerRecord,
)
from shardflow.engine.store.slots import SlotQueries
from shardflow.engine.store.steps import BatchResult, StepQueries
from shardflow.engine.store.waits import WaitQueries
from shardflow.engine.store.workflows import WorkflowQueries
from shardflow.engine.store_errors import DedupConflict, Fenced, StoreError, TransientStoreError

__all__ = [
    "NO_HOLDING",
    "BatchResult",
    "DedupConflict",
    "Delivery",
    "EffectsLog",
    "EnqueuedCount",
    "Existing",
    "Fenced",
    "FinishWrite",
    "ForkSource",
    "Located",
    "QueueDepth",
    "RetentionBatch",
    "RetentionSession",
    "ShardCounts",
    "SlotHolding",
    "SlotOwnership",
    "StepWrite",
    "Store",
    "StoreError",
    "TransientStoreError",
    "WorkerRecord",
]


class Store(WorkflowQueries, StepQueries, WaitQueries, SlotQueries, OpsQueries):
    """Named queries against the shards of one cluster (``Store(pools, codec)``)."""
