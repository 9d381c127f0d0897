"""Operations against real shards: metrics, status, retention, claim checks, worker roles,
JSON logs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

import shardflow
from shardflow import WorkflowState
from shardflow.cli.main import main
from shardflow.config import parse
from shardflow.engine.blobs import BLOB_MARKER, BlobRef
from shardflow.engine.cluster import Cluster
from shardflow.engine.metrics import read_snapshots
from shardflow.engine.metrics_http import serve_metrics
from shardflow.engine.retention import RetentionLeader
from shardflow.local.ports import pick_free_ports
from shardflow.testing.servers import ClusterFactory, TestCluster, cluster_yaml, wait_until
from tests.apps import ops
from tests.e2e.procs import start_worker, stop

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _no_option_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options read SHARDFLOW_* variables; the developer's own must not leak in."""
    for name in list(os.environ):
        if name.startswith("SHARDFLOW_") and not name.startswith("SHARDFLOW_TEST"):
            monkeypatch.delenv(name)


# -- helpers ------------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def scrape(port: int) -> Samples:
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    wanted = set(labels.items())
    out: dict[str, float] = {}
    for (n, ls), value in samples.items():
        if n == name and wanted <= ls:
            key = dict(ls)[label]
            out[key] = out.get(key, 0.0) + value
    return out


def shard_conn(test_cluster: TestCluster, shard: str) -> psycopg.Connection[Any]:
    return psycopg.connect(test_cluster.config.shard(shard).dsn, autocommit=True)


def backdate(test_cluster: TestCluster, cluster: Cluster, ids: list[str], days: float) -> None:
    """Pretend these finished workflows ended ``days`` ago."""
    for shard in test_cluster.config.shard_names:
        mine = [i for i in ids if cluster.route(i) == shard]
        if mine:
            with shard_conn(test_cluster, shard) as conn:
                conn.execute(
                    "UPDATE shardflow.workflow_status SET finished_at = now() - %s"
                    " WHERE workflow_id = ANY(%s)",
                    (timedelta(days=days), mine),
                )


def rows(test_cluster: TestCluster, table: str, ids: list[str]) -> int:
    count = 0
    for shard in test_cluster.config.shard_names:
        with shard_conn(test_cluster, shard) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM shardflow.{} WHERE workflow_id = ANY(%s)").format(
                    sql.Identifier(table)
                ),
                (ids,),
            ).fetchone()
            assert row is not None
            count += int(row[0])
    return count


