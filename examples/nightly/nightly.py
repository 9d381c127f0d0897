"""A schedule: workers start ``reports.tick`` once per cron tick (here: every 2 seconds,
6 fields with seconds last), under the same ID whichever worker submits it."""

import shardflow

app = shardflow.App("nightly")


@app.workflow(name="reports.tick", schedule="* * * * * */2")
def report(tick: str) -> str:  # tick: "2026-01-02T03:00:02+00:00"
    return f"report for {tick}"
