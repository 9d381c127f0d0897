"""Cluster configuration: YAML in, frozen validated :class:`ClusterConfig` out."""

from __future__ import annotations

from shardflow.config.loader import load, parse
from shardflow.config.model import (
    DEFAULT_QUEUE,
    BlobStoreConfig,
    BlobStoreKind,
    ClusterConfig,
    HashConfig,
    LimitsConfig,
    PayloadsConfig,
    PoolConfig,
    QueueConfig,
    RateLimit,
    RetentionConfig,
    ScheduleConfig,
    ShardConfig,
    ShardState,
    WorkerConfig,
)
from shardflow.config.redaction import redact_dsn, scrub_dsns

__all__ = [
    "DEFAULT_QUEUE",
    "BlobStoreConfig",
    "BlobStoreKind",
    "ClusterConfig",
    "HashConfig",
    "LimitsConfig",
    "PayloadsConfig",
    "PoolConfig",
    "QueueConfig",
    "RateLimit",
    "RetentionConfig",
    "ScheduleConfig",
    "ShardConfig",
    "ShardState",
    "WorkerConfig",
    "load",
    "parse",
    "redact_dsn",
    "scrub_dsns",
]