@pytest.fixture
def parked_cluster(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """A cluster with a queue no worker of these tests claims from: work waits there."""
    made = cluster_factory.make(3, extra={"queues": {"default": {}, "parked": {}}})
    yield made
    cluster_factory.drop(made)


@pytest.fixture
def parked_client(parked_cluster: TestCluster) -> Iterator[Cluster]:
    with Cluster(parked_cluster.config) as client:
        yield client


def run_all(cluster: Cluster, handles: list[shardflow.WorkflowHandle[Any]], **worker: Any) -> None:
    worker.setdefault("queues", ["default"])
    with shardflow.Worker(cluster, ops.app, retention=False, **worker):
        for handle in handles:
            handle.result(timeout=60)


# -- metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_metrics_port_in_use_is_one_line_before_any_work(
    test_cluster: TestCluster, processes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(
            [
                "--config",
                str(test_cluster.path),
                "worker",
                "--app",
                "tests.apps.ops:app",
                "--processes",
                processes,
                "--metrics-port",
                str(port),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith(f"shardflow: error: --metrics-port {port}: cannot listen on")
    assert "pick another port" in err[-1]


def test_worker_process_serves_metrics_and_its_counters_move(
    test_cluster: TestCluster, cluster: Cluster, tmp_path: Path
) -> None:
    port = pick_free_ports(1)[0]
    proc = start_worker(
        test_cluster.path,
        "tests.apps.ops:app",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        log=tmp_path / "worker.log",
    )
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, message="worker ready")
        status, body = http_get(port, "/healthz")
        assert status == 200
        loops = json.loads(body)["loops"]
        # Every per-shard loop is watched, each alive and not stalled.
        for kind in ("claim", "heartbeat", "listen", "commit"):
            for shard in ("shard0", "shard1", "shard2"):
                assert loops[f"{kind}-{shard}"]["alive"] is True
                assert loops[f"{kind}-{shard}"]["stalled"] is False
        assert http_get(port, "/nope")[0] == 404
        before = scrape(port)
        assert total(before, "shardflow_workflows_completed_total") == 0
        assert by_label(before, "shardflow_shard_up", "shard") == {
            "shard0": 1,
            "shard1": 1,
            "shard2": 1,
        }

        handles = [cluster.submit(ops.steps, 3, 0.002) for _ in range(30)]
        # A few slow ones, so that heartbeats renew leases while they run.
        handles += [cluster.submit(ops.steps, 2, 0.5) for _ in range(3)]
        for handle in handles:
            assert handle.result(timeout=60) in (2, 3)

        after = wait_until(
            lambda: (
                (s := scrape(port))
                and total(s, "shardflow_workflows_completed_total") == len(handles)
                and s
            ),
            message="33 completions in the metrics",
        )
        per_shard = Counter(h.shard for h in handles)
        completed = by_label(after, "shardflow_workflows_completed_total", "shard", queue="default")
        claimed = by_label(after, "shardflow_workflows_claimed_total", "shard", queue="default")
        assert completed == per_shard
        assert claimed == per_shard
        assert total(after, "shardflow_workflows_failed_total") == 0
        # Every step of every workflow is in the step histogram, under its shard.
        steps = by_label(after, "shardflow_step_duration_seconds_count", "shard", step="pause")
        expected_steps = Counter({shard: 0 for shard in per_shard})
        for handle in handles:
            expected_steps[handle.shard] += 3 if handle in handles[:30] else 2
        assert steps == expected_steps
        slow = total(after, "shardflow_step_duration_seconds_bucket", step="pause", le="0.25")
        assert slow == sum(expected_steps.values()) - 6  # the six 0.5 s steps
        assert total(after, "shardflow_lease_renewals_total") > 0
        assert total(after, "shardflow_leases_lost_total") == 0
        assert total(after, "shardflow_workflows_running") == 0
        assert total(after, "shardflow_slots", state="OWNED") == 4096
        assert total(after, "process_cpu_seconds_total") > 0
    finally:
        assert stop(proc) == 0


def test_queue_depth_and_status_show_what_waits_on_each_shard(
    parked_cluster: TestCluster, parked_client: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    test_cluster, cluster = parked_cluster, parked_client
    parked = [cluster.submit(ops.echo, i, queue="parked") for i in range(24)]
    per_shard = Counter(h.shard for h in parked)
    worker = shardflow.Worker(cluster, ops.app, queues=["default"], retention=False)
    server = serve_metrics(worker, 0, "127.0.0.1", snapshot_interval=0)
    try:
        worker.start()
        samples = scrape(server.port)
        depth = by_label(
            samples, "shardflow_queue_depth", "shard", queue="parked", state="ENQUEUED"
        )
        assert depth == per_shard
        assert all(
            v >= 0
            for v in by_label(
                samples, "shardflow_queue_oldest_seconds", "shard", queue="parked"
            ).values()
        )
    finally:
        worker.stop()
        server.close()

    snapshots = {s.shard: s for s in read_snapshots(cluster)}
    assert {s: snap.count("ENQUEUED") for s, snap in snapshots.items()} == per_shard

    assert main(["--config", str(test_cluster.path), "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    enqueued = {
        shard["shard"]: sum(q["workflows"] for q in shard["queues"] if q["state"] == "ENQUEUED")
        for shard in report["shards"]
    }
    assert enqueued == per_shard
    assert all(shard["reachable"] for shard in report["shards"])

    assert main(["--config", str(test_cluster.path), "status", "--by-queue"]) == 0
    table = capsys.readouterr().out
    assert "parked" in table and "shard2" in table and "enqueued" in table


# -- retention --------------------------------------------------------------------------


def test_retention_deletes_expired_workflows_in_batches_and_keeps_young_ones(
    parked_cluster: TestCluster, parked_client: Cluster
) -> None:
    test_cluster, cluster = parked_cluster, parked_client
    handles = [cluster.submit(ops.steps, 2) for _ in range(40)]
    run_all(cluster, handles)
    old = [h.workflow_id for h in handles[:30]]
    young = [h.workflow_id for h in handles[30:]]
    backdate(test_cluster, cluster, old, days=8)
    # Unfinished workflows are never expired, however old they are.
    waiting = [cluster.submit(ops.echo, i, queue="parked").workflow_id for i in range(6)]
    for shard in test_cluster.config.shard_names:
        with shard_conn(test_cluster, shard) as conn:
            conn.execute(
                "UPDATE shardflow.workflow_status SET created_at = now() - interval '30 days'"
                " WHERE queue = 'parked'"
            )

    policy = parse(
        cluster_yaml("test", ["host=unused"], extra={"retention": {"keep_finished_days": 7}})
    ).retention
    assert policy is not None
    policy = dataclasses.replace(policy, batch_size=4, batch_pause_seconds=0.001)
    leader = RetentionLeader(cluster, policy, cluster.config.shard_names, threading.Event())
    try:
        assert leader.run_once() == 30
        per_shard = Counter(cluster.route(i) for i in old)
        assert dict(leader.stats.deleted) == per_shard
        for shard, batches in leader.stats.last_batches.items():
            assert all(n <= 4 for n in batches) and sum(batches) == per_shard[shard]
            assert len(batches) == per_shard[shard] // 4 + 1  # the last one comes back short
        assert rows(test_cluster, "workflow_status", old) == 0
        assert rows(test_cluster, "step_outputs", old) == 0
        assert rows(test_cluster, "workflow_status", young) == 10
        assert rows(test_cluster, "step_outputs", young) == 20
        assert rows(test_cluster, "workflow_status", waiting) == 6
        for workflow_id in young:
            assert cluster.get(workflow_id).state is WorkflowState.SUCCESS
        with pytest.raises(shardflow.WorkflowNotFound):
            cluster.get(old[0])
        # Nothing left to do: a round deletes nothing.
        assert leader.run_once() == 0
    finally:
        leader.close()


def test_one_retention_leader_per_shard(test_cluster: TestCluster, cluster: Cluster) -> None:
    policy = parse(
        cluster_yaml("test", ["host=unused"], extra={"retention": {"keep_finished_days": 1}})
    ).retention
    assert policy is not None
    shards = cluster.config.shard_names
    first = RetentionLeader(cluster, policy, shards, threading.Event())
    second = RetentionLeader(cluster, policy, shards, threading.Event())
    try:
        first.run_once()
        second.run_once()
        assert first.stats.leading == set(shards)
        assert second.stats.leading == set()
        first.close()  # a leader that goes away frees its shards
        second.run_once()
        assert second.stats.leading == set(shards)
    finally:
        first.close()
        second.close()


def test_workers_run_retention_from_the_yaml(cluster_factory: ClusterFactory) -> None:
    made = cluster_factory.make(
        3,
        extra={
            "retention": {
                "keep_finished_days": 1,
                "interval_seconds": 0.1,
                "batch_size": 5,
                "batch_pause_seconds": 0.01,
            }
        },
    )
    try:
        with Cluster(made.config) as cluster:
            handles = [cluster.submit(ops.steps, 1) for _ in range(20)]
            with shardflow.Worker(cluster, ops.app, retention=False):
                for handle in handles:
                    handle.result(timeout=60)
            expired = [h.workflow_id for h in handles[:12]]
            kept = [h.workflow_id for h in handles[12:]]
            backdate(made, cluster, expired, days=2)
            workers = [shardflow.Worker(cluster, ops.app) for _ in range(2)]
            for worker in workers:
                worker.start()
            try:
                wait_until(
                    lambda: rows(made, "workflow_status", expired) == 0,
                    message="expired workflows deleted by the workers' retention",
                )
                leaders = [w.retention.stats.leading for w in workers if w.retention]
                # Each shard has exactly one leader among the two workers.
                assert sorted(s for lead in leaders for s in lead) == sorted(
                    made.config.shard_names
                )
            finally:
                for worker in workers:
                    worker.stop()
            assert rows(made, "workflow_status", kept) == 8
    finally:
        cluster_factory.drop(made)


# -- claim checks ---------------------------------------------------------------------------

FIVE_MB = 5 * 1024 * 1024


@pytest.fixture
def blob_cluster(cluster_factory: ClusterFactory, tmp_path: Path) -> Iterator[TestCluster]:
    made = cluster_factory.make(
        3,
        extra={
            "limits": {"max_payload_bytes": 16 * 1024 * 1024},
            "payloads": {
                "inline_max_bytes": 4096,
                "blob_store": {"kind": "filesystem", "path": str(tmp_path / "blobs")},
            },
            "retention": {"keep_finished_days": 1},
        },
    )
    yield made
    cluster_factory.drop(made)


def test_a_5mb_step_output_round_trips_through_the_blob_store(
    blob_cluster: TestCluster, tmp_path: Path
) -> None:
    with Cluster(blob_cluster.config) as cluster:
        handle = cluster.submit(ops.big_output, FIVE_MB)
        small = cluster.submit(ops.echo, {"tiny": True})
        run_all(cluster, [handle, small])

        document = _document(FIVE_MB)
        digest = hashlib.sha256(document.encode()).hexdigest()
        # The workflow suspended after the step, so its second attempt replayed the
        # step's output from the checkpoint, i.e. from the blob store.
        assert handle.result(timeout=5) == {"len": FIVE_MB, "sha256": digest}
        status = handle.status()
        assert status.attempt == 2
        steps = cluster.steps(handle.workflow_id)
        assert steps[0].name == "make_document" and steps[0].output == document

        with shard_conn(blob_cluster, handle.shard) as conn:
            stored = conn.execute(
                "SELECT output FROM shardflow.step_outputs WHERE workflow_id = %s AND step_no = 0",
                (handle.workflow_id,),
            ).fetchone()
            inline = conn.execute(
                "SELECT output FROM shardflow.workflow_status WHERE workflow_id = %s",
                (handle.workflow_id,),
            ).fetchone()
        assert stored is not None and inline is not None
        reference = stored[0]
        assert reference.startswith(BLOB_MARKER) and len(reference) < 200
        ref = BlobRef.parse(reference)
        blob = tmp_path / "blobs" / ref.key if ref is not None else None
        assert blob is not None
        # The blob is the serialized value: the JSON string, quotes included.
        assert blob.read_text() == json.dumps(document)
        assert ref is not None and ref.size == FIVE_MB + 2
        assert not inline[0].startswith(BLOB_MARKER)  # the small result stayed inline
        assert small.result(timeout=5) == {"tiny": True}

        # Retention removes the blob with the workflow that referenced it.
        backdate(blob_cluster, cluster, [handle.workflow_id], days=2)
        assert blob_cluster.config.retention is not None
        leader = RetentionLeader(
            cluster, blob_cluster.config.retention, cluster.config.shard_names, threading.Event()
        )
        try:
            assert leader.run_once() == 1
        finally:
            leader.close()
        assert not blob.exists()
        assert leader.stats.blobs_deleted == 1


def test_large_inputs_and_results_are_claim_checked_too(blob_cluster: TestCluster) -> None:
    payload = {"rows": [f"row-{i:06d}" for i in range(20_000)]}
    with Cluster(blob_cluster.config) as cluster:
        handle = cluster.submit(ops.echo, payload)
        run_all(cluster, [handle])
        assert handle.result(timeout=5) == payload
        with shard_conn(blob_cluster, handle.shard) as conn:
            row = conn.execute(
                "SELECT inputs, output FROM shardflow.workflow_status WHERE workflow_id = %s",
                (handle.workflow_id,),
            ).fetchone()
        assert row is not None
        assert row[0].startswith(BLOB_MARKER) and row[1].startswith(BLOB_MARKER)


def _document(size: int) -> str:
    block = "".join(f"{i:08x}" for i in range(1024))
    return (block * (size // len(block) + 1))[:size]


# -- least privilege --------------------------------------------------------------------------


@pytest.fixture
def worker_role(test_cluster: TestCluster) -> Iterator[str]:
    role = f"sf_worker_{os.getpid()}_{id(test_cluster) % 100000}"
    yield role
    for admin, dbname in test_cluster.databases:
        dsn = make_conninfo(admin, dbname=dbname)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        except psycopg.Error:
            pass
    for admin, _ in test_cluster.databases:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_migrate_creates_a_worker_role_that_runs_workflows_and_nothing_more(
    test_cluster: TestCluster,
    worker_role: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    password = "pw-Only-For-This-Test"
    monkeypatch.setenv("SHARDFLOW_WORKER_ROLE_PASSWORD", password)
    argv = ["--config", str(test_cluster.path), "migrate", "--create-worker-role", worker_role]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert f"worker role {worker_role} created, password set, granted" in out.out
    assert password not in out.out + out.err
    # Again: idempotent, the role exists now.
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["worker_role"]
    assert report["name"] == worker_role
    assert not any(s["created"] for s in report["shards"])

    admin = test_cluster.config.shards[0].dsn
    with psycopg.connect(admin) as conn:
        row = conn.execute(
            "SELECT rolpassword, rolsuper, rolcreaterole, rolcreatedb FROM pg_authid"
            " WHERE rolname = %s",
            (worker_role,),
        ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$") and password not in str(row[0])
    assert row[1:] == (False, False, False)

    # A cluster file whose DSNs log in as the worker role.
    dsns = [make_conninfo(s.dsn, user=worker_role, password=password) for s in
            test_cluster.config.shards]  # fmt: skip
    text = cluster_yaml("test", dsns, extra={"worker": {"lease_seconds": 3,
                        "heartbeat_seconds": 0.5, "poll_interval_seconds": 0.05},
                        "retention": {"keep_finished_days": 1}})  # fmt: skip
    config = parse(text)
    with Cluster(config) as cluster:
        handles = [cluster.submit(ops.steps, 2) for _ in range(9)]
        inbox = cluster.submit(ops.inbox, 2)
        parent = cluster.submit(ops.parent, 1)
        with shardflow.Worker(cluster, ops.app, retention=False):
            wait_until(lambda: cluster.get_event(inbox.workflow_id, "state", timeout=0.1))
            cluster.send(inbox.workflow_id, "a", topic="in")
            cluster.send(inbox.workflow_id, "b", topic="in")
            assert inbox.result(timeout=30) == ["a", "b"]
            assert parent.result(timeout=30) == 1
            for handle in handles:
                assert handle.result(timeout=30) == 2
        # Retention runs as the worker role too.
        backdate(test_cluster, cluster, [h.workflow_id for h in handles], days=2)
        assert config.retention is not None
        leader = RetentionLeader(cluster, config.retention, config.shard_names, threading.Event())
        try:
            assert leader.run_once() == 9
        finally:
            leader.close()

    forbidden = [
        "INSERT INTO shardflow.slot_ownership (slot, state, epoch) VALUES (99999, 'OWNED', 1)",
        "UPDATE shardflow.slot_map SET epoch = epoch + 1",
        "DELETE FROM shardflow.cluster_identity",
        "CREATE TABLE shardflow.intruder (x int)",
        "DROP TABLE shardflow.events",
        "TRUNCATE shardflow.workflow_status",
    ]
    with psycopg.connect(dsns[0], autocommit=True) as conn:
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_worker_role_refuses_the_migrating_role_and_reserved_names(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(test_cluster.path)
    assert main(["--config", path, "migrate", "--create-worker-role", "postgres"]) == 2
    assert "give workers a role of their own" in capsys.readouterr().err
    assert main(["--config", path, "migrate", "--create-worker-role", "pg_monitor"]) == 2
    assert "reserved" in capsys.readouterr().err


# -- structured logs ------------------------------------------------------------------------


def test_json_logs_carry_workflow_id_shard_and_attempt(
    test_cluster: TestCluster, cluster: Cluster, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = start_worker(test_cluster.path, "tests.apps.ops:app", "--log-format", "json", log=log)
    try:
        handle = cluster.submit(ops.flaky, "k1")
        assert handle.result(timeout=60) == "ok:k1"
    finally:
        assert stop(proc) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    retry = [line for line in lines if "retrying" in line["message"]]
    assert retry, lines
    assert retry[0]["workflow_id"] == handle.workflow_id
    assert retry[0]["shard"] == handle.shard
    assert retry[0]["attempt"] == 1
