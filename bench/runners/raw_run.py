"""The ceiling: a bare psycopg ``INSERT`` + ``COMMIT`` loop, on 1 or more threads.

Each commit inserts one row shaped like a step checkpoint (id, step number, a small JSON
text) into a table with a primary key, on its own autocommit connection per thread.
No engine does less work per durable write than this from Python.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import psycopg

from bench.runners.common import Spec, main

TABLE = """
CREATE TABLE IF NOT EXISTS raw_commits (
    workflow_id text        NOT NULL,
    step_no     integer     NOT NULL,
    output      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, step_no)
)
"""
INSERT = "INSERT INTO raw_commits (workflow_id, step_no, output) VALUES (%s, %s, %s)"


def setup(spec: Spec) -> dict[str, Any]:
    with psycopg.connect(spec["dsn"], autocommit=True) as conn:
        conn.execute(TABLE)
    return {}


def commits(spec: Spec) -> dict[str, Any]:
    """``threads`` threads each commit single-row inserts for ``seconds``."""
    threads: int = spec["threads"]
    seconds: float = spec["seconds"]
    counts = [0] * threads
    conns = [psycopg.connect(spec["dsn"], autocommit=True) for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(n: int) -> None:
        conn = conns[n]
        output = json.dumps({"k": 0, "t": 0.0})
        start.wait()
        i = 0
        while not stop.is_set():
            conn.execute(INSERT, (f"t{n}-{i}", 0, output))
            i += 1
        counts[n] = i

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    start.wait()
    began, began_cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - began_cpu
    for conn in conns:
        conn.close()
    return {"commits": sum(counts), "seconds": elapsed, "cpu_seconds": cpu}


if __name__ == "__main__":
    sys.exit(main({"setup": setup, "commits": commits}))
