"""Servers and per-test databases for tests (see the package docstring)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml
from psycopg import sql

from shardflow.config import ClusterConfig, parse
from shardflow.retry import Backoff
from shardflow.sql.migrator import migrate_cluster

FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}

_counter = itertools.count()


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at database ``dbname`` (URL or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    return f"{dsn} dbname={dbname}"


@contextmanager
def start_servers(count: int = 3) -> Iterator[list[str]]:
    """Admin DSNs of ``count`` PostgreSQL servers for a test session."""
    env = os.environ.get("SHARDFLOW_TEST_DSNS", "").strip()
    if env:
        dsns = [d.strip() for d in env.split(",") if d.strip()]
        if len(dsns) < count:
            dsns = [dsns[i % len(dsns)] for i in range(count)]
        yield dsns[:count]
        return
    if os.environ.get("SHARDFLOW_TEST_DOCKER") == "1" and _docker_answers():
        with _containers(count) as dsns:
            yield dsns
        return
    from shardflow.local import LocalCluster

    local = LocalCluster(Path(tempfile.mkdtemp(prefix="shardflow-test-")))
    try:
        local.up(count, name="test", settings=FAST_SETTINGS, migrate=False)
        yield local.admin_dsns()
    finally:
        local.destroy()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def _containers(count: int) -> Iterator[list[str]]:
    from testcontainers.postgres import PostgresContainer

    containers = [PostgresContainer("postgres:15", driver=None) for _ in range(count)]
    try:
        for c in containers:
            c.start()
        yield [c.get_connection_url() for c in containers]
    finally:
        for c in containers:
            c.stop()


@dataclass
class TestCluster:
    """A fresh cluster for one test: its config and the YAML file written for it."""

    __test__ = False  # not a pytest test class

    config: ClusterConfig
    path: Path
    databases: list[tuple[str, str]]  # (admin dsn, dbname)


def cluster_yaml(
    name: str,
    shard_dsns: Sequence[str],
    *,
    slots: int = 4096,
    weights: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    doc: dict[str, Any] = {
        "name": name,
        "hash": {"slots": slots, "seed": 0},
        "shards": [
            {"name": f"shard{i}", "dsn": dsn, "weight": (weights[i] if weights else 1)}
            for i, dsn in enumerate(shard_dsns)
        ],
    }
    doc.update(extra or {})
    return yaml.safe_dump(doc, sort_keys=False)


# Short enough that crash tests recover quickly, long enough that a heartbeat starved
# on a loaded 2-core machine does not expire a live worker's lease.
TEST_WORKER = {
    "lease_seconds": 5,
    "heartbeat_seconds": 0.5,
    "poll_interval_seconds": 0.05,
    "concurrency": 16,
    "claim_batch": 16,
    "max_recoveries": 5,
    "processes": 1,  # one process per `shardflow worker`, as tests count them
}


class ClusterFactory:
    """Makes fresh clusters on the session's servers, cloning migrated templates."""

    def __init__(self, admin_dsns: Sequence[str], workdir: Path) -> None:
        self.admin_dsns = list(admin_dsns)
        self.workdir = workdir
        self._templates: dict[tuple[int, int], list[str]] = {}
        self._created: list[tuple[str, str]] = []

    def _execute(self, admin_dsn: str, statement: sql.Composed) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(statement)

    def _template(self, shards: int, slots: int) -> list[str]:
        key = (shards, slots)
        if key not in self._templates:
            names = [f"sf_tpl_{shards}_{slots}_{i}" for i in range(shards)]
            dsns = []
            for i, dbname in enumerate(names):
                admin = self.admin_dsns[i % len(self.admin_dsns)]
                self._execute(
                    admin,
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    ),
                )
                self._execute(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                dsns.append(with_database(admin, dbname))
            migrate_cluster(parse(cluster_yaml("test", dsns, slots=slots)))
            self._templates[key] = names
        return self._templates[key]

    def make(
        self,
        shards: int = 3,
        *,
        slots: int = 4096,
        weights: Sequence[int] | None = None,
        extra: Mapping[str, Any] | None = None,
        migrate: bool = True,
    ) -> TestCluster:
        """A new cluster named ``test`` with ``shards`` fresh databases.

        Equal weights and ``migrate`` clone a migrated template; other shapes are
        migrated from scratch (or not at all with ``migrate=False``).
        """
        n = next(_counter)
        pid = os.getpid()
        databases = []
        cloned = migrate and not weights
        templates = self._template(shards, slots) if cloned else None
        dsns = []
        for i in range(shards):
            admin = self.admin_dsns[i % len(self.admin_dsns)]
            dbname = f"sf_{pid}_{n}_{i}"
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname))
            if templates:
                statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(dbname), sql.Identifier(templates[i])
                )
            self._execute(admin, statement)
            databases.append((admin, dbname))
            self._created.append((admin, dbname))
            dsns.append(with_database(admin, dbname))
        extra_doc = {"worker": dict(TEST_WORKER), **(extra or {})}
        text = cluster_yaml("test", dsns, slots=slots, weights=weights, extra=extra_doc)
        path = self.workdir / f"cluster-{n}.yaml"
        path.write_text(text, encoding="utf-8")
        config = parse(text, source=str(path))
        if migrate and not cloned:
            migrate_cluster(config)
        return TestCluster(config, path, databases)

    # -- rebalancing tests: grow and reshape a cluster --------------------------------------

    def add_shard(
        self, cluster: TestCluster, *, weight: int = 1, migrate: bool = True
    ) -> TestCluster:
        """``cluster`` plus one new shard database, named ``shard<N>``, in a new YAML file.

        ``migrate`` runs the migrator on the grown config, as an operator would: the new
        shard gets its identity and a copy of the live map, and no slots (the rebalancer
        gives it its share). Drop the returned cluster: it holds every database.
        """
        index = len(cluster.config.shards)
        admin = self.admin_dsns[index % len(self.admin_dsns)]
        dbname = f"sf_{os.getpid()}_{next(_counter)}_{index}"
        self._execute(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        self._created.append((admin, dbname))
        doc = yaml.safe_load(cluster.path.read_text(encoding="utf-8"))
        doc["shards"].append(
            {"name": f"shard{index}", "dsn": with_database(admin, dbname), "weight": weight}
        )
        grown = self._rewrite(doc, [*cluster.databases, (admin, dbname)])
        if migrate:
            migrate_cluster(grown.config)
        return grown

    def reshape(
        self,
        cluster: TestCluster,
        *,
        weights: Mapping[str, int] | None = None,
        draining: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> TestCluster:
        """The same databases under a new YAML: other weights, some shards marked
        ``state: draining``, some left out (their databases are still dropped with it)."""
        doc = yaml.safe_load(cluster.path.read_text(encoding="utf-8"))
        shards = []
        for shard in doc["shards"]:
            if shard["name"] in remove:
                continue
            if weights and shard["name"] in weights:
                shard["weight"] = weights[shard["name"]]
            if shard["name"] in draining:
                shard["state"] = "draining"
            shards.append(shard)
        doc["shards"] = shards
        return self._rewrite(doc, list(cluster.databases))

    def _rewrite(self, doc: dict[str, Any], databases: list[tuple[str, str]]) -> TestCluster:
        text = yaml.safe_dump(doc, sort_keys=False)
        path = self.workdir / f"cluster-{next(_counter)}.yaml"
        path.write_text(text, encoding="utf-8")
        return TestCluster(parse(text, source=str(path)), path, databases)

    def drop(self, cluster: TestCluster) -> None:
        for admin, dbname in cluster.databases:
            # The server may be down (a test stopped it); the session cleans up then.
            with contextlib.suppress(psycopg.OperationalError):
                self._execute(
                    admin,
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    ),
                )


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    Polls every ``interval`` at first, then less often (the one :class:`Backoff`, at
    most every 0.25 s): a slow condition does not hammer the database meanwhile."""
    import time

    deadline = time.monotonic() + timeout
    backoff = Backoff(interval, max(interval, 0.25))
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(min(backoff.next(), remaining))


def id_on(cluster: Any, shard: str, prefix: str) -> str:
    """The first ``<prefix>-<n>`` workflow ID that ``cluster`` routes to ``shard``."""
    i = 0
    while cluster.route(f"{prefix}-{i}") != shard:
        i += 1
    return f"{prefix}-{i}"


def with_worker_settings(path: Path, **worker: Any) -> ClusterConfig:
    """The cluster YAML at ``path`` with its ``worker:`` section updated (short leases for
    tests of recovery and outages)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.setdefault("worker", {}).update(worker)
    return parse(yaml.safe_dump(doc))
