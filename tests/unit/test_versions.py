"""The app version a worker records: explicit, the package version, or a code hash."""

from __future__ import annotations

import importlib.metadata

import pytest
import yaml

import shardflow
from shardflow.engine.versions import app_version, code_hash


def test_an_explicit_version_wins() -> None:
    app = shardflow.App("explicit", version="2026.12.1")
    assert app_version(app) == "2026.12.1"
    with pytest.raises(ValueError, match="non-empty"):
        shardflow.App("blank", version=" ")


def test_the_package_version_of_the_workflow_modules() -> None:
    # A workflow whose module belongs to an installed distribution (PyYAML here).
    app = shardflow.App("packaged")
    app.workflow(name="load")(yaml.safe_load)
    assert app_version(app) == importlib.metadata.version("PyYAML")


def test_otherwise_a_hash_of_the_workflow_code() -> None:
    def first(x: int) -> int:
        return x + 1

    def second(x: int) -> int:
        return x + 2

    one, same, other = shardflow.App("a"), shardflow.App("b"), shardflow.App("c")
    one.workflow(name="wf")(first)
    same.workflow(name="wf")(first)
    other.workflow(name="wf")(second)
    # tests/ is no installed distribution: the version is the code's hash.
    assert app_version(one) == code_hash(one)
    assert app_version(one).startswith("code-") and len(app_version(one)) == 17
    assert code_hash(one) == code_hash(same)
    assert code_hash(one) != code_hash(other)
