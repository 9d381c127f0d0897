"""The keys each section of the cluster YAML accepts (the loader refuses, and suggests a
spelling for, any other)."""

from __future__ import annotations

TOP = (
    "name",
    "hash",
    "shards",
    "queues",
    "worker",
    "limits",
    "schedules",
    "retention",
    "payloads",
)
SCHEDULE = ("workflow", "cron", "queue")
HASH = ("slots", "seed")
SHARD = ("name", "dsn", "dsn_env", "weight", "state", "pool")
POOL = ("min", "max")
QUEUE = (
    "concurrency",
    "worker_concurrency",
    "rate_limit",
    "key_concurrency",
    "key_rate_limit",
)
RATE_LIMIT = ("limit", "period_seconds")
WORKER = (
    "concurrency",
    "lease_seconds",
    "heartbeat_seconds",
    "poll_interval_seconds",
    "claim_batch",
    "max_recoveries",
    "processes",
    "app_version",
)
LIMITS = ("max_payload_bytes",)
RETENTION = ("keep_finished_days", "batch_size", "interval_seconds", "batch_pause_seconds")
PAYLOADS = ("inline_max_bytes", "blob_store")
FILESYSTEM = ("path",)
S3 = ("bucket", "prefix", "endpoint_url", "region")
BLOB_STORE = ("kind", *FILESYSTEM, *S3)
