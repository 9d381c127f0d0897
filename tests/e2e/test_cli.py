"""The ``shardflow`` command line against real PostgreSQL shards.

Most commands run in-process (``main([...])`` with capsys); the ones whose point is a
real process (exit status and stderr of the script, signals, two migrators at once, the
embedded servers of ``dev``) run as subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import mmh3
import psycopg
import pytest
import yaml

import shardflow
from shardflow.cli.main import main
from shardflow.cli.output import scrub_secrets
from shardflow.local import LocalCluster
from shardflow.sql import migrations
from shardflow.testing import ClusterFactory, TestCluster
from shardflow.testing.servers import wait_until
from tests.apps import cli_app

ROOT = Path(__file__).resolve().parents[2]
SECRET = "supersecret"
UNREACHABLE_DSN = f"postgresql://u:{SECRET}@127.0.0.1:1/db"


@pytest.fixture(autouse=True)
def _no_option_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options read SHARDFLOW_* variables; the developer's own must not leak in."""
    for name in list(os.environ):
        if name.startswith("SHARDFLOW_") and not name.startswith("SHARDFLOW_TEST"):
            monkeypatch.delenv(name)


def cli_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("SHARDFLOW_") and not k.startswith("SHARDFLOW_TEST"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardflow", *args]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
        timeout=timeout,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run_main(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shardflow: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def rewrite_config(source: Path, target: Path, change: Any) -> Path:
    """A copy of the YAML at ``source`` with ``change(document)`` applied."""
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    change(document)
    target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return target


def shard_dsns(made: TestCluster) -> list[str]:
    return [shard.dsn for shard in made.config.shards]


# -- global behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("module", ["shardflow", "shardflow.cli.main"])
def test_python_dash_m_runs_the_command(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", module, "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == f"shardflow {shardflow.__version__}"


def test_missing_config_names_the_flag_and_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(capsys, "migrate")
    assert_one_line_error(code, err, "--config", "SHARDFLOW_CONFIG")
    assert out == ""


def test_options_read_shardflow_variables(
    test_cluster: TestCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHARDFLOW_CONFIG", str(test_cluster.path))
    monkeypatch.setenv("SHARDFLOW_JSON", "1")
    code, out, err = run_main(capsys, "route", "order-1")
    assert code == 0, err
    assert json.loads(out)["routes"][0]["id"] == "order-1"

    # A bad value from a variable is refused like the flag's, naming the variable.
    monkeypatch.setenv("SHARDFLOW_CONCURRENCY", "lots")
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "--app", "tests.apps.cli_app:app"])
    assert exit_info.value.code == 2
    assert "SHARDFLOW_CONCURRENCY" in capsys.readouterr().err

    # The command line wins over the variable.
    monkeypatch.setenv("SHARDFLOW_LOG_LEVEL", "shouting")
    code, out, err = run_main(capsys, "--log-level", "error", "check-config")
    assert code == 0, err


def test_ctrl_c_exits_130_quietly(
    test_cluster: TestCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("shardflow.cli.check_config.print_summary", interrupted)
    code, out, err = run_main(capsys, "--config", str(test_cluster.path), "check-config")
    assert (code, out, err) == (130, "", "")


# -- check-config -------------------------------------------------------------------------


def test_check_config_summarizes_a_valid_file_without_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "name: orders\n"
        "hash: {slots: 1024, seed: 7}\n"
        "shards:\n"
        f"  - {{name: east, dsn: '{UNREACHABLE_DSN}', weight: 2}}\n"
        "  - {name: west, dsn: 'host=h password=hunter22 dbname=db', state: draining}\n"
        "queues:\n"
        "  default: {}\n"
        "  mail: {concurrency: 4}\n",
        encoding="utf-8",
    )
    # The option may also follow the command.
    code, out, err = run_main(capsys, "check-config", "--config", str(path))
    assert code == 0, err
    assert "cluster orders: 1024 slots, hash seed 7" in out
    assert "east" in out and "west" in out and "draining" in out
    assert "u:***@127.0.0.1:1/db" in out
    assert "mail (concurrency 4)" in out
    assert SECRET not in out + err and "hunter22" not in out + err


def test_check_config_refuses_an_invalid_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: orders\nshards:\n  - {name: a, dsn: 'postgresql://h/db', weight: 0}\n",
        encoding="utf-8",
    )
    done = run_cli("--config", str(path), "check-config")
    assert_one_line_error(done.returncode, done.stderr, str(path), "shards[0].weight")
    assert done.stdout == ""

    missing = run_cli("--config", str(tmp_path / "nowhere.yaml"), "check-config")
    assert_one_line_error(missing.returncode, missing.stderr, "nowhere.yaml")


# -- migrate --------------------------------------------------------------------------------


def test_migrate_on_a_migrated_cluster_applies_nothing(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "--config", str(test_cluster.path), "migrate")
    assert code == 0, err
    lines = out.strip().splitlines()
    latest = migrations()[-1].version
    assert lines[:3] == [f"shard{i}: up to date (schema version {latest})" for i in range(3)]
    assert lines[3] == "nothing to apply: every shard is up to date"


def test_migrate_applies_each_version_once(
    cluster_factory: ClusterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    made = cluster_factory.make(3, migrate=False)
    try:
        first = run_json(capsys, "--config", str(made.path), "migrate")
        versions = [m.version for m in migrations()]
        assert [(s["shard"], s["applied"], s["schema_version"]) for s in first["shards"]] == [
            (f"shard{i}", versions, versions[-1]) for i in range(3)
        ]
        assert all(s["identity_created"] for s in first["shards"])

        second = run_json(capsys, "--config", str(made.path), "migrate")
        assert [(s["applied"], s["identity_created"]) for s in second["shards"]] == [
            ([], False)
        ] * 3

        code, out, _ = run_main(capsys, "--config", str(made.path), "migrate")
        assert code == 0 and "nothing to apply" in out
    finally:
        cluster_factory.drop(made)


def test_two_migrate_processes_at_once_apply_each_version_once(
    cluster_factory: ClusterFactory,
) -> None:
    made = cluster_factory.make(3, migrate=False)
    try:
        command = cli_command("--config", str(made.path), "migrate")
        processes = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [p.communicate(timeout=120) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], results

        owned = 0
        for dsn in shard_dsns(made):
            with psycopg.connect(dsn) as conn:
                versions = conn.execute(
                    "SELECT version, count(*) FROM shardflow.migrations"
                    " GROUP BY version ORDER BY version"
                ).fetchall()
                identities = conn.execute(
                    "SELECT count(*) FROM shardflow.cluster_identity"
                ).fetchone()
                slots = conn.execute("SELECT count(*) FROM shardflow.slot_ownership").fetchone()
            assert versions == [(m.version, 1) for m in migrations()]
            assert identities == (1,)
            assert slots is not None
            owned += slots[0]
        assert owned == 4096
    finally:
        cluster_factory.drop(made)


def test_migrate_refuses_a_config_with_another_slot_count(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    def halve_slots(document: dict[str, Any]) -> None:
        document["hash"]["slots"] = 2048

    path = rewrite_config(test_cluster.path, tmp_path / "other-slots.yaml", halve_slots)
    done = run_cli("--config", str(path), "migrate")
    assert_one_line_error(done.returncode, done.stderr, "hash.slots", "2048", "4096")


def test_migrate_names_an_unreachable_shard_without_its_password(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    def break_shard1(document: dict[str, Any]) -> None:
        document["shards"][1]["dsn"] = UNREACHABLE_DSN

    path = rewrite_config(test_cluster.path, tmp_path / "down.yaml", break_shard1)
    done = run_cli("--config", str(path), "migrate")
    assert_one_line_error(done.returncode, done.stderr, "shard 'shard1' is unavailable")
    assert SECRET not in done.stdout + done.stderr


def test_error_messages_never_carry_a_configured_password() -> None:
    dsns = [UNREACHABLE_DSN, "host=h password='p w!' dbname=db", "host=h password=hunter22"]
    message = f"failed: {UNREACHABLE_DSN} / password=hunter22 / p w! / {SECRET}"
    scrubbed = scrub_secrets(message, dsns)
    assert SECRET not in scrubbed and "hunter22" not in scrubbed and "p w!" not in scrubbed
    assert "postgresql://u:***@127.0.0.1:1/db" in scrubbed


# -- route ----------------------------------------------------------------------------------


def test_route_shows_hash_slot_and_shard_and_honours_hash_tags(
    test_cluster: TestCluster, cluster: shardflow.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(test_cluster.path)
    found = run_json(capsys, "--config", config, "route", "{t}:a", "{t}:b", "order-1")
    assert found["map"] == "live" and found["epoch"] >= 1
    a, b, plain = found["routes"]
    # MurmurHash3 x86_32 of the hash tag; 4096 slots take the top 12 bits.
    tag_hash = mmh3.hash(b"t", 0, signed=False)
    assert a["hash_key"] == b["hash_key"] == "t"
    assert a["route_hash"] == b["route_hash"] == tag_hash
    assert a["slot"] == b["slot"] == tag_hash >> 20
    assert a["shard"] == b["shard"]
    assert plain["hash_key"] == "order-1"
    assert plain["slot"] == mmh3.hash(b"order-1", 0, signed=False) >> 20
    assert [r["shard"] for r in found["routes"]] == [
        cluster.route(i) for i in ("{t}:a", "{t}:b", "order-1")
    ]

    code, out, err = run_main(capsys, "--config", config, "route", "{t}:a")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "{t}:a" in line)
    assert row.split() == ["{t}:a", "t", str(a["route_hash"]), str(a["slot"]), a["shard"]]


def test_route_without_a_reachable_shard_uses_the_config_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "down.yaml"
    path.write_text(
        f"name: down\nhash: {{slots: 64}}\nshards:\n  - {{name: only, dsn: '{UNREACHABLE_DSN}'}}\n",
        encoding="utf-8",
    )
    code, out, err = run_main(capsys, "--config", str(path), "route", "x", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["map"] == "config" and found["epoch"] is None
    assert found["routes"][0]["shard"] == "only"
    assert "no shard reachable" in err
    assert SECRET not in out + err


def test_an_unreachable_shard_is_reported_once(
    test_cluster: TestCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = tmp_path / "only-down.yaml"
    only.write_text(
        f"name: down\nhash: {{slots: 64}}\nshards:\n  - {{name: only, dsn: '{UNREACHABLE_DSN}'}}\n",
        encoding="utf-8",
    )
    for command in (("workflows", "list"), ("workflows", "show", "x"), ("status",)):
        code, _, err = run_main(capsys, "--config", str(only), *command)
        # The error line alone: no log line saying the same thing before it.
        assert_one_line_error(code, err, "shard 'only' is unavailable")
        assert SECRET not in err

    def break_shard1(document: dict[str, Any]) -> None:
        document["shards"][1]["dsn"] = UNREACHABLE_DSN

    path = rewrite_config(test_cluster.path, tmp_path / "down.yaml", break_shard1)
    code, _, err = run_main(capsys, "--config", str(path), "workflows", "list")
    assert code == 0, err
    assert err.count("shard1") == 1, err
    assert SECRET not in err


# -- topology -------------------------------------------------------------------------------


def test_topology_show_lists_every_shard_and_its_slots(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(test_cluster.path)
    shown = run_json(capsys, "--config", config, "topology", "show")
    assert shown["map"] == "live" and shown["epoch"] >= 1
    shards = shown["shards"]
    assert [s["name"] for s in shards] == ["shard0", "shard1", "shard2"]
    assert sum(s["slots"] for s in shards) == 4096
    assert all(s["reachable"] and s["error"] is None for s in shards)
    assert [s["ownership"]["OWNED"] for s in shards] == [s["slots"] for s in shards]

    code, out, err = run_main(capsys, "--config", config, "topology", "show")
    assert code == 0, err
    for shard in shards:
        row = next(line for line in out.splitlines() if line.startswith(shard["name"] + " "))
        assert row.split()[-2:] == [str(shard["slots"]), "yes"]
    assert f"live slot map epoch {shown['epoch']}; 4096 of 4096 slots assigned" in out


def test_topology_show_marks_a_down_shard_unreachable_and_hides_its_password(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    def break_shard2(document: dict[str, Any]) -> None:
        document["shards"][2]["dsn"] = UNREACHABLE_DSN

    path = rewrite_config(test_cluster.path, tmp_path / "down.yaml", break_shard2)
    done = run_cli("--config", str(path), "topology", "show", "--json")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    shards = {s["name"]: s for s in json.loads(done.stdout)["shards"]}
    assert shards["shard0"]["reachable"] and shards["shard1"]["reachable"]
    assert not shards["shard2"]["reachable"]
    assert shards["shard2"]["dsn"] == "postgresql://u:***@127.0.0.1:1/db"
    # The live map still says which slots are the down shard's.
    assert shards["shard2"]["slots"] > 0
    assert sum(s["slots"] for s in shards.values()) == 4096
    assert "shard2: unreachable" in done.stderr


# -- workflows ------------------------------------------------------------------------------


def test_workflows_list_pages_with_a_cursor(
    test_cluster: TestCluster, cluster: shardflow.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"wf-{i}" for i in range(5)]
    for workflow_id in ids:
        cluster.submit("some.name", workflow_id, workflow_id=workflow_id)
    cluster.submit("other.name", workflow_id="other-1")
    config = str(test_cluster.path)

    everything = run_json(capsys, "--config", config, "workflows", "list")
    assert sorted(w["workflow_id"] for w in everything["workflows"]) == sorted([*ids, "other-1"])
    assert everything["next_cursor"] is None

    filters = ("--name", "some.name", "--limit", "2")
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(3):
        page = run_json(capsys, "--config", config, "workflows", "list", *filters, *cursor)
        seen += [w["workflow_id"] for w in page["workflows"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)

    code, out, err = run_main(capsys, "--config", config, "workflows", "list", "--limit", "2")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("next cursor: ")
    assert sum("ENQUEUED" in line for line in out.splitlines()) == 2

    code, _, err = run_main(capsys, "--config", config, "workflows", "list", "--cursor", "junk")
    assert_one_line_error(code, err, "invalid cursor")


def test_workflows_show_cancel_and_resume(
    test_cluster: TestCluster, cluster: shardflow.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.submit("some.name", 1, workflow_id="{acct}:job")
    config = ("--config", str(test_cluster.path))

    shown = run_json(capsys, *config, "workflows", "show", "{acct}:job")
    assert shown["workflow_id"] == "{acct}:job"
    assert (shown["name"], shown["state"], shown["attempt"]) == ("some.name", "ENQUEUED", 0)
    assert shown["shard"] == cluster.route("{acct}:job")

    code, out, err = run_main(capsys, *config, "workflows", "show", "{acct}:job")
    assert code == 0, err
    assert "state" in out and "ENQUEUED" in out and "{acct}:job" in out

    code, out, err = run_main(
        capsys, *config, "workflows", "cancel", "{acct}:job", "--reason", "r1"
    )
    assert code == 0, err
    assert out.startswith("workflow {acct}:job: CANCELLED")
    assert cluster.get("{acct}:job").reason == "r1"
    # Cancelling again is harmless.
    assert run_json(capsys, *config, "workflows", "cancel", "{acct}:job")["state"] == "CANCELLED"

    cancelled = run_json(capsys, *config, "workflows", "list", "--state", "cancelled")
    assert [w["workflow_id"] for w in cancelled["workflows"]] == ["{acct}:job"]

    code, out, err = run_main(capsys, *config, "workflows", "resume", "{acct}:job")
    assert code == 0, err
    assert out.startswith("workflow {acct}:job: ENQUEUED")
    assert cluster.get("{acct}:job").state is shardflow.WorkflowState.ENQUEUED

    steps = run_json(capsys, *config, "workflows", "steps", "{acct}:job")
    assert steps == {"workflow_id": "{acct}:job", "steps": []}

    code, _, err = run_main(capsys, *config, "workflows", "show", "no-such-workflow")
    assert_one_line_error(code, err, "no-such-workflow", "not found")


# -- worker ---------------------------------------------------------------------------------


def test_worker_runs_workflows_and_stops_on_sigterm(
    test_cluster: TestCluster, cluster: shardflow.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = "worker --app tests.apps.cli_app:app --concurrency 4 --worker-id cli-worker-1"
    process = subprocess.Popen(
        cli_command("--config", str(test_cluster.path), "--log-level", "INFO", *worker.split()),
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        handles = [cluster.submit(cli_app.double_twice, n, workflow_id=f"n-{n}") for n in range(6)]
        wait_until(
            lambda: all(h.status().state is shardflow.WorkflowState.SUCCESS for h in handles),
            timeout=60,
            message="the worker to finish every workflow",
        )
        assert [h.result() for h in handles] == [4 * n for n in range(6)]

        steps = run_json(capsys, "--config", str(test_cluster.path), "workflows", "steps", "n-3")
        assert [(s["name"], s["output"], s["error"]) for s in steps["steps"]] == [
            ("double", 6, None),
            ("double", 12, None),
        ]

        # A finished workflow can be neither cancelled nor resumed.
        config = ("--config", str(test_cluster.path))
        code, _, err = run_main(capsys, *config, "workflows", "cancel", "n-3")
        assert_one_line_error(code, err, "cannot cancel", "SUCCESS")
        code, _, err = run_main(capsys, *config, "workflows", "resume", "n-3")
        assert_one_line_error(code, err, "SUCCESS", "cannot resume")

        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "worker cli-worker-1 starting" in err
    assert "Traceback" not in err


def test_worker_with_a_busy_metrics_port_says_so_in_one_line(test_cluster: TestCluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            *("--config", str(test_cluster.path), "worker", "--app", "tests.apps.cli_app:app"),
            *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
            timeout=60,
        )
    assert_one_line_error(done.returncode, done.stderr, f"--metrics-port {port}", "in use")


def test_worker_refuses_an_app_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    for spec, fragment in (
        ("tests.apps.cli_app:missing", "has no attribute 'missing'"),
        ("tests.apps.cli_app:not_an_app", "expected a shardflow.App, got str"),
        ("tests.apps.no_such_module:app", "no module named 'tests.apps.no_such_module'"),
        ("tests.apps.cli_app", "MODULE:ATTR"),
    ):
        code, _, err = run_main(capsys, "worker", "--app", spec)
        assert_one_line_error(code, err, fragment)
    code, _, err = run_main(capsys, "worker")
    assert_one_line_error(code, err, "--app", "SHARDFLOW_APP")


# -- dev ------------------------------------------------------------------------------------


def test_dev_up_status_down(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    try:
        up = run_cli("dev", "up", "--shards", "2", "--dir", str(directory), timeout=300)
        assert up.returncode == 0, up.stderr
        config = up.stdout.strip().splitlines()[-1]
        assert config == str(directory / "cluster.yaml")
        assert Path(config).is_file()

        status = run_cli("dev", "status", "--dir", str(directory), "--json")
        assert status.returncode == 0, status.stderr
        servers = json.loads(status.stdout)["servers"]
        assert [(s["name"], s["running"]) for s in servers] == [
            ("shard0", True),
            ("shard1", True),
        ]

        shown = run_cli("--config", config, "topology", "show", "--json")
        assert shown.returncode == 0, shown.stderr
        shards = json.loads(shown.stdout)["shards"]
        assert [s["reachable"] for s in shards] == [True, True]
        assert sum(s["slots"] for s in shards) == 4096

        down = run_cli("dev", "down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert "stopped 2 server(s)" in down.stdout
        after = json.loads(run_cli("dev", "status", "--dir", str(directory), "--json").stdout)
        assert [s["running"] for s in after["servers"]] == [False, False]
    finally:
        LocalCluster(directory).destroy()
