"""``shardflow bench``: the benchmark harness of a source checkout (``bench/``), as a command.

A thin front: the options are checked here, then handed to ``python -m bench``, which
starts its own local PostgreSQL servers (``--config`` is not used), runs shardflow, DBOS
Transact, PgQueuer and a raw psycopg loop side by side, prints the table and writes JSON
under ``bench/results/``. The harness is not part of the installed package, so the command
needs the checkout next to it (an editable install); see docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_option,
    name_list,
    positive_float,
    positive_int,
)

SYSTEMS = ("shardflow", "dbos", "pgqueuer", "raw")
ROWS = ("1", "2", "3", "4", "5", "6", "7")
_HARNESS = "bench.harness"


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "bench",
        help="benchmark shardflow against DBOS Transact, PgQueuer and raw psycopg",
        description=(
            "Start local PostgreSQL servers and run every benchmark row for every system"
            " (needs a source checkout; pip install -e '.[bench]' for DBOS and PgQueuer)."
            " Prints medians and ratios; writes bench/results/<timestamp>.json."
        ),
    )
    add_option(parser, "--quick", flag=True, help="small N and 1 round: a smoke run")
    add_option(parser, "--rounds", type=positive_int, help="rounds per case (default 3)")
    add_option(
        parser,
        "--only",
        type=_systems,
        metavar="A,B",
        help=f"systems to run (default all: {','.join(SYSTEMS)})",
    )
    add_option(parser, "--rows", type=_rows, metavar="1,2", help="rows 1-7 to run (default all)")
    add_option(
        parser,
        "--clients",
        type=_counts,
        metavar="1,16",
        help="row 7's client counts (default 1,16,64)",
    )
    add_option(
        parser, "--results-dir", metavar="DIR", help="where the JSON goes (default bench/results)"
    )
    add_option(
        parser,
        "--workdir",
        metavar="DIR",
        help="keep server data, configs and runner logs here (default: a temporary directory)",
    )
    # Not --lease-seconds: SHARDFLOW_LEASE_SECONDS set for workers must not change the row.
    add_option(
        parser,
        "--recovery-lease-seconds",
        type=positive_float,
        metavar="S",
        help="worker lease in the recovery row (default 5)",
    )
    add_option(
        parser,
        "--shardflow-concurrency",
        type=positive_int,
        metavar="N",
        help="shardflow worker concurrency (default: the config default)",
    )
    add_option(
        parser,
        "--dbos-polling-seconds",
        type=positive_float,
        metavar="S",
        help="DBOS queue polling interval (default 0.05)",
    )
    parser.set_defaults(run=run)


def _systems(text: str) -> list[str]:
    names = name_list(text)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}"
        )
    return names


def _rows(text: str) -> list[str]:
    rows = name_list(text)
    wrong = [r for r in rows if r not in ROWS]
    if wrong:
        raise argparse.ArgumentTypeError(f"rows are 1 to 7; got {', '.join(wrong)}")
    return rows


def _counts(text: str) -> list[str]:
    counts = name_list(text)
    if not all(c.isdigit() and int(c) >= 1 for c in counts):
        raise argparse.ArgumentTypeError(f"client counts are whole numbers >= 1; got {text!r}")
    return counts


def harness_argv(args: argparse.Namespace) -> list[str]:
    """The ``python -m bench`` command line equivalent to ``args``."""
    argv: list[str] = ["--quick"] if args.quick else []
    if args.only:
        argv += ["--only", ",".join(args.only)]
    if args.rows:
        argv += ["--rows", ",".join(args.rows)]
    if args.clients:
        argv += ["--clients", ",".join(args.clients)]
    for flag, value in (
        ("--rounds", args.rounds),
        ("--results-dir", args.results_dir),
        ("--workdir", args.workdir),
        ("--lease-seconds", args.recovery_lease_seconds),
        ("--shardflow-concurrency", args.shardflow_concurrency),
        ("--dbos-polling-seconds", args.dbos_polling_seconds),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def load_harness() -> Callable[[Sequence[str]], int]:
    """``bench.harness.main`` from the checkout that holds this package."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "harness.py").is_file():
        raise CliError(
            f"no benchmark harness next to {checkout / 'shardflow'}: shardflow bench runs"
            " bench/ of a source checkout (git clone, then pip install -e '.[bench]')"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    module = importlib.import_module(_HARNESS)
    return cast("Callable[[Sequence[str]], int]", module.main)


def run(args: argparse.Namespace) -> int:
    main = load_harness()
    return main(harness_argv(args))
