"""``<<`` merge keys and aliases: each node read once, total work bounded (defect 17)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from shardflow.config import ClusterConfig, loader, parse
from shardflow.errors import ConfigError

HEAD = ["name: c", "shards: [{name: s0, dsn: 'host=h dbname=d'}]"]


def _bomb(depth: int) -> str:
    """``worker`` merges levels 0..depth; level k merges level k-1 twice: 2**depth paths."""
    lines = [*HEAD, "worker:", "  <<:", "    - &l0 {concurrency: 7}"]
    lines += [f"    - &l{k} {{<<: [*l{k - 1}, *l{k - 1}]}}" for k in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def _count_mapping_calls(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """Counts calls of the walker's mapping reader; fails fast past ``limit``."""
    calls = [0]
    original: Callable[..., Any] = loader._Walker._mapping

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > limit:
            raise AssertionError(f"more than {limit} mapping reads: the walk is not memoised")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loader._Walker, "_mapping", counted)
    return calls


def test_defect17_merge_key_bomb_reads_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    depth = 30
    calls = _count_mapping_calls(monkeypatch, limit=10 * depth)
    result: list[ClusterConfig | BaseException] = []

    def load() -> None:
        try:
            result.append(parse(_bomb(depth)))
        except BaseException as exc:  # handed to the test thread below
            result.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a deadline, not a measurement: ~1 ms when memoised

    assert not worker.is_alive(), "loading a 30-level merge bomb did not finish"
    if isinstance(result[0], BaseException):
        raise result[0]
    assert result[0].worker.concurrency == 7
    assert calls[0] <= depth + 10  # one read per level, plus the top-level sections


def test_defect17_document_expanding_beyond_the_limit_is_refused() -> None:
    names = [f"q{i}" for i in range(1000)]
    queues = ", ".join(f"{name}: {{}}" for name in names)
    many = ", ".join("*qs" for _ in range(loader.MAX_MAPPING_WORK // len(names) + 1))
    # The anchor lives where the schema allows a mapping: as the first merge source.
    text = "\n".join([*HEAD, f"queues: {{<<: [&qs {{{queues}}}, {many}]}}"]) + "\n"

    with pytest.raises(ConfigError) as caught:
        parse(text)

    assert caught.value.path == "queues"
    assert f"more than {loader.MAX_MAPPING_WORK} mapping entries" in str(caught.value)


def test_defect17_mapping_merging_itself_is_refused() -> None:
    text = "\n".join([*HEAD, "worker: &w {concurrency: 2, <<: *w}"]) + "\n"

    with pytest.raises(ConfigError) as caught:
        parse(text)

    assert caught.value.path == "worker"
    assert "includes the mapping that holds it" in str(caught.value)


def test_merged_anchor_used_by_two_sections_keeps_explicit_keys_first() -> None:
    text = "\n".join(
        [
            *HEAD,
            "queues:",
            "  a: &base {concurrency: 4, worker_concurrency: 2}",
            "  b: {<<: *base, concurrency: 9}",
            "  c: {<<: *base}",
        ]
    )

    config = parse(text + "\n")

    assert (config.queues["b"].concurrency, config.queues["b"].worker_concurrency) == (9, 2)
    assert (config.queues["c"].concurrency, config.queues["c"].worker_concurrency) == (4, 2)
