"""Where a shardflow worker spends its CPU: py-spy on the end-to-end drain (row 1).

    python -m bench.profile                      # 3,000 workflows x 3 steps, one worker
    python -m bench.profile --steps 10 --gil     # only samples holding the GIL

Starts one local PostgreSQL server (durable settings, as the benchmark), submits the
workflows, then runs the same drain runner as row 1 with ``py-spy record`` attached once it
is connected (all threads, idle ones excluded, non-blocking sampling, so start-up is not
sampled) and prints the functions with the most samples:
by own time (the frame on top of the stack) and by inclusive time, plus own time grouped by
file. The raw collapsed stacks are kept for flame graphs (``--keep DIR``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.servers import BenchServers
from bench.workloads import Bench, Plan


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """``frame;frame;frame count`` lines (py-spy ``--format raw``), outermost frame first."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _file_of(frame: str) -> str:
    # "function (path/to/file.py)" or "function (file.py:123)".
    start = frame.rfind("(")
    return frame[start + 1 : -1].split(":")[0] if start >= 0 else frame


def hotspots(
    stacks: list[tuple[list[str], int]], top: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples; top frames by own samples, by inclusive samples; own samples by file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        # The thread's name is py-spy's outermost "frame" with --threads; skip bootstrap.
        total += count
        own[frames[-1]] += count
        files[_file_of(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own.most_common(top), inclusive.most_common(top), files.most_common(top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--workflows", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, help="worker concurrency (config default)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", type=Path, help="keep the collapsed stacks in this directory")
    args = parser.parse_args(argv)

    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shardflow-profile-") as tmp:
        workdir = Path(tmp)
        (workdir / "runs").mkdir()
        with BenchServers(1, directory=workdir) as servers:
            bench = Bench(servers, workdir / "runs", Plan())
            config = bench.shardflow_cluster("profile", [0])
            bench.run(
                "shardflow_run",
                "submit",
                {"config": config, "count": args.workflows, "steps": args.steps, "batch": 500},
            )
            out = (args.keep or workdir) / f"profile-{args.steps}steps.collapsed"
            out.parent.mkdir(parents=True, exist_ok=True)
            spec = {
                "config": config,
                "count": args.workflows,
                "concurrency": args.concurrency,
                "go": True,
            }
            # Attach once the runner has imported and connected, so that start-up does not
            # show up among the samples; py-spy stops when the runner exits.
            runner = bench.runner("shardflow_run", "drain", spec)
            runner.wait_ready()
            spy_proc = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(runner.pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(args.rate),
                    "--nonblocking",
                    "--function",
                    "--output",
                    str(out),
                    *(["--gil"] if args.gil else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # py-spy needs a moment to attach
            runner.go()
            drained = runner.result()
            _, spy_err = spy_proc.communicate(timeout=60)
            if not out.exists():
                print(f"py-spy wrote no profile: {spy_err[-2000:]}", file=sys.stderr)
                return 1
            total, own, inclusive, files = hotspots(
                parse_collapsed(out.read_text(encoding="utf-8")), args.top
            )

    rate = drained["workflows"] / drained["seconds"]
    cpu_ms = drained["cpu_seconds"] / drained["workflows"] * 1e3
    print(
        f"{drained['workflows']} workflows x {args.steps} steps: {rate:,.0f} workflows/s,"
        f" {cpu_ms:.2f} ms worker CPU per workflow (under the profiler);"
        f" {total} samples ({'GIL held' if args.gil else 'non-idle threads'})"
    )
    for title, rows in (
        ("own samples (top of stack)", own),
        ("inclusive samples", inclusive),
        ("own samples by file", files),
    ):
        print(f"\n{title}:")
        for frame, count in rows:
            print(f"  {count / total:6.1%}  {frame}")
    if args.keep:
        print(f"\ncollapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
