"""The flow-control options of a queue in the YAML (docs/queues.md#flow-control)."""

from __future__ import annotations

import pytest

from shardflow.config import parse
from shardflow.errors import ConfigError

BASE = "name: c\nshards:\n  - {name: s0, dsn: host=db0}\nqueues:\n  tenants:\n"


def test_key_concurrency_is_read() -> None:
    config = parse(BASE + "    key_concurrency: 2\n", env={})
    assert config.queues["tenants"].key_concurrency == 2
    assert config.queues["default"].key_concurrency is None


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("0", "must be > 0, got 0"),
        ("-3", "must be > 0, got -3"),
        ("two", "must be an integer"),
        ("1.5", "must be an integer"),
        ("[1]", "must be an integer"),
    ],
)
def test_bad_key_concurrency_is_one_line(value: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(BASE + f"    key_concurrency: {value}\n", env={})
    error = caught.value
    assert error.path == "queues.tenants.key_concurrency"
    assert error.line == 6
    assert detail in error.detail
    assert "\n" not in str(error)


def test_unknown_queue_key_names_the_new_one() -> None:
    with pytest.raises(ConfigError, match="key_concurrency"):
        parse(BASE + "    per_key: 1\n", env={})


def test_key_rate_limit_is_read_and_checked() -> None:

    base = "name: c\nshards:\n  - {name: s0, dsn: 'postgresql://h/d'}\nqueues:\n  t:\n"
    config = parse(base + "    key_rate_limit: {limit: 5, period_seconds: 2.5}\n")
    rate = config.queues["t"].key_rate_limit
    assert rate is not None and rate.pair() == (5, 2.5) and config.queues["t"].keyed
    assert not config.queues["default"].keyed
    with pytest.raises(ConfigError, match=r"queues\.t\.key_rate_limit\.limit"):
        parse(base + "    key_rate_limit: {limit: 0, period_seconds: 1}\n")
    with pytest.raises(ConfigError, match=r"key_rate_limit\.period_seconds"):
        parse(base + "    key_rate_limit: {limit: 1}\n")
