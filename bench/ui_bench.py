"""How fast the dashboard renders with a large cluster: ``python -m bench.ui_bench``.

Loads ``--workflows`` (default 1,000,000) workflow rows over 3 local shards, each row
routed to the shard that owns its ID's slot (COPY straight into ``workflow_status``: a
realistic mix of states, 20 workflow names, 3 queues, creation times over 30 days), then
times full HTTP responses of the dashboard through its ASGI app (Starlette's TestClient,
no network): the overview, the workflow list with each kind of filter, the failures page
and a workflow page. Target: each under 300 ms. Prints one line per page (median and
worst of ``--rounds``) and the query plan of the filtered listing on one shard.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import psycopg

from shardflow.engine.cluster import Cluster
from shardflow.sql import query
from shardflow.testing.servers import ClusterFactory, start_servers

TARGET_MS = 300.0
NAMES = [f"app.task_{i:02d}" for i in range(20)]
QUEUES = ["default", "emails", "reports"]
# (state, share): mostly finished work, some failures, a backlog.
STATES = [
    ("SUCCESS", 0.80),
    ("ERROR", 0.06),
    ("DEAD", 0.01),
    ("CANCELLED", 0.03),
    ("ENQUEUED", 0.07),
    ("SUSPENDED", 0.03),
]
ERRORS = ["ValueError", "TimeoutError", "KeyError", "ConnectionError"]


def load(cluster: Cluster, total: int, seed: int = 7) -> dict[str, int]:
    """COPY ``total`` workflow rows into the shards; returns rows per shard."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    states = [s for s, _ in STATES]
    weights = [w for _, w in STATES]
    by_shard: dict[str, list[tuple[object, ...]]] = {n: [] for n in cluster.config.shard_names}
    for i in range(total):
        workflow_id = f"wf-{i:08d}"
        route_hash, slot, shard = cluster.router.locate(workflow_id)
        state = rng.choices(states, weights)[0]
        created = now - timedelta(seconds=rng.random() * 30 * 86400)
        finished = created + timedelta(seconds=rng.random() * 60)
        ended = state in ("SUCCESS", "ERROR", "DEAD", "CANCELLED")
        error = None
        if state in ("ERROR", "DEAD"):
            kind = rng.choice(ERRORS)
            error = json.dumps({"type": kind, "message": f"{kind} in step {i % 7}"})
        by_shard[shard].append(
            (
                workflow_id,
                slot,
                route_hash,
                rng.choice(NAMES),
                rng.choice(QUEUES),
                state,
                '{"args":[1],"kwargs":{}}',
                '{"ok":true}' if state == "SUCCESS" else None,
                error,
                1 if state != "ENQUEUED" else 0,
                created,
                finished if ended else created,
                finished if ended else None,
            )
        )
    columns = (
        "workflow_id, slot, route_hash, name, queue, state, inputs, output, error, attempt,"
        " created_at, updated_at, finished_at"
    )
    for shard, rows in by_shard.items():
        dsn = cluster.config.shard(shard).dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY shardflow.workflow_status ({columns}) FROM STDIN"  # fixed text
                ) as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            # As autovacuum leaves a table whose rows are mostly old: statistics, and
            # the visibility map that lets counts read indexes only. (The first pass
            # right after the load does not mark the pages all-visible; the second does.)
            conn.execute("VACUUM (ANALYZE) shardflow.workflow_status")
            conn.execute("VACUUM shardflow.workflow_status")
    return {shard: len(rows) for shard, rows in by_shard.items()}


def time_pages(cluster: Cluster, rounds: int) -> list[tuple[str, float, float, int]]:
    from starlette.testclient import TestClient

    from shardflow.ui import create_app

    client = TestClient(create_app(cluster))
    day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    pages = [
        ("overview", "/"),
        ("list, no filter", "/workflows"),
        ("list, state=ERROR", "/workflows?state=ERROR"),
        ("list, state=DEAD name=app.task_03", "/workflows?state=DEAD&name=app.task_03"),
        ("list, queue=emails state=ENQUEUED", "/workflows?queue=emails&state=ENQUEUED"),
        ("list, id prefix wf-0012", "/workflows?id_prefix=wf-0012"),
        ("list, created in the last day", "/workflows?" + urlencode({"created_after": day_ago})),
        ("list, parent (none match)", "/workflows?parent_id=nobody"),
        ("failures", "/failures"),
        ("workflow page", "/workflow?id=wf-00000042"),
    ]
    results = []
    for label, path in pages:
        reply = client.get(path)  # warm: pools, plans, caches
        assert reply.status_code == 200, (label, reply.status_code, reply.text[:300])
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            reply = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert reply.status_code == 200
        rows = reply.text.count('class="wf ')
        results.append((label, statistics.median(times), max(times), rows))
    return results


def explain(cluster: Cluster) -> str:
    shard = cluster.config.shard_names[0]
    params = {
        "state": "DEAD",
        "name": "app.task_03",
        "queue": None,
        "id_like": None,
        "created_after": None,
        "created_before": None,
        "parent_id": None,
        "after_created": None,
        "after_id": None,
        "limit": 50,
    }
    with psycopg.connect(cluster.config.shard(shard).dsn) as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) " + query("admin_list_workflows"), params
        ).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    with start_servers(3) as dsns, tempfile.TemporaryDirectory() as workdir:
        factory = ClusterFactory(dsns, Path(workdir))
        made = factory.make(3, extra={"queues": {q: {} for q in QUEUES}})
        try:
            with Cluster(made.config) as cluster:
                started = time.perf_counter()
                counts = load(cluster, args.workflows)
                print(
                    f"loaded {sum(counts.values()):,} workflows in"
                    f" {time.perf_counter() - started:.0f}s: "
                    + ", ".join(f"{s} {n:,}" for s, n in counts.items())
                )
                results = time_pages(cluster, args.rounds)
                print(f"{'page':40} {'median ms':>10} {'max ms':>8} {'rows':>5}")
                for label, median, worst, rows in results:
                    flag = "" if median < TARGET_MS else "  OVER TARGET"
                    print(f"{label:40} {median:10.1f} {worst:8.1f} {rows:5d}{flag}")
                print("\nplan of the filtered listing on one shard (state=DEAD name=...):")
                print(explain(cluster))
                over = [r for r in results if r[1] >= TARGET_MS]
        finally:
            factory.drop(made)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
