"""A workflow scheduled every second, for the schedule test."""

from __future__ import annotations

import shardflow
from shardflow.demo.app import record_effect

app = shardflow.App("ticker")


@app.workflow(name="ticker.tick", schedule="* * * * * *")
def tick(at: str) -> str:
    record_effect(f"tick:{at}")
    return at
