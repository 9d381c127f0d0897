"""Read the cluster YAML into a validated :class:`ClusterConfig`.

The text is *composed* into YAML nodes, never constructed into Python objects wholesale: a
small walker converts each node it expects, so every error names the YAML path and line of
the offending value (``shards[1].weight: must be > 0 (line 9)``), and no tag can run code.
Only plain scalars are built (strings, integers, numbers); other tags are refused.

String values may use the environment: ``${VAR}``, or ``${VAR:-default}`` when ``VAR`` is
unset or empty; ``$${`` is a literal ``${``. Substitution happens after parsing, so a
variable cannot change the YAML structure. In number fields the substituted text is read
as a YAML number, so ``weight: ${SHARD0_WEIGHT:-1}`` works.

DSNs are secrets: no error message quotes one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from shardflow.config.cron import cron_problem
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
from shardflow.config.nodes import (
    MAP,
    MAX_MAPPING_WORK,
    NULL,
    SEQ,
    Fields,
    NameRule,
    NodeReader,
    describe,
    expect,
    node_error,
    shorten,
)
from shardflow.config.redaction import dsn_problem
from shardflow.errors import ConfigError

__all__ = ["MAX_MAPPING_WORK", "load", "parse"]

_TOP_KEYS = (
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
_SCHEDULE_KEYS = ("workflow", "cron", "queue")
_HASH_KEYS = ("slots", "seed")
_SHARD_KEYS = ("name", "dsn", "dsn_env", "weight", "state", "pool")
_POOL_KEYS = ("min", "max")
_QUEUE_KEYS = ("concurrency", "worker_concurrency", "rate_limit", "key_concurrency")
_RATE_LIMIT_KEYS = ("limit", "period_seconds")
_WORKER_KEYS = (
    *("concurrency", "lease_seconds", "heartbeat_seconds", "poll_interval_seconds"),
    *("claim_batch", "max_recoveries", "processes"),
)
_LIMITS_KEYS = ("max_payload_bytes",)
_RETENTION_KEYS = ("keep_finished_days", "batch_size", "interval_seconds", "batch_pause_seconds")
_PAYLOADS_KEYS = ("inline_max_bytes", "blob_store")
_FILESYSTEM_KEYS = ("path",)
_S3_KEYS = ("bucket", "prefix", "endpoint_url", "region")
_BLOB_STORE_KEYS = ("kind", *_FILESYSTEM_KEYS, *_S3_KEYS)

# Slotted dataclasses keep no class-level defaults, so read them from instances.
_POOL_DEFAULTS = PoolConfig()
_HASH_DEFAULTS = HashConfig()
_WORKER_DEFAULTS = WorkerConfig()
_LIMITS_DEFAULTS = LimitsConfig()
_RETENTION_DEFAULTS = RetentionConfig(keep_finished_days=7)
_PAYLOADS_DEFAULTS = PayloadsConfig()


_CLUSTER_NAME = NameRule(
    "cluster name", re.compile(r"[A-Za-z0-9_.-]{1,63}"), "1-63 characters from A-Z a-z 0-9 _ . -"
)
_SHARD_NAME = NameRule(
    "shard name", re.compile(r"[A-Za-z0-9_-]{1,63}"), "1-63 characters from A-Z a-z 0-9 _ -"
)
_QUEUE_NAME = NameRule(
    "queue name", re.compile(r"[A-Za-z0-9_.:-]{1,100}"), "1-100 characters from A-Z a-z 0-9 _ . : -"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read and validate the cluster YAML file at ``path``.

    ``env`` (default: ``os.environ``) supplies ``${VAR}`` references and ``dsn_env``
    variables. Raises :class:`ConfigError` if the file cannot be read or is invalid.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {source!r} is not UTF-8 text") from exc
    return parse(text, source=source, env=env)


def parse(
    text: str, *, source: str | None = None, env: Mapping[str, str] | None = None
) -> ClusterConfig:
    """Validate cluster YAML ``text``; ``source`` names its file in the result.

    Raises :class:`ConfigError` carrying the YAML path and line of the first problem.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # Not `from exc`: the YAML error's text quotes the offending line, maybe a DSN.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"invalid YAML: {what}", line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    return _Walker(os.environ if env is None else env).cluster(root, source)


