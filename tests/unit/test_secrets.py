"""DSN secrets never reach output: config validation, redaction, the CLI's error line.

No database: the DSNs point at 127.0.0.1:1, where nothing listens, or cannot be parsed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from shardflow.cli import workflows
from shardflow.cli.main import main
from shardflow.cli.options import load_config
from shardflow.config import parse, redact_dsn, scrub_dsns
from shardflow.config.redaction import dsn_secrets
from shardflow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RAW_SECRET = "p%zzrawsecret"  # a raw % that is no percent-encoding: libpq cannot parse it
SSL_SECRET = "sslsecretpw"
ENCODED_SECRET = "enc@secret:pw"  # written percent-encoded in the URL
ENCODED = "enc%40secret%3Apw"
SECRETS = (RAW_SECRET, SSL_SECRET, ENCODED_SECRET, ENCODED, "rawsecret", "secretpw")

COMMANDS = (["check-config"], ["workflows", "list"], ["status"], ["rebalance", "status"])


def _yaml(*dsns: str) -> str:
    shards = "".join(f"  - name: s{i}\n    dsn: '{dsn}'\n" for i, dsn in enumerate(dsns))
    return f"name: c\nshards:\n{shards}"


BAD_CONFIG = _yaml(
    f"host=127.0.0.1 port=1 dbname=db sslpassword={SSL_SECRET}",
    f"postgresql://u:{RAW_SECRET}@127.0.0.1:1/db",
)
# Valid, but unreachable: the connection errors must not carry the secrets either.
UNREACHABLE_CONFIG = _yaml(
    f"host=127.0.0.1 port=1 dbname=db sslpassword={SSL_SECRET} connect_timeout=3",
    f"postgresql://u:{ENCODED}@127.0.0.1:1/db?sslpassword={SSL_SECRET}x&connect_timeout=3",
)


@pytest.fixture(autouse=True)
def _no_option_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SHARDFLOW_") and not name.startswith("SHARDFLOW_TEST"):
            monkeypatch.delenv(name)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} printed:\n{text}"


# -- config validation -------------------------------------------------------------------


def test_defect08_percent_in_password_is_a_config_error_naming_the_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(BAD_CONFIG)

    assert caught.value.path == "shards[1].dsn"
    assert "percent-encode" in str(caught.value)
    _assert_no_secret(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_defect08_unparseable_dsn_from_the_environment_is_refused_without_its_secret() -> None:
    text = "name: c\nshards:\n  - {name: s0, dsn_env: S0_DSN}\n"
    with pytest.raises(ConfigError) as caught:
        parse(text, env={"S0_DSN": f"host=h password='{RAW_SECRET}"})  # unterminated quote

    assert caught.value.path == "shards[0].dsn_env"
    _assert_no_secret(str(caught.value))


# -- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("host=h sslpassword=sslsecretpw", "host=h sslpassword=***"),
        ("host=h password='a b' sslpassword = 'c\\'d'", "host=h password=*** sslpassword = ***"),
        ("host=h PassWord=x dbname=db", "host=h PassWord=*** dbname=db"),
        (f"postgresql://u:{ENCODED}@h/db", "postgresql://u:***@h/db"),
        (f"postgresql://u:{RAW_SECRET}@h/db", "postgresql://u:***@h/db"),
        (
            f"postgresql://u@h/db?sslpassword={SSL_SECRET}&password=x%40y&sslmode=require",
            "postgresql://u@h/db?sslpassword=***&password=***&sslmode=require",
        ),
    ],
)
def test_defect08_redact_dsn_masks_every_password_parameter(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_defect08_secrets_of_a_dsn_include_decoded_and_unparseable_forms() -> None:
    assert {ENCODED, ENCODED_SECRET} <= dsn_secrets(f"postgresql://u:{ENCODED}@h/db")
    assert RAW_SECRET in dsn_secrets(f"postgresql://u:{RAW_SECRET}@h/db")
    assert "c'd" in dsn_secrets("host=h sslpassword='c\\'d'")
    assert SSL_SECRET in dsn_secrets(f"postgresql://h/db?sslpassword={SSL_SECRET}")


def test_defect08_scrub_masks_secrets_of_given_and_unknown_dsns() -> None:
    dsns = [
        f"postgresql://u:{ENCODED}@h/db",
        f"host=h sslpassword={SSL_SECRET}",
        f"postgresql://u:{RAW_SECRET}@h/db",
    ]
    message = (
        f'invalid percent-encoded token: "{RAW_SECRET}" / {ENCODED_SECRET} / {SSL_SECRET} /'
        f" postgresql://v:{RAW_SECRET}@other/db / sslpassword={RAW_SECRET}"
    )
    scrubbed = scrub_dsns(message, dsns)
    _assert_no_secret(scrubbed)
    assert "postgresql://v:***@other/db" in scrubbed


# -- the command line --------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_defect08_percent_in_password_never_printed(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(BAD_CONFIG, encoding="utf-8")

    status = main(["--config", str(path), *command])

    out, err = capsys.readouterr()
    assert status != 0
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("shardflow: error: ")
    assert "shards[1].dsn" in err
    _assert_no_secret(out + err)


@pytest.mark.parametrize("command", COMMANDS[1:], ids=" ".join)
def test_defect08_sslpassword_and_encoded_password_never_printed(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(UNREACHABLE_CONFIG, encoding="utf-8")

    status = main(["--config", str(path), *command])

    out, err = capsys.readouterr()
    assert status != 0
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("shardflow: error: ") or command[0] == "rebalance"
    _assert_no_secret(out + err)

    # DEBUG logs tracebacks: scrubbed too.
    status = main(["--log-level", "DEBUG", "--config", str(path), *command])

    out, err = capsys.readouterr()
    assert status != 0
    _assert_no_secret(out + err)


def test_defect08_check_config_masks_sslpassword_and_encoded_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(UNREACHABLE_CONFIG, encoding="utf-8")

    assert main(["--config", str(path), "check-config"]) == 0

    out, err = capsys.readouterr()
    assert "sslpassword=***" in out
    _assert_no_secret(out + err)


def test_defect08_driver_error_is_one_scrubbed_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(UNREACHABLE_CONFIG, encoding="utf-8")

    def leak(args: argparse.Namespace) -> int:
        load_config(args)  # as every command does first
        raise psycopg.ProgrammingError(f'invalid token: "{ENCODED_SECRET}" sslpassword=zzzz')

    monkeypatch.setattr(workflows, "run", leak)  # `register` reads it when main() runs

    status = main(["--config", str(path), "workflows", "list"])

    out, err = capsys.readouterr()
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("shardflow: error: psycopg.ProgrammingError: ")
    assert "zzzz" not in err
    _assert_no_secret(out + err)


def test_defect08_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(BAD_CONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    env["PYTHONPATH"] = str(ROOT)

    done = subprocess.run(
        [sys.executable, "-m", "shardflow", "--config", str(path), "workflows", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    _assert_no_secret(done.stdout + done.stderr)
