"""Embedded local PostgreSQL servers (shardflow.local) against the real binaries.

One 3-server cluster is shared by the module; the tests run in file order and each leaves
it running again. The fixture always calls ``down()``, so no server outlives the module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from shardflow.errors import EmbeddedServerError
from shardflow.local import LocalCluster, find_pg_bindir

# Durability off: these servers hold throwaway data, and it makes initdb and commits fast.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SHARDS = 3


def _migrator_available() -> bool:
    try:
        return importlib.util.find_spec("shardflow.config.loader") is not None and (
            importlib.util.find_spec("shardflow.sql.migrator") is not None
        )
    except ImportError:
        return False


MIGRATE = _migrator_available()


def _have_binaries() -> bool:
    try:
        find_pg_bindir()
    except EmbeddedServerError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_binaries(), reason="no PostgreSQL binaries")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("local") / "cluster")
    try:
        local.up(SHARDS, settings=FAST_SETTINGS, migrate=MIGRATE)
        yield local
    finally:
        local.destroy()


def _select_one(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_every_shard_answers(cluster: LocalCluster) -> None:
    statuses = cluster.status()
    assert [s.name for s in statuses] == ["shard0", "shard1", "shard2"]
    assert all(s.running for s in statuses)
    for status in statuses:
        assert _select_one(status.dsn) == 1
    for dsn in cluster.admin_dsns():
        assert _select_one(dsn) == 1


def test_cluster_yaml_points_at_the_servers(cluster: LocalCluster) -> None:
    document = yaml.safe_load(cluster.config_path.read_text())
    assert document["name"] == "local"
    assert document["hash"] == {"slots": 4096, "seed": 0}
    shards = document["shards"]
    assert [s["name"] for s in shards] == ["shard0", "shard1", "shard2"]
    ports = [s.port for s in cluster.status()]
    assert len(set(ports)) == SHARDS
    password = cluster.password_file.read_text(encoding="utf-8").strip()
    assert [s["dsn"] for s in shards] == [
        f"postgresql://postgres:{password}@127.0.0.1:{port}/shardflow" for port in ports
    ]
    state = json.loads(cluster.state_path.read_text())
    assert [s["port"] for s in state["servers"]] == ports


@pytest.mark.skipif(not MIGRATE, reason="shardflow.sql.migrator not available yet")
def test_shards_are_migrated(cluster: LocalCluster) -> None:
    for status in cluster.status():
        with psycopg.connect(status.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'shardflow'"
            ).fetchone()
        assert row == (1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the servers to another user")
def test_under_root_servers_run_as_an_unprivileged_user(cluster: LocalCluster) -> None:
    for server in cluster.servers:
        assert server.data_dir.stat().st_uid != 0
        postmaster = Path("/proc") / str(_postmaster_pid(server.data_dir))
        assert postmaster.stat().st_uid == server.data_dir.stat().st_uid


def test_up_again_is_idempotent(cluster: LocalCluster) -> None:
    before = cluster.status()
    pids = [_postmaster_pid(server.data_dir) for server in cluster.servers]
    yaml_before = cluster.config_path.read_text()

    started = time.monotonic()
    cluster.up(SHARDS, settings=FAST_SETTINGS, migrate=MIGRATE)

    assert cluster.status() == before
    assert [_postmaster_pid(server.data_dir) for server in cluster.servers] == pids
    assert cluster.config_path.read_text() == yaml_before
    # Nothing to start: well under the time of a real start.
    assert time.monotonic() - started < 10


def test_up_restarts_a_crashed_server(cluster: LocalCluster) -> None:
    victim = cluster.servers[1]
    victim.stop("immediate")
    assert not victim.is_running()
    assert [s.running for s in cluster.status()] == [True, False, True]
    with pytest.raises(psycopg.OperationalError):
        _select_one(victim.dsn())

    cluster.up(SHARDS, settings=FAST_SETTINGS, migrate=MIGRATE)

    assert [s.running for s in cluster.status()] == [True, True, True]
    assert _select_one(cluster.status()[1].dsn) == 1


def test_up_moves_a_stopped_server_off_a_taken_port(cluster: LocalCluster) -> None:
    victim = cluster.servers[2]
    old_port = victim.port
    victim.stop("fast")
    with _occupy(old_port):
        cluster.up(SHARDS, settings=FAST_SETTINGS, migrate=MIGRATE)

    new_port = cluster.status()[2].port
    assert new_port != old_port
    assert _select_one(cluster.status()[2].dsn) == 1
    shards = yaml.safe_load(cluster.config_path.read_text())["shards"]
    assert shards[2]["dsn"] == cluster.servers[2].dsn("shardflow")
    assert f"@127.0.0.1:{new_port}/shardflow" in shards[2]["dsn"]


def test_up_with_another_shard_count_is_refused(cluster: LocalCluster) -> None:
    with pytest.raises(EmbeddedServerError, match="shards=3"):
        cluster.up(SHARDS + 1, migrate=False)
    assert all(s.running for s in cluster.status())


def test_down_stops_every_server(cluster: LocalCluster) -> None:
    dsns = cluster.admin_dsns()
    cluster.down()

    assert [s.running for s in cluster.status()] == [False, False, False]
    for dsn in dsns:
        with pytest.raises(psycopg.OperationalError, match="refused"):
            _select_one(dsn)
    cluster.down()  # a second down is a no-op

    # Leave the module's cluster running for any test added after this one.
    cluster.up(SHARDS, settings=FAST_SETTINGS, migrate=MIGRATE)
    assert all(s.running for s in cluster.status())


def test_bindir_override_must_hold_the_programs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHARDFLOW_PG_BINDIR", str(tmp_path))
    with pytest.raises(EmbeddedServerError, match="does not hold initdb, pg_ctl, postgres"):
        find_pg_bindir()


def test_down_without_a_cluster_is_a_noop(tmp_path: Path) -> None:
    empty = LocalCluster(tmp_path / "nothing")
    empty.down()
    assert empty.status() == []
    assert empty.servers == ()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


@contextlib.contextmanager
def _occupy(port: int) -> Iterator[None]:
    """Hold a TCP listener on 127.0.0.1:port, as another program would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The stopped server's closed connections leave the port in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


