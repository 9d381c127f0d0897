"""``shardflow [--config FILE] [--log-level LEVEL] <command> ...``: parse, run, report.

Errors a user can fix (:class:`~shardflow.errors.ShardflowError`, bad values, a missing
``--config``) print one line, ``shardflow: error: ...``, and exit with status 2; any other
exception (a driver error, a bug) prints one line too, naming its type, and exits with
status 1: never a traceback, which could quote a DSN's password (``--log-level DEBUG``
logs it, scrubbed). Every such line is scrubbed of the config's passwords and of any
password-like parameter. Ctrl-C exits with 130. Only this module configures logging
handlers.
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
    ui,
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
    ui,
)
EXIT_FAILURE = 1
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
        # What a command that starts copies of itself (``worker --processes``) passes on.
        args.argv = list(sys.argv[1:] if argv is None else argv)
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
        return EXIT_FAILURE
    except Exception as exc:
        # A driver error's text may quote a DSN (libpq quotes what it cannot parse), and
        # a traceback would print it again: one scrubbed line, as for the errors above.
        _report(exc, getattr(args, "cluster_config", None), kind=True)
        return EXIT_FAILURE


def _dsns(args: argparse.Namespace) -> list[str]:
    config: ClusterConfig | None = getattr(args, "cluster_config", None)
    return [] if config is None else [shard.dsn for shard in config.shards]


def _report(exc: BaseException, config: ClusterConfig | None, *, kind: bool = False) -> None:
    """One line on stderr; ``kind`` names the exception's type (for unexpected ones)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " ".join(lines) or type(exc).__name__
    if kind and lines:
        message = f"{type(exc).__module__}.{type(exc).__qualname__}: {message}"
    dsns = [] if config is None else [shard.dsn for shard in config.shards]
    print(f"{PROG}: error: {scrub_secrets(message, dsns)}", file=sys.stderr)


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
    except Exception:
        # Through the handler's RedactSecrets filter: the traceback is scrubbed too.
        log.debug("command failed", exc_info=True)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(previous[0])
        driver.setLevel(previous[1])
        handler.flush()


if __name__ == "__main__":
    sys.exit(main())
