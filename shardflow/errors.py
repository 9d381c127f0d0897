"""Every exception shardflow raises on purpose.

The tree (tests/unit/test_error_tree.py checks it against every exception class defined
in the package, so a new class must be added here)::

    ShardflowError
    ├── ConfigError            bad YAML or values; carries the YAML path and line
    ├── IdentityMismatch       a shard's recorded cluster identity differs from the config
    ├── ClientClosed           a call on a cluster client after its close()
    ├── WrongEventLoop         an async client called from another loop than its own
    ├── RoutingError           an ID cannot be routed (no owner, too many redirects)
    ├── ShardUnavailable       a shard cannot be reached now (retryable)
    │   └── BlobStoreUnavailable   the blob store cannot be reached now (retryable)
    ├── StoreError             a shard refused a statement (not a connectivity problem)
    │   └── TransientStoreError    ... in a way worth retrying: deadlock, lock or statement
    │                              timeout, serialization failure
    ├── LeaseLost              a fenced write was refused: this run no longer owns the
    │                          workflow (cancelled, finished, or claimed by another)
    ├── DedupConflict          an insert met a dedup key held by an active workflow
    ├── MigrationError         a schema migration failed
    ├── RebalanceError         a rebalance cannot be planned or carried out as asked
    ├── EmbeddedServerError    a local PostgreSQL server (dev, demo, tests) failed
    ├── WorkflowError
    │   ├── WorkflowNotFound       no workflow with that ID on any shard
    │   ├── WorkflowConflict       same ID submitted with another workflow name
    │   ├── WorkflowDeduplicated   an active workflow of the queue holds the dedup key
    │   ├── WorkflowFailed         the workflow ended in ERROR; carries the remote error
    │   ├── WorkflowCancelled      the workflow ended CANCELLED (by a user or a timeout)
    │   ├── WorkflowTimeout        waiting for a result timed out (the workflow goes on)
    │   ├── NonDeterminismError    replay reached another step than the one recorded
    │   └── UnknownWorkflow        no registered code for a workflow name
    ├── StepFailed             a replayed step error whose type cannot be rebuilt
    └── SerializationError     a value cannot be serialized or deserialized
        ├── PayloadTooLarge        a serialized value exceeds limits.max_payload_bytes
        ├── ValueRejected          the database refuses a value (NUL, invalid text, size)
        └── BlobMissing            a referenced blob is gone or its content changed

    Exception
    └── CliError               how a command was called is wrong (exit status 2)

    BaseException              control flow inside a run; never reaches a caller
    ├── RunInterrupted         stop at the next step boundary (cancelled, fenced, stopping)
    └── Suspend                park the run (durable sleep, wait for a message or child)

Where the classes live: this module, except ``BlobStoreUnavailable`` and ``BlobMissing``
(:mod:`shardflow.engine.blobs`), ``StepFailed`` (:mod:`shardflow.engine.serialization`),
``CliError`` (:mod:`shardflow.cli.options`), ``RunInterrupted`` and ``Suspend``
(:mod:`shardflow.engine.runner`). Private subclasses (a leading underscore) are not shown.

Driver errors are wrapped at the storage boundary (``raise ... from exc``), so callers
catch these classes, never psycopg's.
"""

from __future__ import annotations

from typing import Any


class ShardflowError(Exception):
    """Base class of every error shardflow raises on purpose."""


class ConfigError(ShardflowError):
    """The cluster configuration is invalid.

    ``path`` is the YAML path of the offending value (``shards[1].weight``) and ``line``
    its 1-based line in the file, when known.
    """

    def __init__(self, message: str, *, path: str = "", line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.detail = message
        text = f"{path}: {message}" if path else message
        if line is not None:
            text = f"{text} (line {line})"
        super().__init__(text)


class IdentityMismatch(ShardflowError):
    """A shard belongs to another cluster, or its slot count or seed differs."""


class ClientClosed(ShardflowError):
    """A call on a cluster client (or a worker's) after it was closed: not retried."""


class WrongEventLoop(ShardflowError):
    """An :class:`~shardflow.AsyncCluster` called from an event loop other than the one
    it was connected on (its connection pools belong to that loop): connect one client
    per event loop."""


class RoutingError(ShardflowError):
    """A workflow ID could not be routed to a shard."""


class ShardUnavailable(ShardflowError):
    """A shard could not be reached. Retryable: other shards keep working."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        super().__init__(f"shard {shard!r} is unavailable: {reason}")


class MigrationError(ShardflowError):
    """A schema migration failed on a shard."""


class RebalanceError(ShardflowError):
    """A rebalance cannot be planned or carried out: a shard missing from the config still
    owns slots, another rebalance holds the lock, the live ownership is inconsistent."""


class EmbeddedServerError(ShardflowError):
    """A local PostgreSQL server (``shardflow dev``, demo, tests) could not be run."""


class WorkflowError(ShardflowError):
    """Base class of errors about one workflow."""


class WorkflowNotFound(WorkflowError):
    """No workflow with that ID exists on any shard."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} not found")


