"""The validated, frozen cluster configuration.

These are plain values: building them does no I/O. ``shardflow.config.load`` reads a YAML
file and returns a :class:`ClusterConfig`; every check lives in the loader so that errors
can name the YAML path and line.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Re-exported: redact_dsn was defined here first.
from shardflow.config.redaction import redact_dsn as redact_dsn

DEFAULT_SLOTS = 4096
DEFAULT_SEED = 0
DEFAULT_QUEUE = "default"


class ShardState(str, enum.Enum):
    """Desired state of a shard in the YAML: ``active`` takes slots, ``draining`` gives
    all of its slots away at the next rebalance."""

    ACTIVE = "active"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class HashConfig:
    """How workflow IDs map to slots. Fixed when the cluster is created."""

    slots: int = DEFAULT_SLOTS
    seed: int = DEFAULT_SEED


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Connection pool size per shard, per process."""

    min: int = 1
    max: int = 10


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """One PostgreSQL server holding a share of the slots."""

    name: str
    dsn: str = field(repr=False)
    weight: int = 1
    state: ShardState = ShardState.ACTIVE
    pool: PoolConfig = PoolConfig()

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    def __repr__(self) -> str:
        return (
            f"ShardConfig(name={self.name!r}, dsn={self.redacted_dsn!r}, weight={self.weight},"
            f" state={self.state.value!r})"
        )


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` workflow starts per ``period_seconds``, per shard share."""

    limit: int
    period_seconds: float


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A named queue.

    ``concurrency`` is the queue's global limit of RUNNING workflows, split across shards
    by weight; ``worker_concurrency`` is exact, per worker process; ``key_concurrency``
    caps the RUNNING workflows of each partition key on each shard, and makes claims
    round-robin across keys (docs/queues.md#flow-control).
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    key_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A cron schedule declared in the YAML: start ``workflow`` once per tick."""

    name: str
    workflow: str
    cron: str
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Defaults for worker processes; CLI flags override some of them."""

    concurrency: int = 32
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_interval_seconds: float = 0.5
    claim_batch: int = 32
    max_recoveries: int = 10
    # Worker processes ``shardflow worker`` runs under one supervisor; None: one per CPU.
    processes: int | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_payload_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Deleting finished workflows (SUCCESS, ERROR, CANCELLED, DEAD) once they are older
    than ``keep_finished_days``, by one leader per shard, ``batch_size`` rows at a time."""

    keep_finished_days: float
    batch_size: int = 500
    interval_seconds: float = 60.0
    batch_pause_seconds: float = 0.1

    @property
    def keep_finished_seconds(self) -> float:
        return self.keep_finished_days * 86_400.0


class BlobStoreKind(str, enum.Enum):
    """Where payloads above the inline threshold go."""

    FILESYSTEM = "filesystem"
    S3 = "s3"


@dataclass(frozen=True, slots=True)
class BlobStoreConfig:
    """A blob store for large payloads: a directory every process shares, or an
    S3-compatible bucket (credentials come from the usual AWS variables, never the YAML)."""

    kind: BlobStoreKind
    path: str | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class PayloadsConfig:
    """Claim checks: a serialized value longer than ``inline_max_bytes`` is written to
    ``blob_store`` and the row keeps a reference. Without a blob store, all inline."""

    inline_max_bytes: int = 65_536
    blob_store: BlobStoreConfig | None = None


def _default_queues() -> Mapping[str, QueueConfig]:
    return MappingProxyType({DEFAULT_QUEUE: QueueConfig(DEFAULT_QUEUE)})


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole desired topology: shards, weights, queues, limits."""

    name: str
    shards: tuple[ShardConfig, ...]
    hash: HashConfig = HashConfig()
    queues: Mapping[str, QueueConfig] = field(default_factory=_default_queues)
    worker: WorkerConfig = WorkerConfig()
    limits: LimitsConfig = LimitsConfig()
    schedules: tuple[ScheduleConfig, ...] = ()
    retention: RetentionConfig | None = None
    payloads: PayloadsConfig = PayloadsConfig()
    source: str | None = None

    def shard(self, name: str) -> ShardConfig:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)

    @property
    def shard_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.shards)
