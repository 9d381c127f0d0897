"""A tiny app for the CLI end-to-end tests: ``shardflow worker --app tests.apps.cli_app:app``."""

from __future__ import annotations

import shardflow

app = shardflow.App("cli-test")


@app.step()
def double(n: int) -> int:
    return n * 2


@app.workflow(name="cli.double")
def double_twice(n: int) -> int:
    return double(double(n))


not_an_app = "not an App"