class WorkflowConflict(WorkflowError):
    """A workflow ID already exists with another workflow name."""


class WorkflowDeduplicated(WorkflowError):
    """An active workflow of the queue already holds this dedup key."""

    def __init__(self, queue: str, dedup_key: str) -> None:
        self.queue = queue
        self.dedup_key = dedup_key
        super().__init__(
            f"queue {queue!r} already has an active workflow with dedup key {dedup_key!r}"
        )


class WorkflowFailed(WorkflowError):
    """The workflow ended in ERROR. ``error`` holds the recorded remote error."""

    def __init__(self, workflow_id: str, error: dict[str, Any] | None) -> None:
        self.workflow_id = workflow_id
        self.error = error or {}
        kind = self.error.get("type", "Error")
        message = self.error.get("message", "")
        super().__init__(f"workflow {workflow_id!r} failed: {kind}: {message}")


class WorkflowCancelled(WorkflowError):
    """The workflow ended CANCELLED."""

    def __init__(self, workflow_id: str, reason: str | None = None) -> None:
        self.workflow_id = workflow_id
        self.reason = reason
        suffix = f" ({reason})" if reason else ""
        super().__init__(f"workflow {workflow_id!r} was cancelled{suffix}")


class WorkflowTimeout(WorkflowError):
    """Waiting for a workflow's result timed out; the workflow itself goes on."""


class NonDeterminismError(WorkflowError):
    """Replay reached a different step than the one recorded at that position."""


class UnknownWorkflow(WorkflowError):
    """No code is registered for a workflow name in this App."""


class SerializationError(ShardflowError):
    """A value cannot be serialized (or a stored one deserialized)."""


class PayloadTooLarge(SerializationError):
    """A serialized value is larger than ``limits.max_payload_bytes``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} bytes, over limits.max_payload_bytes ({limit})")


class ValueRejected(SerializationError):
    """The database refuses a value and always will: a NUL character, text that is not
    valid UTF-8 (a lone surrogate), a value over a server limit. Not retryable."""


class StoreError(ShardflowError):
    """A shard refused a statement for a reason other than connectivity (which is
    :class:`ShardUnavailable`)."""


class TransientStoreError(StoreError):
    """A statement failed in a way worth retrying: deadlock, lock or statement timeout,
    serialization failure. The shard itself is fine."""


class LeaseLost(ShardflowError):
    """A fenced write was refused: this run no longer owns the workflow (cancelled,
    finished, or claimed by another worker after its lease lapsed). ``state`` is the
    workflow's state as found, None if its row was not found."""

    def __init__(self, workflow_id: str, state: str | None) -> None:
        self.workflow_id = workflow_id
        self.state = state
        super().__init__(f"workflow {workflow_id!r} is no longer ours (state {state})")


class DedupConflict(ShardflowError):
    """An insert met a dedup key already held by an active workflow of the queue (the
    client reports it as :class:`WorkflowDeduplicated`)."""


__all__ = [
    "ClientClosed",
    "ConfigError",
    "DedupConflict",
    "EmbeddedServerError",
    "IdentityMismatch",
    "LeaseLost",
    "MigrationError",
    "NonDeterminismError",
    "PayloadTooLarge",
    "RebalanceError",
    "RoutingError",
    "SerializationError",
    "ShardUnavailable",
    "ShardflowError",
    "StoreError",
    "TransientStoreError",
    "UnknownWorkflow",
    "ValueRejected",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowDeduplicated",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "WrongEventLoop",
]