# -- defect 9: a password, not trust; no directory above the cluster loosened ------------


def test_defect09_connecting_without_the_password_is_refused(cluster: LocalCluster) -> None:
    for server in cluster.servers:
        for dsn in (
            f"postgresql://postgres@127.0.0.1:{server.port}/postgres",
            f"postgresql://postgres:wrong-password@127.0.0.1:{server.port}/postgres",
        ):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(dsn, connect_timeout=5).close()
        assert _select_one(server.dsn()) == 1


def test_defect09_password_file_is_private(cluster: LocalCluster) -> None:
    mode = cluster.password_file.stat().st_mode & 0o777
    assert mode == 0o600
    assert cluster.config_path.stat().st_mode & 0o777 == 0o600  # its DSNs hold the password
    hba = (cluster.servers[0].data_dir / "pg_hba.conf").read_text(encoding="utf-8")
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)


def test_defect09_no_parent_directory_changes_mode(tmp_path: Path) -> None:
    # Private directories above the cluster, as pytest's own under root (mode 0700).
    top = tmp_path / "private"
    nested = top / "a" / "b"
    nested.mkdir(parents=True)
    for directory in (tmp_path, top, top / "a", nested):
        directory.chmod(0o700)
    watched = [nested, *nested.parents]
    before = {d: d.stat().st_mode for d in watched}
    local = LocalCluster(nested / "cluster")
    try:
        local.up(1, settings=FAST_SETTINGS, migrate=False)
        assert _select_one(local.admin_dsns()[0]) == 1
        after = {d: d.stat().st_mode for d in watched}
    finally:
        local.destroy()
    assert after == before
    assert not local.directory.exists()