class _Walker(NodeReader):
    """Converts the composed YAML tree into the model, checking every node on the way."""

    def cluster(self, root: Node | None, source: str | None) -> ClusterConfig:
        if root is None or root.tag == NULL:
            raise ConfigError("the file is empty; expected a mapping with 'name' and 'shards'")
        if not isinstance(root, MappingNode) or root.tag != MAP:
            raise node_error(root, "", f"expected a mapping at the top level, got {describe(root)}")
        top = self._mapping(root, "", _TOP_KEYS)
        limits = self._limits(top.get("limits"))
        name = self._name(top.require("name"), "name", _CLUSTER_NAME)
        hash_config = self._hash(top.get("hash"))
        shards = self._shards(top.require("shards"))
        queues = self._queues(top.get("queues"))
        return ClusterConfig(
            name=name,
            hash=hash_config,
            shards=shards,
            queues=queues,
            worker=self._worker(top.get("worker")),
            limits=limits,
            schedules=self._schedules(top.get("schedules"), queues),
            retention=self._retention(top.get("retention")),
            payloads=self._payloads(top.get("payloads"), limits),
            source=source,
        )

    # -- sections -------------------------------------------------------------------------

    def _hash(self, node: Node | None) -> HashConfig:
        fields = self._section(node, "hash", _HASH_KEYS)
        slots = self._int_field(fields, "slots", _HASH_DEFAULTS.slots, minimum=64, maximum=65536)
        if slots & (slots - 1):
            raise fields.error("slots", f"must be a power of two, got {slots}")
        seed = self._int_field(fields, "seed", _HASH_DEFAULTS.seed, minimum=0, maximum=2**32 - 1)
        return HashConfig(slots=slots, seed=seed)

    def _shards(self, node: Node) -> tuple[ShardConfig, ...]:
        shards = expect(node, "shards", SequenceNode, (SEQ,), "a list of shards")
        if not shards.value:
            raise node_error(node, "shards", "must list at least one shard")
        names: dict[str, str] = {}  # shard name -> path of the shard that has it
        dsns: dict[str, str] = {}  # DSN -> name of the shard that uses it
        return tuple(
            self._shard(item, f"shards[{index}]", names, dsns)
            for index, item in enumerate(shards.value)
        )

    def _shard(
        self, node: Node, path: str, names: dict[str, str], dsns: dict[str, str]
    ) -> ShardConfig:
        fields = self._mapping(node, path, _SHARD_KEYS)
        name = self._name(fields.require("name"), fields.path_of("name"), _SHARD_NAME)
        if name in names:
            raise fields.error("name", f"duplicate shard name {name!r} (also {names[name]})")
        names[name] = path
        dsn_key, dsn = self._dsn(fields)
        if dsn in dsns:
            raise fields.error(dsn_key, f"same DSN as shard {dsns[dsn]!r}")
        dsns[dsn] = name
        return ShardConfig(
            name=name,
            dsn=dsn,
            weight=self._int_field(fields, "weight", 1),
            state=self._state(fields),
            pool=self._pool(fields.get("pool"), fields.path_of("pool")),
        )

    def _dsn(self, fields: Fields) -> tuple[str, str]:
        """The shard's DSN and the key it came from (``dsn`` or ``dsn_env``)."""
        has_dsn, has_env = "dsn" in fields.entries, "dsn_env" in fields.entries
        if has_dsn and has_env:
            raise fields.error("dsn_env", "set either dsn or dsn_env, not both")
        if has_dsn:
            dsn = self._str(fields.entries["dsn"], fields.path_of("dsn"), secret=True)
            if problem := dsn_problem(dsn):
                raise fields.error("dsn", f"DSN {problem}")
            return "dsn", dsn
        if has_env:
            variable = self._str(fields.entries["dsn_env"], fields.path_of("dsn_env"))
            if not _ENV_NAME.fullmatch(variable):
                message = f"must be an environment variable name, got {shorten(variable)!r}"
                raise fields.error("dsn_env", message)
            value = self._env.get(variable)
            if value is None:
                raise fields.error("dsn_env", f"environment variable {variable} is not set")
            if problem := dsn_problem(value):
                raise fields.error("dsn_env", f"the DSN in {variable} {problem}")
            return "dsn_env", value
        raise ConfigError("needs a dsn or a dsn_env key", path=fields.path, line=fields.line)

    def _state(self, fields: Fields) -> ShardState:
        node = fields.get("state")
        if node is None:
            return ShardState.ACTIVE
        text = self._str(node, fields.path_of("state"))
        try:
            return ShardState(text)
        except ValueError:
            allowed = ", ".join(state.value for state in ShardState)
            message = f"must be one of {allowed}, got {shorten(text)!r}"
            raise fields.error("state", message) from None

    def _pool(self, node: Node | None, path: str) -> PoolConfig:
        fields = self._section(node, path, _POOL_KEYS)
        low = self._int_field(fields, "min", _POOL_DEFAULTS.min, minimum=0)
        high = self._int_field(fields, "max", _POOL_DEFAULTS.max)
        if low > high:  # max >= 1 = the default min, so min was given
            raise fields.error("min", f"must be <= max ({high}), got {low}")
        return PoolConfig(min=low, max=high)

    def _queues(self, node: Node | None) -> Mapping[str, QueueConfig]:
        fields = self._section(node, "queues", _QUEUE_NAME)
        queues = {
            name: self._queue(name, fields.get(name), fields.path_of(name))
            for name in fields.entries
        }
        queues.setdefault(DEFAULT_QUEUE, QueueConfig(DEFAULT_QUEUE))
        return MappingProxyType(queues)

    def _queue(self, name: str, node: Node | None, path: str) -> QueueConfig:
        fields = self._section(node, path, _QUEUE_KEYS)
        return QueueConfig(
            name=name,
            concurrency=self._int_field(fields, "concurrency", None),
            worker_concurrency=self._int_field(fields, "worker_concurrency", None),
            rate_limit=self._rate_limit(fields.get("rate_limit"), fields.path_of("rate_limit")),
            key_concurrency=self._int_field(fields, "key_concurrency", None),
        )

    def _rate_limit(self, node: Node | None, path: str) -> RateLimit | None:
        if node is None:
            return None
        fields = self._mapping(node, path, _RATE_LIMIT_KEYS)
        return RateLimit(
            limit=self._int(fields.require("limit"), fields.path_of("limit")),
            period_seconds=self._number(
                fields.require("period_seconds"), fields.path_of("period_seconds")
            ),
        )

    def _schedules(
        self, node: Node | None, queues: Mapping[str, QueueConfig]
    ) -> tuple[ScheduleConfig, ...]:
        fields = self._section(node, "schedules", _QUEUE_NAME)
        out = []
        for name in fields.entries:
            path = fields.path_of(name)
            entry = fields.get(name)
            if entry is None:
                raise fields.error(name, "must be a mapping with 'workflow' and 'cron'")
            item = self._mapping(entry, path, _SCHEDULE_KEYS)
            cron = self._str(item.require("cron"), item.path_of("cron"))
            problem = cron_problem(cron)
            if problem:
                raise item.error("cron", problem)
            queue_node = item.get("queue")
            queue = None if queue_node is None else self._str(queue_node, item.path_of("queue"))
            if queue is not None and queue not in queues:
                # Submit refuses an undeclared queue: every tick would fail at run time.
                known = ", ".join(sorted(queues))
                raise item.error("queue", f"must be declared under queues: (known: {known})")
            out.append(
                ScheduleConfig(
                    name=name,
                    workflow=self._str(item.require("workflow"), item.path_of("workflow")),
                    cron=cron,
                    queue=queue,
                )
            )
        return tuple(out)

    def _worker(self, node: Node | None) -> WorkerConfig:
        fields = self._section(node, "worker", _WORKER_KEYS)
        defaults = _WORKER_DEFAULTS
        worker = WorkerConfig(
            concurrency=self._int_field(fields, "concurrency", defaults.concurrency),
            lease_seconds=self._number_field(fields, "lease_seconds", defaults.lease_seconds),
            heartbeat_seconds=self._number_field(
                fields, "heartbeat_seconds", defaults.heartbeat_seconds
            ),
            poll_interval_seconds=self._number_field(
                fields, "poll_interval_seconds", defaults.poll_interval_seconds
            ),
            claim_batch=self._int_field(fields, "claim_batch", defaults.claim_batch),
            max_recoveries=self._int_field(fields, "max_recoveries", defaults.max_recoveries),
            processes=self._int_field(fields, "processes", defaults.processes),
        )
        # A lease must outlive a heartbeat, or leases lapse between renewals.
        if worker.heartbeat_seconds >= worker.lease_seconds:
            if fields.get("heartbeat_seconds") is not None:
                message = f"must be less than lease_seconds ({worker.lease_seconds:g})"
                raise fields.error("heartbeat_seconds", message)
            message = f"must be greater than heartbeat_seconds ({worker.heartbeat_seconds:g})"
            raise fields.error("lease_seconds", message)
        return worker

    def _limits(self, node: Node | None) -> LimitsConfig:
        fields = self._section(node, "limits", _LIMITS_KEYS)
        default = _LIMITS_DEFAULTS.max_payload_bytes
        return LimitsConfig(max_payload_bytes=self._int_field(fields, "max_payload_bytes", default))

    def _retention(self, node: Node | None) -> RetentionConfig | None:
        """Absent or null: finished workflows are kept for ever."""
        if node is None or node.tag == NULL:
            return None
        fields = self._mapping(node, "retention", _RETENTION_KEYS)
        defaults = _RETENTION_DEFAULTS
        keep = fields.require("keep_finished_days")
        return RetentionConfig(
            keep_finished_days=self._number(keep, fields.path_of("keep_finished_days")),
            batch_size=self._int_field(fields, "batch_size", defaults.batch_size, maximum=100_000),
            interval_seconds=self._number_field(
                fields, "interval_seconds", defaults.interval_seconds
            ),
            batch_pause_seconds=self._number_field(
                fields, "batch_pause_seconds", defaults.batch_pause_seconds
            ),
        )

    def _payloads(self, node: Node | None, limits: LimitsConfig) -> PayloadsConfig:
        fields = self._section(node, "payloads", _PAYLOADS_KEYS)
        inline = self._int_field(fields, "inline_max_bytes", _PAYLOADS_DEFAULTS.inline_max_bytes)
        store_node = fields.get("blob_store")
        store = None
        if store_node is not None:
            store = self._blob_store(store_node, fields.path_of("blob_store"))
            # Offloading starts above the inline size; the payload limit applies first.
            if inline > limits.max_payload_bytes and "inline_max_bytes" in fields.entries:
                message = f"must be <= limits.max_payload_bytes ({limits.max_payload_bytes})"
                raise fields.error("inline_max_bytes", message)
        return PayloadsConfig(
            inline_max_bytes=min(inline, limits.max_payload_bytes) if store else inline,
            blob_store=store,
        )

    def _blob_store(self, node: Node, path: str) -> BlobStoreConfig:
        fields = self._mapping(node, path, _BLOB_STORE_KEYS)
        text = self._str(fields.require("kind"), fields.path_of("kind"))
        try:
            kind = BlobStoreKind(text)
        except ValueError:
            allowed = ", ".join(k.value for k in BlobStoreKind)
            message = f"must be one of {allowed}, got {shorten(text)!r}"
            raise fields.error("kind", message) from None
        own = _FILESYSTEM_KEYS if kind is BlobStoreKind.FILESYSTEM else _S3_KEYS
        for key in fields.entries:
            if key != "kind" and key not in own:
                raise fields.error(key, f"not a setting of blob stores of kind {kind.value}")

        def text_of(key: str) -> str | None:
            found = fields.get(key)
            return None if found is None else self._str(found, fields.path_of(key))

        if kind is BlobStoreKind.FILESYSTEM:
            directory = self._str(fields.require("path"), fields.path_of("path"))
            if not directory.strip():
                raise fields.error("path", "must be a directory path")
            return BlobStoreConfig(kind, path=directory)
        bucket = self._str(fields.require("bucket"), fields.path_of("bucket"))
        if not bucket.strip():
            raise fields.error("bucket", "must be a bucket name")
        return BlobStoreConfig(
            kind,
            bucket=bucket,
            prefix=text_of("prefix") or "",
            endpoint_url=text_of("endpoint_url"),
            region=text_of("region"),
        )
