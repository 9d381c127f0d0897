"""The fault proxy against a real PostgreSQL server, and the server-level fault helpers."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

import shardflow
from shardflow.local import LocalCluster
from shardflow.testing.faults import (
    FaultProxy,
    ProxiedCluster,
    dsn_address,
    held_lock,
    live_threads,
    read_only_window,
    restart_server,
    stopped_server,
    via_proxy,
    wait_for_server,
)
from shardflow.testing.servers import with_database


@pytest.fixture
def proxy(shard_servers: list[str]) -> Iterator[tuple[FaultProxy, str]]:
    host, port = dsn_address(shard_servers[0])
    with FaultProxy(host, port, name="unit") as p:
        yield p, via_proxy(shard_servers[0], p)


def query_within(conn: psycopg.Connection[object], text: str, timeout: float) -> object:
    """Run ``text`` with a client-side deadline (libpq level: psycopg has none of its own).
    Raises TimeoutError when no answer arrives in time."""
    pgconn = conn.pgconn
    pgconn.send_query(text.encode())
    pgconn.flush()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer to {text!r} within {timeout}s")
        readable, _, _ = select.select([pgconn.socket], [], [], remaining)
        if not readable:
            continue
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
    value = None
    while (result := pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.TUPLES_OK:
            value = result.get_value(0, 0)
        elif result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.OperationalError(result.error_message.decode())
    return value


def test_a_query_goes_through(proxy: tuple[FaultProxy, str]) -> None:
    p, dsn = proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # Large answers too (many chunks, backpressure).
        row = conn.execute("SELECT repeat('x', 5000000)").fetchone()
        assert row is not None and len(row[0]) == 5_000_000
    assert p.connections_accepted == 1


def test_freeze_silences_the_connection_until_thawed(proxy: tuple[FaultProxy, str]) -> None:
    p, dsn = proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        p.freeze()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            query_within(conn, "SELECT 1", 0.5)
        assert time.monotonic() - started >= 0.5
        # A new connection is accepted but gets no answer either.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=1)
        p.thaw()
        # The frozen query was only held back: its answer arrives now.
        deadline = time.monotonic() + 5
        while conn.pgconn.is_busy() and time.monotonic() < deadline:
            select.select([conn.pgconn.socket], [], [], 0.1)
            conn.pgconn.consume_input()
        result = conn.pgconn.get_result()
        assert result is not None and result.get_value(0, 0) == b"1"
        while conn.pgconn.get_result() is not None:
            pass
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_reset_breaks_connections_and_new_ones_work(proxy: tuple[FaultProxy, str]) -> None:
    p, dsn = proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        p.reset()
        assert p.open_connections == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_blackhole_then_heal(proxy: tuple[FaultProxy, str]) -> None:
    p, dsn = proxy
    old = psycopg.connect(dsn, autocommit=True)
    p.blackhole()
    with pytest.raises(TimeoutError):
        query_within(old, "SELECT 1", 0.3)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=1)
    p.heal()
    old.close()
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_delay_adds_latency_each_way(proxy: tuple[FaultProxy, str]) -> None:
    p, dsn = proxy
    with psycopg.connect(dsn, autocommit=True) as conn:
        p.delay(0.2)
        started = time.monotonic()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - started >= 0.38
        p.heal()
        started = time.monotonic()
        conn.execute("SELECT 1")
        assert time.monotonic() - started < 0.2


def test_controls_are_thread_safe_and_close_leaks_nothing(shard_servers: list[str]) -> None:
    host, port = dsn_address(shard_servers[0])
    p = FaultProxy(host, port, name="leak")
    dsn = via_proxy(shard_servers[0], p)
    errors: list[BaseException] = []

    def query() -> None:
        try:
            for _ in range(20):
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
        except psycopg.OperationalError:
            pass  # a reset from the other thread
        except BaseException as exc:
            errors.append(exc)

    def flip() -> None:
        for _ in range(20):
            p.delay(0.001)
            p.reset()
            p.heal()

    threads = [threading.Thread(target=query) for _ in range(3)] + [threading.Thread(target=flip)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    open_conn = psycopg.connect(dsn, autocommit=True)
    p.close()
    p.close()  # idempotent
    assert live_threads() == []
    with pytest.raises(psycopg.OperationalError):
        open_conn.execute("SELECT 1")
    open_conn.close()
    with pytest.raises(RuntimeError):
        p.freeze()


def test_a_cluster_behind_proxies_runs_workflows(proxied: ProxiedCluster) -> None:
    from tests.apps import basic

    config = shardflow.load(proxied.path)
    with shardflow.connect(config) as cluster:
        handle = cluster.submit(basic.three_steps, 1, workflow_id="through-proxies")
        with shardflow.Worker(cluster, basic.app, concurrency=2):
            assert handle.result(timeout=30) == {"result": 4}
    assert sum(p.connections_accepted for p in proxied.proxies.values()) >= 3


# -- server-level faults, on the suite's own servers ------------------------------------------


def test_stopped_server_answers_nothing_until_continued(fault_servers: LocalCluster) -> None:
    server = fault_servers.servers[0]
    dsn = server.dsn("postgres")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with stopped_server(server.data_dir) as pids:
            assert len(pids) > 1  # the postmaster and its children
            with pytest.raises(TimeoutError):
                query_within(conn, "SELECT 1", 0.5)
        deadline = time.monotonic() + 5
        while conn.pgconn.is_busy() and time.monotonic() < deadline:
            select.select([conn.pgconn.socket], [], [], 0.1)
            conn.pgconn.consume_input()
        while conn.pgconn.get_result() is not None:
            pass
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_only_window_refuses_writes_and_drops_sessions(fault_servers: LocalCluster) -> None:
    dsn = fault_servers.servers[1].dsn("postgres")
    old = psycopg.connect(dsn, autocommit=True)
    try:
        with read_only_window(dsn):
            with pytest.raises(psycopg.OperationalError):
                old.execute("SELECT 1")
            with (
                psycopg.connect(dsn, autocommit=True) as conn,
                pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
            ):
                conn.execute("CREATE TEMP TABLE t (x int)")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
    finally:
        old.close()


def test_held_lock_blocks_writers_until_released(fault_servers: LocalCluster) -> None:
    admin = fault_servers.servers[2].dsn("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS fault_lock")
        conn.execute("CREATE DATABASE fault_lock")
    dsn = with_database(admin, "fault_lock")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shardflow")
        conn.execute("CREATE TABLE shardflow.workflow_status (x int)")
    with held_lock(dsn), psycopg.connect(dsn, autocommit=True) as writer:
        writer.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            writer.execute("INSERT INTO shardflow.workflow_status VALUES (1)")
        # Readers are not blocked by SHARE.
        writer.execute("SELECT count(*) FROM shardflow.workflow_status")
    with psycopg.connect(dsn, autocommit=True) as writer:
        writer.execute("SET lock_timeout = '2s'")
        writer.execute("INSERT INTO shardflow.workflow_status VALUES (1)")


def test_restart_keeps_the_port_and_drops_sessions(fault_servers: LocalCluster) -> None:
    server = fault_servers.servers[3]
    dsn = server.dsn("postgres")
    old = psycopg.connect(dsn, autocommit=True)
    try:
        restart_server(server)
        wait_for_server(dsn)
        with pytest.raises(psycopg.OperationalError):
            old.execute("SELECT 1")
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
    finally:
        old.close()
