"""``shardflow [--config FILE] [--log-level LEVEL] <command> ...``: parse, run, report.

Errors a user can fix (:class:`~shardflow.errors.ShardflowError`, bad values, a missing
``--config``) print one line, ``shardflow: error: ...``, and exit with status 2; Ctrl-C
exits with 130. Only this module configures logging handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from shardflow import __version__
from shardflow.cli import (
    bench,
    check_config,
    demo,
    dev,
    migrate,
    rebalance,
    route,
    status,
    topology,
    worker,
    workflows,
)
from shardflow.cli.logs import make_handler
from shardflow.cli.options import CliError, add_global_options
from shardflow.cli.output import scrub_secrets
from shardflow.config import ClusterConfig
from shardflow.errors import ShardflowError

log = logging.getLogger(__name__)

PROG = "shardflow"
COMMANDS = (
    check_config,
    migrate,
    route,
    topology,
    status,
    workflows,
    worker,
    rebalance,
    dev,
    demo,
    bench,
)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DRIVER_LOGGER = "psycopg"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Durable workflows on sharded PostgreSQL.",
        epilog="Every option can also be set with the SHARDFLOW_* variable shown in its help.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_global_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = argparse.Namespace()
    try:
        args = build_parser().parse_args(argv)
        with _logging_to_stderr(args.log_level, args.log_format, lambda: _dsns(args)):
            status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ShardflowError, ValueError, CliError) as exc:
        _report(exc, getattr(args, "cluster_config", None))
        return EXIT_USAGE
    except BrokenPipeError:
        # `shardflow workflows list | head`: the reader left; nothing more to say to it.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dsns(args: argparse.Namespace) -> list[str]:
    config: ClusterConfig | None = getattr(args, "cluster_config", None)
    return [] if config is None else [shard.dsn for shard in config.shards]


def _report(exc: BaseException, config: ClusterConfig | None) -> None:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " ".join(lines) or type(exc).__name__
    if config is not None:
        message = scrub_secrets(message, [shard.dsn for shard in config.shards])
    print(f"{PROG}: error: {message}", file=sys.stderr)


@contextlib.contextmanager
def _logging_to_stderr(
    level: str, log_format: str, dsns: Callable[[], list[str]]
) -> Iterator[None]:
    """Log to stderr at ``level``, as text or JSON lines, while the command runs.

    Like ``logging.basicConfig(stream=sys.stderr)``, but undone afterwards, so that
    calling :func:`main` in a process that logs on its own (tests) leaves it as it was.
    ``dsns`` gives the secrets to redact (the config is loaded after this starts).
    """
    root = logging.getLogger()
    driver = logging.getLogger(_DRIVER_LOGGER)
    handler = make_handler(sys.stderr, log_format, dsns)
    previous = root.level, driver.level
    root.addHandler(handler)
    root.setLevel(level)
    if level != "DEBUG":
        # The pool logs every failed reconnect (several lines each, many per second);
        # shardflow's own log says once that the shard is unavailable.
        driver.setLevel(logging.ERROR)
    try:
        yield
    except (ShardflowError, ValueError, CliError):
        log.debug("command failed", exc_info=True)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(previous[0])
        driver.setLevel(previous[1])
        handler.flush()


if __name__ == "__main__":
    sys.exit(main())
