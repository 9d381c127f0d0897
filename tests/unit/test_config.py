"""The cluster YAML loader: the values it builds and the errors it reports.

Every error names the YAML path and the 1-based line of the offending node, and no
error message ever contains a DSN password.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from shardflow.config import (
    ClusterConfig,
    HashConfig,
    LimitsConfig,
    PoolConfig,
    QueueConfig,
    RateLimit,
    ShardConfig,
    ShardState,
    WorkerConfig,
    load,
    parse,
)
from shardflow.errors import ConfigError

PASSWORD = "s3cret-pw"

FULL = """\
name: orders
hash: {slots: 1024, seed: 7}
shards:
  - name: s0
    dsn: postgresql://app:s3cret-pw@db0:5432/orders
    weight: 2
    pool: {min: 2, max: 20}
  - name: s1
    dsn_env: SHARD1_DSN
    state: draining
queues:
  emails:
    concurrency: 5
    worker_concurrency: 2
    rate_limit: {limit: 100, period_seconds: 1.5}
  reports:
worker:
  concurrency: 8
  lease_seconds: 60
  heartbeat_seconds: 15
  poll_interval_seconds: 0.25
  claim_batch: 16
  max_recoveries: 3
  processes: 4
limits:
  max_payload_bytes: 65536
"""


def _doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_full_config_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(FULL, encoding="utf-8")

    config = load(path, env={"SHARD1_DSN": "host=db1 dbname=orders"})

    assert config == ClusterConfig(
        name="orders",
        hash=HashConfig(slots=1024, seed=7),
        shards=(
            ShardConfig(
                name="s0",
                dsn="postgresql://app:s3cret-pw@db0:5432/orders",
                weight=2,
                pool=PoolConfig(min=2, max=20),
            ),
            ShardConfig(name="s1", dsn="host=db1 dbname=orders", state=ShardState.DRAINING),
        ),
        queues=MappingProxyType(
            {
                "emails": QueueConfig(
                    "emails",
                    concurrency=5,
                    worker_concurrency=2,
                    rate_limit=RateLimit(limit=100, period_seconds=1.5),
                ),
                "reports": QueueConfig("reports"),
                "default": QueueConfig("default"),
            }
        ),
        worker=WorkerConfig(
            concurrency=8,
            lease_seconds=60.0,
            heartbeat_seconds=15.0,
            poll_interval_seconds=0.25,
            claim_batch=16,
            max_recoveries=3,
            processes=4,
        ),
        limits=LimitsConfig(max_payload_bytes=65536),
        source=str(path),
    )
    assert config.shard_names == ("s0", "s1")
    assert isinstance(config.queues, MappingProxyType)
    assert isinstance(config.worker.lease_seconds, float)


def test_defaults() -> None:
    config = parse(
        _doc("""
            name: tiny
            shards:
              - {name: s0, dsn: "host=db0 dbname=app"}
        """),
        env={},
    )

    assert config.hash == HashConfig(slots=4096, seed=0)
    assert config.shards == (ShardConfig(name="s0", dsn="host=db0 dbname=app"),)
    assert config.shards[0].weight == 1
    assert config.shards[0].state is ShardState.ACTIVE
    assert config.shards[0].pool == PoolConfig(min=1, max=10)
    assert dict(config.queues) == {"default": QueueConfig("default")}
    assert isinstance(config.queues, MappingProxyType)
    assert config.worker == WorkerConfig()
    assert config.limits == LimitsConfig()
    assert config.source is None


def test_null_sections_and_queues_mean_defaults() -> None:
    config = parse(
        _doc("""
            name: tiny
            hash:
            shards:
              - name: s0
                dsn: postgres://db0/app
                pool:
            queues: {emails: , digests: {}, default: {concurrency: 3}}
            worker:
            limits:
        """),
        env={},
    )

    assert config.hash == HashConfig()
    assert config.shards[0].pool == PoolConfig()
    assert list(config.queues) == ["emails", "digests", "default"]
    assert config.queues["emails"] == QueueConfig("emails")
    assert config.queues["digests"] == QueueConfig("digests")
    assert config.queues["default"] == QueueConfig("default", concurrency=3)
    assert config.worker == WorkerConfig()
    assert config.limits == LimitsConfig()


def test_env_interpolation() -> None:
    text = _doc("""
        name: ${CLUSTER:-orders}
        shards:
          - name: s0
            dsn: postgresql://${DB_USER}:${DB_PASSWORD}@${DB_HOST:-localhost}:5432/app
            weight: ${S0_WEIGHT:-3}
          - name: s1
            dsn: "host=${EMPTY:-db1} password=a$${b}"
            weight: ${S1_WEIGHT}
        worker:
          lease_seconds: "${LEASE}"
    """)
    env = {"DB_USER": "app", "DB_PASSWORD": "pw", "EMPTY": "", "S1_WEIGHT": "5", "LEASE": "45.5"}

    config = parse(text, env=env)

    assert config.name == "orders"
    assert config.shards[0].dsn == "postgresql://app:pw@localhost:5432/app"
    assert config.shards[0].weight == 3
    # `:-` also replaces an empty value; `$${` is a literal `${`.
    assert config.shards[1].dsn == "host=db1 password=a${b}"
    assert config.shards[1].weight == 5
    assert config.worker.lease_seconds == 45.5

    overridden = parse(text, env={**env, "CLUSTER": "eu", "DB_HOST": "db0", "S0_WEIGHT": "7"})
    assert overridden.name == "eu"
    assert overridden.shards[0].dsn == "postgresql://app:pw@db0:5432/app"
    assert overridden.shards[0].weight == 7


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDFLOW_TEST_DSN", "host=from-environ")

    config = parse("name: c\nshards: [{name: s0, dsn_env: SHARDFLOW_TEST_DSN}]\n")

    assert config.shards[0].dsn == "host=from-environ"


def test_env_values_cannot_change_the_yaml_structure() -> None:
    injected = "x@h/db\n  - name: s9\n    dsn: host=evil\n"

    # Quoted, so that libpq accepts the newlines and spaces as part of the password.
    config = parse(
        "name: c\nshards:\n  - name: s0\n    dsn: host=h password='${PW}'\n", env={"PW": injected}
    )

    assert config.shard_names == ("s0",)
    assert config.shards[0].dsn == f"host=h password='{injected}'"


def test_anchors_and_merge_keys() -> None:
    config = parse(
        _doc("""
            name: c
            shards:
              - &base {name: s0, dsn: "host=db0", weight: 2, pool: {min: 0, max: 4}}
              - <<: *base
                name: s1
                dsn: "host=db1"
        """),
        env={},
    )

    assert config.shards[1] == ShardConfig(
        name="s1", dsn="host=db1", weight=2, pool=PoolConfig(min=0, max=4)
    )


def test_load_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cluster.yaml").write_text("name: c\nshards: [{name: s0, dsn: 'host=h'}]\n")
    monkeypatch.chdir(tmp_path)

    config = load("cluster.yaml", env={})

    assert config.source == "cluster.yaml"
    assert config.shard_names == ("s0",)


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=r"nope\.yaml") as caught:
        load(missing, env={})

    assert "cannot read config file" in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ConfigError, match="empty") as caught:
        parse(text, env={})

    assert caught.value.path == ""
    assert caught.value.line is None


def _bad(case_id: str, lines: list[str], path: str, line: int, message: str) -> object:
    """A malformed config; ``line`` counts from 1 in ``lines``."""
    return pytest.param("\n".join(lines) + "\n", path, line, message, id=case_id)


HEAD = ["name: c", "shards:", "  - name: s0", "    dsn: host=db0"]  # lines 1-4

MALFORMED = [
    # Wrong types and ranges.
    _bad("slots-string", ["name: c", "hash: {slots: abc}", *HEAD[1:]],
         "hash.slots", 2, "must be an integer, got string 'abc'"),
    _bad("slots-float", ["name: c", "hash:", "  slots: 4096.0", *HEAD[1:]],
         "hash.slots", 3, "must be an integer, got number 4096.0"),
    _bad("slots-not-power-of-two", ["name: c", "hash: {slots: 1000}", *HEAD[1:]],
         "hash.slots", 2, "must be a power of two, got 1000"),
    _bad("slots-too-small", ["name: c", "hash: {slots: 32}", *HEAD[1:]],
         "hash.slots", 2, "must be between 64 and 65536, got 32"),
    _bad("slots-too-large", ["name: c", "hash: {slots: 131072}", *HEAD[1:]],
         "hash.slots", 2, "must be between 64 and 65536, got 131072"),
    _bad("seed-negative", ["name: c", "hash: {seed: -1}", *HEAD[1:]],
         "hash.seed", 2, "must be between 0 and 4294967295, got -1"),
    _bad("shards-mapping", ["name: c", "shards: {name: s0, dsn: host=a}"],
         "shards", 2, "must be a list of shards, got a mapping"),
    _bad("shard-is-list", ["name: c", "shards:", "  - [s0, host=a]"],
         "shards[0]", 3, "must be a mapping, got a list"),
    _bad("weight-bool", [*HEAD, "    weight: true"],
         "shards[0].weight", 5, "must be an integer, got boolean true"),
    _bad("weight-zero", [*HEAD, "    weight: 0"],
         "shards[0].weight", 5, "must be > 0, got 0"),
    _bad("weight-from-env-not-a-number", [*HEAD, "    weight: ${W}"],
         "shards[0].weight", 5, "must be an integer, got string '${W}'"),
    _bad("pool-negative", [*HEAD, "    pool: {min: -1}"],
         "shards[0].pool.min", 5, "must be >= 0, got -1"),
    _bad("pool-min-over-max", [*HEAD, "    pool:", "      min: 6", "      max: 5"],
         "shards[0].pool.min", 6, "must be <= max (5), got 6"),
    _bad("bad-state", [*HEAD, "    state: paused"],
         "shards[0].state", 5, "must be one of active, draining, got 'paused'"),
    _bad("python-tag", ["name: !!python/object/apply:os.system [echo]", *HEAD[1:]],
         "name", 1, "must be a string, got a value tagged 'tag:yaml.org,2002:python/object"),
    # Names and duplicates.
    _bad("bad-cluster-name", ["name: orders/eu", *HEAD[1:]],
         "name", 1, "invalid cluster name 'orders/eu'"),
    _bad("bad-shard-name", ["name: c", "shards:", "  - name: s.0", "    dsn: host=a"],
         "shards[0].name", 3, "invalid shard name 's.0'"),
    _bad("duplicate-shard-name", [*HEAD, "  - name: s0", "    dsn: host=db1"],
         "shards[1].name", 5, "duplicate shard name 's0' (also shards[0])"),
    _bad("duplicate-dsn", [*HEAD, "  - name: s1", "    dsn: host=db0"],
         "shards[1].dsn", 6, "same DSN as shard 's0'"),
    _bad("duplicate-mapping-key", [*HEAD, "    weight: 1", "    weight: 2"],
         "shards[0].weight", 6, "duplicate key; first set on line 5"),
    _bad("duplicate-top-level-key", [*HEAD, "name: d"],
         "name", 5, "duplicate key; first set on line 1"),
    # Unknown and missing keys.
    _bad("unknown-key-hint", [*HEAD, "    wieght: 2"],
         "shards[0].wieght", 5, "unknown key; did you mean 'weight'?"),
    _bad("unknown-key-list", [*HEAD, "colour: blue"],
         "colour", 5, "unknown key; expected one of name, hash, shards, queues"),
    _bad("unknown-queue-key", [*HEAD, "queues:", "  emails: {concurrancy: 2}"],
         "queues.emails.concurrancy", 6, "did you mean 'concurrency'?"),
    _bad("missing-shards", ["name: c", "queues: {}"],
         "shards", 1, "missing required key"),
    _bad("missing-name", HEAD[1:],
         "name", 1, "missing required key"),
    _bad("empty-shard-list", ["name: c", "shards: []"],
         "shards", 2, "must list at least one shard"),
    # DSNs and the environment.
    _bad("missing-env-var", ["name: c", "hash: {}", "shards:", "  - name: s0",
                             "    dsn: postgresql://u:${SHARD0_PASSWORD}@h/db"],
         "shards[0].dsn", 5, "environment variable SHARD0_PASSWORD is not set"),
    _bad("missing-dsn-env-var", ["name: c", "shards:", "  - name: s0", "    dsn_env: S0_DSN"],
         "shards[0].dsn_env", 4, "environment variable S0_DSN is not set"),
    _bad("malformed-reference", ["name: c", "shards:", "  - name: s0", "    dsn: host=${H"],
         "shards[0].dsn", 4, "malformed ${...} reference"),
    _bad("dsn-and-dsn-env", [*HEAD, "    dsn_env: S0_DSN"],
         "shards[0].dsn_env", 5, "set either dsn or dsn_env, not both"),
    _bad("neither-dsn", ["name: c", "shards:", "  - name: s0", "    weight: 2"],
         "shards[0]", 3, "needs a dsn or a dsn_env key"),
    _bad("empty-dsn", ["name: c", "shards:", "  - name: s0", "    dsn: ''"],
         "shards[0].dsn", 4, "DSN is empty"),
    _bad("dsn-not-conninfo", ["name: c", "shards:", "  - name: s0", "    dsn: db0.example.com"],
         "shards[0].dsn", 4, "DSN is not a valid key=value connection string"),
    # Worker, limits and queues.
    _bad("heartbeat-not-below-lease",
         [*HEAD, "worker:", "  lease_seconds: 10", "  heartbeat_seconds: 10"],
         "worker.heartbeat_seconds", 7, "must be less than lease_seconds (10)"),
    _bad("lease-below-default-heartbeat", [*HEAD, "worker: {lease_seconds: 5}"],
         "worker.lease_seconds", 5, "must be greater than heartbeat_seconds (10)"),
    _bad("lease-infinite", [*HEAD, "worker: {lease_seconds: .inf}"],
         "worker.lease_seconds", 5, "must be a finite number"),
    _bad("claim-batch-float", [*HEAD, "worker:", "  claim_batch: 1.5"],
         "worker.claim_batch", 6, "must be an integer, got number 1.5"),
    _bad("max-recoveries-zero", [*HEAD, "worker:", "  max_recoveries: 0"],
         "worker.max_recoveries", 6, "must be > 0, got 0"),
    _bad("processes-zero", [*HEAD, "worker:", "  processes: 0"],
         "worker.processes", 6, "must be > 0, got 0"),
    _bad("processes-negative", [*HEAD, "worker: {processes: -2}"],
         "worker.processes", 5, "must be > 0, got -2"),
    _bad("processes-not-int", [*HEAD, "worker:", "  processes: two"],
         "worker.processes", 6, "must be an integer, got string 'two'"),
    _bad("payload-limit-string", [*HEAD, "limits:", "  max_payload_bytes: 1MB"],
         "limits.max_payload_bytes", 6, "must be an integer, got string '1MB'"),
    _bad("bad-queue-name", [*HEAD, "queues:", "  emails: {}", "  bad name!: {}"],
         "queues", 7, "invalid queue name 'bad name!'"),
    _bad("queue-concurrency-zero", [*HEAD, "queues:", "  emails: {concurrency: 0}"],
         "queues.emails.concurrency", 6, "must be > 0, got 0"),
    _bad("rate-limit-period-zero",
         [*HEAD, "queues:", "  emails:", "    rate_limit: {limit: 5, period_seconds: 0}"],
         "queues.emails.rate_limit.period_seconds", 7, "must be > 0, got 0"),
    _bad("rate-limit-missing-limit",
         [*HEAD, "queues:", "  emails:", "    rate_limit:", "      period_seconds: 1"],
         "queues.emails.rate_limit.limit", 8, "missing required key"),
    # A schedule's queue must be declared: submit refuses an undeclared one.
    _bad("schedule-queue-undeclared",
         [*HEAD, "queues: {emails: {}}", "schedules:", "  nightly:",
          "    workflow: w", "    cron: '0 3 * * *'", "    queue: reports"],
         "schedules.nightly.queue", 10,
         "must be declared under queues: (known: default, emails)"),
    _bad("weight-zero", [*HEAD, "    weight: 0"],
         "shards[0].weight", 5, "must be > 0, got 0"),
    # Not a usable document.
    _bad("bad-yaml", ["name: c", "shards:", "  - name: s0", "    dsn: [host=a"],
         "", 5, "invalid YAML"),
    _bad("two-documents", ["name: c", "---", "name: d"],
         "", 2, "expected a single document in the stream"),
    _bad("top-level-list", ["- name: c", "- shards: []"],
         "", 1, "expected a mapping at the top level, got a list"),
    _bad("top-level-scalar", ["just text"],
         "", 1, "expected a mapping at the top level, got string 'just text'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "path", "line", "message"), MALFORMED)
def test_malformed_config(text: str, path: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, env={"W": "abc"})

    error = caught.value
    assert (error.path, error.line) == (path, line), str(error)
    assert message in error.detail
    prefix = f"{path}: " if path else ""
    assert str(error) == f"{prefix}{error.detail} (line {line})"


def test_error_in_merged_mapping_points_at_its_source() -> None:
    text = _doc("""
        name: c
        shards:
          - name: s0
            dsn: host=db0
            pool: &pool {min: 1, max: 4}
          - <<: *pool
            name: s1
            dsn: host=db1
    """)

    with pytest.raises(ConfigError) as caught:
        parse(text, env={})

    assert (caught.value.path, caught.value.line) == ("shards[1].min", 5)
    assert caught.value.detail.startswith("unknown key; expected one of name, dsn")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        pytest.param(
            f"name: c\nshards:\n  - {{name: s0, dsn: 'postgresql://u:{PASSWORD}@h/db'}}\n"
            f"  - {{name: s1, dsn: 'postgresql://u:{PASSWORD}@h/db'}}\n",
            {},
            "same DSN as shard 's0'",
            id="duplicate-dsn",
        ),
        pytest.param(
            "name: c\nshards:\n  - {name: s0, dsn: 'postgresql://u:${PW}@h/db'}\n"
            "  - {name: s1, dsn_env: S1_DSN}\n",
            {"PW": PASSWORD, "S1_DSN": f"postgresql://u:{PASSWORD}@h/db"},
            "same DSN as shard 's0'",
            id="duplicate-dsn-via-env",
        ),
        pytest.param(
            f"name: c\nshards:\n  - {{name: s0, dsn: 'mysql://u:{PASSWORD}@h/db'}}\n",
            {},
            "DSN must start with postgresql://",
            id="wrong-scheme",
        ),
        pytest.param(
            f"name: c\nshards:\n  - {{name: s0, dsn: 'host=h password={PASSWORD} oops'}}\n",
            {},
            "DSN is not a valid key=value connection string",
            id="bad-conninfo",
        ),
        pytest.param(
            "name: c\nshards:\n  - {name: s0, dsn_env: S0_DSN}\n",
            {"S0_DSN": f"mysql://u:{PASSWORD}@h/db"},
            "the DSN in S0_DSN must start with postgresql://",
            id="bad-dsn-in-env",
        ),
        pytest.param(
            f"name: c\nshards:\n  - name: s0\n    dsn: {{password: {PASSWORD}}}\n",
            {},
            "must be a string, got a mapping",
            id="dsn-not-a-string",
        ),
        pytest.param(
            f'name: c\nshards:\n  - name: s0\n    dsn: "postgresql://u:{PASSWORD}@h/db\n',
            {},
            "invalid YAML",
            id="yaml-syntax-error",
        ),
    ],
)
def test_errors_never_show_a_dsn_password(text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, env=env)

    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None or PASSWORD not in str(caught.value.__cause__)
