"""The one identity check, and the one way to open a connection outside the pool: how it
fails (no database needed: libpq refuses these before any network I/O)."""

from __future__ import annotations

import threading

import pytest

from shardflow.config import parse
from shardflow.config.model import ShardConfig
from shardflow.engine import connect
from shardflow.errors import IdentityMismatch, ShardflowError, ShardUnavailable
from shardflow.router.pools import MIGRATOR_LIMITS, REBALANCER_LIMITS, connect_kwargs, dedicated
from shardflow.sql.identity import Identity, check_identity

CONFIG = parse(
    """
name: prod
hash: {slots: 1024, seed: 7}
shards:
  - {name: a, dsn: "postgresql://u@h1/db"}
  - {name: b, dsn: "postgresql://u@h2/db"}
"""
)


def test_the_identity_the_config_gives_a_shard_passes() -> None:
    check_identity(CONFIG, "a", Identity("prod", "a", 1024, 7))


@pytest.mark.parametrize(
    ("identity", "what"),
    [
        (Identity("staging", "a", 1024, 7), "cluster name is 'prod' in the config but 'staging'"),
        (Identity("prod", "b", 1024, 7), "shard name is 'a' in the config but 'b'"),
        (Identity("prod", "a", 4096, 7), "hash.slots is 1024 in the config but 4096"),
        (Identity("prod", "a", 1024, 0), "hash.seed is 7 in the config but 0"),
    ],
)
def test_each_identity_field_that_differs_is_refused(identity: Identity, what: str) -> None:
    with pytest.raises(IdentityMismatch, match=what):
        check_identity(CONFIG, "a", identity)


def test_a_shard_without_identity_is_refused_with_the_fix() -> None:
    with pytest.raises(IdentityMismatch, match="run `shardflow migrate` first"):
        check_identity(CONFIG, "a", None)


def test_identity_reads_a_row() -> None:
    assert Identity.from_row(("prod", "a", "1024", 7)) == Identity("prod", "a", 1024, 7)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://user:s3cr%zzet@localhost/db",  # a bad percent-escape in the password
        "host=localhost password='s3cr%zzet",  # an unterminated quote
        "host=localhost password=s3cr%zzet nosuchoption=1",
    ],
)
def test_a_malformed_dsn_fails_as_unavailable_without_its_password(dsn: str) -> None:
    shard = ShardConfig(name="a", dsn=dsn)
    with pytest.raises(ShardUnavailable) as caught:
        dedicated(shard, "test", REBALANCER_LIMITS).close()
    error = caught.value
    assert error.shard == "a"
    assert error.reason.startswith("invalid DSN: ")
    assert "s3cr" not in str(error) and "zzet" not in str(error)
    assert error.__cause__ is None and error.__suppress_context__


def test_session_limits_become_connection_options() -> None:
    rebalancer = connect_kwargs(REBALANCER_LIMITS)
    assert rebalancer["options"] == (
        "-c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000"
    )
    assert rebalancer["keepalives"] == 1 and rebalancer["tcp_user_timeout"] == 10_000
    migrator = connect_kwargs(MIGRATOR_LIMITS)
    assert "options" not in migrator  # no session timeouts: index builds take long
    assert migrator["tcp_user_timeout"] == 60_000 and migrator["keepalives_idle"] == 10


def test_a_client_that_cannot_reach_any_shard_fails_and_leaves_no_thread_behind() -> None:
    # Port 1 on loopback: nothing listens, every connection is refused at once.
    config = parse(
        "name: c\nshards:\n"
        "  - {name: s0, dsn: 'postgresql://u:pw1secret@127.0.0.1:1/db?connect_timeout=2'}\n"
        "  - {name: s1, dsn: 'host=127.0.0.1 port=1 dbname=db connect_timeout=2'}\n"
    )
    before = set(threading.enumerate())
    with pytest.raises(ShardflowError) as caught:
        connect(config, retry_seconds=0.5)
    assert "pw1secret" not in str(caught.value)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
